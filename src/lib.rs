//! outreach: multi-tenant delivery of email, SMS and WhatsApp jobs.
//!
//! - [`job`]: the wire format and its validation.
//! - [`settings`]: layered configuration.
//! - [`broker`]: RabbitMQ topology and confirmed publishing; [`enqueue`]: job publisher.
//! - [`worker`]: the consumer; [`pipeline`]: one delivery, from admission to its settled fate.
//! - [`ratelimit`]: deployment-wide limits; [`circuit`]: breakers per provider account.
//! - [`tenant`]: tenants' provider chains; [`provider`]: one adapter per provider.
//! - [`delivery_log`]: `outreach_logs`, written in batches ([`batch`]).
//! - [`events`]: delivery events; [`metrics`], [`http`], [`health`]: observability.
//! - [`feedback`]: provider status webhooks (verified), statuses after `sent`.
//! - [`suppression`]: per-tenant lists of recipients not to message.
//! - [`admin_api`]: `/admin/v1`, tenants' config over HTTP.
//! - [`dlq`]: the dead-letter queue: list and replay.
//! - [`app`]: wiring of the worker.
//!
//! The commands (`tenant`, `keys`, `admin`, `dlq`, `suppression`, `enqueue`,
//! `demo`, `bench`) live in the binary (`src/main.rs`, `src/cli/`), not here.
#![forbid(unsafe_code)]

pub mod admin_api;
pub mod app;
pub mod batch;
pub mod broker;
pub mod circuit;
pub mod crypto;
pub mod db;
pub mod delivery_log;
pub mod dlq;
pub mod enqueue;
pub mod enum_names;
pub mod events;
pub mod feedback;
pub mod health;
pub mod http;
pub mod job;
pub mod metrics;
pub mod panics;
pub mod pipeline;
pub mod provider;
pub mod ratelimit;
pub mod settings;
pub mod strict_json;
pub mod suppression;
pub mod telemetry;
pub mod tenant;
pub mod worker;
