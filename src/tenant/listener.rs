//! One LISTEN connection per worker: on `outreach_tenant_config`, drop the
//! named tenant's chains (cache invalidation); on `outreach_pauses`, pause
//! the account another worker saw a 429 from. After the connection drops,
//! notifications may have been lost, so every chain is invalidated once it
//! is back (a missed pause is learnt from the account's own next 429).

use super::Directory;
use super::store::NOTIFY_CHANNEL;
use crate::job::TenantId;
use crate::ratelimit::{PAUSES_CHANNEL, RateLimiter};
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Run until `shutdown`; reconnects on its own.
pub async fn run(
    pool: PgPool,
    directory: Arc<Directory>,
    limiter: Arc<RateLimiter>,
    shutdown: CancellationToken,
) {
    loop {
        let listening = async {
            let mut l = PgListener::connect_with(&pool).await?;
            l.listen_all([NOTIFY_CHANNEL, PAUSES_CHANNEL]).await?;
            // Whatever changed while we were not listening is unknown.
            directory.invalidate_all();
            tracing::debug!("listening for tenant config changes");
            loop {
                match l.try_recv().await? {
                    Some(n) if n.channel() == PAUSES_CHANNEL => limiter.announced(n.payload()),
                    Some(n) => match TenantId::parse(n.payload()) {
                        Ok(t) => directory.invalidate_tenant(&t).await,
                        Err(_) => directory.invalidate_all(),
                    },
                    // The connection dropped; the next try_recv reconnects.
                    None => {
                        tracing::warn!("tenant config listener reconnecting");
                        directory.invalidate_all();
                    }
                }
            }
            #[allow(unreachable_code)]
            Ok::<(), sqlx::Error>(())
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            r = listening => if let Err(e) = r {
                tracing::warn!(error = %e, "tenant config listener failed; retrying");
                directory.invalidate_all();
            },
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}
