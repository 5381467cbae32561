//! Apply verified provider events: keep each in `provider_events`, move the
//! job's row forward, publish its delivery event, add suppressions; and
//! inbound STOP / START. One transaction per event; the delivery event is
//! confirmed by the broker before it commits, so a failure leaves nothing
//! done and the provider's retry does it all again.

use super::parse::{Inbound, ProviderEvent};
use crate::broker::{self, BrokerError};
use crate::delivery_log::{COLUMNS, DeliveryStatus, LogRow};
use crate::events::{DeliveryEvent, EventPublisher};
use crate::job::TenantId;
use crate::metrics as m;
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
    /// The row moved to the event's status; its delivery event was published.
    Moved,
    /// Kept, the row left as it was (not further along, or nothing to move).
    Kept,
    /// The same provider event was received before.
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
        let applied = match advance(&mut tx, &row, id, ev.status).await? {
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

    /// An inbound STOP (listed) or START (an opt-out lifted).
    pub async fn inbound(
        &self,
        tenant: &TenantId,
        provider: &str,
        msg: &Inbound,
    ) -> Result<(), ApplyError> {
        let mut tx = self.pool.begin().await?;
        match msg {
            Inbound::OptOut { channel, from } => {
                suppress(&mut tx, tenant, *channel, from, Reason::OptOut, provider).await?
            }
            Inbound::OptIn { channel, from } => {
                // Only an opt-out is lifted: a bounce or a person's entry stays.
                let n = suppression::normalise(*channel, from)?;
                sqlx::query(
                    "DELETE FROM suppressions WHERE tenant_id = $1 AND channel = $2 \
                     AND recipient = $3 AND reason = 'opt_out'",
                )
                .bind(tenant.as_str())
                .bind(channel)
                .bind(n)
                .execute(&mut *tx)
                .await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }
}

/// Tie provider event `event_id` to `row` and move the row to `status` when
/// that is further along ([`super::advances`]); the moved row, whose event
/// the caller publishes before committing.
async fn advance(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    row: &LogRow,
    event_id: i64,
    status: Option<DeliveryStatus>,
) -> Result<Option<LogRow>, sqlx::Error> {
    let moves = status.filter(|s| super::advances(row.status, *s));
    sqlx::query("UPDATE provider_events SET job_id = $2, applied = $3 WHERE id = $1")
        .bind(event_id)
        .bind(&row.job_id)
        .bind(moves.is_some())
        .execute(&mut **tx)
        .await?;
    let Some(status) = moves else {
        return Ok(None);
    };
    let sql = format!(
        "UPDATE outreach_logs l SET status = $3, updated_at = now() \
         WHERE l.tenant_id = $1 AND l.job_id = $2 RETURNING {COLUMNS}"
    );
    let moved = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(row.tenant_id.as_deref().unwrap_or_default())
        .bind(&row.job_id)
        .bind(status)
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
    let pending: Vec<(
        i64,
        String,
        String,
        Option<DeliveryStatus>,
        time::OffsetDateTime,
        String,
    )> = sqlx::query_as(
        "SELECT e.id, e.tenant_id, l.job_id, e.status, e.occurred_at, e.provider \
               FROM provider_events e \
               JOIN outreach_logs l ON l.tenant_id = e.tenant_id AND l.provider = e.provider \
                AND l.provider_message_id = e.provider_message_id \
              WHERE e.job_id IS NULL AND e.received_at > now() - interval '1 day' \
              ORDER BY e.id LIMIT 1000",
    )
    .fetch_all(&mut **tx)
    .await?;
    let mut moved_rows = 0;
    for (id, tenant, job_id, status, occurred_at, provider) in pending {
        let sql = format!(
            "SELECT {COLUMNS} FROM outreach_logs l WHERE l.tenant_id = $1 AND l.job_id = $2 FOR UPDATE"
        );
        let row: LogRow = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(&tenant)
            .bind(&job_id)
            .fetch_one(&mut **tx)
            .await?;
        if let Some(moved) = advance(tx, &row, id, status).await? {
            let mut event = DeliveryEvent::from_row(&moved, false);
            event.occurred_at = occurred_at;
            events.publish(&event).await?;
            moved_metric(&moved, &provider);
            moved_rows += 1;
        }
    }
    Ok(moved_rows)
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
