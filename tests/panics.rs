//! A panic while handling one job ends that job, never the worker's
//! capacity: it is failed (`internal`), dead-lettered, evented and acked,
//! counted in `outreach_panics_total`, and other tenants' jobs keep flowing
//! through a prefetch window it would otherwise fill for good.

use crate::support;

use outreach::job::Channel;
use serde_json::{Value, json};
use std::time::Duration;
use support::tenants::*;
use support::*;

/// A worker process whose broker lets it hold only 5 unacked deliveries:
/// five stuck jobs would stop it.
fn narrow_worker(t: &TestEnv) -> Binary {
    let mut env = worker_env(t);
    env.insert("OUTREACH__AMQP__PREFETCH".into(), "5".into());
    Binary::worker(&env)
}

fn sms_with(id: &str, tenant: &str, metadata: Value) -> Value {
    let mut job = sms(id, tenant);
    job["metadata"] = metadata;
    job
}

/// Every dead letter's reason and job id.
async fn dead_lettered(t: &TestEnv) -> Vec<(String, String)> {
    let mut out: Vec<_> = t
        .dead_letters()
        .await
        .into_iter()
        .map(|(h, _)| {
            (
                h["x-outreach-reason"].clone(),
                h["x-outreach-job-id"].clone(),
            )
        })
        .collect();
    out.sort();
    out
}

async fn metric(port: u16, series: &str) -> Option<f64> {
    let (_, body) = http_get(&format!("http://127.0.0.1:{port}/metrics")).await;
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_adapter_fails_its_jobs_while_another_tenants_jobs_flow() {
    let t = TestEnv::new().await;
    // The stand-in: a sandbox account that panics on every send.
    set_tenant(
        &t,
        "clinic-broken",
        Channel::Sms,
        json!({"chain": [{"provider": "sandbox", "panic_on_send": true}], "fallback_to_system": false}),
    )
    .await;
    let mut events = t.event_queue().await;
    let worker = narrow_worker(&t);

    // More panicking jobs than the prefetch window, then the other tenant's.
    let broken: Vec<String> = (0..8).map(|i| format!("broken-{i}")).collect();
    let fine: Vec<String> = (0..3).map(|i| format!("fine-{i}")).collect();
    let mut jobs: Vec<Value> = broken.iter().map(|id| sms(id, "clinic-broken")).collect();
    jobs.extend(fine.iter().map(|id| sms(id, "clinic-fine")));
    publish(&t, &jobs).await;

    for id in &fine {
        let row = wait_final(&t, id, Duration::from_secs(30)).await;
        assert_eq!(row["status"], "simulated", "{id}: {row}");
    }
    for id in &broken {
        let row = wait_final(&t, id, Duration::from_secs(30)).await;
        assert_eq!(row["status"], "failed", "{id}: {row}");
        assert_eq!(row["error_kind"], "internal", "{id}: {row}");
        assert_eq!(row["error_code"], "panic", "{id}: {row}");
        assert_eq!(
            row["provider"], "sandbox",
            "{id}: the adapter that panicked"
        );
    }
    let mut failed_events = 0;
    while let Some((key, event)) = events.next(Duration::from_secs(5)).await {
        if key == "failed.sms" {
            assert_eq!(event["error"]["kind"], "internal", "{event}");
            failed_events += 1;
        }
        if failed_events == broken.len() {
            break;
        }
    }
    assert_eq!(failed_events, broken.len(), "one failed event per job");
    let letters = dead_lettered(&t).await;
    let mut expected: Vec<_> = broken
        .iter()
        .map(|id| ("internal".to_string(), id.clone()))
        .collect();
    expected.sort();
    assert_eq!(
        letters, expected,
        "each panicking job dead-lettered once, as internal"
    );
    let port = worker.http_port;
    assert_eq!(
        metric(port, r#"outreach_panics_total{place="provider"}"#).await,
        Some(8.0)
    );
    assert_eq!(
        http_get(&format!("http://127.0.0.1:{port}/readyz")).await.0,
        200
    );
    assert!(worker.terminate().success());
    t.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_the_pipeline_ends_the_job_instead_of_leaving_it_processing() {
    let t = TestEnv::new().await;
    let worker = narrow_worker(&t);
    let defect = json!({"fault_injection": "panic_after_claim"});
    let mut jobs: Vec<Value> = (0..6)
        .map(|i| sms_with(&format!("defect-{i}"), "clinic-1", defect.clone()))
        .collect();
    jobs.push(sms("after", "clinic-1"));
    publish(&t, &jobs).await;

    let row = wait_final(&t, "after", Duration::from_secs(30)).await;
    assert_eq!(row["status"], "simulated", "{row}");
    for i in 0..6 {
        let row = wait_final(&t, &format!("defect-{i}"), Duration::from_secs(30)).await;
        assert_eq!(row["status"], "failed", "{row}");
        assert_eq!(row["error_kind"], "internal", "{row}");
    }
    assert_eq!(
        count_status(&t, "processing").await,
        0,
        "no claim left behind"
    );
    let letters = dead_lettered(&t).await;
    assert_eq!(letters.len(), 6, "{letters:?}");
    assert!(
        letters.iter().all(|(reason, _)| reason == "internal"),
        "{letters:?}"
    );
    assert_eq!(
        metric(
            worker.http_port,
            r#"outreach_panics_total{place="pipeline"}"#
        )
        .await,
        Some(6.0)
    );
    assert!(worker.terminate().success());
    t.cleanup().await;
}
