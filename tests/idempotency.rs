//! The job id is the idempotency key: a job already sent is not sent again.

use crate::support;

use std::time::Duration;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_published_twice_is_sent_once_and_its_event_is_replayed() {
    let t = TestEnv::new().await;
    let record = t.path("sandbox.jsonl");
    let mut settings = t.settings.clone();
    settings.defaults.email =
        serde_json::from_value(serde_json::json!({"provider": "sandbox", "record_file": record}))
            .unwrap();
    let (stop, worker) = t.spawn_worker(settings);
    let publisher = t.publisher().await;
    let mut events = t.event_queue().await;
    let job = serde_json::to_vec(&email_payload("twice", "clinic-1", "pat@example.com")).unwrap();

    publisher.publish(&job).await.unwrap();
    let (_, first) = events
        .next(Duration::from_secs(20))
        .await
        .expect("first event");
    publisher.publish(&job).await.unwrap();
    let (key, second) = events
        .next(Duration::from_secs(20))
        .await
        .expect("replayed event");

    assert_eq!(key, "simulated.email");
    assert_eq!(first["replayed"], false);
    assert_eq!(second["replayed"], true);
    assert_eq!(
        second["provider_message_id"], first["provider_message_id"],
        "the replay reports the original send"
    );
    let sends = std::fs::read_to_string(&record).unwrap();
    assert_eq!(sends.lines().count(), 1, "the provider saw the job once");

    stop.cancel();
    worker.await.unwrap().unwrap();
    t.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_arriving_while_the_job_is_leased_is_delayed_not_sent() {
    let t = TestEnv::new().await;
    let log = outreach::delivery_log::DeliveryLog::new(t.pool.clone(), 16, 1, 1, 60);
    let req = || outreach::delivery_log::ClaimRequest {
        job_id: outreach::job::JobId::parse("leased").unwrap(),
        tenant_id: outreach::job::TenantId::parse("clinic-1").unwrap(),
        channel: outreach::job::Channel::Email,
    };
    assert!(matches!(
        log.claim(req()).await.unwrap(),
        outreach::delivery_log::Claim::Granted { attempts: 0 }
    ));
    assert!(matches!(
        log.claim(req()).await.unwrap(),
        outreach::delivery_log::Claim::Busy
    ));
    // Once the lease has expired (its worker died), the job may be taken over.
    sqlx::query("UPDATE outreach_logs SET lease_until = now() - interval '1 second'")
        .execute(&t.pool)
        .await
        .unwrap();
    assert!(matches!(
        log.claim(req()).await.unwrap(),
        outreach::delivery_log::Claim::Granted { .. }
    ));
    t.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_job_id_from_two_tenants_is_two_jobs_and_both_are_sent() {
    let t = TestEnv::new().await;
    let record = t.path("sandbox.jsonl");
    let mut settings = t.settings.clone();
    settings.defaults.email =
        serde_json::from_value(serde_json::json!({"provider": "sandbox", "record_file": record}))
            .unwrap();
    let (stop, worker) = t.spawn_worker(settings);
    let publisher = t.publisher().await;

    for tenant in ["clinic-1", "clinic-2"] {
        let job = email_payload("appt-7781", tenant, "pat@example.com");
        publisher
            .publish(&serde_json::to_vec(&job).unwrap())
            .await
            .unwrap();
    }
    eventually(Duration::from_secs(20), "both jobs to be final", || async {
        t.count_final().await == 2
    })
    .await;

    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT tenant_id, status::text FROM outreach_logs WHERE job_id = 'appt-7781' ORDER BY tenant_id",
    )
    .fetch_all(&t.pool)
    .await
    .unwrap();
    assert_eq!(
        rows,
        vec![
            ("clinic-1".into(), "simulated".into()),
            ("clinic-2".into(), "simulated".into())
        ]
    );
    let sends = std::fs::read_to_string(&record).unwrap();
    assert_eq!(sends.lines().count(), 2, "each tenant's message went out");

    stop.cancel();
    worker.await.unwrap().unwrap();
    t.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_slower_than_its_lease_is_not_sent_again_by_a_second_copy() {
    let t = TestEnv::new().await;
    let slow = support::fake_providers::serve(
        "/v3/mail/send",
        support::fake_providers::Slow(support::fake_providers::Sendgrid, Duration::from_secs(4)),
    )
    .await;
    support::tenants::set_tenant(
        &t,
        "clinic-1",
        outreach::job::Channel::Email,
        serde_json::json!({"fallback_to_system": false, "chain": [support::tenants::sendgrid_at(&slow)]}),
    )
    .await;
    let mut settings = support::tenants::worker_settings(&t);
    // The send takes four leases; the worker renews its lease meanwhile.
    settings.worker.lease_secs = 1;
    settings.worker.retry_delays_secs = vec![1];
    let (stop, worker) = t.spawn_worker(settings);
    let mut events = t.event_queue().await;
    let publisher = t.publisher().await;
    let job = serde_json::to_vec(&email_payload("slow-1", "clinic-1", "pat@example.com")).unwrap();

    publisher.publish(&job).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    publisher.publish(&job).await.unwrap();
    let (key, first) = events
        .next(Duration::from_secs(30))
        .await
        .expect("sent event");
    let (_, second) = events
        .next(Duration::from_secs(30))
        .await
        .expect("replayed event");

    assert_eq!(key, "sent.email");
    assert_eq!(first["replayed"], false);
    assert_eq!(second["replayed"], true, "the copy found the job sent");
    assert_eq!(
        slow.received_requests().await.unwrap().len(),
        1,
        "sent once"
    );

    stop.cancel();
    worker.await.unwrap().unwrap();
    t.cleanup().await;
}

/// A worker whose email sandbox records each send; returns its record file.
fn recording_worker(
    t: &TestEnv,
) -> (
    String,
    tokio_util::sync::CancellationToken,
    tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    let record = t.path("sandbox.jsonl");
    let mut settings = t.settings.clone();
    settings.defaults.email =
        serde_json::from_value(serde_json::json!({"provider": "sandbox", "record_file": record}))
            .unwrap();
    let (stop, worker) = t.spawn_worker(settings);
    (record, stop, worker)
}

/// Publish the valid job `id` and wait until the sandbox took it.
async fn send_the_real_job(
    t: &TestEnv,
    publisher: &outreach::enqueue::JobPublisher,
    id: &str,
) -> serde_json::Value {
    let good = email_payload(id, "clinic-1", "pat@example.com");
    publisher
        .publish(&serde_json::to_vec(&good).unwrap())
        .await
        .unwrap();
    eventually(Duration::from_secs(20), "the real job is sent", || {
        t.is_simulated(id)
    })
    .await;
    good
}

fn sends_of(record: &str, job_id: &str) -> usize {
    std::fs::read_to_string(record)
        .unwrap_or_default()
        .lines()
        .filter(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["job_id"] == job_id)
        .count()
}

async fn reasons_dead_lettered(t: &TestEnv) -> Vec<(String, Option<String>)> {
    t.dead_letters()
        .await
        .into_iter()
        .map(|(h, _)| {
            (
                h["x-outreach-reason"].clone(),
                h.get("x-outreach-job-id").cloned(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_copy_published_before_the_real_job_does_not_stop_it_being_sent() {
    let t = TestEnv::new().await;
    let (record, stop, worker) = recording_worker(&t);
    let publisher = t.publisher().await;
    let mut bad = email_payload("appt-1", "clinic-1", "pat@example.com");
    bad["recipient"] = "not an address".into();

    publisher
        .publish_raw(&serde_json::to_vec(&bad).unwrap(), None)
        .await
        .unwrap();
    eventually(Duration::from_secs(20), "the bad copy's row", || async {
        t.log_rows()
            .await
            .iter()
            .any(|(j, s, _)| j == "appt-1" && s == "failed")
    })
    .await;
    send_the_real_job(&t, &publisher, "appt-1").await;
    assert_eq!(
        sends_of(&record, "appt-1"),
        1,
        "the provider saw the real job once"
    );
    assert_eq!(
        t.log_rows().await,
        vec![("appt-1".into(), "simulated".into(), Some("sandbox".into()))],
        "one row, the real job's outcome"
    );
    assert_eq!(
        reasons_dead_lettered(&t).await,
        vec![("invalid_recipient".into(), Some("appt-1".into()))],
        "only the bad copy is dead-lettered"
    );
    stop.cancel();
    worker.await.unwrap().unwrap();
    t.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_with_a_duplicate_key_is_read_as_no_job_and_the_real_job_is_sent() {
    let t = TestEnv::new().await;
    let (record, stop, worker) = recording_worker(&t);
    let publisher = t.publisher().await;
    // Which job_id is this? Neither: it is not read leniently.
    let twice = br#"{"version":1,"job_id":"x","job_id":"g-1999","tenant_id":"clinic-1","channel":"email","recipient":"pat@example.com","content":{"subject":"s","text":"t"}}"#;

    publisher.publish_raw(twice, None).await.unwrap();
    send_the_real_job(&t, &publisher, "g-1999").await;
    assert_eq!(sends_of(&record, "g-1999"), 1);
    assert_eq!(
        t.log_rows().await,
        vec![("g-1999".into(), "simulated".into(), Some("sandbox".into()))],
        "no row for either id of the ambiguous copy"
    );
    assert_eq!(
        reasons_dead_lettered(&t).await,
        vec![("malformed_json".into(), None)]
    );
    stop.cancel();
    worker.await.unwrap().unwrap();
    t.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_copy_after_the_real_job_leaves_its_row_and_sends_nothing() {
    let t = TestEnv::new().await;
    let (record, stop, worker) = recording_worker(&t);
    let publisher = t.publisher().await;
    let good = send_the_real_job(&t, &publisher, "appt-2").await;

    let mut bad = good.clone();
    bad["recipient"] = "not an address".into();
    publisher
        .publish_raw(&serde_json::to_vec(&bad).unwrap(), None)
        .await
        .unwrap();
    eventually(
        Duration::from_secs(20),
        "the bad copy is dead-lettered",
        || async { !reasons_dead_lettered(&t).await.is_empty() },
    )
    .await;

    assert_eq!(sends_of(&record, "appt-2"), 1);
    assert_eq!(
        t.log_rows().await,
        vec![("appt-2".into(), "simulated".into(), Some("sandbox".into()))]
    );
    stop.cancel();
    worker.await.unwrap().unwrap();
    t.cleanup().await;
}
