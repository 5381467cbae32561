//! Chain entries as stored: the settings' JSON with each secret field replaced
//! by its ciphertext, bound (AAD) to the tenant and `<channel>.chain.<i>.<field>`.

use crate::crypto::{CryptoError, FieldContext, KeyRing};
use crate::job::{Channel, TenantId};
use crate::provider::{ProviderKind, ProviderSettings};
use secrecy::ExposeSecret;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// A stored entry that cannot be turned back into settings.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    /// Not the JSON this module writes; names the field, never a value.
    #[error("tenant {tenant:?} field {field:?}: stored config is malformed")]
    Malformed { tenant: String, field: String },
}

impl SealError {
    /// The field path the error is about, for logs and API answers.
    pub fn field(&self) -> String {
        match self {
            SealError::Crypto(
                CryptoError::UnknownKey { field, .. }
                | CryptoError::Decrypt { field, .. }
                | CryptoError::Malformed { field, .. }
                | CryptoError::Encrypt { field, .. },
            ) => field.clone(),
            SealError::Malformed { field, .. } => field.clone(),
            SealError::Crypto(_) => String::new(),
        }
    }
}

/// The AAD field path of secret `field` in entry `i`.
pub fn field_path(channel: Channel, i: usize, field: &str) -> String {
    format!("{channel}.chain.{i}.{field}")
}

/// Serialize entry `i` with its secrets encrypted.
pub fn seal(
    keys: &KeyRing,
    tenant: &TenantId,
    channel: Channel,
    i: usize,
    entry: &ProviderSettings,
) -> Result<Value, CryptoError> {
    // Secrets are `skip_serializing`: this JSON holds no plaintext.
    let mut v = serde_json::to_value(entry).expect("settings serialize to JSON");
    for name in ProviderSettings::secret_fields(entry.kind()) {
        if let Some(secret) = entry.secret(name) {
            let path = field_path(channel, i, name);
            let sealed = keys.encrypt(secret, &FieldContext::new(tenant.as_str(), &path))?;
            v[*name] = Value::String(sealed);
        }
    }
    Ok(v)
}

/// Decrypt entry `i`'s secrets and parse it.
pub fn open(
    keys: &KeyRing,
    tenant: &TenantId,
    channel: Channel,
    i: usize,
    stored: &Value,
) -> Result<ProviderSettings, SealError> {
    let malformed = |field: String| SealError::Malformed {
        tenant: tenant.to_string(),
        field,
    };
    let kind: ProviderKind = stored
        .get("provider")
        .cloned()
        .and_then(|k| serde_json::from_value(k).ok())
        .ok_or_else(|| malformed(format!("{channel}.chain.{i}.provider")))?;
    let mut v = stored.clone();
    for name in ProviderSettings::secret_fields(kind) {
        let path = field_path(channel, i, name);
        match stored.get(*name) {
            None | Some(Value::Null) => {}
            Some(Value::String(sealed)) => {
                let plain = keys.decrypt(sealed, &FieldContext::new(tenant.as_str(), &path))?;
                // Briefly a plain String inside `v`; moved into a SecretString by from_value.
                v[*name] = Value::String(plain.expose_secret().to_owned());
            }
            Some(_) => return Err(malformed(path)),
        }
    }
    serde_json::from_value(v).map_err(|_| malformed(format!("{channel}.chain.{i}")))
}

/// SHA-256 over an entry's public JSON and its secrets: equal fingerprints mean
/// the built provider can be reused. Only the digest is kept, never plaintext.
pub fn fingerprint(entry: &ProviderSettings) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(serde_json::to_vec(entry).expect("settings serialize to JSON"));
    for name in ProviderSettings::secret_fields(entry.kind()) {
        if let Some(secret) = entry.secret(name) {
            let s = secret.expose_secret().as_bytes();
            // Length-prefixed so field boundaries are unambiguous.
            h.update((s.len() as u64).to_be_bytes());
            h.update(s);
        }
    }
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring() -> KeyRing {
        KeyRing::new(&[("k1".into(), "11".repeat(32).into())], None).unwrap()
    }

    fn entry() -> ProviderSettings {
        serde_json::from_value(serde_json::json!({"provider": "sendgrid", "api_key": "SG.top-secret", "from_email": "a@b.co"})).unwrap()
    }

    #[test]
    fn a_sealed_entry_holds_ciphertext_and_opens_to_the_same_settings() {
        let t = TenantId::parse("clinic-1").unwrap();
        let sealed = seal(&ring(), &t, Channel::Email, 0, &entry()).unwrap();
        assert!(!sealed.to_string().contains("top-secret"));
        assert!(sealed["api_key"].as_str().unwrap().starts_with("v1:k1:"));
        let opened = open(&ring(), &t, Channel::Email, 0, &sealed).unwrap();
        assert_eq!(fingerprint(&opened), fingerprint(&entry()));
    }

    #[test]
    fn an_entry_moved_to_another_position_fails_naming_the_field() {
        let t = TenantId::parse("clinic-1").unwrap();
        let sealed = seal(&ring(), &t, Channel::Email, 0, &entry()).unwrap();
        let e = open(&ring(), &t, Channel::Email, 1, &sealed).unwrap_err();
        assert_eq!(e.field(), "email.chain.1.api_key");
    }
}
