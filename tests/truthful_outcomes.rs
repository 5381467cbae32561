//! What a row and an event say happened, did happen: retries end when their
//! budget does, nothing is reported sent that reached nobody, configuration
//! trouble fails over at once and otherwise fails (not waits), and every
//! step passed over is in the attempt log. Counted at the fakes.

use crate::support;

use outreach::job::Channel;
use outreach::settings::SystemDefaults;
use serde_json::{Value, json};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::fake_providers::{self as fake, Always, sendgrid_error};
use support::smtp::{SmtpOptions, SmtpServer};
use support::tenants::*;
use support::{TestEnv, eventually, free_port, http_get};

/// A tenant chain that sends only through `entries` (no system default).
fn only(entries: Vec<Value>) -> Value {
    json!({"fallback_to_system": false, "chain": entries})
}

#[tokio::test]
async fn a_provider_answering_500_gets_one_call_plus_the_quick_retries_per_delivery_attempt() {
    let env = TestEnv::new().await;
    let broken = fake::serve(
        "/v3/mail/send",
        Always(sendgrid_error(500, "Internal Server Error")),
    )
    .await;
    set_tenant(
        &env,
        "clinic-a",
        Channel::Email,
        only(vec![sendgrid_at(&broken)]),
    )
    .await;
    let mut s = worker_settings(&env);
    s.worker.quick_retries = 2;
    s.worker.max_attempts = 2;
    s.worker.retry_delays_secs = vec![1];
    // The breaker must not be what ends the calls.
    s.circuit.min_calls = 1000;
    let (stop, worker) = env.spawn_worker(s);

    publish(&env, &[email("job-500", "clinic-a")]).await;
    let r = wait_final(&env, "job-500", Duration::from_secs(30)).await;

    assert_eq!(r["status"], "failed");
    assert_eq!(r["attempts"], 2);
    assert_eq!(
        broken.received_requests().await.unwrap().len(),
        2 * 3,
        "two delivery attempts of 1 call + 2 quick retries"
    );
    assert_eq!(r["attempt_log"].as_array().unwrap().len(), 6);
    let dead = env.dead_letters().await;
    assert_eq!(dead[0].0["x-outreach-reason"], "max_attempts");

    stop.cancel();
    worker.await.unwrap().unwrap();
    env.cleanup().await;
}

/// Runs `outreach <args>` and gives it `limit` to finish (a deadline for
/// failing, not a timing assertion); returns (success, stdout).
fn run_bounded(
    vars: &std::collections::HashMap<String, String>,
    args: &[&str],
    limit: Duration,
) -> (bool, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_outreach"))
        .args(args)
        .envs(vars)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let out = child.wait_with_output().unwrap();
            return (status.success(), String::from_utf8(out.stdout).unwrap());
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            panic!("outreach {args:?} did not return within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test]
async fn tenant_test_against_a_closed_port_returns_and_lists_every_attempt() {
    let env = TestEnv::new().await;
    let closed = format!("http://127.0.0.1:{}", free_port());
    let entry = json!({"provider": "sendgrid", "api_key": fake::SENDGRID_KEY,
        "from_email": "desk@clinic.example", "base_url": closed});
    set_tenant(&env, "clinic-t", Channel::Email, only(vec![entry])).await;
    let mut vars = worker_env(&env);
    vars.insert("OUTREACH__WORKER__QUICK_RETRIES".into(), "2".into());

    let (ok, out) = tokio::task::spawn_blocking(move || {
        run_bounded(
            &vars,
            &[
                "tenant",
                "test",
                "clinic-t",
                "--channel",
                "email",
                "--to",
                "me@clinic.example",
            ],
            Duration::from_secs(60),
        )
    })
    .await
    .unwrap();

    assert!(!ok, "a test that reached nobody fails");
    let result: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(result["sent"], false);
    let attempts = result["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 3, "1 call + 2 quick retries: {attempts:?}");
    assert!(attempts.iter().all(|a| a["kind"] == "transient"));
    env.cleanup().await;
}

#[tokio::test]
async fn with_the_shipped_defaults_a_tenant_without_a_chain_fails_with_no_provider() {
    let env = TestEnv::new().await;
    let mut s = worker_settings(&env);
    // What ships: no system default for any channel.
    s.defaults = SystemDefaults::default();
    let mut events = env.event_queue().await;
    let (stop, worker) = env.spawn_worker(s);

    publish(&env, &[email("job-bare", "no-config")]).await;
    let r = wait_final(&env, "job-bare", Duration::from_secs(30)).await;

    assert_eq!(r["status"], "failed");
    assert_eq!(r["error_kind"], "config");
    assert_eq!(r["error_code"], "no_provider");
    assert_eq!(r["provider"], Value::Null);
    let (key, event) = events
        .next(Duration::from_secs(10))
        .await
        .expect("an event");
    assert_eq!(key, "failed.email");
    assert_eq!(event["error"]["code"], "no_provider");
    let dead = env.dead_letters().await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].0["x-outreach-reason"], "no_provider");

    stop.cancel();
    worker.await.unwrap().unwrap();
    env.cleanup().await;
}

/// The worker's log shows values as an operator reads them, not Rust
/// (`"code":"no_provider"`, not `"Some(\\"no_provider\\")"`).
#[tokio::test]
async fn the_dead_letter_log_line_shows_the_error_code_as_a_plain_value() {
    let env = TestEnv::new().await;
    let mut vars = env.env_vars();
    // What ships: no system default for any channel.
    vars.retain(|k, _| !k.starts_with("OUTREACH__DEFAULTS__"));
    vars.insert("RUST_LOG".into(), "warn".into());
    let log = env.path("worker.log");
    let worker = support::Binary::worker_with_stderr(&vars, std::fs::File::create(&log).unwrap());

    publish(&env, &[email("job-bare", "no-config")]).await;
    let r = wait_final(&env, "job-bare", Duration::from_secs(30)).await;
    assert_eq!(r["error_code"], "no_provider");
    assert!(worker.terminate().success());

    let text = std::fs::read_to_string(&log).unwrap();
    let line = text
        .lines()
        .find(|l| l.contains("dead-lettered"))
        .unwrap_or_else(|| panic!("no dead-letter line in:\n{text}"));
    let entry: Value = serde_json::from_str(line).unwrap();
    assert_eq!(entry["code"], "no_provider", "{line}");
    env.cleanup().await;
}

#[tokio::test]
async fn a_message_the_sandbox_accepted_is_logged_simulated_never_sent() {
    let env = TestEnv::new().await;
    let mut s = worker_settings(&env);
    let port = free_port();
    s.http.bind = format!("127.0.0.1:{port}");
    let mut events = env.event_queue().await;
    let (stop, worker) = env.spawn_worker(s);

    publish(&env, &[email("job-sandbox", "no-config")]).await;
    let r = wait_final(&env, "job-sandbox", Duration::from_secs(30)).await;

    assert_eq!(r["status"], "simulated");
    assert_eq!(r["provider"], "sandbox");
    assert_eq!(r["sent_at"], Value::Null, "nothing was sent");
    let (key, _) = events
        .next(Duration::from_secs(10))
        .await
        .expect("an event");
    assert_eq!(key, "simulated.email");
    let (_, metrics) = http_get(&format!("http://127.0.0.1:{port}/metrics")).await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("outreach_jobs_simulated_total{channel=\"email\"}")),
        "{metrics}"
    );

    stop.cancel();
    worker.await.unwrap().unwrap();
    env.cleanup().await;
}

#[tokio::test]
async fn a_tenant_entry_whose_credentials_cannot_be_read_is_skipped_visibly() {
    let env = TestEnv::new().await;
    let healthy = fake::serve("/v3/mail/send", fake::Sendgrid).await;
    // Stored under key k1; the worker below only has another key.
    set_tenant(
        &env,
        "clinic-k",
        Channel::Email,
        json!({"fallback_to_system": true, "chain": [sendgrid_at(&healthy)]}),
    )
    .await;
    let mut s = worker_settings(&env);
    s.crypto.keys = vec![outreach::crypto::KeyConfig {
        id: "k2".into(),
        key: "f".repeat(64).into(),
    }];
    let mut events = env.event_queue().await;
    let (stop, worker) = env.spawn_worker(s);

    publish(&env, &[email("job-k", "clinic-k")]).await;
    let r = wait_final(&env, "job-k", Duration::from_secs(30)).await;

    assert_eq!(
        r["status"], "simulated",
        "the system default (sandbox) took it"
    );
    assert_eq!(r["chain_step"], 1);
    assert_eq!(r["fallback_used"], true);
    let log = r["attempt_log"].as_array().unwrap();
    assert_eq!(log.len(), 2, "{log:?}");
    assert_eq!(log[0]["step"], 0);
    assert_eq!(log[0]["provider"], "sendgrid");
    assert_eq!(log[0]["skipped"], "unusable");
    assert_eq!(log[0]["kind"], "config");
    assert_eq!(log[1]["step"], 1);
    assert_eq!(log[1]["skipped"], Value::Null);
    assert!(healthy.received_requests().await.unwrap().is_empty());
    let (_, event) = events
        .next(Duration::from_secs(10))
        .await
        .expect("an event");
    assert_eq!(event["attempt_log"][0]["skipped"], "unusable");

    stop.cancel();
    worker.await.unwrap().unwrap();
    env.cleanup().await;
}

#[tokio::test]
async fn a_step_passed_over_for_an_open_circuit_is_in_the_attempt_log() {
    let env = TestEnv::new().await;
    let broken = fake::serve(
        "/v3/mail/send",
        Always(sendgrid_error(500, "Internal Server Error")),
    )
    .await;
    let healthy = fake::serve("/v3/mail/send", fake::Sendgrid).await;
    set_tenant(
        &env,
        "clinic-c",
        Channel::Email,
        only(vec![sendgrid_at(&broken), sendgrid_at(&healthy)]),
    )
    .await;
    let mut s = worker_settings(&env);
    s.worker.quick_retries = 0;
    s.circuit.min_calls = 3;
    s.circuit.open_secs = 600;
    let (stop, worker) = env.spawn_worker(s);

    // One at a time: three failures open the primary's circuit.
    for i in 0..4 {
        let id = format!("job-c-{i}");
        publish(&env, &[email(&id, "clinic-c")]).await;
        wait_final(&env, &id, Duration::from_secs(30)).await;
    }
    let r = row(&env, "job-c-3").await.unwrap();

    assert_eq!(r["status"], "sent");
    assert_eq!(r["chain_step"], 1);
    let log = r["attempt_log"].as_array().unwrap();
    assert_eq!(log.len(), 2, "{log:?}");
    assert_eq!(log[0]["step"], 0);
    assert_eq!(log[0]["skipped"], "circuit_open");
    assert_eq!(log[0]["code"], "circuit_open");
    assert_eq!(log[1]["step"], 1);
    assert_eq!(broken.received_requests().await.unwrap().len(), 3);

    stop.cancel();
    worker.await.unwrap().unwrap();
    env.cleanup().await;
}

#[tokio::test]
async fn refused_credentials_with_no_other_step_fail_at_once_naming_the_account() {
    let env = TestEnv::new().await;
    let refused = fake::serve(
        "/v3/mail/send",
        Always(sendgrid_error(
            401,
            "The provided authorization grant is invalid, expired, or revoked",
        )),
    )
    .await;
    set_tenant(
        &env,
        "clinic-r",
        Channel::Email,
        only(vec![sendgrid_at(&refused)]),
    )
    .await;
    let mut s = worker_settings(&env);
    // Long tiers: a job that waited one would not be final within the test.
    s.worker.retry_delays_secs = vec![600];
    let (stop, worker) = env.spawn_worker(s);

    publish(&env, &[email("job-401", "clinic-r")]).await;
    let r = wait_final(&env, "job-401", Duration::from_secs(30)).await;

    assert_eq!(r["status"], "failed");
    assert_eq!(r["error_kind"], "config");
    assert_eq!(r["attempts"], 1, "not waited out");
    assert_eq!(
        refused.received_requests().await.unwrap().len(),
        1,
        "not retried"
    );
    let message: String =
        sqlx::query_scalar("SELECT error_message FROM outreach_logs WHERE job_id = 'job-401'")
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert!(message.contains("tenant:clinic-r:email:0"), "{message}");
    let dead = env.dead_letters().await;
    assert_eq!(dead[0].0["x-outreach-reason"], "config");

    stop.cancel();
    worker.await.unwrap().unwrap();
    env.cleanup().await;
}

#[tokio::test]
async fn refused_credentials_fall_over_to_the_next_step_at_once() {
    let env = TestEnv::new().await;
    let refused = fake::serve(
        "/v3/mail/send",
        Always(sendgrid_error(403, "access forbidden")),
    )
    .await;
    let healthy = fake::serve("/v3/mail/send", fake::Sendgrid).await;
    set_tenant(
        &env,
        "clinic-f",
        Channel::Email,
        only(vec![sendgrid_at(&refused), sendgrid_at(&healthy)]),
    )
    .await;
    let (stop, worker) = env.spawn_worker(worker_settings(&env));

    publish(&env, &[email("job-403", "clinic-f")]).await;
    let r = wait_final(&env, "job-403", Duration::from_secs(30)).await;

    assert_eq!(r["status"], "sent");
    assert_eq!(r["chain_step"], 1);
    assert_eq!(r["attempts"], 1);
    assert_eq!(refused.received_requests().await.unwrap().len(), 1);
    assert_eq!(healthy.received_requests().await.unwrap().len(), 1);
    let log = r["attempt_log"].as_array().unwrap();
    assert_eq!(log[0]["kind"], "config");

    stop.cancel();
    worker.await.unwrap().unwrap();
    env.cleanup().await;
}

/// A tenant chain entry for the test SMTP server (plain SMTP, or STARTTLS
/// trusting nothing but the system's roots, so its test certificate fails).
fn smtp_at(smtp: &SmtpServer, starttls: bool) -> Value {
    json!({"provider": "smtp", "host": "localhost", "port": smtp.port,
        "security": if starttls { "starttls" } else { "none" },
        "from_email": "reminders@clinic.example"})
}

fn mail(id: &str, tenant: &str, to: &str) -> Value {
    support::email_payload(id, tenant, to)
}

#[tokio::test]
async fn an_smtp_451_for_the_account_gets_one_call_plus_the_quick_retries_per_delivery_attempt() {
    let env = TestEnv::new().await;
    let smtp = SmtpServer::start(env.dir.path(), SmtpOptions::default());
    set_tenant(
        &env,
        "clinic-s",
        Channel::Email,
        only(vec![smtp_at(&smtp, false)]),
    )
    .await;
    let mut s = worker_settings(&env);
    s.worker.quick_retries = 2;
    s.worker.max_attempts = 2;
    s.worker.retry_delays_secs = vec![1];
    s.circuit.min_calls = 1000;
    let (stop, worker) = env.spawn_worker(s);

    // "451 4.3.0": the server's own trouble, not the mailbox's.
    publish(
        &env,
        &[mail("job-451", "clinic-s", "tempfail@clinic.example")],
    )
    .await;
    let r = wait_final(&env, "job-451", Duration::from_secs(30)).await;

    assert_eq!(r["status"], "failed");
    assert_eq!(r["error_kind"], "transient");
    assert_eq!(smtp.rcpt_count("tempfail@clinic.example"), 2 * 3);

    stop.cancel();
    worker.await.unwrap().unwrap();
    env.cleanup().await;
}

#[tokio::test]
async fn a_greylisting_recipient_does_not_close_the_account_for_the_others() {
    let env = TestEnv::new().await;
    let smtp = SmtpServer::start(env.dir.path(), SmtpOptions::default());
    set_tenant(
        &env,
        "clinic-g",
        Channel::Email,
        only(vec![smtp_at(&smtp, false)]),
    )
    .await;
    let mut s = worker_settings(&env);
    s.circuit.min_calls = 3;
    s.circuit.open_secs = 600;
    // Greylisted jobs wait their tier, long after this test.
    s.worker.retry_delays_secs = vec![600];
    let port = free_port();
    s.http.bind = format!("127.0.0.1:{port}");
    let (stop, worker) = env.spawn_worker(s);

    let mut jobs = vec![];
    for i in 0..20 {
        jobs.push(mail(
            &format!("grey-{i}"),
            "clinic-g",
            "greylist@clinic.example",
        ));
        jobs.push(mail(
            &format!("ok-{i}"),
            "clinic-g",
            &format!("ok{i}@clinic.example"),
        ));
    }
    publish(&env, &jobs).await;
    for i in 0..20 {
        let r = wait_final(&env, &format!("ok-{i}"), Duration::from_secs(60)).await;
        assert_eq!(r["status"], "sent", "ok-{i}: {r}");
        assert_eq!(r["chain_step"], 0);
        assert_eq!(r["attempt_log"].as_array().unwrap().len(), 1, "ok-{i}: {r}");
    }
    for i in 0..20 {
        let id = format!("grey-{i}");
        eventually(
            Duration::from_secs(30),
            "the greylisted job to be retrying",
            || async {
                row(&env, &id)
                    .await
                    .is_some_and(|r| r["status"] == "retrying")
            },
        )
        .await;
        let r = row(&env, &id).await.unwrap();
        assert_eq!(r["error_kind"], "recipient_deferred");
    }

    assert_eq!(
        smtp.messages().len(),
        20,
        "every other recipient got its mail"
    );
    assert_eq!(
        smtp.rcpt_count("greylist@clinic.example"),
        20,
        "one call each: waiting is the recipient's ask"
    );
    let (_, metrics) = http_get(&format!("http://127.0.0.1:{port}/metrics")).await;
    assert!(
        !metrics
            .lines()
            .any(|l| l.starts_with("outreach_circuit_transitions_total") && l.contains("smtp")),
        "the account's breaker never moved: {metrics}"
    );

    stop.cancel();
    worker.await.unwrap().unwrap();
    env.cleanup().await;
}

#[tokio::test]
async fn a_certificate_that_does_not_verify_fails_at_once_when_no_other_step_exists() {
    let env = TestEnv::new().await;
    let smtp = SmtpServer::start(
        env.dir.path(),
        SmtpOptions {
            starttls: true,
            require_tls: true,
            ..Default::default()
        },
    );
    set_tenant(
        &env,
        "clinic-tls",
        Channel::Email,
        only(vec![smtp_at(&smtp, true)]),
    )
    .await;
    let mut s = worker_settings(&env);
    s.worker.retry_delays_secs = vec![600];
    let before = smtp.connections();
    let (stop, worker) = env.spawn_worker(s);

    publish(&env, &[mail("job-tls", "clinic-tls", "pat@clinic.example")]).await;
    let r = wait_final(&env, "job-tls", Duration::from_secs(30)).await;

    assert_eq!(r["status"], "failed");
    assert_eq!(r["error_kind"], "config");
    assert_eq!(r["attempts"], 1);
    assert_eq!(
        smtp.connections() - before,
        1,
        "one connection, not retried"
    );
    assert!(smtp.messages().is_empty());
    let dead = env.dead_letters().await;
    assert_eq!(dead[0].0["x-outreach-reason"], "config");
    assert!(
        dead[0].0["x-outreach-error"].contains("certificate"),
        "{:?}",
        dead[0].0
    );

    stop.cancel();
    worker.await.unwrap().unwrap();
    env.cleanup().await;
}

#[tokio::test]
async fn a_certificate_that_does_not_verify_falls_over_to_the_next_step_at_once() {
    let env = TestEnv::new().await;
    let smtp = SmtpServer::start(
        env.dir.path(),
        SmtpOptions {
            starttls: true,
            require_tls: true,
            ..Default::default()
        },
    );
    let healthy = fake::serve("/v3/mail/send", fake::Sendgrid).await;
    set_tenant(
        &env,
        "clinic-tls2",
        Channel::Email,
        only(vec![smtp_at(&smtp, true), sendgrid_at(&healthy)]),
    )
    .await;
    let before = smtp.connections();
    let (stop, worker) = env.spawn_worker(worker_settings(&env));

    publish(
        &env,
        &[mail("job-tls2", "clinic-tls2", "pat@clinic.example")],
    )
    .await;
    let r = wait_final(&env, "job-tls2", Duration::from_secs(30)).await;

    assert_eq!(r["status"], "sent");
    assert_eq!(r["chain_step"], 1);
    assert_eq!(r["attempts"], 1);
    assert_eq!(smtp.connections() - before, 1);
    assert_eq!(healthy.received_requests().await.unwrap().len(), 1);
    assert_eq!(r["attempt_log"][0]["kind"], "config");

    stop.cancel();
    worker.await.unwrap().unwrap();
    env.cleanup().await;
}

#[tokio::test]
async fn jobs_asking_for_what_version_1_does_not_do_are_dead_lettered_as_unknown_field() {
    let env = TestEnv::new().await;
    let record = env.path("sandbox.jsonl");
    let mut s = worker_settings(&env);
    s.defaults.email = Some(
        serde_json::from_value(json!({"provider": "sandbox", "record_file": record})).unwrap(),
    );
    let (stop, worker) = env.spawn_worker(s);

    let mut later = email("later", "clinic-u");
    later["send_at"] = json!("2030-01-15T09:00:00Z");
    let mut many = email("many", "clinic-u");
    many["recipients"] = json!(["a@clinic.example", "b@clinic.example"]);
    let mut typo = email("typo", "clinic-u");
    typo["metdata"] = json!({"case": "typo"});
    // As an upstream app that does not validate would publish them.
    let payloads: Vec<Vec<u8>> = [later, many, typo]
        .iter()
        .map(|j| j.to_string().into_bytes())
        .collect();
    env.publisher().await.publish_many(&payloads).await.unwrap();
    for id in ["later", "many", "typo"] {
        let r = wait_final(&env, id, Duration::from_secs(30)).await;
        assert_eq!(r["status"], "failed", "{id}");
        assert_eq!(r["error_code"], "unknown_field", "{id}");
    }

    let dead = env.dead_letters().await;
    let mut named: Vec<(String, String)> = dead
        .iter()
        .map(|(h, _)| {
            (
                h["x-outreach-reason"].clone(),
                h["x-outreach-error"].clone(),
            )
        })
        .collect();
    named.sort();
    assert_eq!(named.len(), 3);
    assert!(named.iter().all(|(reason, _)| reason == "unknown_field"));
    for field in ["send_at", "recipients", "metdata"] {
        assert!(
            named.iter().any(|(_, e)| e.contains(field)),
            "{field} named: {named:?}"
        );
    }
    let sends = std::fs::read_to_string(&record).unwrap_or_default();
    assert_eq!(sends.lines().count(), 0, "nothing was sent");

    stop.cancel();
    worker.await.unwrap().unwrap();
    env.cleanup().await;
}

#[tokio::test]
async fn a_message_id_too_long_to_store_leaves_the_send_recorded_without_it() {
    let env = TestEnv::new().await;
    // 202 Accepted with an X-Message-Id far over any real one, and over
    // PostgreSQL's btree row size for its index even compressed (random hex).
    let long_id: String = (0..250)
        .map(|_| uuid::Uuid::new_v4().simple().to_string())
        .collect();
    let answer = wiremock::ResponseTemplate::new(202).insert_header("x-message-id", long_id);
    let sendgrid = fake::serve("/v3/mail/send", Always(answer)).await;
    set_tenant(
        &env,
        "clinic-a",
        Channel::Email,
        only(vec![sendgrid_at(&sendgrid)]),
    )
    .await;
    let (stop, worker) = env.spawn_worker(worker_settings(&env));

    let ids = ["long-id-1", "long-id-2", "long-id-3"];
    let jobs: Vec<Value> = ids.iter().map(|id| email(id, "clinic-a")).collect();
    publish(&env, &jobs).await;
    for id in ids {
        let r = wait_final(&env, id, Duration::from_secs(30)).await;
        assert_eq!(r["status"], "sent", "{id}: {r}");
        assert_eq!(r["provider"], "sendgrid", "{id}: {r}");
    }

    let ids_stored: Vec<Option<String>> =
        sqlx::query_scalar("SELECT provider_message_id FROM outreach_logs ORDER BY job_id")
            .fetch_all(&env.pool)
            .await
            .unwrap();
    assert_eq!(ids_stored, vec![None, None, None]);
    assert_eq!(
        sendgrid.received_requests().await.unwrap().len(),
        3,
        "one call each"
    );
    assert!(env.dead_letters().await.is_empty(), "nothing dead-lettered");
    stop.cancel();
    worker.await.unwrap().unwrap();
    env.cleanup().await;
}
