//! `dlq replay`: dead-lettered jobs back to the jobs exchange, to be sent again.
//!
//! Per matching letter, in this order, so a crash anywhere at worst sends a
//! job that had failed once more and never loses one:
//! 1. reset its `outreach_logs` row from `failed` / `expired` to `retrying`
//!    (attempts 0, lease cleared, attempt log kept) — otherwise the worker's
//!    claim would answer "already final" and only re-report it;
//! 2. publish it to the jobs exchange and wait for the broker's confirm;
//! 3. only then ack it from the dead-letter queue.
//!
//! A crash after 1 leaves the letter in the queue (unacked messages return)
//! and a `retrying` row that the next replay sends; after 2, the job is both in
//! the work queue and the DLQ, and the delivery log stops a second send.

use super::reader::Reader;
use super::{DeadLetter, DlqError, Filter};
use crate::broker::{self, Topology, headers};
use crate::db;
use crate::settings::Settings;
use lapin::options::BasicPublishOptions;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Confirmation};
use sqlx::PgPool;

/// Headers of the job's previous life, removed so it starts fresh: a new
/// attempt count and age, no dead-letter verdict, and no broker death history
/// (`x-death`…) or quorum-queue delivery count from before.
const STALE_HEADERS: &[&str] = &[
    headers::ATTEMPT,
    headers::FIRST_SEEN,
    headers::REASON,
    headers::ERROR,
    headers::FAILED_AT,
    "x-death",
    "x-first-death-exchange",
    "x-first-death-queue",
    "x-first-death-reason",
    "x-last-death-exchange",
    "x-last-death-queue",
    "x-last-death-reason",
    "x-delivery-count",
];

#[derive(Debug, Clone, Default)]
pub struct ReplayOptions {
    pub filter: Filter,
    /// Replay at most this many (skipped letters do not count).
    pub limit: Option<usize>,
    /// Report what would be replayed; change nothing.
    pub dry_run: bool,
}

/// What happened to one matching letter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayOutcome {
    /// Back in the jobs exchange, removed from the DLQ; its log row was reset.
    Replayed,
    /// Replayed, but its log row says `sent` (it was delivered after all):
    /// the worker will only re-report it, never send it again.
    ReplayedAlreadySent,
    /// `--dry-run`: would have been replayed.
    WouldReplay,
    /// Not a valid job and its reason was not asked for: left in the DLQ.
    SkippedInvalid,
    /// A provider accepted it (its unrecorded outcome is `sent` or
    /// `simulated`): replaying would send it again. Left in the DLQ.
    SkippedAccepted,
}

#[derive(Debug, Clone, Default)]
pub struct ReplaySummary {
    /// Replayed (in a dry run: would have been).
    pub replayed: usize,
    /// Matching letters left in the queue: invalid payloads whose reason was
    /// not asked for, and jobs a provider already accepted.
    pub skipped: usize,
    /// Letters that were in the DLQ at the start and are still there
    /// (anything dead-lettered meanwhile is not counted).
    pub left: u32,
    pub queue: String,
}

/// Replay the matching letters; `report` hears about each as it happens.
pub async fn replay(
    settings: &Settings,
    opts: &ReplayOptions,
    mut report: impl FnMut(&DeadLetter, ReplayOutcome),
) -> Result<ReplaySummary, DlqError> {
    let topology = Topology::new(&settings.amqp, &settings.worker.retry_delays_secs);
    let pool = if opts.dry_run {
        None
    } else {
        let pool = db::pool(&settings.database)?;
        // Fail before touching any message.
        sqlx::query("SELECT 1 FROM outreach_logs LIMIT 0")
            .execute(&pool)
            .await
            .map_err(DlqError::Log)?;
        Some(pool)
    };
    let conn = broker::connect(&settings.amqp.nodes(), "dlq replay").await?;
    let publish = broker::confirm_channel(&conn).await?;
    if !opts.dry_run {
        // As `outreach enqueue` does: the work queue exists and is bound.
        topology.declare(&publish).await?;
    }
    let mut reader = Reader::open(&conn, &topology.dead_letter_queue).await?;
    let mut summary = ReplaySummary {
        queue: topology.dead_letter_queue.clone(),
        ..Default::default()
    };
    let run = async {
        // To the end even after `limit`: see `list` on keeping the order.
        while let Some(delivery) = reader.next().await? {
            if opts.limit.is_some_and(|n| summary.replayed >= n) {
                continue;
            }
            let letter = DeadLetter::read(&delivery.properties, &delivery.data);
            if !opts.filter.matches(&letter) {
                continue;
            }
            // Invalid payloads only when their reason was asked for: the
            // filter then already checked that it is theirs.
            let outcome = if provider_accepted(letter.outcome.as_deref()) {
                ReplayOutcome::SkippedAccepted
            } else if !letter.valid_job && opts.filter.reason.is_none() {
                ReplayOutcome::SkippedInvalid
            } else if let Some(pool) = &pool {
                let already_sent = match &letter.job_id {
                    Some(id) => reset_row(pool, letter.tenant_id.as_deref(), id).await?,
                    None => false,
                };
                let props = fresh(&delivery.properties);
                let key = crate::job::routing_key(&delivery.data);
                publish_job(
                    &publish,
                    &topology.jobs_exchange,
                    &key,
                    &delivery.data,
                    props,
                )
                .await?;
                reader.remove(&delivery).await?;
                if already_sent {
                    ReplayOutcome::ReplayedAlreadySent
                } else {
                    ReplayOutcome::Replayed
                }
            } else {
                ReplayOutcome::WouldReplay
            };
            report(&letter, outcome);
            match outcome {
                ReplayOutcome::SkippedInvalid | ReplayOutcome::SkippedAccepted => {
                    summary.skipped += 1
                }
                _ => summary.replayed += 1,
            }
        }
        Ok::<_, DlqError>(())
    }
    .await;
    let back = reader.put_back(&conn).await;
    let _ = conn.close(200, "bye".into()).await;
    run?;
    summary.left = back?;
    Ok(summary)
}

/// Step 1: make the job sendable again. Returns whether its row is `sent`
/// (left as it is: a delivered job is never sent twice).
async fn reset_row(pool: &PgPool, tenant_id: Option<&str>, job_id: &str) -> Result<bool, DlqError> {
    let status: Option<String> = sqlx::query_scalar(
        "WITH reset AS (
            UPDATE outreach_logs
               SET status = 'retrying', attempts = 0, lease_until = NULL, retry_at = NULL,
                   updated_at = now()
             WHERE tenant_id = $2 AND job_id = $1 AND status IN ('failed', 'expired')
            RETURNING status
         )
         SELECT status::text FROM reset
         UNION ALL
         SELECT status::text FROM outreach_logs
          WHERE tenant_id = $2 AND job_id = $1 AND NOT EXISTS (SELECT 1 FROM reset)",
    )
    .bind(job_id)
    // An invalid payload's row is kept under the tenant '' (migration 0005).
    .bind(tenant_id.unwrap_or_default())
    .fetch_optional(pool)
    .await
    .map_err(DlqError::Log)?;
    Ok(provider_accepted(status.as_deref()))
}

/// A status that says a provider accepted the job (a simulated send is
/// final too): sending it again must not happen.
fn provider_accepted(status: Option<&str>) -> bool {
    matches!(status, Some("sent" | "simulated"))
}

/// The message's properties without its previous life's headers, stamped
/// as published now: `outreach_job_enqueue_to_final_seconds` (and the
/// `OutreachEnqueueToFinalSlow` alert) then time the replay, not the hours
/// the job spent dead-lettered before someone fixed its cause.
fn fresh(props: &BasicProperties) -> BasicProperties {
    let mut kept: std::collections::BTreeMap<_, _> = props
        .headers()
        .as_ref()
        .map(|h| {
            h.inner()
                .iter()
                .filter(|(k, _)| !STALE_HEADERS.contains(&k.as_str()))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
        .unwrap_or_default();
    let stamped = broker::job_properties();
    if let Some(h) = stamped.headers() {
        kept.extend(h.inner().iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    let mut fresh = props
        .clone()
        .with_delivery_mode(2)
        .with_headers(FieldTable::from(kept));
    if let Some(t) = stamped.timestamp() {
        fresh = fresh.with_timestamp(*t);
    }
    fresh
}

/// Step 2: publish `mandatory`, so a job that no queue would take comes back
/// as an error instead of being confirmed and dropped.
async fn publish_job(
    ch: &Channel,
    exchange: &str,
    routing_key: &str,
    payload: &[u8],
    props: BasicProperties,
) -> Result<(), DlqError> {
    let confirm = ch
        .basic_publish(
            exchange.into(),
            routing_key.into(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            payload,
            props,
        )
        .await?
        .await?;
    match confirm {
        Confirmation::Ack(None) | Confirmation::NotRequested => Ok(()),
        Confirmation::Ack(Some(_)) => Err(DlqError::Unroutable(exchange.to_owned())),
        Confirmation::Nack(_) => Err(broker::BrokerError::Nacked(exchange.to_owned()).into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::AMQPValue;

    #[test]
    fn a_replayed_job_loses_its_previous_life_and_keeps_the_rest() {
        let mut h = FieldTable::default();
        for k in STALE_HEADERS {
            h.insert((*k).into(), broker::string_header("old"));
        }
        h.insert(headers::JOB_ID.into(), broker::string_header("j-1"));
        h.insert("traceparent".into(), AMQPValue::LongString("00-abc".into()));
        let props = BasicProperties::default()
            .with_message_id("j-1".into())
            .with_headers(h);
        let out = fresh(&props);
        let kept: Vec<&str> = out
            .headers()
            .as_ref()
            .unwrap()
            .inner()
            .keys()
            .map(|k| k.as_str())
            .collect();
        assert_eq!(
            kept,
            vec!["traceparent", headers::JOB_ID, headers::PUBLISHED_MS]
        );
        assert_eq!(out.message_id().as_ref().unwrap().as_str(), "j-1");
        assert_eq!(*out.delivery_mode(), Some(2));
    }

    #[test]
    fn a_replayed_job_is_stamped_as_published_at_its_replay() {
        let mut h = FieldTable::default();
        h.insert(headers::PUBLISHED_MS.into(), AMQPValue::LongLongInt(1_000));
        let props = BasicProperties::default().with_timestamp(1).with_headers(h);
        let before = broker::published_ms(&broker::job_properties()).unwrap();
        let out = fresh(&props);
        assert!(broker::published_ms(&out).unwrap() >= before);
        assert!(out.timestamp().unwrap() >= before / 1000);
    }
}
