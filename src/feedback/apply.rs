//! Apply verified provider events: keep each in `provider_events`, move the
//! job's row forward, publish its delivery event, add suppressions; and
//! inbound STOP / START. One transaction per event; the delivery event is
//! confirmed by the broker before it commits, so a failure leaves nothing
//! done and the provider's retry does it all again.

use super::parse::{Decision, Inbound, ProviderEvent};
use crate::broker::{self, BrokerError};
use crate::delivery_log::{COLUMNS, DeliveryStatus, LogRow};
use crate::events::{DeliveryEvent, EventPublisher};
use crate::job::TenantId;
use crate::metrics as m;
use crate::provider::ErrorKind;
use crate::suppression::{self, Reason, SuppressionError};
use sqlx::PgPool;
use tokio::sync::Mutex;

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error(transparent)]
    Suppression(#[from] SuppressionError),
    #[error("event publish: {0}")]
    Broker(#[from] BrokerError),
}

/// What became of one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The row moved to the event's status; its delivery event was published
    /// (an inbound STOP / START: the suppression list follows it).
    Moved,
    /// Kept, the row left as it was (not further along, or nothing to move;
    /// an inbound STOP / START older than the recipient's newest decision).
    Kept,
    /// The same provider event (inbound message) was received before.
    Duplicate,
    /// No row of the tenant has this message id (kept, counted).
    Unknown,
}

/// Publishes delivery events on a confirm channel of its own, reconnecting
/// after a failure.
pub struct Publisher {
    nodes: broker::Nodes,
    exchange: String,
    session: Mutex<Option<(lapin::Connection, EventPublisher)>>,
}

impl Publisher {
    pub fn new(nodes: broker::Nodes, exchange: String) -> Self {
        Self {
            nodes,
            exchange,
            session: Mutex::new(None),
        }
    }

    async fn publish(&self, event: &DeliveryEvent<'_>) -> Result<(), BrokerError> {
        let mut session = self.session.lock().await;
        if session.is_none() {
            let conn = broker::connect(&self.nodes, "webhooks").await?;
            let ch = broker::confirm_channel(&conn).await?;
            *session = Some((conn, EventPublisher::new(ch, self.exchange.clone())));
        }
        let (_, publisher) = session.as_ref().expect("just set");
        let r = publisher.publish(event).await;
        if r.is_err() {
            // A broken channel: start a new session next time.
            *session = None;
        }
        r
    }
}

/// Applies events for the webhook receiver.
pub struct Recorder {
    pub pool: PgPool,
    pub publisher: Publisher,
}

impl Recorder {
    /// Apply one verified event of `tenant`.
    pub async fn event(
        &self,
        tenant: &TenantId,
        ev: &ProviderEvent,
    ) -> Result<Applied, ApplyError> {
        let provider = ev.provider.as_str();
        let mut tx = self.pool.begin().await?;
        let id: Option<i64> = sqlx::query_scalar(
            "INSERT INTO provider_events (tenant_id, provider, event_key, provider_message_id, \
                 raw_status, status, error_code, occurred_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
             ON CONFLICT (tenant_id, provider, event_key) DO NOTHING RETURNING id",
        )
        .bind(tenant.as_str())
        .bind(provider)
        .bind(&ev.event_key)
        .bind(&ev.message_id)
        .bind(&ev.raw_status)
        .bind(ev.status)
        .bind(&ev.error_code)
        .bind(ev.occurred_at)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(id) = id else {
            metrics::counter!(m::WEBHOOK_DUPLICATES, "provider" => provider).increment(1);
            return Ok(Applied::Duplicate);
        };
        metrics::counter!(m::WEBHOOK_EVENTS, "provider" => provider,
            "status" => ev.status.map_or("none", DeliveryStatus::as_str))
        .increment(1);
        let sql = format!(
            "SELECT {COLUMNS} FROM outreach_logs l WHERE l.tenant_id = $1 AND l.provider = $2 \
               AND (l.job_id = $3 OR l.provider_message_id = $4) LIMIT 1 FOR UPDATE"
        );
        let row: Option<LogRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(tenant.as_str())
            .bind(provider)
            .bind(&ev.job_id)
            .bind(&ev.message_id)
            .fetch_optional(&mut *tx)
            .await?;
        let channel = row.as_ref().and_then(|r| r.channel).unwrap_or(ev.channel);
        if let (Some(reason), Some(to)) = (ev.suppress, &ev.recipient) {
            suppress(&mut tx, tenant, channel, to, reason, provider).await?;
        }
        let Some(row) = row else {
            metrics::counter!(m::WEBHOOK_UNKNOWN_MESSAGES, "provider" => provider).increment(1);
            tx.commit().await?;
            return Ok(Applied::Unknown);
        };
        let report = Report {
            status: ev.status,
            provider,
            raw_status: &ev.raw_status,
            error_code: ev.error_code.as_deref(),
        };
        let applied = match advance(&mut tx, &row, id, &report).await? {
            Some(moved) => {
                let mut event = DeliveryEvent::from_row(&moved, false);
                event.occurred_at = ev.occurred_at;
                self.publisher.publish(&event).await?;
                moved_metric(&moved, provider);
                Applied::Moved
            }
            None => Applied::Kept,
        };
        tx.commit().await?;
        Ok(applied)
    }

    /// The tenant whose row holds this event's provider message id (an event
    /// of a system default account, shared by tenants). Message ids are the
    /// provider's own and unique; a job id alone is not (tenants choose
    /// them), so it is used only when exactly one row of that provider has it.
    pub async fn owner_of(&self, ev: &ProviderEvent) -> Result<Option<TenantId>, ApplyError> {
        let provider = ev.provider.as_str();
        let mut owners: Vec<String> = match &ev.message_id {
            Some(id) => {
                // The job id narrows it further where the provider echoes it.
                sqlx::query_scalar(
                    "SELECT tenant_id FROM outreach_logs \
                      WHERE provider = $1 AND provider_message_id = $2 \
                        AND ($3::text IS NULL OR job_id = $3) LIMIT 2",
                )
                .bind(provider)
                .bind(id)
                .bind(&ev.job_id)
                .fetch_all(&self.pool)
                .await?
            }
            None => vec![],
        };
        if owners.is_empty()
            && let Some(job) = &ev.job_id
        {
            owners = sqlx::query_scalar(
                "SELECT tenant_id FROM outreach_logs WHERE provider = $1 AND job_id = $2 LIMIT 2",
            )
            .bind(provider)
            .bind(job)
            .fetch_all(&self.pool)
            .await?;
        }
        Ok(match owners.as_slice() {
            [one] => TenantId::parse(one).ok(),
            _ => None,
        })
    }

    /// An inbound STOP (listed) or START (an opt-out lifted), applied only
    /// when it is the recipient's newest decision (by the provider's time of
    /// the message; of two at the same time, the later to arrive); the same
    /// message received again changes nothing ([`Applied::Duplicate`]), an
    /// older one is kept and not applied ([`Applied::Kept`]).
    pub async fn inbound(
        &self,
        tenant: &TenantId,
        provider: &str,
        msg: &Inbound,
    ) -> Result<Applied, ApplyError> {
        let channel = msg.channel;
        let Ok(recipient) = suppression::normalise(channel, &msg.from) else {
            tracing::warn!(provider, channel = %channel, "inbound message from a number that does not normalise; not applied");
            return Ok(Applied::Kept);
        };
        let mut tx = self.pool.begin().await?;
        // One decision per recipient at a time: the newest check and the
        // list change must not interleave with another's.
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
            .bind(format!("inbound:{tenant}:{channel}:{recipient}"))
            .execute(&mut *tx)
            .await?;
        let superseded: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM inbound_decisions WHERE tenant_id = $1 \
               AND channel = $2 AND recipient = $3 AND sent_at > $4)",
        )
        .bind(tenant.as_str())
        .bind(channel)
        .bind(&recipient)
        .bind(msg.sent_at)
        .fetch_one(&mut *tx)
        .await?;
        let kept = sqlx::query(
            "INSERT INTO inbound_decisions (tenant_id, provider, message_id, channel, recipient, \
                 opt_out, sent_at, applied) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
             ON CONFLICT DO NOTHING",
        )
        .bind(tenant.as_str())
        .bind(provider)
        .bind(&msg.message_id)
        .bind(channel)
        .bind(&recipient)
        .bind(msg.decision == Decision::OptOut)
        .bind(msg.sent_at)
        .bind(!superseded)
        .execute(&mut *tx)
        .await?;
        if kept.rows_affected() == 0 {
            metrics::counter!(m::WEBHOOK_DUPLICATES, "provider" => provider.to_owned())
                .increment(1);
            return Ok(Applied::Duplicate);
        }
        if superseded {
            tx.commit().await?;
            return Ok(Applied::Kept);
        }
        match msg.decision {
            Decision::OptOut => {
                suppress(
                    &mut tx,
                    tenant,
                    channel,
                    &recipient,
                    Reason::OptOut,
                    provider,
                )
                .await?
            }
            Decision::OptIn => {
                // Only an opt-out is lifted: a bounce or a person's entry stays.
                sqlx::query(
                    "DELETE FROM suppressions WHERE tenant_id = $1 AND channel = $2 \
                     AND recipient = $3 AND reason = 'opt_out'",
                )
                .bind(tenant.as_str())
                .bind(channel)
                .bind(&recipient)
                .execute(&mut *tx)
                .await?;
            }
        }
        tx.commit().await?;
        Ok(Applied::Moved)
    }
}

/// What one provider event says about its row.
#[derive(Debug)]
struct Report<'a> {
    status: Option<DeliveryStatus>,
    provider: &'a str,
    /// The provider's own status word.
    raw_status: &'a str,
    /// The provider's code for a failure (Twilio ErrorCode, Meta error code,
    /// SMTP status of a SendGrid bounce).
    error_code: Option<&'a str>,
}

impl Report<'_> {
    /// The row's error for a failure the provider reports with its code:
    /// kind `recipient` (the provider took the message and could not deliver
    /// it; the code says why), the code, and a message naming provider,
    /// status and code only (never the provider's text, which may quote the
    /// message or the recipient).
    fn failure(&self) -> Option<(ErrorKind, &str, String)> {
        let code = self.error_code.filter(|c| !c.is_empty())?;
        matches!(
            self.status,
            Some(DeliveryStatus::Undelivered | DeliveryStatus::Bounced)
        )
        .then(|| {
            let message = format!(
                "{} reported {} (code {code})",
                self.provider, self.raw_status
            );
            (ErrorKind::Recipient, code, message)
        })
    }
}

/// Tie provider event `event_id` to `row` and move the row to the reported
/// status when that is further along ([`super::advances`]), with the
/// provider's error for a failure ([`Report::failure`]); the moved row,
/// whose event the caller publishes before committing.
async fn advance(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    row: &LogRow,
    event_id: i64,
    report: &Report<'_>,
) -> Result<Option<LogRow>, sqlx::Error> {
    let moves = report.status.filter(|s| super::advances(row.status, *s));
    sqlx::query("UPDATE provider_events SET job_id = $2, applied = $3 WHERE id = $1")
        .bind(event_id)
        .bind(&row.job_id)
        .bind(moves.is_some())
        .execute(&mut **tx)
        .await?;
    let Some(status) = moves else {
        return Ok(None);
    };
    let failure = report.failure();
    let sql = format!(
        "UPDATE outreach_logs l SET status = $3, updated_at = now(), \
             error_kind = COALESCE($4, l.error_kind), error_code = COALESCE($5, l.error_code), \
             error_message = COALESCE($6, l.error_message) \
         WHERE l.tenant_id = $1 AND l.job_id = $2 RETURNING {COLUMNS}"
    );
    let moved = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(row.tenant_id.as_deref().unwrap_or_default())
        .bind(&row.job_id)
        .bind(status)
        .bind(failure.as_ref().map(|f| f.0))
        .bind(failure.as_ref().map(|f| f.1))
        .bind(failure.as_ref().map(|f| f.2.as_str()))
        .fetch_one(&mut **tx)
        .await?;
    Ok(Some(moved))
}

fn moved_metric(row: &LogRow, provider: &str) {
    metrics::counter!(m::JOBS_FEEDBACK,
        "channel" => row.channel.map_or("unknown", |c| c.as_str()),
        "provider" => provider.to_owned(), "status" => row.status.as_str())
    .increment(1);
    // Per tenant only for tenants in metrics.tenant_labels (the bounce-rate alert).
    if let (Some(t), Some(c)) = (row.tenant_id.as_deref(), row.channel) {
        m::tenants::outcome(t, c, row.status.as_str());
    }
}

/// Events that came before their send was recorded (a fast callback: the
/// row had no provider message id yet) matched to their rows now, oldest
/// first, within a day of arrival. Run by the reconciler, in its
/// transaction; each move's event is published (confirmed) before it
/// commits. Returns how many rows moved.
pub async fn catch_up(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    events: &EventPublisher,
) -> Result<usize, ApplyError> {
    let pending: Vec<Pending> = sqlx::query_as(
        "SELECT e.id, e.tenant_id, l.job_id, e.status, e.occurred_at, e.provider, \
                    e.raw_status, e.error_code \
               FROM provider_events e \
               JOIN outreach_logs l ON l.tenant_id = e.tenant_id AND l.provider = e.provider \
                AND l.provider_message_id = e.provider_message_id \
              WHERE e.job_id IS NULL AND e.received_at > now() - interval '1 day' \
              ORDER BY e.id LIMIT 1000",
    )
    .fetch_all(&mut **tx)
    .await?;
    let mut moved_rows = 0;
    for p in pending {
        let sql = format!(
            "SELECT {COLUMNS} FROM outreach_logs l WHERE l.tenant_id = $1 AND l.job_id = $2 FOR UPDATE"
        );
        let row: LogRow = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(&p.tenant_id)
            .bind(&p.job_id)
            .fetch_one(&mut **tx)
            .await?;
        let report = Report {
            status: p.status,
            provider: &p.provider,
            raw_status: &p.raw_status,
            error_code: p.error_code.as_deref(),
        };
        if let Some(moved) = advance(tx, &row, p.id, &report).await? {
            let mut event = DeliveryEvent::from_row(&moved, false);
            event.occurred_at = p.occurred_at;
            events.publish(&event).await?;
            moved_metric(&moved, &p.provider);
            moved_rows += 1;
        }
    }
    Ok(moved_rows)
}

/// An event kept before its row was known, now matched to it.
#[derive(sqlx::FromRow)]
struct Pending {
    id: i64,
    tenant_id: String,
    job_id: String,
    status: Option<DeliveryStatus>,
    occurred_at: time::OffsetDateTime,
    provider: String,
    raw_status: String,
    error_code: Option<String>,
}

async fn suppress(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    tenant: &TenantId,
    channel: crate::job::Channel,
    recipient: &str,
    reason: Reason,
    provider: &str,
) -> Result<(), ApplyError> {
    let source = format!("webhook:{provider}");
    match suppression::add(
        &mut **tx,
        tenant.as_str(),
        channel,
        recipient,
        reason,
        &source,
    )
    .await
    {
        // A recipient the provider wrote in a form we cannot read: nothing to list.
        Err(SuppressionError::InvalidRecipient(_)) => {
            tracing::warn!(provider, channel = %channel, "webhook named a recipient that does not normalise; not suppressed");
            Ok(())
        }
        r => r.map(|_| ()).map_err(Into::into),
    }
}
