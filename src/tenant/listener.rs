//! Cache invalidation: LISTEN on `outreach_tenant_config` and drop the named
//! tenant's chains. After the connection drops, notifications may have been
//! lost, so everything is invalidated once it is back.

use super::Directory;
use super::store::NOTIFY_CHANNEL;
use crate::job::TenantId;
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Run until `shutdown`; reconnects on its own.
pub async fn run(pool: PgPool, directory: Arc<Directory>, shutdown: CancellationToken) {
    loop {
        let listening = async {
            let mut l = PgListener::connect_with(&pool).await?;
            l.listen(NOTIFY_CHANNEL).await?;
            // Whatever changed while we were not listening is unknown.
            directory.invalidate_all();
            tracing::debug!("listening for tenant config changes");
            loop {
                match l.try_recv().await? {
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
