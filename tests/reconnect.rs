//! A dropped broker connection is re-established and delivery carries on.

mod support;

use std::process::Command;
use std::time::Duration;
use support::*;

/// Close the broker side of every connection the given process opened.
fn close_connections_of(pid: u32) -> usize {
    // Tab-separated: `<rabbit@host.N.A.B>\t[client properties]`, one per line.
    let out = Command::new("rabbitmqctl")
        .args([
            "-q",
            "--no-table-headers",
            "list_connections",
            "pid",
            "client_properties",
        ])
        .output()
        .expect("rabbitmqctl");
    let name = format!("outreach worker pid {pid}");
    let mut closed = 0;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if let Some((conn_pid, props)) = line.split_once('\t')
            && props.contains(&name)
        {
            let ok = Command::new("rabbitmqctl")
                .args([
                    "close_connection",
                    conn_pid,
                    "test: simulated connection drop",
                ])
                .status()
                .unwrap()
                .success();
            assert!(ok, "rabbitmqctl close_connection {conn_pid}");
            closed += 1;
        }
    }
    closed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_broker_connection_is_re_established_and_jobs_keep_flowing() {
    let t = TestEnv::new().await;
    let record = t.path("sandbox.jsonl");
    let mut env = t.env_vars();
    env.insert(
        "OUTREACH__DEFAULTS__EMAIL__RECORD_FILE".into(),
        record.clone(),
    );
    let http = free_port();
    env.insert("OUTREACH__HTTP__BIND".into(), format!("127.0.0.1:{http}"));
    let worker = Binary::worker(&env);
    let publisher = t.publisher().await;
    let sent = |id: &'static str| {
        let t = &t;
        move || async move {
            t.log_rows()
                .await
                .iter()
                .any(|(j, s, _)| j == id && s == "sent")
        }
    };

    publisher
        .publish(
            &serde_json::to_vec(&email_payload("before-drop", "clinic-1", "a@example.com"))
                .unwrap(),
        )
        .await
        .unwrap();
    eventually(
        Duration::from_secs(30),
        "the first job is sent",
        sent("before-drop"),
    )
    .await;

    assert_eq!(
        close_connections_of(worker.child.id()),
        1,
        "the worker had one broker connection"
    );
    publisher
        .publish(
            &serde_json::to_vec(&email_payload("after-drop", "clinic-1", "a@example.com")).unwrap(),
        )
        .await
        .unwrap();
    eventually(
        Duration::from_secs(60),
        "the job published after the drop is sent",
        sent("after-drop"),
    )
    .await;
    eventually(
        Duration::from_secs(30),
        "the worker is ready again",
        || async { http_get(&format!("http://127.0.0.1:{http}/readyz")).await.0 == 200 },
    )
    .await;

    let sends = std::fs::read_to_string(&record).unwrap();
    assert_eq!(
        sends.lines().filter(|l| l.contains("before-drop")).count(),
        1,
        "nothing was sent twice"
    );
    assert!(worker.terminate().success());
    t.cleanup().await;
}
