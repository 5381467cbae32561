//! Suppression lists: a bounce, a complaint or a STOP puts the recipient on
//! the tenant's list for that channel; the next job to them ends
//! `suppressed` without any provider call, for that tenant only. People
//! manage the lists with the CLI and the admin API, audited.

use crate::support;

use outreach::admin_api::hash_token;
use outreach::job::Channel;
use outreach::settings::TenantToken;
use serde_json::{Value, json};
use std::time::Duration;
use support::fake_providers::{self as fake, TWILIO_SID};
use support::tenants::*;
use support::webhooks::*;
use support::{TestEnv, free_port, run_cli};
use wiremock::MockServer;

const WAIT: Duration = Duration::from_secs(20);

async fn calls(server: &MockServer) -> usize {
    server.received_requests().await.unwrap().len()
}

fn email_to(id: &str, tenant: &str, to: &str) -> Value {
    support::email_payload(id, tenant, to)
}

#[tokio::test]
async fn a_hard_bounce_suppresses_the_next_email_to_that_address_for_that_tenant_only() {
    let sendgrid = fake::serve("/v3/mail/send", fake::Sendgrid).await;
    let mut with_key = sendgrid_at(&sendgrid);
    with_key["webhook_verification_key"] = json!(sendgrid_public_key(&sendgrid_signing_key(1)));
    let mut w = World::start(
        TestEnv::new().await,
        vec![
            ("clinic-a", Channel::Email, with_key),
            ("clinic-b", Channel::Email, sendgrid_at(&sendgrid)),
        ],
    )
    .await;

    assert_eq!(
        w.send(email_to("mail-1", "clinic-a", "patient@example.com"))
            .await["status"],
        "sent"
    );
    // SendGrid writes the address as the recipient's server had it.
    let bounce = json!([{"email": "patient@EXAMPLE.com", "event": "bounce", "type": "bounce",
        "status": "5.1.1", "sg_event_id": "bounce-1", "timestamp": now_unix(),
        "sg_message_id": format!("{}.filter-1", fake::SENDGRID_MESSAGE_ID), "job_id": "mail-1"}]);
    let body = bounce.to_string().into_bytes();
    assert_eq!(
        w.rx.sendgrid("clinic-a", &body, now_unix(), &sendgrid_signing_key(1))
            .await,
        200
    );
    assert_eq!(status(&w.env, "clinic-a", "mail-1").await, "bounced");
    assert_eq!(calls(&sendgrid).await, 1);

    let row = w
        .send(email_to("mail-2", "clinic-a", "patient@example.com"))
        .await;
    assert_eq!(row["status"], "suppressed");
    assert_eq!(row["error_code"], "suppressed");
    assert_eq!(
        calls(&sendgrid).await,
        1,
        "no provider call for a suppressed recipient"
    );
    assert_eq!(
        w.event("suppressed.email")
            .await
            .expect("a suppressed event")["job_id"],
        "mail-2"
    );

    // Another clinic may still write to the same address.
    assert_eq!(
        w.send(email_to("mail-3", "clinic-b", "patient@example.com"))
            .await["status"],
        "sent"
    );
    assert_eq!(calls(&sendgrid).await, 2);
    w.with(sendgrid).stop().await;
}

fn inbound(body: &str) -> Vec<(&'static str, String)> {
    // Each message Twilio receives has a sid of its own (a redelivery keeps it).
    let sid = format!("SM{:b<32}", body.to_ascii_lowercase());
    vec![
        ("AccountSid", TWILIO_SID.into()),
        ("Body", body.into()),
        ("From", "+447700900123".into()),
        ("MessageSid", sid),
        ("SmsStatus", "received".into()),
        ("To", "+14155550100".into()),
    ]
}

#[tokio::test]
async fn a_stop_reply_suppresses_sms_to_that_number_and_start_lifts_it() {
    let twilio = fake::serve(&fake::twilio_path(), fake::Twilio).await;
    let w = World::start(
        TestEnv::new().await,
        vec![("clinic-a", Channel::Sms, twilio_at(&twilio))],
    )
    .await;
    let post = |body: &'static str| {
        let rx = &w.rx;
        async move {
            let p = inbound(body);
            let p: Vec<(&str, &str)> = p.iter().map(|(k, v)| (*k, v.as_str())).collect();
            rx.twilio("clinic-a", &p, fake::TWILIO_TOKEN).await
        }
    };

    assert_eq!(post("Stop").await, 200);
    assert_eq!(
        w.send(sms("appt-1", "clinic-a")).await["status"],
        "suppressed"
    );
    assert_eq!(calls(&twilio).await, 0);

    assert_eq!(post("START").await, 200);
    assert_eq!(w.send(sms("appt-2", "clinic-a")).await["status"], "sent");
    assert_eq!(calls(&twilio).await, 1);
    w.with(twilio).stop().await;
}

#[tokio::test]
async fn the_cli_list_prints_when_each_entry_was_added_in_rfc_3339() {
    let env = TestEnv::new().await;
    let vars = worker_env(&env);
    let cli = |args: &[&str]| run_cli(&vars, args);
    let add: Vec<&str> = "suppression add clinic-a --channel sms --to +447700900123"
        .split(' ')
        .collect();
    assert_eq!(cli(&add).trim(), "added");

    let listed = cli(&["suppression", "list", "clinic-a"]);

    let line = listed.lines().next().unwrap();
    let when = line.split_whitespace().last().unwrap();
    let parsed = time::OffsetDateTime::parse(when, &time::format_description::well_known::Rfc3339);
    assert!(parsed.is_ok(), "not RFC 3339: {line:?}");
    assert!(!line.contains("+00:00:00"), "{line:?}");
    env.cleanup().await;
}

#[tokio::test]
async fn the_cli_adds_lists_and_removes_numbers_in_e164_and_audits_each_change() {
    let env = TestEnv::new().await;
    let vars = worker_env(&env);
    let cli = |args: &[&str]| run_cli(&vars, args);
    assert_eq!(
        cli(&[
            "suppression",
            "add",
            "clinic-a",
            "--channel",
            "sms",
            "--to",
            "0044 7700 900123"
        ])
        .trim(),
        "added"
    );
    assert_eq!(
        cli(&[
            "suppression",
            "add",
            "clinic-a",
            "--channel",
            "sms",
            "--to",
            "+447700900123"
        ])
        .trim(),
        "already suppressed"
    );
    let listed = cli(&["suppression", "list", "clinic-a", "--json"]);
    let entry: Value = serde_json::from_str(listed.lines().next().unwrap()).unwrap();
    assert_eq!(entry["recipient"], "+447700900123");
    assert_eq!(entry["reason"], "manual");
    assert!(cli(&["suppression", "list", "clinic-b"]).is_empty());

    // A job to the number, written as the job format requires, is suppressed.
    let (stop, worker) = env.spawn_worker(worker_settings(&env));
    publish(&env, &[sms("appt-1", "clinic-a")]).await;
    assert_eq!(
        wait_final(&env, "appt-1", WAIT).await["status"],
        "suppressed"
    );
    stop.cancel();
    worker.await.unwrap().unwrap();

    assert_eq!(
        cli(&[
            "suppression",
            "remove",
            "clinic-a",
            "--channel",
            "sms",
            "--to",
            "+44 7700 900123"
        ])
        .trim(),
        "removed"
    );
    assert!(cli(&["suppression", "list", "clinic-a"]).is_empty());
    let audit: Vec<(String, String)> = sqlx::query_as(
        "SELECT action, actor FROM config_audit WHERE tenant_id = 'clinic-a' ORDER BY id",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    let actions: Vec<&str> = audit.iter().map(|(a, _)| a.as_str()).collect();
    assert_eq!(actions, ["suppression_add", "suppression_remove"]);
    assert!(audit.iter().all(|(_, actor)| actor.starts_with("cli:")));
    env.cleanup().await;
}

#[tokio::test]
async fn a_tenant_token_manages_only_its_own_tenants_suppressions_over_the_admin_api() {
    let env = TestEnv::new().await;
    let mut s = worker_settings(&env);
    let port = free_port();
    s.http.bind = format!("127.0.0.1:{port}");
    s.admin.tenant_tokens = vec![TenantToken {
        tenant: "clinic-a".into(),
        sha256: hash_token("clinic-a-token"),
        name: "clinic-a portal".into(),
    }];
    let (stop, worker) = env.spawn_worker(s);
    let base = format!("http://127.0.0.1:{port}/admin/v1/tenants");
    let http = reqwest::Client::new();
    support::eventually(WAIT, "admin api up", || async {
        http.get(format!("http://127.0.0.1:{port}/healthz"))
            .send()
            .await
            .is_ok()
    })
    .await;
    let auth = "Bearer clinic-a-token";

    let added = http
        .post(format!("{base}/clinic-a/suppressions"))
        .header("authorization", auth)
        .body(r#"{"channel": "email", "recipient": "Patient@Example.com", "reason": "complaint"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(added.status().as_u16(), 201);
    let list: Value = http
        .get(format!("{base}/clinic-a/suppressions?channel=email"))
        .header("authorization", auth)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["suppressions"][0]["recipient"], "patient@example.com");
    assert_eq!(list["suppressions"][0]["source"], "api:clinic-a portal");

    let other = http
        .get(format!("{base}/clinic-b/suppressions"))
        .header("authorization", auth)
        .send()
        .await
        .unwrap();
    assert_eq!(other.status().as_u16(), 403);

    let removed = http
        .delete(format!(
            "{base}/clinic-a/suppressions/email/patient@example.com"
        ))
        .header("authorization", auth)
        .send()
        .await
        .unwrap();
    assert_eq!(removed.status().as_u16(), 204);
    let audited: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM config_audit WHERE tenant_id = 'clinic-a' AND actor = 'api:clinic-a portal' \
         AND action IN ('suppression_add', 'suppression_remove')",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(audited, 2);
    stop.cancel();
    worker.await.unwrap().unwrap();
    env.cleanup().await;
}

#[tokio::test]
async fn twilio_refusing_a_send_with_21610_suppresses_the_next_job_to_that_number() {
    let env = TestEnv::new().await;
    let twilio = fake::serve(
        &fake::twilio_path(),
        fake::Always(fake::twilio_error(
            400,
            21610,
            "Attempt to send to unsubscribed recipient",
        )),
    )
    .await;
    set_tenant(
        &env,
        "clinic-a",
        Channel::Sms,
        json!({"fallback_to_system": false, "chain": [twilio_at(&twilio)]}),
    )
    .await;
    let (stop, worker) = env.spawn_worker(worker_settings(&env));
    publish(&env, &[sms("appt-1", "clinic-a")]).await;
    assert_eq!(wait_final(&env, "appt-1", WAIT).await["status"], "failed");
    assert_eq!(calls(&twilio).await, 1);
    publish(&env, &[sms("appt-2", "clinic-a")]).await;
    assert_eq!(
        wait_final(&env, "appt-2", WAIT).await["status"],
        "suppressed"
    );
    assert_eq!(
        calls(&twilio).await,
        1,
        "no second call to an opted-out number"
    );
    stop.cancel();
    worker.await.unwrap().unwrap();
    env.cleanup().await;
}

// ------------------------------------------------ STOP / START out of order

const META_SECRET: &str = "meta-app-secret-clinic-a";
/// The recipient as Meta writes it (wa_id), and as the list holds it.
const WA_ID: &str = "447700900123";
const LISTED_AS: &str = "+447700900123";

async fn meta_world() -> World {
    let meta = fake::serve(&fake::meta_path(), fake::Meta).await;
    World::start(
        TestEnv::new().await,
        vec![(
            "clinic-a",
            Channel::Whatsapp,
            meta_at(&meta, META_SECRET, "verify-a"),
        )],
    )
    .await
    .with(meta)
}

/// Meta delivers the recipient's text `text`, message `wamid`, sent at `sent_at`.
async fn replied(w: &World, wamid: &str, sent_at: i64, text: &str) {
    let body = meta_inbound(WA_ID, wamid, sent_at, text);
    assert_eq!(w.rx.meta("clinic-a", &body, META_SECRET).await, 200);
}

async fn suppressed_on_whatsapp(w: &World) -> bool {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM suppressions WHERE tenant_id = 'clinic-a' \
           AND channel = 'whatsapp' AND recipient = $1)",
    )
    .bind(LISTED_AS)
    .fetch_one(&w.env.pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn an_older_start_delivered_after_a_newer_stop_leaves_the_number_suppressed() {
    let w = meta_world().await;
    let t1 = now_unix() - 60;
    let t2 = now_unix();
    replied(&w, "wamid.stop-t2", t2, "STOP").await;
    // Meta delivers the earlier START late (its retries reorder messages).
    replied(&w, "wamid.start-t1", t1, "START").await;
    assert!(suppressed_on_whatsapp(&w).await, "the newer STOP wins");
    w.stop().await;
}

#[tokio::test]
async fn a_start_replayed_after_a_newer_stop_does_not_lift_it() {
    let w = meta_world().await;
    let t1 = now_unix() - 60;
    let t2 = now_unix();
    replied(&w, "wamid.start-t1", t1, "START").await;
    replied(&w, "wamid.stop-t2", t2, "STOP").await;
    for _ in 0..2 {
        replied(&w, "wamid.start-t1", t1, "START").await;
    }
    assert!(suppressed_on_whatsapp(&w).await, "a replay changes nothing");
    w.stop().await;
}

#[tokio::test]
async fn an_older_stop_delivered_after_a_newer_start_does_not_suppress_again() {
    let w = meta_world().await;
    let t1 = now_unix() - 60;
    let t2 = now_unix() - 30;
    replied(&w, "wamid.stop-t1", t1, "STOP").await;
    replied(&w, "wamid.start-t2", t2, "START").await;
    assert!(!suppressed_on_whatsapp(&w).await);
    // The first STOP, redelivered after the START.
    replied(&w, "wamid.stop-t1", t1, "STOP").await;
    assert!(!suppressed_on_whatsapp(&w).await, "the newer START wins");
    w.stop().await;
}
