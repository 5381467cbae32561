//! The shown form of a stored config: public fields as they are, each secret
//! masked (`SG.****…ab12`) or marked unreadable. Used by `tenant show` and the
//! admin API; nothing here ever holds a full secret in its output.

use super::sealed;
use super::store::{StoredConfig, TenantStore};
use crate::crypto::{FieldContext, mask};
use crate::provider::{ProviderKind, ProviderSettings};
use secrecy::ExposeSecret;
use serde_json::{Value, json};

/// What `show` prints for a secret that cannot be decrypted (wrong or missing key).
pub const UNREADABLE: &str = "<cannot decrypt: check crypto.keys>";

/// A stored config with masked secrets, as JSON.
pub fn masked(store: &TenantStore, s: &StoredConfig) -> Value {
    let chain: Vec<Value> = s
        .chain
        .iter()
        .enumerate()
        .map(|(i, entry)| {
            let mut e = entry.clone();
            let kind = entry
                .get("provider")
                .and_then(|k| serde_json::from_value::<ProviderKind>(k.clone()).ok());
            for name in kind
                .map(ProviderSettings::secret_fields)
                .unwrap_or_default()
            {
                if let Some(Value::String(stored)) = entry.get(*name) {
                    let path = sealed::field_path(s.channel, i, name);
                    let ctx = FieldContext::new(s.tenant.as_str(), &path);
                    e[*name] = match store.keys().decrypt(stored, &ctx) {
                        Ok(plain) => Value::String(mask(plain.expose_secret())),
                        Err(_) => Value::String(UNREADABLE.into()),
                    };
                }
            }
            e
        })
        .collect();
    json!({
        "channel": s.channel,
        "enabled": s.enabled,
        "fallback_to_system": s.fallback_to_system,
        "chain": chain,
        "rate_limits": s.rate_limits,
        "quiet_hours": s.quiet_hours,
        "time_zone": s.time_zone,
        "version": s.version,
        "updated_at": s.updated_at.format(&time::format_description::well_known::Rfc3339).ok(),
    })
}
