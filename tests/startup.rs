//! Starting up: workers started together on a fresh database.

use crate::support;

use std::process::{Command, Stdio};

#[test]
fn processes_started_together_on_a_fresh_database_all_create_and_migrate_it() {
    // A few rounds: the race is between CREATE DATABASE statements.
    for round in 0..3 {
        let name = format!(
            "outreach_start_{}",
            &uuid::Uuid::now_v7().simple().to_string()[20..]
        );
        let url = format!("postgres://postgres@127.0.0.1:5432/{name}");
        let children: Vec<_> = (0..3)
            .map(|_| {
                Command::new(env!("CARGO_BIN_EXE_outreach"))
                    .args(["migrate", "--database-only"])
                    .env("OUTREACH__DATABASE__URL", &url)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for child in children {
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "round {round}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let _ = Command::new("psql")
            .args(["-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-c"])
            .arg(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .output();
    }
}

/// `outreach health`, the container's HEALTHCHECK: it asks the worker on
/// http.bind (0.0.0.0 in a container, asked on loopback) for /readyz.
#[tokio::test]
async fn the_health_command_passes_once_the_worker_is_ready_and_fails_without_one() {
    let env = support::TestEnv::new().await;
    let port = support::free_port();
    let mut vars = env.env_vars();
    vars.insert("OUTREACH__HTTP__BIND".into(), format!("0.0.0.0:{port}"));
    let health = |vars: &std::collections::HashMap<String, String>| {
        Command::new(env!("CARGO_BIN_EXE_outreach"))
            .arg("health")
            .envs(vars)
            .output()
            .unwrap()
    };

    let none = health(&vars);
    assert!(!none.status.success(), "no worker: unhealthy");
    let said = String::from_utf8_lossy(&none.stderr);
    assert!(
        said.contains(&format!("http://127.0.0.1:{port}/readyz")),
        "names the URL it asked: {said}"
    );

    let _worker = support::Binary::worker(&vars);
    let started = std::time::Instant::now();
    loop {
        let out = health(&vars);
        if out.status.success() {
            let answer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            assert_eq!(
                answer,
                serde_json::json!({"broker": true, "database": true})
            );
            break;
        }
        assert!(
            started.elapsed().as_secs() < 30,
            "worker not healthy after 30 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    drop(_worker);
    env.cleanup().await;
}

/// An upstream app publishing with a client of its own (no declarations)
/// right after `outreach migrate`, before any worker has ever run.
#[tokio::test]
async fn after_migrate_a_job_published_before_any_worker_started_is_routed_and_sent() {
    use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
    let env = support::TestEnv::new().await;
    let mut vars = env.env_vars();
    let record = env.record_emails(&mut vars);
    let out = support::cli_output(&vars, &["migrate"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "migrate failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!("{}.jobs", env.prefix)),
        "migrate names the exchange: {stdout}"
    );

    let conn = lapin::Connection::connect(&env.amqp_url, Default::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let payload = support::email_payload("early-1", "clinic-1", "patient@example.org").to_string();
    // Mandatory: a job no queue takes comes back instead of vanishing.
    let confirm = ch
        .basic_publish(
            format!("{}.jobs", env.prefix).as_str().into(),
            "clinic-1.email".into(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            payload.as_bytes(),
            outreach::broker::persistent_json(),
        )
        .await
        .expect("the jobs exchange exists")
        .await
        .unwrap();
    assert!(confirm.is_ack(), "the broker refused the job: {confirm:?}");
    assert!(confirm.take_message().is_none(), "no queue took the job");
    conn.close(200, "bye".into()).await.unwrap();

    let worker = support::Binary::worker(&vars);
    support::eventually(
        std::time::Duration::from_secs(30),
        "the early job to be final",
        || async {
            let status: Option<String> = sqlx::query_scalar(
                "SELECT status::text FROM outreach_logs WHERE job_id = 'early-1'",
            )
            .fetch_optional(&env.pool)
            .await
            .unwrap();
            status.as_deref() == Some("simulated")
        },
    )
    .await;
    assert_eq!(
        std::fs::read_to_string(&record).unwrap().lines().count(),
        1,
        "sent once"
    );
    assert!(worker.terminate().success());
    env.cleanup().await;
}

/// An operator reads from the start log where each listener is: the HTTP
/// one (metrics, probes, admin API) and the webhooks one.
#[tokio::test]
async fn the_worker_start_log_names_every_listener_it_opened() {
    let env = support::TestEnv::new().await;
    let mut vars = env.env_vars();
    let webhooks = support::free_port();
    vars.insert(
        "OUTREACH__WEBHOOKS__BIND".into(),
        format!("127.0.0.1:{webhooks}"),
    );
    let log = env.path("worker.log");
    let worker = support::Binary::worker_with_stderr(&vars, std::fs::File::create(&log).unwrap());
    let http = format!("127.0.0.1:{}", worker.http_port);
    let ready = format!("http://{http}/readyz");
    support::eventually(
        std::time::Duration::from_secs(30),
        "the worker to be ready",
        || async { support::http_get(&ready).await.0 == 200 },
    )
    .await;
    assert!(worker.terminate().success());

    let text = std::fs::read_to_string(&log).unwrap();
    let listening: Vec<serde_json::Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| {
            e["message"]
                .as_str()
                .is_some_and(|m| m.contains("listening"))
        })
        .collect();
    let names = |addr: String, what: &str| {
        listening.iter().any(|e| {
            e["addr"] == addr.as_str() && e["message"].as_str().is_some_and(|m| m.contains(what))
        })
    };
    for what in ["/metrics", "/readyz", "/admin/v1"] {
        assert!(
            names(http.clone(), what),
            "no start line names {what} at {http}: {listening:?}"
        );
    }
    let hooks = format!("127.0.0.1:{webhooks}");
    assert!(
        names(hooks.clone(), "/webhooks/"),
        "no start line names the webhooks at {hooks}: {listening:?}"
    );
    env.cleanup().await;
}
