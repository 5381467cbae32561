//! Queue depths for `outreach_queue_messages`, sampled on a timer (not per
//! job) with passive declares: messages ready in the work queues, the held
//! queues (summed: one per tenant channel that waits), the retry delay tiers
//! and the dead-letter queue. Every worker samples, so dashboards and alerts
//! take `max by (queue)` over workers.

use super::Shared;
use crate::broker::{self, BrokerError};
use crate::metrics as m;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Sample every `every` until `stop` fires.
pub async fn run(
    shared: Arc<Shared>,
    conn: Arc<lapin::Connection>,
    every: Duration,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Err(e) = sample(&shared, &conn).await {
            tracing::debug!(error = %e, "cannot sample queue depths");
        }
    }
}

async fn sample(shared: &Shared, conn: &lapin::Connection) -> Result<(), BrokerError> {
    let t = &shared.topology;
    let work = t.work_depth(conn).await?;
    let mut retry = 0;
    for tier in &t.retry_tiers {
        retry += broker::queue_depth(conn, &t.retry_queue(*tier))
            .await?
            .unwrap_or(0);
    }
    let dead = broker::queue_depth(conn, &t.dead_letter_queue)
        .await?
        .unwrap_or(0);
    // Listing held queues needs PostgreSQL; without it, leave the last value.
    let held = match shared.holds.listed().await {
        Ok(list) => {
            let mut n = 0;
            for h in list {
                n += broker::queue_depth(conn, &h.queue).await?.unwrap_or(0);
            }
            Some(n)
        }
        Err(_) => None,
    };
    for (queue, n) in [
        ("work", Some(work)),
        ("retry", Some(retry)),
        ("dead_letter", Some(dead)),
        ("held", held),
    ] {
        if let Some(n) = n {
            metrics::gauge!(m::QUEUE_MESSAGES, "queue" => queue).set(f64::from(n));
        }
    }
    Ok(())
}
