//! A tenant's config of one channel, as written by operators (TOML or JSON
//! file, admin API body) and validated before anything is stored.

use crate::job::Channel;
use crate::provider::{ProviderSettings, SettingsError};
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
        let input: Input =
            serde_json::from_value(value).map_err(|e| ConfigError::new("", scrub(&e)))?;
        let mut chain = Vec::with_capacity(input.chain.len());
        for (i, entry) in input.chain.into_iter().enumerate() {
            let s: ProviderSettings = serde_json::from_value(entry)
                .map_err(|e| ConfigError::new(format!("chain[{i}]"), scrub(&e)))?;
            chain.push(s);
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

/// serde's messages quote the values they reject (`invalid type: string
/// "SG…"`): keep the words, drop anything quoted.
fn scrub(e: &serde_json::Error) -> String {
    let mut out = String::new();
    let mut quoted = false;
    for c in e.to_string().chars() {
        match c {
            '"' => {
                quoted = !quoted;
                if quoted {
                    out.push_str("\"…\"");
                }
            }
            _ if quoted => {}
            c => out.push(c),
        }
    }
    out
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
        assert_eq!(e.field, "chain[0]");
        assert!(!e.reason.contains("SG.secret"), "{}", e.reason);
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
