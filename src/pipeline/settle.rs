//! Carry out a fate: the log row ([`record_of`], pure), then its event,
//! then what the broker must do with the message (back through a delay
//! tier, to the dead-letter queue, to the held queue), each confirmed. Only
//! then may the delivery be acked. The row's counters and histograms are
//! counted here too.

use super::failure::Failure;
use super::fate::{DeadLetterReason, Fate};
use super::{HandleError, Shared};
use crate::broker::{self, Letter, headers};
use crate::delivery_log::{Attempt, DeliveryStatus, LogError, LogRow, Record};
use crate::events::DeliveryEvent;
use crate::job::{Job, JobError, Salvaged};
use crate::metrics as m;
use crate::provider::ProviderKind;
use lapin::message::Delivery;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use time::OffsetDateTime;

/// The delivery being settled and where its messages go.
pub struct At<'a> {
    pub shared: &'a Shared,
    /// Confirm channel for events, retries and dead letters.
    pub publish: &'a lapin::Channel,
    /// Confirm channel for moves to held queues.
    pub moves: &'a lapin::Channel,
    pub delivery: &'a Delivery,
    pub consumed_at: Instant,
    /// Held from the first provider call until the outcome is recorded
    /// (`delivery_log.max_unrecorded`), then released.
    pub unrecorded: std::sync::Mutex<Option<tokio::sync::SemaphorePermit<'a>>>,
}

impl<'a> At<'a> {
    /// A delivery that has just arrived.
    pub fn new(
        shared: &'a Shared,
        publish: &'a lapin::Channel,
        moves: &'a lapin::Channel,
        delivery: &'a Delivery,
    ) -> Self {
        Self {
            shared,
            publish,
            moves,
            delivery,
            consumed_at: Instant::now(),
            unrecorded: std::sync::Mutex::new(None),
        }
    }
}

/// Carry out `fate` for `job` in round `attempt` (as far as known: the
/// header's before the claim), with the round's `attempts`.
pub async fn settle(
    at: &At<'_>,
    job: &Job,
    attempt: u32,
    attempts: Vec<Attempt>,
    fate: Fate,
) -> Result<(), HandleError> {
    let shared = at.shared;
    match fate {
        Fate::AlreadyFinal(row) => {
            metrics::counter!(m::JOBS_DUPLICATE, "channel" => job.channel.as_str()).increment(1);
            tracing::info!(
                status = row.status.as_str(),
                "job already final; re-publishing its event"
            );
            shared.events(at.publish).publish_row(&row, true).await?;
            Ok(())
        }
        Fate::Busy { delay_secs } => {
            tracing::info!("job is being sent by another delivery; delaying this copy");
            republish_delayed(at, delay_secs, attempt).await
        }
        Fate::ToHeldQueue => {
            shared
                .holds
                .divert(at.moves, at.delivery, &job.tenant_id, job.channel)
                .await
        }
        fate @ Fate::Suppressed { .. } => suppressed(at, job, attempt, fate).await,
        fate => {
            let rec = record_of(job, attempt, attempts, &fate, shared.store_content);
            end_round(at, job, rec, fate).await
        }
    }
}

/// The log row of a round's fate.
pub fn record_of(
    job: &Job,
    attempt: u32,
    attempts: Vec<Attempt>,
    fate: &Fate,
    store_content: bool,
) -> Record {
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
        content: store_content.then(|| serde_json::to_value(&job.content).unwrap_or_default()),
        metadata: job.metadata.clone(),
    };
    match fate {
        Fate::Sent {
            step,
            receipt,
            delivered,
        } => {
            rec.provider = Some(step.kind);
            rec.provider_message_id = receipt.message_id.clone();
            rec.chain_step = Some(step.step);
            rec.fallback_used = step.step > 0;
            // The sandbox accepted it: nothing reached the recipient.
            rec.status = if *delivered {
                DeliveryStatus::Sent
            } else {
                DeliveryStatus::Simulated
            };
        }
        Fate::Retry {
            failure,
            delay_secs,
        } => {
            rec.status = DeliveryStatus::Retrying;
            rec.error = Some(failure.recorded());
            rec.retry_at = Some(OffsetDateTime::now_utc() + Duration::from_secs(*delay_secs));
        }
        Fate::Failed { failure, .. } => {
            rec.error = Some(failure.recorded());
            rec.provider = last_called(&rec.new_attempts);
        }
        Fate::Expired { failure } => {
            rec.status = DeliveryStatus::Expired;
            rec.error = Some(failure.recorded());
        }
        Fate::Suppressed { failure } => {
            rec.status = DeliveryStatus::Suppressed;
            rec.error = Some(failure.recorded());
            rec.content = None;
        }
        Fate::AlreadyFinal(_) | Fate::Busy { .. } | Fate::ToHeldQueue => {}
    }
    rec
}

/// The provider of the round's last call (not a step passed over).
fn last_called(attempts: &[Attempt]) -> Option<ProviderKind> {
    attempts
        .iter()
        .rev()
        .find(|a| a.skipped.is_none())
        .map(|a| a.provider)
}

/// Sent, retrying, failed or expired: row `rec`, event, then the broker.
async fn end_round(at: &At<'_>, job: &Job, rec: Record, fate: Fate) -> Result<(), HandleError> {
    let shared = at.shared;
    count_round(job, &rec, &fate);
    let (status, attempt) = (rec.status, rec.attempts);
    let recorded = record_patiently(shared, rec).await;
    at.unrecorded.lock().expect("not poisoned").take();
    let row = match recorded {
        Ok(Some(row)) => row,
        Err(LogError::Unrecordable(why)) => {
            // Not an outage: handing the job back would send it again.
            // Dead-letter it with what happened, for a person to read.
            tracing::error!(status = status.as_str(), error = %why, "job outcome cannot be stored; dead-lettering it");
            let error = format!("outcome {} could not be stored: {why}", status.as_str());
            let letter = Letter {
                reason: DeadLetterReason::Unrecordable.as_str(),
                error: &error,
                job_id: Some(job.id.as_str()),
                tenant_id: Some(job.tenant_id.as_str()),
                attempts: attempt as u64,
                status: Some(status.as_str()),
            };
            return publish_dead_letter(at, &letter).await;
        }
        Err(e) => return Err(e.into()),
        Ok(None) => return report_winner(at, job).await,
    };
    shared.events(at.publish).publish_row(&row, false).await?;

    match fate {
        Fate::Retry { delay_secs, .. } => republish_delayed(at, delay_secs, attempt).await?,
        Fate::Failed { failure, reason } => {
            opted_out(shared, job, &failure, row.provider.as_deref()).await?;
            // Kind and code only: the provider's text is in the log row and
            // the dead letter, for whoever investigates this job.
            // The code as a value (`no_provider`), absent when there is none.
            tracing::warn!(
                reason = reason.as_str(),
                error_kind = failure.kind().as_str(),
                code = failure.code().as_deref(),
                "job failed for good: dead-lettered"
            );
            dead_letter(at, reason, &failure, &row).await?
        }
        Fate::Expired { failure } => {
            dead_letter(at, DeadLetterReason::Expired, &failure, &row).await?
        }
        _ => {}
    }
    if status != DeliveryStatus::Retrying {
        count_final(at, job, status);
    }
    Ok(())
}

/// Another delivery finished this job first: report that outcome.
async fn report_winner(at: &At<'_>, job: &Job) -> Result<(), HandleError> {
    let row = at
        .shared
        .log
        .get(job.tenant_id.as_str(), job.id.as_str())
        .await?;
    if let Some(row) = row {
        at.shared.events(at.publish).publish_row(&row, true).await?;
    }
    Ok(())
}

/// The counters of a round's outcome.
fn count_round(job: &Job, rec: &Record, fate: &Fate) {
    let ch = job.channel.as_str();
    let span = tracing::Span::current();
    match fate {
        Fate::Sent {
            step, delivered, ..
        } => {
            let p = step.kind.as_str();
            span.record("provider", p);
            if rec.fallback_used {
                metrics::counter!(m::JOBS_FALLBACK, "channel" => ch, "provider" => p).increment(1);
            }
            if *delivered {
                metrics::counter!(m::JOBS_SENT, "channel" => ch, "provider" => p).increment(1);
            } else {
                metrics::counter!(m::JOBS_SIMULATED, "channel" => ch).increment(1);
            }
        }
        Fate::Retry { failure, .. } => {
            metrics::counter!(m::JOBS_RETRIED, "channel" => ch, "error_kind" => failure.kind().as_str())
                .increment(1);
        }
        Fate::Failed { failure, .. } => {
            if let Some(p) = rec.provider {
                span.record("provider", p.as_str());
            }
            metrics::counter!(m::JOBS_FAILED, "channel" => ch, "provider" => rec.provider.map_or("none", |p| p.as_str()), "error_kind" => failure.kind().as_str())
                .increment(1);
        }
        Fate::Expired { .. } => {
            metrics::counter!(m::JOBS_EXPIRED, "channel" => ch).increment(1);
        }
        _ => {}
    }
}

/// The provider refused the send because the recipient opted out (its
/// adapter marked the error, as Twilio's does for 21610): put them on the
/// tenant's list, so later jobs end `suppressed` without a call.
async fn opted_out(
    shared: &Shared,
    job: &Job,
    failure: &Failure,
    provider: Option<&str>,
) -> Result<(), HandleError> {
    if !failure.opted_out() {
        return Ok(());
    }
    let source = format!("provider:{}", provider.unwrap_or("unknown"));
    let tenant = job.tenant_id.as_str();
    let reason = crate::suppression::Reason::OptOut;
    match crate::suppression::add(
        shared.log.pool(),
        tenant,
        job.channel,
        &job.recipient,
        reason,
        &source,
    )
    .await
    {
        Ok(_) | Err(crate::suppression::SuppressionError::InvalidRecipient(_)) => Ok(()),
        Err(crate::suppression::SuppressionError::Db(e)) => Err(LogError::from(e).into()),
        Err(crate::suppression::SuppressionError::UnknownReason) => Ok(()),
    }
}

/// End a job to a suppressed recipient: `suppressed` row and event, no
/// provider call, nothing dead-lettered (nothing to fix but the list).
async fn suppressed(at: &At<'_>, job: &Job, attempt: u32, fate: Fate) -> Result<(), HandleError> {
    let shared = at.shared;
    metrics::counter!(m::JOBS_SUPPRESSED, "channel" => job.channel.as_str()).increment(1);
    m::job_final(job.tenant_id.as_str(), job.channel, "suppressed");
    if let Fate::Suppressed {
        failure: Failure::Suppressed { reason, .. },
    } = &fate
    {
        tracing::info!(
            reason,
            "recipient suppressed: job ends without a provider call"
        );
    }
    let rec = record_of(job, attempt, vec![], &fate, false);
    match shared.log.record(rec).await? {
        Some(row) => shared.events(at.publish).publish_row(&row, false).await?,
        None => report_winner(at, job).await?,
    }
    Ok(())
}

/// A job reached its final state (recorded and reported): count it and
/// how long it took, from its publish and from this delivery's arrival.
fn count_final(at: &At<'_>, job: &Job, status: DeliveryStatus) {
    let (ch, st) = (job.channel.as_str(), status.as_str());
    m::job_final(job.tenant_id.as_str(), job.channel, st);
    metrics::histogram!(m::CONSUME_TO_FINAL, "channel" => ch, "status" => st)
        .record(at.consumed_at.elapsed().as_secs_f64());
    if let Some(published) = broker::published_ms(&at.delivery.properties) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as u64;
        // A publisher's clock ahead of ours counts as zero, not negative.
        let secs = now.saturating_sub(published) as f64 / 1000.0;
        metrics::histogram!(m::ENQUEUE_TO_FINAL, "channel" => ch, "status" => st).record(secs);
    }
}

/// A payload that is not a valid job: failed log row (when its id can be
/// read), failed event, dead-letter queue with the reason.
pub async fn invalid(at: &At<'_>, e: JobError) -> Result<(), HandleError> {
    let shared = at.shared;
    metrics::counter!(m::JOBS_INVALID, "reason" => e.reason()).increment(1);
    let salvaged = Salvaged::from_payload(&at.delivery.data);
    tracing::warn!(reason = e.reason(), job_id = salvaged.job_id.as_ref().map(|j| j.as_str()), error = %e, "invalid job: dead-lettering");
    let reason = DeadLetterReason::Invalid(e.code());
    let error = Failure::Invalid(e).recorded();
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
    let events = shared.events(at.publish);
    match &row {
        Some(row) => events.publish_row(row, false).await?,
        None => {
            events
                .publish(&DeliveryEvent::invalid(&salvaged, &error))
                .await?
        }
    }
    let letter = Letter {
        reason: reason.as_str(),
        error: &error.message,
        job_id: salvaged.job_id.as_ref().map(|j| j.as_str()),
        tenant_id: salvaged.tenant_id.as_ref().map(|t| t.as_str()),
        attempts: 0,
        status: None,
    };
    publish_dead_letter(at, &letter).await
}

/// Handling the job panicked (a defect, caught by the worker): its row
/// `failed` with error kind `internal` (unless another delivery made it
/// final: then that row's event again), its event, a dead letter
/// `internal`. The caller acks, so the job cannot panic again and again.
pub async fn panicked(at: &At<'_>) -> Result<(), HandleError> {
    crate::panics::caught("pipeline");
    let job = match Job::decode(&at.delivery.data) {
        Ok(job) => job,
        Err(e) => return invalid(at, e).await,
    };
    let attempt = broker::header_u64(&at.delivery.properties, headers::ATTEMPT).unwrap_or(0) as u32;
    tracing::error!(job_id = %job.id, tenant_id = %job.tenant_id,
        "handling the job panicked: failing it (internal) and dead-lettering it");
    let fate = super::fate::of_panic();
    let rec = record_of(&job, attempt, vec![], &fate, at.shared.store_content);
    end_round(at, &job, rec, fate).await
}

async fn dead_letter(
    at: &At<'_>,
    reason: DeadLetterReason,
    failure: &Failure,
    row: &LogRow,
) -> Result<(), HandleError> {
    let error = failure.to_string();
    let letter = Letter {
        reason: reason.as_str(),
        error: &error,
        job_id: Some(&row.job_id),
        tenant_id: row.tenant_id.as_deref(),
        attempts: row.attempts as u64,
        status: None,
    };
    publish_dead_letter(at, &letter).await
}

/// The delivery to the dead-letter queue with `letter` (why and when).
async fn publish_dead_letter(at: &At<'_>, letter: &Letter<'_>) -> Result<(), HandleError> {
    at.shared
        .topology
        .dead_letter(at.publish, at.delivery, letter)
        .await?;
    Ok(())
}

/// Send the original payload to a delay tier; it comes back to the work queue
/// when the tier's TTL expires.
async fn republish_delayed(at: &At<'_>, tier: u64, attempt: u32) -> Result<(), HandleError> {
    let d = at.delivery;
    // Keyed by its tenant and channel (whichever queue it came from, held
    // ones included), so it returns to its tenant's work or held queue.
    let key = crate::job::routing_key(&d.data);
    at.shared
        .topology
        .send_back(at.publish, tier, &key, d, attempt, unix_now())
        .await?;
    Ok(())
}

pub(super) fn unix_now() -> u64 {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::chain::StepInfo;
    use crate::provider::{ErrorKind, ProviderError, Receipt};

    fn job() -> Job {
        Job::decode(
            br#"{"version":1,"job_id":"j-1","tenant_id":"clinic-1","channel":"sms",
                "recipient":"+14155550100","content":{"text":"hi"}}"#,
        )
        .expect("valid job")
    }
    fn call(provider: ProviderKind, skipped: bool) -> Attempt {
        Attempt {
            provider,
            step: 0,
            kind: Some(ErrorKind::Transient),
            code: None,
            at: OffsetDateTime::now_utc(),
            skipped: skipped.then_some(crate::delivery_log::SkipReason::CircuitOpen),
        }
    }

    #[test]
    fn a_send_by_a_fallback_step_names_it_and_the_sandbox_is_simulated() {
        let fate = Fate::Sent {
            step: StepInfo {
                kind: ProviderKind::Sandbox,
                step: 2,
            },
            receipt: Receipt::default(),
            delivered: false,
        };
        let rec = record_of(&job(), 1, vec![], &fate, false);
        assert_eq!(rec.status, DeliveryStatus::Simulated);
        assert_eq!(rec.provider, Some(ProviderKind::Sandbox));
        assert_eq!(rec.chain_step, Some(2));
        assert!(rec.fallback_used);
        assert!(rec.error.is_none());
    }

    #[test]
    fn a_failure_names_the_last_provider_called_not_a_step_passed_over() {
        let failure: Failure =
            ProviderError::new(ErrorKind::Recipient, Some("21211".into()), "bad number").into();
        let fate = Fate::Failed {
            failure,
            reason: DeadLetterReason::Recipient,
        };
        let attempts = vec![
            call(ProviderKind::Twilio, false),
            call(ProviderKind::Vonage, true),
        ];
        let rec = record_of(&job(), 2, attempts, &fate, true);
        assert_eq!(rec.status, DeliveryStatus::Failed);
        assert_eq!(rec.provider, Some(ProviderKind::Twilio));
        assert_eq!(
            rec.error.as_ref().and_then(|e| e.code.as_deref()),
            Some("21211")
        );
        assert_eq!(rec.attempts, 2);
        assert!(rec.content.is_some());
    }

    #[test]
    fn a_retry_says_when_it_comes_back() {
        let fate = Fate::Retry {
            failure: ProviderError::transient("503").into(),
            delay_secs: 30,
        };
        let rec = record_of(&job(), 1, vec![], &fate, false);
        assert_eq!(rec.status, DeliveryStatus::Retrying);
        let at = rec.retry_at.expect("retry_at");
        let secs = (at - OffsetDateTime::now_utc()).whole_seconds();
        assert!((28..=30).contains(&secs), "{secs}");
    }
}
