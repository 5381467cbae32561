//! `outreach dlq list` and `outreach dlq replay` against the real binary,
//! RabbitMQ and PostgreSQL.

use crate::support;

use lapin::types::FieldTable;
use outreach::broker;
use outreach::job::{Channel, TenantId};
use outreach::tenant::{ChannelConfig, TenantStore};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use support::*;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

fn sms_payload(id: &str, tenant: &str) -> Vec<u8> {
    serde_json::to_vec(
        &json!({"version": 1, "job_id": id, "tenant_id": tenant, "channel": "sms",
        "recipient": "+14155550100", "content": {"text": "See you Tuesday."}}),
    )
    .unwrap()
}

/// Messages ready in a queue.
async fn depth(queue: &str) -> u32 {
    let conn = broker::connect(&AMQP_URL.parse().unwrap(), "test-depth")
        .await
        .unwrap();
    let n = broker::queue_depth(&conn, queue)
        .await
        .unwrap()
        .expect("queue exists");
    let _ = conn.close(200, "bye".into()).await;
    n
}

/// Jobs waiting in all the work queues.
async fn work_depth(t: &TestEnv) -> u32 {
    let conn = broker::connect(&AMQP_URL.parse().unwrap(), "test-depth")
        .await
        .unwrap();
    let n = t.topology.work_depth(&conn).await.unwrap();
    let _ = conn.close(200, "bye".into()).await;
    n
}

/// Put a letter in the dead-letter queue the way the worker does, with the
/// dead-letter time given (the worker can only say "now").
async fn dead_letter(t: &TestEnv, payload: &[u8], job_id: &str, reason: &str, at: OffsetDateTime) {
    dead_letter_with(t, payload, job_id, reason, at, &[]).await
}

/// [`dead_letter`] with more headers.
async fn dead_letter_with(
    t: &TestEnv,
    payload: &[u8],
    job_id: &str,
    reason: &str,
    at: OffsetDateTime,
    extra: &[(&str, &str)],
) {
    let conn = broker::connect(&AMQP_URL.parse().unwrap(), "test-dead-letter")
        .await
        .unwrap();
    let ch = broker::confirm_channel(&conn).await.unwrap();
    t.topology.declare(&ch).await.unwrap();
    let mut h = FieldTable::default();
    for (k, v) in [
        (broker::headers::REASON, reason),
        (broker::headers::ERROR, "job refused"),
        (broker::headers::JOB_ID, job_id),
        (broker::headers::TENANT_ID, "clinic-1"),
        (broker::headers::FAILED_AT, &at.format(&Rfc3339).unwrap()),
    ]
    .into_iter()
    .chain(extra.iter().copied())
    {
        h.insert(k.into(), broker::string_header(v));
    }
    let props = broker::persistent_json().with_headers(h);
    broker::publish_confirmed(&ch, &t.topology.dead_letter_exchange, "", payload, props)
        .await
        .unwrap();
    let _ = conn.close(200, "bye".into()).await;
}

fn json_lines(out: &str) -> Vec<Value> {
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_list_shows_a_bad_job_with_its_reason_and_leaves_it_in_the_queue() {
    let t = TestEnv::new().await;
    let (stop, worker) = t.spawn_worker(t.settings.clone());
    let bad = serde_json::to_vec(&email_payload(
        "bad-recipient",
        "clinic-1",
        "not an address",
    ))
    .unwrap();
    t.publisher().await.publish_raw(&bad, None).await.unwrap();
    let dlq = t.topology.dead_letter_queue.clone();
    eventually(
        Duration::from_secs(30),
        "the bad job is dead-lettered",
        || async { depth(&dlq).await == 1 },
    )
    .await;
    stop.cancel();
    worker.await.unwrap().unwrap();
    let env = t.env_vars();

    let table = run_cli(&env, &["dlq", "list"]);
    let row = table
        .lines()
        .find(|l| l.starts_with("bad-recipient"))
        .unwrap_or_else(|| panic!("no row for the job: {table}"));
    assert!(
        row.contains("clinic-1") && row.contains("invalid_recipient"),
        "{table}"
    );
    assert!(
        table.contains(&format!("1 shown of 1 dead-lettered in {dlq}")),
        "{table}"
    );

    let letters = json_lines(&run_cli(&env, &["dlq", "list", "--json"]));
    assert_eq!(letters.len(), 1);
    let l = &letters[0];
    assert_eq!(l["job_id"], "bad-recipient");
    assert_eq!(l["tenant_id"], "clinic-1");
    assert_eq!(l["reason"], "invalid_recipient");
    assert_eq!(l["dead_lettered_by"], "worker");
    assert_eq!(l["valid_job"], false);
    assert!(l["error"].as_str().unwrap().contains("recipient"), "{l}");
    let failed_at = OffsetDateTime::parse(l["failed_at"].as_str().unwrap(), &Rfc3339).unwrap();
    assert!(OffsetDateTime::now_utc() - failed_at < Duration::from_secs(120));

    // Listed twice, and still there as it was.
    let dead = t.dead_letters().await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].1, bad);
    assert_eq!(dead[0].0["x-outreach-reason"], "invalid_recipient");
    t.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_replay_for_one_tenant_sends_its_jobs_again_and_leaves_other_tenants_letters() {
    let t = TestEnv::new().await;
    let store = TenantStore::new(t.pool.clone(), Arc::new(t.settings.key_ring().unwrap()));
    let off = ChannelConfig::from_json(json!({"enabled": false}), Channel::Sms).unwrap();
    let (a, b) = (
        TenantId::parse("clinic-a").unwrap(),
        TenantId::parse("clinic-b").unwrap(),
    );
    for tenant in [&a, &b] {
        store.put(tenant, Channel::Sms, &off, "test").await.unwrap();
    }
    // Give up at the first failure, so the disabled channel dead-letters at once.
    let mut settings = t.settings.clone();
    settings.worker.max_attempts = 1;
    let (stop, worker) = t.spawn_worker(settings.clone());
    let publisher = t.publisher().await;
    for (id, tenant) in [
        ("a-1", "clinic-a"),
        ("a-2", "clinic-a"),
        ("b-1", "clinic-b"),
    ] {
        publisher.publish(&sms_payload(id, tenant)).await.unwrap();
    }
    let dlq = t.topology.dead_letter_queue.clone();
    eventually(
        Duration::from_secs(30),
        "the three jobs are dead-lettered",
        || async { depth(&dlq).await == 3 },
    )
    .await;
    stop.cancel();
    worker.await.unwrap().unwrap();
    assert!(t.log_rows().await.iter().all(|(_, s, _)| s == "failed"));

    // clinic-a's SMS channel is switched back on (the system default again).
    store.delete(&a, Some(Channel::Sms), "test").await.unwrap();
    let out = run_cli(&t.env_vars(), &["dlq", "replay", "--tenant", "clinic-a"]);
    assert!(
        out.contains(&format!("replayed 2, skipped 0, left 1 in {dlq}")),
        "{out}"
    );

    let (stop, worker) = t.spawn_worker(settings);
    eventually(
        Duration::from_secs(30),
        "clinic-a's jobs are sent",
        || async {
            t.log_rows()
                .await
                .iter()
                .filter(|(id, s, _)| id.starts_with("a-") && s == "simulated")
                .count()
                == 2
        },
    )
    .await;
    stop.cancel();
    worker.await.unwrap().unwrap();
    assert_eq!(
        t.log_rows().await,
        vec![
            ("a-1".into(), "simulated".into(), Some("sandbox".into())),
            ("a-2".into(), "simulated".into(), Some("sandbox".into())),
            ("b-1".into(), "failed".into(), None),
        ]
    );
    let dead = t.dead_letters().await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].0["x-outreach-job-id"], "b-1");
    t.cleanup().await;
}

#[tokio::test]
async fn dlq_list_since_shows_only_jobs_dead_lettered_after_it() {
    let t = TestEnv::new().await;
    let now = OffsetDateTime::now_utc();
    let hours = |h: u64| now - Duration::from_secs(h * 3600);
    dead_letter(
        &t,
        &sms_payload("old-1", "clinic-1"),
        "old-1",
        "max_attempts",
        hours(3),
    )
    .await;
    dead_letter(
        &t,
        &sms_payload("new-1", "clinic-1"),
        "new-1",
        "max_attempts",
        now,
    )
    .await;
    let env = t.env_vars();

    let recent = json_lines(&run_cli(&env, &["dlq", "list", "--since", "2h", "--json"]));
    assert_eq!(recent.len(), 1);
    assert_eq!(recent[0]["job_id"], "new-1");
    let since = hours(4).format(&Rfc3339).unwrap();
    let both = json_lines(&run_cli(
        &env,
        &["dlq", "list", "--since", &since, "--json"],
    ));
    assert_eq!(both.len(), 2);
    assert_eq!(depth(&t.topology.dead_letter_queue).await, 2);
    t.cleanup().await;
}

#[tokio::test]
async fn dlq_replay_skips_invalid_payloads_unless_their_reason_is_asked_for() {
    let t = TestEnv::new().await;
    let bad = br#"{"job_id":"bad-1","tenant_id":"clinic-1","channel":"sms","recipient":"12","content":{"text":"x"}}"#;
    dead_letter(
        &t,
        bad,
        "bad-1",
        "invalid_recipient",
        OffsetDateTime::now_utc(),
    )
    .await;
    let env = t.env_vars();
    let dlq = &t.topology.dead_letter_queue;

    let out = run_cli(&env, &["dlq", "replay"]);
    assert!(out.contains("replayed 0, skipped 1, left 1"), "{out}");
    assert!(out.contains("--reason invalid_recipient"), "{out}");
    assert_eq!((depth(dlq).await, work_depth(&t).await), (1, 0));

    let out = run_cli(&env, &["dlq", "replay", "--reason", "invalid_recipient"]);
    assert!(out.contains("replayed 1, skipped 0, left 0"), "{out}");
    assert_eq!((depth(dlq).await, work_depth(&t).await), (0, 1));
    t.cleanup().await;
}

#[tokio::test]
async fn a_mistyped_reason_is_refused_with_the_list_of_reasons_and_nothing_is_replayed() {
    let t = TestEnv::new().await;
    dead_letter(
        &t,
        &sms_payload("j-1", "clinic-1"),
        "j-1",
        "max_attempts",
        OffsetDateTime::now_utc(),
    )
    .await;
    // One letter short of `max_attempts`: matching nothing would look like
    // an empty queue; the command must say the name is wrong instead.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_outreach"))
        .args(["dlq", "replay", "--reason", "max_attempt"])
        .envs(t.env_vars())
        .output()
        .expect("run outreach");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    for reason in [
        "max_attempts",
        "invalid_recipient",
        "no_provider",
        "delivery_limit",
    ] {
        assert!(err.contains(reason), "{reason} not listed: {err}");
    }
    assert_eq!(depth(&t.topology.dead_letter_queue).await, 1);
    assert_eq!(work_depth(&t).await, 0);
    t.cleanup().await;
}

#[tokio::test]
async fn a_job_a_provider_accepted_but_that_could_not_be_recorded_is_not_replayed() {
    let t = TestEnv::new().await;
    // As the worker dead-letters an outcome PostgreSQL refused to store:
    // reason `unrecordable`, the outcome it reached in `x-outreach-status`.
    dead_letter_with(
        &t,
        &sms_payload("j-1", "clinic-1"),
        "j-1",
        "unrecordable",
        OffsetDateTime::now_utc(),
        &[(broker::headers::STATUS, "sent")],
    )
    .await;
    let env = t.env_vars();

    let out = run_cli(&env, &["dlq", "replay", "--reason", "unrecordable"]);
    assert!(out.contains("replayed 0, skipped 1, left 1"), "{out}");
    assert!(out.contains("would send it again"), "{out}");
    assert_eq!(depth(&t.topology.dead_letter_queue).await, 1);
    assert_eq!(work_depth(&t).await, 0);
    let listed = json_lines(&run_cli(&env, &["dlq", "list", "--json"]));
    assert_eq!(listed[0]["outcome"], "sent");
    t.cleanup().await;
}

#[tokio::test]
async fn dlq_replay_dry_run_changes_nothing() {
    let t = TestEnv::new().await;
    dead_letter(
        &t,
        &sms_payload("j-1", "clinic-1"),
        "j-1",
        "max_attempts",
        OffsetDateTime::now_utc(),
    )
    .await;
    sqlx::query("INSERT INTO outreach_logs (job_id, tenant_id, channel, status, attempts) VALUES ('j-1', 'clinic-1', 'sms', 'failed', 6)")
        .execute(&t.pool)
        .await
        .unwrap();

    let out = run_cli(&t.env_vars(), &["dlq", "replay", "--dry-run"]);
    assert!(out.contains("would replay j-1"), "{out}");
    assert!(out.contains("would replay 1, skipped 0, left 1"), "{out}");
    assert_eq!(depth(&t.topology.dead_letter_queue).await, 1);
    assert_eq!(work_depth(&t).await, 0);
    let row: (String, i32) =
        sqlx::query_as("SELECT status::text, attempts FROM outreach_logs WHERE job_id = 'j-1'")
            .fetch_one(&t.pool)
            .await
            .unwrap();
    assert_eq!(row, ("failed".into(), 6));
    t.cleanup().await;
}

#[tokio::test]
async fn dlq_replay_resets_the_log_row_keeping_its_history() {
    let t = TestEnv::new().await;
    dead_letter(
        &t,
        &sms_payload("j-1", "clinic-1"),
        "j-1",
        "max_attempts",
        OffsetDateTime::now_utc(),
    )
    .await;
    let history = json!([{"provider": "twilio", "step": 0, "kind": "transient", "code": "503", "at": "2026-03-01T09:00:00Z"}]);
    sqlx::query("INSERT INTO outreach_logs (job_id, tenant_id, channel, status, attempts, attempt_log) VALUES ('j-1', 'clinic-1', 'sms', 'failed', 6, $1)")
        .bind(&history)
        .execute(&t.pool)
        .await
        .unwrap();

    let out = run_cli(&t.env_vars(), &["dlq", "replay"]);
    assert!(out.contains("replayed 1, skipped 0, left 0"), "{out}");
    let row: (String, i32, Value) = sqlx::query_as(
        "SELECT status::text, attempts, attempt_log FROM outreach_logs WHERE job_id = 'j-1'",
    )
    .fetch_one(&t.pool)
    .await
    .unwrap();
    assert_eq!(row, ("retrying".into(), 0, history));
    assert_eq!(work_depth(&t).await, 1);
    t.cleanup().await;
}

fn job_ids(out: &str) -> Vec<String> {
    json_lines(out)
        .iter()
        .map(|l| l["job_id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn dlq_list_with_a_limit_leaves_the_queue_in_its_order() {
    let t = TestEnv::new().await;
    for id in ["j-1", "j-2", "j-3"] {
        let now = OffsetDateTime::now_utc();
        dead_letter(&t, &sms_payload(id, "clinic-1"), id, "max_attempts", now).await;
    }
    let env = t.env_vars();

    let first = run_cli(&env, &["dlq", "list", "--limit", "1", "--json"]);
    assert_eq!(job_ids(&first), ["j-1"]);
    let all = run_cli(&env, &["dlq", "list", "--json"]);
    assert_eq!(job_ids(&all), ["j-1", "j-2", "j-3"]);
    t.cleanup().await;
}

#[tokio::test]
async fn dlq_replay_with_a_limit_replays_the_oldest_and_keeps_the_rest_in_order() {
    let t = TestEnv::new().await;
    for id in ["j-1", "j-2", "j-3"] {
        let now = OffsetDateTime::now_utc();
        dead_letter(&t, &sms_payload(id, "clinic-1"), id, "max_attempts", now).await;
    }
    let env = t.env_vars();

    let out = run_cli(&env, &["dlq", "replay", "--limit", "1"]);
    assert!(out.contains("replayed 1, skipped 0, left 2"), "{out}");
    assert!(out.contains("replayed     j-1"), "{out}");
    let rest = run_cli(&env, &["dlq", "list", "--json"]);
    assert_eq!(job_ids(&rest), ["j-2", "j-3"]);
    assert_eq!(work_depth(&t).await, 1);
    t.cleanup().await;
}

/// `OutreachEnqueueToFinalSlow` reads `outreach_job_enqueue_to_final_seconds`:
/// a job dead-lettered hours ago and replayed now is timed from its replay,
/// or every replay would page as a slow pipeline.
#[tokio::test]
async fn a_replayed_job_is_timed_from_its_replay_not_its_first_publish() {
    let t = TestEnv::new().await;
    let two_hours_ago = OffsetDateTime::now_utc() - time::Duration::hours(2);
    let published_ms = (two_hours_ago.unix_timestamp_nanos() / 1_000_000).to_string();
    dead_letter_with(
        &t,
        &sms_payload("j-1", "clinic-1"),
        "j-1",
        "max_attempts",
        two_hours_ago,
        &[(broker::headers::PUBLISHED_MS, &published_ms)],
    )
    .await;
    let out = run_cli(&t.env_vars(), &["dlq", "replay"]);
    assert!(out.contains("replayed 1, skipped 0, left 0"), "{out}");

    let worker = Binary::worker(&t.env_vars());
    let url = format!("http://127.0.0.1:{}/metrics", worker.http_port);
    let series = |scrape: &str, name: &str, le: Option<&str>| -> Option<f64> {
        scrape.lines().find_map(|l| {
            let (s, v) = l.rsplit_once(' ')?;
            let wanted = s.starts_with(name)
                && s.contains("status=\"simulated\"")
                && le.is_none_or(|le| s.contains(&format!("le=\"{le}\"")));
            wanted.then(|| v.parse().ok())?
        })
    };
    let started = std::time::Instant::now();
    let scrape = loop {
        let (code, body) = http_get(&url).await;
        let count = series(&body, "outreach_job_enqueue_to_final_seconds_count", None);
        if code == 200 && count == Some(1.0) {
            break body;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the replayed job never became final:\n{body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        series(
            &scrape,
            "outreach_job_enqueue_to_final_seconds_bucket",
            Some("300")
        ),
        Some(1.0),
        "the replayed job was timed from its first publish:\n{scrape}"
    );
    drop(worker);
    t.cleanup().await;
}
