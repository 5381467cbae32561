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
                    .arg("migrate")
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
