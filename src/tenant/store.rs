//! Tenants' channel configs in PostgreSQL, secrets encrypted field by field.
//!
//! Every change runs in one transaction that also writes a `config_audit` row
//! (field names only) and `NOTIFY outreach_tenant_config, '<tenant>'`, so
//! workers drop their cached chain as soon as the change is committed, and
//! never for a change that was rolled back.

use super::model::{ChannelConfig, ConfigError, QuietHours, RateLimits};
use super::sealed::{self, SealError};
use crate::crypto::{CryptoError, FieldContext, KeyRing};
use crate::job::{Channel, TenantId};
use crate::provider::{ProviderKind, ProviderSettings};
use secrecy::ExposeSecret;
use serde_json::Value;
use sqlx::types::Json;
use sqlx::{PgPool, Postgres, Transaction};
use std::sync::Arc;
use time::OffsetDateTime;

/// The PostgreSQL channel workers LISTEN on; the payload is the tenant id.
pub const NOTIFY_CHANNEL: &str = "outreach_tenant_config";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Invalid(#[from] ConfigError),
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    #[error(transparent)]
    Seal(#[from] SealError),
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
}

/// A row as stored: chain entries still sealed.
#[derive(Debug, Clone)]
pub struct StoredConfig {
    pub tenant: TenantId,
    pub channel: Channel,
    pub enabled: bool,
    pub fallback_to_system: bool,
    pub chain: Vec<Value>,
    pub rate_limits: RateLimits,
    pub quiet_hours: Option<QuietHours>,
    pub time_zone: Option<String>,
    pub version: i64,
    pub updated_at: OffsetDateTime,
}

impl StoredConfig {
    /// The provider of each entry, read without decrypting anything.
    pub fn providers(&self) -> Vec<Option<ProviderKind>> {
        self.chain
            .iter()
            .map(|e| serde_json::from_value(e.get("provider")?.clone()).ok())
            .collect()
    }
}

type Row = (
    String,
    Channel,
    bool,
    bool,
    Json<Vec<Value>>,
    Json<RateLimits>,
    Option<Json<QuietHours>>,
    Option<String>,
    i64,
    OffsetDateTime,
);

const SELECT: &str = "SELECT tenant_id, channel, enabled, fallback_to_system, chain, rate_limits, \
     quiet_hours, time_zone, version, updated_at FROM tenant_channel_configs";

fn from_row(r: Row) -> Result<StoredConfig, StoreError> {
    Ok(StoredConfig {
        // Ids were validated on the way in; a bad one here is corrupt data.
        tenant: TenantId::parse(&r.0).map_err(|_| sqlx::Error::Decode("tenant_id".into()))?,
        channel: r.1,
        enabled: r.2,
        fallback_to_system: r.3,
        chain: r.4.0,
        rate_limits: r.5.0,
        quiet_hours: r.6.map(|q| q.0),
        time_zone: r.7,
        version: r.8,
        updated_at: r.9,
    })
}

/// Most chain entries per channel unless configured otherwise
/// (`tenant_config.max_chain_len`).
pub const DEFAULT_MAX_CHAIN_LEN: usize = 5;

/// Reads and writes tenants' configs.
#[derive(Clone)]
pub struct TenantStore {
    pool: PgPool,
    keys: Arc<KeyRing>,
    max_chain_len: usize,
}

impl TenantStore {
    pub fn new(pool: PgPool, keys: Arc<KeyRing>) -> Self {
        Self {
            pool,
            keys,
            max_chain_len: DEFAULT_MAX_CHAIN_LEN,
        }
    }

    /// Refuse chains longer than `n` entries (`tenant_config.max_chain_len`).
    pub fn with_max_chain_len(mut self, n: usize) -> Self {
        self.max_chain_len = n.max(1);
        self
    }

    pub fn max_chain_len(&self) -> usize {
        self.max_chain_len
    }

    /// The chain-length rule, on its own so callers can apply it before
    /// parsing a long document.
    pub fn check_chain_len(&self, len: usize) -> Result<(), ConfigError> {
        if len > self.max_chain_len {
            return Err(ConfigError::new(
                "chain",
                format!(
                    "at most {} providers per channel (tenant_config.max_chain_len)",
                    self.max_chain_len
                ),
            ));
        }
        Ok(())
    }

    pub fn keys(&self) -> &KeyRing {
        &self.keys
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Validate, encrypt and store `cfg` (creating the tenant if needed);
    /// returns the new version. Nothing is written when any check fails.
    pub async fn put(
        &self,
        tenant: &TenantId,
        channel: Channel,
        cfg: &ChannelConfig,
        actor: &str,
    ) -> Result<i64, StoreError> {
        self.check_chain_len(cfg.chain.len())?;
        cfg.validate(channel)?;
        cfg.check_paths()?;
        let chain = cfg
            .chain
            .iter()
            .enumerate()
            .map(|(i, e)| sealed::seal(&self.keys, tenant, channel, i, e))
            .collect::<Result<Vec<_>, _>>()?;
        let mut tx = self.pool.begin().await?;
        sqlx::query("INSERT INTO tenants (id) VALUES ($1) ON CONFLICT (id) DO NOTHING")
            .bind(tenant.as_str())
            .execute(&mut *tx)
            .await?;
        let previous = sqlx::query_as::<_, Row>(sqlx::AssertSqlSafe(format!(
            "{SELECT} WHERE tenant_id = $1 AND channel = $2 FOR UPDATE"
        )))
        .bind(tenant.as_str())
        .bind(channel)
        .fetch_optional(&mut *tx)
        .await?
        .map(from_row)
        .transpose()?;
        let changed = self.changed_fields(previous.as_ref(), cfg);
        let version: i64 = sqlx::query_scalar(
            "INSERT INTO tenant_channel_configs (tenant_id, channel, enabled, fallback_to_system, \
                 chain, rate_limits, quiet_hours, time_zone) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
             ON CONFLICT (tenant_id, channel) DO UPDATE SET enabled = $3, fallback_to_system = $4, \
                 chain = $5, rate_limits = $6, quiet_hours = $7, time_zone = $8, \
                 version = tenant_channel_configs.version + 1, updated_at = now() \
             RETURNING version",
        )
        .bind(tenant.as_str())
        .bind(channel)
        .bind(cfg.enabled)
        .bind(cfg.fallback_to_system)
        .bind(Json(&chain))
        .bind(Json(&cfg.rate_limits))
        .bind(cfg.quiet_hours.as_ref().map(Json))
        .bind(cfg.time_zone.as_deref())
        .fetch_one(&mut *tx)
        .await?;
        audit_and_notify(&mut tx, actor, tenant, Some(channel), "put", &changed).await?;
        tx.commit().await?;
        Ok(version)
    }

    /// Names of what `cfg` changes compared with the stored row (values are
    /// compared, never recorded).
    fn changed_fields(&self, old: Option<&StoredConfig>, cfg: &ChannelConfig) -> Vec<String> {
        let Some(old) = old else {
            return vec!["created".into()];
        };
        let mut out = vec![];
        let mut note = |changed: bool, name: &str| {
            if changed {
                out.push(name.to_owned());
            }
        };
        note(old.enabled != cfg.enabled, "enabled");
        note(
            old.fallback_to_system != cfg.fallback_to_system,
            "fallback_to_system",
        );
        note(old.rate_limits != cfg.rate_limits, "rate_limits");
        note(old.quiet_hours != cfg.quiet_hours, "quiet_hours");
        note(old.time_zone != cfg.time_zone, "time_zone");
        for i in 0..old.chain.len().max(cfg.chain.len()) {
            let (Some(was), Some(now)) = (old.chain.get(i), cfg.chain.get(i)) else {
                out.push(format!("chain[{i}]"));
                continue;
            };
            let public = serde_json::to_value(now).expect("settings serialize");
            let secrets = ProviderSettings::secret_fields(now.kind());
            for (k, v) in public.as_object().into_iter().flatten() {
                if was.get(k) != Some(v) {
                    out.push(format!("chain[{i}].{k}"));
                }
            }
            for name in secrets {
                let path = sealed::field_path(old.channel, i, name);
                let ctx = FieldContext::new(old.tenant.as_str(), &path);
                let before = was
                    .get(*name)
                    .and_then(Value::as_str)
                    .and_then(|s| self.keys.decrypt(s, &ctx).ok());
                let same = match (before, now.secret(name)) {
                    (Some(b), Some(n)) => b.expose_secret() == n.expose_secret(),
                    (None, None) => was.get(*name).is_none(),
                    _ => false,
                };
                if !same {
                    out.push(format!("chain[{i}].{name}"));
                }
            }
        }
        out
    }

    pub async fn get(
        &self,
        tenant: &TenantId,
        channel: Channel,
    ) -> Result<Option<StoredConfig>, StoreError> {
        sqlx::query_as::<_, Row>(sqlx::AssertSqlSafe(format!(
            "{SELECT} WHERE tenant_id = $1 AND channel = $2"
        )))
        .bind(tenant.as_str())
        .bind(channel)
        .fetch_optional(&self.pool)
        .await?
        .map(from_row)
        .transpose()
    }

    /// Every channel config of one tenant.
    pub async fn get_tenant(&self, tenant: &TenantId) -> Result<Vec<StoredConfig>, StoreError> {
        let rows = sqlx::query_as::<_, Row>(sqlx::AssertSqlSafe(format!(
            "{SELECT} WHERE tenant_id = $1 ORDER BY channel"
        )))
        .bind(tenant.as_str())
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(from_row).collect()
    }

    /// Every stored config, by tenant then channel.
    pub async fn list(&self) -> Result<Vec<StoredConfig>, StoreError> {
        let rows = sqlx::query_as::<_, Row>(sqlx::AssertSqlSafe(format!(
            "{SELECT} ORDER BY tenant_id, channel"
        )))
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(from_row).collect()
    }

    /// Decrypt and parse a stored chain.
    pub fn open_chain(&self, s: &StoredConfig) -> Result<Vec<ProviderSettings>, SealError> {
        s.chain
            .iter()
            .enumerate()
            .map(|(i, e)| sealed::open(&self.keys, &s.tenant, s.channel, i, e))
            .collect()
    }

    /// Delete one channel's config, or (no channel) the tenant with all of
    /// them. Returns whether anything existed.
    pub async fn delete(
        &self,
        tenant: &TenantId,
        channel: Option<Channel>,
        actor: &str,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let done = match channel {
            Some(c) => sqlx::query(
                "DELETE FROM tenant_channel_configs WHERE tenant_id = $1 AND channel = $2",
            )
            .bind(tenant.as_str())
            .bind(c),
            // ON DELETE CASCADE removes the channel rows.
            None => sqlx::query("DELETE FROM tenants WHERE id = $1").bind(tenant.as_str()),
        }
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if done > 0 {
            audit_and_notify(&mut tx, actor, tenant, channel, "delete", &[]).await?;
        }
        tx.commit().await?;
        Ok(done > 0)
    }
}

/// The audit row and the notification, inside the change's transaction.
pub(super) async fn audit_and_notify(
    tx: &mut Transaction<'_, Postgres>,
    actor: &str,
    tenant: &TenantId,
    channel: Option<Channel>,
    action: &str,
    changed: &[String],
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO config_audit (actor, tenant_id, channel, action, changed_fields) \
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(actor)
    .bind(tenant.as_str())
    .bind(channel)
    .bind(action)
    .bind(changed)
    .execute(&mut **tx)
    .await?;
    // Delivered at commit, and not at all on rollback.
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(NOTIFY_CHANNEL)
        .bind(tenant.as_str())
        .execute(&mut **tx)
        .await?;
    Ok(())
}
