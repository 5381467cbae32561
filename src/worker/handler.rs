//! One delivery, start to finish: decode, claim, dispatch, record, report,
//! then hand back what to tell the broker.

use super::Shared;
use crate::broker::{self, BrokerError, headers};
use crate::delivery_log::{Attempt, Claim, ClaimRequest, DeliveryStatus, LogError, LogRow, Record};
use crate::dispatch::{self, Admission, Fate};
use crate::events::DeliveryEvent;
use crate::job::{Job, JobError, Salvaged};
use crate::metrics as m;
use crate::provider::{ErrorKind, ProviderError};
use crate::tenant::ResolvedChannel;
use lapin::message::Delivery;
use lapin::types::FieldTable;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use time::OffsetDateTime;

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
    Work,
    /// Its tenant's held queue: waits for the limit here.
    Held,
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
    let consumed_at = std::time::Instant::now();
    let job = match Job::decode(&delivery.data) {
        Ok(job) => job,
        Err(e) => return reject_invalid(shared, publish, delivery, e).await,
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

    // Which providers, and may the job go now? Before the claim, so a job
    // that must wait for its tenant's limit costs no database write.
    let expired = || {
        job.not_after
            .is_some_and(|t| t <= OffsetDateTime::now_utc())
    };
    // A recipient on the tenant's suppression list is never sent to; checked
    // before the limits are taken from. (A recipient that does not normalise
    // was refused at validation.)
    let suppressed = match crate::suppression::normalise(job.channel, &job.recipient) {
        Ok(r) => {
            crate::suppression::find(shared.log.pool(), job.tenant_id.as_str(), job.channel, &r)
                .await
                .map_err(LogError::from)?
        }
        Err(_) => None,
    };
    let admitted = if suppressed.is_some() {
        Err((suppressed_error(job.channel, "listed"), vec![]))
    } else if expired() {
        Err((not_after_passed(), vec![]))
    } else {
        match shared.directory.resolve(&job.tenant_id, job.channel).await {
            Ok(chain) if !chain.enabled => Err((crate::tenant::disabled(job.channel), vec![])),
            Ok(chain) => match admit(shared, moves, delivery, &job, &chain, source).await? {
                Admit::Go(from, skipped) => Ok((chain, from, skipped)),
                Admit::Blocked(e, skipped) => Err((e, skipped)),
                Admit::Diverted => return Ok(()),
            },
            Err(e) => Err((e, vec![])),
        }
    };
    // A wait for the limit may have outlived the job.
    let admitted = match admitted {
        Ok((_, _, skipped)) if expired() => Err((not_after_passed(), skipped)),
        a => a,
    };

    let claim = shared
        .log
        .claim(ClaimRequest {
            job_id: job.id.clone(),
            tenant_id: job.tenant_id.clone(),
            channel: job.channel,
        })
        .await?;
    let previous = match claim {
        Claim::Granted { attempts } => attempts,
        Claim::Done(row) => {
            // Already final: never send twice; repeat its event and ack.
            metrics::counter!(m::JOBS_DUPLICATE, "channel" => job.channel.as_str()).increment(1);
            tracing::info!(
                status = row.status.as_str(),
                "job already final; re-publishing its event"
            );
            shared.events(publish).publish_row(&row, true).await?;
            return Ok(());
        }
        Claim::Busy => {
            // Another delivery of this job holds a live lease: come back later.
            tracing::info!("job is being sent by another delivery; delaying this copy");
            let tier = shared.topology.tier_for(1, None);
            republish_delayed(shared, publish, delivery, tier, header_attempt(delivery)).await?;
            return Ok(());
        }
    };
    // Renewed until this function returns, i.e. after the outcome is recorded.
    let _lease = shared.leases.hold(job.tenant_id.as_str(), job.id.as_str());
    let attempt = previous + 1;
    span.record("attempt", attempt);
    if let Some(entry) = suppressed {
        return record_suppressed(shared, publish, &job, attempt, &entry.reason).await;
    }
    let first_seen =
        broker::header_u64(&delivery.properties, headers::FIRST_SEEN).unwrap_or_else(unix_now);
    let age = Duration::from_secs(unix_now().saturating_sub(first_seen));

    // From the first provider call until the outcome is durable: what a
    // crash in between would send again. Bounded, so that number is too.
    let unrecorded = shared.unrecorded.acquire().await.expect("never closed");
    let (report_outcome, attempts) = match admitted {
        Ok((chain, from, skipped)) => {
            // A slot only for the provider calls: the claim, the record and
            // the event are batched or pipelined and do not hold one, so
            // `worker.concurrency` sends stay in flight.
            let _slot = shared.sends.acquire().await.expect("never closed");
            let r = shared.policy.dispatch(&job, &chain, from, skipped).await;
            (r.outcome, r.attempts)
        }
        Err((e, skipped)) => (Err(e), skipped),
    };
    let fate = match report_outcome {
        Err(e) if e.kind == ErrorKind::Expired => Fate::Expired { error: e },
        outcome => dispatch::decide(
            outcome,
            attempt,
            age,
            job.not_after,
            &shared.budget,
            |n, hint| shared.topology.tier_for(n, hint),
        ),
    };

    let mut rec = Record {
        job_id: job.id.to_string(),
        tenant_id: Some(job.tenant_id.to_string()),
        channel: Some(job.channel),
        status: DeliveryStatus::Failed,
        provider: None,
        provider_message_id: None,
        chain_step: None,
        fallback_used: false,
        attempts: attempt,
        new_attempts: attempts,
        error: None,
        retry_at: None,
        content: shared
            .store_content
            .then(|| serde_json::to_value(&job.content).unwrap_or_default()),
        metadata: job.metadata.clone(),
    };
    let ch = job.channel.as_str();
    match &fate {
        Fate::Sent { info, receipt } => {
            rec.provider = Some(info.kind);
            rec.provider_message_id = receipt.message_id.clone();
            rec.chain_step = Some(info.step);
            rec.fallback_used = info.step > 0;
            span.record("provider", info.kind.as_str());
            if rec.fallback_used {
                metrics::counter!(m::JOBS_FALLBACK, "channel" => ch, "provider" => info.kind.as_str())
                    .increment(1);
            }
            if info.kind.delivers() {
                rec.status = DeliveryStatus::Sent;
                metrics::counter!(m::JOBS_SENT, "channel" => ch, "provider" => info.kind.as_str())
                    .increment(1);
            } else {
                // The sandbox accepted it: nothing reached the recipient.
                rec.status = DeliveryStatus::Simulated;
                metrics::counter!(m::JOBS_SIMULATED, "channel" => ch).increment(1);
            }
        }
        Fate::Retry { error, delay_secs } => {
            rec.status = DeliveryStatus::Retrying;
            rec.error = Some(error.clone());
            rec.retry_at = Some(OffsetDateTime::now_utc() + Duration::from_secs(*delay_secs));
            metrics::counter!(m::JOBS_RETRIED, "channel" => ch, "error_kind" => error.kind.as_str()).increment(1);
        }
        Fate::Failed { error, .. } => {
            rec.error = Some(error.clone());
            rec.provider = rec
                .new_attempts
                .iter()
                .rev()
                .find(|a| a.skipped.is_none())
                .map(|a| a.provider);
            if let Some(p) = rec.provider {
                span.record("provider", p.as_str());
            }
            metrics::counter!(m::JOBS_FAILED, "channel" => ch, "provider" => rec.provider.map_or("none", |p| p.as_str()), "error_kind" => error.kind.as_str()).increment(1);
        }
        Fate::Expired { error } => {
            rec.status = DeliveryStatus::Expired;
            rec.error = Some(error.clone());
            metrics::counter!(m::JOBS_EXPIRED, "channel" => ch).increment(1);
        }
    }

    let status = rec.status;
    let recorded = record_patiently(shared, rec).await;
    drop(unrecorded);
    let row = match recorded {
        Ok(Some(row)) => row,
        Err(LogError::Unrecordable(why)) => {
            // Not an outage: handing the job back would send it again.
            // Dead-letter it with what happened, for a person to read.
            tracing::error!(status = status.as_str(), error = %why, "job outcome cannot be stored; dead-lettering it");
            let mut headers = dead_letter_headers(
                delivery,
                "unrecordable",
                &format!("outcome {} could not be stored: {why}", status.as_str()),
                Some(job.id.as_str()),
                Some(job.tenant_id.as_str()),
                attempt as u64,
            );
            headers.insert(
                headers::STATUS.into(),
                broker::string_header(status.as_str()),
            );
            return publish_dead_letter(shared, publish, delivery, headers).await;
        }
        Err(e) => return Err(e.into()),
        Ok(None) => {
            // Another delivery finished this job first; report that outcome.
            let row = shared
                .log
                .get(job.tenant_id.as_str(), job.id.as_str())
                .await?;
            if let Some(row) = row {
                shared.events(publish).publish_row(&row, true).await?;
            }
            return Ok(());
        }
    };
    shared.events(publish).publish_row(&row, false).await?;

    match fate {
        Fate::Sent { .. } => {}
        Fate::Retry { delay_secs, .. } => {
            republish_delayed(shared, publish, delivery, delay_secs, attempt).await?
        }
        Fate::Failed { error, reason } => {
            opted_out(shared, &job, &error, row.provider.as_deref()).await?;
            // Kind and code only: the provider's text is in the log row and
            // the dead letter, for whoever investigates this job.
            tracing::warn!(reason, error_kind = error.kind.as_str(), code = ?error.code,
                "job failed for good: dead-lettered");
            dead_letter(shared, publish, delivery, reason, &error, &row).await?
        }
        Fate::Expired { error } => {
            dead_letter(shared, publish, delivery, "expired", &error, &row).await?
        }
    }
    if status != DeliveryStatus::Retrying {
        count_final(delivery, &job, status, consumed_at);
    }
    Ok(())
}

/// Twilio refused the send because the recipient replied STOP (21610): put
/// them on the tenant's list, so later jobs end `suppressed` without a call.
async fn opted_out(
    shared: &Shared,
    job: &Job,
    error: &ProviderError,
    provider: Option<&str>,
) -> Result<(), HandleError> {
    if provider != Some("twilio") || error.code.as_deref() != Some("21610") {
        return Ok(());
    }
    let source = "provider:twilio";
    let tenant = job.tenant_id.as_str();
    let reason = crate::suppression::Reason::OptOut;
    match crate::suppression::add(
        shared.log.pool(),
        tenant,
        job.channel,
        &job.recipient,
        reason,
        source,
    )
    .await
    {
        Ok(_) | Err(crate::suppression::SuppressionError::InvalidRecipient(_)) => Ok(()),
        Err(crate::suppression::SuppressionError::Db(e)) => Err(LogError::from(e).into()),
        Err(crate::suppression::SuppressionError::UnknownReason) => Ok(()),
    }
}

fn suppressed_error(channel: crate::job::Channel, reason: &str) -> ProviderError {
    ProviderError::new(
        ErrorKind::Recipient,
        Some("suppressed".into()),
        format!(
            "the recipient is on the tenant's {channel} suppression list ({reason}); no provider was called"
        ),
    )
}

/// End a job to a suppressed recipient: `suppressed` row and event, no
/// provider call, nothing dead-lettered (nothing to fix but the list).
async fn record_suppressed(
    shared: &Shared,
    publish: &lapin::Channel,
    job: &Job,
    attempt: u32,
    reason: &str,
) -> Result<(), HandleError> {
    metrics::counter!(m::JOBS_SUPPRESSED, "channel" => job.channel.as_str()).increment(1);
    m::job_final(job.tenant_id.as_str(), job.channel, "suppressed");
    tracing::info!(
        reason,
        "recipient suppressed: job ends without a provider call"
    );
    let rec = Record {
        job_id: job.id.to_string(),
        tenant_id: Some(job.tenant_id.to_string()),
        channel: Some(job.channel),
        status: DeliveryStatus::Suppressed,
        provider: None,
        provider_message_id: None,
        chain_step: None,
        fallback_used: false,
        attempts: attempt,
        new_attempts: vec![],
        error: Some(suppressed_error(job.channel, reason)),
        retry_at: None,
        content: None,
        metadata: job.metadata.clone(),
    };
    match shared.log.record(rec).await? {
        Some(row) => shared.events(publish).publish_row(&row, false).await?,
        None => {
            // Another delivery finished this job first; report that outcome.
            if let Some(row) = shared
                .log
                .get(job.tenant_id.as_str(), job.id.as_str())
                .await?
            {
                shared.events(publish).publish_row(&row, true).await?;
            }
        }
    }
    Ok(())
}

/// A job reached its final state (recorded and reported): count it and
/// how long it took, from its publish and from this delivery's arrival.
fn count_final(
    delivery: &Delivery,
    job: &Job,
    status: DeliveryStatus,
    consumed_at: std::time::Instant,
) {
    let (ch, st) = (job.channel.as_str(), status.as_str());
    m::job_final(job.tenant_id.as_str(), job.channel, st);
    metrics::histogram!(m::CONSUME_TO_FINAL, "channel" => ch, "status" => st)
        .record(consumed_at.elapsed().as_secs_f64());
    if let Some(published) = broker::published_ms(&delivery.properties) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as u64;
        // A publisher's clock ahead of ours counts as zero, not negative.
        let secs = now.saturating_sub(published) as f64 / 1000.0;
        metrics::histogram!(m::ENQUEUE_TO_FINAL, "channel" => ch, "status" => st).record(secs);
    }
}

enum Admit {
    Go(usize, Vec<Attempt>),
    Blocked(ProviderError, Vec<Attempt>),
    /// Moved to the tenant's held queue: ack it.
    Diverted,
}

/// Wait for the tenant's and the account's limits: briefly in place, or in
/// the tenant's held queue so the work queue keeps moving for everyone else.
async fn admit(
    shared: &Shared,
    moves: &lapin::Channel,
    delivery: &Delivery,
    job: &Job,
    chain: &ResolvedChannel,
    source: Source,
) -> Result<Admit, HandleError> {
    let holds = &shared.holds;
    // Its tenant's earlier jobs are waiting in the held queue: queue up behind them.
    if source == Source::Work && holds.is_holding(&job.tenant_id, job.channel) {
        holds
            .divert(moves, delivery, &job.tenant_id, job.channel)
            .await?;
        return Ok(Admit::Diverted);
    }
    let mut slot = None;
    loop {
        match shared.policy.admit(chain).await.map_err(LogError::from)? {
            Admission::Go { from, skipped } => return Ok(Admit::Go(from, skipped)),
            Admission::Blocked { error, skipped } => return Ok(Admit::Blocked(error, skipped)),
            Admission::Wait(wait) => {
                metrics::counter!(m::RATE_LIMITED, "channel" => job.channel.as_str()).increment(1);
                let wait_here = source == Source::Held
                    || (wait <= holds.max_inline_wait && {
                        if slot.is_none() {
                            slot = holds.wait_slot(&holds.queue_name(&job.tenant_id, job.channel));
                        }
                        slot.is_some()
                    });
                if !wait_here {
                    tracing::debug!(
                        wait_ms = wait.as_millis() as u64,
                        "rate limited: moving the job to its tenant's held queue"
                    );
                    holds
                        .divert(moves, delivery, &job.tenant_id, job.channel)
                        .await?;
                    return Ok(Admit::Diverted);
                }
                tokio::time::sleep(wait).await;
            }
        }
    }
}

fn not_after_passed() -> ProviderError {
    ProviderError::new(
        ErrorKind::Expired,
        Some("not_after".into()),
        "not_after passed before sending",
    )
}

/// A payload that is not a valid job: failed log row (when its id can be
/// read), failed event, dead-letter queue with the reason.
async fn reject_invalid(
    shared: &Shared,
    publish: &lapin::Channel,
    delivery: &Delivery,
    e: JobError,
) -> Result<(), HandleError> {
    metrics::counter!(m::JOBS_INVALID, "reason" => e.reason()).increment(1);
    let salvaged = Salvaged::from_payload(&delivery.data);
    tracing::warn!(reason = e.reason(), job_id = ?salvaged.job_id.as_ref().map(|j| j.as_str()), error = %e, "invalid job: dead-lettering");
    let error = ProviderError::new(
        ErrorKind::InvalidJob,
        Some(e.reason().into()),
        e.to_string(),
    );
    let row = match &salvaged.job_id {
        Some(id) => {
            let rec = Record {
                job_id: id.to_string(),
                tenant_id: salvaged.tenant_id.as_ref().map(|t| t.to_string()),
                channel: salvaged.channel,
                status: DeliveryStatus::Failed,
                provider: None,
                provider_message_id: None,
                chain_step: None,
                fallback_used: false,
                attempts: 0,
                new_attempts: vec![],
                error: Some(error.clone()),
                retry_at: None,
                content: None,
                metadata: salvaged.metadata.clone(),
            };
            shared.log.record_invalid(rec).await?
        }
        None => None,
    };
    match &row {
        Some(row) => shared.events(publish).publish_row(row, false).await?,
        None => {
            shared
                .events(publish)
                .publish(&DeliveryEvent::invalid(&salvaged, &error))
                .await?
        }
    }
    let headers = dead_letter_headers(
        delivery,
        e.reason(),
        &error.message,
        salvaged.job_id.as_ref().map(|j| j.as_str()),
        salvaged.tenant_id.as_ref().map(|t| t.as_str()),
        0,
    );
    publish_dead_letter(shared, publish, delivery, headers).await
}

async fn dead_letter(
    shared: &Shared,
    publish: &lapin::Channel,
    delivery: &Delivery,
    reason: &str,
    error: &ProviderError,
    row: &LogRow,
) -> Result<(), HandleError> {
    let headers = dead_letter_headers(
        delivery,
        reason,
        &error.to_string(),
        Some(&row.job_id),
        row.tenant_id.as_deref(),
        row.attempts as u64,
    );
    publish_dead_letter(shared, publish, delivery, headers).await
}

fn dead_letter_headers(
    delivery: &Delivery,
    reason: &str,
    error: &str,
    job_id: Option<&str>,
    tenant_id: Option<&str>,
    attempts: u64,
) -> FieldTable {
    let mut h = delivery.properties.headers().clone().unwrap_or_default();
    let s = broker::string_header;
    h.insert(headers::REASON.into(), s(reason));
    h.insert(headers::ERROR.into(), s(error));
    if let Some(j) = job_id {
        h.insert(headers::JOB_ID.into(), s(j));
    }
    if let Some(t) = tenant_id {
        h.insert(headers::TENANT_ID.into(), s(t));
    }
    h.insert(
        headers::ATTEMPT.into(),
        lapin::types::AMQPValue::LongLongInt(attempts as i64),
    );
    let now = OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    h.insert(headers::FAILED_AT.into(), s(&now));
    h
}

async fn publish_dead_letter(
    shared: &Shared,
    publish: &lapin::Channel,
    delivery: &Delivery,
    headers: FieldTable,
) -> Result<(), HandleError> {
    let props = delivery
        .properties
        .clone()
        .with_delivery_mode(2)
        .with_headers(headers);
    broker::publish_confirmed(
        publish,
        &shared.topology.dead_letter_exchange,
        "",
        &delivery.data,
        props,
    )
    .await?;
    Ok(())
}

/// Send the original payload to a delay tier; it comes back to the work queue
/// when the tier's TTL expires.
async fn republish_delayed(
    shared: &Shared,
    publish: &lapin::Channel,
    delivery: &Delivery,
    tier: u64,
    attempt: u32,
) -> Result<(), HandleError> {
    let mut h = delivery.properties.headers().clone().unwrap_or_default();
    h.insert(
        headers::ATTEMPT.into(),
        lapin::types::AMQPValue::LongLongInt(attempt as i64),
    );
    if broker::header_u64(&delivery.properties, headers::FIRST_SEEN).is_none() {
        h.insert(
            headers::FIRST_SEEN.into(),
            lapin::types::AMQPValue::LongLongInt(unix_now() as i64),
        );
    }
    let props = delivery
        .properties
        .clone()
        .with_delivery_mode(2)
        .with_headers(h);
    // Keyed by its tenant and channel (whichever queue it came from, held
    // ones included), so it returns to its tenant's work or held queue.
    let key = crate::job::routing_key(&delivery.data);
    shared
        .topology
        .publish_delayed(publish, tier, &key, &delivery.data, props)
        .await?;
    Ok(())
}

fn header_attempt(delivery: &Delivery) -> u32 {
    broker::header_u64(&delivery.properties, headers::ATTEMPT).unwrap_or(0) as u32
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

/// Record an outcome, trying again through a database outage of up to
/// `delivery_log.record_patience_secs`: the provider may have sent the
/// message, and handing the job back would send it again. The delivery
/// stays unacked meanwhile (its claim is renewed as soon as the database is
/// back).
async fn record_patiently(shared: &Shared, rec: Record) -> Result<Option<LogRow>, LogError> {
    let give_up_at = tokio::time::Instant::now() + shared.record_patience;
    let mut wait = Duration::from_millis(200);
    loop {
        match shared.log.record(rec.clone()).await {
            Err(e) if e.is_outage() && tokio::time::Instant::now() + wait < give_up_at => {
                tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64,
                    "cannot record the job's outcome yet; trying again");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
            }
            other => return other,
        }
    }
}
