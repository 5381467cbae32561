//! Where a delivery goes when its round ends without a send: to the
//! dead-letter exchange with why (the `x-outreach-*` headers `dlq` reads
//! back), or back through a delay tier with its round count. The pipeline
//! decides which; this module knows the headers.

use super::{BrokerError, Topology, header_u64, headers, publish_confirmed, string_header};
use lapin::message::Delivery;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Why a job was dead-lettered.
#[derive(Debug, Clone, Copy)]
pub struct Letter<'a> {
    /// Stable code (`recipient`, `max_attempts`, `invalid_utf8`…).
    pub reason: &'a str,
    /// The explanation, for people.
    pub error: &'a str,
    pub job_id: Option<&'a str>,
    pub tenant_id: Option<&'a str>,
    /// Delivery rounds made.
    pub attempts: u64,
    /// The outcome the job reached but could not record (`unrecordable`
    /// letters only).
    pub status: Option<&'a str>,
}

impl Letter<'_> {
    /// The delivery's own headers (`props`) with this letter's, stamped
    /// with the time of dead-lettering.
    pub fn headers(&self, props: &BasicProperties) -> FieldTable {
        let mut h = props.headers().clone().unwrap_or_default();
        let s = string_header;
        h.insert(headers::REASON.into(), s(self.reason));
        h.insert(headers::ERROR.into(), s(self.error));
        if let Some(j) = self.job_id {
            h.insert(headers::JOB_ID.into(), s(j));
        }
        if let Some(t) = self.tenant_id {
            h.insert(headers::TENANT_ID.into(), s(t));
        }
        h.insert(
            headers::ATTEMPT.into(),
            AMQPValue::LongLongInt(self.attempts as i64),
        );
        let now = OffsetDateTime::now_utc()
            .format(&Rfc3339)
            .unwrap_or_default();
        h.insert(headers::FAILED_AT.into(), s(&now));
        if let Some(status) = self.status {
            h.insert(headers::STATUS.into(), s(status));
        }
        h
    }
}

impl Topology {
    /// Publish `delivery` to the dead-letter exchange, persistent, with
    /// `letter`'s headers; confirmed.
    pub async fn dead_letter(
        &self,
        ch: &Channel,
        delivery: &Delivery,
        letter: &Letter<'_>,
    ) -> Result<(), BrokerError> {
        let props = &delivery.properties;
        let props = props
            .clone()
            .with_delivery_mode(2)
            .with_headers(letter.headers(props));
        publish_confirmed(ch, &self.dead_letter_exchange, "", &delivery.data, props).await
    }

    /// Send `delivery` back through delay tier `tier_secs` as round
    /// `attempt`, with `routing_key` for its return; first seen `now_secs`
    /// unless it says when already (max age counts from there).
    pub async fn send_back(
        &self,
        ch: &Channel,
        tier_secs: u64,
        routing_key: &str,
        delivery: &Delivery,
        attempt: u32,
        now_secs: u64,
    ) -> Result<(), BrokerError> {
        let props = &delivery.properties;
        let mut h = props.headers().clone().unwrap_or_default();
        h.insert(
            headers::ATTEMPT.into(),
            AMQPValue::LongLongInt(attempt as i64),
        );
        if header_u64(props, headers::FIRST_SEEN).is_none() {
            h.insert(
                headers::FIRST_SEEN.into(),
                AMQPValue::LongLongInt(now_secs as i64),
            );
        }
        let props = props.clone().with_delivery_mode(2).with_headers(h);
        self.publish_delayed(ch, tier_secs, routing_key, &delivery.data, props)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::header_str;

    #[test]
    fn a_letter_keeps_the_delivery_headers_and_adds_why() {
        let mut original = FieldTable::default();
        original.insert(headers::PUBLISHED_MS.into(), AMQPValue::LongLongInt(7));
        let props = BasicProperties::default().with_headers(original);
        let letter = Letter {
            reason: "recipient",
            error: "recipient (21211): bad number",
            job_id: Some("j-1"),
            tenant_id: None,
            attempts: 2,
            status: None,
        };
        let out = BasicProperties::default().with_headers(letter.headers(&props));
        assert_eq!(header_u64(&out, headers::PUBLISHED_MS), Some(7));
        assert_eq!(
            header_str(&out, headers::REASON).as_deref(),
            Some("recipient")
        );
        assert_eq!(header_str(&out, headers::JOB_ID).as_deref(), Some("j-1"));
        assert_eq!(header_str(&out, headers::TENANT_ID), None);
        assert_eq!(header_u64(&out, headers::ATTEMPT), Some(2));
        assert!(header_str(&out, headers::FAILED_AT).is_some());
        assert_eq!(header_str(&out, headers::STATUS), None);
        let unrecordable = Letter {
            status: Some("sent"),
            ..letter
        };
        let out = BasicProperties::default().with_headers(unrecordable.headers(&props));
        assert_eq!(header_str(&out, headers::STATUS).as_deref(), Some("sent"));
    }
}
