//! A tenant's config of one channel, as written by operators (TOML or JSON
//! file, admin API body) and validated before anything is stored.

use crate::enum_names::parse_name;
use crate::job::Channel;
use crate::provider::{ProviderKind, ProviderSettings, SettingsError};
use serde::{Deserialize, Serialize};

/// An invalid config: `field` is a path such as `chain[1].api_key`; the reason
/// never quotes a value.
pub type ConfigError = SettingsError;

/// One tenant's config of one channel.
#[derive(Debug, Clone)]
pub struct ChannelConfig {
    /// `false` refuses the channel's jobs for this tenant (no system fallback).
    pub enabled: bool,
    /// Primary first, then fallbacks in order; each its own account and sender.
    pub chain: Vec<ProviderSettings>,
    /// Try the system default after the tenant's chain.
    pub fallback_to_system: bool,
    pub rate_limits: RateLimits,
    /// Reserved: stored, not yet enforced.
    pub quiet_hours: Option<QuietHours>,
    /// Reserved: IANA zone (`Europe/London`) for quiet hours.
    pub time_zone: Option<String>,
}

/// Sending limits of the tenant's channel, across its whole chain; all
/// optional, all enforced together for the whole deployment (`ratelimit`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimits {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_second: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_minute: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_hour: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_day: Option<u32>,
    /// Sends allowed back to back above the per-second rate (default: the
    /// per-second limit itself). Longer windows allow their whole count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
}

impl RateLimits {
    /// The limits to enforce (empty when none is set).
    pub fn limits(&self) -> Vec<crate::ratelimit::Limit> {
        use crate::ratelimit::Limit;
        use std::time::Duration;
        let per_second = self
            .per_second
            .and_then(|n| Limit::new(n, Duration::from_secs(1)))
            .map(|l| match self.burst {
                Some(b) => l.with_burst(b),
                None => l,
            });
        let longer = [
            (self.per_minute, 60),
            (self.per_hour, 3600),
            (self.per_day, 86_400),
        ]
        .into_iter()
        .filter_map(|(n, secs)| Limit::new(n?, Duration::from_secs(secs)));
        per_second.into_iter().chain(longer).collect()
    }
}

/// Local times (`HH:MM`) between which nothing should be sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuietHours {
    pub start: String,
    pub end: String,
}

/// The input shape; chain entries stay JSON until parsed one by one, so an
/// error can name `chain[i]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    #[serde(default = "yes")]
    enabled: bool,
    #[serde(default = "yes")]
    fallback_to_system: bool,
    #[serde(default)]
    chain: Vec<serde_json::Value>,
    #[serde(default)]
    rate_limits: RateLimits,
    #[serde(default)]
    quiet_hours: Option<QuietHours>,
    #[serde(default)]
    time_zone: Option<String>,
}

fn yes() -> bool {
    true
}

impl ChannelConfig {
    /// Parse a JSON document (file or API body) and validate it for `channel`.
    pub fn from_json(value: serde_json::Value, channel: Channel) -> Result<Self, ConfigError> {
        let input: Input = serde_path_to_error::deserialize(value)
            .map_err(|e| path_error("", e.path().to_string(), e.inner()))?;
        let mut chain = Vec::with_capacity(input.chain.len());
        for (i, entry) in input.chain.into_iter().enumerate() {
            chain.push(parse_entry(entry).map_err(|(field, reason)| {
                ConfigError::new(format!("chain[{i}].{field}").trim_end_matches('.'), reason)
            })?);
        }
        let cfg = Self {
            enabled: input.enabled,
            chain,
            fallback_to_system: input.fallback_to_system,
            rate_limits: input.rate_limits,
            quiet_hours: input.quiet_hours,
            time_zone: input.time_zone,
        };
        cfg.validate(channel)?;
        Ok(cfg)
    }

    /// Parse a TOML document (the CLI's `--file cfg.toml`).
    pub fn from_toml(text: &str, channel: Channel) -> Result<Self, ConfigError> {
        let value: serde_json::Value = toml::from_str(text)
            // toml's message quotes the offending line, which may hold a secret.
            .map_err(|e| {
                let at = e
                    .span()
                    .map(|s| format!(" at byte {}", s.start))
                    .unwrap_or_default();
                ConfigError::new("", format!("not valid TOML{at}"))
            })?;
        Self::from_json(value, channel)
    }

    /// Paths on this machine that the config names exist (a sandbox's
    /// `record_file` folder); checked when the config is stored.
    pub fn check_paths(&self) -> Result<(), ConfigError> {
        for (i, s) in self.chain.iter().enumerate() {
            if let ProviderSettings::Sandbox(sb) = s {
                sb.check_folder()
                    .map_err(|e| ConfigError::new(format!("chain[{i}].{}", e.field), e.reason))?;
            }
        }
        Ok(())
    }

    /// Every rule, the error naming the first bad field by its path.
    pub fn validate(&self, channel: Channel) -> Result<(), ConfigError> {
        for (i, s) in self.chain.iter().enumerate() {
            if !s.kind().supports(channel) {
                return Err(ConfigError::new(
                    format!("chain[{i}].provider"),
                    format!("{} cannot carry {channel}", s.kind()),
                ));
            }
            s.validate().map_err(|e| {
                ConfigError::new(
                    format!("chain[{i}].{}", e.field).trim_end_matches('.'),
                    e.reason,
                )
            })?;
        }
        if self.enabled && self.chain.is_empty() && !self.fallback_to_system {
            return Err(ConfigError::new(
                "chain",
                "needs a provider when fallback_to_system is false",
            ));
        }
        let r = &self.rate_limits;
        for (name, v) in [
            ("per_second", r.per_second),
            ("per_minute", r.per_minute),
            ("per_hour", r.per_hour),
            ("per_day", r.per_day),
            ("burst", r.burst),
        ] {
            if v == Some(0) {
                return Err(ConfigError::new(
                    format!("rate_limits.{name}"),
                    "must be at least 1 (omit it for no limit)",
                ));
            }
        }
        // The shape of an IANA zone name (`Europe/London`, `Etc/GMT+1`);
        // that the zone exists is checked when quiet hours are enforced.
        if let Some(tz) = &self.time_zone
            && (tz.is_empty()
                || tz.len() > 64
                || !tz
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"/_+-".contains(&b)))
        {
            return Err(ConfigError::new(
                "time_zone",
                "expected an IANA time zone name such as Europe/London",
            ));
        }
        if let Some(q) = &self.quiet_hours {
            for (name, v) in [("start", &q.start), ("end", &q.end)] {
                if !is_hh_mm(v) {
                    return Err(ConfigError::new(
                        format!("quiet_hours.{name}"),
                        "expected a local time HH:MM",
                    ));
                }
            }
        }
        Ok(())
    }
}

fn is_hh_mm(s: &str) -> bool {
    let Some((h, m)) = s.split_once(':') else {
        return false;
    };
    h.len() == 2
        && m.len() == 2
        && h.parse::<u8>().is_ok_and(|h| h < 24)
        && m.parse::<u8>().is_ok_and(|m| m < 60)
}

/// One chain entry: the `provider` tag first, then that provider's own
/// fields, so an error names the field (`api_key`), not just the entry.
fn parse_entry(entry: serde_json::Value) -> Result<ProviderSettings, (String, String)> {
    use crate::provider::settings as ps;
    let serde_json::Value::Object(mut fields) = entry else {
        return Err((String::new(), "expected an object".into()));
    };
    let kind = match fields.remove("provider") {
        None => return Err(("provider".into(), "missing field".into())),
        // By serde's own names; the refused value is never quoted back.
        Some(tag) => tag
            .as_str()
            .and_then(|t| parse_name::<ProviderKind>(t).ok())
            .ok_or_else(|| {
                let names: Vec<&str> = ProviderKind::ALL.iter().map(|k| k.as_str()).collect();
                let expected = names.join(", ");
                (
                    "provider".into(),
                    format!("unknown provider, expected one of {expected}"),
                )
            })?,
    };
    let rest = serde_json::Value::Object(fields);
    fn de<T: serde::de::DeserializeOwned>(
        v: serde_json::Value,
        wrap: fn(T) -> ProviderSettings,
    ) -> Result<ProviderSettings, (String, String)> {
        serde_path_to_error::deserialize(v)
            .map(wrap)
            .map_err(|e| (path_of(&e.path().to_string()), safe_reason(e.inner())))
    }
    // Exhaustive: a new provider does not compile until it is read here.
    match kind {
        ProviderKind::Sandbox => de::<ps::SandboxSettings>(rest, ProviderSettings::Sandbox),
        ProviderKind::Smtp => de::<ps::SmtpSettings>(rest, ProviderSettings::Smtp),
        ProviderKind::Sendgrid => de::<ps::SendgridSettings>(rest, ProviderSettings::Sendgrid),
        ProviderKind::Ses => de::<ps::SesSettings>(rest, ProviderSettings::Ses),
        ProviderKind::Twilio => de::<ps::TwilioSettings>(rest, ProviderSettings::Twilio),
        ProviderKind::Meta => de::<ps::MetaSettings>(rest, ProviderSettings::Meta),
        ProviderKind::Vonage => de::<ps::VonageSettings>(rest, ProviderSettings::Vonage),
    }
}

/// serde_path_to_error's path (`rate_limits.per_second`, `.`) as a field
/// path; `""` for the document itself.
fn path_of(p: &str) -> String {
    if p == "." {
        String::new()
    } else {
        p.to_owned()
    }
}

fn path_error(prefix: &str, path: String, e: &serde_json::Error) -> ConfigError {
    let path = path_of(&path);
    let field = match (prefix.is_empty(), path.is_empty()) {
        (true, _) => path,
        (false, true) => prefix.to_owned(),
        (false, false) => format!("{prefix}.{path}"),
    };
    ConfigError::new(field, safe_reason(e))
}

/// What serde says is wrong, in words that quote no submitted value of any
/// JSON type (serde's messages do: `invalid type: integer `1234…``,
/// `invalid value: string "…"`, `unknown variant `…``): the expectation
/// only, and field names only when they are plain identifiers.
fn safe_reason(e: &serde_json::Error) -> String {
    let text = e.to_string();
    // serde_json appends " at line L column C" for parse errors.
    let text = match text.rfind(" at line ") {
        Some(i) => &text[..i],
        None => &text,
    };
    // The last ", expected ": serde quotes the value before it, and a value
    // may itself contain ", expected " (found by fuzz/fuzz_targets/tenant_config.rs).
    let expected = |t: &str| {
        t.rsplit_once(", expected ")
            .map(|(_, exp)| format!("expected {exp}"))
    };
    if text.starts_with("invalid type:") {
        return expected(text).unwrap_or_else(|| "wrong type".into());
    }
    if text.starts_with("invalid value:") {
        return expected(text)
            .map(|e| format!("invalid value, {e}"))
            .unwrap_or_else(|| "invalid value".into());
    }
    if text.starts_with("unknown variant") {
        return expected(text)
            .map(|e| format!("unknown value, {e}"))
            .unwrap_or_else(|| "unknown value".into());
    }
    if let Some(rest) = text.strip_prefix("unknown field `") {
        let name = rest.split('`').next().unwrap_or_default();
        return if is_identifier(name) {
            format!("unknown field `{name}`")
        } else {
            "unknown field".into()
        };
    }
    if let Some(rest) = text.strip_prefix("missing field `") {
        let name = rest.split('`').next().unwrap_or_default();
        return format!("missing field `{name}`");
    }
    if text.starts_with("invalid length") {
        return expected(text)
            .map(|e| format!("invalid length, {e}"))
            .unwrap_or_else(|| "invalid length".into());
    }
    if text.starts_with("duplicate field") {
        return "duplicate field".into();
    }
    "invalid value".into()
}

fn is_identifier(s: &str) -> bool {
    !s.is_empty() && s.len() <= 40 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_bad_chain_entry_is_named_by_its_path() {
        let e = ChannelConfig::from_json(
            json!({"chain": [
                {"provider": "sendgrid", "api_key": "SG.ok", "from_email": "a@b.co"},
                {"provider": "sendgrid", "api_key": "nope", "from_email": "a@b.co"}
            ]}),
            Channel::Email,
        )
        .unwrap_err();
        assert_eq!(e.field, "chain[1].api_key");
    }

    #[test]
    fn a_provider_that_cannot_carry_the_channel_is_refused() {
        let e = ChannelConfig::from_json(
            json!({"chain": [{"provider": "vonage", "api_key": "k", "api_secret": "s", "from": "Clinic"}]}),
            Channel::Email,
        )
        .unwrap_err();
        assert_eq!(e.field, "chain[0].provider");
    }

    #[test]
    fn parse_errors_never_quote_the_rejected_value() {
        let e = ChannelConfig::from_json(
            json!({"chain": [{"provider": "sendgrid", "api_key": 12345678, "from_email": "a@b.co", "pool": "SG.secret"}]}),
            Channel::Email,
        )
        .unwrap_err();
        assert!(e.field.starts_with("chain[0]"), "{}", e.field);
        assert!(!e.reason.contains("SG.secret"), "{}", e.reason);
    }

    #[test]
    fn a_secret_of_any_json_type_is_never_quoted_and_its_field_is_named() {
        for bad in [
            json!(12345678901234_u64),
            json!(-12345678901234_i64),
            json!(1234.5678901234),
            json!(true),
            json!(["SG.secret-in-a-list-1234"]),
            json!({"k": "SG.secret-in-an-object-1234"}),
        ] {
            let e = ChannelConfig::from_json(
                json!({"chain": [{"provider": "sendgrid", "api_key": bad, "from_email": "a@b.co"}]}),
                Channel::Email,
            )
            .unwrap_err();
            assert_eq!(e.field, "chain[0].api_key");
            assert_eq!(e.reason, "expected a string");
            let shown = format!("{e}");
            for needle in ["12345678901234", "1234.5678", "true", "secret-in"] {
                assert!(!shown.contains(needle), "{shown}");
            }
        }
    }

    #[test]
    fn a_value_that_itself_says_expected_is_not_quoted() {
        let e = ChannelConfig::from_json(
            json!({"enabled": "x, expected SG.secret-value"}),
            Channel::Email,
        )
        .unwrap_err();
        assert_eq!(e.reason, "expected a boolean");
        assert!(!e.to_string().contains("secret"), "{e}");
    }

    #[test]
    fn unknown_providers_and_top_level_values_are_not_quoted() {
        let e = ChannelConfig::from_json(
            json!({"chain": [{"provider": "SG.secret-provider"}]}),
            Channel::Email,
        )
        .unwrap_err();
        assert_eq!(e.field, "chain[0].provider");
        assert!(!e.to_string().contains("secret"), "{e}");
        let e = ChannelConfig::from_json(
            json!({"rate_limits": {"per_second": 98765432109876_u64}}),
            Channel::Email,
        )
        .unwrap_err();
        assert_eq!(e.field, "rate_limits.per_second");
        assert!(!e.to_string().contains("98765432109876"), "{e}");
        let e = ChannelConfig::from_json(json!({"enabled": "SG.x-secret"}), Channel::Email)
            .unwrap_err();
        assert_eq!(e.field, "enabled");
        assert!(!e.to_string().contains("secret"), "{e}");
    }

    #[test]
    fn a_time_zone_that_is_not_a_zone_name_is_refused_and_a_zone_name_kept() {
        for bad in [
            "x".repeat(60_000),
            "Europe/London\r\n".into(),
            "".into(),
            "Mars Base".into(),
        ] {
            let e = ChannelConfig::from_json(json!({"time_zone": bad}), Channel::Sms).unwrap_err();
            assert_eq!(e.field, "time_zone");
        }
        for zone in [
            "Europe/London",
            "America/Argentina/Buenos_Aires",
            "Etc/GMT+1",
            "UTC",
        ] {
            let c = ChannelConfig::from_json(json!({"time_zone": zone}), Channel::Sms).unwrap();
            assert_eq!(c.time_zone.as_deref(), Some(zone));
        }
    }

    #[test]
    fn an_unknown_provider_is_told_every_known_one() {
        let e = ChannelConfig::from_json(json!({"chain": [{"provider": "nope"}]}), Channel::Sms)
            .unwrap_err();
        assert_eq!(e.field, "chain[0].provider");
        assert_eq!(
            e.reason,
            "unknown provider, expected one of sandbox, smtp, sendgrid, ses, twilio, meta, vonage"
        );
    }

    #[test]
    fn toml_input_has_the_same_shape_with_defaults() {
        let c = ChannelConfig::from_toml(
            "[[chain]]\nprovider = \"sendgrid\"\napi_key = \"SG.x\"\nfrom_email = \"a@b.co\"\n[rate_limits]\nper_second = 10\n",
            Channel::Email,
        )
        .unwrap();
        assert!(c.enabled && c.fallback_to_system);
        assert_eq!(c.rate_limits.per_second, Some(10));
    }
}
