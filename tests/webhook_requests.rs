//! What the webhook receiver refuses before applying anything, each refusal
//! counted in `outreach_webhooks_refused_total` with its reason: a correctly
//! signed request in a Content-Type the provider never sends (415), a signed
//! Meta body that is not a webhook (400); a body over the limit (413) is in
//! webhooks.rs. And
//! what a provider's failure code becomes: the row's error and its event's.

use crate::support;

use outreach::feedback::verify;
use outreach::job::Channel;
use serde_json::json;
use support::TestEnv;
use support::fake_providers::{
    self as fake, META_WAMID, SENDGRID_MESSAGE_ID, TWILIO_MESSAGE_SID, TWILIO_TOKEN,
};
use support::tenants::*;
use support::webhooks::*;

const META_SECRET: &str = "meta-app-secret-clinic-a";

/// clinic-a with a Twilio (SMS), a SendGrid (email, key seed 1) and a Meta
/// (WhatsApp) account, each a fake.
async fn world() -> World {
    let twilio = fake::serve(&fake::twilio_path(), fake::Twilio).await;
    let sendgrid = fake::serve("/v3/mail/send", fake::Sendgrid).await;
    let meta = fake::serve(&fake::meta_path(), fake::Meta).await;
    let mut sendgrid_entry = sendgrid_at(&sendgrid);
    sendgrid_entry["webhook_verification_key"] =
        json!(sendgrid_public_key(&sendgrid_signing_key(1)));
    World::start(
        TestEnv::new().await,
        vec![
            ("clinic-a", Channel::Sms, twilio_at(&twilio)),
            ("clinic-a", Channel::Email, sendgrid_entry),
            (
                "clinic-a",
                Channel::Whatsapp,
                meta_at(&meta, META_SECRET, "v"),
            ),
        ],
    )
    .await
    .with(twilio)
    .with(sendgrid)
    .with(meta)
}

async fn provider_event_rows(w: &World) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM provider_events")
        .fetch_one(&w.env.pool)
        .await
        .unwrap()
}

/// A correctly signed request of `provider`: posted as `wrong_type` it is
/// refused with 415, counted, and leaves nothing; posted as `right_type`
/// (as the provider posts it) it is accepted.
async fn refused_in_another_content_type(
    w: &World,
    provider: &str,
    wrong_type: &str,
    right_type: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) {
    let path = format!("/webhooks/{provider}/clinic-a");
    let before = w.rx.refused(provider, "content_type").await;
    assert_eq!(
        w.rx.post(&path, wrong_type, headers, body.clone()).await,
        415
    );
    assert_eq!(provider_event_rows(w).await, 0, "nothing applied");
    assert_eq!(w.rx.refused(provider, "content_type").await, before + 1.0);
    assert_eq!(
        w.rx.post(&path, right_type, headers, body).await,
        200,
        "the same request as {provider} posts it is good"
    );
}

#[tokio::test]
async fn a_correctly_signed_twilio_callback_sent_as_json_is_refused_with_415_and_not_applied() {
    let w = world().await;
    let params = [
        ("MessageSid", TWILIO_MESSAGE_SID),
        ("MessageStatus", "delivered"),
        ("To", "+447700900123"),
    ];
    let owned: Vec<(String, String)> = params
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let sig = verify::twilio_signature(
        &TWILIO_TOKEN.to_owned().into(),
        &format!("{PUBLIC_BASE}/webhooks/twilio/clinic-a"),
        &owned,
    );
    refused_in_another_content_type(
        &w,
        "twilio",
        "application/json",
        "application/x-www-form-urlencoded",
        &[("x-twilio-signature", &sig)],
        form(&params).into_bytes(),
    )
    .await;
    w.stop().await;
}

#[tokio::test]
async fn a_correctly_signed_sendgrid_event_sent_as_a_form_is_refused_with_415_and_not_applied() {
    let w = world().await;
    let body =
        json!([{"email": "patient@example.com", "event": "delivered", "timestamp": now_unix(),
        "sg_event_id": "ev-1", "sg_message_id": format!("{SENDGRID_MESSAGE_ID}.filter-1")}])
        .to_string()
        .into_bytes();
    let ts = now_unix();
    let sig = sendgrid_signature(&sendgrid_signing_key(1), ts, &body);
    let ts = ts.to_string();
    refused_in_another_content_type(
        &w,
        "sendgrid",
        "application/x-www-form-urlencoded",
        "application/json",
        &sendgrid_headers(&sig, &ts),
        body,
    )
    .await;
    w.stop().await;
}

fn meta_failed(code: i64, title: &str) -> serde_json::Value {
    json!({"object": "whatsapp_business_account", "entry": [{"id": "102290129340398", "changes": [{
        "field": "messages", "value": {"messaging_product": "whatsapp",
            "statuses": [{"id": META_WAMID, "status": "failed", "timestamp": now_unix().to_string(),
                "recipient_id": "447700900123", "errors": [{"code": code, "title": title}]}]}}]}]})
}

#[tokio::test]
async fn a_correctly_signed_meta_webhook_sent_as_text_is_refused_with_415_and_not_applied() {
    let w = world().await;
    let body = meta_failed(131026, "Message undeliverable")
        .to_string()
        .into_bytes();
    let sig = verify::meta_signature(&META_SECRET.to_owned().into(), &body);
    refused_in_another_content_type(
        &w,
        "meta",
        "text/plain",
        "application/json",
        &[("x-hub-signature-256", &sig)],
        body,
    )
    .await;
    w.stop().await;
}

#[tokio::test]
async fn a_signed_meta_body_that_is_not_a_webhook_is_refused_with_400_and_counted() {
    let w = world().await;
    let before = w.rx.refused("meta", "malformed").await;
    for body in [
        json!({"hello": "world"}),
        json!({"object": "page", "entry": []}),
    ] {
        assert_eq!(
            w.rx.meta("clinic-a", &body, META_SECRET).await,
            400,
            "{body}"
        );
    }
    assert_eq!(w.rx.refused("meta", "malformed").await, before + 2.0);
    assert_eq!(provider_event_rows(&w).await, 0);
    w.stop().await;
}

// ------------------------------------------------------------ failure codes

/// The row's error, and the `error` of the event published for `key`.
async fn errors(w: &mut World, job_id: &str, key: &str) -> (serde_json::Value, serde_json::Value) {
    let row = row(&w.env, job_id).await.unwrap();
    let event = w
        .event(key)
        .await
        .unwrap_or_else(|| panic!("no {key} event"));
    (
        json!({"kind": row["error_kind"], "code": row["error_code"]}),
        event["error"].clone(),
    )
}

#[tokio::test]
async fn twilio_error_30003_on_an_undelivered_callback_reaches_the_row_and_its_event() {
    let mut w = world().await;
    assert_eq!(w.send(sms("sms-1", "clinic-a")).await["status"], "sent");
    let params = [
        ("MessageSid", TWILIO_MESSAGE_SID),
        ("MessageStatus", "undelivered"),
        ("ErrorCode", "30003"),
        ("To", "+447700900123"),
    ];
    assert_eq!(w.rx.twilio("clinic-a", &params, TWILIO_TOKEN).await, 200);

    let (row, event) = errors(&mut w, "sms-1", "undelivered.sms").await;
    assert_eq!(row, json!({"kind": "recipient", "code": "30003"}));
    assert_eq!(event["kind"], "recipient");
    assert_eq!(event["code"], "30003");
    assert_eq!(event["message"], "twilio reported undelivered (code 30003)");
    w.stop().await;
}

#[tokio::test]
async fn meta_error_131026_on_a_failed_status_reaches_the_row_and_its_event() {
    let mut w = world().await;
    assert_eq!(w.send(whatsapp("wa-1", "clinic-a")).await["status"], "sent");
    let failed = meta_failed(131026, "Message undeliverable");
    assert_eq!(w.rx.meta("clinic-a", &failed, META_SECRET).await, 200);

    let (row, event) = errors(&mut w, "wa-1", "undelivered.whatsapp").await;
    assert_eq!(row, json!({"kind": "recipient", "code": "131026"}));
    assert_eq!(event["code"], "131026");
    w.stop().await;
}

#[tokio::test]
async fn sendgrid_status_5_1_1_on_a_bounce_reaches_the_row_and_its_event() {
    let mut w = world().await;
    assert_eq!(w.send(email("mail-1", "clinic-a")).await["status"], "sent");
    let bounce = json!([{"email": "patient@example.com", "event": "bounce", "type": "bounce",
        "status": "5.1.1", "reason": "550 5.1.1 The email account that you tried to reach does not exist",
        "sg_event_id": "bounce-1", "timestamp": now_unix(),
        "sg_message_id": format!("{SENDGRID_MESSAGE_ID}.filter-1"), "job_id": "mail-1"}]);
    let body = bounce.to_string().into_bytes();
    assert_eq!(
        w.rx.sendgrid("clinic-a", &body, now_unix(), &sendgrid_signing_key(1))
            .await,
        200
    );

    let (row, event) = errors(&mut w, "mail-1", "bounced.email").await;
    assert_eq!(row, json!({"kind": "recipient", "code": "5.1.1"}));
    assert_eq!(event["code"], "5.1.1");
    assert!(
        !event.to_string().contains("does not exist"),
        "the provider's text is not quoted: {event}"
    );
    w.stop().await;
}
