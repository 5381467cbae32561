//! Readiness: the broker flag set by the consumer, the database probed in
//! the background. `/readyz` only reads the last answers, so it replies at
//! once even while PostgreSQL hangs.

use sqlx::PgPool;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The `/readyz` URL of a worker listening on `bind` (an unspecified
/// address, `0.0.0.0` or `[::]`, is asked on loopback).
pub fn readyz_url(bind: &str) -> String {
    let port = bind.rsplit(':').next().unwrap_or("9464");
    let host = match bind.rsplit_once(':').map(|(h, _)| h) {
        None | Some("0.0.0.0") | Some("") => "127.0.0.1",
        Some("[::]") => "[::1]",
        Some(h) => h,
    };
    format!("http://{host}:{port}/readyz")
}

/// Ask a worker's `/readyz`: its answer when ready (200), else an error
/// naming what is not ready.
pub async fn ask(url: &str) -> anyhow::Result<String> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()?;
    let r = client.get(url).send().await.map_err(|e| {
        anyhow::anyhow!(
            "no answer from {url}: {e} (is the worker running, and is http.bind this address?)"
        )
    })?;
    let status = r.status();
    let body = r.text().await.unwrap_or_default();
    if status.is_success() {
        Ok(body)
    } else {
        anyhow::bail!("not ready ({status}) at {url}: {body}")
    }
}

/// `outreach health --json`: what [`ask`] found, as one JSON object:
/// `{url, ready: true, broker, database}` from the worker's answer, or
/// `{url, ready: false, error}`.
pub fn as_json(url: &str, answer: &anyhow::Result<String>) -> serde_json::Value {
    match answer {
        Ok(body) => {
            let mut doc = serde_json::json!({ "url": url, "ready": true });
            if let (Ok(serde_json::Value::Object(parts)), Some(d)) =
                (serde_json::from_str(body), doc.as_object_mut())
            {
                d.extend(parts);
            }
            doc
        }
        Err(e) => serde_json::json!({ "url": url, "ready": false, "error": format!("{e:#}") }),
    }
}

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

#[cfg(test)]
mod tests {
    use super::readyz_url;

    #[test]
    fn an_unspecified_bind_address_is_asked_on_loopback() {
        assert_eq!(readyz_url("0.0.0.0:9464"), "http://127.0.0.1:9464/readyz");
        assert_eq!(readyz_url("[::]:9000"), "http://[::1]:9000/readyz");
        assert_eq!(readyz_url("10.1.2.3:80"), "http://10.1.2.3:80/readyz");
    }
}
