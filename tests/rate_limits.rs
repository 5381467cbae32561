//! Deployment-wide rate limits and fairness between tenants, on the real
//! broker and database: limits hold across workers, `worker.concurrency`
//! bounds sends, and a tenant at its limit waits in its held queue without
//! holding up the others.

use crate::support;

use futures::StreamExt;
use lapin::options::BasicGetOptions;
use outreach::broker::{self};
use outreach::job::Channel;
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use support::fake_providers::{self as fake, Scripted};
use support::tenants::*;
use support::{AMQP_URL, Binary, Tap, TestEnv, eventually};

/// A tenant limited to 5 per second (burst 5) sends 30 SMS; the provider
/// must never see more than limit + burst in any second, however many
/// workers share the work.
async fn rate_limit_holds_with(workers: usize) {
    let env = TestEnv::new().await;
    let (twilio, arrivals) = Scripted::new(vec![], fake::Twilio);
    let server = fake::serve(&fake::twilio_path(), twilio).await;
    set_tenant(
        &env,
        "limited",
        Channel::Sms,
        json!({"fallback_to_system": false,
        "chain": [twilio_at(&server)], "rate_limits": {"per_second": 5, "burst": 5}}),
    )
    .await;
    let mut vars = worker_env(&env);
    // Only the tenant's own limit is under test.
    vars.insert(
        "OUTREACH__RATE_LIMITS__PROVIDER_PER_SECOND__TWILIO".into(),
        "0".into(),
    );
    let procs: Vec<Binary> = (0..workers).map(|_| Binary::worker(&vars)).collect();

    let jobs: Vec<Value> = (0..30)
        .map(|i| sms(&format!("limited-{i}"), "limited"))
        .collect();
    publish(&env, &jobs).await;
    eventually(
        Duration::from_secs(90),
        "all 30 jobs to be sent",
        || async { count_accepted(&env, "limited").await == 30 },
    )
    .await;

    assert_eq!(arrivals.count(), 30, "each job sent once");
    let peak = arrivals.max_in_window(Duration::from_secs(1));
    assert!(
        peak <= 10,
        "{peak} sends within one second with {workers} workers (limit 5 + burst 5)"
    );
    drop(procs);
    env.cleanup().await;
}

#[tokio::test]
async fn a_tenant_rate_limit_holds_with_one_worker() {
    rate_limit_holds_with(1).await;
}

#[tokio::test]
async fn a_tenant_rate_limit_holds_across_three_worker_processes() {
    rate_limit_holds_with(3).await;
}

#[tokio::test]
async fn worker_concurrency_bounds_the_sends_in_flight_not_the_jobs() {
    let env = TestEnv::new().await;
    // Every answer takes 300 ms: sends of one slot arrive at least 300 ms apart.
    let slow = fake::Slow(fake::Twilio, Duration::from_millis(300));
    let (twilio, arrivals) = Scripted::new(vec![], slow);
    let server = fake::serve(&fake::twilio_path(), twilio).await;
    set_tenant(
        &env,
        "busy",
        Channel::Sms,
        json!({"fallback_to_system": false, "chain": [twilio_at(&server)]}),
    )
    .await;
    let jobs: Vec<Value> = (0..24).map(|i| sms(&format!("busy-{i}"), "busy")).collect();
    publish(&env, &jobs).await;
    let mut vars = worker_env(&env);
    vars.insert("OUTREACH__WORKER__CONCURRENCY".into(), "4".into());
    vars.insert(
        "OUTREACH__RATE_LIMITS__PROVIDER_PER_SECOND__TWILIO".into(),
        "0".into(),
    );
    let worker = Binary::worker(&vars);
    eventually(Duration::from_secs(60), "all 24 jobs sent", || async {
        count_accepted(&env, "busy").await == 24
    })
    .await;
    assert!(worker.terminate().success());

    assert_eq!(arrivals.count(), 24, "each job sent once");
    // All 24 were prefetched at once; only 4 may be at the provider at a time,
    // and the worker keeps all 4 busy.
    let peak = arrivals.max_in_window(Duration::from_millis(290));
    assert!(
        (3..=4).contains(&peak),
        "{peak} sends in flight at once with worker.concurrency = 4"
    );
    env.cleanup().await;
}

#[tokio::test]
async fn a_tenant_with_a_backlog_at_its_limit_does_not_hold_up_other_tenants() {
    let env = TestEnv::new().await;
    // The system default (sandbox) carries both tenants; only "noisy" is limited.
    set_tenant(&env, "noisy", Channel::Sms,
        json!({"chain": [], "fallback_to_system": true, "rate_limits": {"per_second": 2, "burst": 2}})).await;
    let (stop, worker) = env.spawn_worker(worker_settings(&env));

    let backlog: Vec<Value> = (0..300)
        .map(|i| sms(&format!("noisy-{i}"), "noisy"))
        .collect();
    publish(&env, &backlog).await;
    let quiet: Vec<Value> = (0..10)
        .map(|i| sms(&format!("quiet-{i}"), "quiet"))
        .collect();
    publish(&env, &quiet).await;

    eventually(
        Duration::from_secs(60),
        "the quiet tenant's jobs to be sent",
        || async { count_accepted(&env, "quiet").await == 10 },
    )
    .await;
    let noisy_sent = count_accepted(&env, "noisy").await;
    assert_eq!(
        held_queue_count(&env).await,
        1,
        "the backlog waits in the tenant's held queue"
    );
    assert!(
        noisy_sent < 100,
        "the quiet jobs waited for {noisy_sent} noisy ones"
    );
    // ... and the backlog keeps draining at its limit meanwhile.
    eventually(
        Duration::from_secs(30),
        "the backlog to keep draining",
        || async { count_accepted(&env, "noisy").await >= noisy_sent + 4 },
    )
    .await;

    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(60), worker).await;
    env.cleanup().await;
}

/// A copy of every job the jobs exchange passes on to the work queues (a
/// private queue on the shared exchange, a fanout with one work queue).
struct WorkQueueTap(Tap);

impl WorkQueueTap {
    async fn new(env: &TestEnv) -> Self {
        Self(env.tap(&env.topology.shared_exchange, "").await)
    }

    /// Publish `jobs`, then a marker job of another tenant, and return the
    /// ids of those jobs that went to the work queues. One publishing channel
    /// keeps their order, so once the marker is in the tap, the rest is decided.
    async fn routed_to_work_queues(&self, env: &TestEnv, jobs: &[Value]) -> Vec<String> {
        let marker = format!("marker-{}", uuid::Uuid::now_v7().simple());
        let mut all = jobs.to_vec();
        all.push(sms(&marker, "quiet"));
        publish(env, &all).await;
        let mut seen = vec![];
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            assert!(
                Instant::now() < deadline,
                "the marker never reached the work queue"
            );
            let got = self
                .0
                .ch
                .basic_get(
                    self.0.queue.as_str().into(),
                    BasicGetOptions { no_ack: true },
                )
                .await
                .unwrap();
            let Some(m) = got else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let job: Value = serde_json::from_slice(&m.delivery.data).unwrap();
            let id = job["job_id"].as_str().unwrap().to_owned();
            if id == marker {
                return seen;
            }
            seen.push(id);
        }
    }

    /// Publish probe jobs of `tenant`, one per poll, until one goes through
    /// the work queues (`through_work`) or one does not; returns how many
    /// probes were published.
    async fn probe_until(&self, env: &TestEnv, tenant: &str, through_work: bool) -> i64 {
        let mut probes = 0;
        let what = if through_work {
            "a job of the tenant to take the work queue"
        } else {
            "a new job of the holding tenant to bypass the work queue"
        };
        eventually(Duration::from_secs(30), what, || {
            probes += 1;
            let job = sms(&format!("probe-{probes}"), tenant);
            async move { self.routed_to_work_queues(env, &[job]).await.is_empty() != through_work }
        })
        .await;
        probes
    }
}

async fn held_queue_count(env: &TestEnv) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM held_queues")
        .fetch_one(&env.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn while_a_tenant_holds_the_broker_routes_its_new_jobs_straight_to_its_held_queue() {
    let env = TestEnv::new().await;
    set_tenant(&env, "noisy", Channel::Sms,
        json!({"chain": [], "fallback_to_system": true, "rate_limits": {"per_second": 1, "burst": 1}})).await;
    let (stop, worker) = env.spawn_worker(worker_settings(&env));
    let tap = WorkQueueTap::new(&env).await;
    let backlog: Vec<Value> = (0..30)
        .map(|i| sms(&format!("noisy-{i}"), "noisy"))
        .collect();
    publish(&env, &backlog).await;

    // Once the worker has moved the backlog and bound the held queue, a new
    // job of the tenant no longer passes through the work queue.
    let probes = tap.probe_until(&env, "noisy", false).await;
    let later: Vec<Value> = (0..5)
        .map(|i| sms(&format!("later-{i}"), "noisy"))
        .collect();
    let through_work = tap.routed_to_work_queues(&env, &later).await;
    assert!(
        through_work.is_empty(),
        "jobs of the holding tenant went through the work queue: {through_work:?}"
    );

    // With the worker stopped (its prefetched jobs back in their queues),
    // no job is lost, and each new one was sent or waits in the held queue.
    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(60), worker).await;
    let conn = broker::connect(&AMQP_URL.parse().unwrap(), "test-depth")
        .await
        .unwrap();
    let held = env.topology.held_queue("noisy", "sms");
    let in_held = broker::queue_depth(&conn, &held).await.unwrap().unwrap() as i64;
    // The marker jobs of "quiet" may still be in the work queue too.
    let in_work = env.topology.work_depth(&conn).await.unwrap() as i64;
    let sent = count_accepted(&env, "noisy").await;
    let published = 30 + probes + 5;
    assert!(
        in_held + sent <= published && published <= in_held + in_work + sent,
        "published {published}: {sent} sent, {in_held} held, {in_work} in the work queue"
    );
    // (A held queue has a single active consumer: no basic.get.)
    let ch = conn.create_channel().await.unwrap();
    let mut held_jobs = ch
        .basic_consume(
            held.as_str().into(),
            "test-held".into(),
            lapin::options::BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            Default::default(),
        )
        .await
        .unwrap();
    let mut waiting = vec![];
    while waiting.len() < in_held as usize {
        let m = tokio::time::timeout(Duration::from_secs(10), held_jobs.next())
            .await
            .expect("the held jobs are delivered")
            .unwrap()
            .unwrap();
        let job: Value = serde_json::from_slice(&m.data).unwrap();
        waiting.push(job["job_id"].as_str().unwrap().to_owned());
    }
    for i in 0..5 {
        let id = format!("later-{i}");
        let was_sent = row(&env, &id)
            .await
            .is_some_and(|r| r["status"] == "simulated");
        assert!(
            was_sent || waiting.contains(&id),
            "{id} neither sent nor in {held}"
        );
    }
    let _ = conn.close(200, "bye".into()).await;
    env.cleanup().await;
}

#[tokio::test]
async fn once_its_held_queue_is_empty_a_tenant_s_jobs_take_the_work_queue_again() {
    let env = TestEnv::new().await;
    set_tenant(&env, "noisy", Channel::Sms,
        json!({"chain": [], "fallback_to_system": true, "rate_limits": {"per_second": 10, "burst": 10}})).await;
    let (stop, worker) = env.spawn_worker(worker_settings(&env));
    let tap = WorkQueueTap::new(&env).await;
    let backlog: Vec<Value> = (0..60)
        .map(|i| sms(&format!("noisy-{i}"), "noisy"))
        .collect();
    publish(&env, &backlog).await;
    eventually(
        Duration::from_secs(30),
        "the backlog to be held",
        || async { held_queue_count(&env).await == 1 },
    )
    .await;
    eventually(
        Duration::from_secs(60),
        "the backlog to be sent",
        || async { count_accepted(&env, "noisy").await == 60 },
    )
    .await;

    let probes = tap.probe_until(&env, "noisy", true).await;
    // Wherever each probe went, it was sent.
    eventually(
        Duration::from_secs(30),
        "every probe to be sent",
        || async { count_accepted(&env, "noisy").await == 60 + probes },
    )
    .await;

    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(60), worker).await;
    env.cleanup().await;
}

#[tokio::test]
async fn a_429_on_an_account_without_a_rate_limit_pauses_it_in_every_worker() {
    use outreach::ratelimit::{LimitSet, RateLimiter};
    use outreach::tenant::{Directory, listener};
    use std::sync::Arc;
    let env = TestEnv::new().await;
    // Two workers' limiters on one database; the second listens as a worker does.
    let first = RateLimiter::new(Some(env.pool.clone()));
    let second = Arc::new(RateLimiter::new(Some(env.pool.clone())));
    let directory = Arc::new(
        Directory::new(
            &env.settings,
            &outreach::app::provider_context(&env.settings),
        )
        .unwrap(),
    );
    let stop = tokio_util::sync::CancellationToken::new();
    let following = tokio::spawn(listener::run(
        env.pool.clone(),
        directory,
        second.clone(),
        stop.clone(),
    ));
    // The shipped `providers.rates.sendgrid = 0`: no bucket for this account.
    let account = LimitSet::new("tenant:clinic-1:email:0", vec![]);
    eventually(
        Duration::from_secs(10),
        "the second worker to learn of the 429",
        || async {
            first
                .pause(&account, Duration::from_secs(30))
                .await
                .unwrap();
            second.paused_for("tenant:clinic-1:email:0").is_some()
        },
    )
    .await;

    let left = second.paused_for("tenant:clinic-1:email:0").unwrap();
    assert!(
        left > Duration::from_secs(20),
        "until the provider's hint: {left:?}"
    );
    assert_eq!(
        second.paused_for("tenant:clinic-2:email:0"),
        None,
        "that account only"
    );
    stop.cancel();
    following.await.unwrap();
    env.cleanup().await;
}

/// On shutdown a job taken from a held queue is given up at the grace, as
/// one from a work queue is: its delivery goes back to its queue and the
/// worker stops, however long its provider takes to answer.
#[tokio::test]
async fn at_shutdown_a_held_queue_job_stuck_at_its_provider_is_given_up_after_the_grace() {
    let env = TestEnv::new().await;
    let hangs = fake::serve(
        &fake::twilio_path(),
        fake::Slow(fake::Twilio, Duration::from_secs(180)),
    )
    .await;
    set_tenant(&env, "slow", Channel::Sms,
        json!({"fallback_to_system": false, "chain": [twilio_at(&hangs)], "rate_limits": {"per_second": 1, "burst": 1}})).await;
    let mut s = worker_settings(&env);
    s.worker.shutdown_grace_secs = 1;
    // A job that must wait for the limit goes to the held queue at once.
    s.rate_limits.max_inline_wait_ms = 0;
    let (stop, worker) = env.spawn_worker(s);
    let jobs: Vec<Value> = (0..10).map(|i| sms(&format!("slow-{i}"), "slow")).collect();
    publish(&env, &jobs).await;
    // The first job took the limit's one send; every later call is a job
    // that waited in the held queue.
    eventually(
        Duration::from_secs(30),
        "a held job to reach the provider",
        || async { hangs.received_requests().await.unwrap_or_default().len() >= 2 },
    )
    .await;

    stop.cancel();
    let ended = tokio::time::timeout(Duration::from_secs(90), worker).await;
    assert!(
        ended.is_ok(),
        "the worker waited on its held job past the shutdown grace"
    );
    ended.unwrap().unwrap().unwrap();
    // Given up, not carried on past the grace: no job went on to its
    // provider's timeout and quick retries and was recorded with an outcome.
    let ended_rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT job_id, status::text FROM outreach_logs WHERE status <> 'processing' ORDER BY job_id",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    assert!(
        ended_rows.is_empty(),
        "jobs carried to an outcome after the grace: {ended_rows:?}"
    );
    // Nothing lost: every job is back in a queue.
    let conn = broker::connect(&AMQP_URL.parse().unwrap(), "test-depth")
        .await
        .unwrap();
    let held = env.topology.held_queue("slow", "sms");
    let in_held = broker::queue_depth(&conn, &held)
        .await
        .unwrap()
        .unwrap_or(0);
    let in_work = env.topology.work_depth(&conn).await.unwrap();
    assert!(
        in_held + in_work >= 10,
        "{in_held} held + {in_work} in the work queue of 10 jobs"
    );
    let _ = conn.close(200, "bye".into()).await;
    env.cleanup().await;
}
