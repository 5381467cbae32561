//! Typed settings for each provider account, validated before use or
//! storage. Each provider's struct, its secrets and its checks live in its
//! adapter's file; this enum ties them together with exhaustive matches, so
//! the compiler names what a new provider must fill in.
//!
//! The checks of single fields the adapters share are in [`super::field`],
//! which depends on no adapter (so no adapter depends on this registry).
//!
//! Secret fields are `SecretString`: they never print, and the tenant store
//! encrypts them one by one (see `crypto`). `secret_fields()` names them.

use super::ProviderKind;
pub use super::field::SettingsError;
pub use super::meta::MetaSettings;
pub use super::sandbox::SandboxSettings;
pub use super::sendgrid::SendgridSettings;
pub use super::ses::SesSettings;
pub use super::smtp::{SmtpSecurity, SmtpSettings};
pub use super::twilio::TwilioSettings;
pub use super::vonage::{VonageSettings, VonageSignatureMethod};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};

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
            ProviderKind::Sandbox => SandboxSettings::SECRET_FIELDS,
            ProviderKind::Smtp => SmtpSettings::SECRET_FIELDS,
            ProviderKind::Sendgrid => SendgridSettings::SECRET_FIELDS,
            ProviderKind::Ses => SesSettings::SECRET_FIELDS,
            ProviderKind::Twilio => TwilioSettings::SECRET_FIELDS,
            ProviderKind::Meta => MetaSettings::SECRET_FIELDS,
            ProviderKind::Vonage => VonageSettings::SECRET_FIELDS,
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
            ProviderSettings::Sandbox(s) => s.secrets(),
            ProviderSettings::Smtp(s) => s.secrets(),
            ProviderSettings::Sendgrid(s) => s.secrets(),
            ProviderSettings::Ses(s) => s.secrets(),
            ProviderSettings::Twilio(s) => s.secrets(),
            ProviderSettings::Meta(s) => s.secrets(),
            ProviderSettings::Vonage(s) => s.secrets(),
        }
    }

    /// Check every field; the error names the first bad one.
    pub fn validate(&self) -> Result<(), SettingsError> {
        match self {
            ProviderSettings::Sandbox(s) => s.validate(),
            ProviderSettings::Smtp(s) => s.validate(),
            ProviderSettings::Sendgrid(s) => s.validate(),
            ProviderSettings::Ses(s) => s.validate(),
            ProviderSettings::Twilio(s) => s.validate(),
            ProviderSettings::Meta(s) => s.validate(),
            ProviderSettings::Vonage(s) => s.validate(),
        }
    }
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
