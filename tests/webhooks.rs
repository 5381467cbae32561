//! Provider status webhooks, end to end: a worker sends through the fake
//! provider, the provider's signed callback reaches the worker's receiver
//! (`webhooks.bind`), the job's row moves forward and a delivery event is
//! published. Anything not signed by the tenant's own account is refused
//! before it is read.

use crate::support;

use outreach::job::Channel;
use serde_json::{Value, json};
use support::TestEnv;
use support::fake_providers::{
    self as fake, META_PHONE_ID, META_WAMID, SENDGRID_MESSAGE_ID, TWILIO_MESSAGE_SID, TWILIO_SID,
    TWILIO_TOKEN, VONAGE_KEY, VONAGE_MESSAGE_ID, VONAGE_SECRET,
};
use support::tenants::*;
use support::webhooks::*;
use wiremock::MockServer;

const META_SECRET_A: &str = "meta-app-secret-clinic-a";
const META_VERIFY_A: &str = "verify-token-clinic-a";

fn twilio_status(status: &str) -> Vec<(&'static str, String)> {
    vec![
        ("AccountSid", TWILIO_SID.into()),
        ("From", "+14155550100".into()),
        ("MessageSid", TWILIO_MESSAGE_SID.into()),
        ("MessageStatus", status.into()),
        ("To", "+447700900123".into()),
    ]
}

fn pairs<'a>(p: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    p.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

fn twilio_with_token(server: &MockServer, token: &str) -> Value {
    let mut t = twilio_at(server);
    t["auth_token"] = json!(token);
    t
}

async fn event_rows(env: &TestEnv, tenant: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM provider_events WHERE tenant_id = $1")
        .bind(tenant)
        .fetch_one(&env.pool)
        .await
        .unwrap()
}

// ------------------------------------------------------------------ Twilio

/// clinic-a sending SMS through the fake Twilio.
async fn twilio_world() -> World {
    let twilio = fake::serve(&fake::twilio_path(), fake::Twilio).await;
    World::start(
        TestEnv::new().await,
        vec![("clinic-a", Channel::Sms, twilio_at(&twilio))],
    )
    .await
    .with(twilio)
}

#[tokio::test]
async fn a_signed_twilio_delivered_callback_moves_the_row_and_publishes_delivered() {
    let mut w = twilio_world().await;
    assert_eq!(w.send(sms("appt-1", "clinic-a")).await["status"], "sent");

    let params = twilio_status("delivered");
    assert_eq!(
        w.rx.twilio("clinic-a", &pairs(&params), TWILIO_TOKEN).await,
        200
    );

    assert_eq!(status(&w.env, "clinic-a", "appt-1").await, "delivered");
    let ev = w.event("delivered.sms").await.expect("a delivered event");
    assert_eq!(ev["job_id"], "appt-1");
    assert_eq!(ev["tenant_id"], "clinic-a");
    assert_eq!(ev["status"], "delivered");
    assert_eq!(ev["provider_message_id"], TWILIO_MESSAGE_SID);
    assert_eq!(
        provider_events(&w.env, "clinic-a", "appt-1").await,
        [("delivered".to_owned(), true)]
    );
    w.stop().await;
}

#[tokio::test]
async fn a_twilio_callback_with_one_flipped_byte_is_refused_with_401() {
    let w = twilio_world().await;
    assert_eq!(w.send(sms("appt-1", "clinic-a")).await["status"], "sent");

    let signed = twilio_status("delivered");
    let sig = outreach::feedback::verify::twilio_signature(
        &TWILIO_TOKEN.to_owned().into(),
        &format!("{PUBLIC_BASE}/webhooks/twilio/clinic-a"),
        &signed
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect::<Vec<_>>(),
    );
    // The signature is good for "delivered"; the body says "delivereD".
    let flipped = twilio_status("delivereD");
    assert_eq!(
        w.rx.twilio_signed("clinic-a", &pairs(&flipped), &sig).await,
        401
    );
    assert_eq!(
        w.rx.twilio_signed("clinic-a", &pairs(&signed), &sig).await,
        200
    );
    assert_eq!(event_rows(&w.env, "clinic-a").await, 1);
    w.stop().await;
}

#[tokio::test]
async fn a_twilio_callback_for_one_tenant_signed_with_another_tenants_token_is_refused() {
    let twilio = fake::serve(&fake::twilio_path(), fake::Twilio).await;
    let w = World::start(
        TestEnv::new().await,
        vec![
            ("clinic-a", Channel::Sms, twilio_at(&twilio)),
            (
                "clinic-b",
                Channel::Sms,
                twilio_with_token(&twilio, "clinic-b-auth-token"),
            ),
        ],
    )
    .await;
    assert_eq!(w.send(sms("appt-1", "clinic-a")).await["status"], "sent");

    let params = twilio_status("delivered");
    assert_eq!(
        w.rx.twilio("clinic-a", &pairs(&params), "clinic-b-auth-token")
            .await,
        401
    );
    assert_eq!(status(&w.env, "clinic-a", "appt-1").await, "sent");
    assert_eq!(event_rows(&w.env, "clinic-a").await, 0);
    w.stop().await;
}

#[tokio::test]
async fn a_webhook_for_a_tenant_without_an_account_of_that_provider_is_forbidden() {
    let w = twilio_world().await;
    let params = twilio_status("delivered");
    // clinic-z has no config at all (the tests' system default is the sandbox).
    assert_eq!(
        w.rx.twilio("clinic-z", &pairs(&params), TWILIO_TOKEN).await,
        403
    );
    w.stop().await;
}

// ---------------------------------------------------------- ordering, replays

#[tokio::test]
async fn a_late_sent_after_delivered_leaves_the_row_delivered() {
    let mut w = twilio_world().await;
    assert_eq!(w.send(sms("appt-1", "clinic-a")).await["status"], "sent");

    let delivered = twilio_status("delivered");
    let late_sent = twilio_status("sent");
    assert_eq!(
        w.rx.twilio("clinic-a", &pairs(&delivered), TWILIO_TOKEN)
            .await,
        200
    );
    assert_eq!(
        w.rx.twilio("clinic-a", &pairs(&late_sent), TWILIO_TOKEN)
            .await,
        200
    );

    assert_eq!(status(&w.env, "clinic-a", "appt-1").await, "delivered");
    // Both kept for the timeline; only the first moved the row.
    assert_eq!(
        provider_events(&w.env, "clinic-a", "appt-1").await,
        [("delivered".to_owned(), true), ("sent".to_owned(), false)]
    );
    assert!(w.event("delivered.sms").await.is_some());
    assert!(
        w.event("sent.sms").await.is_none(),
        "a late sent publishes nothing"
    );
    w.stop().await;
}

#[tokio::test]
async fn the_same_provider_event_delivered_twice_is_applied_once() {
    let mut w = twilio_world().await;
    assert_eq!(w.send(sms("appt-1", "clinic-a")).await["status"], "sent");
    let params = twilio_status("delivered");
    for _ in 0..2 {
        assert_eq!(
            w.rx.twilio("clinic-a", &pairs(&params), TWILIO_TOKEN).await,
            200
        );
    }
    assert_eq!(provider_events(&w.env, "clinic-a", "appt-1").await.len(), 1);
    assert!(w.event("delivered.sms").await.is_some());
    assert!(w.event("delivered.sms").await.is_none(), "one event only");
    w.stop().await;
}

#[tokio::test]
async fn an_unknown_message_id_is_accepted_and_kept_unmatched() {
    let w = twilio_world().await;
    let mut params = twilio_status("delivered");
    params[2].1 = "SMffffffffffffffffffffffffffffffff".into();
    // Accepted, or Twilio would retry it for hours.
    assert_eq!(
        w.rx.twilio("clinic-a", &pairs(&params), TWILIO_TOKEN).await,
        200
    );
    let unmatched: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM provider_events WHERE tenant_id = 'clinic-a' AND job_id IS NULL",
    )
    .fetch_one(&w.env.pool)
    .await
    .unwrap();
    assert_eq!(unmatched, 1);
    w.stop().await;
}

#[tokio::test]
async fn a_status_that_comes_before_its_send_is_recorded_is_applied_by_the_reconciler() {
    let twilio = fake::serve(&fake::twilio_path(), fake::Twilio).await;
    let mut w = World::start_with(
        TestEnv::new().await,
        vec![("clinic-a", Channel::Sms, twilio_at(&twilio))],
        |s| s.reconciler.interval_secs = 1,
    )
    .await;
    // The callback wins the race against the worker's record of the send.
    let params = twilio_status("delivered");
    assert_eq!(
        w.rx.twilio("clinic-a", &pairs(&params), TWILIO_TOKEN).await,
        200
    );
    assert_eq!(w.send(sms("appt-1", "clinic-a")).await["status"], "sent");

    support::eventually(FINAL_WITHIN, "the early status applied", || async {
        status(&w.env, "clinic-a", "appt-1").await == "delivered"
    })
    .await;
    let ev = w.event("delivered.sms").await.expect("a delivered event");
    assert_eq!(ev["job_id"], "appt-1");
    assert_eq!(
        provider_events(&w.env, "clinic-a", "appt-1").await,
        [("delivered".to_owned(), true)]
    );
    w.stop().await;
}

// ---------------------------------------------------------------- SendGrid

fn sendgrid_with_key(server: &MockServer, seed: u8) -> Value {
    let mut s = sendgrid_at(server);
    s["webhook_verification_key"] = json!(sendgrid_public_key(&sendgrid_signing_key(seed)));
    s
}

fn sendgrid_events(event: &str, job_id: &str, email: &str) -> Vec<u8> {
    json!([{
        "email": email, "event": event, "timestamp": now_unix(),
        "sg_event_id": format!("ev-{event}-{job_id}"),
        "sg_message_id": format!("{SENDGRID_MESSAGE_ID}.filterdrecv-5bd4b6b9c9-2x4zm-1-64A1"),
        "smtp-id": "<14c5d75ce93.dfd.64b469@ismtpd-555>",
        "job_id": job_id, "tenant_id": "clinic-a",
    }])
    .to_string()
    .into_bytes()
}

async fn sendgrid_world() -> World {
    let sendgrid = fake::serve("/v3/mail/send", fake::Sendgrid).await;
    World::start(
        TestEnv::new().await,
        vec![
            ("clinic-a", Channel::Email, sendgrid_with_key(&sendgrid, 1)),
            ("clinic-b", Channel::Email, sendgrid_with_key(&sendgrid, 2)),
        ],
    )
    .await
    .with(sendgrid)
}

#[tokio::test]
async fn a_signed_sendgrid_delivered_event_moves_the_row_and_publishes_delivered() {
    let mut w = sendgrid_world().await;
    assert_eq!(w.send(email("mail-1", "clinic-a")).await["status"], "sent");
    let body = sendgrid_events("delivered", "mail-1", "patient@example.com");
    let key = sendgrid_signing_key(1);
    assert_eq!(
        w.rx.sendgrid("clinic-a", &body, now_unix(), &key).await,
        200
    );

    assert_eq!(status(&w.env, "clinic-a", "mail-1").await, "delivered");
    let ev = w.event("delivered.email").await.expect("a delivered event");
    assert_eq!(ev["job_id"], "mail-1");
    assert_eq!(ev["provider"], "sendgrid");
    w.stop().await;
}

/// Two tenants without chains of their own, sending through the system
/// default SendGrid account (its key from seed 9).
async fn system_sendgrid_world() -> World {
    let sendgrid = fake::serve("/v3/mail/send", fake::Sendgrid).await;
    let system: outreach::provider::ProviderSettings =
        serde_json::from_value(sendgrid_with_key(&sendgrid, 9)).unwrap();
    World::start_with(TestEnv::new().await, vec![], move |s| {
        s.defaults.email = Some(system)
    })
    .await
    .with(sendgrid)
}

#[tokio::test]
async fn events_of_the_shared_system_account_reach_each_tenants_row_through_the_system_route() {
    let w = system_sendgrid_world().await;
    assert_eq!(w.send(email("sys-a", "clinic-a")).await["status"], "sent");
    assert_eq!(w.send(email("sys-b", "clinic-b")).await["status"], "sent");
    // One signed request from the shared account, about both tenants' mail.
    let mut events: Vec<Value> =
        serde_json::from_slice(&sendgrid_events("delivered", "sys-a", "a@example.com")).unwrap();
    let mut b: Vec<Value> =
        serde_json::from_slice(&sendgrid_events("bounce", "sys-b", "b@example.com")).unwrap();
    b[0]["tenant_id"] = json!("clinic-b");
    events.append(&mut b);
    let body = serde_json::to_vec(&events).unwrap();
    let system_key = sendgrid_signing_key(9);
    assert_eq!(w.rx.sendgrid("", &body, now_unix(), &system_key).await, 200);

    assert_eq!(status(&w.env, "clinic-a", "sys-a").await, "delivered");
    assert_eq!(status(&w.env, "clinic-b", "sys-b").await, "bounced");
    // A tenant's own key is not the system account's.
    assert_eq!(
        w.rx.sendgrid("", &body, now_unix(), &sendgrid_signing_key(1))
            .await,
        401
    );
    w.stop().await;
}

#[tokio::test]
async fn a_sendgrid_event_with_one_flipped_byte_is_refused_with_401() {
    let w = sendgrid_world().await;
    assert_eq!(w.send(email("mail-1", "clinic-a")).await["status"], "sent");
    let body = sendgrid_events("delivered", "mail-1", "patient@example.com");
    let key = sendgrid_signing_key(1);
    let ts = now_unix();
    let mut signed = ts.to_string().into_bytes();
    signed.extend_from_slice(&body);
    use base64::Engine;
    use p256::ecdsa::signature::Signer;
    let sig: p256::ecdsa::Signature = key.sign(&signed);
    let sig = base64::engine::general_purpose::STANDARD.encode(sig.to_der().as_bytes());
    let mut flipped = body.clone();
    let at = flipped.iter().position(|b| *b == b'd').unwrap();
    flipped[at] ^= 0x20; // "delivered" -> "Delivered"
    assert_eq!(
        w.rx.sendgrid_signed("clinic-a", &flipped, ts, &sig).await,
        401
    );
    assert_eq!(status(&w.env, "clinic-a", "mail-1").await, "sent");
    // The untouched body with the same signature is good.
    assert_eq!(w.rx.sendgrid_signed("clinic-a", &body, ts, &sig).await, 200);
    w.stop().await;
}

#[tokio::test]
async fn a_sendgrid_event_for_one_tenant_signed_with_another_tenants_key_is_refused() {
    let w = sendgrid_world().await;
    assert_eq!(w.send(email("mail-1", "clinic-a")).await["status"], "sent");
    let body = sendgrid_events("delivered", "mail-1", "patient@example.com");
    let clinic_b = sendgrid_signing_key(2);
    assert_eq!(
        w.rx.sendgrid("clinic-a", &body, now_unix(), &clinic_b)
            .await,
        401
    );
    assert_eq!(status(&w.env, "clinic-a", "mail-1").await, "sent");
    assert_eq!(event_rows(&w.env, "clinic-a").await, 0);
    w.stop().await;
}

#[tokio::test]
async fn a_replayed_sendgrid_event_with_a_stale_timestamp_is_refused() {
    let w = sendgrid_world().await;
    assert_eq!(w.send(email("mail-1", "clinic-a")).await["status"], "sent");
    let body = sendgrid_events("delivered", "mail-1", "patient@example.com");
    let key = sendgrid_signing_key(1);
    // Correctly signed, but an hour old (webhooks.max_age_secs is 600).
    let an_hour_ago = now_unix() - 3600;
    assert_eq!(
        w.rx.sendgrid("clinic-a", &body, an_hour_ago, &key).await,
        401
    );
    assert_eq!(status(&w.env, "clinic-a", "mail-1").await, "sent");
    w.stop().await;
}

#[tokio::test]
async fn a_bounce_after_delivered_is_recorded_as_the_provider_reports_it() {
    let mut w = sendgrid_world().await;
    assert_eq!(w.send(email("mail-1", "clinic-a")).await["status"], "sent");
    let key = sendgrid_signing_key(1);
    for event in ["delivered", "bounce"] {
        let body = sendgrid_events(event, "mail-1", "patient@example.com");
        assert_eq!(
            w.rx.sendgrid("clinic-a", &body, now_unix(), &key).await,
            200
        );
    }
    assert_eq!(status(&w.env, "clinic-a", "mail-1").await, "bounced");
    assert!(w.event("delivered.email").await.is_some());
    assert!(w.event("bounced.email").await.is_some());
    w.stop().await;
}

// -------------------------------------------------------------------- Meta

fn meta_status(status: &str) -> Value {
    json!({"object": "whatsapp_business_account", "entry": [{"id": "102290129340398", "changes": [{
        "field": "messages", "value": {"messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "15550783881", "phone_number_id": META_PHONE_ID},
            "statuses": [{"id": META_WAMID, "status": status, "timestamp": now_unix().to_string(),
                "recipient_id": "447700900123"}]}}]}]})
}

async fn meta_world() -> World {
    let meta = fake::serve(&fake::meta_path(), fake::Meta).await;
    World::start(
        TestEnv::new().await,
        vec![
            (
                "clinic-a",
                Channel::Whatsapp,
                meta_at(&meta, META_SECRET_A, META_VERIFY_A),
            ),
            (
                "clinic-b",
                Channel::Whatsapp,
                meta_at(&meta, "meta-app-secret-clinic-b", "verify-b"),
            ),
        ],
    )
    .await
    .with(meta)
}

#[tokio::test]
async fn a_signed_meta_read_status_moves_the_row_and_publishes_read() {
    let mut w = meta_world().await;
    assert_eq!(w.send(whatsapp("wa-1", "clinic-a")).await["status"], "sent");
    assert_eq!(
        w.rx.meta("clinic-a", &meta_status("read"), META_SECRET_A)
            .await,
        200
    );
    assert_eq!(status(&w.env, "clinic-a", "wa-1").await, "read");
    let ev = w.event("read.whatsapp").await.expect("a read event");
    assert_eq!(ev["job_id"], "wa-1");
    w.stop().await;
}

#[tokio::test]
async fn a_meta_webhook_with_one_flipped_byte_or_another_tenants_secret_is_refused() {
    let w = meta_world().await;
    assert_eq!(w.send(whatsapp("wa-1", "clinic-a")).await["status"], "sent");
    let raw = meta_status("delivered").to_string().into_bytes();
    let sig = outreach::feedback::verify::meta_signature(&META_SECRET_A.to_owned().into(), &raw);
    let mut flipped = raw.clone();
    flipped[5] ^= 1;
    assert_eq!(w.rx.meta_signed("clinic-a", &flipped, &sig).await, 401);
    let status_b =
        w.rx.meta(
            "clinic-a",
            &meta_status("delivered"),
            "meta-app-secret-clinic-b",
        )
        .await;
    assert_eq!(status_b, 401);
    assert_eq!(status(&w.env, "clinic-a", "wa-1").await, "sent");
    w.stop().await;
}

#[tokio::test]
async fn the_meta_subscription_check_is_answered_only_for_the_tenants_verify_token() {
    let w = meta_world().await;
    assert_eq!(
        w.rx.meta_subscribe("clinic-a", META_VERIFY_A).await,
        (200, "1158201444".to_owned())
    );
    assert_eq!(w.rx.meta_subscribe("clinic-a", "verify-b").await.0, 401);
    w.stop().await;
}

#[tokio::test]
async fn a_body_over_the_limit_is_refused_before_it_is_read_and_counted() {
    let w = twilio_world().await;
    let before = w.rx.refused("twilio", "too_large").await;
    let huge = "x".repeat(2 * 1024 * 1024); // webhooks.max_body_bytes is 1 MiB
    let params = [("MessageSid", TWILIO_MESSAGE_SID), ("Body", huge.as_str())];
    assert_eq!(w.rx.twilio("clinic-a", &params, TWILIO_TOKEN).await, 413);
    assert_eq!(w.rx.refused("twilio", "too_large").await, before + 1.0);
    w.stop().await;
}

// ------------------------------------------------------------------ Vonage

const VONAGE_SIG_A: &str = "vonage-signature-secret-clinic-a";

fn vonage_at(server: &MockServer, signature_secret: &str) -> Value {
    json!({"provider": "vonage", "api_key": VONAGE_KEY, "api_secret": VONAGE_SECRET,
        "from": "Clinic", "base_url": server.uri(), "signature_secret": signature_secret})
}

async fn vonage_world() -> World {
    let vonage = fake::serve("/sms/json", fake::Vonage).await;
    World::start(
        TestEnv::new().await,
        vec![
            ("clinic-a", Channel::Sms, vonage_at(&vonage, VONAGE_SIG_A)),
            (
                "clinic-b",
                Channel::Sms,
                vonage_at(&vonage, "vonage-signature-secret-clinic-b"),
            ),
        ],
    )
    .await
    .with(vonage)
}

const RECEIPT: [(&str, &str); 5] = [
    ("msisdn", "447700900123"),
    ("to", "Clinic"),
    ("messageId", VONAGE_MESSAGE_ID),
    ("status", "delivered"),
    ("err-code", "0"),
];

#[tokio::test]
async fn a_signed_vonage_delivery_receipt_moves_the_row_and_publishes_delivered() {
    let mut w = vonage_world().await;
    assert_eq!(w.send(sms("sms-1", "clinic-a")).await["status"], "sent");
    assert_eq!(
        w.rx.vonage("clinic-a", &RECEIPT, now_unix(), VONAGE_SIG_A)
            .await,
        200
    );
    assert_eq!(status(&w.env, "clinic-a", "sms-1").await, "delivered");
    let ev = w.event("delivered.sms").await.expect("a delivered event");
    assert_eq!(ev["provider"], "vonage");
    w.stop().await;
}

#[tokio::test]
async fn a_vonage_receipt_flipped_signed_by_another_tenant_or_stale_is_refused() {
    let w = vonage_world().await;
    assert_eq!(w.send(sms("sms-1", "clinic-a")).await["status"], "sent");
    let other = "vonage-signature-secret-clinic-b";
    assert_eq!(
        w.rx.vonage("clinic-a", &RECEIPT, now_unix(), other).await,
        401
    );
    let stale = now_unix() - 3600;
    assert_eq!(
        w.rx.vonage("clinic-a", &RECEIPT, stale, VONAGE_SIG_A).await,
        401
    );
    // A correctly signed receipt with one byte of a value changed.
    let mut signed: Vec<(String, String)> = RECEIPT
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    signed.push(("timestamp".into(), now_unix().to_string()));
    let sig = outreach::feedback::verify::vonage_signature(
        &VONAGE_SIG_A.to_owned().into(),
        Default::default(),
        &signed,
    );
    signed.push(("sig".into(), sig));
    signed[3].1 = "delivereD".into();
    assert_eq!(w.rx.vonage_raw("clinic-a", &signed).await, 401);
    assert_eq!(status(&w.env, "clinic-a", "sms-1").await, "sent");
    assert_eq!(event_rows(&w.env, "clinic-a").await, 0);
    w.stop().await;
}

// ------------------------------------------------------------ SES via SNS

const TOPIC_A: &str = "arn:aws:sns:eu-west-1:123456789012:clinic-a-ses";

/// A signing key and its certificate, as SNS has (made with openssl).
struct SnsSigner {
    dir: tempfile::TempDir,
}

impl SnsSigner {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ok = std::process::Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            ])
            .args(["-subj", "/CN=sns.eu-west-1.amazonaws.com"])
            .arg("-keyout")
            .arg(dir.path().join("key.pem"))
            .arg("-out")
            .arg(dir.path().join("cert.pem"))
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap()
            .success();
        assert!(ok, "openssl could not make a test certificate");
        Self { dir }
    }

    fn cert(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("cert.pem")).unwrap()
    }

    /// The envelope SNS would post, signed (SignatureVersion 2).
    fn message(
        &self,
        kind: &str,
        message: &str,
        topic: &str,
        cert_url: &str,
        subscribe: Option<&str>,
    ) -> Value {
        let mut m = json!({
            "Type": kind, "MessageId": uuid::Uuid::now_v7().to_string(), "TopicArn": topic,
            "Message": message, "Timestamp": "2026-11-29T21:00:00.000Z",
            "SignatureVersion": "2", "Signature": "", "SigningCertURL": cert_url,
        });
        if let Some(u) = subscribe {
            m["SubscribeURL"] = json!(u);
            m["Token"] = json!("2336412f37fb687f5d51e6e2425c464de12884");
        }
        let parsed: outreach::feedback::sns::SnsMessage =
            serde_json::from_value(m.clone()).unwrap();
        let to_sign = self.dir.path().join("to-sign");
        std::fs::write(&to_sign, outreach::feedback::sns::string_to_sign(&parsed)).unwrap();
        let out = std::process::Command::new("openssl")
            .args(["dgst", "-sha256", "-sign"])
            .arg(self.dir.path().join("key.pem"))
            .arg(&to_sign)
            .output()
            .unwrap();
        assert!(out.status.success());
        use base64::Engine;
        m["Signature"] = json!(base64::engine::general_purpose::STANDARD.encode(out.stdout));
        m
    }
}

struct SesWorld {
    w: World,
    signer: SnsSigner,
    sns: MockServer,
}

async fn ses_world() -> SesWorld {
    ses_world_with(|_| {}).await
}

/// The same with the worker's settings changed by `adjust`.
async fn ses_world_with(adjust: impl FnOnce(&mut outreach::settings::Settings)) -> SesWorld {
    let ses = fake::serve("/v2/email/outbound-emails", fake::Ses).await;
    let signer = SnsSigner::new();
    let sns = MockServer::start().await;
    wiremock::Mock::given(wiremock::matchers::method("GET"))
        .and(wiremock::matchers::path(
            "/SimpleNotificationService-test.pem",
        ))
        .respond_with(wiremock::ResponseTemplate::new(200).set_body_string(signer.cert()))
        .mount(&sns)
        .await;
    wiremock::Mock::given(wiremock::matchers::method("GET"))
        .and(wiremock::matchers::path("/confirm"))
        .respond_with(wiremock::ResponseTemplate::new(200))
        .mount(&sns)
        .await;
    let entry = |topic: &str| {
        json!({"provider": "ses", "region": fake::SES_REGION, "access_key_id": fake::SES_ACCESS_KEY_ID,
            "secret_access_key": fake::SES_SECRET, "from_email": "clinic@example.com",
            "base_url": ses.uri(), "sns_topic_arns": [topic]})
    };
    let origin = sns.uri();
    let w = World::start_with(
        TestEnv::new().await,
        vec![
            ("clinic-a", Channel::Email, entry(TOPIC_A)),
            (
                "clinic-b",
                Channel::Email,
                entry("arn:aws:sns:eu-west-1:123456789012:clinic-b-ses"),
            ),
        ],
        |s| {
            s.webhooks.sns_cert_origins = vec![origin];
            adjust(s);
        },
    )
    .await
    .with(ses);
    SesWorld { w, signer, sns }
}

impl SesWorld {
    fn cert_url(&self) -> String {
        format!("{}/SimpleNotificationService-test.pem", self.sns.uri())
    }

    fn notification(&self, kind: &str, topic: &str) -> Value {
        let note = json!({"notificationType": kind,
            "mail": {"messageId": fake::SES_MESSAGE_ID, "destination": ["patient@example.com"]},
            "bounce": {"bounceType": "Permanent", "bouncedRecipients": [{"emailAddress": "patient@example.com"}]}});
        self.signer.message(
            "Notification",
            &note.to_string(),
            topic,
            &self.cert_url(),
            None,
        )
    }

    /// Requests the fake SNS saw for certificates (`*.pem`).
    async fn certificate_fetches(&self) -> usize {
        self.sns
            .received_requests()
            .await
            .unwrap()
            .iter()
            .filter(|r| r.url.path().ends_with(".pem"))
            .count()
    }

    /// Post each envelope; the answers.
    async fn post_each(&self, envelopes: impl IntoIterator<Item = Value>) -> Vec<u16> {
        let mut answers = vec![];
        for m in envelopes {
            answers.push(self.post(m.to_string().as_bytes()).await);
        }
        answers
    }

    async fn post(&self, body: &[u8]) -> u16 {
        reqwest::Client::new()
            .post(format!("{}/webhooks/ses/clinic-a", self.w.rx.local))
            .header("content-type", "text/plain; charset=UTF-8")
            .header("x-amz-sns-message-type", "Notification")
            .body(body.to_vec())
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }
}

#[tokio::test]
async fn a_signed_ses_bounce_through_sns_moves_the_row_and_suppresses_the_address() {
    let mut s = ses_world().await;
    let row = s.w.send(email("ses-1", "clinic-a")).await;
    assert_eq!(row["status"], "sent", "{row}");
    let body = s.notification("Bounce", TOPIC_A).to_string();
    assert_eq!(s.post(body.as_bytes()).await, 200);
    assert_eq!(status(&s.w.env, "clinic-a", "ses-1").await, "bounced");
    assert!(s.w.event("bounced.email").await.is_some());
    let listed: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM suppressions WHERE tenant_id = 'clinic-a' AND recipient = 'patient@example.com' AND reason = 'hard_bounce'",
    )
    .fetch_one(&s.w.env.pool)
    .await
    .unwrap();
    assert_eq!(listed, 1);
    s.w.stop().await;
}

#[tokio::test]
async fn an_ses_notification_flipped_from_another_topic_or_a_foreign_certificate_host_is_refused() {
    let s = ses_world().await;
    let row = s.w.send(email("ses-1", "clinic-a")).await;
    assert_eq!(row["status"], "sent", "{row}");
    let good = s.notification("Delivery", TOPIC_A).to_string();
    let flipped = good.replacen("Delivery", "Dalivery", 1);
    assert_eq!(s.post(flipped.as_bytes()).await, 401);
    // Correctly signed by SNS, but for clinic-b's topic.
    let other = s.notification(
        "Delivery",
        "arn:aws:sns:eu-west-1:123456789012:clinic-b-ses",
    );
    assert_eq!(s.post(other.to_string().as_bytes()).await, 401);
    // A certificate from a host not on the allow-list is never fetched.
    let foreign = s.signer.message(
        "Notification",
        "{}",
        TOPIC_A,
        "http://127.0.0.2:1/SimpleNotificationService-test.pem",
        None,
    );
    assert_eq!(s.post(foreign.to_string().as_bytes()).await, 401);
    assert_eq!(status(&s.w.env, "clinic-a", "ses-1").await, "sent");
    // The allow-listed certificate was fetched once and then cached.
    let fetched = s
        .sns
        .received_requests()
        .await
        .unwrap()
        .iter()
        .filter(|r| r.url.path().ends_with(".pem"))
        .count();
    assert_eq!(fetched, 1);
    s.w.stop().await;
}

#[tokio::test]
async fn an_sns_subscription_confirmation_is_confirmed_at_its_allow_listed_url() {
    let s = ses_world().await;
    let confirm = format!(
        "{}/confirm?Action=ConfirmSubscription&Token=2336412f",
        s.sns.uri()
    );
    let m = s.signer.message(
        "SubscriptionConfirmation",
        "You have chosen to subscribe",
        TOPIC_A,
        &s.cert_url(),
        Some(&confirm),
    );
    assert_eq!(s.post(m.to_string().as_bytes()).await, 200);
    let visited = s
        .sns
        .received_requests()
        .await
        .unwrap()
        .iter()
        .filter(|r| r.url.path() == "/confirm")
        .count();
    assert_eq!(visited, 1);
    s.w.stop().await;
}

#[tokio::test]
async fn ses_envelopes_for_a_topic_that_is_not_the_tenants_fetch_no_certificate() {
    let s = ses_world().await;
    // Each names another certificate on the allow-listed origin.
    let answers = s
        .post_each((0..20).map(|i| {
            s.signer.message(
                "Notification",
                "{}",
                "arn:aws:sns:eu-west-1:999999999999:someone-else",
                &format!("{}/SimpleNotificationService-{i}.pem", s.sns.uri()),
                None,
            )
        }))
        .await;
    assert_eq!(s.certificate_fetches().await, 0);
    assert!(answers.iter().all(|a| *a == 401), "{answers:?}");
    s.w.stop().await;
}

#[tokio::test]
async fn a_signing_certificate_that_cannot_be_fetched_is_asked_for_once_not_per_envelope() {
    let s = ses_world().await;
    wiremock::Mock::given(wiremock::matchers::path(
        "/SimpleNotificationService-broken.pem",
    ))
    .respond_with(wiremock::ResponseTemplate::new(500))
    .mount(&s.sns)
    .await;
    let broken = format!("{}/SimpleNotificationService-broken.pem", s.sns.uri());
    let answers = s
        .post_each((0..20).map(|_| {
            s.signer
                .message("Notification", "{}", TOPIC_A, &broken, None)
        }))
        .await;
    assert_eq!(s.certificate_fetches().await, 1);
    // SNS is asked to deliver again later.
    assert!(answers.iter().all(|a| *a == 503), "{answers:?}");
    s.w.stop().await;
}

#[tokio::test]
async fn a_signing_certificate_on_a_network_provider_calls_may_not_reach_is_never_fetched() {
    // The fake SNS origin is allow-listed, but 127.0.0.1 is not among the
    // networks provider calls may reach.
    let s = ses_world_with(|s| s.providers.allowed_private_networks.clear()).await;
    let body = s.notification("Delivery", TOPIC_A).to_string();
    assert_eq!(s.post(body.as_bytes()).await, 401);
    assert_eq!(s.certificate_fetches().await, 0);
    s.w.stop().await;
}
