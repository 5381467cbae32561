//! Typed settings for each provider account, validated before use or storage.
//!
//! Secret fields are `SecretString`: they never print, and the tenant store
//! encrypts them one by one (see `crypto`). `secret_fields()` names them.

use super::ProviderKind;
use crate::job::is_e164;
use secrecy::SecretString;
use serde::{Deserialize, Serialize};

/// Bad provider settings: names the field, never its value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid `{field}`: {reason}")]
pub struct SettingsError {
    pub field: String,
    pub reason: String,
}

impl SettingsError {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// One provider account: which provider, its credentials and sender identity.
///
/// `Serialize` writes every field except the secrets (they are
/// `skip_serializing`), so serialized settings are safe to store or show; the
/// tenant store adds each secret back as ciphertext (see [`Self::secret`]).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(tag = "provider", rename_all = "lowercase")]
pub enum ProviderSettings {
    Sandbox(SandboxSettings),
    Smtp(SmtpSettings),
    Sendgrid(SendgridSettings),
    Ses(SesSettings),
    Twilio(TwilioSettings),
    Meta(MetaSettings),
    Vonage(VonageSettings),
}

/// Accepts and records messages, sends nothing.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxSettings {
    /// Append one JSON line per accepted message (ids and recipient, no body) to this file.
    #[serde(default)]
    pub record_file: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpSecurity {
    /// Plain SMTP, for local catchers such as Mailpit.
    None,
    /// Upgrade with STARTTLS (required).
    #[default]
    Starttls,
    /// Implicit TLS (SMTPS, usually port 465).
    Tls,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpSettings {
    pub host: String,
    /// Defaults to 25 (none), 587 (starttls) or 465 (tls).
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default, deserialize_with = "crate::enum_names::by_name")]
    pub security: SmtpSecurity,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    #[serde(skip_serializing)]
    pub password: Option<SecretString>,
    pub from_email: String,
    #[serde(default)]
    pub from_name: Option<String>,
    /// Connections kept open for this account.
    #[serde(default = "default_pool_max")]
    pub pool_max: u32,
    /// Seconds an idle pooled connection is kept.
    #[serde(default = "default_pool_idle")]
    pub pool_idle_secs: u64,
    /// PEM file of an extra CA to trust (self-hosted relays, tests).
    #[serde(default)]
    pub ca_file: Option<String>,
}

fn default_pool_max() -> u32 {
    4
}
fn default_pool_idle() -> u64 {
    60
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SendgridSettings {
    #[serde(skip_serializing)]
    pub api_key: SecretString,
    pub from_email: String,
    #[serde(default)]
    pub from_name: Option<String>,
    /// Optional dynamic template id (`d-…`).
    #[serde(default)]
    pub template_id: Option<String>,
    /// Categories attached to every message.
    #[serde(default)]
    pub categories: Vec<String>,
    /// API base, `https://api.sendgrid.com` by default (EU: `https://api.eu.sendgrid.com`).
    #[serde(default)]
    pub base_url: Option<String>,
    /// The Signed Event Webhook's verification key (base64 public key, as
    /// SendGrid shows it under Mail Settings > Event Webhook). A public key,
    /// not a secret; without it this account's events are refused.
    #[serde(default)]
    pub webhook_verification_key: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SesSettings {
    pub region: String,
    pub access_key_id: String,
    #[serde(skip_serializing)]
    pub secret_access_key: SecretString,
    pub from_email: String,
    #[serde(default)]
    pub from_name: Option<String>,
    #[serde(default)]
    pub configuration_set: Option<String>,
    /// SNS topics (ARNs) this account's SES notifications are published to;
    /// a notification from any other topic is refused for this tenant.
    #[serde(default)]
    pub sns_topic_arns: Vec<String>,
    /// Endpoint, `https://email.{region}.amazonaws.com` by default.
    #[serde(default)]
    pub base_url: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TwilioSettings {
    pub account_sid: String,
    #[serde(skip_serializing)]
    pub auth_token: SecretString,
    /// Sender number (E.164) for SMS, or WhatsApp sender number.
    #[serde(default)]
    pub from: Option<String>,
    /// Messaging service (`MG` + 32 hex) instead of `from`.
    #[serde(default)]
    pub messaging_service_sid: Option<String>,
    /// `https://api.twilio.com` by default.
    #[serde(default)]
    pub base_url: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MetaSettings {
    #[serde(skip_serializing)]
    pub access_token: SecretString,
    pub phone_number_id: String,
    /// Graph API version, `v23.0` by default.
    #[serde(default)]
    pub api_version: Option<String>,
    /// `https://graph.facebook.com` by default.
    #[serde(default)]
    pub base_url: Option<String>,
    /// The Meta app's secret: webhooks are signed with it
    /// (`X-Hub-Signature-256`). Without it this account's webhooks are refused.
    #[serde(default)]
    #[serde(skip_serializing)]
    pub app_secret: Option<SecretString>,
    /// The verify token entered in the app's webhook subscription; the
    /// subscription `GET` is answered only when it matches.
    #[serde(default)]
    #[serde(skip_serializing)]
    pub webhook_verify_token: Option<SecretString>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct VonageSettings {
    pub api_key: String,
    #[serde(skip_serializing)]
    pub api_secret: SecretString,
    /// Sender: E.164 number or alphanumeric sender id.
    pub from: String,
    /// `https://rest.nexmo.com` by default.
    #[serde(default)]
    pub base_url: Option<String>,
    /// The account's signature secret (dashboard → Settings): delivery
    /// receipts and inbound messages are signed with it (`sig`). Without it
    /// this account's webhooks are refused.
    #[serde(default)]
    #[serde(skip_serializing)]
    pub signature_secret: Option<SecretString>,
    /// The signing method chosen with it in the dashboard.
    #[serde(default, deserialize_with = "crate::enum_names::by_name")]
    pub signature_method: VonageSignatureMethod,
}

/// How Vonage signs webhooks (HMAC-MD5 is not supported: choose another).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum VonageSignatureMethod {
    /// MD5 of the parameters followed by the secret (Vonage's default).
    #[default]
    Md5hash,
    Sha1,
    Sha256,
    Sha512,
}

impl ProviderSettings {
    pub fn kind(&self) -> ProviderKind {
        match self {
            ProviderSettings::Sandbox(_) => ProviderKind::Sandbox,
            ProviderSettings::Smtp(_) => ProviderKind::Smtp,
            ProviderSettings::Sendgrid(_) => ProviderKind::Sendgrid,
            ProviderSettings::Ses(_) => ProviderKind::Ses,
            ProviderSettings::Twilio(_) => ProviderKind::Twilio,
            ProviderSettings::Meta(_) => ProviderKind::Meta,
            ProviderSettings::Vonage(_) => ProviderKind::Vonage,
        }
    }

    /// Names of the fields that hold secrets.
    pub fn secret_fields(kind: ProviderKind) -> &'static [&'static str] {
        match kind {
            ProviderKind::Sandbox => &[],
            ProviderKind::Smtp => &["password"],
            ProviderKind::Sendgrid => &["api_key"],
            ProviderKind::Ses => &["secret_access_key"],
            ProviderKind::Twilio => &["auth_token"],
            ProviderKind::Meta => &["access_token", "app_secret", "webhook_verify_token"],
            ProviderKind::Vonage => &["api_secret", "signature_secret"],
        }
    }

    /// The secret stored in field `name` (one of [`Self::secret_fields`]), if set.
    pub fn secret(&self, name: &str) -> Option<&SecretString> {
        self.secrets()
            .into_iter()
            .find(|(field, _)| *field == name)
            .and_then(|(_, secret)| secret)
    }

    /// Every secret field of this entry, set or not. An exhaustive match (no
    /// catch-all), so a new provider cannot compile without naming its
    /// secrets; a test checks the names against [`Self::secret_fields`].
    pub fn secrets(&self) -> Vec<(&'static str, Option<&SecretString>)> {
        match self {
            ProviderSettings::Sandbox(_) => vec![],
            ProviderSettings::Smtp(s) => vec![("password", s.password.as_ref())],
            ProviderSettings::Sendgrid(s) => vec![("api_key", Some(&s.api_key))],
            ProviderSettings::Ses(s) => vec![("secret_access_key", Some(&s.secret_access_key))],
            ProviderSettings::Twilio(s) => vec![("auth_token", Some(&s.auth_token))],
            ProviderSettings::Meta(s) => vec![
                ("access_token", Some(&s.access_token)),
                ("app_secret", s.app_secret.as_ref()),
                ("webhook_verify_token", s.webhook_verify_token.as_ref()),
            ],
            ProviderSettings::Vonage(s) => vec![
                ("api_secret", Some(&s.api_secret)),
                ("signature_secret", s.signature_secret.as_ref()),
            ],
        }
    }

    /// Check every field; the error names the first bad one.
    pub fn validate(&self) -> Result<(), SettingsError> {
        use secrecy::ExposeSecret;
        match self {
            ProviderSettings::Sandbox(_) => Ok(()),
            ProviderSettings::Smtp(s) => {
                non_empty("host", &s.host)?;
                email("from_email", &s.from_email)?;
                if s.password.is_some() && s.username.is_none() {
                    return Err(SettingsError::new(
                        "username",
                        "required when a password is set",
                    ));
                }
                if s.pool_max == 0 {
                    return Err(SettingsError::new("pool_max", "must be at least 1"));
                }
                Ok(())
            }
            ProviderSettings::Sendgrid(s) => {
                if !s.api_key.expose_secret().starts_with("SG.") {
                    return Err(SettingsError::new(
                        "api_key",
                        "SendGrid API keys start with `SG.`",
                    ));
                }
                email("from_email", &s.from_email)?;
                if let Some(k) = &s.webhook_verification_key
                    && super::sendgrid::webhook_verification_key(k).is_none()
                {
                    return Err(SettingsError::new(
                        "webhook_verification_key",
                        "expected the base64 P-256 public key SendGrid shows for the signed event webhook",
                    ));
                }
                opt_url("base_url", &s.base_url)
            }
            ProviderSettings::Ses(s) => {
                if !is_aws_region(&s.region) {
                    return Err(SettingsError::new(
                        "region",
                        "expected an AWS region such as `eu-west-1`",
                    ));
                }
                if s.access_key_id.len() < 16
                    || !s.access_key_id.bytes().all(|b| b.is_ascii_alphanumeric())
                {
                    return Err(SettingsError::new(
                        "access_key_id",
                        "expected an AWS access key id such as `AKIA…`",
                    ));
                }
                non_empty("secret_access_key", s.secret_access_key.expose_secret())?;
                email("from_email", &s.from_email)?;
                opt_url("base_url", &s.base_url)
            }
            ProviderSettings::Twilio(s) => {
                if !is_sid(&s.account_sid, "AC") {
                    return Err(SettingsError::new(
                        "account_sid",
                        "Twilio account SIDs are `AC` followed by 32 hex digits",
                    ));
                }
                non_empty("auth_token", s.auth_token.expose_secret())?;
                match (&s.from, &s.messaging_service_sid) {
                    (None, None) => {
                        return Err(SettingsError::new(
                            "from",
                            "set `from` or `messaging_service_sid`",
                        ));
                    }
                    (Some(f), _) if !is_e164(f.strip_prefix("whatsapp:").unwrap_or(f)) => {
                        return Err(SettingsError::new(
                            "from",
                            "expected an E.164 number such as +14155550100",
                        ));
                    }
                    (_, Some(m)) if !is_sid(m, "MG") => {
                        return Err(SettingsError::new(
                            "messaging_service_sid",
                            "messaging service SIDs are `MG` followed by 32 hex digits",
                        ));
                    }
                    _ => {}
                }
                opt_url("base_url", &s.base_url)
            }
            ProviderSettings::Meta(s) => {
                non_empty("access_token", s.access_token.expose_secret())?;
                if s.phone_number_id.is_empty()
                    || !s.phone_number_id.bytes().all(|b| b.is_ascii_digit())
                {
                    return Err(SettingsError::new(
                        "phone_number_id",
                        "expected the numeric phone-number id from Meta",
                    ));
                }
                if let Some(v) = &s.api_version {
                    let ok = v.strip_prefix('v').is_some_and(|n| {
                        !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit() || b == b'.')
                    });
                    if !ok {
                        return Err(SettingsError::new(
                            "api_version",
                            "expected a Graph API version such as `v23.0`",
                        ));
                    }
                }
                opt_url("base_url", &s.base_url)
            }
            ProviderSettings::Vonage(s) => {
                non_empty("api_key", &s.api_key)?;
                non_empty("api_secret", s.api_secret.expose_secret())?;
                non_empty("from", &s.from)?;
                opt_url("base_url", &s.base_url)
            }
        }
    }
}

fn non_empty(field: &str, v: &str) -> Result<(), SettingsError> {
    if v.trim().is_empty() {
        Err(SettingsError::new(field, "must not be empty"))
    } else {
        Ok(())
    }
}

fn email(field: &str, v: &str) -> Result<(), SettingsError> {
    v.parse::<lettre::Address>()
        .map(|_| ())
        .map_err(|_| SettingsError::new(field, "not an email address"))
}

fn opt_url(field: &str, v: &Option<String>) -> Result<(), SettingsError> {
    match v {
        Some(u) => match url::Url::parse(u) {
            Ok(u) if u.scheme() == "https" || u.scheme() == "http" => Ok(()),
            _ => Err(SettingsError::new(field, "expected an http(s) URL")),
        },
        None => Ok(()),
    }
}

fn is_sid(s: &str, prefix: &str) -> bool {
    s.len() == 34 && s.starts_with(prefix) && s[2..].bytes().all(|b| b.is_ascii_hexdigit())
}

/// `eu-west-1`, `us-gov-west-1`, `ap-southeast-2`…
fn is_aws_region(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.len() >= 3
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        })
        && parts
            .last()
            .is_some_and(|p| p.bytes().all(|b| b.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: serde_json::Value) -> ProviderSettings {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn every_provider_names_the_same_secret_fields_in_both_lists() {
        use serde_json::json;
        // One minimal entry per provider (validity does not matter here).
        let entries = [
            json!({"provider": "sandbox"}),
            json!({"provider": "smtp", "host": "mail", "from_email": "a@b.co"}),
            json!({"provider": "sendgrid", "api_key": "SG.x", "from_email": "a@b.co"}),
            json!({"provider": "ses", "region": "eu-west-1", "access_key_id": "AKIA", "secret_access_key": "s", "from_email": "a@b.co"}),
            json!({"provider": "twilio", "account_sid": "AC1", "auth_token": "t", "from": "+14155550100"}),
            json!({"provider": "meta", "phone_number_id": "1", "access_token": "t"}),
            json!({"provider": "vonage", "api_key": "k", "api_secret": "s", "from": "Clinic"}),
        ];
        let mut kinds = std::collections::HashSet::new();
        for v in entries {
            let e = parse(v);
            kinds.insert(e.kind());
            let names: Vec<&str> = e.secrets().into_iter().map(|(n, _)| n).collect();
            assert_eq!(
                names,
                ProviderSettings::secret_fields(e.kind()),
                "{:?}",
                e.kind()
            );
        }
        assert_eq!(kinds.len(), 7, "one entry per provider kind");
    }

    #[test]
    fn validation_names_the_bad_field() {
        let cases = [
            (
                serde_json::json!({"provider": "sendgrid", "api_key": "nope", "from_email": "a@b.co"}),
                "api_key",
            ),
            (
                serde_json::json!({"provider": "twilio", "account_sid": "AC123", "auth_token": "t", "from": "+14155550100"}),
                "account_sid",
            ),
            (
                serde_json::json!({"provider": "twilio", "account_sid": format!("AC{}", "a".repeat(32)), "auth_token": "t", "from": "555"}),
                "from",
            ),
            (
                serde_json::json!({"provider": "ses", "region": "Europe", "access_key_id": "AKIAIOSFODNN7EXAMPLE", "secret_access_key": "s", "from_email": "a@b.co"}),
                "region",
            ),
            (
                serde_json::json!({"provider": "smtp", "host": "mail", "from_email": "not-an-email"}),
                "from_email",
            ),
            (
                serde_json::json!({"provider": "meta", "access_token": "t", "phone_number_id": "12ab"}),
                "phone_number_id",
            ),
            (
                serde_json::json!({"provider": "sendgrid", "api_key": "SG.x", "from_email": "a@b.co", "base_url": "ftp://x"}),
                "base_url",
            ),
        ];
        for (v, field) in cases {
            assert_eq!(parse(v).validate().unwrap_err().field, field);
        }
    }

    #[test]
    fn good_settings_pass() {
        let ok = [
            serde_json::json!({"provider": "sendgrid", "api_key": "SG.abc", "from_email": "a@b.co"}),
            serde_json::json!({"provider": "twilio", "account_sid": format!("AC{}", "0f".repeat(16)), "auth_token": "t", "from": "whatsapp:+14155550100"}),
            serde_json::json!({"provider": "ses", "region": "us-gov-west-1", "access_key_id": "AKIAIOSFODNN7EXAMPLE", "secret_access_key": "s", "from_email": "a@b.co"}),
            serde_json::json!({"provider": "meta", "access_token": "t", "phone_number_id": "1234567890", "api_version": "v23.0"}),
        ];
        for v in ok {
            parse(v).validate().unwrap();
        }
    }

    #[test]
    fn serialized_settings_leave_the_secrets_out() {
        let s = parse(
            serde_json::json!({"provider": "sendgrid", "api_key": "SG.very-secret", "from_email": "a@b.co"}),
        );
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["provider"], "sendgrid");
        assert_eq!(v["from_email"], "a@b.co");
        assert!(v.get("api_key").is_none());
        assert!(!v.to_string().contains("very-secret"));
    }

    #[test]
    fn meta_webhook_secrets_are_secret_fields_kept_out_of_json_and_debug() {
        let s = parse(serde_json::json!({"provider": "meta", "access_token": "t",
            "phone_number_id": "1", "app_secret": "app-very-secret", "webhook_verify_token": "verify-very-secret"}));
        let shown = format!("{s:?} {}", serde_json::to_value(&s).unwrap());
        assert!(!shown.contains("very-secret"), "{shown}");
        for f in ["app_secret", "webhook_verify_token"] {
            assert!(ProviderSettings::secret_fields(ProviderKind::Meta).contains(&f));
            assert!(s.secret(f).is_some(), "{f}");
        }
    }

    #[test]
    fn a_sendgrid_verification_key_that_is_not_a_p256_key_is_refused() {
        let s = parse(
            serde_json::json!({"provider": "sendgrid", "api_key": "SG.x",
            "from_email": "a@b.co", "webhook_verification_key": "bm90IGEga2V5"}),
        );
        assert_eq!(s.validate().unwrap_err().field, "webhook_verification_key");
    }

    #[test]
    fn debug_output_never_shows_a_secret() {
        let s = parse(
            serde_json::json!({"provider": "sendgrid", "api_key": "SG.very-secret", "from_email": "a@b.co"}),
        );
        assert!(!format!("{s:?}").contains("very-secret"));
    }
}
