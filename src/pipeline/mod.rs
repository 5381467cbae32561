//! The delivery pipeline: what happens to one delivered job, in the order
//! it lives ([`handle`] reads as this list):
//!
//! 1. decode and validate it ([`crate::job`]); a payload that is not a job
//!    is settled at once.
//! 2. [`admit`]: suppressed recipient, `not_after`, the tenant's chain, the
//!    first usable step and its limits: go, wait in place, or [`held`].
//! 3. claim its row ([`crate::delivery_log`]); a [`lease`] keeps the claim
//!    while the job is here.
//! 4. [`chain`]: walk the chain, with quick retries ([`retry`]), 429
//!    pauses and fallbacks.
//! 5. [`fate`]: what becomes of it, every case in one table, with the
//!    dead-letter reasons; failures are [`Failure`]s.
//! 6. [`settle`]: the row, the event, then the broker (delay tier,
//!    dead-letter queue, held queue), each confirmed; then the caller acks.

pub mod admit;
pub mod chain;
pub mod failure;
pub mod fate;
pub mod held;
pub mod lease;
pub mod retry;
pub mod settle;

pub use chain::{Policy, Report};
pub use failure::Failure;
pub use fate::{DeadLetterReason, Fate};
pub use held::Holds;
pub use retry::{QuickRetry, RetryBudget};

use crate::broker::{self, BrokerError, Topology, headers};
use crate::delivery_log::{ClaimRequest, DeliveryLog, LogError};
use crate::events::EventPublisher;
use crate::job::Job;
use crate::metrics as m;
use crate::tenant::Directory;
use lapin::message::Delivery;
use settle::{At, settle};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

/// What every job task shares.
pub struct Shared {
    pub log: DeliveryLog,
    /// Suppression-list checks, batched.
    pub suppressions: crate::suppression::Checks,
    /// Claims of jobs in this worker, renewed while they live.
    pub leases: Arc<lease::Leases>,
    /// Jobs between their provider call and their recorded outcome
    /// (`delivery_log.max_unrecorded`): a crash can send at most these again.
    pub unrecorded: Semaphore,
    /// How long an outcome is retried through a database outage before the
    /// job is handed back (`delivery_log.record_patience_secs`).
    pub record_patience: Duration,
    pub directory: Arc<Directory>,
    pub topology: Topology,
    pub policy: Policy,
    pub holds: Holds,
    pub budget: RetryBudget,
    pub store_content: bool,
    /// Provider sends in flight in this process (`worker.concurrency`),
    /// shared by the work and held queues and served in turn.
    pub sends: Semaphore,
}

impl Shared {
    pub fn events(&self, ch: &lapin::Channel) -> EventPublisher {
        EventPublisher::new(ch.clone(), self.topology.events_exchange.clone())
    }
}

/// Infrastructure trouble: the job's outcome is not safely recorded and
/// reported, so it must not be acked.
#[derive(Debug, thiserror::Error)]
pub enum HandleError {
    #[error(transparent)]
    Log(#[from] LogError),
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

/// Where a delivery came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The shared work queue: a job that must wait long moves to its held queue.
    WorkQueue,
    /// Its tenant's held queue: waits for the limit here.
    HeldQueue,
}

/// After [`handle`] panicked on `delivery` (the worker caught it): fail the
/// job as `internal` ([`settle::panicked`]). `Ok`: it may be acked.
pub async fn after_panic(
    shared: &Shared,
    publish: &lapin::Channel,
    moves: &lapin::Channel,
    delivery: &Delivery,
) -> Result<(), HandleError> {
    let at = At::new(shared, publish, moves, delivery);
    settle::panicked(&at).await
}

/// Process one delivery. `Ok` means its outcome is durable (log row written,
/// event and any retry / dead-letter / held-queue message confirmed) and it
/// may be acked. Events, retries and dead letters go out on `publish`, moves
/// to held queues on `moves` (both in confirm mode).
#[tracing::instrument(
    name = "job",
    skip_all,
    fields(job_id, tenant_id, channel, recipient, attempt, provider)
)]
pub async fn handle(
    shared: &Shared,
    publish: &lapin::Channel,
    moves: &lapin::Channel,
    delivery: &Delivery,
    source: Source,
) -> Result<(), HandleError> {
    let at = At::new(shared, publish, moves, delivery);
    // 1. Decode.
    let job = match Job::decode(&delivery.data) {
        Ok(job) => job,
        Err(e) => return settle::invalid(&at, e).await,
    };
    let span = tracing::Span::current();
    span.record("job_id", job.id.as_str());
    span.record("tenant_id", job.tenant_id.as_str());
    span.record("channel", job.channel.as_str());
    span.record(
        "recipient",
        crate::telemetry::mask_recipient(&job.recipient).as_str(),
    );
    metrics::counter!(m::JOBS_CONSUMED, "channel" => job.channel.as_str()).increment(1);
    let rounds_so_far =
        broker::header_u64(&delivery.properties, headers::ATTEMPT).unwrap_or(0) as u32;

    // 2. Admit.
    let admitted = match fate::of_admission(admit::admit(shared, &job, source).await?) {
        Ok(admitted) => admitted,
        Err(now) => return settle(&at, &job, rounds_so_far, vec![], now).await,
    };

    // 3. Claim.
    let claim = shared
        .log
        .claim(ClaimRequest {
            job_id: job.id.clone(),
            tenant_id: job.tenant_id.clone(),
            channel: job.channel,
        })
        .await?;
    let attempt = match fate::of_claim(claim, &shared.topology.retry_tiers) {
        Ok(attempt) => attempt,
        Err(early) => return settle(&at, &job, rounds_so_far, vec![], early).await,
    };
    // Renewed until this function returns, i.e. after the outcome is recorded.
    let _lease = shared.leases.keep(job.tenant_id.as_str(), job.id.as_str());
    // Test builds only: a stand-in for a defect in the pipeline itself,
    // with the claim taken (so its release is what is tested).
    #[cfg(feature = "fault-injection")]
    if job
        .metadata
        .as_ref()
        .and_then(|m| m.get("fault_injection"))
        .and_then(|v| v.as_str())
        == Some("panic_after_claim")
    {
        panic!("fault injection: panic_after_claim");
    }
    span.record("attempt", attempt);
    let first_seen = broker::header_u64(&delivery.properties, headers::FIRST_SEEN)
        .unwrap_or_else(settle::unix_now);
    let round = fate::Round {
        attempt,
        age: Duration::from_secs(settle::unix_now().saturating_sub(first_seen)),
        not_after: job.not_after,
    };

    // 4. The chain. From the first provider call until the outcome is
    // durable: what a crash in between would send again. Bounded, so that
    // number is too.
    *at.unrecorded.lock().expect("not poisoned") =
        Some(shared.unrecorded.acquire().await.expect("never closed"));
    let report = match admitted {
        Ok(start) => {
            // A slot only for the provider calls: the claim, the record and
            // the event are batched or pipelined and do not hold one, so
            // `worker.concurrency` sends stay in flight.
            let _slot = shared.sends.acquire().await.expect("never closed");
            shared
                .policy
                .walk(&job, &start.chain, start.from, start.skipped)
                .await
        }
        Err(stopped) => stopped,
    };

    // 5. Its fate, 6. carried out.
    let fate = fate::of_round(
        report.outcome,
        &round,
        &shared.budget,
        &shared.topology.retry_tiers,
    );
    settle(&at, &job, attempt, report.attempts, fate).await
}
