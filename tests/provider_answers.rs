//! What the chain does with each kind of provider answer, on the real
//! broker and database with fake providers on 127.0.0.1: a 500 falls back,
//! a 401 falls back and opens the account's circuit, a bad recipient fails
//! without fallback, a 429 is retried no sooner than its hint.

use crate::support;

use outreach::job::Channel;
use serde_json::{Value, json};
use std::time::Duration;
use support::fake_providers::{self as fake, Always, Scripted, sendgrid_error, twilio_error};
use support::tenants::*;
use support::{TestEnv, eventually, free_port, http_get};

#[tokio::test]
async fn a_primary_answering_500_falls_back_and_the_log_and_event_name_the_fallback() {
    let env = TestEnv::new().await;
    let broken = fake::serve(
        "/v3/mail/send",
        Always(sendgrid_error(500, "Internal Server Error")),
    )
    .await;
    let healthy = fake::serve("/v3/mail/send", fake::Sendgrid).await;
    set_tenant(&env, "clinic-a", Channel::Email,
        json!({"fallback_to_system": false, "chain": [sendgrid_at(&broken), sendgrid_at(&healthy)]})).await;
    let mut events = env.event_queue().await;
    let (stop, worker) = env.spawn_worker(worker_settings(&env));

    publish(&env, &[email("job-500", "clinic-a")]).await;
    let r = wait_final(&env, "job-500", Duration::from_secs(30)).await;

    assert_eq!(r["status"], "sent");
    assert_eq!(r["provider"], "sendgrid");
    assert_eq!(r["chain_step"], 1, "the fallback delivered");
    assert_eq!(r["fallback_used"], true);
    let log = r["attempt_log"].as_array().unwrap();
    let primary: Vec<&Value> = log.iter().filter(|a| a["step"] == 0).collect();
    assert!(!primary.is_empty());
    assert!(
        primary
            .iter()
            .all(|a| a["kind"] == "transient" && a["code"] == "500"),
        "{log:?}"
    );
    assert_eq!(log.last().unwrap()["step"], 1);
    assert_eq!(log.last().unwrap()["kind"], Value::Null);
    assert_eq!(healthy.received_requests().await.unwrap().len(), 1);

    let (key, event) = events
        .next(Duration::from_secs(10))
        .await
        .expect("an event");
    assert_eq!(key, "sent.email");
    assert_eq!(event["chain_step"], 1);
    assert_eq!(event["fallback_used"], true);
    assert_eq!(event["attempt_log"].as_array().unwrap().len(), log.len());

    stop.cancel();
    worker.await.unwrap().unwrap();
    env.cleanup().await;
}

#[tokio::test]
async fn a_primary_answering_401_falls_back_and_its_circuit_opens_after_the_threshold() {
    let env = TestEnv::new().await;
    let refused = fake::serve(
        "/v3/mail/send",
        Always(sendgrid_error(
            401,
            "The provided authorization grant is invalid, expired, or revoked",
        )),
    )
    .await;
    let healthy = fake::serve("/v3/mail/send", fake::Sendgrid).await;
    set_tenant(&env, "clinic-b", Channel::Email,
        json!({"fallback_to_system": false, "chain": [sendgrid_at(&refused), sendgrid_at(&healthy)]})).await;
    let mut s = worker_settings(&env);
    s.circuit.min_calls = 3;
    s.circuit.open_secs = 600;
    let port = free_port();
    s.http.bind = format!("127.0.0.1:{port}");
    let (stop, worker) = env.spawn_worker(s);

    // One at a time, so each outcome is known before the next call.
    for i in 0..8 {
        let id = format!("job-401-{i}");
        publish(&env, &[email(&id, "clinic-b")]).await;
        let r = wait_final(&env, &id, Duration::from_secs(30)).await;
        assert_eq!(r["status"], "sent");
        assert_eq!(r["chain_step"], 1);
    }

    // A 401 is not retried in place; three calls opened the circuit, then
    // the primary was skipped.
    assert_eq!(refused.received_requests().await.unwrap().len(), 3);
    assert_eq!(healthy.received_requests().await.unwrap().len(), 8);
    let (_, metrics) = http_get(&format!("http://127.0.0.1:{port}/metrics")).await;
    let open = metrics.lines().find(|l| {
        l.starts_with("outreach_circuit_state{")
            && l.contains("account=\"tenant:clinic-b:email:0\"")
            && l.contains("state=\"open\"")
    });
    assert!(
        open.is_some_and(|l| l.ends_with(" 1")),
        "circuit gauge: {open:?}"
    );

    stop.cancel();
    worker.await.unwrap().unwrap();
    env.cleanup().await;
}

#[tokio::test]
async fn an_invalid_recipient_fails_without_fallback_and_is_dead_lettered() {
    let env = TestEnv::new().await;
    let primary = fake::serve(
        &fake::twilio_path(),
        Always(twilio_error(
            400,
            21211,
            "The 'To' number +447700900123 is not a valid phone number.",
        )),
    )
    .await;
    let fallback = fake::serve(&fake::twilio_path(), fake::Twilio).await;
    set_tenant(
        &env,
        "clinic-c",
        Channel::Sms,
        json!({"chain": [twilio_at(&primary), twilio_at(&fallback)]}),
    )
    .await;
    let (stop, worker) = env.spawn_worker(worker_settings(&env));

    publish(&env, &[sms("job-bad-number", "clinic-c")]).await;
    let r = wait_final(&env, "job-bad-number", Duration::from_secs(30)).await;

    assert_eq!(r["status"], "failed");
    assert_eq!(r["error_kind"], "recipient");
    assert_eq!(r["error_code"], "21211");
    assert_eq!(
        primary.received_requests().await.unwrap().len(),
        1,
        "not retried"
    );
    assert!(
        fallback.received_requests().await.unwrap().is_empty(),
        "no fallback for a bad number"
    );
    // The dead letter is published before the row's job is acked.
    let dead = env.dead_letters().await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].0["x-outreach-job-id"], "job-bad-number");
    assert_eq!(dead[0].0["x-outreach-reason"], "recipient");

    stop.cancel();
    worker.await.unwrap().unwrap();
    env.cleanup().await;
}

#[tokio::test]
async fn a_429_with_retry_after_2_is_retried_no_sooner_and_other_tenants_keep_flowing() {
    let env = TestEnv::new().await;
    let (twilio, arrivals) = Scripted::new(
        vec![twilio_error(429, 20429, "Too Many Requests").insert_header("Retry-After", "2")],
        fake::Twilio,
    );
    let server = fake::serve(&fake::twilio_path(), twilio).await;
    set_tenant(
        &env,
        "busy",
        Channel::Sms,
        json!({"fallback_to_system": false, "chain": [twilio_at(&server)]}),
    )
    .await;
    let mut s = worker_settings(&env);
    // A 2 s hint lands in the 3 s tier.
    s.worker.retry_delays_secs = vec![1, 3, 10];
    let (stop, worker) = env.spawn_worker(s);

    publish(&env, &[sms("job-429", "busy")]).await;
    eventually(
        Duration::from_secs(20),
        "the first attempt to be answered 429",
        || async {
            row(&env, "job-429")
                .await
                .is_some_and(|r| r["status"] == "retrying")
        },
    )
    .await;
    let others: Vec<Value> = (0..5)
        .map(|i| sms(&format!("other-{i}"), "other"))
        .collect();
    publish(&env, &others).await;
    eventually(
        Duration::from_secs(20),
        "the other tenant's jobs to be sent",
        || async { count_accepted(&env, "other").await == 5 },
    )
    .await;
    let still_waiting = row(&env, "job-429").await.unwrap();

    let r = wait_final(&env, "job-429", Duration::from_secs(30)).await;
    assert_eq!(r["status"], "sent");
    assert_eq!(
        still_waiting["status"], "retrying",
        "other tenants were not held up behind it"
    );
    let t = arrivals.times();
    assert_eq!(t.len(), 2, "one 429, then the retry");
    assert!(
        t[1] - t[0] >= Duration::from_secs(2),
        "retried after {:?}",
        t[1] - t[0]
    );

    stop.cancel();
    worker.await.unwrap().unwrap();
    env.cleanup().await;
}
