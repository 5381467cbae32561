//! The bench's private world: a fresh database with its tenants, the system
//! default providers pointed at the fake, and the workers under test (tasks
//! in this process, or `outreach worker` child processes).

use anyhow::Context;
use outreach::provider::ProviderSettings;
use outreach::settings::Settings;
use outreach::{app, db};
use sqlx::PgPool;
use std::process::{Child, Command, Stdio};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Point `settings` at a database of its own name and create it, migrated.
pub async fn fresh_database(settings: &mut Settings, name: &str) -> anyhow::Result<PgPool> {
    let mut url = url::Url::parse(&settings.database.url).context("database.url")?;
    url.set_path(&format!("/{name}"));
    settings.database.url = url.to_string();
    let pool = db::connect_creating(&settings.database).await?;
    db::migrate(&pool).await?;
    Ok(pool)
}

/// Drop the bench database (closing other sessions first).
pub async fn drop_database(settings: &Settings, name: &str) -> anyhow::Result<()> {
    let mut url = url::Url::parse(&settings.database.url)?;
    url.set_path("/postgres");
    let admin = PgPool::connect(url.as_str()).await?;
    let sql = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .execute(&admin)
        .await?;
    admin.close().await;
    Ok(())
}

/// The held queues the run's workers made (deleted with the topology).
pub async fn held_queues(settings: &Settings) -> Vec<String> {
    let Ok(pool) = PgPool::connect(&settings.database.url).await else {
        return vec![];
    };
    let queues = sqlx::query_scalar("SELECT queue FROM held_queues")
        .fetch_all(&pool)
        .await
        .unwrap_or_default();
    pool.close().await;
    queues
}

/// The id of bench tenant `i`.
pub fn tenant_id(i: usize) -> String {
    format!("bench-tenant-{i}")
}

/// What the bench creates for one tenant.
pub struct TenantSpec {
    pub id: String,
    pub name: String,
}

/// Configure tenant `i`: every tenant uses the system default providers
/// (at the fake), so a tenant is only its row; the noisy scenario adds a
/// rate limit to its tenant 0 ([`limit_tenant`]).
pub fn configure_tenant(i: usize) -> TenantSpec {
    let id = tenant_id(i);
    TenantSpec {
        name: format!("Bench clinic {i}"),
        id,
    }
}

/// Create tenants `range` as [`configure_tenant`] describes them (one statement).
pub async fn configure_tenants(pool: &PgPool, range: std::ops::Range<usize>) -> anyhow::Result<()> {
    let (ids, names): (Vec<String>, Vec<String>) =
        range.map(configure_tenant).map(|t| (t.id, t.name)).unzip();
    sqlx::query(
        "INSERT INTO tenants (id, name) SELECT * FROM UNNEST($1::text[], $2::text[])
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(&ids)
    .bind(&names)
    .execute(pool)
    .await?;
    Ok(())
}

/// Give tenant `i` a limit of `per_second` on every channel (system default
/// providers, no chain of its own).
pub async fn limit_tenant(pool: &PgPool, i: usize, per_second: u32) -> anyhow::Result<()> {
    let store = outreach::tenant::TenantStore::new(
        pool.clone(),
        std::sync::Arc::new(outreach::crypto::KeyRing::new(&[], None)?),
    );
    let tenant = outreach::job::TenantId::parse(&tenant_id(i))?;
    for channel in outreach::job::Channel::ALL {
        let cfg = outreach::tenant::ChannelConfig::from_json(
            serde_json::json!({"chain": [], "fallback_to_system": true,
                "rate_limits": {"per_second": per_second}}),
            channel,
        )?;
        store.put(&tenant, channel, &cfg, "bench").await?;
    }
    Ok(())
}

/// A well-formed (fake) Twilio account SID.
const ACCOUNT_SID: &str = "AC0123456789abcdef0123456789abcdef";

/// System defaults: SendGrid for email, Twilio for SMS and WhatsApp, all at the fake.
pub fn point_defaults_at(settings: &mut Settings, fake_base: &str) -> anyhow::Result<()> {
    let p = |v: serde_json::Value| -> anyhow::Result<Option<ProviderSettings>> {
        Ok(Some(serde_json::from_value(v)?))
    };
    settings.defaults.email = p(serde_json::json!({
        "provider": "sendgrid", "api_key": "SG.bench-key", "from_email": "bench@example.com",
        "base_url": fake_base}))?;
    let twilio = serde_json::json!({
        "provider": "twilio", "account_sid": ACCOUNT_SID, "auth_token": "bench-token",
        "from": "+14155550100", "base_url": fake_base});
    settings.defaults.sms = p(twilio.clone())?;
    settings.defaults.whatsapp = p(twilio)?;
    // The fake has no per-number limit: the bench measures our code, not Twilio's.
    settings.rate_limits.provider_per_second.sendgrid = 0;
    settings.rate_limits.provider_per_second.twilio = 0;
    // The fake listens on 127.0.0.1, which provider calls may not reach
    // unless allow-listed.
    settings.allow_loopback();
    settings.validate()?;
    Ok(())
}

/// The same settings as environment variables, for `outreach worker` children.
pub fn worker_env(settings: &Settings, fake_base: &str) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = [
        ("DATABASE__URL", settings.database.url.clone()),
        ("AMQP__URL", settings.amqp.url.expose_urls()),
        ("AMQP__PREFIX", settings.amqp.prefix.clone()),
        ("AMQP__PREFETCH", settings.amqp.prefetch.to_string()),
        (
            "WORKER__CONCURRENCY",
            settings.worker.concurrency.to_string(),
        ),
        ("HTTP__BIND", format!("127.0.0.1:{}", free_port())),
        ("TELEMETRY__FILTER", "warn".into()),
        ("DEFAULTS__EMAIL__PROVIDER", "sendgrid".into()),
        ("DEFAULTS__EMAIL__API_KEY", "SG.bench-key".into()),
        ("DEFAULTS__EMAIL__FROM_EMAIL", "bench@example.com".into()),
        ("DEFAULTS__EMAIL__BASE_URL", fake_base.into()),
        ("RATE_LIMITS__PROVIDER_PER_SECOND__SENDGRID", "0".into()),
        ("RATE_LIMITS__PROVIDER_PER_SECOND__TWILIO", "0".into()),
        (
            "PROVIDERS__ALLOWED_PRIVATE_NETWORKS",
            settings.providers.allowed_private_networks.join(","),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (format!("OUTREACH__{k}"), v))
    .collect();
    for ch in ["SMS", "WHATSAPP"] {
        for (k, v) in [
            ("PROVIDER", "twilio"),
            ("ACCOUNT_SID", ACCOUNT_SID),
            ("AUTH_TOKEN", "bench-token"),
            ("FROM", "+14155550100"),
            ("BASE_URL", fake_base),
        ] {
            env.push((format!("OUTREACH__DEFAULTS__{ch}__{k}"), v.into()));
        }
    }
    env
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

/// The workers under test.
pub enum Workers {
    InProcess(Vec<(CancellationToken, JoinHandle<anyhow::Result<()>>)>),
    Children(Vec<Child>),
}

impl Workers {
    /// `n` workers via [`app::run_worker`], each with its own token.
    pub fn in_process(settings: &Settings, n: usize) -> Workers {
        let mut s = settings.clone();
        s.http.bind = "127.0.0.1:0".into();
        s.worker.migrate_on_start = false;
        Workers::InProcess(
            (0..n)
                .map(|_| {
                    let token = CancellationToken::new();
                    let task = tokio::spawn(app::run_worker(s.clone(), token.clone()));
                    (token, task)
                })
                .collect(),
        )
    }

    /// `n` `outreach worker --no-migrate` child processes.
    pub fn processes(settings: &Settings, fake_base: &str, n: usize) -> anyhow::Result<Workers> {
        let exe = std::env::current_exe().context("cannot find the outreach binary")?;
        let mut children = Vec::with_capacity(n);
        for _ in 0..n {
            let spawned = Command::new(&exe)
                .args(["worker", "--no-migrate"])
                .envs(worker_env(settings, fake_base))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .context("spawn outreach worker");
            match spawned {
                Ok(c) => children.push(c),
                Err(e) => {
                    // The ones already running must not outlive the bench.
                    terminate(&children);
                    for mut c in children {
                        let _ = c.wait();
                    }
                    return Err(e);
                }
            }
        }
        Ok(Workers::Children(children))
    }

    /// Process ids, for `/proc` sampling (`None`: this process).
    pub fn pids(&self) -> Option<Vec<u32>> {
        match self {
            Workers::InProcess(_) => None,
            Workers::Children(c) => Some(c.iter().map(Child::id).collect()),
        }
    }

    /// An error when a worker has stopped by itself (its listener's port
    /// taken, a setting it refused…): the bench cannot go on without it.
    /// The stopped worker is removed, so [`Workers::stop`] still stops the rest.
    pub async fn check(&mut self) -> anyhow::Result<()> {
        match self {
            Workers::InProcess(ws) => {
                let Some(i) = ws.iter().position(|(_, task)| task.is_finished()) else {
                    return Ok(());
                };
                let (_, task) = ws.remove(i);
                match task.await {
                    Ok(Err(e)) => Err(e.context(format!("bench worker {i} stopped"))),
                    Ok(Ok(())) => anyhow::bail!("bench worker {i} stopped without being asked"),
                    Err(e) => anyhow::bail!("bench worker {i} stopped: {e}"),
                }
            }
            Workers::Children(children) => {
                for i in 0..children.len() {
                    if let Some(status) = children[i].try_wait()? {
                        let pid = children[i].id();
                        // Reaped by try_wait; this only hands back its status.
                        children.remove(i).wait()?;
                        anyhow::bail!(
                            "bench worker process {pid} exited ({status}); its error is above"
                        );
                    }
                }
                Ok(())
            }
        }
    }

    /// Graceful stop: cancel / SIGTERM, then wait.
    pub async fn stop(self) -> anyhow::Result<()> {
        match self {
            Workers::InProcess(ws) => {
                for (token, _) in &ws {
                    token.cancel();
                }
                for (_, task) in ws {
                    task.await??;
                }
            }
            Workers::Children(children) => {
                terminate(&children);
                for mut c in children {
                    tokio::task::spawn_blocking(move || c.wait()).await??;
                }
            }
        }
        Ok(())
    }
}

/// SIGTERM to each child (a graceful stop).
fn terminate(children: &[Child]) {
    for c in children {
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
    }
}

/// The bench's workers while they run: kept here rather than on a phase's
/// stack, so that whatever ends the run (an error, SIGINT, SIGTERM) can stop
/// them before their queues are deleted (a worker still running would
/// declare them again).
#[derive(Default)]
pub struct Fleet(tokio::sync::Mutex<Option<Workers>>);

impl Fleet {
    pub async fn start(&self, workers: Workers) {
        *self.0.lock().await = Some(workers);
    }

    /// See [`Workers::check`].
    pub async fn check(&self) -> anyhow::Result<()> {
        match self.0.lock().await.as_mut() {
            Some(w) => w.check().await,
            None => Ok(()),
        }
    }

    /// Stop the workers, if any run.
    pub async fn stop(&self) -> anyhow::Result<()> {
        let workers = self.0.lock().await.take();
        match workers {
            Some(w) => w.stop().await,
            None => Ok(()),
        }
    }
}
