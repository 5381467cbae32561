//! The reconciler: rows left non-final past their expected time.
//!
//! A job's row is `processing` while a delivery holds its lease and
//! `retrying` while its message waits in a delay tier. Both end when the
//! message comes back. If it never does (lost by a broker outside our
//! guarantees, a queue deleted by hand), the row would say "in flight"
//! forever. Every worker runs this loop; one at a time does the work (a
//! PostgreSQL advisory lock):
//!
//! - **Overdue** rows (`retrying` past `retry_at`, `processing` past its
//!   lease, by more than `reconciler.grace_secs`) are counted in
//!   `outreach_jobs_overdue{status}`, for an alert. They are not touched: a
//!   job may wait that long legitimately (in its tenant's held queue, behind
//!   a rate limit).
//! - **Lost** rows, older than any delivery of the job could still be
//!   (`worker.max_age_secs` + the longest delay tier + the lease +
//!   `reconciler.grace_secs`), are ended `expired` with code `lost`, and their
//!   event is published: a worker that saw the job now would expire it too.
//!   If the message shows up after all, its claim finds the final row and it
//!   is not sent.
//! - **Early provider events** (a status webhook that came before its send
//!   was recorded) are matched to their rows now ([`crate::feedback::apply::catch_up`]).

use super::Shared;
use crate::broker::BrokerError;
use crate::delivery_log::LogRow;
use crate::metrics as m;
pub use crate::settings::ReconcilerSettings;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Run passes until `stop` fires. Events go out on `publish` (confirmed).
pub async fn run(
    shared: Arc<Shared>,
    publish: lapin::Channel,
    cfg: ReconcilerSettings,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(cfg.interval_secs.max(1)));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Err(e) = pass(&shared, &publish, &cfg).await {
            tracing::warn!(error = %e, "reconciler pass failed; trying again next interval");
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum PassError {
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error(transparent)]
    Feedback(#[from] crate::feedback::apply::ApplyError),
}

/// One pass, if no other worker is making one.
async fn pass(
    shared: &Shared,
    publish: &lapin::Channel,
    cfg: &ReconcilerSettings,
) -> Result<(), PassError> {
    let pool = shared.log.pool();
    let mut tx = pool.begin().await?;
    let ours: bool =
        sqlx::query_scalar("SELECT pg_try_advisory_xact_lock(hashtext('outreach.reconciler'))")
            .fetch_one(&mut *tx)
            .await?;
    if !ours {
        return Ok(());
    }
    let grace = cfg.grace_secs as f64;
    let overdue: Vec<(String, i64)> = sqlx::query_as(
        "SELECT status::text, count(*) FROM outreach_logs
          WHERE (status = 'retrying' AND retry_at < now() - make_interval(secs => $1))
             OR (status = 'processing' AND lease_until < now() - make_interval(secs => $1))
          GROUP BY status",
    )
    .bind(grace)
    .fetch_all(&mut *tx)
    .await?;
    for status in ["processing", "retrying"] {
        let n = overdue
            .iter()
            .find(|(s, _)| s == status)
            .map_or(0, |(_, n)| *n);
        metrics::gauge!(m::JOBS_OVERDUE, "status" => status).set(n as f64);
    }

    let longest_tier = shared.topology.retry_tiers.last().copied().unwrap_or(0);
    let lost_after =
        shared.budget.max_age.as_secs() + longest_tier + shared.log.lease_secs() + cfg.grace_secs;
    let sql = format!(
        "UPDATE outreach_logs AS l
            SET status = 'expired', error_kind = 'expired', error_code = 'lost',
                error_message = 'no delivery of this job came back within ' || $1::bigint ||
                    ' s of its first attempt: its message was lost; it will not be sent',
                lease_until = NULL, retry_at = NULL, updated_at = now()
          WHERE l.status IN ('processing', 'retrying')
            AND l.created_at < now() - make_interval(secs => $1::bigint)
         RETURNING {}",
        crate::delivery_log::COLUMNS
    );
    let lost: Vec<LogRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(lost_after as i64)
        .fetch_all(&mut *tx)
        .await?;
    // Report before the rows are final for everyone else: if an event
    // cannot be published, the transaction rolls back and the next pass
    // tries again.
    for row in &lost {
        tracing::error!(job_id = %row.job_id, tenant_id = row.tenant_id.as_deref(), "job lost in flight: ended expired (lost)");
        shared.events(publish).publish_row(row, false).await?;
    }
    let caught_up = crate::feedback::apply::catch_up(&mut tx, &shared.events(publish)).await?;
    if caught_up > 0 {
        tracing::info!(
            rows = caught_up,
            "provider events that came before their send was recorded applied"
        );
    }
    tx.commit().await?;
    if !lost.is_empty() {
        metrics::counter!(m::JOBS_LOST).increment(lost.len() as u64);
    }
    Ok(())
}
