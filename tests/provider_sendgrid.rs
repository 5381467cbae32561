//! SendGrid adapter against a fake Mail Send endpoint on 127.0.0.1.

use crate::support;

use outreach::provider::settings::SendgridSettings;
use outreach::provider::{ErrorKind, Provider, sendgrid::Sendgrid};
use serde_json::{Value, json};
use std::time::Duration;
use support::fake_providers::{self as fake, SENDGRID_KEY};
use support::{assert_secret_hidden, context, email_job};
use wiremock::{MockServer, ResponseTemplate};

fn settings(server: &MockServer, template_id: Option<&str>) -> SendgridSettings {
    serde_json::from_value(json!({
        "api_key": SENDGRID_KEY, "from_email": "clinic@example.com", "from_name": "The Clinic",
        "template_id": template_id, "categories": ["reminders"], "base_url": server.uri(),
    }))
    .unwrap()
}

async fn sent_body(server: &MockServer) -> Value {
    let requests = server.received_requests().await.unwrap();
    assert_eq!(requests.len(), 1);
    requests[0].body_json().unwrap()
}

#[tokio::test]
async fn an_email_is_accepted_and_the_x_message_id_becomes_the_receipt() {
    let server = fake::serve("/v3/mail/send", fake::Sendgrid).await;
    let provider = Sendgrid::new(&settings(&server, None), &context());

    let receipt = provider.send(&email_job()).await.unwrap();

    assert_eq!(
        receipt.message_id.as_deref(),
        Some(fake::SENDGRID_MESSAGE_ID)
    );
    let body = sent_body(&server).await;
    assert_eq!(
        body["from"],
        json!({"email": "clinic@example.com", "name": "The Clinic"})
    );
    assert_eq!(
        body["personalizations"][0]["to"],
        json!([{"email": "patient@example.org"}])
    );
    assert_eq!(
        body["personalizations"][0]["custom_args"],
        json!({"job_id": "job-42", "tenant_id": "clinic-7"})
    );
    assert_eq!(body["subject"], "Your appointment");
    assert_eq!(body["content"][0]["type"], "text/plain");
    assert_eq!(body["content"][1]["type"], "text/html");
    assert_eq!(body["categories"], json!(["reminders"]));
}

#[tokio::test]
async fn a_dynamic_template_is_sent_with_the_job_metadata_instead_of_content() {
    let server = fake::serve("/v3/mail/send", fake::Sendgrid).await;
    let provider = Sendgrid::new(&settings(&server, Some("d-0123456789abcdef")), &context());

    provider.send(&email_job()).await.unwrap();

    let body = sent_body(&server).await;
    assert_eq!(body["template_id"], "d-0123456789abcdef");
    assert_eq!(
        body["personalizations"][0]["dynamic_template_data"],
        json!({"first_name": "Ada"})
    );
    assert!(body.get("content").is_none());
}

#[tokio::test]
async fn a_429_with_retry_after_is_rate_limited_for_that_long() {
    let answer = ResponseTemplate::new(429)
        .insert_header("retry-after", "2")
        .set_body_json(json!({"errors": [{"message": "too many requests", "field": null}]}));
    let server = fake::serve("/v3/mail/send", answer).await;
    let provider = Sendgrid::new(&settings(&server, None), &context());

    let e = provider.send(&email_job()).await.unwrap_err();

    assert_eq!(e.kind, ErrorKind::RateLimited);
    assert_eq!(e.retry_after, Some(Duration::from_secs(2)));
}

#[tokio::test]
async fn a_wrong_api_key_is_config_that_does_not_show_the_key() {
    let server = fake::serve("/v3/mail/send", fake::Sendgrid).await;
    let mut s = settings(&server, None);
    s.api_key = "SG.another-key-that-sendgrid-refuses".into();
    let provider = Sendgrid::new(&s, &context());

    let e = provider.send(&email_job()).await.unwrap_err();

    assert_eq!(
        (e.kind, e.code.as_deref()),
        (ErrorKind::Config, Some("401"))
    );
    assert!(e.message.contains("check the account's api_key"), "{e}");
    assert_secret_hidden(&e, "SG.another-key-that-sendgrid-refuses");
}

#[tokio::test]
async fn an_error_that_echoes_the_request_does_not_leak_the_api_key() {
    let echo = fake::Echo(|seen| json!({"errors": [{"message": seen, "field": null}]}));
    let server = fake::serve("/v3/mail/send", echo).await;
    let provider = Sendgrid::new(&settings(&server, None), &context());

    let e = provider.send(&email_job()).await.unwrap_err();

    assert_eq!(e.kind, ErrorKind::Content);
    assert!(e.message.contains("[redacted]"), "{e}");
    assert_secret_hidden(&e, SENDGRID_KEY);
}

#[tokio::test]
async fn a_server_certificate_that_does_not_verify_is_config_naming_the_fix() {
    outreach::app::install_crypto();
    let dir = tempfile::tempdir().unwrap();
    let tls = support::smtp::UntrustedTlsServer::start(dir.path());
    let s: SendgridSettings = serde_json::from_value(json!({
        "api_key": SENDGRID_KEY, "from_email": "clinic@example.com",
        "base_url": format!("https://localhost:{}", tls.port),
    }))
    .unwrap();
    let provider = Sendgrid::new(&s, &context());

    let e = provider.send(&email_job()).await.unwrap_err();

    assert_eq!(e.kind, ErrorKind::Config, "{e}");
    assert_eq!(
        e.message,
        "sendgrid: certificate for localhost does not verify (unknown issuer): fix the server certificate or the account's base_url"
    );
}
