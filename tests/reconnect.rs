//! A dropped broker connection is re-established and delivery carries on.

use crate::support;

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
    let mut env = t.env_vars();
    let record = t.record_emails(&mut env);
    let worker = Binary::worker(&env);
    let http = worker.http_port;
    let publisher = t.publisher().await;
    let sent = |id: &'static str| {
        let t = &t;
        move || t.is_simulated(id)
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publishing_channel_the_broker_closes_is_replaced_and_events_flow_again() {
    let t = TestEnv::new().await;
    let (stop, worker) = t.spawn_worker(t.settings.clone());
    let publisher = t.publisher().await;
    let job =
        |id: &str| serde_json::to_vec(&email_payload(id, "clinic-1", "a@example.com")).unwrap();
    let recorded = |id: &'static str| {
        let t = &t;
        move || t.is_simulated(id)
    };
    // The worker is up (it declared its topology) once it has sent a job.
    publisher.publish(&job("first")).await.unwrap();
    eventually(
        Duration::from_secs(30),
        "the first job is sent",
        recorded("first"),
    )
    .await;

    // The events exchange vanishes under the worker: its next event publish
    // is a channel error (404), and the broker closes that channel while the
    // connection lives on.
    let conn = outreach::broker::connect(&AMQP_URL.parse().unwrap(), "test-admin")
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.exchange_delete(
        t.topology.events_exchange.as_str().into(),
        Default::default(),
    )
    .await
    .unwrap();
    publisher.publish(&job("event-lost")).await.unwrap();
    eventually(
        Duration::from_secs(30),
        "the job's outcome is recorded",
        recorded("event-lost"),
    )
    .await;

    // An operator puts the exchange back (with our tap on it); the worker
    // must not stay stuck on its dead channel. (The lost event is re-sent
    // when the job is redelivered, possibly before the tap exists.)
    let mut events = t.event_queue().await;
    publisher.publish(&job("after")).await.unwrap();
    loop {
        let (_, event) = events
            .next(Duration::from_secs(30))
            .await
            .expect("events flow again");
        if event["job_id"] == "after" {
            break;
        }
    }

    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(30), worker).await;
    let _ = conn.close(200, "bye".into()).await;
    t.cleanup().await;
}
