//! A provider that echoes our request back in its error (as some do with
//! invalid input) never gets the account's secret, the recipient or the
//! message text into what people read: the row's `error_message`, the
//! dead letter's `x-outreach-error` and the `failed` event, even where the
//! echo is long enough to be cut.

use crate::support;

use outreach::job::Channel;
use serde_json::{Value, json};
use std::time::Duration;
use support::TestEnv;
use support::fake_providers::{self as fake, TWILIO_TOKEN, VONAGE_KEY};
use support::tenants::*;

const WAIT: Duration = Duration::from_secs(30);
const RECIPIENT: &str = "+447700900123";
/// Special characters, so the form encoding differs from the raw spelling.
const VONAGE_SECRET: &str = "CNRYvs3#special&s3cret/+=";

fn only(entry: Value) -> Value {
    json!({"fallback_to_system": false, "chain": [entry]})
}

/// Send an sms saying `text` through `tenant`'s only `entry` and return
/// what people read of its failure: the row's error_message, the dead
/// letter's `x-outreach-error` and the failed event's error message.
async fn failure_shown(env: &TestEnv, tenant: &str, entry: Value, text: &str) -> [String; 3] {
    set_tenant(env, tenant, Channel::Sms, only(entry)).await;
    let mut events = env.event_queue().await;
    let (stop, worker) = env.spawn_worker(worker_settings(env));
    let job_id = format!("job-{tenant}");
    let job = json!({"version": 1, "job_id": job_id, "tenant_id": tenant, "channel": "sms",
        "recipient": RECIPIENT, "content": {"text": text}});
    publish(env, &[job]).await;

    let r = wait_final(env, &job_id, WAIT).await;
    assert_eq!(r["status"], "failed", "{r}");
    let row: String =
        sqlx::query_scalar("SELECT error_message FROM outreach_logs WHERE job_id = $1")
            .bind(&job_id)
            .fetch_one(&env.pool)
            .await
            .unwrap();
    let header = env.dead_letters().await[0].0["x-outreach-error"].clone();
    let mut event = None;
    while let Some((key, e)) = events.next(WAIT).await {
        if key.starts_with("failed.") {
            event = Some(e["error"]["message"].as_str().unwrap().to_owned());
            break;
        }
    }
    stop.cancel();
    worker.await.unwrap().unwrap();
    [row, header, event.expect("a failed event")]
}

/// Every spelling of `s` the adapters put on the wire, lower-cased.
fn spellings(s: &str) -> Vec<String> {
    let form: String = url::form_urlencoded::byte_serialize(s.as_bytes()).collect();
    let json = serde_json::to_string(s).unwrap();
    [
        s.to_owned(),
        form.clone(),
        form.replace('+', "%20"),
        json[1..json.len() - 1].to_owned(),
    ]
    .into_iter()
    .map(|v| v.to_ascii_lowercase())
    .collect()
}

/// Neither `s` in any spelling nor its first `head` characters (a cut copy).
fn assert_absent(shown: &str, s: &str, head: usize, what: &str) {
    let lower = shown.to_ascii_lowercase();
    for v in spellings(s) {
        let head: String = v.chars().take(head).collect();
        assert!(
            !lower.contains(&head),
            "the {what} ({head:?}…) appears in {shown:?}"
        );
    }
}

#[tokio::test]
async fn a_vonage_error_echoing_the_form_shows_neither_the_secret_nor_the_text_nor_the_number() {
    let env = TestEnv::new().await;
    let echo = fake::Echo(|seen| json!({"error": format!("bad request: {seen}")}));
    let server = fake::serve("/sms/json", echo).await;
    let vonage = json!({"provider": "vonage", "api_key": VONAGE_KEY, "api_secret": VONAGE_SECRET,
        "from": "+447700900000", "base_url": server.uri()});
    // The echo's excerpt (200 characters) ends 8 characters into the
    // form-encoded secret, which follows the text.
    let text = format!(
        "Dear patient, your biopsy result is ready: call us. {}",
        "x".repeat(44)
    );

    let shown = failure_shown(&env, "clinic-v", vonage, &text).await;

    for s in &shown {
        assert!(s.contains("vonage: HTTP 400"), "{s}");
        assert_absent(s, VONAGE_SECRET, 6, "api_secret");
        assert_absent(s, "Dear patient, your biopsy", 6, "message text");
        assert_absent(s, &RECIPIENT[1..], 12, "recipient");
    }
    env.cleanup().await;
}

#[tokio::test]
async fn a_twilio_error_echoing_a_long_body_shows_neither_the_token_nor_any_of_the_text() {
    let env = TestEnv::new().await;
    let echo = fake::Echo(
        |seen| json!({"code": 21602, "message": format!("Invalid parameter in {seen}"), "status": 400}),
    );
    let server = fake::serve(&fake::twilio_path(), echo).await;
    // Longer than any cut: its end is what a cut copy would leave.
    let text = format!(
        "Dear patient, {}your biopsy result is ready: please call the clinic.",
        "we have news about your care plan and medication. ".repeat(12)
    );

    let shown = failure_shown(&env, "clinic-t", twilio_at(&server), &text).await;

    for s in &shown {
        assert!(s.contains("Invalid parameter in"), "{s}");
        assert_absent(s, TWILIO_TOKEN, 12, "auth_token");
        assert_absent(s, "Dear patient", 6, "message text");
        assert_absent(s, "we have news about", 6, "message text");
        assert_absent(s, &RECIPIENT[1..], 12, "recipient");
    }
    env.cleanup().await;
}
