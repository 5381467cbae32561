//! Every integration test but the fault suite, in one binary (one link
//! instead of one per file; `tests/faults.rs` stays apart, run with
//! `--ignored` one test at a time). Each file is a module and reads as a
//! specification of one behaviour; `support` is the shared harness.

mod support;

mod admin_api;
mod bad_input;
mod bench_cli;
mod crash_and_delay_tiers;
mod delivery_log;
mod dlq;
mod echoed_requests;
mod idempotency;
mod metrics;
mod panics;
mod pipeline;
mod provider_answers;
mod provider_meta;
mod provider_sendgrid;
mod provider_ses;
mod provider_smtp;
mod provider_twilio;
mod provider_vonage;
mod quiet_cli;
mod rate_limit_accounting;
mod rate_limits;
mod reconciler;
mod reconnect;
mod startup;
mod suppression;
mod tenant_boundaries;
mod tenant_cli;
mod tenant_config;
mod tenant_workers;
mod truthful_outcomes;
mod webhook_requests;
mod webhook_slow_clients;
mod webhooks;
mod work_queues;
