//! Twilio adapter against a fake Messages endpoint on 127.0.0.1.

use crate::support;

use outreach::job::Channel;
use outreach::provider::settings::TwilioSettings;
use outreach::provider::{ErrorKind, Provider, ProviderContext, twilio::Twilio};
use serde_json::json;
use std::time::Duration;
use support::fake_providers::{self as fake, TWILIO_SID, TWILIO_TOKEN};
use support::{assert_secret_hidden, context, template_job, text_job};
use wiremock::{MockServer, ResponseTemplate};

fn settings(server: &MockServer, token: &str) -> TwilioSettings {
    serde_json::from_value(json!({
        "account_sid": TWILIO_SID, "auth_token": token, "from": "+14155550100",
        "base_url": server.uri(),
    }))
    .unwrap()
}

async fn sent_form(server: &MockServer) -> Vec<(String, String)> {
    let requests = server.received_requests().await.unwrap();
    assert_eq!(requests.len(), 1);
    url::form_urlencoded::parse(&requests[0].body)
        .into_owned()
        .collect()
}

fn field<'a>(form: &'a [(String, String)], name: &str) -> Option<&'a str> {
    form.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

#[tokio::test]
async fn an_sms_is_accepted_with_a_status_callback_and_the_sid_becomes_the_receipt() {
    let server = fake::serve(&fake::twilio_path(), fake::Twilio).await;
    let webhooks = url::Url::parse("https://outreach.example.com/").unwrap();
    let ctx = ProviderContext::new(
        Duration::from_secs(10),
        Duration::from_secs(5),
        Some(webhooks),
    )
    .with_network(support::loopback());
    let provider = Twilio::new(&settings(&server, TWILIO_TOKEN), &ctx);

    let receipt = provider.send(&text_job(Channel::Sms)).await.unwrap();

    assert_eq!(
        receipt.message_id.as_deref(),
        Some(fake::TWILIO_MESSAGE_SID)
    );
    let form = sent_form(&server).await;
    assert_eq!(field(&form, "To"), Some("+447700900123"));
    assert_eq!(field(&form, "From"), Some("+14155550100"));
    assert_eq!(field(&form, "Body"), Some("See you at 10:00."));
    assert_eq!(
        field(&form, "StatusCallback"),
        Some("https://outreach.example.com/webhooks/twilio/clinic-7")
    );
}

#[tokio::test]
async fn a_whatsapp_message_prefixes_both_numbers() {
    let server = fake::serve(&fake::twilio_path(), fake::Twilio).await;
    let provider = Twilio::new(&settings(&server, TWILIO_TOKEN), &context());

    provider.send(&text_job(Channel::Whatsapp)).await.unwrap();

    let form = sent_form(&server).await;
    assert_eq!(field(&form, "To"), Some("whatsapp:+447700900123"));
    assert_eq!(field(&form, "From"), Some("whatsapp:+14155550100"));
    assert_eq!(field(&form, "StatusCallback"), None);
}

#[tokio::test]
async fn a_whatsapp_template_is_config_naming_meta_without_a_request() {
    let server = fake::serve(&fake::twilio_path(), fake::Twilio).await;
    let provider = Twilio::new(&settings(&server, TWILIO_TOKEN), &context());

    let e = provider.send(&template_job()).await.unwrap_err();

    assert_eq!(e.kind, ErrorKind::Config);
    assert!(
        e.message
            .contains("configure a Meta WhatsApp account for template messages"),
        "{e}"
    );
    assert!(server.received_requests().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_429_with_retry_after_is_rate_limited_for_that_long() {
    let answer = ResponseTemplate::new(429)
        .insert_header("retry-after", "2")
        .set_body_json(json!({"code": 20429, "message": "Too Many Requests", "status": 429}));
    let server = fake::serve(&fake::twilio_path(), answer).await;
    let provider = Twilio::new(&settings(&server, TWILIO_TOKEN), &context());

    let e = provider.send(&text_job(Channel::Sms)).await.unwrap_err();

    assert_eq!(
        (e.kind, e.code.as_deref()),
        (ErrorKind::RateLimited, Some("20429"))
    );
    assert_eq!(e.retry_after, Some(Duration::from_secs(2)));
}

#[tokio::test]
async fn a_wrong_auth_token_is_config_that_does_not_show_the_token() {
    let server = fake::serve(&fake::twilio_path(), fake::Twilio).await;
    let wrong = "not-the-token-twilio-knows-0123456";
    let provider = Twilio::new(&settings(&server, wrong), &context());

    let e = provider.send(&text_job(Channel::Sms)).await.unwrap_err();

    assert_eq!(
        (e.kind, e.code.as_deref()),
        (ErrorKind::Config, Some("20003"))
    );
    assert!(
        e.message
            .contains("check the account's account_sid and auth_token"),
        "{e}"
    );
    assert_secret_hidden(&e, wrong);
}

#[tokio::test]
async fn an_error_that_echoes_the_credentials_does_not_leak_the_token() {
    let echo = fake::Echo(|seen| json!({"code": 21211, "message": seen, "status": 400}));
    let server = fake::serve(&fake::twilio_path(), echo).await;
    let provider = Twilio::new(&settings(&server, TWILIO_TOKEN), &context());

    let e = provider.send(&text_job(Channel::Sms)).await.unwrap_err();

    assert_eq!(e.kind, ErrorKind::Recipient);
    assert!(
        e.message.contains("[redacted]"),
        "the echo reached the error: {e}"
    );
    assert_secret_hidden(&e, TWILIO_TOKEN);
}
