//! Claims kept alive while their job is: a short lease, renewed.
//!
//! A claim holds a job's row for `worker.lease_secs`; another delivery of the
//! job that finds the lease live is delayed, not sent. While a job is in
//! this worker (from its claim to its recorded outcome) the lease is
//! renewed every third of that time, in one statement for all of them. So
//! the lease can be short: a worker that dies (SIGKILL) frees its jobs
//! within `lease_secs` instead of a lease long enough for the slowest send.

use sqlx::PgPool;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

type Key = (String, String);

/// The jobs this worker has claimed and not yet recorded.
#[derive(Default)]
pub struct Leases {
    kept: Mutex<HashSet<Key>>,
}

/// Keeps a job's lease renewed until dropped.
pub struct Kept<'a> {
    leases: &'a Leases,
    key: Key,
}

impl Drop for Kept<'_> {
    fn drop(&mut self) {
        self.leases.lock().remove(&self.key);
    }
}

impl Leases {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<Key>> {
        // A panic while holding it leaves a set that is still valid.
        self.kept.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Renew the lease of `tenant`'s job `job` while the guard lives.
    pub fn keep(&self, tenant: &str, job: &str) -> Kept<'_> {
        let key = (tenant.to_owned(), job.to_owned());
        self.lock().insert(key.clone());
        Kept { leases: self, key }
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Renew every kept lease every `lease / 3` until `stop` fires.
    pub fn spawn_renewal(
        self: &Arc<Self>,
        pool: PgPool,
        lease: Duration,
        stop: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let leases = self.clone();
        tokio::spawn(async move {
            let every = (lease / 3).max(Duration::from_millis(200));
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(every) => {}
                }
                let (tenants, jobs): (Vec<String>, Vec<String>) =
                    leases.lock().iter().cloned().unzip();
                if jobs.is_empty() {
                    continue;
                }
                let renewed = sqlx::query(
                    // Rows a record batch is settling right now are
                    // skipped (they stop needing a lease), not waited for:
                    // waiting on them in another order than the batch
                    // deadlocked both (seen in a soak).
                    "UPDATE outreach_logs AS l SET lease_until = now() + make_interval(secs => $3)
                      WHERE (l.tenant_id, l.job_id) IN (
                            SELECT o.tenant_id, o.job_id FROM outreach_logs o
                              JOIN UNNEST($1::text[], $2::text[]) AS t(tenant_id, job_id)
                                ON o.tenant_id = t.tenant_id AND o.job_id = t.job_id
                             WHERE o.status = 'processing'
                             FOR UPDATE OF o SKIP LOCKED)",
                )
                .bind(&tenants)
                .bind(&jobs)
                .bind(lease.as_secs_f64())
                .execute(&pool)
                .await;
                if let Err(e) = renewed {
                    // Another worker cannot claim them either while the
                    // database is down; the next round tries again.
                    tracing::warn!(error = %e, kept = jobs.len(), "could not renew leases");
                }
            }
        })
    }
}
