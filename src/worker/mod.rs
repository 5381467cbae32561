//! The AMQP consumer: connection supervision, bounded concurrency and
//! graceful shutdown.
//!
//! On SIGTERM / SIGINT the consumer is cancelled (no new deliveries), jobs in
//! flight finish and are acked, the log writer flushes, channels close; what
//! was prefetched but not started goes back to the queue when the channel
//! closes. When the broker connection drops, jobs in flight cannot be acked;
//! the broker redelivers them and the delivery log stops a second send.

mod handler;

pub use handler::{HandleError, handle};

use crate::broker::{self, BrokerError, Topology};
use crate::delivery_log::DeliveryLog;
use crate::dispatch::{QuickRetry, RetryBudget};
use crate::events::EventPublisher;
use crate::health::Health;
use crate::metrics as m;
use crate::tenant::Directory;
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
};
use lapin::types::FieldTable;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// What every job task shares.
pub struct Shared {
    pub log: DeliveryLog,
    pub directory: Arc<Directory>,
    pub topology: Topology,
    pub quick_retry: QuickRetry,
    pub budget: RetryBudget,
    pub store_content: bool,
}

impl Shared {
    fn events(&self, ch: &lapin::Channel) -> EventPublisher {
        EventPublisher::new(ch.clone(), self.topology.events_exchange.clone())
    }
}

/// Consumer settings.
#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    pub amqp_url: String,
    pub prefetch: u16,
    pub concurrency: usize,
    pub shutdown_grace: Duration,
}

/// Consume until `shutdown` fires, reconnecting with backoff when the broker
/// goes away.
pub async fn run(
    shared: Arc<Shared>,
    cfg: ConsumerConfig,
    health: Arc<Health>,
    shutdown: CancellationToken,
) {
    let mut delay = Duration::from_millis(200);
    loop {
        match session(&shared, &cfg, &health, &shutdown).await {
            Ok(()) => break,
            Err(e) => {
                health.set_broker(false);
                metrics::gauge!(m::BROKER_CONNECTED).set(0.0);
                tracing::error!(error = %e, retry_in_ms = delay.as_millis() as u64, "broker session ended; reconnecting");
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(10));
    }
    health.set_broker(false);
    tracing::info!("worker stopped");
}

/// One connection's life. `Ok` only when shutdown was requested.
async fn session(
    shared: &Arc<Shared>,
    cfg: &ConsumerConfig,
    health: &Health,
    shutdown: &CancellationToken,
) -> Result<(), BrokerError> {
    let conn = broker::connect(&cfg.amqp_url, "worker").await?;
    shared
        .topology
        .declare(&conn.create_channel().await?)
        .await?;
    let publish = broker::confirm_channel(&conn).await?;
    let consume = conn.create_channel().await?;
    consume
        .basic_qos(cfg.prefetch, BasicQosOptions::default())
        .await?;
    let tag = format!(
        "outreach-{}-{}",
        std::process::id(),
        uuid::Uuid::now_v7().simple()
    );
    let mut consumer = consume
        .basic_consume(
            shared.topology.work_queue.as_str().into(),
            tag.as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    health.set_broker(true);
    metrics::gauge!(m::BROKER_CONNECTED).set(1.0);
    tracing::info!(queue = %shared.topology.work_queue, prefetch = cfg.prefetch, concurrency = cfg.concurrency, "consuming");

    let tracker = TaskTracker::new();
    let slots = Arc::new(Semaphore::new(cfg.concurrency));
    let ended: Result<(), BrokerError> = loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break Ok(()),
            next = consumer.next() => match next {
                Some(Ok(delivery)) => {
                    let permit = slots.clone().acquire_owned().await.expect("never closed");
                    let (shared, publish) = (shared.clone(), publish.clone());
                    tracker.spawn(async move {
                        metrics::gauge!(m::JOBS_IN_FLIGHT).increment(1.0);
                        settle(&shared, &publish, delivery).await;
                        metrics::gauge!(m::JOBS_IN_FLIGHT).decrement(1.0);
                        drop(permit);
                    });
                }
                Some(Err(e)) => break Err(e.into()),
                None => break Err(BrokerError::ConsumerEnded),
            }
        }
    };
    // Stop deliveries first, then let the jobs in flight finish.
    let _ = consume
        .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
        .await;
    tracker.close();
    if tokio::time::timeout(cfg.shutdown_grace, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            grace_secs = cfg.shutdown_grace.as_secs(),
            "jobs still in flight after the grace period; they will be redelivered"
        );
    }
    let _ = consume.close(200, "bye".into()).await;
    let _ = publish.close(200, "bye".into()).await;
    let _ = conn.close(200, "bye".into()).await;
    ended
}

/// Handle a delivery and ack or hand it back.
async fn settle(shared: &Shared, publish: &lapin::Channel, delivery: lapin::message::Delivery) {
    match handle(shared, publish, &delivery).await {
        Ok(()) => {
            if let Err(e) = delivery.acker.ack(BasicAckOptions::default()).await {
                // The outcome is recorded; the redelivery will see it and only re-report it.
                tracing::warn!(error = %e, "ack failed; the job will be redelivered and not sent again");
            }
        }
        Err(e) => {
            metrics::counter!(m::JOBS_REQUEUED).increment(1);
            tracing::error!(error = %e, "job outcome not recorded; handing it back to the broker");
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
