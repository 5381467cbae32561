//! SES adapter against a fake SES v2 endpoint on 127.0.0.1 that recomputes
//! the SigV4 signature with the documented algorithm.

use crate::support;

use outreach::provider::settings::SesSettings;
use outreach::provider::{ErrorKind, Provider, ses::Ses};
use serde_json::{Value, json};
use std::time::Duration;
use support::fake_providers::{self as fake, SES_ACCESS_KEY_ID, SES_REGION, SES_SECRET};
use support::{assert_secret_hidden, context, email_job};
use wiremock::{MockServer, ResponseTemplate};

const PATH: &str = "/v2/email/outbound-emails";

fn settings(server: &MockServer, secret: &str) -> SesSettings {
    serde_json::from_value(json!({
        "region": SES_REGION, "access_key_id": SES_ACCESS_KEY_ID, "secret_access_key": secret,
        "from_email": "clinic@example.com", "from_name": "The Clinic",
        "configuration_set": "outreach-events", "base_url": server.uri(),
    }))
    .unwrap()
}

#[test]
fn the_fakes_signature_check_reproduces_the_aws_post_vanilla_example() {
    // aws-signing-test-suite/v4/post-vanilla (AWS's published SigV4 vectors).
    let signed = fake::Signed {
        method: "POST",
        path: "/",
        query: "",
        headers: &[
            ("host", "example.amazonaws.com"),
            ("x-amz-date", "20150830T123600Z"),
        ],
        body: b"",
    };
    let signature = fake::sigv4_signature(
        "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
        &signed,
        "20150830T123600Z",
        "20150830/us-east-1/service/aws4_request",
    );
    assert_eq!(
        signature,
        "5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b"
    );
}

#[tokio::test]
async fn a_signed_email_is_accepted_and_the_message_id_becomes_the_receipt() {
    let server = fake::serve(PATH, fake::Ses).await;
    let provider = Ses::new(&settings(&server, SES_SECRET), &context());

    let receipt = provider.send(&email_job()).await.unwrap();

    assert_eq!(receipt.message_id.as_deref(), Some(fake::SES_MESSAGE_ID));
    let requests = server.received_requests().await.unwrap();
    let body: Value = requests[0].body_json().unwrap();
    assert_eq!(
        body["FromEmailAddress"],
        "\"The Clinic\" <clinic@example.com>"
    );
    assert_eq!(
        body["Destination"]["ToAddresses"],
        json!(["patient@example.org"])
    );
    assert_eq!(
        body["Content"]["Simple"]["Subject"]["Data"],
        "Your appointment"
    );
    assert_eq!(
        body["Content"]["Simple"]["Body"]["Text"]["Data"],
        "See you at 10:00."
    );
    assert_eq!(
        body["Content"]["Simple"]["Body"]["Html"]["Data"],
        "<p>See you at 10:00.</p>"
    );
    assert_eq!(body["ConfigurationSetName"], "outreach-events");
    assert_eq!(
        body["EmailTags"],
        json!([{"Name": "job_id", "Value": "job-42"}, {"Name": "tenant_id", "Value": "clinic-7"}])
    );
}

#[tokio::test]
async fn a_request_signed_with_another_secret_is_config_naming_the_keys() {
    let server = fake::serve(PATH, fake::Ses).await;
    let wrong = "not/the+secret/aws/knows/0123456789abcd";
    let provider = Ses::new(&settings(&server, wrong), &context());

    let e = provider.send(&email_job()).await.unwrap_err();

    assert_eq!(e.kind, ErrorKind::Config);
    assert_eq!(e.code.as_deref(), Some("InvalidSignatureException"));
    assert!(
        e.message.contains("check the account's access_key_id"),
        "{e}"
    );
    assert_secret_hidden(&e, wrong);
}

#[tokio::test]
async fn throttling_with_retry_after_is_rate_limited_for_that_long() {
    let answer = ResponseTemplate::new(429)
        .insert_header(
            "x-amzn-ErrorType",
            "TooManyRequestsException:http://internal.amazon.com/",
        )
        .insert_header("retry-after", "2")
        .set_body_json(json!({"message": "Too many requests."}));
    let server = fake::serve(PATH, answer).await;
    let provider = Ses::new(&settings(&server, SES_SECRET), &context());

    let e = provider.send(&email_job()).await.unwrap_err();

    assert_eq!(e.kind, ErrorKind::RateLimited);
    assert_eq!(e.code.as_deref(), Some("TooManyRequestsException"));
    assert_eq!(e.retry_after, Some(Duration::from_secs(2)));
}

#[tokio::test]
async fn an_error_that_echoes_the_secret_key_does_not_leak_it() {
    let echo = fake::Echo(
        |seen| json!({"__type": "BadRequestException", "message": format!("key={SES_SECRET} {seen}")}),
    );
    let server = fake::serve(PATH, echo).await;
    let provider = Ses::new(&settings(&server, SES_SECRET), &context());

    let e = provider.send(&email_job()).await.unwrap_err();

    assert_eq!(e.kind, ErrorKind::Content);
    assert!(
        e.message.contains("[redacted]"),
        "the echo reached the error: {e}"
    );
    assert_secret_hidden(&e, SES_SECRET);
}

#[tokio::test]
async fn an_xml_403_from_the_edge_keeps_the_status_and_what_it_said() {
    let answer = ResponseTemplate::new(403).set_body_raw(
        "<html><body><h1>403 Forbidden</h1>\n<p>Request blocked.</p></body></html>",
        "text/html",
    );
    let server = fake::serve(PATH, answer).await;
    let provider = Ses::new(&settings(&server, SES_SECRET), &context());

    let e = provider.send(&email_job()).await.unwrap_err();

    assert_eq!(e.kind, ErrorKind::Config);
    assert_eq!(e.code.as_deref(), Some("403"));
    assert!(
        e.message
            .contains("<h1>403 Forbidden</h1> <p>Request blocked.</p>"),
        "{e}"
    );
}
