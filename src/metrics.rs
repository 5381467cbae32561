//! Metric names (one place) and the Prometheus recorder.

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;

pub const JOBS_CONSUMED: &str = "outreach_jobs_consumed_total";
pub const JOBS_SENT: &str = "outreach_jobs_sent_total";
pub const JOBS_FAILED: &str = "outreach_jobs_failed_total";
pub const JOBS_EXPIRED: &str = "outreach_jobs_expired_total";
pub const JOBS_RETRIED: &str = "outreach_jobs_retried_total";
pub const JOBS_INVALID: &str = "outreach_jobs_invalid_total";
/// Deliveries of jobs already final (redelivered or published twice): not sent again.
pub const JOBS_DUPLICATE: &str = "outreach_jobs_duplicate_total";
/// Deliveries handed back to the broker because the database or broker failed.
pub const JOBS_REQUEUED: &str = "outreach_jobs_requeued_total";
pub const SEND_DURATION: &str = "outreach_send_duration_seconds";
pub const PROVIDER_CALLS: &str = "outreach_provider_calls_total";
pub const JOBS_IN_FLIGHT: &str = "outreach_jobs_in_flight";
pub const LOG_BATCH_SIZE: &str = "outreach_delivery_log_batch_size";
pub const CONFIG_CACHE_HITS: &str = "outreach_tenant_config_cache_hits_total";
pub const CONFIG_CACHE_MISSES: &str = "outreach_tenant_config_cache_misses_total";
pub const CONFIG_LOAD_DURATION: &str = "outreach_tenant_config_load_seconds";
/// Tenant configs that could not be decrypted or built (per-tenant errors).
pub const CONFIG_ERRORS: &str = "outreach_tenant_config_errors_total";
/// Provider answers that need a person (credentials refused, sender not
/// verified, certificate that does not verify, capability missing).
pub const PROVIDER_CONFIG_ERRORS: &str = "outreach_provider_config_errors_total";
/// Jobs the sandbox accepted: nothing was delivered.
pub const JOBS_SIMULATED: &str = "outreach_jobs_simulated_total";
/// Rows in flight past their expected time by more than the grace
/// (`status`: processing, retrying): alert when above zero for long.
pub const JOBS_OVERDUE: &str = "outreach_jobs_overdue";
/// Jobs the reconciler ended `expired` (code `lost`): their message never came back.
pub const JOBS_LOST: &str = "outreach_jobs_lost_total";
pub const BROKER_CONNECTED: &str = "outreach_broker_connected";
/// Circuit state per provider account: 0 closed, 1 half-open, 2 open.
pub const CIRCUIT_STATE: &str = "outreach_circuit_state";
pub const CIRCUIT_TRANSITIONS: &str = "outreach_circuit_transitions_total";
/// Chain steps skipped (circuit open, account paused by a 429).
pub const STEPS_SKIPPED: &str = "outreach_chain_steps_skipped_total";
/// Times a job had to wait for a rate limit (`scope`: tenant or account).
pub const RATE_LIMITED: &str = "outreach_rate_limited_total";
/// Provider accounts paused after a 429.
pub const PROVIDER_PAUSES: &str = "outreach_provider_pauses_total";
/// Jobs moved to their tenant's held queue to wait for its limit.
pub const JOBS_HELD: &str = "outreach_jobs_held_total";

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Install the global recorder once and return its handle.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let latency = [
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ];
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &latency)
                .expect("static buckets")
                .set_buckets_for_metric(
                    Matcher::Full(LOG_BATCH_SIZE.into()),
                    &[1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0],
                )
                .expect("static buckets")
                .build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed (tests in one process).
            let _ = metrics::set_global_recorder(recorder);
            let upkeep = handle.clone();
            std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(std::time::Duration::from_secs(5));
                        upkeep.run_upkeep();
                    }
                })
                .expect("spawn metrics upkeep");
            handle
        })
        .clone()
}
