//! [`Directory::resolve`]: which providers, in which order, for a tenant and
//! channel. The tenant's chain, then the system default (when the tenant
//! allows it); tenants without config get the system default alone.
//!
//! Resolved chains are cached (moka, TTL `tenant_config.cache_ttl_secs`), so
//! the hot path neither queries the database nor decrypts. The
//! [`listener`](super::listener) invalidates a tenant's entries when its config
//! changes; a reload then reuses every provider whose settings are unchanged
//! (same SHA-256 fingerprint), keeping its connection pools.

use super::sealed::{self, SealError};
use super::{ChainStep, ResolvedChannel, StoredConfig, TenantStore, UnusableStep};
use crate::crypto::CryptoError;
use crate::job::{Channel, TenantId};
use crate::metrics as m;
use crate::provider::{self, ErrorKind, Provider, ProviderContext, ProviderError};
use crate::ratelimit::{Limit, LimitSet};
use crate::settings::{ProviderRates, Settings};
use moka::future::Cache;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

type Key = (TenantId, Channel);
/// Providers built for a tenant's channel, by fingerprint of their settings.
type Built = HashMap<[u8; 32], Arc<dyn Provider>>;

/// Resolves tenants' chains.
pub struct Directory {
    system: [Arc<ResolvedChannel>; 3],
    store: Option<TenantStore>,
    provider_rates: ProviderRates,
    /// Entries of a stored chain used at most (`tenant_config.max_chain_len`).
    max_chain_len: usize,
    ctx: ProviderContext,
    cache: Cache<Key, Arc<ResolvedChannel>>,
    /// Kept across invalidations so unchanged providers are reused.
    built: Mutex<HashMap<Key, Built>>,
    /// Bumped on every invalidation: a load that raced one is dropped.
    epoch: AtomicU64,
}

impl Directory {
    /// System defaults only (no tenant store).
    pub fn new(
        settings: &Settings,
        ctx: &ProviderContext,
    ) -> Result<Self, provider::SettingsError> {
        let system = |channel: Channel| -> Result<Arc<ResolvedChannel>, provider::SettingsError> {
            let Some(s) = settings.system_default(channel) else {
                // No stand-in: tenants without a chain fail with `no_provider`.
                return Ok(Arc::new(ResolvedChannel {
                    enabled: true,
                    steps: vec![],
                    unusable: vec![],
                    limits: LimitSet::default(),
                }));
            };
            if !s.kind().supports(channel) {
                return Err(provider::SettingsError::new(
                    format!("defaults.{channel}.provider"),
                    format!("{} cannot carry {channel}", s.kind()),
                ));
            }
            let p = provider::build(s, ctx, None).map_err(|e| {
                provider::SettingsError::new(format!("defaults.{channel}.{}", e.field), e.reason)
            })?;
            let mut limits = account_limits(&settings.rate_limits.provider_per_second, p.kind());
            limits.extend(Limit::new(
                settings.rate_limits.system_per_second.of(channel),
                Duration::from_secs(1),
            ));
            Ok(Arc::new(ResolvedChannel {
                enabled: true,
                steps: vec![system_step(p, channel, limits)],
                unusable: vec![],
                limits: LimitSet::default(),
            }))
        };
        let tc = &settings.tenant_config;
        Ok(Self {
            system: [
                system(Channel::Email)?,
                system(Channel::Sms)?,
                system(Channel::Whatsapp)?,
            ],
            store: None,
            provider_rates: settings.rate_limits.provider_per_second.clone(),
            max_chain_len: tc.max_chain_len.max(1),
            ctx: ctx.clone(),
            cache: Cache::builder()
                .max_capacity(tc.cache_max_entries)
                .time_to_live(Duration::from_secs(tc.cache_ttl_secs))
                .build(),
            built: Mutex::new(HashMap::new()),
            epoch: AtomicU64::new(0),
        })
    }

    /// Resolve tenants' own configs from `store`.
    pub fn with_store(mut self, store: TenantStore) -> Self {
        self.store = Some(store);
        self
    }

    /// Cache `chain` as if it had been loaded, so the cache-hit path of
    /// [`Directory::resolve`] can be measured without a database
    /// (`benches/hot_path.rs`). Workers never call it.
    #[doc(hidden)]
    pub async fn prime_cache(
        &self,
        tenant: &TenantId,
        channel: Channel,
        chain: Arc<ResolvedChannel>,
    ) {
        self.cache.insert((tenant.clone(), channel), chain).await;
    }

    /// The chain for a tenant and channel, from the cache when possible.
    pub async fn resolve(
        &self,
        tenant: &TenantId,
        channel: Channel,
    ) -> Result<Arc<ResolvedChannel>, ProviderError> {
        if self.store.is_none() {
            return Ok(self.system_chain(channel));
        }
        let key = (tenant.clone(), channel);
        let epoch = self.epoch.load(Ordering::Acquire);
        let entry = self
            .cache
            .entry(key.clone())
            .or_try_insert_with(self.load(tenant, channel))
            .await
            .map_err(|e| (*e).clone())?;
        if entry.is_fresh() {
            metrics::counter!(m::CONFIG_CACHE_MISSES, "channel" => channel.as_str()).increment(1);
            // An invalidation during the load may have been for this tenant:
            // serve what was read, but do not keep it.
            if self.epoch.load(Ordering::Acquire) != epoch {
                self.cache.invalidate(&key).await;
            }
        } else {
            metrics::counter!(m::CONFIG_CACHE_HITS, "channel" => channel.as_str()).increment(1);
        }
        Ok(entry.into_value())
    }

    /// The chain as stored right now, bypassing the cache (`tenant test`).
    pub async fn resolve_uncached(
        &self,
        tenant: &TenantId,
        channel: Channel,
    ) -> Result<Arc<ResolvedChannel>, ProviderError> {
        self.load(tenant, channel).await
    }

    pub fn system_chain(&self, channel: Channel) -> Arc<ResolvedChannel> {
        self.system[channel as usize].clone()
    }

    /// Drop a tenant's cached chains (its config changed).
    pub async fn invalidate_tenant(&self, tenant: &TenantId) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        for c in Channel::ALL {
            self.cache.invalidate(&(tenant.clone(), c)).await;
        }
    }

    /// Drop every cached chain (notifications may have been missed).
    pub fn invalidate_all(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.cache.invalidate_all();
    }

    async fn load(
        &self,
        tenant: &TenantId,
        channel: Channel,
    ) -> Result<Arc<ResolvedChannel>, ProviderError> {
        let Some(store) = &self.store else {
            return Ok(self.system_chain(channel));
        };
        let started = Instant::now();
        let row = store.get(tenant, channel).await.map_err(|e| {
            // The database is down or slow: the job goes back to the broker.
            ProviderError::new(
                ErrorKind::Transient,
                Some("config_unavailable".into()),
                format!("tenant config could not be read: {e}"),
            )
        })?;
        metrics::histogram!(m::CONFIG_LOAD_DURATION).record(started.elapsed().as_secs_f64());
        let key = (tenant.clone(), channel);
        let Some(row) = row else {
            self.built_map().remove(&key);
            return Ok(self.system_chain(channel));
        };
        if !row.enabled {
            return Ok(Arc::new(ResolvedChannel {
                enabled: false,
                steps: vec![],
                unusable: vec![],
                limits: LimitSet::default(),
            }));
        }
        let chain = self.build_chain(store, &row).map_err(|e| {
            // Not even the providers can be read: nothing of the chain is usable.
            tracing::error!(tenant_id = %tenant, %channel, error = %e, "tenant config cannot be read");
            metrics::counter!(m::CONFIG_ERRORS, "channel" => channel.as_str()).increment(1);
            ProviderError::new(
                ErrorKind::Config,
                Some("tenant_config".into()),
                format!("tenant config unreadable: {e}; {}", remedy(&e)),
            )
        })?;
        // Logged and counted once per load (a cached chain is reused by
        // every job until the config changes or the TTL ends), not per job.
        for u in &chain.unusable {
            tracing::error!(tenant_id = %tenant, %channel, step = u.step, provider = %u.kind,
                error = %u.error.message, "tenant chain entry cannot be used; its jobs skip it");
            metrics::counter!(m::CONFIG_ERRORS, "channel" => channel.as_str()).increment(1);
        }
        Ok(Arc::new(chain))
    }

    /// The tenant's chain: every entry that opens and builds, the others
    /// listed as unusable (they are skipped, visibly), then the system
    /// default if the tenant allows it. Fails only when the stored entries'
    /// providers cannot even be read.
    fn build_chain(
        &self,
        store: &TenantStore,
        row: &StoredConfig,
    ) -> Result<ResolvedChannel, ChainError> {
        let (tenant, channel) = (&row.tenant, row.channel);
        let key = (tenant.clone(), channel);
        let kinds = row.providers();
        let previous = self.built_map().get(&key).cloned().unwrap_or_default();
        let mut built = Built::new();
        let mut steps = Vec::with_capacity(row.chain.len() + 1);
        let mut unusable = Vec::new();
        if row.chain.len() > self.max_chain_len {
            // Stored before the limit existed (or it was lowered): one job
            // must not fan out into an unbounded number of provider calls.
            tracing::error!(tenant_id = %tenant, %channel, stored = row.chain.len(),
                max = self.max_chain_len,
                "tenant chain longer than tenant_config.max_chain_len: the extra entries are ignored; store the channel's config again");
            metrics::counter!(m::CONFIG_ERRORS, "channel" => channel.as_str()).increment(1);
        }
        for (i, stored) in row.chain.iter().take(self.max_chain_len).enumerate() {
            let kind = kinds
                .get(i)
                .copied()
                .flatten()
                .ok_or_else(|| ChainError::Build {
                    field: format!("chain[{i}].provider"),
                    reason: "missing or unknown provider".into(),
                })?;
            let opened = sealed::open(store.keys(), tenant, channel, i, stored)
                .map_err(ChainError::from)
                .and_then(|settings| {
                    let fp = sealed::fingerprint(&settings);
                    let p =
                        match previous.get(&fp).or_else(|| built.get(&fp)) {
                            Some(p) => p.clone(),
                            None => provider::build(&settings, &self.ctx, Some(tenant)).map_err(
                                |e| ChainError::Build {
                                    field: format!("chain[{i}].{}", e.field),
                                    reason: e.reason,
                                },
                            )?,
                        };
                    Ok((fp, p))
                });
            let (fp, p) = match opened {
                Ok(ok) => ok,
                Err(e) => {
                    let remedy = remedy(&e);
                    unusable.push(UnusableStep {
                        kind,
                        step: i as u16,
                        error: ProviderError::new(
                            ErrorKind::Config,
                            Some("tenant_config".into()),
                            format!("chain entry {i} ({kind}) cannot be used: {e}; {remedy}"),
                        ),
                    });
                    continue;
                }
            };
            built.insert(fp, p.clone());
            let account: Arc<str> = format!("tenant:{tenant}:{channel}:{i}").into();
            steps.push(ChainStep {
                kind: p.kind(),
                limits: LimitSet::new(
                    account.clone(),
                    account_limits(&self.provider_rates, p.kind()),
                ),
                provider: p,
                step: i as u16,
                is_system: false,
                account,
            });
        }
        if row.fallback_to_system
            && let Some(system) = self.system_chain(channel).steps.first()
        {
            let mut system = system.clone();
            system.step = row.chain.len().min(self.max_chain_len) as u16;
            steps.push(system);
        }
        self.built_map().insert(key, built);
        Ok(ResolvedChannel {
            enabled: true,
            steps,
            unusable,
            limits: LimitSet::new(
                format!("tenant:{tenant}:{channel}"),
                row.rate_limits.limits(),
            ),
        })
    }

    fn built_map(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Built>> {
        // A panic while holding this lock leaves a map that is still valid.
        self.built.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn system_step(p: Arc<dyn Provider>, channel: Channel, limits: Vec<Limit>) -> ChainStep {
    let account: Arc<str> = format!("system:{channel}").into();
    ChainStep {
        kind: p.kind(),
        provider: p,
        step: 0,
        is_system: true,
        limits: LimitSet::new(account.clone(), limits),
        account,
    }
}

/// The provider's own per-account limit, if it has one.
fn account_limits(rates: &ProviderRates, kind: provider::ProviderKind) -> Vec<Limit> {
    Limit::new(rates.of(kind), Duration::from_secs(1))
        .into_iter()
        .collect()
}

/// What a person does about an entry that cannot be opened: a value sealed
/// with a key this worker lacks needs that key (by id), not a new config.
fn remedy(e: &ChainError) -> String {
    match e {
        ChainError::Seal(SealError::Crypto(CryptoError::UnknownKey { kid, .. })) => format!(
            "add key {kid:?} to crypto.keys (or OUTREACH_ENCRYPTION_KEYS) on every worker, \
             or store the channel's config again"
        ),
        _ => "store the channel's config again".into(),
    }
}

/// Why a stored chain could not be built; names the field, never a value.
#[derive(Debug, thiserror::Error)]
enum ChainError {
    #[error(transparent)]
    Seal(#[from] SealError),
    #[error("invalid `{field}`: {reason}")]
    Build { field: String, reason: String },
}
