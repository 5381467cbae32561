//! The webhook receiver as providers reach it: a worker whose `webhooks.bind`
//! is a free port and whose public base URL is `PUBLIC_BASE`, and requests
//! signed the way each provider signs them.

use super::tenants::{publish, set_tenant, wait_final, worker_settings};
use super::{EventTap, TestEnv, free_port};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use outreach::feedback::verify;
use outreach::job::Channel;
use outreach::settings::Settings;
use p256::ecdsa::signature::Signer;
use p256::ecdsa::{Signature, SigningKey};
use secrecy::SecretString;
use serde_json::{Value, json};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use wiremock::MockServer;

/// What Twilio is told the receiver's address is (TLS ends at a proxy).
pub const PUBLIC_BASE: &str = "https://hooks.clinic-outreach.example";

/// How long a job may take to reach its final row.
pub const FINAL_WITHIN: Duration = Duration::from_secs(20);

/// A running worker with the receiver on; stopped by [`World::stop`].
pub struct World {
    pub env: TestEnv,
    pub rx: Receiver,
    pub events: EventTap,
    pub stop: CancellationToken,
    pub worker: tokio::task::JoinHandle<anyhow::Result<()>>,
    /// The fake providers it sends to, kept alive as long as it runs
    /// (a dropped MockServer goes back to wiremock's pool, reset).
    pub fakes: Vec<MockServer>,
}

impl World {
    /// `tenants` configured first: (tenant, channel, chain entry).
    pub async fn start(env: TestEnv, tenants: Vec<(&str, Channel, Value)>) -> Self {
        Self::start_with(env, tenants, |_| {}).await
    }

    /// The same with the worker's settings changed by `adjust`.
    pub async fn start_with(
        env: TestEnv,
        tenants: Vec<(&str, Channel, Value)>,
        adjust: impl FnOnce(&mut outreach::settings::Settings),
    ) -> Self {
        for (t, c, entry) in tenants {
            set_tenant(&env, t, c, json!({"chain": [entry]})).await;
        }
        let (mut s, rx) = receiver_settings(&env);
        adjust(&mut s);
        let events = env.event_queue().await;
        let (stop, worker) = env.spawn_worker(s);
        rx.ready().await;
        Self {
            env,
            rx,
            events,
            stop,
            worker,
            fakes: vec![],
        }
    }

    /// Keep `fake` alive with the world.
    pub fn with(mut self, fake: MockServer) -> Self {
        self.fakes.push(fake);
        self
    }

    /// Publish a job and wait for its row to be final.
    pub async fn send(&self, job: Value) -> Value {
        let id = job["job_id"].as_str().unwrap().to_owned();
        publish(&self.env, &[job]).await;
        wait_final(&self.env, &id, FINAL_WITHIN).await
    }

    /// The next delivery event with routing key `key`, skipping others.
    pub async fn event(&mut self, key: &str) -> Option<Value> {
        while let Some((k, ev)) = self.events.next(Duration::from_secs(5)).await {
            if k == key {
                return Some(ev);
            }
        }
        None
    }

    pub async fn stop(self) {
        self.stop.cancel();
        self.worker.await.unwrap().unwrap();
        self.env.cleanup().await;
    }
}

/// Worker settings with the webhook receiver on, and its local address.
pub fn receiver_settings(env: &TestEnv) -> (Settings, Receiver) {
    let mut s = worker_settings(env);
    let port = free_port();
    s.webhooks.bind = format!("127.0.0.1:{port}");
    s.providers.webhook_base_url = Some(PUBLIC_BASE.parse().unwrap());
    let http = free_port();
    s.http.bind = format!("127.0.0.1:{http}");
    (
        s,
        Receiver {
            local: format!("http://127.0.0.1:{port}"),
            metrics: format!("http://127.0.0.1:{http}/metrics"),
            // No idle connection kept open to the receiver between requests
            // (tests of its connection limit count every one).
            client: reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .build()
                .unwrap(),
        },
    )
}

pub struct Receiver {
    /// `http://127.0.0.1:<webhooks.bind port>`.
    pub local: String,
    /// The worker's `/metrics`.
    pub metrics: String,
    client: reqwest::Client,
}

/// Parameters as a form body.
pub fn form(params: &[(&str, &str)]) -> String {
    url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(params)
        .finish()
}

/// SendGrid's signature headers.
pub fn sendgrid_headers<'a>(sig: &'a str, timestamp: &'a str) -> [(&'static str, &'a str); 2] {
    [
        ("x-twilio-email-event-webhook-signature", sig),
        ("x-twilio-email-event-webhook-timestamp", timestamp),
    ]
}

/// SendGrid's signature (base64 DER) over `timestamp` + `body`.
pub fn sendgrid_signature(key: &SigningKey, timestamp: i64, body: &[u8]) -> String {
    let mut signed = timestamp.to_string().into_bytes();
    signed.extend_from_slice(body);
    let sig: Signature = key.sign(&signed);
    B64.encode(sig.to_der().as_bytes())
}

/// A SendGrid account's signing key (the test's; SendGrid keeps its own).
pub fn sendgrid_signing_key(seed: u8) -> SigningKey {
    SigningKey::from_slice(&[seed; 32]).unwrap()
}

/// The verification key SendGrid shows for that signing key.
pub fn sendgrid_public_key(key: &SigningKey) -> String {
    // SubjectPublicKeyInfo for an id-ecPublicKey on prime256v1, then the
    // uncompressed point: the DER SendGrid shows, base64.
    let mut der = hex::decode("3059301306072a8648ce3d020106082a8648ce3d030107034200").unwrap();
    der.extend_from_slice(key.verifying_key().to_encoded_point(false).as_bytes());
    B64.encode(der)
}

pub fn now_unix() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

impl Receiver {
    /// Wait until the worker's receiver answers.
    pub async fn ready(&self) {
        super::eventually(
            std::time::Duration::from_secs(10),
            "webhook receiver up",
            || async {
                self.client
                    .get(format!("{}/webhooks/unknown/x", self.local))
                    .send()
                    .await
                    .is_ok()
            },
        )
        .await;
    }

    /// POST a Twilio callback signed with `token` over the public URL.
    pub async fn twilio(&self, tenant: &str, params: &[(&str, &str)], token: &str) -> u16 {
        let path = format!("/webhooks/twilio/{tenant}");
        let owned: Vec<(String, String)> = params
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let sig = verify::twilio_signature(
            &SecretString::from(token),
            &format!("{PUBLIC_BASE}{path}"),
            &owned,
        );
        self.twilio_signed(tenant, params, &sig).await
    }

    /// POST a Twilio callback with the given signature header.
    pub async fn twilio_signed(&self, tenant: &str, params: &[(&str, &str)], sig: &str) -> u16 {
        self.post(
            &format!("/webhooks/twilio/{tenant}"),
            "application/x-www-form-urlencoded",
            &[("x-twilio-signature", sig)],
            form(params).into_bytes(),
        )
        .await
    }

    /// POST `body` to `path` with this Content-Type and these headers; the status.
    pub async fn post(
        &self,
        path: &str,
        content_type: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> u16 {
        let mut request = self
            .client
            .post(format!("{}{path}", self.local))
            .header("content-type", content_type);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.body(body).send().await.unwrap().status().as_u16()
    }

    /// `outreach_webhooks_refused_total{provider, reason}` now (0 before the first).
    pub async fn refused(&self, provider: &str, reason: &str) -> f64 {
        let series = format!(
            "outreach_webhooks_refused_total{{provider=\"{provider}\",reason=\"{reason}\"}} "
        );
        let scrape = self
            .client
            .get(&self.metrics)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        scrape
            .lines()
            .find_map(|l| l.strip_prefix(&series))
            .map_or(0.0, |v| v.trim().parse().unwrap())
    }

    /// POST SendGrid events: the raw `body`, signed over `timestamp` + body by `key`.
    pub async fn sendgrid(
        &self,
        tenant: &str,
        body: &[u8],
        timestamp: i64,
        key: &SigningKey,
    ) -> u16 {
        let sig = sendgrid_signature(key, timestamp, body);
        self.sendgrid_signed(tenant, body, timestamp, &sig).await
    }

    pub async fn sendgrid_signed(
        &self,
        tenant: &str,
        body: &[u8],
        timestamp: i64,
        sig: &str,
    ) -> u16 {
        let path = match tenant {
            // The system accounts' route.
            "" => "/webhooks/sendgrid".to_owned(),
            t => format!("/webhooks/sendgrid/{t}"),
        };
        let timestamp = timestamp.to_string();
        let headers = sendgrid_headers(sig, &timestamp);
        self.post(&path, "application/json", &headers, body.to_vec())
            .await
    }

    /// POST a Meta webhook signed with `app_secret`.
    pub async fn meta(&self, tenant: &str, body: &Value, app_secret: &str) -> u16 {
        let raw = body.to_string().into_bytes();
        let sig = verify::meta_signature(&SecretString::from(app_secret), &raw);
        self.meta_signed(tenant, &raw, &sig).await
    }

    pub async fn meta_signed(&self, tenant: &str, raw: &[u8], sig: &str) -> u16 {
        self.post(
            &format!("/webhooks/meta/{tenant}"),
            "application/json",
            &[("x-hub-signature-256", sig)],
            raw.to_vec(),
        )
        .await
    }

    /// GET a Vonage receipt or inbound message: `params` plus `timestamp`,
    /// signed (`sig`, md5hash) with `secret`.
    pub async fn vonage(
        &self,
        tenant: &str,
        params: &[(&str, &str)],
        timestamp: i64,
        secret: &str,
    ) -> u16 {
        let ts = timestamp.to_string();
        let mut all: Vec<(String, String)> = params
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        all.push(("timestamp".into(), ts));
        let sig = verify::vonage_signature(&SecretString::from(secret), Default::default(), &all);
        all.push(("sig".into(), sig));
        self.vonage_raw(tenant, &all).await
    }

    /// GET with exactly these parameters.
    pub async fn vonage_raw(&self, tenant: &str, params: &[(String, String)]) -> u16 {
        let query: String = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(params)
            .finish();
        self.client
            .get(format!("{}/webhooks/vonage/{tenant}?{query}", self.local))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    /// Meta's subscription check; (status, body).
    pub async fn meta_subscribe(&self, tenant: &str, verify_token: &str) -> (u16, String) {
        let query: String = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs([
                ("hub.mode", "subscribe"),
                ("hub.verify_token", verify_token),
                ("hub.challenge", "1158201444"),
            ])
            .finish();
        let r = self
            .client
            .get(format!("{}/webhooks/meta/{tenant}?{query}", self.local))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }
}

/// A job's provider events as (raw status, applied), oldest first.
pub async fn provider_events(env: &TestEnv, tenant: &str, job_id: &str) -> Vec<(String, bool)> {
    sqlx::query_as(
        "SELECT raw_status, applied FROM provider_events WHERE tenant_id = $1 AND job_id = $2 ORDER BY id",
    )
    .bind(tenant)
    .bind(job_id)
    .fetch_all(&env.pool)
    .await
    .unwrap()
}

/// A tenant's row status for a job.
pub async fn status(env: &TestEnv, tenant: &str, job_id: &str) -> String {
    sqlx::query_scalar(
        "SELECT status::text FROM outreach_logs WHERE tenant_id = $1 AND job_id = $2",
    )
    .bind(tenant)
    .bind(job_id)
    .fetch_one(&env.pool)
    .await
    .unwrap()
}

/// A Meta webhook carrying one text message a recipient sent: from `wa_id`,
/// Meta's message id `wamid`, sent at `sent_at` (Unix seconds).
pub fn meta_inbound(wa_id: &str, wamid: &str, sent_at: i64, text: &str) -> Value {
    json!({"object": "whatsapp_business_account", "entry": [{"id": "102290129340398", "changes": [{
        "field": "messages", "value": {"messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "15550783881", "phone_number_id": super::fake_providers::META_PHONE_ID},
            "contacts": [{"profile": {"name": "Patient"}, "wa_id": wa_id}],
            "messages": [{"from": wa_id, "id": wamid, "timestamp": sent_at.to_string(),
                "type": "text", "text": {"body": text}}]}}]}]})
}
