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

// Delivery feedback (issue #15): provider webhooks, statuses after `sent`, suppression.

/// Webhook requests refused (`provider`, `reason`: signature, stale,
/// no_account, unverifiable, malformed).
pub const WEBHOOKS_REFUSED: &str = "outreach_webhooks_refused_total";
/// Verified provider events (`provider`, `status`: the status it maps to, or `none`).
pub const WEBHOOK_EVENTS: &str = "outreach_webhook_events_total";
/// Verified events whose message id matches no row of the tenant (`provider`).
pub const WEBHOOK_UNKNOWN_MESSAGES: &str = "outreach_webhook_unknown_messages_total";
/// Verified events already received (a provider's redelivery): nothing done (`provider`).
pub const WEBHOOK_DUPLICATES: &str = "outreach_webhook_duplicates_total";
/// Rows moved to a status after `sent` (`channel`, `provider`, `status`):
/// delivered, bounced, complained… the bounce-rate alert's numerator and denominator.
pub const JOBS_FEEDBACK: &str = "outreach_jobs_feedback_total";
/// Jobs ended `suppressed`: the recipient is on the tenant's list (`channel`).
pub const JOBS_SUPPRESSED: &str = "outreach_jobs_suppressed_total";
/// Recipients added to a suppression list (`channel`, `reason`).
pub const SUPPRESSIONS_ADDED: &str = "outreach_suppressions_added_total";
