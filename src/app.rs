//! Wiring: build the worker's parts from settings and run them.

use crate::admin_api::AdminState;
use crate::broker::Topology;
use crate::circuit::Breakers;
use crate::delivery_log::DeliveryLog;
use crate::health::Health;
use crate::pipeline::{Holds, Policy, QuickRetry, RetryBudget, Shared};
use crate::provider::ProviderContext;
use crate::ratelimit::RateLimiter;
use crate::settings::Settings;
use crate::tenant::{self, Directory, TenantStore};
use crate::worker::{self, ConsumerConfig};
use crate::{db, http, metrics};
use anyhow::Context;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Install the process-wide rustls crypto provider (aws-lc-rs), once.
pub fn install_crypto() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

pub fn provider_context(s: &Settings) -> ProviderContext {
    ProviderContext::new(
        s.provider_timeout(),
        s.provider_connect_timeout(),
        s.providers.webhook_base_url.clone(),
    )
    // Validated with the settings.
    .with_network(s.network_policy().unwrap_or_default())
}

/// Run a worker until `shutdown` fires: HTTP endpoints plus the consumer.
pub async fn run_worker(settings: Settings, shutdown: CancellationToken) -> anyhow::Result<()> {
    install_crypto();
    let handle = metrics::install();
    metrics::tenants::configure(&settings.metrics.tenant_labels);
    metrics::export_known();
    let pool = db::connect_creating(&settings.database).await?;
    if settings.worker.migrate_on_start {
        db::migrate(&pool).await?;
    }
    let ctx = provider_context(&settings);
    let bare = settings.channels_without_default();
    if !bare.is_empty() {
        let names: Vec<&str> = bare.iter().map(|c| c.as_str()).collect();
        tracing::warn!(channels = %names.join(","),
            "no system default provider for these channels: jobs of tenants without their own chain fail with reason no_provider");
    }
    for c in crate::job::Channel::ALL {
        if settings
            .system_default(c)
            .is_some_and(|p| !p.kind().delivers())
        {
            tracing::warn!(channel = %c, "the system default is the sandbox: it sends nothing, its outcomes are logged `simulated`");
        }
    }
    // No keys is valid: tenants with stored credentials then fail one by one.
    let keys = Arc::new(settings.key_ring().context("crypto.keys")?);
    let store = TenantStore::new(pool.clone(), keys)
        .with_max_chain_len(settings.tenant_config.max_chain_len);
    let directory = Arc::new(
        Directory::new(&settings, &ctx)
            .context("system default providers")?
            .with_store(store.clone()),
    );
    let limiter = Arc::new(RateLimiter::new(Some(pool.clone())));
    let listener_stop = CancellationToken::new();
    // Start-up failing below (a port taken…) stops what was started: a
    // process exits anyway, but the bench runs workers in its own process
    // and goes on to clean up. On the way out these were cancelled already.
    let _stop_listener = listener_stop.clone().drop_guard();
    let listener_task = tokio::spawn(tenant::listener::run(
        pool.clone(),
        directory.clone(),
        limiter.clone(),
        listener_stop.clone(),
    ));
    let health = Arc::new(Health::new(pool.clone()));
    let probe_stop = CancellationToken::new();
    let _stop_probe = probe_stop.clone().drop_guard();
    let probe_task = health.spawn_probe(probe_stop.clone());

    let listener = tokio::net::TcpListener::bind(&settings.http.bind)
        .await
        .with_context(|| format!("cannot listen on http.bind = {}", settings.http.bind))?;
    tracing::info!(addr = %listener.local_addr()?, "http listening (/metrics, /healthz, /readyz, admin API /admin/v1)");
    let w = &settings.worker;
    let quick_retry = QuickRetry {
        times: w.quick_retries,
        base: Duration::from_millis(w.quick_retry_base_ms),
    };
    let webhook_store = store.clone();
    let breakers = Arc::new(Breakers::new(settings.circuit.clone()));
    let router = http::router(http::HttpState {
        metrics: handle,
        circuits: Some(breakers.clone()),
        health: health.clone(),
        admin: Some(AdminState::new(
            store,
            directory.clone(),
            quick_retry.clone(),
            &settings,
        )),
    });
    let http_stop = CancellationToken::new();
    let _stop_http = http_stop.clone().drop_guard();
    let http_task = tokio::spawn(http::serve(listener, router, http_stop.clone()));
    // Provider webhooks: a listener of its own (webhooks.bind), stopped with http.
    let webhooks_task = crate::feedback::server::spawn(
        &settings,
        webhook_store,
        Topology::new(&settings.amqp, &w.retry_delays_secs).events_exchange,
        http_stop.clone(),
    )
    .await?;

    let log = DeliveryLog::new(
        pool.clone(),
        settings.delivery_log.batch_size,
        settings.delivery_log.concurrent_batches,
        settings.delivery_log.record_batches,
        w.lease_secs,
    );
    let topology = Topology::new(&settings.amqp, &w.retry_delays_secs);
    let rl = &settings.rate_limits;
    let leases = Arc::new(crate::pipeline::lease::Leases::default());
    let lease_stop = CancellationToken::new();
    let lease_task = leases.spawn_renewal(
        pool.clone(),
        Duration::from_secs(w.lease_secs),
        lease_stop.clone(),
    );
    let shared = Arc::new(Shared {
        log,
        suppressions: crate::suppression::Checks::new(
            pool.clone(),
            settings.delivery_log.batch_size,
            settings.delivery_log.concurrent_batches,
        ),
        leases,
        unrecorded: tokio::sync::Semaphore::new(settings.delivery_log.max_unrecorded),
        record_patience: Duration::from_secs(settings.delivery_log.record_patience_secs),
        directory,
        policy: Policy {
            quick: quick_retry,
            limiter: Some(limiter),
            breakers: Some(breakers),
            max_inline_wait: settings.max_inline_wait(),
        },
        holds: Holds::new(
            pool.clone(),
            topology.clone(),
            rl.max_inline_waiters,
            settings.max_inline_wait(),
            rl.held_prefetch,
        ),
        topology,
        budget: RetryBudget {
            max_attempts: w.max_attempts,
            max_age: Duration::from_secs(w.max_age_secs),
        },
        store_content: settings.delivery_log.store_content,
        sends: tokio::sync::Semaphore::new(w.concurrency),
    });
    let cfg = ConsumerConfig {
        nodes: settings.amqp.nodes(),
        prefetch: settings.amqp.prefetch,
        shutdown_grace: Duration::from_secs(w.shutdown_grace_secs),
        queue_sample: Duration::from_secs(settings.metrics.queue_sample_secs),
        liveness_timeout: Duration::from_millis(settings.amqp.liveness_timeout_ms),
        reconciler: settings.reconciler.clone(),
    };
    worker::run(shared, cfg, health, shutdown).await;
    http_stop.cancel();
    listener_stop.cancel();
    probe_stop.cancel();
    let _ = probe_task.await;
    lease_stop.cancel();
    let _ = lease_task.await;
    let _ = http_task.await;
    if let Some(t) = webhooks_task {
        let _ = t.await;
    }
    let _ = listener_task.await;
    pool.close().await;
    Ok(())
}

/// A token cancelled by SIGTERM or SIGINT.
pub fn shutdown_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("SIGTERM handler");
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        tracing::info!("shutdown requested: finishing jobs in flight");
        t.cancel();
    });
    token
}
