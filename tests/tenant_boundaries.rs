//! What a tenant's provider answers may carry into logs and the log table,
//! and how long a silent SMTP server can hold a send.

use crate::support;

use base64::Engine as _;
use outreach::job::Channel;
use outreach::provider::smtp::Smtp;
use outreach::provider::{ErrorKind, Provider, ProviderContext};
use serde_json::{Value, json};
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::TestEnv;
use support::fake_providers::{TWILIO_SID, TWILIO_TOKEN, twilio_path};
use support::tenants::{self, publish, set_tenant, wait_final, worker_settings};
use wiremock::{Request, Respond, ResponseTemplate};

/// Log output, captured.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Captured {
        self.clone()
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// A provider that echoes the request's Authorization header and body in
/// its error: as Twilio's JSON `message` (401, code 20003) or as plain text
/// (503, so the body excerpt is what the error shows).
struct Echo {
    json: bool,
}

impl Respond for Echo {
    fn respond(&self, r: &Request) -> ResponseTemplate {
        let auth = r
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let body = String::from_utf8_lossy(&r.body).into_owned();
        let said = format!("you sent Authorization: {auth} with body {body}");
        if self.json {
            ResponseTemplate::new(401)
                .set_body_json(json!({"code": 20003, "message": said, "status": 401}))
        } else {
            ResponseTemplate::new(503).set_body_string(said)
        }
    }
}

#[tokio::test]
async fn credentials_recipient_and_message_echoed_by_a_provider_reach_neither_logs_nor_the_log_table()
 {
    let logs = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(logs.clone())
        .with_max_level(tracing::Level::INFO)
        .with_ansi(false)
        .finish();
    // This test's runtime is single-threaded: the worker's tasks log here.
    let _guard = tracing::subscriber::set_default(subscriber);

    let env = TestEnv::new().await;
    let text_echo = support::fake_providers::serve(&twilio_path(), Echo { json: false }).await;
    let json_echo = support::fake_providers::serve(&twilio_path(), Echo { json: true }).await;
    set_tenant(
        &env,
        "clinic-echo",
        Channel::Sms,
        json!({"chain": [tenants::twilio_at(&text_echo), tenants::twilio_at(&json_echo)],
            "fallback_to_system": false}),
    )
    .await;
    let (stop, worker) = env.spawn_worker(worker_settings(&env));

    publish(&env, &[tenants::sms("echo-1", "clinic-echo")]).await;
    let row = wait_final(&env, "echo-1", Duration::from_secs(30)).await;
    stop.cancel();
    worker.await.unwrap().unwrap();

    assert_eq!(row["status"], "failed", "{row}");
    let (message, attempts): (Option<String>, Value) = sqlx::query_as(
        "SELECT error_message, attempt_log FROM outreach_logs WHERE job_id = 'echo-1'",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    let message = message.unwrap();
    // The provider's words are kept, its echo of our request is not.
    assert!(message.contains("you sent Authorization"), "{message}");
    let stored = format!("{message} {attempts}");
    let logged = logs.text();
    assert!(logged.contains("moving down the chain"), "{logged}");
    let basic =
        base64::engine::general_purpose::STANDARD.encode(format!("{TWILIO_SID}:{TWILIO_TOKEN}"));
    let text = "Your appointment is tomorrow at 10:00.";
    let form_text: String = url::form_urlencoded::byte_serialize(text.as_bytes()).collect();
    for (what, needle) in [
        ("auth token", TWILIO_TOKEN),
        ("basic credentials", basic.as_str()),
        ("basic credentials, cut", &basic[..12]),
        ("message", text),
        ("message, form-encoded", form_text.as_str()),
        ("message, a piece", "tomorrow"),
        ("recipient", "447700900123"),
    ] {
        assert!(!stored.contains(needle), "{what} stored: {stored}");
        assert!(!logged.contains(needle), "{what} logged: {logged}");
    }
    env.cleanup().await;
}

#[tokio::test]
async fn an_smtp_server_that_accepts_and_never_speaks_is_bounded_by_the_send_timeout() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        let mut held = vec![];
        while let Ok((conn, _)) = listener.accept().await {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            held.push(conn);
        }
    });
    // lettre's own per-read timeout (connect_timeout) far above the send
    // timeout: only the whole-send bound can end this send in time.
    let ctx = ProviderContext::new(Duration::from_secs(2), Duration::from_secs(120), None)
        .with_network(support::loopback());
    let smtp = Smtp::new(
        &serde_json::from_value(
            json!({"host": "127.0.0.1", "port": port, "security": "none",
            "from_email": "desk@clinic.example"}),
        )
        .unwrap(),
        &ctx,
    )
    .unwrap();

    let started = Instant::now();
    let e = smtp.send(&support::email_job()).await.unwrap_err();
    let took = started.elapsed();

    assert_eq!(e.kind, ErrorKind::Transient, "{e}");
    assert!(e.message.contains("timed out"), "{e}");
    assert!(accepted.load(std::sync::atomic::Ordering::SeqCst) >= 1);
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(4),
        "{took:?}"
    );
}
