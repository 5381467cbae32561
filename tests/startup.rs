//! Starting up: workers started together on a fresh database.

mod support;

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
