//! End to end through the real binary: `outreach worker` consumes, sends over
//! real SMTP, logs, reports events and counts in /metrics.

use crate::support;

use std::time::Duration;
use support::smtp::{SmtpOptions, SmtpServer};
use support::*;

fn smtp_env(env: &mut std::collections::HashMap<String, String>, port: u16) {
    for (k, v) in [
        ("PROVIDER", "smtp".to_string()),
        ("HOST", "127.0.0.1".into()),
        ("PORT", port.to_string()),
        ("SECURITY", "none".into()),
        ("FROM_EMAIL", "reminders@clinic.example".into()),
        ("FROM_NAME", "Clinic".into()),
    ] {
        env.insert(format!("OUTREACH__DEFAULTS__EMAIL__{k}"), v);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_enqueued_with_the_cli_is_mailed_logged_evented_and_counted() {
    let t = TestEnv::new().await;
    let smtp = SmtpServer::start(t.dir.path(), SmtpOptions::default());
    let mut env = t.env_vars();
    smtp_env(&mut env, smtp.port);
    let mut events = t.event_queue().await;

    let worker = Binary::worker(&env);
    let http = worker.http_port;
    let out = run_cli(
        &env,
        &[
            "enqueue",
            "--tenant",
            "clinic-1",
            "--channel",
            "email",
            "--to",
            "pat@example.com",
            "--subject",
            "Your appointment",
            "--text",
            "Tuesday 10:00",
            "--job-id",
            "e2e-1",
            "--metadata",
            r#"{"appointment":"a-7"}"#,
        ],
    );
    assert_eq!(out.trim(), "e2e-1");

    eventually(
        Duration::from_secs(30),
        "the SMTP server receives the mail",
        || async { !smtp.messages().is_empty() },
    )
    .await;
    let mail = &smtp.messages()[0];
    assert_eq!(mail["rcpt_tos"], serde_json::json!(["pat@example.com"]));
    assert!(
        mail["data"]
            .as_str()
            .unwrap()
            .contains("Subject: Your appointment")
    );
    assert!(
        mail["data"]
            .as_str()
            .unwrap()
            .contains("X-Outreach-Job-Id: e2e-1")
    );

    let (key, event) = events
        .next(Duration::from_secs(20))
        .await
        .expect("a delivery event");
    assert_eq!(key, "sent.email");
    assert_eq!(event["job_id"], "e2e-1");
    assert_eq!(event["provider"], "smtp");
    assert_eq!(event["metadata"]["appointment"], "a-7");
    assert!(
        event["provider_message_id"]
            .as_str()
            .unwrap()
            .starts_with('Q'),
        "queue id from the 250 reply"
    );

    let rows = t.log_rows().await;
    assert_eq!(
        rows,
        vec![(
            "e2e-1".to_string(),
            "sent".to_string(),
            Some("smtp".to_string())
        )]
    );

    let metrics_url = format!("http://127.0.0.1:{http}/metrics");
    eventually(
        Duration::from_secs(10),
        "/metrics counts the sent job",
        || async {
            http_get(&metrics_url)
                .await
                .1
                .contains(r#"outreach_jobs_sent_total{channel="email",provider="smtp"} 1"#)
        },
    )
    .await;
    assert_eq!(
        http_get(&format!("http://127.0.0.1:{http}/readyz")).await.0,
        200
    );

    assert!(worker.terminate().success(), "worker exits 0 on SIGTERM");
    t.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_jobs_in_flight_loses_nothing_and_sends_nothing_twice() {
    let t = TestEnv::new().await;
    let mut env = t.env_vars();
    let record = t.record_emails(&mut env);
    let total = 1500;
    let publisher = t.publisher().await;
    let jobs: Vec<Vec<u8>> = (0..total)
        .map(|i| {
            serde_json::to_vec(&email_payload(
                &format!("j-{i}"),
                "clinic-1",
                "a@example.com",
            ))
            .unwrap()
        })
        .collect();
    publisher.publish_many(&jobs).await.unwrap();

    let first = Binary::worker(&env);
    eventually(
        Duration::from_secs(60),
        "the first worker finishes some jobs",
        || async { t.count_final().await >= 100 },
    )
    .await;
    let status = first.terminate();
    assert!(status.success(), "SIGTERM exits 0, got {status:?}");
    let after_first = t.count_final().await;
    let in_flight: i64 =
        sqlx::query_scalar("SELECT count(*) FROM outreach_logs WHERE status = 'processing'")
            .fetch_one(&t.pool)
            .await
            .unwrap();
    assert_eq!(in_flight, 0, "jobs in flight were finished before exit");

    let second = Binary::worker(&env);
    eventually(
        Duration::from_secs(90),
        "the second worker finishes the rest",
        || async { t.count_final().await >= total },
    )
    .await;
    assert!(second.terminate().success());

    assert!(
        after_first < total,
        "the first worker was stopped mid-queue ({after_first} of {total} done)"
    );
    let rows = t.log_rows().await;
    assert_eq!(rows.len(), total as usize, "exactly one log row per job");
    assert!(rows.iter().all(|(_, status, _)| status == "simulated"));
    let sends = std::fs::read_to_string(&record).unwrap();
    let mut ids: Vec<String> = sends
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["job_id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    ids.sort();
    let n = ids.len();
    ids.dedup();
    assert_eq!(n, ids.len(), "no job was sent twice");
    assert_eq!(n, total as usize, "every job was sent");
    t.cleanup().await;
}
