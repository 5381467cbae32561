//! Taking messages from the dead-letter queue without removing them.

use super::DlqError;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicGetOptions, BasicNackOptions};
use lapin::{Channel, Connection};
use std::time::{Duration, Instant};

/// Fetches the queue's messages one by one, unacked, on its own channel.
/// Nothing leaves the queue unless [`Reader::remove`] acks it; the rest go
/// back with [`Reader::put_back`] (or when the channel closes).
pub struct Reader {
    channel: Channel,
    queue: String,
    /// Messages in the queue when it was opened: reading stops there, so
    /// letters dead-lettered meanwhile (a replayed job failing again) are not
    /// taken a second time in the same run.
    in_queue: u32,
    fetched: u32,
    /// Delivery tags fetched and not removed.
    unsettled: Vec<u64>,
    removed: u32,
}

impl Reader {
    /// Open the queue; a missing queue is an error (it is never created here).
    pub async fn open(conn: &Connection, queue: &str) -> Result<Self, DlqError> {
        let in_queue = depth(conn, queue).await?;
        let channel = conn.create_channel().await?;
        Ok(Self {
            channel,
            queue: queue.to_owned(),
            in_queue,
            fetched: 0,
            unsettled: vec![],
            removed: 0,
        })
    }

    pub fn in_queue(&self) -> u32 {
        self.in_queue
    }

    /// The next message, unacked; `None` at the end.
    pub async fn next(&mut self) -> Result<Option<Delivery>, DlqError> {
        if self.fetched >= self.in_queue {
            return Ok(None);
        }
        let got = self
            .channel
            .basic_get(
                self.queue.as_str().into(),
                BasicGetOptions { no_ack: false },
            )
            .await?;
        Ok(got.map(|m| {
            self.fetched += 1;
            self.unsettled.push(m.delivery.delivery_tag);
            m.delivery
        }))
    }

    /// Remove one fetched message from the queue.
    pub async fn remove(&mut self, delivery: &Delivery) -> Result<(), DlqError> {
        delivery.acker.ack(BasicAckOptions::default()).await?;
        self.unsettled.retain(|t| *t != delivery.delivery_tag);
        self.removed += 1;
        Ok(())
    }

    /// Return every fetched message not removed and close the channel; then
    /// wait (up to [`SETTLE`]) until the queue shows them again, because a
    /// quorum queue applies returns asynchronously and a command run right
    /// after this one would otherwise miss them. Returns how many of the
    /// messages that were there at the start are left.
    pub async fn put_back(self, conn: &Connection) -> Result<u32, DlqError> {
        // `nack`, not `reject`: RabbitMQ 4 quorum queues count a reject as a
        // failed delivery towards their delivery limit, a nack not. `multiple`
        // up to the newest unsettled tag: the removed ones below it are acked
        // already, and naming an acked tag is a channel error.
        if let Some(&tag) = self.unsettled.iter().max() {
            self.channel
                .basic_nack(
                    tag,
                    BasicNackOptions {
                        multiple: true,
                        requeue: true,
                    },
                )
                .await?;
        }
        self.channel.close(200, "done".into()).await?;
        let left = self.in_queue - self.removed;
        let start = Instant::now();
        while depth(conn, &self.queue).await? < left && start.elapsed() < SETTLE {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(left)
    }
}

/// Longest wait for returned messages to show in the queue again.
const SETTLE: Duration = Duration::from_secs(2);

/// Messages ready in `queue`.
pub async fn depth(conn: &Connection, queue: &str) -> Result<u32, DlqError> {
    crate::broker::queue_depth(conn, queue)
        .await?
        .ok_or_else(|| DlqError::NoQueue(queue.to_owned()))
}
