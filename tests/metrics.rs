//! What an operator's Prometheus sees: a worker process run through
//! successes, a fallback and failures, then scraped. The scrape passes
//! `promtool check metrics`, every counter has the value the run implies, a
//! fresh worker exports its counters at zero, and the logs are JSON lines
//! with a span per job and no recipient address or message body.

use crate::support;

use outreach::job::Channel;
use serde_json::json;
use std::collections::{BTreeSet, HashMap};
use std::time::Duration;
use support::fake_providers::{self as fake, Always, sendgrid_error};
use support::tenants::*;
use support::{Binary, TestEnv, http_get};

/// The value of the series `name{labels}` (labels as rendered, in order).
fn value(scrape: &str, series: &str) -> Option<f64> {
    scrape
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Label names of every sample, per metric family (histogram suffixes and
/// `le` folded in), so two label sets for one name show up.
fn label_sets(scrape: &str) -> HashMap<String, BTreeSet<Vec<String>>> {
    let mut sets: HashMap<String, BTreeSet<Vec<String>>> = HashMap::new();
    for l in scrape
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let series = l.rsplit_once(' ').map_or(l, |(s, _)| s);
        let (name, labels) = series.split_once('{').unwrap_or((series, ""));
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        let keys: Vec<String> = labels
            .trim_end_matches('}')
            .split("\",")
            .filter_map(|kv| kv.split_once('=').map(|(k, _)| k.to_owned()))
            .filter(|k| k != "le")
            .collect();
        sets.entry(family.to_owned()).or_default().insert(keys);
    }
    sets
}

/// `promtool check metrics` on a scrape: its complaints, if any.
fn promtool_check(scrape: &str) -> Result<(), String> {
    use std::io::Write;
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool must be installed (apt-get install prometheus; .ci/run does)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(scrape.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() && said.trim().is_empty() {
        Ok(())
    } else {
        Err(said)
    }
}

/// Scrape until `ready` holds for the scrape (panics after `limit`).
async fn scrape_until(
    w: &Binary,
    limit: Duration,
    what: &str,
    ready: impl Fn(&str) -> bool,
) -> String {
    let url = format!("http://127.0.0.1:{}/metrics", w.http_port);
    let started = std::time::Instant::now();
    loop {
        let (code, body) = http_get(&url).await;
        if code == 200 && ready(&body) {
            return body;
        }
        assert!(
            started.elapsed() < limit,
            "timed out waiting for: {what}\n{body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_fresh_worker_exports_its_counters_at_zero_and_passes_promtool() {
    let env = TestEnv::new().await;
    let mut vars = worker_env(&env);
    vars.insert("OUTREACH__METRICS__TENANT_LABELS".into(), "clinic-a".into());
    let w = Binary::worker(&vars);
    let body = scrape_until(
        &w,
        Duration::from_secs(30),
        "the worker serves /metrics",
        |b| b.contains("outreach_build_info"),
    )
    .await;

    for series in [
        r#"outreach_jobs_final_total{channel="email",status="sent"}"#,
        r#"outreach_jobs_final_total{channel="sms",status="failed"}"#,
        r#"outreach_jobs_sent_total{channel="whatsapp",provider="meta"}"#,
        r#"outreach_provider_calls_total{provider="twilio",outcome="transient"}"#,
        r#"outreach_tenant_config_cache_hits_total{channel="email"}"#,
        r#"outreach_tenant_outcomes_total{tenant="clinic-a",channel="email",status="failed"}"#,
        r#"outreach_circuits_not_closed{provider="sendgrid",state="open"}"#,
    ] {
        assert_eq!(
            value(&body, series),
            Some(0.0),
            "{series} at zero in:\n{body}"
        );
    }
    assert!(body.contains("outreach_build_info{version=\""), "{body}");
    assert!(body.contains("\nprocess_resident_memory_bytes "), "{body}");
    promtool_check(&body).unwrap_or_else(|e| panic!("promtool check metrics:\n{e}\n{body}"));

    drop(w);
    env.cleanup().await;
}

#[tokio::test]
async fn after_successes_a_fallback_and_failures_the_scrape_counts_each_and_passes_promtool() {
    let env = TestEnv::new().await;
    let healthy = fake::serve("/v3/mail/send", fake::Sendgrid).await;
    let broken = fake::serve(
        "/v3/mail/send",
        Always(sendgrid_error(500, "Internal Server Error")),
    )
    .await;
    let refusing = fake::serve(
        "/v3/mail/send",
        Always(sendgrid_error(400, "The content value must be a string")),
    )
    .await;
    set_tenant(
        &env,
        "clinic-a",
        Channel::Email,
        json!({"fallback_to_system": false, "chain": [sendgrid_at(&healthy)]}),
    )
    .await;
    set_tenant(&env, "clinic-b", Channel::Email,
        json!({"fallback_to_system": false, "chain": [sendgrid_at(&broken), sendgrid_at(&healthy)]})).await;
    set_tenant(
        &env,
        "clinic-c",
        Channel::Email,
        json!({"fallback_to_system": false, "chain": [sendgrid_at(&refusing)]}),
    )
    .await;

    let mut vars = worker_env(&env);
    vars.insert(
        "OUTREACH__METRICS__TENANT_LABELS".into(),
        "clinic-a,clinic-c".into(),
    );
    vars.insert("OUTREACH__METRICS__QUEUE_SAMPLE_SECS".into(), "1".into());
    vars.insert("OUTREACH__TELEMETRY__FORMAT".into(), "auto".into());
    vars.insert("RUST_LOG".into(), "info".into());
    let log_path = env.path("worker.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let w = Binary::worker_with_stderr(&vars, log);

    let mut jobs = vec![];
    for i in 0..3 {
        jobs.push(email(&format!("ok-{i}"), "clinic-a"));
    }
    jobs.push(email("fallback-0", "clinic-b"));
    for i in 0..2 {
        jobs.push(email(&format!("refused-{i}"), "clinic-c"));
    }
    publish(&env, &jobs).await;
    for id in [
        "ok-0",
        "ok-1",
        "ok-2",
        "fallback-0",
        "refused-0",
        "refused-1",
    ] {
        wait_final(&env, id, Duration::from_secs(30)).await;
    }
    // Counted once the event and dead letter are confirmed, just after the row.
    let body = scrape_until(
        &w,
        Duration::from_secs(10),
        "six final jobs counted and the dead letters sampled",
        |b| {
            let finals: f64 = ["sent", "failed"]
                .iter()
                .filter_map(|s| {
                    value(
                        b,
                        &format!(r#"outreach_jobs_final_total{{channel="email",status="{s}"}}"#),
                    )
                })
                .sum();
            finals == 6.0
                && value(b, r#"outreach_queue_messages{queue="dead_letter"}"#) == Some(2.0)
        },
    )
    .await;

    let expect = [
        (r#"outreach_jobs_consumed_total{channel="email"}"#, 6.0),
        (
            r#"outreach_jobs_final_total{channel="email",status="sent"}"#,
            4.0,
        ),
        (
            r#"outreach_jobs_final_total{channel="email",status="failed"}"#,
            2.0,
        ),
        (
            r#"outreach_jobs_final_total{channel="sms",status="sent"}"#,
            0.0,
        ),
        (
            r#"outreach_jobs_sent_total{channel="email",provider="sendgrid"}"#,
            4.0,
        ),
        (
            r#"outreach_jobs_fallback_total{channel="email",provider="sendgrid"}"#,
            1.0,
        ),
        (
            r#"outreach_jobs_failed_total{channel="email",provider="sendgrid",error_kind="content"}"#,
            2.0,
        ),
        (
            r#"outreach_provider_calls_total{provider="sendgrid",outcome="ok"}"#,
            4.0,
        ),
        (
            r#"outreach_provider_calls_total{provider="sendgrid",outcome="content"}"#,
            2.0,
        ),
        (r#"outreach_events_published_total{status="sent"}"#, 4.0),
        (r#"outreach_events_published_total{status="failed"}"#, 2.0),
        (
            r#"outreach_job_enqueue_to_final_seconds_count{channel="email",status="sent"}"#,
            4.0,
        ),
        (
            r#"outreach_job_consume_to_final_seconds_count{channel="email",status="failed"}"#,
            2.0,
        ),
        (
            r#"outreach_tenant_outcomes_total{tenant="clinic-a",channel="email",status="sent"}"#,
            3.0,
        ),
        (
            r#"outreach_tenant_outcomes_total{tenant="clinic-c",channel="email",status="failed"}"#,
            2.0,
        ),
        (r#"outreach_queue_messages{queue="work"}"#, 0.0),
    ];
    for (series, want) in expect {
        assert_eq!(value(&body, series), Some(want), "{series} in:\n{body}");
    }
    assert!(
        body.lines()
            .any(|l| l.starts_with("outreach_broker_connected{node=\"") && l.ends_with(" 1")),
        "connected to a node: {body}"
    );
    // The primary answered 500 at least once (then quick retries) before the fallback.
    assert!(
        value(
            &body,
            r#"outreach_provider_calls_total{provider="sendgrid",outcome="transient"}"#
        )
        .unwrap()
            >= 1.0
    );
    assert!(
        !body.contains("tenant=\"clinic-b\""),
        "only listed tenants get series: {body}"
    );
    assert!(!body.contains("patient@"), "no recipient in the metrics");
    for (family, sets) in label_sets(&body) {
        assert_eq!(sets.len(), 1, "{family} has one label set, not {sets:?}");
    }
    promtool_check(&body).unwrap_or_else(|e| panic!("promtool check metrics:\n{e}\n{body}"));

    let status = w.terminate();
    assert!(status.success(), "worker exit: {status:?}");
    let logs = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        !logs.contains("patient@example.com"),
        "no full recipient in the logs:\n{logs}"
    );
    assert!(
        !logs.contains("See you Tuesday"),
        "no message body in the logs"
    );
    assert!(!logs.contains('\u{1b}'), "no colour codes in a log file");
    let lines: Vec<serde_json::Value> = logs
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
        .collect();
    // The primary's 500 is logged ("moving down the chain") in the job's span.
    let span = lines
        .iter()
        .find_map(|l| (l["span"]["job_id"] == "fallback-0").then(|| &l["span"]))
        .unwrap_or_else(|| panic!("a log line in fallback-0's span:\n{logs}"));
    assert_eq!(span["name"], "job");
    assert_eq!(span["tenant_id"], "clinic-b");
    assert_eq!(span["channel"], "email");
    assert_eq!(span["attempt"], 1);
    assert_eq!(span["recipient"], "p***@example.com");
    // A job that fails for good says so once, in its span, with its error kind.
    let failed: Vec<_> = lines
        .iter()
        .filter(|l| l["span"]["job_id"] == "refused-0" && l["level"] == "WARN")
        .collect();
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0]["error_kind"], "content");
    assert_eq!(failed[0]["span"]["provider"], "sendgrid");
    assert_eq!(failed[0]["span"]["tenant_id"], "clinic-c");

    env.cleanup().await;
}
