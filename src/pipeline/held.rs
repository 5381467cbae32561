//! Held queues: where a tenant's jobs wait for its rate limit without
//! standing in front of anyone else's.
//!
//! The work queue is one FIFO shared by every tenant. A job that would wait
//! longer than `rate_limits.max_inline_wait_ms` (or whose tenant already has
//! `max_inline_waiters` jobs waiting in this worker) is moved to
//! `{prefix}.held.{channel}.{tenant}` (published with confirms, then acked),
//! so the work queue keeps moving for everyone else. While that queue holds
//! jobs, the tenant's new jobs follow them there, which keeps its order:
//! the worker binds the held queue to the jobs exchange with the tenant's
//! routing key (`<tenant>.<channel>`), so the broker routes the rest of a
//! burst straight to it, and jobs that still reach the work queue (published
//! before the binding) are moved. Once the held queue is seen empty on two
//! polls in a row, the binding is removed and the tenant's jobs take the
//! work queue again.
//!
//! Every worker consumes every held queue listed in `held_queues`, as a
//! single active consumer: one worker at a time drains a tenant's queue,
//! waiting for its sends in process (it holds nothing but that tenant's jobs).
//! If that worker dies, the broker hands the queue to the next one.

use super::HandleError;
use crate::broker::{self, Topology};
use crate::job::{Channel, TenantId};
use crate::metrics as m;
use lapin::message::Delivery;
use lapin::options::QueueDeclareOptions;
use lapin::types::{AMQPValue, FieldTable};
use sqlx::PgPool;
use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How long new jobs of a tenant keep following its held ones after the
/// last divert or the last time its held queue was seen non-empty.
const FOLLOW_FOR: Duration = Duration::from_secs(3);
/// How often the `held_queues` row of an active hold is refreshed.
const REGISTER_EVERY: Duration = Duration::from_secs(30);

#[derive(Default)]
struct Hold {
    follow_until: Option<Instant>,
    registered_at: Option<Instant>,
    /// Whether the held queue is bound to the jobs exchange, as far as this
    /// worker knows (`None`: not known, e.g. bound by an earlier worker).
    routed: Option<bool>,
    waiting_inline: usize,
}

/// A held queue as listed in `held_queues`.
pub struct HeldQueue {
    pub queue: String,
    /// The routing key of the tenant's jobs on this channel.
    pub key: String,
}

/// This worker's view of the held queues.
pub struct Holds {
    pool: PgPool,
    topology: Topology,
    pub max_inline_waiters: usize,
    pub max_inline_wait: Duration,
    pub prefetch: u16,
    state: Mutex<HashMap<String, Hold>>,
    /// Set once any tenant has held jobs: until then no job needs the lookup.
    any_hold: AtomicBool,
}

/// A place among a tenant's jobs waiting in process; released on drop.
pub struct WaitSlot<'a> {
    holds: &'a Holds,
    queue: String,
}

impl Drop for WaitSlot<'_> {
    fn drop(&mut self) {
        if let Some(h) = self.holds.lock().get_mut(&self.queue) {
            h.waiting_inline = h.waiting_inline.saturating_sub(1);
        }
    }
}

impl Holds {
    pub fn new(
        pool: PgPool,
        topology: Topology,
        max_inline_waiters: usize,
        max_inline_wait: Duration,
        prefetch: u16,
    ) -> Self {
        Self {
            pool,
            topology,
            max_inline_waiters,
            max_inline_wait,
            prefetch,
            state: Mutex::new(HashMap::new()),
            any_hold: AtomicBool::new(false),
        }
    }

    pub fn queue_name(&self, tenant: &TenantId, channel: Channel) -> String {
        self.topology.held_queue(tenant.as_str(), channel.as_str())
    }

    /// Should this tenant's new job go straight to its held queue?
    pub fn is_holding(&self, tenant: &TenantId, channel: Channel) -> bool {
        if !self.any_hold.load(Ordering::Relaxed) {
            return false;
        }
        let queue = self.queue_name(tenant, channel);
        self.lock()
            .get(&queue)
            .and_then(|h| h.follow_until)
            .is_some_and(|t| t > Instant::now())
    }

    /// A slot to wait in process, unless the tenant has enough waiting here.
    pub fn wait_slot(&self, queue: &str) -> Option<WaitSlot<'_>> {
        let mut state = self.lock();
        let h = state.entry(queue.to_owned()).or_default();
        if h.waiting_inline >= self.max_inline_waiters {
            return None;
        }
        h.waiting_inline += 1;
        Some(WaitSlot {
            holds: self,
            queue: queue.to_owned(),
        })
    }

    /// Move a delivery to its tenant's held queue (confirmed); the caller acks it.
    pub async fn divert(
        &self,
        publish: &lapin::Channel,
        delivery: &Delivery,
        tenant: &TenantId,
        channel: Channel,
    ) -> Result<(), HandleError> {
        let queue = self.queue_name(tenant, channel);
        self.any_hold.store(true, Ordering::Relaxed);
        let register = {
            let mut state = self.lock();
            let h = state.entry(queue.clone()).or_default();
            h.follow_until = Some(Instant::now() + FOLLOW_FOR);
            h.routed != Some(true)
                || h.registered_at
                    .is_none_or(|t| t.elapsed() >= REGISTER_EVERY)
        };
        if register {
            self.topology.declare_held(publish, &queue).await?;
            sqlx::query(
                "INSERT INTO held_queues (queue, tenant_id, channel) VALUES ($1, $2, $3) \
                 ON CONFLICT (queue) DO UPDATE SET last_diverted_at = now()",
            )
            .bind(&queue)
            .bind(tenant.as_str())
            .bind(channel)
            .execute(&self.pool)
            .await
            .map_err(crate::delivery_log::LogError::from)?;
            // Only now, with the row there (so every worker consumes the
            // queue), may the broker route the tenant's jobs to it.
            let key = crate::job::routing_key_of(Some(tenant.as_str()), Some(channel.as_str()));
            self.topology
                .route_held(publish, &queue, &key, true)
                .await?;
            if let Some(h) = self.lock().get_mut(&queue) {
                h.registered_at = Some(Instant::now());
                h.routed = Some(true);
            }
        }
        let props = delivery.properties.clone().with_delivery_mode(2);
        broker::publish_confirmed(publish, "", &queue, &delivery.data, props).await?;
        metrics::counter!(m::JOBS_HELD, "channel" => channel.as_str()).increment(1);
        Ok(())
    }

    /// Held queues every worker should consume.
    pub async fn listed(&self) -> Result<Vec<HeldQueue>, sqlx::Error> {
        let rows: Vec<(String, String, Channel)> =
            sqlx::query_as("SELECT queue, tenant_id, channel FROM held_queues ORDER BY queue")
                .fetch_all(&self.pool)
                .await?;
        Ok(rows
            .into_iter()
            .map(|(queue, tenant, channel)| HeldQueue {
                key: crate::job::routing_key_of(Some(&tenant), Some(channel.as_str())),
                queue,
            })
            .collect())
    }

    /// A poll saw `messages` ready in a held queue. While it has jobs, the
    /// tenant's new ones keep following them; once it has been empty for
    /// `FOLLOW_FOR` (two polls), the broker stops routing them there.
    /// Ready excludes what its consumer has prefetched (`held_prefetch`), so
    /// a hold that small may be unbound early: its next jobs reach the work
    /// queue, wait for the limit there and are moved, and the queue is bound
    /// again. Harmless, a little more work.
    pub async fn observe(
        &self,
        ch: &lapin::Channel,
        held: &HeldQueue,
        messages: u32,
    ) -> Result<(), broker::BrokerError> {
        let unroute = {
            let mut state = self.lock();
            let h = state.entry(held.queue.clone()).or_default();
            if messages > 0 {
                self.any_hold.store(true, Ordering::Relaxed);
                h.follow_until = Some(Instant::now() + FOLLOW_FOR);
                false
            } else if h.follow_until.is_some_and(|t| t > Instant::now()) {
                false
            } else {
                h.routed != Some(false)
            }
        };
        if unroute {
            self.topology
                .route_held(ch, &held.queue, &held.key, false)
                .await?;
            if let Some(h) = self.lock().get_mut(&held.queue) {
                h.routed = Some(false);
            }
            tracing::debug!(queue = %held.queue, "held queue empty; its tenant's jobs take the work queue again");
        }
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Hold>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Topology {
    pub fn held_queue(&self, tenant: &str, channel: &str) -> String {
        format!("{}.held.{channel}.{tenant}", self.prefix())
    }

    /// Declare a held queue (idempotent); returns its message count.
    pub async fn declare_held(
        &self,
        ch: &lapin::Channel,
        queue: &str,
    ) -> Result<u32, broker::BrokerError> {
        let mut args = self.consumed_queue_args();
        // One worker drains a tenant's queue at a time, in order.
        args.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
        let q = ch
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                args,
            )
            .await?;
        Ok(q.message_count())
    }

    /// Bind (`on`) or unbind a held queue to the jobs exchange with its
    /// tenant's routing key. Both are idempotent.
    pub async fn route_held(
        &self,
        ch: &lapin::Channel,
        queue: &str,
        key: &str,
        on: bool,
    ) -> Result<(), broker::BrokerError> {
        if on {
            ch.queue_bind(
                queue.into(),
                self.jobs_exchange.as_str().into(),
                key.into(),
                Default::default(),
                FieldTable::default(),
            )
            .await?;
        } else {
            ch.queue_unbind(
                queue.into(),
                self.jobs_exchange.as_str().into(),
                key.into(),
                FieldTable::default(),
            )
            .await?;
        }
        Ok(())
    }
}
