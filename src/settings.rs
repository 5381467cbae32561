//! Layered settings: `config/default.toml` (compiled in), an optional file,
//! then `OUTREACH__SECTION__KEY` environment variables. Each field is
//! documented in `config/default.toml`.

pub use crate::broker::{AmqpSettings, QueueType};
use crate::crypto::KeyConfig;
use crate::enum_names::{by_name, parse_name};
use crate::provider::ProviderSettings;
use serde::Deserialize;
use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

const DEFAULTS: &str = include_str!("../config/default.toml");

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub database: DatabaseSettings,
    pub amqp: AmqpSettings,
    pub worker: WorkerSettings,
    pub delivery_log: DeliveryLogSettings,
    pub http: HttpSettings,
    pub telemetry: TelemetrySettings,
    pub metrics: MetricsSettings,
    pub providers: ProvidersSettings,
    #[serde(default)]
    pub defaults: SystemDefaults,
    pub crypto: CryptoSettings,
    pub tenant_config: TenantConfigSettings,
    pub admin: AdminSettings,
    pub rate_limits: RateLimitSettings,
    pub circuit: crate::circuit::CircuitSettings,
    pub reconciler: ReconcilerSettings,
    pub webhooks: WebhookSettings,
}

/// The provider webhook receiver (`/webhooks/{provider}/{tenant}`), on a
/// listener of its own: providers reach it from the internet, so it must
/// not share a port with `/metrics` or the admin API.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSettings {
    /// Address to listen on; empty: no receiver in this process.
    pub bind: String,
    /// Largest request body accepted, bytes (413 above).
    pub max_body_bytes: usize,
    /// Signed SendGrid events and Vonage webhooks whose timestamp is further
    /// than this from now are refused (a replay).
    pub max_age_secs: u64,
    /// Origins (`scheme://host[:port]`, `*` one DNS label) SNS signing
    /// certificates and subscription URLs are fetched from.
    pub sns_cert_origins: Vec<String>,
    /// Longest time a request's line and headers may take to arrive, from
    /// the first wait for them (an idle kept-alive connection waits too);
    /// the connection is closed after it.
    pub header_read_timeout_ms: u64,
    /// Longest time a request's body may take to arrive, in total (a body
    /// dripped byte by byte is cut off too); 408 and the connection closed.
    pub body_read_timeout_ms: u64,
    /// Connections open at once; one more is answered 503 and closed.
    pub max_connections: usize,
}

impl WebhookSettings {
    pub fn header_read_timeout(&self) -> Duration {
        Duration::from_millis(self.header_read_timeout_ms)
    }

    pub fn body_read_timeout(&self) -> Duration {
        Duration::from_millis(self.body_read_timeout_ms)
    }
}

/// Provider and system-wide sending limits (tenants' own are in their config).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSettings {
    /// Longest wait for a send while holding a delivery, in milliseconds.
    pub max_inline_wait_ms: u64,
    /// Jobs of one tenant channel waiting in one worker at once.
    pub max_inline_waiters: usize,
    /// Deliveries in flight per held queue.
    pub held_prefetch: u16,
    pub provider_per_second: ProviderRates,
    pub system_per_second: ChannelRates,
}

/// Sends per second per account of each provider (0: none).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderRates {
    pub sandbox: u32,
    pub smtp: u32,
    pub sendgrid: u32,
    pub ses: u32,
    pub twilio: u32,
    pub meta: u32,
    pub vonage: u32,
}

impl ProviderRates {
    pub fn of(&self, kind: crate::provider::ProviderKind) -> u32 {
        use crate::provider::ProviderKind as K;
        match kind {
            K::Sandbox => self.sandbox,
            K::Smtp => self.smtp,
            K::Sendgrid => self.sendgrid,
            K::Ses => self.ses,
            K::Twilio => self.twilio,
            K::Meta => self.meta,
            K::Vonage => self.vonage,
        }
    }
}

/// Sends per second of each channel's system default account (0: none).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelRates {
    pub email: u32,
    pub sms: u32,
    pub whatsapp: u32,
}

impl ChannelRates {
    pub fn of(&self, channel: crate::job::Channel) -> u32 {
        use crate::job::Channel as C;
        match channel {
            C::Email => self.email,
            C::Sms => self.sms,
            C::Whatsapp => self.whatsapp,
        }
    }
}

/// Keys that encrypt tenants' stored credentials (see `crypto`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CryptoSettings {
    /// Every key that may have encrypted a stored value: `{ id, key }`, key in hex.
    #[serde(default)]
    pub keys: Vec<KeyConfig>,
    /// The key new values are encrypted with; the last of `keys` when unset.
    #[serde(default)]
    pub active_key: Option<String>,
}

/// The per-process cache of tenants' resolved provider chains.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantConfigSettings {
    /// Seconds a resolved chain is kept; changes also invalidate it at once (NOTIFY).
    pub cache_ttl_secs: u64,
    /// Most (tenant, channel) chains kept in memory.
    pub cache_max_entries: u64,
    /// Most provider accounts in one channel's chain (stored configs longer
    /// than this are refused; a longer chain stored earlier is cut here).
    pub max_chain_len: usize,
}

/// Bearer tokens of the admin API, stored as SHA-256 hex digests only, and
/// the API's bounds.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSettings {
    /// Tokens that may manage every tenant: `{ sha256, name }`, or a bare
    /// digest (named `operator-<first 8 hex>`).
    #[serde(default)]
    pub operator_token_sha256: Vec<OperatorToken>,
    /// Digests of tokens limited to one tenant.
    #[serde(default)]
    pub tenant_tokens: Vec<TenantToken>,
    /// Largest request body of any admin route, in bytes (413 above).
    #[serde(default = "default_admin_body")]
    pub max_body_bytes: usize,
    /// Requests per token per minute (429 with Retry-After above); 0: no limit.
    #[serde(default = "default_admin_rpm")]
    pub requests_per_minute: u32,
}

fn default_admin_body() -> usize {
    64 * 1024
}

fn default_admin_rpm() -> u32 {
    120
}

/// An operator token: a bare digest (as before) or a named one.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum OperatorToken {
    Digest(String),
    Named { sha256: String, name: String },
}

impl OperatorToken {
    pub fn sha256(&self) -> &str {
        match self {
            OperatorToken::Digest(d) => d,
            OperatorToken::Named { sha256, .. } => sha256,
        }
    }

    /// The name recorded in `config_audit` (`api:<name>`).
    pub fn name(&self) -> String {
        match self {
            OperatorToken::Digest(d) => format!("operator-{}", &d[..d.len().min(8)]),
            OperatorToken::Named { name, .. } => name.clone(),
        }
    }
}

impl From<String> for OperatorToken {
    fn from(d: String) -> Self {
        OperatorToken::Digest(d)
    }
}

/// A token that manages one tenant's config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantToken {
    /// The tenant it may manage.
    pub tenant: String,
    /// SHA-256 of the token, 64 hex characters (`outreach admin hash-token`).
    pub sha256: String,
    /// Who holds it; recorded as the actor in `config_audit`.
    pub name: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    pub url: String,
    pub max_connections: u32,
    pub acquire_timeout_secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerSettings {
    pub concurrency: usize,
    pub migrate_on_start: bool,
    pub max_attempts: u32,
    pub max_age_secs: u64,
    pub retry_delays_secs: Vec<u64>,
    pub quick_retries: usize,
    pub quick_retry_base_ms: u64,
    pub lease_secs: u64,
    pub shutdown_grace_secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliveryLogSettings {
    pub batch_size: usize,
    pub max_unrecorded: usize,
    pub record_patience_secs: u64,
    pub concurrent_batches: usize,
    pub record_batches: usize,
    pub store_content: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSettings {
    pub bind: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetrySettings {
    #[serde(deserialize_with = "by_name")]
    pub format: LogFormat,
    pub filter: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// JSON when stderr is not a terminal (a file, a pipe, a container log), text on a terminal.
    Auto,
    /// Text (colour only on a terminal).
    Pretty,
    Json,
}

/// `[metrics]`: what the Prometheus endpoint exports beyond the fixed series.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSettings {
    /// Tenants whose outcomes get series of their own (`outreach_tenant_outcomes_total`).
    pub tenant_labels: Vec<String>,
    /// Seconds between samples of the queue depths (`outreach_queue_messages`).
    pub queue_sample_secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProvidersSettings {
    pub timeout_secs: u64,
    pub connect_timeout_secs: u64,
    /// Public base URL of this service, for provider status callbacks.
    #[serde(default)]
    pub webhook_base_url: Option<url::Url>,
    /// Non-public networks provider calls may reach (`10.0.0.0/8`,
    /// `127.0.0.1/32`, a bare address); every other loopback, private,
    /// link-local, metadata… address is refused at call time.
    #[serde(default)]
    pub allowed_private_networks: Vec<String>,
    /// Endpoints tenant-scoped tokens may choose, per provider.
    pub allowed_hosts: AllowedHosts,
    /// SMTP ports tenant-scoped tokens may choose.
    pub allowed_smtp_ports: Vec<u16>,
}

/// Host names (`api.twilio.com`; `*` stands for one DNS label, as in
/// `email.*.amazonaws.com`) a tenant-scoped token may set as a provider's
/// `base_url` host (https only) or SMTP `host`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllowedHosts {
    #[serde(default)]
    pub sendgrid: Vec<String>,
    #[serde(default)]
    pub ses: Vec<String>,
    #[serde(default)]
    pub smtp: Vec<String>,
    #[serde(default)]
    pub twilio: Vec<String>,
    #[serde(default)]
    pub meta: Vec<String>,
    #[serde(default)]
    pub vonage: Vec<String>,
}

impl AllowedHosts {
    /// The list for a provider (empty for the sandbox, which has no endpoint).
    pub fn of(&self, kind: crate::provider::ProviderKind) -> &[String] {
        use crate::provider::ProviderKind as K;
        match kind {
            K::Sandbox => &[],
            K::Smtp => &self.smtp,
            K::Sendgrid => &self.sendgrid,
            K::Ses => &self.ses,
            K::Twilio => &self.twilio,
            K::Meta => &self.meta,
            K::Vonage => &self.vonage,
        }
    }

    /// Whether `host` matches an entry of `kind`'s list (case-insensitive).
    pub fn allows(&self, kind: crate::provider::ProviderKind, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.of(kind)
            .iter()
            .any(|p| host_matches(&p.to_ascii_lowercase(), &host))
    }
}

/// `pattern` against `host`, label by label; `*` matches exactly one label.
fn host_matches(pattern: &str, host: &str) -> bool {
    let (p, h): (Vec<&str>, Vec<&str>) = (pattern.split('.').collect(), host.split('.').collect());
    p.len() == h.len()
        && p.iter().zip(&h).all(|(p, h)| {
            !h.is_empty()
                && (*p == *h
                    || (*p == "*" && h.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')))
        })
}

/// The system default provider of each channel, if any. A channel without
/// one has no stand-in: a tenant without its own chain fails its jobs with
/// reason `no_provider` (the shipped configuration sets none; the sandbox must
/// be chosen explicitly).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SystemDefaults {
    #[serde(default, deserialize_with = "provider_settings")]
    pub email: Option<ProviderSettings>,
    #[serde(default, deserialize_with = "provider_settings")]
    pub sms: Option<ProviderSettings>,
    #[serde(default, deserialize_with = "provider_settings")]
    pub whatsapp: Option<ProviderSettings>,
}

/// Read a system default provider so that environment strings still become
/// numbers: `ProviderSettings` is tagged by `provider`, and serde buffers a
/// tagged enum before choosing the variant, which loses the `config` crate's
/// string-to-number conversion (`OUTREACH__DEFAULTS__EMAIL__PORT=2525` would
/// be refused as "a string, expected u16"). So: read the tag, then the
/// variant's own struct straight from the config value.
/// `provider = "none"` says "no system default" explicitly (to undo a file's
/// choice from the environment).
fn provider_settings<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<ProviderSettings>, D::Error> {
    let value = config::Value::deserialize(d)?;
    read_provider("", value).map_err(serde::de::Error::custom)
}

/// [`provider_settings`]' work; an error names its key under `key` (the
/// table's own). `Settings::load` reads each default with this before the
/// whole, where the key is known, so that a typo is named in full
/// (`defaults.email.api_kye`).
fn read_provider(
    key: &str,
    value: config::Value,
) -> Result<Option<ProviderSettings>, SettingsError> {
    use crate::provider::ProviderKind as K;
    let at = |inner: &str, e: config::ConfigError| {
        let full = match (key, inner) {
            (k, "" | ".") => k.to_owned(),
            ("", i) => i.to_owned(),
            (k, i) => format!("{k}.{i}"),
        };
        refused(&full, e)
    };
    let mut fields = value.into_table().map_err(|e| at("", e))?;
    let tag = fields
        .remove("provider")
        .ok_or_else(|| at("provider", config::ConfigError::NotFound("provider".into())))?
        .into_string()
        .map_err(|e| at("provider", e))?;
    if tag == "none" {
        return Ok(None);
    }
    let kind: K = parse_name(&tag).map_err(|m| at("provider", config::ConfigError::Message(m)))?;
    let rest = config::Value::new(None, fields);
    macro_rules! read {
        ($variant:ident) => {
            serde_path_to_error::deserialize(rest)
                .map(|p| Some(ProviderSettings::$variant(p)))
                .map_err(|e| at(&e.path().to_string(), e.into_inner()))
        };
    }
    match kind {
        K::Sandbox => read!(Sandbox),
        K::Smtp => read!(Smtp),
        K::Sendgrid => read!(Sendgrid),
        K::Ses => read!(Ses),
        K::Twilio => read!(Twilio),
        K::Meta => read!(Meta),
        K::Vonage => read!(Vonage),
    }
}

/// A setting refused while reading, named by its full key. `path` is where
/// serde was (it names an unknown key, `amqp.prefech`); the `config` crate's
/// own key is used when it is longer.
fn refused(path: &str, mut err: config::ConfigError) -> SettingsError {
    use config::ConfigError as E;
    let mut key = match path {
        "" | "." | "?" => String::new(),
        p => p.to_owned(),
    };
    let longer = |key: &mut String, k: Option<String>| {
        if let Some(k) = k.filter(|k| k.len() > key.len()) {
            *key = k;
        }
    };
    while let E::At { error, key: k, .. } = err {
        longer(&mut key, k);
        err = *error;
    }
    let reason = match err {
        E::Type {
            origin,
            unexpected,
            expected,
            key: k,
        } => {
            longer(&mut key, k);
            E::Type {
                origin,
                unexpected,
                expected,
                key: None,
            }
            .to_string()
        }
        E::NotFound(k) => {
            longer(&mut key, Some(k));
            "is missing".to_owned()
        }
        other => other.to_string(),
    };
    SettingsError::Refused { key, reason }
}

/// A setting that cannot work, named so it can be fixed.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("configuration could not be read: {0}")]
    Load(#[from] config::ConfigError),
    #[error("setting `{key}`: {reason}")]
    Invalid { key: &'static str, reason: String },
    /// A key that is unknown or whose value does not fit, when reading.
    #[error("setting `{key}`: {reason}")]
    Refused { key: String, reason: String },
}

impl Settings {
    /// Defaults, then `file` if given, then the environment.
    pub fn load(file: Option<&Path>) -> Result<Self, SettingsError> {
        Self::load_with_env(file, outreach_env()?)
    }

    /// [`Self::load`] with the environment passed in (tests cannot safely
    /// change the process's own).
    fn load_with_env(
        file: Option<&Path>,
        env: HashMap<String, String>,
    ) -> Result<Self, SettingsError> {
        let mut b = config::Config::builder()
            .add_source(config::File::from_str(DEFAULTS, config::FileFormat::Toml));
        if let Some(path) = file {
            b = b.add_source(config::File::from(path).required(true));
        }
        // Values stay strings (no `try_parsing`): serde reads "500" as a
        // number where the field is one, while a phone number such as
        // +14155550100 or a numeric Meta phone-number id stays text instead
        // of being turned into an integer that the string field refuses.
        b = b.add_source(
            config::Environment::with_prefix("OUTREACH")
                .prefix_separator("__")
                .separator("__")
                .source(Some(env.clone())),
        );
        // Without `try_parsing` the crate no longer splits lists, so the list
        // settings are split here (a single value is a one-element list).
        for key in LIST_KEYS {
            if let Some(list) = env_value(&env, &env_name(key)) {
                let items: Vec<String> = list
                    .split(',')
                    .map(str::trim)
                    .filter(|i| !i.is_empty())
                    .map(str::to_owned)
                    .collect();
                b = b.set_override(key, items)?;
            }
        }
        let config = b.build()?;
        for channel in crate::job::Channel::ALL {
            let key = format!("defaults.{channel}");
            if let Ok(value) = config.get::<config::Value>(&key) {
                read_provider(&key, value)?;
            }
        }
        let mut s: Settings = serde_path_to_error::deserialize(config)
            .map_err(|e| refused(&e.path().to_string(), e.into_inner()))?;
        if let Some(keys) = env_value(&env, KEYS_ENV) {
            s.crypto.keys.extend(parse_key_list(keys)?);
        }
        s.validate()?;
        Ok(s)
    }

    /// Combinations the types cannot express.
    pub fn validate(&self) -> Result<(), SettingsError> {
        let bad = |key, reason: &str| {
            Err(SettingsError::Invalid {
                key,
                reason: reason.into(),
            })
        };
        if self.worker.retry_delays_secs.is_empty() || self.worker.retry_delays_secs.contains(&0) {
            return bad(
                "worker.retry_delays_secs",
                "needs at least one delay, each above 0 seconds",
            );
        }
        if self.metrics.tenant_labels.len() > crate::metrics::tenants::MAX_LISTED {
            return bad(
                "metrics.tenant_labels",
                "lists too many tenants (at most 200): each adds a dozen series; use the admin API or outreach_logs for the rest",
            );
        }
        if self.metrics.queue_sample_secs == 0 {
            return bad("metrics.queue_sample_secs", "must be at least 1");
        }
        if self.worker.concurrency == 0 {
            return bad("worker.concurrency", "must be at least 1");
        }
        if self.amqp.prefetch == 0 {
            return bad(
                "amqp.prefetch",
                "must be at least 1 (0 would mean unlimited)",
            );
        }
        if !(1..=256).contains(&self.amqp.work_queues) {
            return bad("amqp.work_queues", "must be between 1 and 256");
        }
        if self.webhooks.max_body_bytes == 0 || self.webhooks.max_age_secs == 0 {
            return bad(
                "webhooks.max_body_bytes",
                "webhooks.max_body_bytes and webhooks.max_age_secs must be above 0",
            );
        }
        let w = &self.webhooks;
        if w.header_read_timeout_ms == 0 || w.body_read_timeout_ms == 0 || w.max_connections == 0 {
            return bad(
                "webhooks.max_connections",
                "webhooks.header_read_timeout_ms, body_read_timeout_ms and max_connections must be above 0",
            );
        }
        if self.amqp.queue_type == QueueType::Classic && self.amqp.url.len() > 1 {
            return bad(
                "amqp.queue_type",
                "classic queues live on one node and are lost while it is down: \
                 with several nodes in amqp.url use quorum",
            );
        }
        if self.amqp.connect_timeout_ms == 0 {
            return bad("amqp.connect_timeout_ms", "must be at least 1");
        }
        if self.amqp.liveness_timeout_ms < 100 {
            return bad(
                "amqp.liveness_timeout_ms",
                "must be at least 100 (a busy node answers within milliseconds)",
            );
        }
        if self.amqp.prefix.is_empty() || self.amqp.prefix.contains(char::is_whitespace) {
            return bad("amqp.prefix", "must be a non-empty name without spaces");
        }
        if self.delivery_log.batch_size == 0
            || self.delivery_log.concurrent_batches == 0
            || self.delivery_log.record_batches == 0
        {
            return bad(
                "delivery_log.batch_size",
                "batch_size, concurrent_batches and record_batches must be at least 1",
            );
        }
        if self.rate_limits.held_prefetch == 0 {
            return bad("rate_limits.held_prefetch", "must be at least 1");
        }
        let c = &self.circuit;
        if c.min_calls == 0 || c.half_open_probes == 0 || !(0.0..=1.0).contains(&c.min_success_rate)
        {
            return bad(
                "circuit",
                "min_calls and half_open_probes must be at least 1, min_success_rate within 0..1",
            );
        }
        if self.tenant_config.cache_max_entries == 0 {
            return bad("tenant_config.cache_max_entries", "must be at least 1");
        }
        if self.tenant_config.max_chain_len == 0 {
            return bad("tenant_config.max_chain_len", "must be at least 1");
        }
        if self.admin.max_body_bytes < 1024 {
            return bad("admin.max_body_bytes", "must be at least 1024");
        }
        if self.providers.timeout_secs == 0 || self.providers.connect_timeout_secs == 0 {
            return bad(
                "providers.timeout_secs",
                "timeout_secs and connect_timeout_secs must be at least 1",
            );
        }
        if let Err(e) = self.network_policy() {
            return Err(SettingsError::Invalid {
                key: "providers.allowed_private_networks",
                reason: e,
            });
        }
        let is_digest = |h: &str| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit());
        if !self
            .admin
            .operator_token_sha256
            .iter()
            .all(|t| is_digest(t.sha256()))
        {
            return bad(
                "admin.operator_token_sha256",
                "each entry must be 64 hex characters (outreach admin hash-token)",
            );
        }
        if !self
            .admin
            .tenant_tokens
            .iter()
            .all(|t| is_digest(&t.sha256))
        {
            return bad(
                "admin.tenant_tokens",
                "each sha256 must be 64 hex characters (outreach admin hash-token)",
            );
        }
        // Builds the ring once so a bad key stops start-up, not the first tenant.
        if let Err(e) = self.key_ring() {
            return Err(SettingsError::Invalid {
                key: "crypto.keys",
                reason: e.to_string(),
            });
        }
        for (key, p) in [
            ("defaults.email", &self.defaults.email),
            ("defaults.sms", &self.defaults.sms),
            ("defaults.whatsapp", &self.defaults.whatsapp),
        ] {
            if let Some(Err(e)) = p.as_ref().map(|p| p.validate()) {
                return Err(SettingsError::Invalid {
                    key,
                    reason: e.to_string(),
                });
            }
        }
        Ok(())
    }

    /// The channel's system default account, if one is configured.
    pub fn system_default(&self, channel: crate::job::Channel) -> Option<&ProviderSettings> {
        match channel {
            crate::job::Channel::Email => self.defaults.email.as_ref(),
            crate::job::Channel::Sms => self.defaults.sms.as_ref(),
            crate::job::Channel::Whatsapp => self.defaults.whatsapp.as_ref(),
        }
    }

    /// Channels with no system default account (their tenants need a chain).
    pub fn channels_without_default(&self) -> Vec<crate::job::Channel> {
        crate::job::Channel::ALL
            .into_iter()
            .filter(|c| self.system_default(*c).is_none())
            .collect()
    }

    /// Every channel's system default set to the sandbox (which records and
    /// sends nothing; its outcomes are `simulated`), where none is
    /// configured: `outreach demo` and tests.
    pub fn sandbox_where_no_default(&mut self) {
        let sandbox = || Some(ProviderSettings::Sandbox(Default::default()));
        for slot in [
            &mut self.defaults.email,
            &mut self.defaults.sms,
            &mut self.defaults.whatsapp,
        ] {
            if slot.is_none() {
                *slot = sandbox();
            }
        }
    }

    /// The configured encryption keys (possibly none).
    pub fn key_ring(&self) -> Result<crate::crypto::KeyRing, crate::crypto::CryptoError> {
        crate::crypto::KeyRing::from_config(&self.crypto.keys, self.crypto.active_key.as_deref())
    }

    pub fn max_inline_wait(&self) -> Duration {
        Duration::from_millis(self.rate_limits.max_inline_wait_ms)
    }

    pub fn provider_timeout(&self) -> Duration {
        Duration::from_secs(self.providers.timeout_secs)
    }

    pub fn provider_connect_timeout(&self) -> Duration {
        Duration::from_secs(self.providers.connect_timeout_secs)
    }

    /// Where provider calls may connect (`providers.allowed_private_networks`).
    pub fn network_policy(&self) -> Result<crate::provider::net::NetworkPolicy, String> {
        crate::provider::net::NetworkPolicy::allowing(&self.providers.allowed_private_networks)
    }

    /// Let provider calls reach 127.0.0.1 (fakes in tests, the bench).
    pub fn allow_loopback(&mut self) {
        let lo = "127.0.0.1/32".to_owned();
        if !self.providers.allowed_private_networks.contains(&lo) {
            self.providers.allowed_private_networks.push(lo);
        }
    }
}

/// Keys in one variable, `kid:hex,kid:hex` (the `config` crate's nested-list
/// env form, `OUTREACH__CRYPTO__KEYS__0__ID`, is too awkward for secrets
/// managers). Appended after the keys from files, so the last one here is
/// active unless `crypto.active_key` says otherwise.
pub const KEYS_ENV: &str = "OUTREACH_ENCRYPTION_KEYS";

/// Settings given in the environment as one comma-separated variable, e.g.
/// `OUTREACH__WORKER__RETRY_DELAYS_SECS=5,30,120`.
const LIST_KEYS: [&str; 6] = [
    "amqp.url",
    "worker.retry_delays_secs",
    "metrics.tenant_labels",
    "admin.operator_token_sha256",
    "providers.allowed_private_networks",
    "webhooks.sns_cert_origins",
];

/// `worker.retry_delays_secs` → `OUTREACH__WORKER__RETRY_DELAYS_SECS`.
fn env_name(key: &str) -> String {
    format!("OUTREACH__{}", key.replace('.', "__").to_uppercase())
}

/// Case-insensitive, like the `config` crate's own reading of the names.
fn env_value<'a>(env: &'a HashMap<String, String>, name: &str) -> Option<&'a str> {
    env.iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// The process's `OUTREACH…` variables.
fn outreach_env() -> Result<HashMap<String, String>, SettingsError> {
    let mut env = HashMap::new();
    for (k, v) in std::env::vars_os() {
        let Some(k) = k
            .to_str()
            .filter(|k| k.to_ascii_uppercase().starts_with("OUTREACH"))
        else {
            continue;
        };
        let v = v.into_string().map_err(|_| SettingsError::Invalid {
            key: "environment",
            reason: format!("{k} is not valid UTF-8"),
        })?;
        env.insert(k.to_owned(), v);
    }
    Ok(env)
}

fn parse_key_list(list: &str) -> Result<Vec<KeyConfig>, SettingsError> {
    list.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|pair| match pair.split_once(':') {
            Some((id, key)) => Ok(KeyConfig {
                id: id.trim().to_owned(),
                key: key.trim().into(),
            }),
            // The entry is not quoted: it may be a bare key.
            None => Err(SettingsError::Invalid {
                key: KEYS_ENV,
                reason: "expected kid:hexkey pairs separated by commas".into(),
            }),
        })
        .collect()
}

/// Reconciler tuning (`[reconciler]` in the settings).
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReconcilerSettings {
    /// Seconds between two passes.
    pub interval_secs: u64,
    /// How far past its expected time a row must be to count as overdue.
    pub grace_secs: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_load_and_point_at_local_services() {
        let s = Settings::load(None).unwrap();
        assert!(s.database.url.contains("127.0.0.1"));
        assert_eq!(format!("{:?}", s.amqp.url), r#"["127.0.0.1:5672"]"#);
        // No silent stand-in: the sandbox is never a default.
        assert_eq!(s.channels_without_default(), crate::job::Channel::ALL);
    }

    #[test]
    fn the_key_list_variable_is_read_as_kid_colon_key_pairs() {
        let keys = parse_key_list(&format!("a:{}, b:{}", "0".repeat(64), "1".repeat(64))).unwrap();
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[1].id, "b");
        let err = parse_key_list("justakey").unwrap_err().to_string();
        assert!(!err.contains("justakey"));
    }

    fn with_env(vars: &[(&str, &str)]) -> Result<Settings, SettingsError> {
        let env = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::load_with_env(None, env)
    }

    #[test]
    fn a_phone_number_from_the_environment_stays_text_with_its_plus() {
        let s = with_env(&[
            ("OUTREACH__DEFAULTS__SMS__PROVIDER", "twilio"),
            (
                "OUTREACH__DEFAULTS__SMS__ACCOUNT_SID",
                &format!("AC{}", "0".repeat(32)),
            ),
            ("OUTREACH__DEFAULTS__SMS__AUTH_TOKEN", "123456"),
            ("OUTREACH__DEFAULTS__SMS__FROM", "+14155550100"),
        ])
        .unwrap();
        let Some(ProviderSettings::Twilio(t)) = &s.defaults.sms else {
            panic!("expected twilio, got {:?}", s.defaults.sms);
        };
        assert_eq!(t.from.as_deref(), Some("+14155550100"));
        use secrecy::ExposeSecret;
        assert_eq!(t.auth_token.expose_secret(), "123456");
    }

    #[test]
    fn a_numeric_id_from_the_environment_stays_text() {
        let s = with_env(&[
            ("OUTREACH__DEFAULTS__WHATSAPP__PROVIDER", "meta"),
            ("OUTREACH__DEFAULTS__WHATSAPP__ACCESS_TOKEN", "EAAG-token"),
            (
                "OUTREACH__DEFAULTS__WHATSAPP__PHONE_NUMBER_ID",
                "106540352242922",
            ),
        ])
        .unwrap();
        let Some(ProviderSettings::Meta(m)) = &s.defaults.whatsapp else {
            panic!("expected meta");
        };
        assert_eq!(m.phone_number_id, "106540352242922");
    }

    #[test]
    fn numbers_from_the_environment_are_parsed_where_the_setting_is_a_number() {
        let s = with_env(&[
            ("OUTREACH__AMQP__PREFETCH", "500"),
            ("OUTREACH__DEFAULTS__EMAIL__PROVIDER", "smtp"),
            ("OUTREACH__DEFAULTS__EMAIL__HOST", "127.0.0.1"),
            ("OUTREACH__DEFAULTS__EMAIL__PORT", "2525"),
            ("OUTREACH__DEFAULTS__EMAIL__SECURITY", "none"),
            ("OUTREACH__DEFAULTS__EMAIL__FROM_EMAIL", "a@b.co"),
        ])
        .unwrap();
        assert_eq!(s.amqp.prefetch, 500);
        let Some(ProviderSettings::Smtp(smtp)) = &s.defaults.email else {
            panic!("expected smtp");
        };
        assert_eq!(smtp.port, Some(2525));
    }

    #[test]
    fn a_number_setting_that_is_not_a_number_is_refused_naming_it() {
        let err = with_env(&[("OUTREACH__AMQP__PREFETCH", "lots")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("prefetch"), "{err}");
    }

    #[test]
    fn booleans_from_the_environment_work() {
        let s = with_env(&[
            ("OUTREACH__WORKER__MIGRATE_ON_START", "false"),
            ("OUTREACH__DELIVERY_LOG__STORE_CONTENT", "true"),
        ])
        .unwrap();
        assert!(!s.worker.migrate_on_start);
        assert!(s.delivery_log.store_content);
    }

    #[test]
    fn lists_from_the_environment_are_split_on_commas() {
        let (a, b) = ("a".repeat(64), "b".repeat(64));
        let s = with_env(&[
            (
                "OUTREACH__ADMIN__OPERATOR_TOKEN_SHA256",
                &format!("{a},{b}"),
            ),
            ("OUTREACH__WORKER__RETRY_DELAYS_SECS", "5, 30,120"),
        ])
        .unwrap();
        assert_eq!(
            s.admin.operator_token_sha256,
            vec![OperatorToken::Digest(a), OperatorToken::Digest(b)]
        );
        assert_eq!(s.worker.retry_delays_secs, vec![5, 30, 120]);
        let one = with_env(&[("OUTREACH__WORKER__RETRY_DELAYS_SECS", "7")]).unwrap();
        assert_eq!(one.worker.retry_delays_secs, vec![7]);
    }

    #[test]
    fn provider_none_removes_a_system_default_set_by_an_earlier_layer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("o.toml");
        std::fs::write(&path, "[defaults.sms]\nprovider = \"sandbox\"\n").unwrap();
        let mut env = HashMap::new();
        env.insert(
            "OUTREACH__DEFAULTS__SMS__PROVIDER".to_string(),
            "none".to_string(),
        );
        let s = Settings::load_with_env(Some(&path), env).unwrap();
        assert!(s.defaults.sms.is_none());
        let s = Settings::load_with_env(Some(&path), HashMap::new()).unwrap();
        assert_eq!(
            s.defaults.sms.as_ref().map(|p| p.kind()),
            Some(crate::provider::ProviderKind::Sandbox)
        );
    }

    #[test]
    fn encryption_keys_from_their_own_variable_are_still_read() {
        let s = with_env(&[(KEYS_ENV, &format!("k1:{}", "1".repeat(64)))]).unwrap();
        assert_eq!(s.crypto.keys.len(), 1);
        assert_eq!(s.crypto.keys[0].id, "k1");
    }

    fn refused(vars: &[(&str, &str)]) -> (String, String) {
        match with_env(vars).unwrap_err() {
            SettingsError::Refused { key, reason } => (key, reason),
            other => panic!("expected a refused setting, got {other}"),
        }
    }

    fn from_file(toml: &str) -> Result<Settings, SettingsError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("o.toml");
        std::fs::write(&path, toml).unwrap();
        Settings::load_with_env(Some(&path), HashMap::new())
    }

    #[test]
    fn cluster_nodes_come_from_a_toml_list_or_a_comma_separated_variable() {
        let s = from_file("[amqp]\nurl = [\"amqp://u:p@a:5681/%2f\", \"amqp://u:p@b:5682/%2f\"]\n")
            .unwrap();
        assert_eq!(format!("{:?}", s.amqp.url), r#"["a:5681", "b:5682"]"#);
        let s = with_env(&[(
            "OUTREACH__AMQP__URL",
            "amqp://u:p@a:5681/%2f,amqp://u:p@b:5682/%2f,amqp://u:p@c:5683/%2f",
        )])
        .unwrap();
        assert_eq!(
            format!("{:?}", s.amqp.url),
            r#"["a:5681", "b:5682", "c:5683"]"#
        );
        let s = with_env(&[("OUTREACH__AMQP__URL", "amqp://u:p@a:5681,b:5682/%2f")]).unwrap();
        assert_eq!(format!("{:?}", s.amqp.url), r#"["a:5681", "b:5682"]"#);
    }

    #[test]
    fn classic_queues_are_refused_with_several_nodes() {
        let err = with_env(&[
            ("OUTREACH__AMQP__URL", "amqp://u:p@a,b/%2f"),
            ("OUTREACH__AMQP__QUEUE_TYPE", "classic"),
        ])
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("setting `amqp.queue_type`"), "{err}");
    }

    #[test]
    fn an_unknown_key_in_the_environment_is_refused_by_its_full_name() {
        let (key, reason) = refused(&[("OUTREACH__AMQP__PREFECH", "5")]);
        assert_eq!(key, "amqp.prefech");
        assert!(reason.contains("`prefetch`"), "{reason}");
        let (key, _) = refused(&[("OUTREACH__AMQPP__PREFETCH", "5")]);
        assert_eq!(key, "amqpp");
        let (key, _) = refused(&[("OUTREACH__RATE_LIMITS__PROVIDER_PER_SECOND__TWILLIO", "5")]);
        assert_eq!(key, "rate_limits.provider_per_second.twillio");
        let (key, _) = refused(&[("OUTREACH__CIRCUIT__OPEN_SEC", "5")]);
        assert_eq!(key, "circuit.open_sec");
    }

    #[test]
    fn an_unknown_key_in_a_file_is_refused_by_its_full_name() {
        let err = from_file("[amqp]\nprefech = 5\n").unwrap_err().to_string();
        assert!(
            err.starts_with("setting `amqp.prefech`: unknown field"),
            "{err}"
        );
        let err = from_file("[[crypto.keys]]\nid = \"k1\"\nkey = \"00\"\nkid = \"k\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("`crypto.keys[0].kid`"), "{err}");
        let err = from_file(
            "[admin]\ntenant_tokens = [{ tenant = \"t\", sha256 = \"00\", nam = \"n\" }]\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("`admin.tenant_tokens[0].nam`"), "{err}");
    }

    #[test]
    fn an_unknown_key_of_a_default_provider_is_refused_by_its_full_name() {
        let (key, reason) = refused(&[
            ("OUTREACH__DEFAULTS__EMAIL__PROVIDER", "sendgrid"),
            ("OUTREACH__DEFAULTS__EMAIL__API_KYE", "SG.x"),
            ("OUTREACH__DEFAULTS__EMAIL__FROM_EMAIL", "a@b.co"),
        ]);
        assert_eq!(key, "defaults.email.api_kye");
        assert!(reason.contains("`api_key`"), "{reason}");
        assert!(!reason.contains("SG.x"), "{reason}");
        let err = from_file("[defaults.sms]\nprovider = \"sandbox\"\nrecord_fil = \"x\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("setting `defaults.sms.record_fil`: unknown field"),
            "{err}"
        );
        let err = from_file("[defaults]\nemial = { provider = \"sandbox\" }\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("setting `defaults.emial`: unknown field"),
            "{err}"
        );
    }

    #[test]
    fn a_wrong_choice_lists_the_right_ones_in_words() {
        let (key, reason) = refused(&[("OUTREACH__AMQP__QUEUE_TYPE", "quorom")]);
        assert_eq!(key, "amqp.queue_type");
        assert_eq!(
            reason,
            "unknown value `quorom`, expected `quorum` or `classic`"
        );
        let (key, reason) = refused(&[("OUTREACH__TELEMETRY__FORMAT", "xml")]);
        assert_eq!(key, "telemetry.format");
        assert_eq!(
            reason,
            "unknown value `xml`, expected one of `auto`, `pretty`, `json`"
        );
        let (key, reason) = refused(&[("OUTREACH__DEFAULTS__SMS__PROVIDER", "twillio")]);
        assert_eq!(key, "defaults.sms.provider");
        assert_eq!(
            reason,
            "unknown value `twillio`, expected one of `sandbox`, `smtp`, `sendgrid`, `ses`, `twilio`, `meta`, `vonage`"
        );
        let (key, reason) = refused(&[
            ("OUTREACH__DEFAULTS__EMAIL__PROVIDER", "smtp"),
            ("OUTREACH__DEFAULTS__EMAIL__HOST", "127.0.0.1"),
            ("OUTREACH__DEFAULTS__EMAIL__SECURITY", "ssl"),
            ("OUTREACH__DEFAULTS__EMAIL__FROM_EMAIL", "a@b.co"),
        ]);
        assert_eq!(key, "defaults.email.security");
        assert_eq!(
            reason,
            "unknown value `ssl`, expected one of `none`, `starttls`, `tls`"
        );
        // The same from a file.
        let err = from_file("[amqp]\nqueue_type = \"quorom\"\n")
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "setting `amqp.queue_type`: unknown value `quorom`, expected `quorum` or `classic`"
        );
        // And the right ones still work, in any source.
        let s = with_env(&[
            ("OUTREACH__AMQP__QUEUE_TYPE", "classic"),
            ("OUTREACH__TELEMETRY__FORMAT", "json"),
        ])
        .unwrap();
        assert_eq!(s.amqp.queue_type, QueueType::Classic);
        assert_eq!(s.telemetry.format, LogFormat::Json);
    }

    #[test]
    fn a_file_overrides_the_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("o.toml");
        std::fs::write(&path, "[amqp]\nprefetch = 7\n[defaults.email]\nprovider = \"smtp\"\nhost = \"127.0.0.1\"\nport = 2525\nsecurity = \"none\"\nfrom_email = \"a@b.co\"\n").unwrap();
        let s = Settings::load(Some(&path)).unwrap();
        assert_eq!(s.amqp.prefetch, 7);
        assert_eq!(
            s.defaults.email.as_ref().map(|p| p.kind()),
            Some(crate::provider::ProviderKind::Smtp)
        );
    }
}
