//! Readiness: the broker flag set by the consumer, the database checked live.

use sqlx::PgPool;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

pub struct Health {
    broker: AtomicBool,
    pool: PgPool,
}

impl Health {
    pub fn new(pool: PgPool) -> Self {
        Self {
            broker: AtomicBool::new(false),
            pool,
        }
    }

    pub fn set_broker(&self, up: bool) {
        self.broker.store(up, Ordering::Relaxed);
    }

    pub fn broker_up(&self) -> bool {
        self.broker.load(Ordering::Relaxed)
    }

    pub async fn database_up(&self) -> bool {
        let q = sqlx::query("SELECT 1").execute(&self.pool);
        matches!(
            tokio::time::timeout(Duration::from_secs(2), q).await,
            Ok(Ok(_))
        )
    }
}
