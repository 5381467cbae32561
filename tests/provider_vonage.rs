//! Vonage SMS adapter against a fake `/sms/json` endpoint on 127.0.0.1.

use crate::support;

use outreach::job::Channel;
use outreach::provider::settings::VonageSettings;
use outreach::provider::{ErrorKind, Provider, vonage::Vonage};
use serde_json::json;
use std::time::Duration;
use support::fake_providers::{self as fake, VONAGE_KEY, VONAGE_SECRET};
use support::{assert_secret_hidden, context, text_job};
use wiremock::{MockServer, ResponseTemplate};

const PATH: &str = "/sms/json";

fn settings(server: &MockServer, secret: &str) -> VonageSettings {
    serde_json::from_value(json!({
        "api_key": VONAGE_KEY, "api_secret": secret, "from": "+447700900000",
        "base_url": server.uri(),
    }))
    .unwrap()
}

#[tokio::test]
async fn an_sms_is_accepted_and_the_message_id_becomes_the_receipt() {
    let server = fake::serve(PATH, fake::Vonage).await;
    let provider = Vonage::new(&settings(&server, VONAGE_SECRET), &context());

    let receipt = provider.send(&text_job(Channel::Sms)).await.unwrap();

    assert_eq!(receipt.message_id.as_deref(), Some(fake::VONAGE_MESSAGE_ID));
    let requests = server.received_requests().await.unwrap();
    let form: Vec<(String, String)> = url::form_urlencoded::parse(&requests[0].body)
        .into_owned()
        .collect();
    let field = |n: &str| form.iter().find(|(k, _)| k == n).map(|(_, v)| v.as_str());
    assert_eq!(field("from"), Some("447700900000"));
    assert_eq!(field("to"), Some("447700900123"));
    assert_eq!(field("text"), Some("See you at 10:00."));
    assert_eq!(field("type"), None);
}

#[tokio::test]
async fn throttled_status_1_is_rate_limited() {
    let server = fake::serve(
        PATH,
        fake::vonage_status(
            "1",
            "Throughput Rate Exceeded - please wait [ 1000 ] and retry",
        ),
    )
    .await;
    let provider = Vonage::new(&settings(&server, VONAGE_SECRET), &context());

    let e = provider.send(&text_job(Channel::Sms)).await.unwrap_err();

    assert_eq!(
        (e.kind, e.code.as_deref()),
        (ErrorKind::RateLimited, Some("1"))
    );
}

#[tokio::test]
async fn a_gateway_429_with_retry_after_is_rate_limited_for_that_long() {
    let server = fake::serve(
        PATH,
        ResponseTemplate::new(429).insert_header("retry-after", "2"),
    )
    .await;
    let provider = Vonage::new(&settings(&server, VONAGE_SECRET), &context());

    let e = provider.send(&text_job(Channel::Sms)).await.unwrap_err();

    assert_eq!(e.kind, ErrorKind::RateLimited);
    assert_eq!(e.retry_after, Some(Duration::from_secs(2)));
}

#[tokio::test]
async fn bad_credentials_are_config_that_do_not_show_the_secret() {
    let server = fake::serve(PATH, fake::Vonage).await;
    let wrong = "not-the-vonage-secret-987654";
    let provider = Vonage::new(&settings(&server, wrong), &context());

    let e = provider.send(&text_job(Channel::Sms)).await.unwrap_err();

    assert_eq!((e.kind, e.code.as_deref()), (ErrorKind::Config, Some("4")));
    assert!(
        e.message
            .contains("check the account's api_key and api_secret"),
        "{e}"
    );
    assert_secret_hidden(&e, wrong);
}

#[tokio::test]
async fn an_error_text_that_echoes_the_request_does_not_leak_the_secret() {
    let echo = fake::Echo(
        |seen| json!({"message-count": "1", "messages": [{"status": "3", "error-text": format!("Invalid param in {seen}")}]}),
    );
    let server = fake::serve(PATH, echo).await;
    let provider = Vonage::new(&settings(&server, VONAGE_SECRET), &context());

    let e = provider.send(&text_job(Channel::Sms)).await.unwrap_err();

    assert_eq!((e.kind, e.code.as_deref()), (ErrorKind::Content, Some("3")));
    assert!(
        e.message.contains("api_key"),
        "the echo reached the error: {e}"
    );
    assert_secret_hidden(&e, VONAGE_SECRET);
}
