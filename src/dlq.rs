//! The dead-letter queue (`{prefix}.dlq`): see what failed, and send it again.
//!
//! - [`letter`]: one dead-lettered message read back (job, tenant, reason,
//!   error, attempts, time) from the worker's `x-outreach-*` headers, else from
//!   the broker's `x-death` and the payload.
//! - [`filter`]: which letters a command applies to (`--tenant`, `--since`, `--reason`).
//! - `reader`: taking messages from the queue without removing them.
//! - [`list`] below, and [`replay`]: back to the jobs exchange, the delivery
//!   log row reset first.
//!
//! `outreach dlq list` and `outreach dlq replay` are in the binary (`src/cli/dlq.rs`).

pub mod filter;
pub mod letter;
mod reader;
pub mod replay;

pub use filter::{Filter, parse_since};
pub use letter::{DeadLetter, DeadLetteredBy};
pub use replay::{ReplayOptions, ReplayOutcome, ReplaySummary, replay};

use crate::broker::{self, BrokerError};
use crate::settings::Settings;
use reader::Reader;

/// Why a DLQ command could not run; each names what to fix.
#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error(
        "the dead-letter queue `{0}` does not exist: check amqp.prefix / OUTREACH__AMQP__PREFIX \
         (a worker declares it when it starts)"
    )]
    NoQueue(String),
    #[error(transparent)]
    Db(#[from] crate::db::DbError),
    #[error(
        "cannot use the delivery log (outreach_logs): {0} \
         (check database.url / OUTREACH__DATABASE__URL, and run `outreach migrate`)"
    )]
    Log(sqlx::Error),
    #[error(
        "the jobs exchange `{0}` routed the replayed job to no queue (is the work queue deleted? \
         a worker or `outreach enqueue` declares it); it stays in the dead-letter queue"
    )]
    Unroutable(String),
}

impl From<lapin::Error> for DlqError {
    fn from(e: lapin::Error) -> Self {
        DlqError::Broker(BrokerError::Amqp(e))
    }
}

/// What `dlq list` found.
#[derive(Debug)]
pub struct Listing {
    /// Matching letters, oldest in the queue first; at most `limit`.
    pub letters: Vec<DeadLetter>,
    /// Letters that matched (more than shown when `limit` cut the list).
    pub matched: usize,
    /// Messages in the queue when it was read.
    pub in_queue: u32,
    pub queue: String,
}

/// Read the dead-letter queue and return the letters that match, at most
/// `limit`. The queue is left as it was: every message is fetched unacked and
/// handed back (`basic.nack` with requeue, which RabbitMQ does not count as a
/// failed delivery) before returning. The whole queue is read even with a
/// limit: a quorum queue on RabbitMQ 3.x puts handed-back messages at its
/// end, so only a full turn keeps their order.
pub async fn list(
    settings: &Settings,
    filter: &Filter,
    limit: Option<usize>,
) -> Result<Listing, DlqError> {
    let queue = format!("{}.dlq", settings.amqp.prefix);
    let conn = broker::connect(&settings.amqp.nodes(), "dlq list").await?;
    let mut reader = Reader::open(&conn, &queue).await?;
    let in_queue = reader.in_queue();
    let (mut letters, mut matched) = (vec![], 0);
    let read = async {
        while let Some(delivery) = reader.next().await? {
            let letter = DeadLetter::read(&delivery.properties, &delivery.data);
            if filter.matches(&letter) {
                matched += 1;
                if limit.is_none_or(|n| letters.len() < n) {
                    letters.push(letter);
                }
            }
        }
        Ok::<_, DlqError>(())
    }
    .await;
    // Unacked messages also return when the connection closes, so a failed
    // hand-back loses nothing; the reading error is the one worth showing.
    let back = reader.put_back(&conn).await;
    let _ = conn.close(200, "bye".into()).await;
    read?;
    back?;
    Ok(Listing {
        letters,
        matched,
        in_queue,
        queue,
    })
}
