//! Bad input never crashes the worker: each payload lands in the dead-letter
//! queue with its reason, and the next good job is still delivered.

use crate::support;

use std::time::Duration;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_bad_payload_is_dead_lettered_with_its_reason_and_the_next_good_job_is_sent() {
    let t = TestEnv::new().await;
    let (stop, worker) = t.spawn_worker(t.settings.clone());
    let publisher = t.publisher().await;
    let mut events = t.event_queue().await;

    let good = |id: &str| email_payload(id, "clinic-1", "pat@example.com");
    let with = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut v = good("bad");
        f(&mut v);
        serde_json::to_vec(&v).unwrap()
    };
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("malformed_json", b"{\"job_id\": \"x\", ".to_vec()),
        (
            "unknown_channel",
            with(&|v| {
                v["job_id"] = "bad-channel".into();
                v["channel"] = "fax".into()
            }),
        ),
        (
            "invalid_recipient",
            with(&|v| {
                v["job_id"] = "bad-recipient".into();
                v["recipient"] = "not an address".into()
            }),
        ),
        (
            "missing_field",
            with(&|v| {
                v["job_id"] = "no-tenant".into();
                v.as_object_mut().unwrap().remove("tenant_id");
            }),
        ),
        (
            "field_too_long",
            with(&|v| {
                v["job_id"] = "too-big".into();
                v["content"]["text"] = "x".repeat(210 * 1024).into()
            }),
        ),
        ("invalid_utf8", vec![b'{', b'"', 0xC3, 0x28, b'"', b'}']),
        (
            "unknown_field",
            with(&|v| {
                v["job_id"] = "send-at".into();
                v["send_at"] = "2026-11-24T09:00:00Z".into()
            }),
        ),
        (
            // PostgreSQL cannot store U+0000: the job, and the metadata its
            // failed row would carry, must not reach the batched log write.
            "invalid_field",
            with(&|v| {
                v["job_id"] = "nul-text".into();
                v["content"]["text"] = "a\u{0}b".into();
                v["metadata"] = serde_json::json!({"k\u{0}": "v\u{0}"})
            }),
        ),
    ];
    for (_, payload) in &cases {
        publisher.publish_raw(payload, None).await.unwrap();
    }
    publisher
        .publish(&serde_json::to_vec(&good("good-after-bad")).unwrap())
        .await
        .unwrap();

    eventually(Duration::from_secs(30), "the good job is sent", || {
        t.is_simulated("good-after-bad")
    })
    .await;

    let dead = t.dead_letters().await;
    let mut reasons: Vec<&str> = dead
        .iter()
        .map(|(h, _)| h["x-outreach-reason"].as_str())
        .collect();
    reasons.sort();
    let mut expected: Vec<&str> = cases.iter().map(|(r, _)| *r).collect();
    expected.sort();
    assert_eq!(reasons, expected);
    for (h, _) in &dead {
        assert!(
            !h["x-outreach-error"].is_empty(),
            "each dead letter explains itself"
        );
    }

    // A failed log row for each job whose id could be read.
    let rows = t.log_rows().await;
    for id in [
        "bad-channel",
        "bad-recipient",
        "no-tenant",
        "too-big",
        "send-at",
        "nul-text",
    ] {
        assert!(
            rows.iter().any(|(j, s, _)| j == id && s == "failed"),
            "{id} has a failed row: {rows:?}"
        );
    }
    // A failed event for every bad payload, a sent one for the good job.
    let mut keys = vec![];
    while let Some((key, _)) = events.next(Duration::from_secs(5)).await {
        keys.push(key);
        if keys.len() == cases.len() + 1 {
            break;
        }
    }
    assert_eq!(
        keys.iter().filter(|k| k.starts_with("failed.")).count(),
        cases.len()
    );
    assert_eq!(keys.iter().filter(|k| *k == "simulated.email").count(), 1);

    stop.cancel();
    worker.await.unwrap().unwrap();
    t.cleanup().await;
}

#[tokio::test]
async fn a_wrong_typed_value_is_named_by_field_and_type_and_never_quoted() {
    let t = TestEnv::new().await;
    let (stop, worker) = t.spawn_worker(t.settings.clone());
    let publisher = t.publisher().await;
    let mut text_as_content = email_payload("text-as-content", "clinic-1", "pat@example.com");
    text_as_content["content"] = "Dear patient, your biopsy came back positive".into();
    let mut number_as_recipient = email_payload("number-as-recipient", "clinic-1", "x@example.com");
    number_as_recipient["channel"] = "sms".into();
    number_as_recipient["recipient"] = serde_json::json!(14155550123u64);
    for payload in [&text_as_content, &number_as_recipient] {
        let bytes = serde_json::to_vec(payload).unwrap();
        publisher.publish_raw(&bytes, None).await.unwrap();
    }

    eventually(Duration::from_secs(30), "both rows are failed", || async {
        t.log_rows()
            .await
            .iter()
            .filter(|(_, s, _)| s == "failed")
            .count()
            == 2
    })
    .await;

    let message = |id: &'static str| {
        let pool = t.pool.clone();
        async move {
            sqlx::query_scalar::<_, String>(
                "SELECT error_message FROM outreach_logs WHERE job_id = $1",
            )
            .bind(id)
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    let dead = t.dead_letters().await;
    let header = |needle: &str| {
        dead.iter()
            .map(|(h, _)| h["x-outreach-error"].clone())
            .find(|e| e.contains(needle))
            .unwrap_or_else(|| panic!("no dead letter names {needle}: {dead:?}"))
    };
    for shown in [message("text-as-content").await, header("`content`")] {
        assert!(shown.contains("`content`: expected"), "{shown}");
        assert!(shown.contains("found a string"), "{shown}");
        assert!(!shown.contains("Dear patient"), "{shown}");
    }
    for shown in [message("number-as-recipient").await, header("`recipient`")] {
        assert!(
            shown.contains("`recipient`: expected a string, found an integer"),
            "{shown}"
        );
        assert!(!shown.contains("14155550123"), "{shown}");
    }

    stop.cancel();
    worker.await.unwrap().unwrap();
    t.cleanup().await;
}
