//! The webhook receiver as providers reach it: a worker whose `webhooks.bind`
//! is a free port and whose public base URL is `PUBLIC_BASE`, and requests
//! signed the way each provider signs them.

use super::tenants::worker_settings;
use super::{TestEnv, free_port};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use outreach::feedback::verify;
use outreach::settings::Settings;
use p256::ecdsa::signature::Signer;
use p256::ecdsa::{Signature, SigningKey};
use secrecy::SecretString;
use serde_json::Value;

/// What Twilio is told the receiver's address is (TLS ends at a proxy).
pub const PUBLIC_BASE: &str = "https://hooks.clinic-outreach.example";

/// Worker settings with the webhook receiver on, and its local address.
pub fn receiver_settings(env: &TestEnv) -> (Settings, Receiver) {
    let mut s = worker_settings(env);
    let port = free_port();
    s.webhooks.bind = format!("127.0.0.1:{port}");
    s.providers.webhook_base_url = Some(PUBLIC_BASE.parse().unwrap());
    (
        s,
        Receiver {
            local: format!("http://127.0.0.1:{port}"),
            client: reqwest::Client::new(),
        },
    )
}

pub struct Receiver {
    pub local: String,
    client: reqwest::Client,
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
        let body: String = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(params)
            .finish();
        self.client
            .post(format!("{}/webhooks/twilio/{tenant}", self.local))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("x-twilio-signature", sig)
            .body(body)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    /// POST SendGrid events: the raw `body`, signed over `timestamp` + body by `key`.
    pub async fn sendgrid(
        &self,
        tenant: &str,
        body: &[u8],
        timestamp: i64,
        key: &SigningKey,
    ) -> u16 {
        let mut signed = timestamp.to_string().into_bytes();
        signed.extend_from_slice(body);
        let sig: Signature = key.sign(&signed);
        self.sendgrid_signed(
            tenant,
            body,
            timestamp,
            &B64.encode(sig.to_der().as_bytes()),
        )
        .await
    }

    pub async fn sendgrid_signed(
        &self,
        tenant: &str,
        body: &[u8],
        timestamp: i64,
        sig: &str,
    ) -> u16 {
        self.client
            .post(match tenant {
                // The system accounts' route.
                "" => format!("{}/webhooks/sendgrid", self.local),
                t => format!("{}/webhooks/sendgrid/{t}", self.local),
            })
            .header("content-type", "application/json")
            .header("x-twilio-email-event-webhook-signature", sig)
            .header(
                "x-twilio-email-event-webhook-timestamp",
                timestamp.to_string(),
            )
            .body(body.to_vec())
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    /// POST a Meta webhook signed with `app_secret`.
    pub async fn meta(&self, tenant: &str, body: &Value, app_secret: &str) -> u16 {
        let raw = body.to_string().into_bytes();
        let sig = verify::meta_signature(&SecretString::from(app_secret), &raw);
        self.meta_signed(tenant, &raw, &sig).await
    }

    pub async fn meta_signed(&self, tenant: &str, raw: &[u8], sig: &str) -> u16 {
        self.client
            .post(format!("{}/webhooks/meta/{tenant}", self.local))
            .header("content-type", "application/json")
            .header("x-hub-signature-256", sig)
            .body(raw.to_vec())
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
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
