//! Delivery events, published to the `{prefix}.events` topic exchange with
//! routing key `<status>.<channel>` (`sent.email`, `failed.sms`,
//! `retrying.whatsapp`, `failed.unknown` for unreadable jobs).
//!
//! Events are built from the log row, so a re-published event (redelivered
//! job already done) is identical in content to the first one but for
//! `event_id` and `replayed`.

use crate::broker::{self, BrokerError};
use crate::delivery_log::{Attempt, DeliveryStatus, LogRow};
use crate::job::Salvaged;
use crate::provider::{ErrorKind, ProviderError};
use lapin::Channel;
use lapin::types::FieldTable;
use serde::Serialize;
use time::OffsetDateTime;

/// Version of the event format below.
pub const EVENT_VERSION: u32 = 1;

#[derive(Debug, Serialize)]
pub struct DeliveryEvent<'a> {
    pub version: u32,
    pub event_id: uuid::Uuid,
    /// `None` only for a payload whose job id could not be read.
    pub job_id: Option<&'a str>,
    pub tenant_id: Option<&'a str>,
    pub channel: Option<crate::job::Channel>,
    pub status: DeliveryStatus,
    pub provider: Option<&'a str>,
    pub provider_message_id: Option<&'a str>,
    /// Position in the chain of the provider that sent (0 = primary).
    pub chain_step: Option<i16>,
    pub fallback_used: bool,
    pub attempts: i32,
    pub attempt_log: &'a [Attempt],
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<EventError<'a>>,
    #[serde(
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub retry_at: Option<OffsetDateTime>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<&'a serde_json::Map<String, serde_json::Value>>,
    /// True when this event repeats one already published (a redelivered job).
    pub replayed: bool,
    #[serde(with = "time::serde::rfc3339")]
    pub occurred_at: OffsetDateTime,
}

#[derive(Debug, Serialize)]
pub struct EventError<'a> {
    pub kind: ErrorKind,
    pub code: Option<&'a str>,
    pub message: Option<&'a str>,
}

impl<'a> DeliveryEvent<'a> {
    pub fn from_row(row: &'a LogRow, replayed: bool) -> Self {
        Self {
            version: EVENT_VERSION,
            event_id: uuid::Uuid::now_v7(),
            job_id: Some(&row.job_id),
            tenant_id: row.tenant_id.as_deref(),
            channel: row.channel,
            status: row.status,
            provider: row.provider.as_deref(),
            provider_message_id: row.provider_message_id.as_deref(),
            chain_step: row.chain_step,
            fallback_used: row.fallback_used,
            attempts: row.attempts,
            attempt_log: &row.attempt_log.0,
            error: row.error_kind.map(|kind| EventError {
                kind,
                code: row.error_code.as_deref(),
                message: row.error_message.as_deref(),
            }),
            retry_at: row.retry_at,
            metadata: row.metadata.as_ref().map(|m| &m.0),
            replayed,
            occurred_at: row.sent_at.unwrap_or(row.updated_at),
        }
    }

    /// The event for a payload that failed validation and has no log row
    /// (its job id could not be read, or that id already has a final row).
    pub fn invalid(salvaged: &'a Salvaged, error: &'a ProviderError) -> Self {
        Self {
            version: EVENT_VERSION,
            event_id: uuid::Uuid::now_v7(),
            job_id: salvaged.job_id.as_ref().map(|j| j.as_str()),
            tenant_id: salvaged.tenant_id.as_ref().map(|t| t.as_str()),
            channel: salvaged.channel,
            status: DeliveryStatus::Failed,
            provider: None,
            provider_message_id: None,
            chain_step: None,
            fallback_used: false,
            attempts: 0,
            attempt_log: &[],
            error: Some(EventError {
                kind: error.kind,
                code: error.code.as_deref(),
                message: Some(&error.message),
            }),
            retry_at: None,
            metadata: salvaged.metadata.as_ref(),
            replayed: false,
            occurred_at: OffsetDateTime::now_utc(),
        }
    }

    pub fn routing_key(&self) -> String {
        format!(
            "{}.{}",
            self.status.as_str(),
            self.channel.map(|c| c.as_str()).unwrap_or("unknown")
        )
    }
}

/// Publishes events on a confirm-mode channel.
#[derive(Clone)]
pub struct EventPublisher {
    channel: Channel,
    exchange: String,
}

impl EventPublisher {
    pub fn new(channel: Channel, exchange: String) -> Self {
        Self { channel, exchange }
    }

    /// Publish the event for a log row and wait for the broker's confirm.
    pub async fn publish_row(&self, row: &LogRow, replayed: bool) -> Result<(), BrokerError> {
        self.publish(&DeliveryEvent::from_row(row, replayed)).await
    }

    /// Publish an event and wait for the broker's confirm.
    pub async fn publish(&self, event: &DeliveryEvent<'_>) -> Result<(), BrokerError> {
        let body = serde_json::to_vec(event).expect("events serialize");
        let mut headers = FieldTable::default();
        if let Some(id) = event.job_id {
            headers.insert("x-outreach-job-id".into(), broker::string_header(id));
        }
        let props = broker::persistent_json()
            .with_message_id(event.event_id.to_string().into())
            .with_type(format!("delivery.{}", event.status.as_str()).into())
            .with_headers(headers);
        let started = std::time::Instant::now();
        broker::publish_confirmed(
            &self.channel,
            &self.exchange,
            &event.routing_key(),
            &body,
            props,
        )
        .await?;
        metrics::histogram!(crate::metrics::EVENT_CONFIRM_DURATION)
            .record(started.elapsed().as_secs_f64());
        metrics::counter!(crate::metrics::EVENTS_PUBLISHED, "status" => event.status.as_str())
            .increment(1);
        Ok(())
    }
}
