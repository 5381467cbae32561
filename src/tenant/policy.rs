//! Who may set what in a tenant's chain (docs/tenant-config.md, "Who may set
//! what").
//!
//! Operators (operator tokens, the CLI) may set every field. A
//! tenant-scoped admin token may set credentials, sender identities,
//! templates and limits, but:
//!
//! - not the `sandbox` provider (an operator's tool; its `record_file` is a
//!   local path the service writes to);
//! - not local paths: SMTP `ca_file`;
//! - not endpoints outside the operator's allow-list
//!   (`providers.allowed_hosts.<provider>`, `providers.allowed_smtp_ports`):
//!   a `base_url` must be `https://<allowed host>` on the default port, with
//!   no user info; an SMTP `host` must be an allowed host and its port an
//!   allowed one.
//!
//! A value an operator stored for the same chain position and provider may
//! be sent back unchanged (a tenant rotating its password keeps the relay an
//! operator chose for it).

use super::StoredConfig;
use super::model::ChannelConfig;
use crate::provider::{ProviderKind, ProviderSettings};
use crate::settings::AllowedHosts;
use serde_json::Value;

/// What tenant-scoped tokens may choose (from `[providers]`).
#[derive(Debug, Clone, Default)]
pub struct TenantPolicy {
    pub hosts: AllowedHosts,
    pub smtp_ports: Vec<u16>,
}

/// A field a tenant-scoped token may not set (names the field, never a value).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{field}` may be set by an operator only: {reason}")]
pub struct Forbidden {
    pub field: String,
    pub reason: String,
}

impl TenantPolicy {
    pub fn from_settings(s: &crate::settings::ProvidersSettings) -> Self {
        Self {
            hosts: s.allowed_hosts.clone(),
            smtp_ports: s.allowed_smtp_ports.clone(),
        }
    }

    /// The first field of `cfg` a tenant-scoped token may not set, given
    /// what is stored now.
    pub fn check(
        &self,
        cfg: &ChannelConfig,
        stored: Option<&StoredConfig>,
    ) -> Result<(), Forbidden> {
        for (i, entry) in cfg.chain.iter().enumerate() {
            let before = stored.and_then(|s| s.chain.get(i));
            self.check_entry(entry, before)
                .map_err(|(field, reason)| Forbidden {
                    field: format!("chain[{i}].{field}")
                        .trim_end_matches('.')
                        .to_owned(),
                    reason,
                })?;
        }
        Ok(())
    }

    fn check_entry(
        &self,
        entry: &ProviderSettings,
        before: Option<&Value>,
    ) -> Result<(), (String, String)> {
        let kind = entry.kind();
        // Public fields only (secrets are not serialized); compared with the
        // stored entry's public fields, which are stored in clear.
        let now = serde_json::to_value(entry).expect("settings serialize");
        let same_provider = before
            .and_then(|b| b.get("provider"))
            .and_then(Value::as_str)
            == Some(kind.as_str());
        let unchanged = |field: &str| {
            same_provider
                && before.and_then(|b| b.get(field)).unwrap_or(&Value::Null)
                    == now.get(field).unwrap_or(&Value::Null)
        };
        match entry {
            ProviderSettings::Sandbox(sb) => {
                if sb.record_file.is_some() && !unchanged("record_file") {
                    return Err((
                        "record_file".into(),
                        "a local path of the service (and the sandbox provider is an operator's tool)"
                            .into(),
                    ));
                }
                if !unchanged("record_file") {
                    return Err((
                        "provider".into(),
                        "the sandbox provider is an operator's tool".into(),
                    ));
                }
            }
            ProviderSettings::Smtp(s) => {
                if s.ca_file.is_some() && !unchanged("ca_file") {
                    return Err(("ca_file".into(), "a local path of the service".into()));
                }
                if !self.hosts.allows(kind, &s.host) && !unchanged("host") {
                    return Err((
                        "host".into(),
                        "not in the operator's allow-list (providers.allowed_hosts.smtp)".into(),
                    ));
                }
                if let Some(p) = s.port
                    && !self.smtp_ports.contains(&p)
                    && !unchanged("port")
                {
                    return Err((
                        "port".into(),
                        "not in the operator's allow-list (providers.allowed_smtp_ports)".into(),
                    ));
                }
            }
            ProviderSettings::Sendgrid(_)
            | ProviderSettings::Ses(_)
            | ProviderSettings::Twilio(_)
            | ProviderSettings::Meta(_)
            | ProviderSettings::Vonage(_) => {
                if let Some(u) = now.get("base_url").and_then(Value::as_str)
                    && !self.base_url_allowed(kind, u)
                    && !unchanged("base_url")
                {
                    return Err((
                        "base_url".into(),
                        format!(
                            "not in the operator's allow-list (https on providers.allowed_hosts.{kind})"
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// `https://<allowed host>[/path]`, default port, no user info.
    pub fn base_url_allowed(&self, kind: ProviderKind, u: &str) -> bool {
        let Ok(u) = url::Url::parse(u) else {
            return false;
        };
        u.scheme() == "https"
            && u.port().is_none()
            && u.username().is_empty()
            && u.password().is_none()
            && matches!(u.host(), Some(url::Host::Domain(h)) if self.hosts.allows(kind, h))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::Channel;
    use serde_json::json;

    fn policy() -> TenantPolicy {
        let s = crate::settings::Settings::load(None).unwrap();
        TenantPolicy::from_settings(&s.providers)
    }

    fn cfg(entry: Value, channel: Channel) -> ChannelConfig {
        ChannelConfig::from_json(json!({ "chain": [entry] }), channel).unwrap()
    }

    fn field(entry: Value, channel: Channel) -> Option<String> {
        policy()
            .check(&cfg(entry, channel), None)
            .err()
            .map(|f| f.field)
    }

    const SID: &str = "AC0123456789abcdef0123456789abcdef";

    #[test]
    fn the_real_provider_hosts_are_allowed() {
        for (e, c) in [
            (
                json!({"provider": "twilio", "account_sid": SID, "auth_token": "t", "from": "+14155550100", "base_url": "https://api.twilio.com"}),
                Channel::Sms,
            ),
            (
                json!({"provider": "sendgrid", "api_key": "SG.x", "from_email": "a@b.co", "base_url": "https://api.eu.sendgrid.com/"}),
                Channel::Email,
            ),
            (
                json!({"provider": "ses", "region": "eu-west-1", "access_key_id": "AKIAIOSFODNN7EXAMPLE", "secret_access_key": "s", "from_email": "a@b.co", "base_url": "https://email.eu-west-1.amazonaws.com"}),
                Channel::Email,
            ),
            (
                json!({"provider": "vonage", "api_key": "k", "api_secret": "s", "from": "Clinic", "base_url": "https://api.nexmo.com"}),
                Channel::Sms,
            ),
        ] {
            assert_eq!(field(e.clone(), c), None, "{e}");
        }
    }

    #[test]
    fn endpoints_paths_and_the_sandbox_are_refused_naming_the_field() {
        let twilio = |u: &str| json!({"provider": "twilio", "account_sid": SID, "auth_token": "t", "from": "+14155550100", "base_url": u});
        for u in [
            "http://api.twilio.com",
            "https://api.twilio.com:8443",
            "https://user:pw@api.twilio.com",
            "https://127.0.0.1",
            "https://169.254.169.254",
            "https://api.twilio.com.evil.example",
            "https://graph.facebook.com",
        ] {
            assert_eq!(
                field(twilio(u), Channel::Sms).as_deref(),
                Some("chain[0].base_url"),
                "{u}"
            );
        }
        assert_eq!(
            field(
                json!({"provider": "sandbox", "record_file": "/tmp/x"}),
                Channel::Sms
            )
            .as_deref(),
            Some("chain[0].record_file")
        );
        assert_eq!(
            field(json!({"provider": "sandbox"}), Channel::Sms).as_deref(),
            Some("chain[0].provider")
        );
        let smtp = json!({"provider": "smtp", "host": "10.0.0.1", "from_email": "a@b.co"});
        assert_eq!(
            field(smtp, Channel::Email).as_deref(),
            Some("chain[0].host")
        );
        let mut p = policy();
        p.hosts.smtp = vec!["smtp.clinic.example".into()];
        let ca = cfg(
            json!({"provider": "smtp", "host": "smtp.clinic.example", "from_email": "a@b.co", "ca_file": "/etc/passwd"}),
            Channel::Email,
        );
        assert_eq!(p.check(&ca, None).unwrap_err().field, "chain[0].ca_file");
        let port = cfg(
            json!({"provider": "smtp", "host": "smtp.clinic.example", "port": 5432, "from_email": "a@b.co"}),
            Channel::Email,
        );
        assert_eq!(p.check(&port, None).unwrap_err().field, "chain[0].port");
    }
}
