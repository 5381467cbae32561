//! Test harness: a fresh database and broker names per test, the worker in
//! process or as the real binary, and a real SMTP server.
#![allow(dead_code)]

pub mod fake_providers;
pub mod servers;
pub mod smtp;
pub mod tenants;
pub mod webhooks;

use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicGetOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use outreach::broker::Topology;
use outreach::enqueue::JobPublisher;
use outreach::job::{Channel, Content, Job, JobId, Template, TenantId};
use outreach::provider::{ProviderContext, ProviderError};
use outreach::settings::Settings;
use sqlx::PgPool;
use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

pub const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
/// The shared PostgreSQL server (without a database name).
const POSTGRES: &str = "postgres://postgres@127.0.0.1:5432";

/// One test's private world: its own database and exchange / queue prefix.
pub struct TestEnv {
    /// The broker this test talks to (the shared one, or its own node).
    pub amqp_url: String,
    /// The PostgreSQL server its database is on (no database name).
    pub postgres: String,
    pub db_name: String,
    pub db_url: String,
    pub prefix: String,
    pub pool: PgPool,
    pub settings: Settings,
    pub topology: Topology,
    pub dir: tempfile::TempDir,
    /// Removes the world when the test ends without [`Self::cleanup`]
    /// (a failed assertion, a panic, an early return).
    pub teardown: Teardown,
}

/// What a test's world leaves on the servers: its database, and its
/// exchanges and queues (delay tiers and held queues included).
#[derive(Clone)]
struct World {
    amqp_url: String,
    postgres: String,
    db_name: String,
    db_url: String,
    topology: Topology,
}

impl World {
    /// Delete the broker's names (on `amqp_url`), then the database. The
    /// held queues are listed in the database: read through `pool`, or a
    /// connection of its own.
    async fn remove(&self, amqp_url: &str, pool: Option<&PgPool>) {
        let own = match pool {
            Some(_) => None,
            None => PgPool::connect(&self.db_url).await.ok(),
        };
        let nodes: Result<outreach::broker::Nodes, _> = amqp_url.parse();
        if let Some(pool) = pool.or(own.as_ref())
            && let Ok(nodes) = nodes
            && let Ok(conn) = outreach::broker::connect(&nodes, "test-cleanup").await
            && let Ok(ch) = conn.create_channel().await
        {
            // Tenants' held queues (rate limits), if any were made.
            let held: Vec<String> = sqlx::query_scalar("SELECT queue FROM held_queues")
                .fetch_all(pool)
                .await
                .unwrap_or_default();
            let _ = self.topology.delete(&ch, &held).await;
        }
        if let Some(own) = own {
            own.close().await;
        }
        if let Some(pool) = pool {
            pool.close().await;
        }
        if let Ok(admin) = PgPool::connect(&format!("{}/postgres", self.postgres)).await {
            let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.db_name
            )))
            .execute(&admin)
            .await;
        }
    }
}

/// Removes its world when dropped, unless disarmed by [`TestEnv::cleanup`].
pub struct Teardown(Option<World>);

impl Drop for Teardown {
    fn drop(&mut self) {
        let Some(world) = self.0.take() else { return };
        // Drop cannot await, and runs inside the test's runtime (which may
        // be unwinding): a thread with a runtime of its own, waited for.
        let removed = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            rt.block_on(async {
                let remove = world.remove(&world.amqp_url, None);
                let _ = tokio::time::timeout(Duration::from_secs(30), remove).await;
            });
        })
        .join();
        if removed.is_err() {
            eprintln!("could not remove a test's database and queues");
        }
    }
}

impl TestEnv {
    pub async fn new() -> Self {
        Self::on_broker(AMQP_URL).await
    }

    /// A test world whose broker is `amqp_url` (a node the test started).
    pub async fn on_broker(amqp_url: &str) -> Self {
        Self::on_servers(amqp_url, POSTGRES).await
    }

    /// A test world on `amqp_url` and the PostgreSQL server `postgres`
    /// (`postgres://user@host:port`, servers a fault test started).
    pub async fn on_servers(amqp_url: &str, postgres: &str) -> Self {
        let id = uuid::Uuid::now_v7().simple().to_string();
        let db_name = format!("outreach_test_{}", &id[id.len() - 16..]);
        let prefix = format!("t{}", &id[id.len() - 12..]);
        let admin = PgPool::connect(&format!("{postgres}/postgres"))
            .await
            .unwrap_or_else(|e| panic!("PostgreSQL must run at {postgres}: {e}"));
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db_name}")))
            .execute(&admin)
            .await
            .unwrap();
        admin.close().await;
        let db_url = format!("{postgres}/{db_name}");
        let mut settings = Settings::load(None).unwrap();
        // The shipped settings have no system default; these tests' jobs go
        // to the sandbox unless a test says otherwise (its sends are
        // `simulated`).
        settings.sandbox_where_no_default();
        settings.database.url = db_url.clone();
        settings.amqp.prefix = prefix.clone();
        settings.amqp.url = amqp_url.parse().unwrap();
        settings.http.bind = "127.0.0.1:0".into();
        settings.worker.retry_delays_secs = vec![1, 2, 5];
        // The tests' fake providers and SMTP servers listen on 127.0.0.1,
        // which provider calls may reach only when it is allow-listed.
        settings.allow_loopback();
        let pool = outreach::db::connect_creating(&settings.database)
            .await
            .unwrap();
        outreach::db::migrate(&pool).await.unwrap();
        let topology = Topology::new(&settings.amqp, &settings.worker.retry_delays_secs);
        let teardown = Teardown(Some(World {
            amqp_url: amqp_url.to_owned(),
            postgres: postgres.to_owned(),
            db_name: db_name.clone(),
            db_url: db_url.clone(),
            topology: topology.clone(),
        }));
        Self {
            amqp_url: amqp_url.to_owned(),
            postgres: postgres.to_owned(),
            db_name,
            db_url,
            prefix,
            pool,
            settings,
            topology,
            dir: tempfile::tempdir().unwrap(),
            teardown,
        }
    }

    /// The broker's node(s), as `amqp.url` reads them.
    pub fn nodes(&self) -> outreach::broker::Nodes {
        self.amqp_url.parse().unwrap()
    }

    /// The environment variables that point the real binary at this world.
    pub fn env_vars(&self) -> HashMap<String, String> {
        HashMap::from([
            ("OUTREACH__DATABASE__URL".into(), self.db_url.clone()),
            ("OUTREACH__AMQP__URL".into(), self.amqp_url.clone()),
            ("OUTREACH__AMQP__PREFIX".into(), self.prefix.clone()),
            ("OUTREACH__WORKER__RETRY_DELAYS_SECS".into(), "1,2,5".into()),
            (
                "OUTREACH__PROVIDERS__ALLOWED_PRIVATE_NETWORKS".into(),
                "127.0.0.1/32".into(),
            ),
            (
                "OUTREACH__DEFAULTS__EMAIL__PROVIDER".into(),
                "sandbox".into(),
            ),
            ("OUTREACH__DEFAULTS__SMS__PROVIDER".into(), "sandbox".into()),
            (
                "OUTREACH__DEFAULTS__WHATSAPP__PROVIDER".into(),
                "sandbox".into(),
            ),
            ("RUST_LOG".into(), "info".into()),
        ])
    }

    pub fn path(&self, name: &str) -> String {
        self.dir.path().join(name).to_string_lossy().into_owned()
    }

    /// Run the worker in this process until the returned token is cancelled.
    pub fn spawn_worker(
        &self,
        settings: Settings,
    ) -> (
        CancellationToken,
        tokio::task::JoinHandle<anyhow::Result<()>>,
    ) {
        let token = CancellationToken::new();
        let handle = tokio::spawn(outreach::app::run_worker(settings, token.clone()));
        (token, handle)
    }

    pub async fn publisher(&self) -> JobPublisher {
        JobPublisher::connect(&self.nodes(), &self.topology)
            .await
            .unwrap()
    }

    /// A private queue (gone with its connection) bound to `exchange` with
    /// `key`, on a connection of its own, the topology declared first.
    pub async fn tap(&self, exchange: &str, key: &str) -> Tap {
        let conn = outreach::broker::connect(&self.nodes(), "test-tap")
            .await
            .unwrap();
        let ch = conn.create_channel().await.unwrap();
        self.topology.declare(&ch).await.unwrap();
        let private = QueueDeclareOptions {
            exclusive: true,
            auto_delete: true,
            ..Default::default()
        };
        let queue = ch
            .queue_declare("".into(), private, FieldTable::default())
            .await
            .unwrap()
            .name()
            .to_string();
        ch.queue_bind(
            queue.as_str().into(),
            exchange.into(),
            key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
        Tap {
            _conn: conn,
            ch,
            queue,
        }
    }

    /// A queue bound to every delivery event, to read them back.
    pub async fn event_queue(&self) -> EventTap {
        let Tap {
            _conn: conn,
            ch,
            queue: q,
        } = self.tap(&self.topology.events_exchange, "#").await;
        let consumer = ch
            .basic_consume(
                q.as_str().into(),
                "".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        EventTap {
            _conn: conn,
            consumer,
        }
    }

    /// Drain the dead-letter queue: (headers as strings, body).
    pub async fn dead_letters(&self) -> Vec<(HashMap<String, String>, Vec<u8>)> {
        let conn = outreach::broker::connect(&self.nodes(), "test-dlq")
            .await
            .unwrap();
        let ch = conn.create_channel().await.unwrap();
        let mut out = vec![];
        while let Some(msg) = ch
            .basic_get(
                self.topology.dead_letter_queue.as_str().into(),
                BasicGetOptions::default(),
            )
            .await
            .unwrap()
        {
            let mut headers = HashMap::new();
            if let Some(h) = msg.delivery.properties.headers() {
                for (k, v) in h.inner() {
                    let s = match v {
                        lapin::types::AMQPValue::LongString(s) => {
                            String::from_utf8_lossy(s.as_bytes()).into_owned()
                        }
                        other => format!("{other:?}"),
                    };
                    headers.insert(k.to_string(), s);
                }
            }
            msg.delivery
                .acker
                .ack(BasicAckOptions::default())
                .await
                .unwrap();
            out.push((headers, msg.delivery.data));
        }
        out
    }

    /// Whether job `id` has a `simulated` log row (the sandbox, these
    /// tests' default provider, accepted it).
    pub async fn is_simulated(&self, id: &str) -> bool {
        self.log_rows()
            .await
            .iter()
            .any(|(j, s, _)| j == id && s == "simulated")
    }

    /// Have worker processes started with `vars` record the emails the
    /// sandbox (the default email provider) sends, one JSON line each, to a
    /// file in the test's directory; returns its path.
    pub fn record_emails(&self, vars: &mut HashMap<String, String>) -> String {
        let record = self.path("sandbox.jsonl");
        vars.insert(
            "OUTREACH__DEFAULTS__EMAIL__RECORD_FILE".into(),
            record.clone(),
        );
        record
    }

    /// Rows of outreach_logs as (job_id, status, provider).
    pub async fn log_rows(&self) -> Vec<(String, String, Option<String>)> {
        sqlx::query_as("SELECT job_id, status::text, provider FROM outreach_logs ORDER BY job_id")
            .fetch_all(&self.pool)
            .await
            .unwrap()
    }

    pub async fn count_final(&self) -> i64 {
        sqlx::query_scalar(
            "SELECT count(*) FROM outreach_logs WHERE status IN ('sent','simulated','failed','expired')",
        )
        .fetch_one(&self.pool)
        .await
        .unwrap()
    }

    /// Remove this test's queues, exchanges and database.
    pub async fn cleanup(mut self) {
        if let Some(world) = self.teardown.0.take() {
            // Its broker as the test last set it (a cluster test may have
            // moved it to other nodes).
            world.remove(&self.amqp_url, Some(&self.pool)).await;
        }
    }
}

/// A private queue on an exchange; read it with `ch`.
pub struct Tap {
    _conn: lapin::Connection,
    pub ch: lapin::Channel,
    pub queue: String,
}

/// Delivery events as they arrive.
pub struct EventTap {
    _conn: lapin::Connection,
    consumer: lapin::Consumer,
}

impl EventTap {
    /// The next event (routing key, JSON body), or None after `within`.
    pub async fn next(&mut self, within: Duration) -> Option<(String, serde_json::Value)> {
        let d = tokio::time::timeout(within, self.consumer.next())
            .await
            .ok()??
            .ok()?;
        Some((
            d.routing_key.to_string(),
            serde_json::from_slice(&d.data).unwrap(),
        ))
    }
}

/// Poll `check` until it returns true; panic with `what` after `limit`.
/// (A deadline for failing, not a timing assertion.)
pub async fn eventually<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !check().await {
        assert!(start.elapsed() < limit, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The real `outreach` binary as a child process.
pub struct Binary {
    pub child: Child,
    /// Where its health and metrics endpoints listen (127.0.0.1).
    pub http_port: u16,
}

impl Binary {
    /// `outreach worker` with `env`; its HTTP server on a free port unless
    /// `env` sets `OUTREACH__HTTP__BIND`, so workers never collide on the
    /// default port.
    pub fn worker(env: &HashMap<String, String>) -> Self {
        Self::worker_with_stderr(env, Stdio::inherit())
    }

    /// The same, its log (stderr) going to `stderr`, e.g. a file to read back.
    pub fn worker_with_stderr(env: &HashMap<String, String>, stderr: impl Into<Stdio>) -> Self {
        let (bind, http_port) = match env.get("OUTREACH__HTTP__BIND") {
            Some(b) => (b.clone(), b.rsplit(':').next().unwrap().parse().unwrap()),
            None => {
                let port = free_port();
                (format!("127.0.0.1:{port}"), port)
            }
        };
        let child = Command::new(env!("CARGO_BIN_EXE_outreach"))
            .arg("worker")
            .envs(env)
            .env("OUTREACH__HTTP__BIND", bind)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn outreach worker");
        Self { child, http_port }
    }

    /// Send SIGTERM and wait for the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        self.child.wait().unwrap()
    }

    /// SIGKILL: no chance to finish anything.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A failing test must not leave its worker running (it would hold the
/// test's output pipe open and keep consuming).
impl Drop for Binary {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Run `outreach <args>` to completion; returns its exit status, stdout
/// and stderr, whether it succeeded or not.
pub fn cli_output(env: &HashMap<String, String>, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_outreach"))
        .args(args)
        .envs(env)
        .output()
        .expect("run outreach")
}

/// Run `outreach <args>` to completion; returns stdout.
pub fn run_cli(env: &HashMap<String, String>, args: &[&str]) -> String {
    let out = cli_output(env, args);
    assert!(
        out.status.success(),
        "outreach {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// GET a URL on 127.0.0.1, returning (status, body).
pub async fn http_get(url: &str) -> (u16, String) {
    match reqwest::get(url).await {
        Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
        Err(_) => (0, String::new()),
    }
}

pub fn email_payload(id: &str, tenant: &str, to: &str) -> serde_json::Value {
    serde_json::json!({"version": 1, "job_id": id, "tenant_id": tenant, "channel": "email", "recipient": to,
        "content": {"subject": format!("Reminder {id}"), "text": "See you Tuesday."}, "metadata": {"case": id}})
}

// Jobs and contexts for calling provider adapters directly.

/// A context like production's, with no status callbacks, that may reach
/// the fakes on 127.0.0.1 (allow-listed, as an operator would).
pub fn context() -> ProviderContext {
    ProviderContext::new(Duration::from_secs(10), Duration::from_secs(5), None)
        .with_network(loopback())
}

/// The network policy of the tests: public addresses and 127.0.0.1.
pub fn loopback() -> outreach::provider::net::NetworkPolicy {
    outreach::provider::net::NetworkPolicy::allowing(&["127.0.0.1/32"]).unwrap()
}

pub fn job(channel: Channel, recipient: &str, content: Content) -> Job {
    let mut metadata = serde_json::Map::new();
    metadata.insert("first_name".into(), "Ada".into());
    Job {
        id: JobId::parse("job-42").unwrap(),
        tenant_id: TenantId::parse("clinic-7").unwrap(),
        channel,
        recipient: recipient.to_owned(),
        content,
        metadata: Some(metadata),
        not_after: None,
    }
}

pub fn email_job() -> Job {
    job(
        Channel::Email,
        "patient@example.org",
        Content::Email {
            subject: "Your appointment".into(),
            text: Some("See you at 10:00.".into()),
            html: Some("<p>See you at 10:00.</p>".into()),
        },
    )
}

pub fn text_job(channel: Channel) -> Job {
    job(
        channel,
        "+447700900123",
        Content::Text {
            text: "See you at 10:00.".into(),
        },
    )
}

pub fn template_job() -> Job {
    job(
        Channel::Whatsapp,
        "+447700900123",
        Content::Template {
            template: Template {
                name: "appointment_reminder".into(),
                language: "en_GB".into(),
                parameters: vec!["Ada".into(), "10:00".into()],
            },
        },
    )
}

/// The secret appears nowhere in what an error shows.
pub fn assert_secret_hidden(e: &ProviderError, secret: &str) {
    let shown = format!("{e} {e:?}");
    assert!(!shown.contains(secret), "secret leaked: {shown}");
}
