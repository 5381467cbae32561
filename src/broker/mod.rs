//! RabbitMQ: connections, the topology (declared idempotently at start) and
//! confirmed publishing.
//!
//! ```text
//!  upstream ──► {p}.jobs (direct, routing key "<tenant>.<channel>")
//!                  │  ├──► {p}.held.<channel>.<tenant>  (bound while that tenant holds)
//!                  │  └─ no binding: alternate exchange
//!                  │        ▼
//!                  │  {p}.jobs.shared (x-consistent-hash on the routing key)
//!                  ▲      ├──► {p}.work.0 ──┐
//!                  │      ├──► …            ├──► workers (one consumer per queue)
//!                  │      └──► {p}.work.N-1 ┘        │ (delivery limit hit)
//!                  │ dead-letter after TTL, same key │
//!  {p}.delay (headers, outreach-delay = tier) ──► {p}.delay.{n}s
//!                                             {p}.dlx (fanout) ──► {p}.dlq
//!  workers ──► {p}.events (topic, key "<status>.<channel>")
//! ```
//!
//! Why several work queues: a queue is FIFO, so one tenant's burst of 100,000
//! jobs would sit in front of everyone else's. Hashing tenants over N queues,
//! each with its own consumer and an even share of the worker's slots, lets a
//! burst delay only the tenants that hash to its queue (about 1/N of them)
//! while the worker moves it out to the tenant's held queue. With
//! `amqp.work_queues = 1` the shared exchange is a fanout to `{p}.work` and no
//! broker plugin is needed.
//!
//! Why the jobs exchange is direct: once a tenant's jobs wait for its rate
//! limit in its held queue, a worker binds that queue to `{p}.jobs` with the
//! tenant's key, so the broker routes the rest of a burst straight there; it
//! never enters the shared work queues, and nobody has to move it out job by
//! job. Every other key falls through to the alternate exchange.

mod letter;
mod nodes;
mod settings;

use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ExchangeKind};
pub use letter::Letter;
pub use nodes::{Node, Nodes, NodesError};
pub use settings::{AmqpSettings, QueueType};

/// The consistent-hash exchange type (plugin `rabbitmq_consistent_hash_exchange`).
const CONSISTENT_HASH: &str = "x-consistent-hash";
/// Points on the hash ring per work queue (the binding key): many, so the
/// queues get even shares of the key space.
const RING_POINTS: &str = "100";

/// Header names the service sets.
pub mod headers {
    /// Delivery rounds made so far (on retried jobs).
    pub const ATTEMPT: &str = "x-outreach-attempt";
    /// Unix seconds when the job was first consumed (for max age).
    pub const FIRST_SEEN: &str = "x-outreach-first-seen";
    /// Unix milliseconds when the job was published (the AMQP `timestamp`
    /// property has whole seconds only): the start of enqueue-to-final.
    pub const PUBLISHED_MS: &str = "x-outreach-published-ms";
    /// Dead-letter reason code (`invalid_utf8`, `recipient`, `max_attempts`…).
    pub const REASON: &str = "x-outreach-reason";
    /// Dead-letter explanation for people.
    pub const ERROR: &str = "x-outreach-error";
    pub const JOB_ID: &str = "x-outreach-job-id";
    pub const TENANT_ID: &str = "x-outreach-tenant-id";
    /// RFC 3339 time of dead-lettering.
    pub const FAILED_AT: &str = "x-outreach-failed-at";
    /// The outcome a job reached but could not record (reason `unrecordable`).
    pub const STATUS: &str = "x-outreach-status";
    /// Which delay queue a retry goes to (seconds, as a string): matched by
    /// the retry exchange's bindings, so the routing key can stay the tenant's.
    /// No `x-` prefix: a headers exchange ignores such headers when matching.
    pub const DELAY: &str = "outreach-delay";
}

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error(
        "cannot reach RabbitMQ at any of {nodes} (check amqp.url / OUTREACH__AMQP__URL); last error: {last}"
    )]
    Connect { nodes: String, last: String },
    #[error("RabbitMQ error: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("the broker cancelled our consumer (queue deleted or connection lost)")]
    ConsumerEnded,
    #[error("the broker closed our {0} channel (see the error logged before this one)")]
    ChannelClosed(&'static str),
    #[error(
        "RabbitMQ did not answer the liveness probe within {0} ms (a hung or overloaded node); \
         trying the next node"
    )]
    Unresponsive(u64),
    #[error("RabbitMQ refused the message (nack) on {0}")]
    Nacked(String),
    #[error("RabbitMQ refused to declare {name}: {fix} ({source})")]
    Declare {
        name: String,
        fix: &'static str,
        source: lapin::Error,
    },
}

/// The names of everything this deployment declares.
#[derive(Debug, Clone)]
pub struct Topology {
    /// Where jobs are published (direct: held queues' bindings, else the
    /// alternate exchange).
    pub jobs_exchange: String,
    /// The alternate exchange of the jobs exchange, bound to the work queues.
    pub shared_exchange: String,
    /// The work queues, `{p}.work` alone or `{p}.work.0` … `{p}.work.{N-1}`.
    pub work_queues: Vec<String>,
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
            shared_exchange: format!("{p}.jobs.shared"),
            work_queues: match s.work_queues {
                0 | 1 => vec![format!("{p}.work")],
                n => (0..n).map(|i| format!("{p}.work.{i}")).collect(),
            },
            // `{p}.delay`, not the `{p}.retry` of earlier versions: those
            // tiers were classic queues that dead-letter at most once. New
            // names let an upgraded worker declare quorum tiers while the
            // old ones drain by themselves (README, "Upgrading").
            retry_exchange: format!("{p}.delay"),
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

    /// Publish to the delay queue of `tier_secs` (confirmed). When the delay
    /// is over the message goes back to the jobs exchange with `routing_key`
    /// (the tenant's), so to the tenant's work queue.
    pub async fn publish_delayed(
        &self,
        ch: &Channel,
        tier_secs: u64,
        routing_key: &str,
        payload: &[u8],
        props: BasicProperties,
    ) -> Result<(), BrokerError> {
        let mut h = props.headers().clone().unwrap_or_default();
        h.insert(headers::DELAY.into(), long(&tier_secs.to_string()));
        let props = props.with_headers(h);
        publish_confirmed(ch, &self.retry_exchange, routing_key, payload, props).await
    }

    /// Delete every queue (with `extra`, e.g. held queues) and exchange of
    /// this topology, and the messages in them: for the bench and tests.
    /// Goes on past a failure (the rest still goes) and returns the first.
    pub async fn delete(&self, ch: &Channel, extra: &[String]) -> Result<(), BrokerError> {
        let tiers = self.retry_tiers.iter().map(|s| self.retry_queue(*s));
        let queues = self
            .work_queues
            .iter()
            .cloned()
            .chain(tiers)
            .chain(extra.iter().cloned());
        let mut first = Ok(());
        for q in queues.chain([self.dead_letter_queue.clone()]) {
            let r = ch.queue_delete(q.as_str().into(), Default::default()).await;
            if let (Err(e), Ok(())) = (r, &first) {
                first = Err(e.into());
            }
        }
        for e in [
            &self.jobs_exchange,
            &self.shared_exchange,
            &self.retry_exchange,
            &self.dead_letter_exchange,
            &self.events_exchange,
        ] {
            let r = ch
                .exchange_delete(e.as_str().into(), Default::default())
                .await;
            if let (Err(e), Ok(())) = (r, &first) {
                first = Err(e.into());
            }
        }
        first
    }

    /// One consumer on each work queue, tagged `{tag}-{i}` (`Consumer::tag`
    /// gives it back for a cancel). The channel's QoS applies to each.
    pub async fn consume_work(
        &self,
        ch: &Channel,
        tag: &str,
    ) -> Result<Vec<lapin::Consumer>, BrokerError> {
        let mut consumers = Vec::with_capacity(self.work_queues.len());
        for (i, queue) in self.work_queues.iter().enumerate() {
            let consumer = ch
                .basic_consume(
                    queue.as_str().into(),
                    format!("{tag}-{i}").as_str().into(),
                    Default::default(),
                    FieldTable::default(),
                )
                .await?;
            consumers.push(consumer);
        }
        Ok(consumers)
    }

    /// Jobs waiting in all the work queues (passive declares).
    pub async fn work_depth(&self, conn: &Connection) -> Result<u32, BrokerError> {
        let mut n = 0;
        for q in &self.work_queues {
            n += queue_depth(conn, q).await?.unwrap_or(0);
        }
        Ok(n)
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
        let hashed = self.work_queues.len() > 1;
        let shared_kind = if hashed {
            ExchangeKind::Custom(CONSISTENT_HASH.into())
        } else {
            ExchangeKind::Fanout
        };
        ch.exchange_declare(
            self.shared_exchange.as_str().into(),
            shared_kind,
            durable,
            FieldTable::default(),
        )
        .await
        .map_err(|e| self.declare_error(&self.shared_exchange, e))?;
        let mut jobs_args = FieldTable::default();
        // Keys no held queue is bound to (nearly all) go to the work queues.
        jobs_args.insert("alternate-exchange".into(), long(&self.shared_exchange));
        ch.exchange_declare(
            self.jobs_exchange.as_str().into(),
            ExchangeKind::Direct,
            durable,
            jobs_args,
        )
        .await
        .map_err(|e| self.declare_error(&self.jobs_exchange, e))?;
        ch.exchange_declare(
            self.retry_exchange.as_str().into(),
            ExchangeKind::Headers,
            durable,
            FieldTable::default(),
        )
        .await
        .map_err(|e| self.declare_error(&self.retry_exchange, e))?;
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

        for queue in &self.work_queues {
            ch.queue_declare(queue.as_str().into(), q_durable, self.consumed_queue_args())
                .await
                .map_err(|e| self.declare_error(queue, e))?;
            // Fanout ignores the key; the consistent-hash exchange reads it
            // as the queue's weight.
            ch.queue_bind(
                queue.as_str().into(),
                self.shared_exchange.as_str().into(),
                RING_POINTS.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        }

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
            // Expired messages go back to the jobs exchange with the key
            // they were published with (the tenant's), so to its work queue
            // (or its held queue, if it holds).
            args.insert("x-dead-letter-exchange".into(), long(&self.jobs_exchange));
            if self.queue_type == QueueType::Quorum {
                // Replicated, and dead-lettered at least once: a message
                // leaves the tier only when the queue it goes back to has
                // confirmed it. A classic tier (or a quorum one dead-lettering
                // at most once) drops a message whose delay ends while the
                // work queue has no leader, e.g. as RabbitMQ restarts.
                args.insert("x-queue-type".into(), long("quorum"));
                args.insert("x-dead-letter-strategy".into(), long("at-least-once"));
                args.insert("x-overflow".into(), long("reject-publish"));
            }
            let q = self.retry_queue(*tier);
            ch.queue_declare(q.as_str().into(), q_durable, args)
                .await
                .map_err(|e| self.declare_error(&q, e))?;
            let mut on = FieldTable::default();
            on.insert("x-match".into(), long("all"));
            on.insert(headers::DELAY.into(), long(&tier.to_string()));
            ch.queue_bind(
                q.as_str().into(),
                self.retry_exchange.as_str().into(),
                "".into(),
                QueueBindOptions::default(),
                on,
            )
            .await?;
        }
        Ok(())
    }

    /// Say what to fix when RabbitMQ refuses a declaration.
    fn declare_error(&self, name: &str, e: lapin::Error) -> BrokerError {
        let code = match e.kind() {
            lapin::ErrorKind::ProtocolError(p) => Some(p.get_id()),
            _ => None,
        };
        match code {
            // COMMAND_INVALID: an exchange type the broker does not know.
            Some(503) if name == self.shared_exchange => BrokerError::Declare {
                name: name.to_owned(),
                fix: "RabbitMQ does not know the x-consistent-hash exchange type: run \
                      `rabbitmq-plugins enable rabbitmq_consistent_hash_exchange`, or set \
                      amqp.work_queues = 1 (one shared work queue, no per-tenant isolation)",
                source: e,
            },
            // PRECONDITION_FAILED: it exists with another type or arguments.
            Some(406) => BrokerError::Declare {
                name: name.to_owned(),
                fix: "it already exists with other settings (an earlier outreach version, \
                      another amqp.work_queues or amqp.queue_type): drain and delete it, \
                      or use a new amqp.prefix",
                source: e,
            },
            _ => e.into(),
        }
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

/// Connect to the first of `nodes` that answers, with a connection named
/// after its role (shown in the management UI).
pub async fn connect(nodes: &Nodes, role: &str) -> Result<Connection, BrokerError> {
    nodes.connect_from(0, role).await.map(|(conn, _)| conn)
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

/// Properties of a new job: persistent JSON stamped with its publish time,
/// as the AMQP `timestamp` (seconds, which other publishers' clients can
/// set too) and [`headers::PUBLISHED_MS`]. Retries and moves copy a
/// delivery's properties, so the stamp stays the first publish's.
pub fn job_properties() -> BasicProperties {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let mut h = FieldTable::default();
    h.insert(
        headers::PUBLISHED_MS.into(),
        AMQPValue::LongLongInt(now.as_millis() as i64),
    );
    persistent_json()
        .with_timestamp(now.as_secs())
        .with_headers(h)
}

/// When a job was first published (Unix milliseconds), if its publisher said.
pub fn published_ms(props: &BasicProperties) -> Option<u64> {
    header_u64(props, headers::PUBLISHED_MS).or_else(|| props.timestamp().map(|s| s * 1000))
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

    #[test]
    fn a_job_is_stamped_in_milliseconds_and_a_bare_amqp_timestamp_still_counts() {
        let before = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let stamped = published_ms(&job_properties()).expect("stamped");
        assert!(
            stamped >= before && stamped < before + 1000,
            "{stamped} vs {before}"
        );
        // Another publisher's client that sets only the AMQP timestamp (seconds).
        let theirs = persistent_json().with_timestamp(1_772_355_600);
        assert_eq!(published_ms(&theirs), Some(1_772_355_600_000));
        assert_eq!(published_ms(&persistent_json()), None);
    }
}
