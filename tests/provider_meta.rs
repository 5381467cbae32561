//! Meta WhatsApp Cloud API adapter against a fake Graph endpoint on 127.0.0.1.

use crate::support;

use outreach::job::Channel;
use outreach::provider::settings::MetaSettings;
use outreach::provider::{ErrorKind, Provider, meta::Meta};
use serde_json::{Value, json};
use std::time::Duration;
use support::fake_providers::{self as fake, META_PHONE_ID, META_TOKEN};
use support::{assert_secret_hidden, context, template_job, text_job};
use wiremock::MockServer;

fn settings(server: &MockServer, token: &str) -> MetaSettings {
    serde_json::from_value(json!({
        "access_token": token, "phone_number_id": META_PHONE_ID, "base_url": server.uri(),
    }))
    .unwrap()
}

async fn sent_body(server: &MockServer) -> Value {
    let requests = server.received_requests().await.unwrap();
    assert_eq!(requests.len(), 1);
    requests[0].body_json().unwrap()
}

#[tokio::test]
async fn a_text_message_is_accepted_and_the_wamid_becomes_the_receipt() {
    let server = fake::serve(&fake::meta_path(), fake::Meta).await;
    let provider = Meta::new(&settings(&server, META_TOKEN), &context());

    let receipt = provider.send(&text_job(Channel::Whatsapp)).await.unwrap();

    assert_eq!(receipt.message_id.as_deref(), Some(fake::META_WAMID));
    assert_eq!(
        sent_body(&server).await,
        json!({
            "messaging_product": "whatsapp", "recipient_type": "individual",
            "to": "447700900123", "type": "text", "text": {"body": "See you at 10:00."},
        })
    );
}

#[tokio::test]
async fn a_template_is_sent_with_its_language_and_body_parameters() {
    let server = fake::serve(&fake::meta_path(), fake::Meta).await;
    let provider = Meta::new(&settings(&server, META_TOKEN), &context());

    provider.send(&template_job()).await.unwrap();

    let body = sent_body(&server).await;
    assert_eq!(body["type"], "template");
    assert_eq!(
        body["template"],
        json!({
            "name": "appointment_reminder",
            "language": {"code": "en_GB", "policy": "deterministic"},
            "components": [{"type": "body", "parameters": [
                {"type": "text", "text": "Ada"}, {"type": "text", "text": "10:00"},
            ]}],
        })
    );
}

#[tokio::test]
async fn a_throughput_limit_with_retry_after_is_rate_limited_for_that_long() {
    let answer =
        fake::meta_error(429, 130429, "(#130429) Rate limit hit").insert_header("retry-after", "2");
    let server = fake::serve(&fake::meta_path(), answer).await;
    let provider = Meta::new(&settings(&server, META_TOKEN), &context());

    let e = provider
        .send(&text_job(Channel::Whatsapp))
        .await
        .unwrap_err();

    assert_eq!(
        (e.kind, e.code.as_deref()),
        (ErrorKind::RateLimited, Some("130429"))
    );
    assert_eq!(e.retry_after, Some(Duration::from_secs(2)));
}

#[tokio::test]
async fn an_invalid_token_is_config_that_does_not_show_the_token() {
    let server = fake::serve(&fake::meta_path(), fake::Meta).await;
    let wrong = "EAAG-expired-token-meta-refuses-0123";
    let provider = Meta::new(&settings(&server, wrong), &context());

    let e = provider
        .send(&text_job(Channel::Whatsapp))
        .await
        .unwrap_err();

    assert_eq!(
        (e.kind, e.code.as_deref()),
        (ErrorKind::Config, Some("190"))
    );
    assert!(
        e.message.contains("renew the account's access_token"),
        "{e}"
    );
    assert_secret_hidden(&e, wrong);
}

#[tokio::test]
async fn an_error_that_echoes_the_request_does_not_leak_the_token() {
    let echo = fake::Echo(
        |seen| json!({"error": {"message": seen, "type": "OAuthException", "code": 131026}}),
    );
    let server = fake::serve(&fake::meta_path(), echo).await;
    let provider = Meta::new(&settings(&server, META_TOKEN), &context());

    let e = provider
        .send(&text_job(Channel::Whatsapp))
        .await
        .unwrap_err();

    assert_eq!(e.kind, ErrorKind::Recipient);
    assert!(
        e.message.contains("[redacted]"),
        "the echo reached the error: {e}"
    );
    assert_secret_hidden(&e, META_TOKEN);
}

#[tokio::test]
async fn a_422_without_an_error_message_keeps_the_status_and_what_the_body_said() {
    let answer = wiremock::ResponseTemplate::new(422)
        .set_body_json(json!({"error": {"code": null, "reason": "payload rejected"}}));
    let server = fake::serve(&fake::meta_path(), answer).await;
    let provider = Meta::new(&settings(&server, META_TOKEN), &context());

    let e = provider
        .send(&text_job(Channel::Whatsapp))
        .await
        .unwrap_err();

    assert_eq!(
        (e.kind, e.code.as_deref()),
        (ErrorKind::Content, Some("422"))
    );
    assert!(e.message.contains("payload rejected"), "{e}");
}

#[tokio::test]
async fn a_per_user_marketing_limit_is_deferred_for_that_recipient() {
    let answer = fake::meta_error(
        400,
        131049,
        "(#131049) This message was not delivered to maintain healthy ecosystem engagement.",
    );
    let server = fake::serve(&fake::meta_path(), answer).await;
    let provider = Meta::new(&settings(&server, META_TOKEN), &context());

    let e = provider.send(&template_job()).await.unwrap_err();

    assert_eq!(
        (e.kind, e.code.as_deref()),
        (ErrorKind::RecipientDeferred, Some("131049"))
    );
    assert!(!e.kind.is_account_scoped());
}
