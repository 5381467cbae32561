//! RabbitMQ: connections, the topology (declared idempotently at start) and
//! confirmed publishing.
//!
//! ```text
//!  upstream ──► {p}.jobs (direct, key "job") ──► {p}.work ──► workers
//!                  ▲                                │ (delivery limit hit)
//!                  │ dead-letter after TTL          ▼
//!  {p}.retry (direct, key = tier secs) ──► {p}.retry.{n}s      {p}.dlx (fanout) ──► {p}.dlq
//!  workers ──► {p}.events (topic, key "<status>.<channel>")
//! ```

use crate::settings::{AmqpSettings, QueueType};
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind,
};
use std::time::Duration;

/// Routing key of the work queue's binding.
pub const JOB_ROUTING_KEY: &str = "job";

/// Header names the service sets.
pub mod headers {
    /// Delivery rounds made so far (on retried jobs).
    pub const ATTEMPT: &str = "x-outreach-attempt";
    /// Unix seconds when the job was first consumed (for max age).
    pub const FIRST_SEEN: &str = "x-outreach-first-seen";
    /// Dead-letter reason code (`invalid_utf8`, `recipient`, `max_attempts`…).
    pub const REASON: &str = "x-outreach-reason";
    /// Dead-letter explanation for people.
    pub const ERROR: &str = "x-outreach-error";
    pub const JOB_ID: &str = "x-outreach-job-id";
    pub const TENANT_ID: &str = "x-outreach-tenant-id";
    /// RFC 3339 time of dead-lettering.
    pub const FAILED_AT: &str = "x-outreach-failed-at";
}

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("cannot reach RabbitMQ (check amqp.url / OUTREACH__AMQP__URL): {0}")]
    Connect(lapin::Error),
    #[error("RabbitMQ error: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("the broker cancelled our consumer (queue deleted or connection lost)")]
    ConsumerEnded,
    #[error("RabbitMQ refused the message (nack) on {0}")]
    Nacked(String),
}

/// The names of everything this deployment declares.
#[derive(Debug, Clone)]
pub struct Topology {
    pub jobs_exchange: String,
    pub work_queue: String,
    pub retry_exchange: String,
    pub dead_letter_exchange: String,
    pub dead_letter_queue: String,
    pub events_exchange: String,
    /// Retry delay tiers in seconds, ascending.
    pub retry_tiers: Vec<u64>,
    prefix: String,
    queue_type: QueueType,
    delivery_limit: u32,
}

impl Topology {
    pub fn new(s: &AmqpSettings, retry_delays_secs: &[u64]) -> Self {
        let p = &s.prefix;
        let mut tiers = retry_delays_secs.to_vec();
        tiers.sort_unstable();
        tiers.dedup();
        Self {
            jobs_exchange: format!("{p}.jobs"),
            work_queue: format!("{p}.work"),
            retry_exchange: format!("{p}.retry"),
            dead_letter_exchange: format!("{p}.dlx"),
            dead_letter_queue: format!("{p}.dlq"),
            events_exchange: format!("{p}.events"),
            retry_tiers: tiers,
            prefix: p.clone(),
            queue_type: s.queue_type,
            delivery_limit: s.delivery_limit,
        }
    }

    /// The prefix every name starts with.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn retry_queue(&self, tier_secs: u64) -> String {
        format!("{}.{tier_secs}s", self.retry_exchange)
    }

    /// The delay tier for a retry: the n-th tier for the n-th retry (the last
    /// repeats), raised to the first tier that covers the provider's hint.
    pub fn tier_for(&self, retry_number: u32, at_least: Option<Duration>) -> u64 {
        let idx = (retry_number.saturating_sub(1) as usize).min(self.retry_tiers.len() - 1);
        let mut tier = self.retry_tiers[idx];
        if let Some(hint) = at_least {
            let need = hint.as_secs_f64().ceil() as u64;
            if need > tier {
                tier = self
                    .retry_tiers
                    .iter()
                    .copied()
                    .find(|t| *t >= need)
                    .unwrap_or(*self.retry_tiers.last().unwrap());
            }
        }
        tier
    }

    /// Declare exchanges, queues and bindings. Idempotent: safe on every start
    /// and from every worker (arguments must match what exists).
    pub async fn declare(&self, ch: &Channel) -> Result<(), BrokerError> {
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        };
        let q_durable = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        ch.exchange_declare(
            self.jobs_exchange.as_str().into(),
            ExchangeKind::Direct,
            durable,
            FieldTable::default(),
        )
        .await?;
        ch.exchange_declare(
            self.retry_exchange.as_str().into(),
            ExchangeKind::Direct,
            durable,
            FieldTable::default(),
        )
        .await?;
        ch.exchange_declare(
            self.dead_letter_exchange.as_str().into(),
            ExchangeKind::Fanout,
            durable,
            FieldTable::default(),
        )
        .await?;
        ch.exchange_declare(
            self.events_exchange.as_str().into(),
            ExchangeKind::Topic,
            durable,
            FieldTable::default(),
        )
        .await?;

        let work = self.consumed_queue_args();
        ch.queue_declare(self.work_queue.as_str().into(), q_durable, work)
            .await?;
        ch.queue_bind(
            self.work_queue.as_str().into(),
            self.jobs_exchange.as_str().into(),
            JOB_ROUTING_KEY.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;

        ch.queue_declare(
            self.dead_letter_queue.as_str().into(),
            q_durable,
            self.queue_type_args(),
        )
        .await?;
        ch.queue_bind(
            self.dead_letter_queue.as_str().into(),
            self.dead_letter_exchange.as_str().into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;

        for tier in &self.retry_tiers {
            let mut args = FieldTable::default();
            // One queue per delay: every message in it has the same TTL, so
            // the head always expires first and a short delay never waits
            // behind a long one.
            args.insert(
                "x-message-ttl".into(),
                AMQPValue::LongLongInt((*tier * 1000) as i64),
            );
            // Expired messages go back to the work queue.
            args.insert("x-dead-letter-exchange".into(), long(&self.jobs_exchange));
            args.insert("x-dead-letter-routing-key".into(), long(JOB_ROUTING_KEY));
            let q = self.retry_queue(*tier);
            ch.queue_declare(q.as_str().into(), q_durable, args).await?;
            ch.queue_bind(
                q.as_str().into(),
                self.retry_exchange.as_str().into(),
                tier.to_string().as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        }
        Ok(())
    }

    /// Arguments of the queues workers consume (the work queue, held queues).
    pub(crate) fn consumed_queue_args(&self) -> FieldTable {
        let mut args = self.queue_type_args();
        // Messages the broker gives up on (delivery limit) keep their x-death
        // history and land in the dead-letter queue instead of vanishing.
        args.insert(
            "x-dead-letter-exchange".into(),
            long(&self.dead_letter_exchange),
        );
        if self.queue_type == QueueType::Quorum && self.delivery_limit > 0 {
            // A job that crashes workers again and again (poison) is
            // dead-lettered after this many redeliveries.
            args.insert(
                "x-delivery-limit".into(),
                AMQPValue::LongInt(self.delivery_limit as i32),
            );
            // Dead-letter safely: the message leaves the queue only once the
            // dead-letter queue has confirmed it.
            args.insert("x-dead-letter-strategy".into(), long("at-least-once"));
            args.insert("x-overflow".into(), long("reject-publish"));
        }
        args
    }

    fn queue_type_args(&self) -> FieldTable {
        let mut args = FieldTable::default();
        let kind = match self.queue_type {
            // Replicated, and redeliveries are counted (poison detection).
            QueueType::Quorum => "quorum",
            QueueType::Classic => "classic",
        };
        args.insert("x-queue-type".into(), long(kind));
        args
    }
}

fn long(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()))
}

/// Open a connection named after its role (shown in the management UI).
pub async fn connect(url: &str, role: &str) -> Result<Connection, BrokerError> {
    let props = ConnectionProperties::default()
        .with_connection_name(format!("outreach {role} pid {}", std::process::id()).into());
    Connection::connect(url, props)
        .await
        .map_err(BrokerError::Connect)
}

/// A channel in confirm mode: every publish is awaited until the broker has it.
pub async fn confirm_channel(conn: &Connection) -> Result<Channel, BrokerError> {
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    Ok(ch)
}

/// Persistent JSON message properties.
pub fn persistent_json() -> BasicProperties {
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into())
}

/// Publish and wait for the broker's confirm.
pub async fn publish_confirmed(
    ch: &Channel,
    exchange: &str,
    routing_key: &str,
    payload: &[u8],
    props: BasicProperties,
) -> Result<(), BrokerError> {
    let confirm = ch
        .basic_publish(
            exchange.into(),
            routing_key.into(),
            BasicPublishOptions::default(),
            payload,
            props,
        )
        .await?
        .await?;
    match confirm {
        Confirmation::Nack(_) => Err(BrokerError::Nacked(exchange.to_owned())),
        Confirmation::Ack(_) | Confirmation::NotRequested => Ok(()),
    }
}

/// Messages ready in `queue`, or `None` if it does not exist. A passive
/// declare (it creates nothing) on a channel of its own, since a failed one
/// closes its channel.
pub async fn queue_depth(conn: &Connection, queue: &str) -> Result<Option<u32>, BrokerError> {
    let ch = conn.create_channel().await?;
    let declared = ch
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await;
    match declared {
        Ok(q) => {
            let _ = ch.close(200, "done".into()).await;
            Ok(Some(q.message_count()))
        }
        Err(e) if matches!(e.kind(), lapin::ErrorKind::ProtocolError(p) if p.get_id() == 404) => {
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

/// Header lookup helpers.
pub fn header_str(props: &BasicProperties, name: &str) -> Option<String> {
    match props
        .headers()
        .as_ref()?
        .inner()
        .get(&ShortString::from(name))?
    {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

pub fn header_u64(props: &BasicProperties, name: &str) -> Option<u64> {
    match props
        .headers()
        .as_ref()?
        .inner()
        .get(&ShortString::from(name))?
    {
        AMQPValue::LongLongInt(n) => u64::try_from(*n).ok(),
        AMQPValue::LongInt(n) => u64::try_from(*n).ok(),
        AMQPValue::LongUInt(n) => Some(u64::from(*n)),
        AMQPValue::ShortInt(n) => u64::try_from(*n).ok(),
        AMQPValue::Timestamp(n) => Some(*n),
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).parse().ok(),
        _ => None,
    }
}

pub fn string_header(s: &str) -> AMQPValue {
    long(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topo(tiers: &[u64]) -> Topology {
        let s = crate::settings::Settings::load(None).unwrap();
        Topology::new(&s.amqp, tiers)
    }

    #[test]
    fn each_retry_waits_the_next_tier_and_the_last_tier_repeats() {
        let t = topo(&[5, 30, 120]);
        assert_eq!(
            [1, 2, 3, 4, 9].map(|n| t.tier_for(n, None)),
            [5, 30, 120, 120, 120]
        );
    }

    #[test]
    fn retry_after_raises_the_tier_to_the_first_that_covers_it() {
        let t = topo(&[5, 30, 120]);
        assert_eq!(t.tier_for(1, Some(Duration::from_secs(2))), 5);
        assert_eq!(t.tier_for(1, Some(Duration::from_secs(6))), 30);
        assert_eq!(t.tier_for(1, Some(Duration::from_secs(9999))), 120);
    }
}
