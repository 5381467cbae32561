//! Tenants' chains on the real database, and the worker that sends through
//! them: settings with the tests' encryption key, chains stored as the admin
//! API stores them, jobs published, rows read back and waited for.

use super::TestEnv;
use super::fake_providers::{META_PHONE_ID, META_TOKEN, SENDGRID_KEY, TWILIO_SID, TWILIO_TOKEN};
use outreach::crypto::{KeyConfig, KeyRing};
use outreach::job::{Channel, TenantId};
use outreach::settings::Settings;
use outreach::tenant::{ChannelConfig, TenantStore};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use wiremock::MockServer;

pub const KEY: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// Settings of an in-process worker that can read tenants' credentials.
pub fn worker_settings(env: &TestEnv) -> Settings {
    let mut s = env.settings.clone();
    s.crypto.keys = vec![KeyConfig {
        id: "k1".into(),
        key: KEY.into(),
    }];
    s
}

/// The same for worker processes.
pub fn worker_env(env: &TestEnv) -> HashMap<String, String> {
    let mut vars = env.env_vars();
    vars.insert("OUTREACH_ENCRYPTION_KEYS".into(), format!("k1:{KEY}"));
    vars.insert("RUST_LOG".into(), "warn".into());
    vars
}

pub async fn set_tenant(env: &TestEnv, tenant: &str, channel: Channel, cfg: Value) {
    let ring = KeyRing::new(&[("k1".to_string(), KEY.into())], None).unwrap();
    let store = TenantStore::new(env.pool.clone(), Arc::new(ring));
    let cfg = ChannelConfig::from_json(cfg, channel).unwrap();
    store
        .put(&TenantId::parse(tenant).unwrap(), channel, &cfg, "test")
        .await
        .unwrap();
}

pub fn sendgrid_at(server: &MockServer) -> Value {
    json!({"provider": "sendgrid", "api_key": SENDGRID_KEY, "from_email": "desk@clinic.example", "base_url": server.uri()})
}

pub fn twilio_at(server: &MockServer) -> Value {
    json!({"provider": "twilio", "account_sid": TWILIO_SID, "auth_token": TWILIO_TOKEN, "from": "+14155550100", "base_url": server.uri()})
}

/// A Meta (WhatsApp Cloud API) account whose webhooks are signed with `app_secret`.
pub fn meta_at(server: &MockServer, app_secret: &str, verify_token: &str) -> Value {
    json!({"provider": "meta", "access_token": META_TOKEN, "phone_number_id": META_PHONE_ID,
        "base_url": server.uri(), "app_secret": app_secret, "webhook_verify_token": verify_token})
}

pub fn whatsapp(id: &str, tenant: &str) -> Value {
    json!({"version": 1, "job_id": id, "tenant_id": tenant, "channel": "whatsapp",
        "recipient": "+447700900123", "content": {"text": "Your appointment is tomorrow at 10:00."}})
}

pub fn sms(id: &str, tenant: &str) -> Value {
    json!({"version": 1, "job_id": id, "tenant_id": tenant, "channel": "sms",
        "recipient": "+447700900123", "content": {"text": "Your appointment is tomorrow at 10:00."}})
}

pub fn email(id: &str, tenant: &str) -> Value {
    super::email_payload(id, tenant, "patient@example.com")
}

pub async fn publish(env: &TestEnv, jobs: &[Value]) {
    let publisher = env.publisher().await;
    for job in jobs {
        publisher.publish(job.to_string().as_bytes()).await.unwrap();
    }
}

/// A job's log row as JSON (status, provider, chain_step, attempt_log…).
pub async fn row(env: &TestEnv, job_id: &str) -> Option<Value> {
    sqlx::query_scalar(
        "SELECT json_build_object('status', status, 'provider', provider, 'chain_step', chain_step, \
         'fallback_used', fallback_used, 'attempts', attempts, 'attempt_log', attempt_log, \
         'error_kind', error_kind, 'error_code', error_code, 'sent_at', sent_at) \
         FROM outreach_logs WHERE job_id = $1",
    )
    .bind(job_id)
    .fetch_optional(&env.pool)
    .await
    .unwrap()
}

/// Poll until the job's row is final, or `suppressed` (panics after `within`).
pub async fn wait_final(env: &TestEnv, job_id: &str, within: Duration) -> Value {
    let started = Instant::now();
    loop {
        if let Some(r) = row(env, job_id).await
            && ["sent", "simulated", "failed", "expired", "suppressed"]
                .contains(&r["status"].as_str().unwrap())
        {
            return r;
        }
        assert!(
            started.elapsed() < within,
            "{job_id} not final after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The tenant's jobs a provider accepted: `sent`, or `simulated` where the
/// sandbox (the tests' system default) took them.
pub async fn count_accepted(env: &TestEnv, tenant: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM outreach_logs WHERE tenant_id = $1 AND status IN ('sent', 'simulated')",
    )
    .bind(tenant)
    .fetch_one(&env.pool)
    .await
    .unwrap()
}

/// Rows (all tenants) whose status is `status`.
pub async fn count_status(env: &TestEnv, status: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM outreach_logs WHERE status::text = $1")
        .bind(status)
        .fetch_one(&env.pool)
        .await
        .unwrap()
}
