//! Readiness: the broker flag set by the consumer, the database probed in
//! the background. `/readyz` only reads the last answers, so it replies at
//! once even while PostgreSQL hangs.

use sqlx::PgPool;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often the database is probed, and how long one probe may take.
pub const PROBE_EVERY: Duration = Duration::from_secs(1);

pub struct Health {
    broker: AtomicBool,
    database: AtomicBool,
    pool: PgPool,
}

impl Health {
    pub fn new(pool: PgPool) -> Self {
        Self {
            broker: AtomicBool::new(false),
            database: AtomicBool::new(false),
            pool,
        }
    }

    /// Probe the database every [`PROBE_EVERY`] until `stop` fires. A probe
    /// that does not answer within that time counts as down.
    pub fn spawn_probe(self: &Arc<Self>, stop: CancellationToken) -> tokio::task::JoinHandle<()> {
        let health = self.clone();
        tokio::spawn(async move {
            loop {
                let q = sqlx::query("SELECT 1").execute(&health.pool);
                let up = matches!(tokio::time::timeout(PROBE_EVERY, q).await, Ok(Ok(_)));
                if health.database.swap(up, Ordering::Relaxed) != up {
                    if up {
                        tracing::info!("database answers: ready as far as it goes");
                    } else {
                        tracing::warn!("database does not answer: not ready");
                    }
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(PROBE_EVERY) => {}
                }
            }
        })
    }

    /// Whether the worker has a broker session that consumes: false from the
    /// moment a session ends until the next one is consuming.
    pub fn set_broker(&self, up: bool) {
        self.broker.store(up, Ordering::Relaxed);
    }

    pub fn broker_up(&self) -> bool {
        self.broker.load(Ordering::Relaxed)
    }

    /// The last probe's answer (at most [`PROBE_EVERY`] old, plus one probe).
    pub fn database_up(&self) -> bool {
        self.database.load(Ordering::Relaxed)
    }
}
