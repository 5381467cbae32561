//! One dead-lettered message, read back for people.
//!
//! The worker dead-letters with `x-outreach-*` headers (see `broker::headers`).
//! A message the broker dead-lettered itself (the work queue's delivery limit
//! for a job that keeps crashing workers) has none of them, only RabbitMQ's
//! `x-death` history; its job and tenant then come from the payload.

use crate::broker::{self, headers};
use crate::job::{Job, Salvaged};
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable};
use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Who put the message in the dead-letter queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeadLetteredBy {
    /// The worker: failed, expired or invalid (`x-outreach-reason` is set).
    Worker,
    /// RabbitMQ (`x-death`), e.g. the work queue's delivery limit.
    Broker,
    /// Neither header: published to the dead-letter exchange by hand.
    Unknown,
}

/// What the commands show of a dead-lettered message. Unknown fields are `None`.
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetter {
    pub job_id: Option<String>,
    pub tenant_id: Option<String>,
    /// Stable code: `invalid_recipient`, `max_attempts`, `expired`, `recipient`…
    /// or the broker's (`delivery_limit`).
    pub reason: Option<String>,
    /// The explanation.
    pub error: Option<String>,
    /// Delivery rounds through the provider chain before it was dead-lettered
    /// (unknown for most of the broker's own dead letters).
    pub attempts: Option<u64>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub failed_at: Option<OffsetDateTime>,
    pub dead_lettered_by: DeadLetteredBy,
    /// Whether the payload decodes as a valid job (`dlq replay` skips the
    /// others unless their reason is asked for).
    pub valid_job: bool,
    /// The outcome the job reached but could not record (`unrecordable`
    /// letters): `sent` means a provider accepted it.
    pub outcome: Option<String>,
}

impl DeadLetter {
    /// Read the headers, falling back to `x-death` and the payload.
    pub fn read(props: &BasicProperties, payload: &[u8]) -> Self {
        let header = |name| broker::header_str(props, name).filter(|s| !s.is_empty());
        let death = props.headers().as_ref().and_then(last_death);
        let (job, salvaged) = match Job::decode(payload) {
            Ok(job) => (Some(job), Salvaged::default()),
            Err(_) => (None, Salvaged::from_payload(payload)),
        };
        let reason = header(headers::REASON);
        let dead_lettered_by = match (&reason, &death) {
            (Some(_), _) => DeadLetteredBy::Worker,
            (None, Some(_)) => DeadLetteredBy::Broker,
            (None, None) => DeadLetteredBy::Unknown,
        };
        let job_id = header(headers::JOB_ID)
            .or_else(|| job.as_ref().map(|j| j.id.to_string()))
            .or_else(|| salvaged.job_id.as_ref().map(|j| j.to_string()))
            .or_else(|| props.message_id().as_ref().map(|m| m.to_string()));
        let tenant_id = header(headers::TENANT_ID)
            .or_else(|| job.as_ref().map(|j| j.tenant_id.to_string()))
            .or_else(|| salvaged.tenant_id.as_ref().map(|t| t.to_string()));
        let failed_at = header(headers::FAILED_AT)
            .and_then(|t| OffsetDateTime::parse(&t, &Rfc3339).ok())
            .or_else(|| death.as_ref().and_then(|d| d.time));
        let error = header(headers::ERROR).or_else(|| {
            death.as_ref().map(|d| {
                format!(
                    "dead-lettered by RabbitMQ from {} ({})",
                    d.queue.as_deref().unwrap_or("?"),
                    d.reason.as_deref().unwrap_or("?")
                )
            })
        });
        Self {
            job_id,
            tenant_id,
            reason: reason.or_else(|| death.and_then(|d| d.reason)),
            error,
            // Not `x-delivery-count`: in the dead-letter queue it counts how
            // often the letter itself was fetched and handed back (listings).
            attempts: broker::header_u64(props, headers::ATTEMPT),
            failed_at,
            dead_lettered_by,
            valid_job: job.is_some(),
            outcome: header(headers::STATUS),
        }
    }
}

/// The newest entry of RabbitMQ's `x-death` list.
struct Death {
    reason: Option<String>,
    queue: Option<String>,
    time: Option<OffsetDateTime>,
}

fn last_death(h: &FieldTable) -> Option<Death> {
    let AMQPValue::FieldArray(deaths) = h.inner().get("x-death")? else {
        return None;
    };
    // RabbitMQ keeps the most recent death first.
    let AMQPValue::FieldTable(d) = deaths.as_slice().first()? else {
        return None;
    };
    let text = |k: &str| match d.inner().get(k)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    };
    let time = match d.inner().get("time") {
        Some(AMQPValue::Timestamp(t)) => OffsetDateTime::from_unix_timestamp(*t as i64).ok(),
        _ => None,
    };
    Some(Death {
        reason: text("reason"),
        queue: text("queue"),
        time,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::{FieldArray, LongString};

    fn s(v: &str) -> AMQPValue {
        AMQPValue::LongString(LongString::from(v.as_bytes().to_vec()))
    }

    fn props(pairs: Vec<(&str, AMQPValue)>) -> BasicProperties {
        let mut h = FieldTable::default();
        for (k, v) in pairs {
            h.insert(k.into(), v);
        }
        BasicProperties::default().with_headers(h)
    }

    const JOB: &[u8] = br#"{"job_id":"j-1","tenant_id":"clinic-1","channel":"sms","recipient":"+14155550100","content":{"text":"hi"}}"#;

    #[test]
    fn a_worker_dead_letter_is_read_from_its_headers() {
        let p = props(vec![
            (headers::REASON, s("max_attempts")),
            (
                headers::ERROR,
                s("config (channel_disabled): sms is disabled"),
            ),
            (headers::JOB_ID, s("j-1")),
            (headers::TENANT_ID, s("clinic-1")),
            (headers::ATTEMPT, AMQPValue::LongLongInt(6)),
            (headers::FAILED_AT, s("2026-03-01T09:00:00Z")),
        ]);
        let l = DeadLetter::read(&p, JOB);
        assert_eq!(l.job_id.as_deref(), Some("j-1"));
        assert_eq!(l.tenant_id.as_deref(), Some("clinic-1"));
        assert_eq!(l.reason.as_deref(), Some("max_attempts"));
        assert_eq!(l.attempts, Some(6));
        assert_eq!(l.failed_at.unwrap().unix_timestamp(), 1_772_355_600);
        assert_eq!(l.dead_lettered_by, DeadLetteredBy::Worker);
        assert!(l.valid_job);
    }

    #[test]
    fn a_broker_dead_letter_is_read_from_x_death_and_the_payload() {
        let mut death = FieldTable::default();
        death.insert("reason".into(), s("delivery_limit"));
        death.insert("queue".into(), s("outreach.work"));
        death.insert("time".into(), AMQPValue::Timestamp(1_772_355_600));
        let p = props(vec![
            (
                "x-death",
                AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::FieldTable(death)])),
            ),
            ("x-delivery-count", AMQPValue::LongInt(20)),
        ]);
        let l = DeadLetter::read(&p, JOB);
        assert_eq!(l.job_id.as_deref(), Some("j-1"));
        assert_eq!(l.tenant_id.as_deref(), Some("clinic-1"));
        assert_eq!(l.reason.as_deref(), Some("delivery_limit"));
        assert!(l.error.unwrap().contains("outreach.work"));
        assert_eq!(
            l.attempts, None,
            "x-delivery-count counts listings, not attempts"
        );
        assert_eq!(l.failed_at.unwrap().unix_timestamp(), 1_772_355_600);
        assert_eq!(l.dead_lettered_by, DeadLetteredBy::Broker);
    }

    #[test]
    fn an_invalid_payload_keeps_what_can_be_salvaged() {
        let p = props(vec![(headers::REASON, s("unknown_channel"))]);
        let l = DeadLetter::read(&p, br#"{"job_id":"j-2","tenant_id":"t","channel":"fax"}"#);
        assert_eq!(l.job_id.as_deref(), Some("j-2"));
        assert_eq!(l.tenant_id.as_deref(), Some("t"));
        assert!(!l.valid_job);
        let garbage = DeadLetter::read(&BasicProperties::default(), b"\xff");
        assert_eq!(garbage.job_id, None);
        assert_eq!(garbage.dead_lettered_by, DeadLetteredBy::Unknown);
    }
}
