//! `outreach bench` on a shared machine: it says where it works (under
//! `amqp.prefix`), fails at once with the reason when its workers cannot
//! start, and removes its queues, exchanges and database on every exit,
//! including SIGINT and SIGTERM.

use crate::support;

use lapin::options::ExchangeDeclareOptions;
use lapin::types::FieldTable;
use outreach::broker::{self, Topology};
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;
use support::{TestEnv, eventually};

/// `outreach bench` running, its stderr read line by line on a thread.
struct Bench {
    child: Child,
    lines: mpsc::Receiver<String>,
    /// Every line read so far.
    said: String,
}

impl Bench {
    /// `outreach bench <args>` with the test's world.
    fn spawn(vars: &HashMap<String, String>, args: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_outreach"))
            .arg("bench")
            .args(args)
            .envs(vars)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn outreach bench");
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            lines,
            said: String::new(),
        }
    }

    /// The bench's first line, `bench <id>: database outreach_bench_<id>, …`:
    /// the run id. (The bound only keeps a bench that never says it from
    /// hanging the test.)
    fn run_id(&mut self) -> String {
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(60)) {
            self.said.push_str(&line);
            self.said.push('\n');
            if let Some(rest) = line.strip_prefix("bench ")
                && let Some((id, _)) = rest.split_once(':')
            {
                return id.to_owned();
            }
        }
        panic!("the bench never said where it works:\n{}", self.said);
    }

    /// Wait for it to exit; its status, and everything it said.
    fn wait(&mut self) -> (std::process::ExitStatus, String) {
        let status = self.child.wait().unwrap();
        while let Ok(line) = self.lines.recv() {
            self.said.push_str(&line);
            self.said.push('\n');
        }
        (status, self.said.clone())
    }
}

/// A failing test must not leave its bench running.
impl Drop for Bench {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The bench's two prefixes (pipeline and baseline) under the test's prefix.
fn bench_prefixes(env: &TestEnv, id: &str) -> [String; 2] {
    let p = format!("{}.bench-{id}", env.prefix);
    [p.clone(), format!("{p}-base")]
}

/// Queues and exchanges of the bench's topologies that still exist.
async fn broker_leftovers(env: &TestEnv, id: &str) -> Vec<String> {
    let conn = broker::connect(&env.nodes(), "test-leftovers")
        .await
        .unwrap();
    let mut left = vec![];
    for p in bench_prefixes(env, id) {
        let mut s = env.settings.amqp.clone();
        s.prefix = p;
        let t = Topology::new(&s, &env.settings.worker.retry_delays_secs);
        let tiers = t.retry_tiers.iter().map(|s| t.retry_queue(*s));
        let queues = t.work_queues.iter().cloned().chain(tiers);
        for q in queues.chain([t.dead_letter_queue.clone()]) {
            if broker::queue_depth(&conn, &q).await.unwrap().is_some() {
                left.push(q);
            }
        }
        for e in [
            &t.jobs_exchange,
            &t.shared_exchange,
            &t.retry_exchange,
            &t.dead_letter_exchange,
            &t.events_exchange,
        ] {
            // A passive declare fails (and closes its channel) when absent.
            let ch = conn.create_channel().await.unwrap();
            let found = ch
                .exchange_declare(
                    e.as_str().into(),
                    lapin::ExchangeKind::Direct,
                    ExchangeDeclareOptions {
                        passive: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await
                .is_ok();
            if found {
                left.push(e.clone());
                let _ = ch.close(200, "bye".into()).await;
            }
        }
    }
    let _ = conn.close(200, "bye".into()).await;
    left
}

async fn database_exists(env: &TestEnv, id: &str) -> bool {
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_database WHERE datname = $1")
        .bind(format!("outreach_bench_{id}"))
        .fetch_one(&env.pool)
        .await
        .unwrap();
    n > 0
}

async fn assert_nothing_left(env: &TestEnv, id: &str, said: &str) {
    assert_eq!(
        broker_leftovers(env, id).await,
        Vec::<String>::new(),
        "the bench left queues or exchanges behind:\n{said}"
    );
    assert!(
        !database_exists(env, id).await,
        "the bench left outreach_bench_{id} behind:\n{said}"
    );
}

#[tokio::test]
async fn a_bench_whose_workers_cannot_listen_fails_naming_the_setting_and_leaves_nothing() {
    let env = TestEnv::new().await;
    // Someone else (a running worker) holds the webhook port.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut vars = env.env_vars();
    vars.insert(
        "OUTREACH__WEBHOOKS__BIND".into(),
        taken.local_addr().unwrap().to_string(),
    );
    // The timeout only bounds the old behaviour (waiting for jobs no
    // worker will take); the bench must not get that far.
    let mut bench = Bench::spawn(
        &vars,
        &["--jobs", "10", "--no-baseline", "--timeout-secs", "60"],
    );
    let id = bench.run_id();
    let (status, said) = bench.wait();

    assert!(!status.success(), "the bench must fail:\n{said}");
    assert!(
        said.contains("webhooks.bind") && !said.contains("jobs final after"),
        "the error names the listener, not a timeout:\n{said}"
    );
    assert_nothing_left(&env, &id, &said).await;
    env.cleanup().await;
}

/// Start a long bench, wait until its queues and database exist (named
/// under the test's `amqp.prefix`), send `signal`, and check what is left.
async fn interrupted_bench_cleans_up(signal: &str) {
    let env = TestEnv::new().await;
    let mut bench = Bench::spawn(
        &env.env_vars(),
        &[
            "--jobs",
            "1000000",
            "--no-baseline",
            "--timeout-secs",
            "600",
        ],
    );
    let id = bench.run_id();
    let [pipeline, _] = bench_prefixes(&env, &id);
    let mut s = env.settings.amqp.clone();
    s.prefix = pipeline;
    let work = Topology::new(&s, &env.settings.worker.retry_delays_secs).work_queues[0].clone();
    eventually(
        Duration::from_secs(60),
        "the bench's work queue (under amqp.prefix) and database exist",
        || async {
            let conn = broker::connect(&env.nodes(), "test-depth").await.unwrap();
            let queue = broker::queue_depth(&conn, &work).await.unwrap();
            let _ = conn.close(200, "bye".into()).await;
            queue.is_some() && database_exists(&env, &id).await
        },
    )
    .await;

    Command::new("kill")
        .args([&format!("-{signal}"), &bench.child.id().to_string()])
        .status()
        .unwrap();
    let (status, said) = bench.wait();

    assert!(
        !status.success(),
        "an interrupted bench does not report success:\n{said}"
    );
    assert!(said.contains("interrupted"), "it says so:\n{said}");
    assert_nothing_left(&env, &id, &said).await;
    env.cleanup().await;
}

#[tokio::test]
async fn a_bench_stopped_with_sigterm_removes_its_queues_and_database() {
    interrupted_bench_cleans_up("TERM").await;
}

#[tokio::test]
async fn a_bench_stopped_with_sigint_removes_its_queues_and_database() {
    interrupted_bench_cleans_up("INT").await;
}
