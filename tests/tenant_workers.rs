//! Tenant config through the real binary: changes reach every worker, and
//! credentials never leak into logs, events, metrics or the admin API.

use crate::support;

use std::collections::HashMap;
use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::fake_providers::{self as fake, SENDGRID_KEY};
use support::{TestEnv, email_payload, eventually, free_port, http_get, run_cli};
use wiremock::MockServer;

const KEY: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
const OPERATOR: &str = "operator-token-for-leak-test";

/// A worker whose stderr is captured.
struct Worker {
    child: Child,
    stderr: Arc<Mutex<String>>,
    reader: std::thread::JoinHandle<()>,
    port: u16,
}

impl Worker {
    fn start(env: &HashMap<String, String>) -> Self {
        let port = free_port();
        let mut child = Command::new(env!("CARGO_BIN_EXE_outreach"))
            .arg("worker")
            .envs(env)
            .env("OUTREACH__HTTP__BIND", format!("127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn outreach worker");
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut pipe = child.stderr.take().unwrap();
        let sink = stderr.clone();
        let reader = std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Self {
            child,
            stderr,
            reader,
            port,
        }
    }

    /// SIGTERM, wait, and return everything it wrote to stderr.
    fn stop(mut self) -> String {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        self.child.wait().unwrap();
        self.reader.join().unwrap();
        self.stderr.lock().unwrap().clone()
    }
}

fn env_with_keys(env: &TestEnv) -> HashMap<String, String> {
    let mut vars = env.env_vars();
    vars.insert("OUTREACH_ENCRYPTION_KEYS".into(), format!("k1:{KEY}"));
    vars.insert(
        "OUTREACH__ADMIN__OPERATOR_TOKEN_SHA256".into(),
        outreach::admin_api::hash_token(OPERATOR),
    );
    vars
}

fn set_sendgrid(env: &TestEnv, vars: &HashMap<String, String>, server: &MockServer) {
    let file = env.path("email.json");
    let cfg = serde_json::json!({"fallback_to_system": false, "chain": [
        {"provider": "sendgrid", "api_key": SENDGRID_KEY, "from_email": "a@clinic.example", "base_url": server.uri()}
    ]});
    std::fs::write(&file, cfg.to_string()).unwrap();
    run_cli(
        vars,
        &[
            "tenant",
            "set",
            "clinic-1",
            "--channel",
            "email",
            "--file",
            &file,
        ],
    );
}

async fn received(server: &MockServer) -> usize {
    server.received_requests().await.unwrap_or_default().len()
}

async fn send_and_wait(env: &TestEnv, ids: &[String]) {
    let publisher = env.publisher().await;
    for id in ids {
        publisher
            .publish(
                &serde_json::to_vec(&email_payload(id, "clinic-1", "patient@example.org")).unwrap(),
            )
            .await
            .unwrap();
    }
    let wanted: Vec<String> = ids.to_vec();
    eventually(Duration::from_secs(30), "jobs final", || {
        let wanted = wanted.clone();
        let pool = env.pool.clone();
        async move {
            let n: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM outreach_logs WHERE job_id = ANY($1) AND status IN ('sent','simulated','failed','expired')",
            )
            .bind(&wanted)
            .fetch_one(&pool)
            .await
            .unwrap();
            n == wanted.len() as i64
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_config_reaches_both_workers_without_a_restart() {
    let env = TestEnv::new().await;
    let vars = env_with_keys(&env);
    let a = fake::serve("/v3/mail/send", fake::Sendgrid).await;
    let b = fake::serve("/v3/mail/send", fake::Sendgrid).await;
    set_sendgrid(&env, &vars, &a);
    let workers = [Worker::start(&vars), Worker::start(&vars)];

    send_and_wait(&env, &["job-a-1".into()]).await;
    assert_eq!((received(&a).await, received(&b).await), (1, 0));

    set_sendgrid(&env, &vars, &b);
    // Probe until one job lands on B (the NOTIFY is asynchronous), then every
    // later job must too, whichever worker takes it.
    let mut probe = 0;
    while received(&b).await == 0 {
        probe += 1;
        assert!(probe <= 50, "no job reached provider B");
        send_and_wait(&env, &[format!("probe-{probe}")]).await;
    }
    let on_a = received(&a).await;
    let ids: Vec<String> = (0..12).map(|i| format!("job-b-{i}")).collect();
    send_and_wait(&env, &ids).await;

    assert_eq!(received(&a).await, on_a, "a job still went to provider A");
    assert_eq!(received(&b).await, 12 + 1);
    for w in workers {
        w.stop();
    }
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_credential_appears_in_debug_logs_events_metrics_or_admin_answers() {
    let env = TestEnv::new().await;
    let mut vars = env_with_keys(&env);
    vars.insert("RUST_LOG".into(), "debug".into());
    let server = fake::serve("/v3/mail/send", fake::Sendgrid).await;
    set_sendgrid(&env, &vars, &server);
    let mut events = env.event_queue().await;
    let worker = Worker::start(&vars);

    let ids: Vec<String> = (0..5).map(|i| format!("leak-{i}")).collect();
    send_and_wait(&env, &ids).await;
    assert_eq!(
        received(&server).await,
        5,
        "the tenant's credentials were used"
    );
    let mut seen = String::new();
    while let Some((key, body)) = events.next(Duration::from_millis(500)).await {
        seen.push_str(&format!("{key} {body}\n"));
    }
    let base = format!("http://127.0.0.1:{}", worker.port);
    let (_, metrics) = http_get(&format!("{base}/metrics")).await;
    let admin = reqwest::Client::new()
        .get(format!("{base}/admin/v1/tenants/clinic-1/messaging"))
        .bearer_auth(OPERATOR)
        .send()
        .await
        .unwrap();
    assert_eq!(admin.status().as_u16(), 200);
    let admin = admin.text().await.unwrap();
    let logs = worker.stop();

    assert!(seen.contains("leak-0"), "events were captured");
    assert!(logs.contains("DEBUG"), "debug logging was on");
    let secret_part = &SENDGRID_KEY[3..];
    for (what, text) in [
        ("stderr", &logs),
        ("events", &seen),
        ("metrics", &metrics),
        ("admin", &admin),
    ] {
        assert!(!text.contains(secret_part), "credential leaked in {what}");
        assert!(!text.contains(KEY), "encryption key leaked in {what}");
    }
    env.cleanup().await;
}
