//! The `outreach_logs` table: one row per job id, written in batches.
//!
//! A job is *claimed* before it is sent (a `processing` row with a lease) and
//! *recorded* after (its outcome). The claim is what stops a redelivered or
//! republished job from being sent twice: a final row means "already done,
//! re-publish its event", a live lease means "someone is sending it now".

use crate::batch::{BatchError, Batcher};
use crate::job::{Channel, JobId, TenantId};
use crate::provider::{ErrorKind, ProviderError, ProviderKind};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use sqlx::types::Json;
use std::collections::HashSet;
use time::OffsetDateTime;

/// Where a job is. Everything but `Processing` and `Retrying` is final (the
/// job is not sent again). `Simulated` is a message the sandbox accepted:
/// nothing was delivered. `Suppressed`: the recipient is on the tenant's
/// suppression list, no provider was called. `Delivered` … `Unsubscribed`
/// come after `Sent`, from the provider's status webhooks
/// ([`crate::feedback`]), and only move forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, sqlx::Type)]
#[serde(rename_all = "lowercase")]
#[sqlx(type_name = "delivery_status", rename_all = "lowercase")]
pub enum DeliveryStatus {
    Processing,
    Retrying,
    Sent,
    Simulated,
    Failed,
    Expired,
    Suppressed,
    Delivered,
    Undelivered,
    Bounced,
    Complained,
    Opened,
    Clicked,
    Read,
    Unsubscribed,
}

impl DeliveryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Processing => "processing",
            DeliveryStatus::Retrying => "retrying",
            DeliveryStatus::Sent => "sent",
            DeliveryStatus::Simulated => "simulated",
            DeliveryStatus::Failed => "failed",
            DeliveryStatus::Expired => "expired",
            DeliveryStatus::Suppressed => "suppressed",
            DeliveryStatus::Delivered => "delivered",
            DeliveryStatus::Undelivered => "undelivered",
            DeliveryStatus::Bounced => "bounced",
            DeliveryStatus::Complained => "complained",
            DeliveryStatus::Opened => "opened",
            DeliveryStatus::Clicked => "clicked",
            DeliveryStatus::Read => "read",
            DeliveryStatus::Unsubscribed => "unsubscribed",
        }
    }

    pub fn is_final(self) -> bool {
        !matches!(self, DeliveryStatus::Processing | DeliveryStatus::Retrying)
    }
}

/// One provider call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    pub provider: ProviderKind,
    /// Position in the chain (0 = the tenant's primary).
    pub step: u16,
    /// `None` when the provider accepted the message.
    pub kind: Option<ErrorKind>,
    pub code: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// Set when the step was passed over without a call, and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skipped: Option<SkipReason>,
}

/// Why a chain step was passed over without calling its provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SkipReason {
    /// Its circuit breaker is open.
    CircuitOpen,
    /// Paused until the provider's `Retry-After` (after a 429).
    Paused,
    /// At its rate limit for longer than a step may wait in place.
    RateLimit,
    /// Its rate limiter could not be asked (its database down): not taken
    /// for a free limit.
    LimiterUnavailable,
    /// The tenant's entry cannot be used (credentials that do not decrypt,
    /// settings that do not build).
    Unusable,
}

impl SkipReason {
    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::CircuitOpen => "circuit_open",
            SkipReason::Paused => "paused",
            SkipReason::RateLimit => "rate_limit",
            SkipReason::LimiterUnavailable => "limiter_unavailable",
            SkipReason::Unusable => "unusable",
        }
    }
}

/// A row of `outreach_logs`.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct LogRow {
    pub job_id: String,
    pub tenant_id: Option<String>,
    pub channel: Option<Channel>,
    pub status: DeliveryStatus,
    pub provider: Option<String>,
    pub provider_message_id: Option<String>,
    pub chain_step: Option<i16>,
    pub fallback_used: bool,
    pub attempts: i32,
    pub attempt_log: Json<Vec<Attempt>>,
    pub error_kind: Option<ErrorKind>,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    pub retry_at: Option<OffsetDateTime>,
    pub metadata: Option<Json<serde_json::Map<String, serde_json::Value>>>,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
    pub sent_at: Option<OffsetDateTime>,
}

/// The columns of a [`LogRow`], from `outreach_logs l`.
pub(crate) const COLUMNS: &str = "l.job_id, NULLIF(l.tenant_id, '') AS tenant_id, l.channel, l.status, l.provider, l.provider_message_id, \
    l.chain_step, l.fallback_used, l.attempts, l.attempt_log, l.error_kind, l.error_code, \
    l.error_message, l.retry_at, l.metadata, l.created_at, l.updated_at, l.sent_at";

/// The answer to "may I send this job?".
#[derive(Debug, Clone)]
pub enum Claim {
    /// Yours: send it. `attempts` rounds were made before this one.
    Granted { attempts: u32 },
    /// Already final: do not send; re-publish its event.
    Done(Box<LogRow>),
    /// Another delivery of the same job holds a live lease.
    Busy,
}

/// What to claim.
#[derive(Debug, Clone)]
pub struct ClaimRequest {
    pub job_id: JobId,
    pub tenant_id: TenantId,
    pub channel: Channel,
}

/// An outcome to write.
#[derive(Debug, Clone)]
pub struct Record {
    pub job_id: String,
    pub tenant_id: Option<String>,
    pub channel: Option<Channel>,
    pub status: DeliveryStatus,
    pub provider: Option<ProviderKind>,
    pub provider_message_id: Option<String>,
    pub chain_step: Option<u16>,
    pub fallback_used: bool,
    /// Total rounds so far, this one included.
    pub attempts: u32,
    /// This round's provider calls (appended to the row's log).
    pub new_attempts: Vec<Attempt>,
    pub error: Option<ProviderError>,
    pub retry_at: Option<OffsetDateTime>,
    pub content: Option<serde_json::Value>,
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
}

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error(transparent)]
    Batch(#[from] BatchError),
    /// PostgreSQL refused this one row even with every free-form value
    /// removed: not a database outage, so handing the job back would only
    /// send it again.
    #[error("the job's log row cannot be stored: {0}")]
    Unrecordable(String),
    #[error("delivery log query failed: {0}")]
    Db(#[from] sqlx::Error),
    /// PostgreSQL did not answer or dropped the connection while the row was
    /// written: an outage, worth trying again.
    #[error("the delivery log could not be written: {0}")]
    Unavailable(String),
}

impl LogError {
    /// An outage (the database, its pool or the batcher), not a refused row.
    pub fn is_outage(&self) -> bool {
        !matches!(self, LogError::Unrecordable(_))
    }
}

/// Why one record was not stored.
#[derive(Debug, Clone)]
pub(crate) enum NotStored {
    /// The database did not answer or dropped the connection.
    Unavailable(String),
    /// PostgreSQL refused the row itself, even without its free-form values.
    Refused(String),
}

impl From<NotStored> for LogError {
    fn from(n: NotStored) -> Self {
        match n {
            NotStored::Unavailable(m) => LogError::Unavailable(m),
            NotStored::Refused(m) => LogError::Unrecordable(m),
        }
    }
}

/// Whether PostgreSQL refused the data itself (SQLSTATE class 22 data
/// exception: bad text, JSON, number; 23 constraint; 54 too large), rather
/// than failing to answer.
fn refused_data(e: &anyhow::Error) -> bool {
    e.downcast_ref::<sqlx::Error>()
        .and_then(|e| e.as_database_error())
        .and_then(|d| d.code())
        .is_some_and(|c| c.starts_with("22") || c.starts_with("23") || c.starts_with("54"))
}

/// Batched access to `outreach_logs`.
#[derive(Clone)]
pub struct DeliveryLog {
    pool: PgPool,
    claims: Batcher<ClaimRequest, Claim>,
    records: Batcher<Record, Result<Option<LogRow>, NotStored>>,
    lease_secs: u64,
}

impl DeliveryLog {
    /// `claim_batches` and `record_batches`: batches of each kind written at
    /// the same time. `lease_secs`: how long a claim keeps other deliveries
    /// of the job away.
    pub fn new(
        pool: PgPool,
        batch_size: usize,
        claim_batches: usize,
        record_batches: usize,
        lease_secs: u64,
    ) -> Self {
        let p = pool.clone();
        let claims = Batcher::spawn("claims", batch_size, claim_batches, move |reqs| {
            let p = p.clone();
            async move { claim_batch(&p, reqs, lease_secs).await }
        });
        // Outcomes have connections of their own: a record batch must not
        // queue behind the per-job reads and claims that share the main
        // pool (under load that queue was seconds long), since every job
        // sent and not yet recorded is sent again if the worker dies.
        let p = sqlx::postgres::PgPoolOptions::new()
            .max_connections(record_batches as u32)
            .acquire_timeout(pool.options().get_acquire_timeout())
            .connect_lazy_with((*pool.connect_options()).clone());
        let records = Batcher::spawn("records", batch_size, record_batches, move |recs| {
            let p = p.clone();
            async move { Ok(record_isolating(&p, recs).await) }
        });
        Self {
            pool,
            claims,
            records,
            lease_secs,
        }
    }

    /// How long a claim keeps other deliveries of the job away.
    pub fn lease_secs(&self) -> u64 {
        self.lease_secs
    }

    pub async fn claim(&self, req: ClaimRequest) -> Result<Claim, LogError> {
        Ok(self.claims.call(req).await?)
    }

    /// Write a job's outcome. `Ok(None)`: the row was already final
    /// (another delivery recorded it first).
    pub async fn record(&self, rec: Record) -> Result<Option<LogRow>, LogError> {
        Ok(self.records.call(rec).await??)
    }

    /// The row of an invalid payload: written only when its job id has no
    /// row for that tenant (a bad copy must not overwrite a real job's row).
    /// `Ok(None)`: a row existed and was left alone.
    pub async fn record_invalid(&self, rec: Record) -> Result<Option<LogRow>, LogError> {
        write_records(&self.pool, vec![rec], Conflict::OnlyNew)
            .await
            .map(|mut rows| rows.pop().flatten())
            .map_err(|e| match refused_data(&e) {
                true => LogError::Unrecordable(e.to_string()),
                false => LogError::Unavailable(e.to_string()),
            })
    }

    /// A tenant's job's row.
    pub async fn get(&self, tenant_id: &str, job_id: &str) -> Result<Option<LogRow>, LogError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM outreach_logs l WHERE l.tenant_id = $1 AND l.job_id = $2"
        );
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(tenant_id)
            .bind(job_id)
            .fetch_optional(&self.pool)
            .await?)
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

async fn claim_batch(
    pool: &PgPool,
    reqs: Vec<ClaimRequest>,
    lease_secs: u64,
) -> anyhow::Result<Vec<Claim>> {
    // The same job twice in one batch: the first claims, the rest are Busy
    // (one statement cannot touch a row twice).
    let mut seen = HashSet::new();
    let first: Vec<bool> = reqs.iter().map(|r| seen.insert(claim_key(r))).collect();
    let unique: Vec<&ClaimRequest> = reqs
        .iter()
        .zip(&first)
        .filter(|(_, f)| **f)
        .map(|(r, _)| r)
        .collect();

    // A job's row that is final refuses the claim, except the `failed` row
    // an invalid payload with the job's id left (error kind `invalid_job`,
    // never written for a valid job): that payload was not the job.
    // `l` below reads the snapshot from before the insert: for a granted claim
    // it is the previous row (attempt count of a retry), for a refused one the
    // row that refused it. It is a LATERAL primary-key lookup with `LIMIT 1`
    // so the planner cannot flatten it into a hash join over a sequential scan
    // of the whole table (what it chose for a plain LEFT JOIN: the cost of
    // every claim batch grew with the table; see BENCHMARKS.md).
    let sql = format!(
        "WITH input AS (
            SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[]) AS t(job_id, tenant_id, channel)
         ), granted AS (
            INSERT INTO outreach_logs AS l (job_id, tenant_id, channel, status, lease_until)
            SELECT job_id, tenant_id, channel::channel, 'processing', now() + make_interval(secs => $4)
            FROM input
            ON CONFLICT (tenant_id, job_id) DO UPDATE
               SET status = 'processing', lease_until = EXCLUDED.lease_until, updated_at = now(),
                   channel = EXCLUDED.channel,
                   metadata = CASE WHEN l.status = 'failed' THEN NULL ELSE l.metadata END
             WHERE l.status = 'retrying' OR (l.status = 'processing' AND l.lease_until < now())
                -- The row of an invalid copy that came first: a valid job
                -- with its id is still sent (and its outcome replaces it).
                OR (l.status = 'failed' AND l.error_kind = 'invalid_job')
            RETURNING l.tenant_id, l.job_id
         )
         SELECT i.job_id AS input_id, i.tenant_id AS input_tenant, g.job_id IS NOT NULL AS granted, l.*
         FROM input i
         LEFT JOIN granted g ON g.tenant_id = i.tenant_id AND g.job_id = i.job_id
         LEFT JOIN LATERAL (
            SELECT {COLUMNS} FROM outreach_logs l
             WHERE l.tenant_id = i.tenant_id AND l.job_id = i.job_id LIMIT 1
         ) l ON true"
    );
    let rows: Vec<ClaimRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(unique.iter().map(|r| r.job_id.as_str()).collect::<Vec<_>>())
        .bind(
            unique
                .iter()
                .map(|r| r.tenant_id.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            unique
                .iter()
                .map(|r| r.channel.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(lease_secs as f64)
        .fetch_all(pool)
        .await?;
    let mut by_id: std::collections::HashMap<(String, String), Claim> = rows
        .into_iter()
        .map(|r| {
            let claim = match (r.granted, r.row) {
                (true, row) => Claim::Granted {
                    attempts: row.map(|row| row.attempts.max(0) as u32).unwrap_or(0),
                },
                (false, Some(row)) if row.status.is_final() => Claim::Done(Box::new(row)),
                (false, _) => Claim::Busy,
            };
            ((r.input_tenant, r.input_id), claim)
        })
        .collect();
    Ok(reqs
        .iter()
        .zip(first)
        .map(|(r, first)| {
            if first {
                by_id.remove(&claim_key(r)).unwrap_or(Claim::Busy)
            } else {
                Claim::Busy
            }
        })
        .collect())
}

/// A claim's identity: job ids are unique per tenant.
fn claim_key(r: &ClaimRequest) -> (String, String) {
    (r.tenant_id.to_string(), r.job_id.to_string())
}

struct ClaimRow {
    input_id: String,
    input_tenant: String,
    granted: bool,
    row: Option<LogRow>,
}

impl<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> for ClaimRow {
    fn from_row(row: &'r sqlx::postgres::PgRow) -> Result<Self, sqlx::Error> {
        use sqlx::Row;
        let status: Option<DeliveryStatus> = row.try_get("status")?;
        Ok(Self {
            input_id: row.try_get("input_id")?,
            input_tenant: row.try_get("input_tenant")?,
            granted: row.try_get("granted")?,
            row: if status.is_some() {
                Some(LogRow::from_row(row)?)
            } else {
                None
            },
        })
    }
}

/// Each record's answer: its row (`None`: already final), or why it could
/// not be stored.
type Recorded = Vec<Result<Option<LogRow>, NotStored>>;

/// Write a batch so that one bad row fails alone. A batch PostgreSQL refuses
/// for its data (not for an outage) is split in halves until the offending
/// row is alone; that row is written again with its free-form values removed
/// (metadata, content, the provider's error text), so its outcome is still
/// stored. Its batch-mates are recorded normally and never re-sent. An
/// outage, even in the middle of the splitting, is never taken for a refused
/// row: it fails what is left as [`NotStored::Unavailable`] (the worker tries
/// again, then hands the job back).
fn record_isolating(pool: &PgPool, recs: Vec<Record>) -> futures::future::BoxFuture<'_, Recorded> {
    Box::pin(async move {
        let n = recs.len();
        let e = match record_batch(pool, recs.clone()).await {
            Ok(rows) => return rows.into_iter().map(Ok).collect(),
            Err(e) => e,
        };
        if !refused_data(&e) {
            let msg = e.to_string();
            return (0..n)
                .map(|_| Err(NotStored::Unavailable(msg.clone())))
                .collect();
        }
        if n > 1 {
            let mut left = recs;
            let right = left.split_off(n / 2);
            let mut out = record_isolating(pool, left).await;
            out.extend(record_isolating(pool, right).await);
            return out;
        }
        let rec = recs.into_iter().next().expect("one record");
        tracing::error!(job_id = %rec.job_id, error = %e,
            "PostgreSQL refused a log row; storing it without its free-form values");
        match record_batch(pool, vec![rec.stripped(&e.to_string())]).await {
            Ok(mut rows) => vec![Ok(rows.pop().flatten())],
            Err(e) if refused_data(&e) => vec![Err(NotStored::Refused(e.to_string()))],
            Err(e) => vec![Err(NotStored::Unavailable(e.to_string()))],
        }
    })
}

impl Record {
    /// This record without the values PostgreSQL may refuse: the free-form
    /// ones (metadata, content, the provider's error text, replaced by why
    /// they were dropped) and the short values from outside (the
    /// provider's message id and codes) unless they are short, printable
    /// and NUL-free.
    fn stripped(&self, why: &str) -> Record {
        let mut r = self.clone();
        r.metadata = None;
        r.content = None;
        r.provider_message_id = r
            .provider_message_id
            .and_then(|m| short(&m, crate::provider::guard::MAX_MESSAGE_ID));
        for a in &mut r.new_attempts {
            a.code = a.code.as_deref().and_then(|c| short(c, 64));
        }
        if let Some(e) = &mut r.error {
            e.code = e.code.as_deref().and_then(|c| short(c, 64));
            e.message = format!(
                "(the error text could not be stored: {})",
                why.replace('\0', "")
            );
        }
        r
    }
}

/// `v` without NULs, if it is then at most `max` characters without
/// control characters.
fn short(v: &str, max: usize) -> Option<String> {
    let v = v.replace('\0', "");
    (v.chars().count() <= max && !v.chars().any(char::is_control)).then_some(v)
}

/// The outcome replaces the open row of its job; the attempt log grows.
const SETTLE_OPEN: &str = "DO UPDATE SET
             status = EXCLUDED.status, provider = EXCLUDED.provider,
             provider_message_id = EXCLUDED.provider_message_id, chain_step = EXCLUDED.chain_step,
             fallback_used = EXCLUDED.fallback_used, attempts = EXCLUDED.attempts,
             attempt_log = l.attempt_log || EXCLUDED.attempt_log, error_kind = EXCLUDED.error_kind,
             error_code = EXCLUDED.error_code, error_message = EXCLUDED.error_message,
             retry_at = EXCLUDED.retry_at, content = COALESCE(EXCLUDED.content, l.content),
             metadata = COALESCE(EXCLUDED.metadata, l.metadata), sent_at = EXCLUDED.sent_at,
             lease_until = NULL, updated_at = now()
           WHERE l.status IN ('processing', 'retrying')";

/// How a record meets an existing row of its job.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Conflict {
    /// Settle the job's open row (`processing` / `retrying`); a final row stays.
    SettleOpen,
    /// Only write when the job has no row at all (an invalid payload that
    /// reuses a job's id must not touch that job's row).
    OnlyNew,
}

async fn record_batch(pool: &PgPool, recs: Vec<Record>) -> anyhow::Result<Vec<Option<LogRow>>> {
    write_records(pool, recs, Conflict::SettleOpen).await
}

async fn write_records(
    pool: &PgPool,
    recs: Vec<Record>,
    conflict: Conflict,
) -> anyhow::Result<Vec<Option<LogRow>>> {
    let on_conflict = match conflict {
        Conflict::OnlyNew => "DO NOTHING",
        Conflict::SettleOpen => SETTLE_OPEN,
    };
    // Rows for the same job in one batch cannot happen: a job is recorded
    // only by the delivery that claimed it (or, invalid, never claimed).
    let mut cols = RecordColumns::default();
    for r in &recs {
        cols.push(r);
    }
    let sql = format!(
        "INSERT INTO outreach_logs AS l (job_id, tenant_id, channel, status, provider, provider_message_id,
             chain_step, fallback_used, attempts, attempt_log, error_kind, error_code, error_message,
             retry_at, content, metadata, sent_at)
         SELECT job_id, COALESCE(tenant_id, ''), channel::channel, status::delivery_status, provider, provider_message_id,
             chain_step, fallback_used, attempts, attempt_log::jsonb, error_kind::error_kind, error_code,
             error_message, retry_at, content::jsonb, metadata::jsonb,
             CASE WHEN status = 'sent' THEN now() END
         FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::int2[],
                     $8::bool[], $9::int4[], $10::text[], $11::text[], $12::text[], $13::text[],
                     $14::timestamptz[], $15::text[], $16::text[])
              AS t(job_id, tenant_id, channel, status, provider, provider_message_id, chain_step,
                   fallback_used, attempts, attempt_log, error_kind, error_code, error_message,
                   retry_at, content, metadata)
         ON CONFLICT (tenant_id, job_id) {on_conflict}
         RETURNING {COLUMNS}"
    );
    let rows: Vec<LogRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(cols.job_id)
        .bind(cols.tenant_id)
        .bind(cols.channel)
        .bind(cols.status)
        .bind(cols.provider)
        .bind(cols.provider_message_id)
        .bind(cols.chain_step)
        .bind(cols.fallback_used)
        .bind(cols.attempts)
        .bind(cols.attempt_log)
        .bind(cols.error_kind)
        .bind(cols.error_code)
        .bind(cols.error_message)
        .bind(cols.retry_at)
        .bind(cols.content)
        .bind(cols.metadata)
        .fetch_all(pool)
        .await?;
    let key =
        |tenant: &Option<String>, job: &str| (tenant.clone().unwrap_or_default(), job.to_owned());
    let mut by_id: std::collections::HashMap<(String, String), LogRow> = rows
        .into_iter()
        .map(|r| (key(&r.tenant_id, &r.job_id), r))
        .collect();
    Ok(recs
        .iter()
        .map(|r| by_id.remove(&key(&r.tenant_id, &r.job_id)))
        .collect())
}

/// `Record`s turned inside out for UNNEST.
#[derive(Default)]
struct RecordColumns {
    job_id: Vec<String>,
    tenant_id: Vec<Option<String>>,
    channel: Vec<Option<&'static str>>,
    status: Vec<&'static str>,
    provider: Vec<Option<&'static str>>,
    provider_message_id: Vec<Option<String>>,
    chain_step: Vec<Option<i16>>,
    fallback_used: Vec<bool>,
    attempts: Vec<i32>,
    attempt_log: Vec<String>,
    error_kind: Vec<Option<&'static str>>,
    error_code: Vec<Option<String>>,
    error_message: Vec<Option<String>>,
    retry_at: Vec<Option<OffsetDateTime>>,
    content: Vec<Option<String>>,
    metadata: Vec<Option<String>>,
}

impl RecordColumns {
    fn push(&mut self, r: &Record) {
        self.job_id.push(r.job_id.clone());
        self.tenant_id.push(r.tenant_id.clone());
        self.channel.push(r.channel.map(Channel::as_str));
        self.status.push(r.status.as_str());
        self.provider.push(r.provider.map(ProviderKind::as_str));
        self.provider_message_id.push(r.provider_message_id.clone());
        self.chain_step.push(r.chain_step.map(|s| s as i16));
        self.fallback_used.push(r.fallback_used);
        self.attempts.push(r.attempts as i32);
        self.attempt_log
            .push(serde_json::to_string(&r.new_attempts).unwrap_or_else(|_| "[]".into()));
        self.error_kind
            .push(r.error.as_ref().map(|e| e.kind.as_str()));
        self.error_code
            .push(r.error.as_ref().and_then(|e| e.code.clone()));
        self.error_message
            .push(r.error.as_ref().map(|e| e.message.clone()));
        self.retry_at.push(r.retry_at);
        self.content.push(r.content.as_ref().map(|c| c.to_string()));
        self.metadata.push(
            r.metadata
                .as_ref()
                .map(|m| serde_json::Value::Object(m.clone()).to_string()),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stripped_record_keeps_the_outcome_and_short_codes_and_drops_what_may_be_refused() {
        let rec = Record {
            job_id: "j-1".into(),
            tenant_id: Some("clinic-1".into()),
            channel: Some(Channel::Sms),
            status: DeliveryStatus::Failed,
            provider: Some(ProviderKind::Twilio),
            provider_message_id: Some("SM".repeat(5000)),
            chain_step: Some(1),
            fallback_used: true,
            attempts: 2,
            new_attempts: vec![Attempt {
                provider: ProviderKind::Twilio,
                step: 1,
                kind: Some(ErrorKind::Recipient),
                code: Some("9".repeat(5000)),
                at: OffsetDateTime::now_utc(),
                skipped: None,
            }],
            error: Some(ProviderError::new(
                ErrorKind::Recipient,
                Some("21211".into()),
                "the provider's words",
            )),
            retry_at: None,
            content: Some(serde_json::json!({"text": "hi"})),
            metadata: Some(serde_json::Map::new()),
        };
        let s = rec.stripped("index row size exceeds maximum");
        assert_eq!(
            (
                s.status,
                s.provider,
                s.chain_step,
                s.attempts,
                s.fallback_used
            ),
            (
                DeliveryStatus::Failed,
                Some(ProviderKind::Twilio),
                Some(1),
                2,
                true
            )
        );
        assert_eq!(s.provider_message_id, None, "too long to keep");
        assert_eq!(s.new_attempts[0].code, None, "too long to keep");
        assert_eq!(s.new_attempts[0].kind, Some(ErrorKind::Recipient));
        let e = s.error.unwrap();
        assert_eq!(
            (e.kind, e.code.as_deref()),
            (ErrorKind::Recipient, Some("21211")),
            "a short code is kept"
        );
        assert!(!e.message.contains("provider's words"));
        assert!(s.content.is_none() && s.metadata.is_none());
    }
}
