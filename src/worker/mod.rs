//! The AMQP consumer: connection supervision, bounded concurrency and
//! graceful shutdown.
//!
//! On SIGTERM / SIGINT the consumer is cancelled (no new deliveries), jobs in
//! flight finish and are acked, the log writer flushes, channels close; what
//! was prefetched but not started goes back to the queue when the channel
//! closes. When the broker connection drops, jobs in flight cannot be acked;
//! the broker redelivers them and the delivery log stops a second send. The
//! worker does not wait for them: it reconnects at once, starting with the
//! next node of `amqp.url`, while they record their outcomes in the
//! background (for at most [`BROKER_LOST_GRACE`]).

mod depths;
pub mod reconcile;

use crate::broker::{self, BrokerError, Nodes};
use crate::health::Health;
use crate::metrics as m;
use crate::pipeline::{HandleError, Shared, Source, after_panic, handle};
use futures::{FutureExt, StreamExt};
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
};
use lapin::types::FieldTable;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Consumer settings.
#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    /// In the order this process tries them.
    pub nodes: Nodes,
    pub prefetch: u16,
    pub shutdown_grace: Duration,
    /// How often queue depths are sampled (`metrics.queue_sample_secs`).
    pub queue_sample: Duration,
    /// How long the session's liveness probe may go unanswered (`amqp.liveness_timeout_ms`).
    pub liveness_timeout: Duration,
    pub reconciler: reconcile::ReconcilerSettings,
}

/// Consume until `shutdown` fires, reconnecting with backoff when the broker
/// goes away.
pub async fn run(
    shared: Arc<Shared>,
    cfg: ConsumerConfig,
    health: Arc<Health>,
    shutdown: CancellationToken,
) {
    const FIRST_DELAY: Duration = Duration::from_millis(200);
    // Short, so a node that accepts again is used within about a second;
    // jittered, so workers do not reconnect in step.
    const MAX_DELAY: Duration = Duration::from_secs(1);
    let mut delay = FIRST_DELAY;
    // The node to try first: after losing one, the next in the list.
    let mut next = 0;
    loop {
        let mut consumed = false;
        let began = std::time::Instant::now();
        match session(&shared, &cfg, &health, &shutdown, &mut next, &mut consumed).await {
            Ok(()) => break,
            Err(e) if consumed && began.elapsed() >= STEADY => {
                // It was working: fail over to the next node at once.
                delay = FIRST_DELAY;
                tracing::error!(error = %e, "broker session ended; reconnecting");
                continue;
            }
            Err(e) => {
                tracing::error!(error = %e, retry_in_ms = delay.as_millis() as u64, "no broker session; retrying");
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(jittered(delay)) => {}
        }
        delay = (delay * 2).min(MAX_DELAY);
    }
    health.set_broker(false);
    tracing::info!("worker stopped");
}

/// One connection's life. `Ok` only when shutdown was requested. Connects
/// to the first node that answers from `next` on, and leaves `next` at the
/// node after it; sets `consumed` once its consumers are running.
async fn session(
    shared: &Arc<Shared>,
    cfg: &ConsumerConfig,
    health: &Health,
    shutdown: &CancellationToken,
    next: &mut usize,
    consumed: &mut bool,
) -> Result<(), BrokerError> {
    let (conn, index) = cfg.nodes.connect_from(*next, "worker").await?;
    *next = (index + 1) % cfg.nodes.len();
    let node = cfg.nodes.node(index).addr().to_owned();
    // Subscribed before anything can fail, so a lost connection is seen at once.
    let lost = connection_lost(&conn);
    let conn = Arc::new(conn);
    shared
        .topology
        .declare(&conn.create_channel().await?)
        .await?;
    let publish = broker::confirm_channel(&conn).await?;
    // Moving a burst to its held queue is thousands of publishes: on their
    // own channel, so events and retries of other jobs do not queue behind them.
    let moves = broker::confirm_channel(&conn).await?;
    let consume = conn.create_channel().await?;
    // The liveness probe's own channel (a failed passive declare closes it).
    let probe = conn.create_channel().await?;
    // Per consumer: each work queue may have `prefetch` deliveries out.
    consume
        .basic_qos(cfg.prefetch, BasicQosOptions::default())
        .await?;
    let tag = format!(
        "outreach-{}-{}",
        std::process::id(),
        uuid::Uuid::now_v7().simple()
    );
    let consumers = shared.topology.consume_work(&consume, &tag).await?;
    let tags: Vec<_> = consumers.iter().map(|c| c.tag()).collect();
    health.set_broker(true);
    *consumed = true;
    let connected = metrics::gauge!(m::BROKER_CONNECTED, "node" => node.clone());
    connected.set(1.0);
    tracing::info!(
        %node,
        queues = shared.topology.work_queues.len(),
        prefetch = cfg.prefetch,
        concurrency = shared.sends.available_permits(),
        "consuming"
    );

    let tracker = TaskTracker::new();
    let held_stop = CancellationToken::new();
    // Fired when jobs still in flight are given up (their deliveries return
    // to the queue with the connection): nothing waits on a dead channel.
    // Jobs from the work queues and from held queues alike.
    let abandon = CancellationToken::new();
    tracker.spawn(reconcile::run(
        shared.clone(),
        publish.clone(),
        cfg.reconciler.clone(),
        held_stop.clone(),
    ));
    tracker.spawn(depths::run(
        shared.clone(),
        conn.clone(),
        cfg.queue_sample,
        held_stop.clone(),
    ));
    tracker.spawn(consume_held(
        shared.clone(),
        conn.clone(),
        publish.clone(),
        moves.clone(),
        held_stop.clone(),
        abandon.clone(),
    ));
    // One loop per work queue. Jobs in flight are bounded by the prefetch of
    // each queue, sends by `shared.sends`, which serves waiting jobs in
    // order: a queue with a burst cannot take every send slot from the others.
    let loops = CancellationToken::new();
    let mut consuming = tokio::task::JoinSet::new();
    for mut consumer in consumers {
        let (shared, publish, moves, jobs, stop, abandon) = (
            shared.clone(),
            publish.clone(),
            moves.clone(),
            tracker.clone(),
            loops.clone(),
            abandon.clone(),
        );
        consuming.spawn(async move {
            loop {
                let delivery = tokio::select! {
                    biased;
                    _ = stop.cancelled() => return Ok(()),
                    next = consumer.next() => match next {
                        Some(Ok(delivery)) => delivery,
                        Some(Err(e)) => return Err(BrokerError::from(e)),
                        None => return Err(BrokerError::ConsumerEnded),
                    },
                };
                jobs.spawn(delivered(
                    shared.clone(),
                    publish.clone(),
                    moves.clone(),
                    delivery,
                    Source::WorkQueue,
                    abandon.clone(),
                ));
            }
        });
    }
    let ours = [("publishing", &publish), ("moves", &moves)];
    let hung = unresponsive(
        &probe,
        &shared.topology.work_queues[0],
        cfg.liveness_timeout,
    );
    let ended: Result<(), BrokerError> = tokio::select! {
        _ = shutdown.cancelled() => Ok(()),
        first = consuming.join_next() => match first {
            Some(Ok(Err(e))) => Err(e),
            _ => Err(BrokerError::ConsumerEnded),
        },
        name = first_closed(&ours) => {
            Err(BrokerError::ChannelClosed(name))
        }
        e = lost => Err(e),
        e = hung => Err(e),
    };
    // Not ready from here on: draining for a shutdown, or the session is gone.
    health.set_broker(false);
    connected.set(0.0);
    // Stop deliveries first, then let the jobs in flight finish.
    loops.cancel();
    while consuming.join_next().await.is_some() {}
    held_stop.cancel();
    tracker.close();
    // On shutdown, jobs in flight finish within the whole grace and are acked.
    // After losing the broker they cannot ack, but can still record their
    // outcome (so a redelivered copy is not sent again): they get a short
    // while to do so in the background, and the next session starts now.
    let grace = if ended.is_err() {
        cfg.shutdown_grace.min(BROKER_LOST_GRACE)
    } else {
        cfg.shutdown_grace
    };
    // A hung node answers no cancel or close: they get CLOSE_PATIENCE, so a
    // lost session's wind-down always ends.
    let wind_down = async move {
        let cancels = async {
            for tag in tags {
                let _ = consume
                    .basic_cancel(tag, BasicCancelOptions::default())
                    .await;
            }
        };
        let _ = tokio::time::timeout(CLOSE_PATIENCE, cancels).await;
        if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
            tracing::warn!(
                grace_secs = grace.as_secs(),
                left = tracker.len(),
                "jobs still in flight after the grace period; giving them up (they will be redelivered)"
            );
            abandon.cancel();
            tracker.wait().await;
        }
        let closes = async {
            let _ = consume.close(200, "bye".into()).await;
            let _ = publish.close(200, "bye".into()).await;
            let _ = moves.close(200, "bye".into()).await;
            let _ = probe.close(200, "bye".into()).await;
            let _ = conn.close(200, "bye".into()).await;
        };
        let _ = tokio::time::timeout(CLOSE_PATIENCE, closes).await;
    };
    if ended.is_ok() {
        wind_down.await;
    } else {
        tokio::spawn(wind_down);
    }
    ended
}

/// A session that consumed at least this long was working: when it ends,
/// the worker reconnects at once; a shorter one (a node that accepts and
/// drops us) goes through the backoff, so a flapping node is not hammered.
const STEADY: Duration = Duration::from_secs(5);

/// How long cancelling the consumers, and closing the channels and the
/// connection, may take when a session ends.
const CLOSE_PATIENCE: Duration = Duration::from_secs(5);

/// How long jobs in flight may still record their outcome once the broker
/// session is lost.
const BROKER_LOST_GRACE: Duration = Duration::from_secs(5);

/// Resolves when the session stops answering: every second a passive
/// declare of `queue` on `probe` (a channel of its own) must be answered
/// within `timeout`. A hung node (a stopped VM, a partition that keeps the
/// TCP connection) answers nothing while the heartbeat takes minutes to
/// notice; consuming alone cannot tell an idle queue from a dead one.
async fn unresponsive(probe: &lapin::Channel, queue: &str, timeout: Duration) -> BrokerError {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let declared = probe.queue_declare(
            queue.into(),
            lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        );
        match tokio::time::timeout(timeout, declared).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return BrokerError::Amqp(e),
            Err(_) => return BrokerError::Unresponsive(timeout.as_millis() as u64),
        }
    }
}

/// `d` give or take a fifth, so that workers spread their reconnects.
fn jittered(d: Duration) -> Duration {
    d.mul_f64(rand::random_range(0.8..=1.2))
}

/// Resolves when the connection reports an error (the node went away, a
/// missed heartbeat, a connection-level close).
fn connection_lost(
    conn: &lapin::Connection,
) -> impl std::future::Future<Output = BrokerError> + Send + 'static {
    let mut events = conn.events_listener();
    async move {
        while let Some(event) = events.next().await {
            if let lapin::Event::Error(e) = event {
                return BrokerError::Amqp(e);
            }
        }
        BrokerError::ConsumerEnded
    }
}

/// One delivery's task, from a work queue or a held queue alike: counted
/// in flight while it lives, given up when `abandon` fires.
async fn delivered(
    shared: Arc<Shared>,
    publish: lapin::Channel,
    moves: lapin::Channel,
    delivery: lapin::message::Delivery,
    source: Source,
    abandon: CancellationToken,
) {
    let _counted = InFlight::start();
    tokio::select! {
        _ = abandon.cancelled() => {}
        _ = ack_or_requeue(&shared, &publish, &moves, delivery, source) => {}
    }
}

/// Counts a job in `outreach_jobs_in_flight` while it lives, however it ends.
struct InFlight;

impl InFlight {
    fn start() -> Self {
        metrics::gauge!(m::JOBS_IN_FLIGHT).increment(1.0);
        Self
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        metrics::gauge!(m::JOBS_IN_FLIGHT).decrement(1.0);
    }
}

/// Wait until one of `channels` is closed (the broker closes a channel on a
/// channel error, such as a publish to an exchange deleted under us, while
/// the connection lives on); returns its name. Jobs would fail on it until
/// the session starts over with fresh channels and a re-declared topology.
async fn first_closed(channels: &[(&'static str, &lapin::Channel)]) -> &'static str {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tick.tick().await;
        if let Some((name, _)) = channels.iter().find(|(_, c)| !c.status().connected()) {
            return name;
        }
    }
}

/// Consume every held queue listed in the database, as one of its single
/// active consumers; look for new ones every couple of seconds.
async fn consume_held(
    shared: Arc<Shared>,
    conn: Arc<lapin::Connection>,
    publish: lapin::Channel,
    moves: lapin::Channel,
    stop: CancellationToken,
    abandon: CancellationToken,
) {
    // Held jobs ack on `channel`: it must outlive them.
    let tracker = TaskTracker::new();
    let mut consuming: HashSet<String> = HashSet::new();
    let mut channel: Option<lapin::Channel> = None;
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        let queues = match shared.holds.listed().await {
            Ok(q) => q,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list held queues");
                continue;
            }
        };
        if channel.as_ref().is_none_or(|c| !c.status().connected()) {
            // A new channel: its consumers are gone with the old one.
            consuming.clear();
            channel = match conn.create_channel().await {
                Ok(ch) => Some(ch),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot open a channel for held queues");
                    continue;
                }
            };
        }
        let ch = channel.as_ref().expect("opened above");
        for held in queues {
            let queue = &held.queue;
            let observed = match shared.topology.declare_held(ch, queue).await {
                Ok(messages) => shared.holds.observe(ch, &held, messages).await,
                Err(e) => Err(e),
            };
            if let Err(e) = observed {
                tracing::warn!(%queue, error = %e, "cannot declare or route held queue");
                break;
            }
            if consuming.contains(queue) {
                continue;
            }
            let consumer = async {
                ch.basic_qos(shared.holds.prefetch, BasicQosOptions::default())
                    .await?;
                ch.basic_consume(
                    queue.as_str().into(),
                    format!(
                        "held-{}-{}",
                        std::process::id(),
                        uuid::Uuid::now_v7().simple()
                    )
                    .as_str()
                    .into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await
            };
            let mut consumer = match consumer.await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(%queue, error = %e, "cannot consume held queue");
                    break;
                }
            };
            tracing::info!(%queue, "consuming held queue");
            consuming.insert(held.queue);
            let (shared, publish, moves, jobs, stop, abandon) = (
                shared.clone(),
                publish.clone(),
                moves.clone(),
                tracker.clone(),
                stop.clone(),
                abandon.clone(),
            );
            tracker.spawn(async move {
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        next = consumer.next() => match next {
                            Some(Ok(delivery)) => {
                                jobs.spawn(delivered(
                                    shared.clone(),
                                    publish.clone(),
                                    moves.clone(),
                                    delivery,
                                    Source::HeldQueue,
                                    abandon.clone(),
                                ));
                            }
                            _ => break,
                        }
                    }
                }
            });
        }
    }
    tracker.close();
    tracker.wait().await;
    if let Some(ch) = channel {
        // Prefetched, unstarted held jobs go back to their queues.
        let _ = ch.close(200, "bye".into()).await;
    }
}

/// Handle a delivery and ack or hand it back. A panic while handling it
/// ends that job (`failed`, `internal`, dead-lettered, acked), never the
/// delivery slot: an unacked delivery would hold its prefetch slot for good.
async fn ack_or_requeue(
    shared: &Shared,
    publish: &lapin::Channel,
    moves: &lapin::Channel,
    delivery: lapin::message::Delivery,
    source: Source,
) {
    let handled = std::panic::AssertUnwindSafe(handle(shared, publish, moves, &delivery, source))
        .catch_unwind()
        .await;
    let outcome = match handled {
        Ok(outcome) => outcome,
        Err(_) => after_panic(shared, publish, moves, &delivery).await,
    };
    match outcome {
        Ok(()) => {
            if let Err(e) = delivery.acker.ack(BasicAckOptions::default()).await {
                // The outcome is recorded; the redelivery will see it and only re-report it.
                tracing::warn!(error = %e, "ack failed; the job will be redelivered and not sent again");
            }
        }
        Err(HandleError::Broker(e)) if !publish.status().connected() => {
            // The session is gone (logged once when it ended): the delivery
            // returns to its queue with the connection, and its copy finds
            // whatever this one managed to record.
            metrics::counter!(m::JOBS_REQUEUED).increment(1);
            tracing::debug!(error = %e, "broker session lost before the job was acked; it will be redelivered");
        }
        Err(e) => {
            metrics::counter!(m::JOBS_REQUEUED).increment(1);
            tracing::error!(error = %e, "job outcome not made durable (row, event or retry); handing it back to the broker");
            // Do not spin on a database outage.
            tokio::time::sleep(Duration::from_secs(1)).await;
            let _ = delivery
                .acker
                .nack(BasicNackOptions {
                    requeue: true,
                    multiple: false,
                })
                .await;
        }
    }
}
