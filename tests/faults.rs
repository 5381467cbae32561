//! Faults operators meet, on servers the test starts for itself (never the
//! shared ones): nothing is lost, nothing is sent twice without need.
//!
//! Slow and disruptive, so `#[ignore]`d: `scripts/test.sh` runs them after
//! the other tests, one at a time (`cargo test --test faults -- --ignored
//! --test-threads=1`).

mod support;

use serde_json::Value;
use std::collections::HashMap;
use std::time::Duration;
use support::fake_providers::{self as fake, Scripted, sendgrid_error};
use support::servers::OwnRabbit;
use support::tenants::*;
use support::{TestEnv, eventually};
use wiremock::MockServer;

const JOBS: usize = 300;

/// How a test takes its broker down and up again.
#[derive(Clone, Copy)]
enum Outage {
    /// `rabbitmqctl stop_app` / `start_app`: the VM stays up.
    App,
    /// The whole node stops and boots again from its data.
    Node,
}

/// Requests per job id at the fake.
async fn requests_by_job(server: &MockServer) -> HashMap<String, usize> {
    let mut by_job = HashMap::new();
    for r in server.received_requests().await.unwrap() {
        let body: Value = serde_json::from_slice(&r.body).unwrap();
        if let Some(id) = body
            .pointer("/personalizations/0/custom_args/job_id")
            .and_then(Value::as_str)
        {
            *by_job.entry(id.to_owned()).or_default() += 1;
        }
    }
    by_job
}

async fn jobs_in_a_retry_tier_survive(outage: Outage) {
    let rabbit = OwnRabbit::start();
    let env = TestEnv::on_broker(&rabbit.url()).await;
    // Every job's first call fails, so all of them wait in the delay tier.
    let (script, _) = Scripted::new(
        (0..JOBS)
            .map(|_| sendgrid_error(500, "Internal Server Error"))
            .collect(),
        fake::Sendgrid,
    );
    let provider = fake::serve("/v3/mail/send", script).await;
    set_tenant(
        &env,
        "clinic-r",
        outreach::job::Channel::Email,
        serde_json::json!({"fallback_to_system": false, "chain": [sendgrid_at(&provider)]}),
    )
    .await;
    let mut s = worker_settings(&env);
    s.worker.quick_retries = 0;
    s.worker.retry_delays_secs = vec![5];
    s.circuit.min_calls = 100_000;
    let (stop, worker) = env.spawn_worker(s);

    let jobs: Vec<Value> = (0..JOBS)
        .map(|i| email(&format!("r-{i}"), "clinic-r"))
        .collect();
    publish(&env, &jobs).await;
    eventually(
        Duration::from_secs(60),
        "every job to wait in the 5 s tier",
        || async { count_status(&env, "retrying").await == JOBS as i64 },
    )
    .await;
    // Down for longer than the delay: the tier's messages expire while the
    // work queue they return to is not there.
    match outage {
        Outage::App => {
            rabbit.stop_app();
            tokio::time::sleep(Duration::from_secs(7)).await;
            rabbit.start_app();
        }
        Outage::Node => {
            rabbit.stop();
            tokio::time::sleep(Duration::from_secs(7)).await;
            rabbit.boot();
        }
    }
    eventually(Duration::from_secs(120), "every job to be sent", || async {
        count_status(&env, "sent").await == JOBS as i64
    })
    .await;

    // Each job: its first call (answered 500), then the one that sent it.
    let calls = requests_by_job(&provider).await;
    assert_eq!(calls.len(), JOBS, "every job reached the provider");
    let odd: Vec<_> = calls.iter().filter(|(_, n)| **n != 2).collect();
    assert!(odd.is_empty(), "jobs not called exactly twice: {odd:?}");
    assert_eq!(count_status(&env, "retrying").await, 0);

    stop.cancel();
    worker.await.unwrap().unwrap();
    env.cleanup().await;
}

#[tokio::test]
#[ignore = "fault suite: scripts/test.sh runs it serially"]
async fn jobs_in_a_retry_tier_survive_a_rabbitmq_app_restart() {
    jobs_in_a_retry_tier_survive(Outage::App).await;
}

#[tokio::test]
#[ignore = "fault suite: scripts/test.sh runs it serially"]
async fn jobs_in_a_retry_tier_survive_a_full_rabbitmq_stop() {
    jobs_in_a_retry_tier_survive(Outage::Node).await;
}
