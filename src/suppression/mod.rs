//! Per-tenant, per-channel suppression lists: recipients a tenant must not
//! message (hard bounces, spam complaints, unsubscribes, SMS / WhatsApp
//! opt-outs, and entries people add). The worker checks the list before any
//! provider call; a listed recipient's job ends `suppressed`.
//!
//! Recipients are compared in a normalised form ([`normalise`]):
//! - email: trimmed and lowercased *entirely*. Domains are case-insensitive
//!   by definition; local parts may in theory be case-sensitive (RFC 5321),
//!   but no mailbox provider in use treats them so, and for an opt-out list
//!   a wider match (a message withheld) is the safe side of a narrower one
//!   (a message the patient asked not to get).
//! - sms / whatsapp: E.164 (`+` and 8-15 digits). A `whatsapp:` prefix,
//!   spaces, dashes, dots and brackets are dropped, `00` becomes `+`, and a
//!   bare run of digits (Meta's wa_id) gets its `+`.
//!
//! Over HTTP: `/admin/v1/tenants/{tenant}/suppressions`
//! (`src/admin_api/suppressions.rs`); on the command line: `outreach
//! suppression list / add / remove` (`src/cli/suppression.rs`).

use crate::batch::{BatchError, Batcher};
use crate::job::{Channel, TenantId, is_e164};
use serde::{Deserialize, Serialize};
use sqlx::{PgExecutor, PgPool};
use time::OffsetDateTime;

/// Why a recipient is suppressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// The address does not exist (permanent bounce).
    HardBounce,
    /// The recipient marked a message as spam.
    Complaint,
    /// The recipient followed an unsubscribe link.
    Unsubscribe,
    /// STOP (or a variant) sent back, or Twilio error 21610.
    OptOut,
    /// Added by a person (CLI or admin API).
    Manual,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::HardBounce => "hard_bounce",
            Reason::Complaint => "complaint",
            Reason::Unsubscribe => "unsubscribe",
            Reason::OptOut => "opt_out",
            Reason::Manual => "manual",
        }
    }
}

impl std::str::FromStr for Reason {
    type Err = SuppressionError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        serde_json::from_value(serde_json::Value::String(s.to_owned()))
            .map_err(|_| SuppressionError::UnknownReason)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SuppressionError {
    /// Names the channel, never the value.
    #[error("not a valid {0} recipient")]
    InvalidRecipient(Channel),
    #[error("unknown reason, expected one of hard_bounce, complaint, unsubscribe, opt_out, manual")]
    UnknownReason,
    #[error("suppression list query failed: {0}")]
    Db(#[from] sqlx::Error),
}

/// The form a recipient is stored and compared in (module docs).
pub fn normalise(channel: Channel, raw: &str) -> Result<String, SuppressionError> {
    let bad = || SuppressionError::InvalidRecipient(channel);
    match channel {
        Channel::Email => {
            let e = raw.trim().to_lowercase();
            let (local, domain) = e.rsplit_once('@').ok_or_else(bad)?;
            if local.is_empty() || domain.is_empty() || e.contains(char::is_whitespace) {
                return Err(bad());
            }
            Ok(e)
        }
        Channel::Sms | Channel::Whatsapp => {
            let t = raw.trim();
            let t = t.strip_prefix("whatsapp:").unwrap_or(t);
            let mut n: String = t
                .chars()
                .filter(|c| !matches!(c, ' ' | '-' | '.' | '(' | ')'))
                .collect();
            if let Some(rest) = n.strip_prefix("00") {
                n = format!("+{rest}");
            } else if !n.starts_with('+') {
                n.insert(0, '+');
            }
            if is_e164(&n) { Ok(n) } else { Err(bad()) }
        }
    }
}

/// One list entry.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Entry {
    pub channel: Channel,
    pub recipient: String,
    pub reason: String,
    pub source: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

/// The pipeline's checks, batched: every job asks before its provider call,
/// so the checks waiting at one time go to PostgreSQL as one statement (as
/// the log's claims and records do) instead of one query and one pooled
/// connection each.
#[derive(Clone)]
pub struct Checks {
    batcher: Batcher<Check, Option<String>>,
}

/// One job's question: is this (already normalised) recipient listed?
pub struct Check {
    pub tenant: String,
    pub channel: Channel,
    pub recipient: String,
}

impl Checks {
    pub fn new(pool: PgPool, batch_size: usize, concurrency: usize) -> Self {
        let batcher = Batcher::spawn(
            "suppression_checks",
            batch_size,
            concurrency,
            move |checks| {
                let pool = pool.clone();
                async move { Ok(listed(&pool, checks).await?) }
            },
        );
        Self { batcher }
    }

    /// The reason the recipient is listed, if it is.
    pub async fn reason(&self, check: Check) -> Result<Option<String>, BatchError> {
        self.batcher.call(check).await
    }
}

/// For each check, in order, the reason its recipient is listed.
async fn listed(pool: &PgPool, checks: Vec<Check>) -> Result<Vec<Option<String>>, sqlx::Error> {
    let mut tenants = Vec::with_capacity(checks.len());
    let mut channels = Vec::with_capacity(checks.len());
    let mut recipients = Vec::with_capacity(checks.len());
    for c in &checks {
        tenants.push(c.tenant.as_str());
        channels.push(c.channel.as_str());
        recipients.push(c.recipient.as_str());
    }
    let found: Vec<(i64, String)> = sqlx::query_as(
        "SELECT q.i, s.reason
           FROM UNNEST($1::text[], $2::text[], $3::text[]) WITH ORDINALITY AS q(tenant, channel, recipient, i)
           JOIN suppressions s
             ON s.tenant_id = q.tenant AND s.channel = q.channel::channel AND s.recipient = q.recipient",
    )
    .bind(&tenants)
    .bind(&channels)
    .bind(&recipients)
    .fetch_all(pool)
    .await?;
    let mut reasons = vec![None; checks.len()];
    for (i, reason) in found {
        // ORDINALITY counts from 1.
        if let Some(slot) = usize::try_from(i - 1).ok().and_then(|i| reasons.get_mut(i)) {
            *slot = Some(reason);
        }
    }
    Ok(reasons)
}

/// Add a recipient (normalised here); `false` when it was already listed
/// (the first reason and time are kept).
pub async fn add(
    db: impl PgExecutor<'_>,
    tenant: &str,
    channel: Channel,
    recipient: &str,
    reason: Reason,
    source: &str,
) -> Result<bool, SuppressionError> {
    let r = normalise(channel, recipient)?;
    let done = sqlx::query(
        "INSERT INTO suppressions (tenant_id, channel, recipient, reason, source) \
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
    )
    .bind(tenant)
    .bind(channel)
    .bind(&r)
    .bind(reason.as_str())
    .bind(source)
    .execute(db)
    .await?;
    let added = done.rows_affected() == 1;
    if added {
        metrics::counter!(crate::metrics::SUPPRESSIONS_ADDED, "channel" => channel.as_str(), "reason" => reason.as_str()).increment(1);
    }
    Ok(added)
}

/// Remove a recipient (normalised here); `false` when it was not listed.
pub async fn remove(
    db: impl PgExecutor<'_>,
    tenant: &str,
    channel: Channel,
    recipient: &str,
) -> Result<bool, SuppressionError> {
    let r = normalise(channel, recipient)?;
    let done = sqlx::query(
        "DELETE FROM suppressions WHERE tenant_id = $1 AND channel = $2 AND recipient = $3",
    )
    .bind(tenant)
    .bind(channel)
    .bind(&r)
    .execute(db)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// A tenant's entries, newest first (one channel, or all).
pub async fn list(
    pool: &PgPool,
    tenant: &str,
    channel: Option<Channel>,
) -> Result<Vec<Entry>, SuppressionError> {
    Ok(sqlx::query_as(
        "SELECT channel, recipient, reason, source, created_at FROM suppressions \
         WHERE tenant_id = $1 AND ($2::channel IS NULL OR channel = $2) \
         ORDER BY created_at DESC, recipient",
    )
    .bind(tenant)
    .bind(channel)
    .fetch_all(pool)
    .await?)
}

/// A change a person made (CLI or admin API): applied and audited in one
/// transaction (`config_audit`, action `suppression_add` / `suppression_remove`;
/// the recipient itself is not written there, only that one changed).
pub async fn change_audited(
    pool: &PgPool,
    actor: &str,
    tenant: &TenantId,
    channel: Channel,
    recipient: &str,
    add_reason: Option<Reason>,
) -> Result<bool, SuppressionError> {
    let mut tx = pool.begin().await?;
    let (changed, action) = match add_reason {
        Some(reason) => (
            add(&mut *tx, tenant.as_str(), channel, recipient, reason, actor).await?,
            "suppression_add",
        ),
        None => (
            remove(&mut *tx, tenant.as_str(), channel, recipient).await?,
            "suppression_remove",
        ),
    };
    if changed {
        sqlx::query(
            "INSERT INTO config_audit (actor, tenant_id, channel, action, changed_fields) \
             VALUES ($1, $2, $3, $4, ARRAY['recipient'])",
        )
        .bind(actor)
        .bind(tenant.as_str())
        .bind(channel)
        .bind(action)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn email_addresses_are_compared_lowercased() {
        assert_eq!(
            normalise(Channel::Email, " Patient@Example.COM ").unwrap(),
            "patient@example.com"
        );
        assert!(normalise(Channel::Email, "no-at-sign").is_err());
        assert!(normalise(Channel::Email, "@example.com").is_err());
    }

    #[test]
    fn numbers_are_compared_in_e164() {
        for raw in [
            "+44 7700 900123",
            "whatsapp:+447700900123",
            "447700900123",
            "0044 7700-900123",
            "+44 (7700) 900.123",
        ] {
            assert_eq!(
                normalise(Channel::Sms, raw).unwrap(),
                "+447700900123",
                "{raw}"
            );
        }
        assert!(normalise(Channel::Sms, "12").is_err());
        assert!(normalise(Channel::Whatsapp, "+44abc").is_err());
    }

    #[test]
    fn reasons_parse_from_their_names() {
        assert_eq!("opt_out".parse::<Reason>().unwrap(), Reason::OptOut);
        assert!("spam".parse::<Reason>().is_err());
    }
}
