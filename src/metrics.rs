//! Metric names (one place), their descriptions, and the Prometheus recorder.
//!
//! Conventions (Prometheus naming): `outreach_` prefix, base units in the
//! name (`_seconds`, `_bytes`), counters end in `_total`, one label set per
//! name, label values from closed sets (channel, provider kind, error kind,
//! status) so the series count does not grow with traffic. Every name below
//! is described once in [`DESCRIPTIONS`]; counters whose label values are
//! known are exported at zero when the worker starts ([`export_known`]), so a
//! rate alert sees 0, not nothing.
//!
//! Per tenant: only tenants listed in `metrics.tenant_labels` get series of
//! their own ([`tenants`]); per provider account: only circuits that are not
//! closed ([`crate::circuit::Breakers::render`]).

pub mod tenants;

use crate::job::Channel;
use crate::provider::{ErrorKind, ProviderKind};
use metrics::Unit;
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
/// Jobs that reached a final state (`status`: sent, simulated, failed, expired).
pub const JOBS_FINAL: &str = "outreach_jobs_final_total";
/// Jobs sent by a provider after the first chain step (a fallback).
pub const JOBS_FALLBACK: &str = "outreach_jobs_fallback_total";
/// From the job's publish time (AMQP `timestamp` / `x-outreach-published-ms`)
/// to its final state, retries and held time included.
pub const ENQUEUE_TO_FINAL: &str = "outreach_job_enqueue_to_final_seconds";
/// From this delivery's arrival in the worker to the job's final state.
pub const CONSUME_TO_FINAL: &str = "outreach_job_consume_to_final_seconds";
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
/// Circuit state per provider account, one series per state (1 = current),
/// rendered at scrape time for accounts whose circuit is not closed.
pub const CIRCUIT_STATE: &str = "outreach_circuit_state";
/// Provider accounts per circuit state that are not closed, per provider kind.
pub const CIRCUITS_NOT_CLOSED: &str = "outreach_circuits_not_closed";
pub const CIRCUIT_TRANSITIONS: &str = "outreach_circuit_transitions_total";
/// Chain steps skipped (circuit open, account paused by a 429).
pub const STEPS_SKIPPED: &str = "outreach_chain_steps_skipped_total";
/// Times a job had to wait for a rate limit (label `channel` only).
pub const RATE_LIMITED: &str = "outreach_rate_limited_total";
/// Provider accounts paused after a 429.
pub const PROVIDER_PAUSES: &str = "outreach_provider_pauses_total";
/// Jobs moved to their tenant's held queue to wait for its limit.
pub const JOBS_HELD: &str = "outreach_jobs_held_total";
/// Messages ready in the broker's queues, sampled (`queue`: work, held, retry, dead_letter).
pub const QUEUE_MESSAGES: &str = "outreach_queue_messages";
/// Delivery events published (confirmed by the broker), by status.
pub const EVENTS_PUBLISHED: &str = "outreach_events_published_total";
/// Time from an event's publish to the broker's confirm.
pub const EVENT_CONFIRM_DURATION: &str = "outreach_event_confirm_seconds";
/// Final outcomes of the tenants listed in `metrics.tenant_labels`.
pub const TENANT_OUTCOMES: &str = "outreach_tenant_outcomes_total";
/// Panics caught while handling a job or a request: named in
/// [`crate::panics`], a leaf module, so that the provider guard can count
/// them without depending on this module.
pub use crate::panics::{PANIC_PLACES, PANICS};
/// Version and commit of the running binary, value 1.
pub const BUILD_INFO: &str = "outreach_build_info";

#[derive(Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// Every metric the worker exports: name, kind, unit, help text. Process
/// metrics (`process_*`) are described by `metrics-process`. A new name
/// needs its row here: tests/metrics.rs runs `promtool check metrics`, which
/// refuses a metric without HELP, and scripts/check-ops.sh refuses alerts
/// and dashboard queries on names not in this file.
const DESCRIPTIONS: &[(&str, Kind, Unit, &str)] = &[
    (
        JOBS_CONSUMED,
        Kind::Counter,
        Unit::Count,
        "Deliveries of valid jobs taken from the work and held queues, by channel.",
    ),
    (
        JOBS_SENT,
        Kind::Counter,
        Unit::Count,
        "Jobs a provider accepted, by channel and provider.",
    ),
    (
        JOBS_FAILED,
        Kind::Counter,
        Unit::Count,
        "Jobs that failed for good (dead-lettered), by channel, last provider tried and error kind.",
    ),
    (
        JOBS_EXPIRED,
        Kind::Counter,
        Unit::Count,
        "Jobs ended expired (not_after or worker.max_age_secs passed), by channel.",
    ),
    (
        JOBS_RETRIED,
        Kind::Counter,
        Unit::Count,
        "Jobs sent back through a delay tier, by channel and error kind.",
    ),
    (
        JOBS_INVALID,
        Kind::Counter,
        Unit::Count,
        "Payloads refused as invalid jobs, by reason.",
    ),
    (
        JOBS_DUPLICATE,
        Kind::Counter,
        Unit::Count,
        "Deliveries of jobs already final: their event was repeated, nothing sent.",
    ),
    (
        JOBS_REQUEUED,
        Kind::Counter,
        Unit::Count,
        "Deliveries handed back to the broker because PostgreSQL or the broker failed.",
    ),
    (
        JOBS_FINAL,
        Kind::Counter,
        Unit::Count,
        "Valid jobs that reached a final state, by channel and status (sent, simulated, failed, expired); invalid payloads are in outreach_jobs_invalid_total.",
    ),
    (
        JOBS_FALLBACK,
        Kind::Counter,
        Unit::Count,
        "Jobs sent by a later chain step than the first (a fallback), by channel and provider.",
    ),
    (
        ENQUEUE_TO_FINAL,
        Kind::Histogram,
        Unit::Seconds,
        "Time from a job's publish to its final state (retries and waits included), by channel and status.",
    ),
    (
        CONSUME_TO_FINAL,
        Kind::Histogram,
        Unit::Seconds,
        "Time from the worker receiving a delivery to the job's final state, by channel and status.",
    ),
    (
        SEND_DURATION,
        Kind::Histogram,
        Unit::Seconds,
        "Duration of one provider call, by channel, provider and outcome.",
    ),
    (
        PROVIDER_CALLS,
        Kind::Counter,
        Unit::Count,
        "Provider calls, by provider and outcome (ok or the error kind).",
    ),
    (
        JOBS_IN_FLIGHT,
        Kind::Gauge,
        Unit::Count,
        "Deliveries this worker is processing now.",
    ),
    (
        LOG_BATCH_SIZE,
        Kind::Histogram,
        Unit::Count,
        "Rows per delivery-log batch write.",
    ),
    (
        CONFIG_CACHE_HITS,
        Kind::Counter,
        Unit::Count,
        "Tenant config lookups answered from the cache, by channel.",
    ),
    (
        CONFIG_CACHE_MISSES,
        Kind::Counter,
        Unit::Count,
        "Tenant config lookups that went to PostgreSQL, by channel.",
    ),
    (
        CONFIG_LOAD_DURATION,
        Kind::Histogram,
        Unit::Seconds,
        "Time to load and decrypt one tenant config from PostgreSQL.",
    ),
    (
        CONFIG_ERRORS,
        Kind::Counter,
        Unit::Count,
        "Tenant configs that could not be read, decrypted or built, by channel.",
    ),
    (
        PROVIDER_CONFIG_ERRORS,
        Kind::Counter,
        Unit::Count,
        "Provider answers that need a person (credentials, sender, certificate), by channel and provider.",
    ),
    (
        PANICS,
        Kind::Counter,
        Unit::Count,
        "Panics caught while handling a job or an admin request (a defect in outreach), by place.",
    ),
    (
        JOBS_SIMULATED,
        Kind::Counter,
        Unit::Count,
        "Jobs the sandbox accepted (nothing delivered), by channel.",
    ),
    (
        JOBS_OVERDUE,
        Kind::Gauge,
        Unit::Count,
        "Log rows in flight past their expected time plus the grace, by status.",
    ),
    (
        JOBS_LOST,
        Kind::Counter,
        Unit::Count,
        "Jobs the reconciler ended expired (code lost): their message never came back.",
    ),
    (
        BROKER_CONNECTED,
        Kind::Gauge,
        Unit::Count,
        "1 while this worker consumes through the broker node in label node, 0 once that session ended.",
    ),
    (
        CIRCUIT_STATE,
        Kind::Gauge,
        Unit::Count,
        "Circuit state of a provider account that is not closed, one series per state (1 = current).",
    ),
    (
        CIRCUITS_NOT_CLOSED,
        Kind::Gauge,
        Unit::Count,
        "Provider accounts whose circuit is open or half-open, by provider and state.",
    ),
    (
        CIRCUIT_TRANSITIONS,
        Kind::Counter,
        Unit::Count,
        "Circuit state changes, by provider and new state.",
    ),
    (
        STEPS_SKIPPED,
        Kind::Counter,
        Unit::Count,
        "Chain steps skipped, by provider and reason (circuit_open, paused, rate_limit, unusable).",
    ),
    (
        RATE_LIMITED,
        Kind::Counter,
        Unit::Count,
        "Times a job waited for a tenant or account rate limit, by channel.",
    ),
    (
        PROVIDER_PAUSES,
        Kind::Counter,
        Unit::Count,
        "Provider accounts paused after a 429, by provider.",
    ),
    (
        JOBS_HELD,
        Kind::Counter,
        Unit::Count,
        "Jobs moved to their tenant's held queue to wait for its limit, by channel.",
    ),
    (
        QUEUE_MESSAGES,
        Kind::Gauge,
        Unit::Count,
        "Messages ready in the broker, sampled, by queue kind (work, held, retry, dead_letter).",
    ),
    (
        EVENTS_PUBLISHED,
        Kind::Counter,
        Unit::Count,
        "Delivery events confirmed by the broker, by status.",
    ),
    (
        EVENT_CONFIRM_DURATION,
        Kind::Histogram,
        Unit::Seconds,
        "Time from publishing a delivery event to the broker's confirm.",
    ),
    (
        TENANT_OUTCOMES,
        Kind::Counter,
        Unit::Count,
        "Final outcomes of the tenants listed in metrics.tenant_labels, by tenant, channel and status.",
    ),
    (
        BUILD_INFO,
        Kind::Gauge,
        Unit::Count,
        "Build of the running worker (version, commit); value 1.",
    ),
    // Delivery feedback (issue #15).
    (
        WEBHOOKS_REFUSED,
        Kind::Counter,
        Unit::Count,
        "Provider webhook requests refused (and connections over webhooks.max_connections, provider unknown), by provider and reason.",
    ),
    (
        WEBHOOK_EVENTS,
        Kind::Counter,
        Unit::Count,
        "Verified provider events received, by provider and the status they map to.",
    ),
    (
        WEBHOOK_UNKNOWN_MESSAGES,
        Kind::Counter,
        Unit::Count,
        "Verified provider events whose message id matches no row of the tenant, by provider.",
    ),
    (
        WEBHOOK_DUPLICATES,
        Kind::Counter,
        Unit::Count,
        "Provider events received again (redeliveries): nothing done, by provider.",
    ),
    (
        JOBS_FEEDBACK,
        Kind::Counter,
        Unit::Count,
        "Rows moved to a status after sent (delivered, bounced, complained...), by channel, provider and status.",
    ),
    (
        JOBS_SUPPRESSED,
        Kind::Counter,
        Unit::Count,
        "Jobs ended suppressed without a provider call (recipient on the tenant's list), by channel.",
    ),
    (
        SUPPRESSIONS_ADDED,
        Kind::Counter,
        Unit::Count,
        "Recipients added to a tenant's suppression list, by channel and reason.",
    ),
];

/// Final statuses of a job, as `status` label values.
pub const FINAL_STATUSES: [&str; 4] = ["sent", "simulated", "failed", "expired"];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Install the global recorder once, describe every metric and return the handle.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let latency = [
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ];
            // Time in queue spans retries (tiers up to an hour) and held waits.
            let end_to_end = [
                0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
                14400.0,
            ];
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Full(ENQUEUE_TO_FINAL.into()), &end_to_end)
                .expect("static buckets")
                .set_buckets_for_metric(Matcher::Full(CONSUME_TO_FINAL.into()), &end_to_end)
                .expect("static buckets")
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
            describe();
            process().describe();
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

fn describe() {
    for &(name, kind, unit, help) in DESCRIPTIONS {
        match kind {
            Kind::Counter => metrics::describe_counter!(name, unit, help),
            Kind::Gauge => metrics::describe_gauge!(name, unit, help),
            Kind::Histogram => metrics::describe_histogram!(name, unit, help),
        }
    }
}

fn process() -> &'static metrics_process::Collector {
    static P: OnceLock<metrics_process::Collector> = OnceLock::new();
    P.get_or_init(metrics_process::Collector::default)
}

/// The scrape: process metrics refreshed, then everything recorded, then
/// what `extra` writes (series computed at scrape time, with their own HELP).
pub fn render(handle: &PrometheusHandle, extra: impl FnOnce(&mut String)) -> String {
    process().collect();
    let mut out = handle.render();
    extra(&mut out);
    out
}

/// Export at zero every counter series whose label values are known at
/// start (so rates and ratios exist before the first job), plus
/// `outreach_build_info`.
pub fn export_known() {
    metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION"),
        "commit" => option_env!("OUTREACH_COMMIT").unwrap_or("unknown"))
    .set(1.0);
    metrics::gauge!(JOBS_IN_FLIGHT).set(0.0);
    for c in Channel::ALL {
        let ch = c.as_str();
        metrics::counter!(JOBS_CONSUMED, "channel" => ch).absolute(0);
        metrics::counter!(JOBS_EXPIRED, "channel" => ch).absolute(0);
        metrics::counter!(JOBS_SIMULATED, "channel" => ch).absolute(0);
        metrics::counter!(JOBS_HELD, "channel" => ch).absolute(0);
        metrics::counter!(RATE_LIMITED, "channel" => ch).absolute(0);
        metrics::counter!(CONFIG_CACHE_HITS, "channel" => ch).absolute(0);
        metrics::counter!(CONFIG_CACHE_MISSES, "channel" => ch).absolute(0);
        metrics::counter!(CONFIG_ERRORS, "channel" => ch).absolute(0);
        for s in FINAL_STATUSES {
            metrics::counter!(JOBS_FINAL, "channel" => ch, "status" => s).absolute(0);
        }
        for p in ProviderKind::ALL.into_iter().filter(|p| p.supports(c)) {
            let pr = p.as_str();
            if p.delivers() {
                metrics::counter!(JOBS_SENT, "channel" => ch, "provider" => pr).absolute(0);
                metrics::counter!(JOBS_FALLBACK, "channel" => ch, "provider" => pr).absolute(0);
            }
            for k in [ErrorKind::Transient, ErrorKind::Provider, ErrorKind::Config] {
                metrics::counter!(JOBS_FAILED, "channel" => ch, "provider" => pr, "error_kind" => k.as_str())
                    .absolute(0);
            }
        }
    }
    for p in ProviderKind::ALL {
        let pr = p.as_str();
        metrics::counter!(PROVIDER_CALLS, "provider" => pr, "outcome" => "ok").absolute(0);
        for k in [ErrorKind::Transient, ErrorKind::Provider, ErrorKind::Config] {
            metrics::counter!(PROVIDER_CALLS, "provider" => pr, "outcome" => k.as_str())
                .absolute(0);
        }
        metrics::counter!(PROVIDER_PAUSES, "provider" => pr).absolute(0);
        for state in ["open", "half_open"] {
            metrics::gauge!(CIRCUITS_NOT_CLOSED, "provider" => pr, "state" => state).set(0.0);
        }
    }
    for s in ["sent", "retrying", "failed", "expired", "simulated"] {
        metrics::counter!(EVENTS_PUBLISHED, "status" => s).absolute(0);
    }
    metrics::counter!(JOBS_LOST).absolute(0);
    metrics::counter!(JOBS_REQUEUED).absolute(0);
    for place in PANIC_PLACES {
        metrics::counter!(PANICS, "place" => place).absolute(0);
    }
    tenants::export_known();
}

/// One job's final state, counted globally and (for listed tenants) per tenant.
pub fn job_final(tenant: &str, channel: Channel, status: &'static str) {
    metrics::counter!(JOBS_FINAL, "channel" => channel.as_str(), "status" => status).increment(1);
    tenants::outcome(tenant, channel, status);
}

// Delivery feedback (issue #15): provider webhooks, statuses after `sent`, suppression.

/// Webhook requests refused (`provider`, `reason`: `Refusal::reason` in
/// feedback/verify.rs: signature, missing_signature, stale, no_account,
/// content_type, too_large, body_timeout, malformed, topic, certificate_…);
/// connections over `webhooks.max_connections` as provider `unknown`,
/// reason connection_limit.
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
