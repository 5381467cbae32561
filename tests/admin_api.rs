//! The admin API over real HTTP: tokens, tenant scoping, validation, masking.

mod support;

use outreach::admin_api::{self, AdminState, hash_token};
use outreach::crypto::KeyRing;
use outreach::dispatch::QuickRetry;
use outreach::settings::TenantToken;
use outreach::tenant::{Directory, TenantStore};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use support::TestEnv;

const OPERATOR: &str = "operator-token-abc";
const CLINIC_1: &str = "clinic-1-token-xyz";
const SECRET: &str = "SG.api-secret-value-0123456789";

struct Api {
    base: String,
    client: reqwest::Client,
}

impl Api {
    async fn start(env: &TestEnv) -> Self {
        let mut settings = env.settings.clone();
        settings.admin.operator_token_sha256 = vec![hash_token(OPERATOR).into()];
        settings.admin.tenant_tokens = vec![TenantToken {
            tenant: "clinic-1".into(),
            sha256: hash_token(CLINIC_1),
            name: "clinic-1 portal".into(),
        }];
        let keys = KeyRing::new(&[("k1".into(), "ab".repeat(32).into())], None).unwrap();
        let store = TenantStore::new(env.pool.clone(), Arc::new(keys));
        let directory = Arc::new(
            Directory::new(&settings, &support::context())
                .unwrap()
                .with_store(store.clone()),
        );
        let state = AdminState::new(
            store,
            directory,
            QuickRetry {
                times: 0,
                base: Duration::from_millis(10),
            },
            &settings,
        );
        let app = axum::Router::new().nest("/admin/v1", admin_api::router(state));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}/admin/v1", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self {
            base,
            client: reqwest::Client::new(),
        }
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, String) {
        let mut r = self
            .client
            .request(method.parse().unwrap(), format!("{}{path}", self.base));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r.send().await.unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap())
    }
}

fn email_config(api_key: &str) -> Value {
    json!({"chain": [{"provider": "sendgrid", "api_key": api_key, "from_email": "a@clinic.example"}]})
}

#[tokio::test]
async fn an_operator_sets_and_reads_any_tenant_and_sees_only_masked_secrets() {
    let env = TestEnv::new().await;
    let api = Api::start(&env).await;

    let (put, put_body) = api
        .call(
            "PUT",
            "/tenants/clinic-2/messaging/email",
            Some(OPERATOR),
            Some(email_config(SECRET)),
        )
        .await;
    let (get, body) = api
        .call("GET", "/tenants/clinic-2/messaging", Some(OPERATOR), None)
        .await;

    assert_eq!((put, get), (200, 200));
    assert!(!put_body.contains(SECRET) && !body.contains(SECRET));
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        v["channels"]["email"]["chain"][0]["api_key"],
        "SG.****…6789"
    );
    env.cleanup().await;
}

#[tokio::test]
async fn a_tenant_token_manages_its_own_tenant_and_is_recorded_by_name() {
    let env = TestEnv::new().await;
    let api = Api::start(&env).await;

    let (status, _) = api
        .call(
            "PUT",
            "/tenants/clinic-1/messaging/email",
            Some(CLINIC_1),
            Some(email_config(SECRET)),
        )
        .await;

    assert_eq!(status, 200);
    let actor: String = sqlx::query_scalar("SELECT actor FROM config_audit")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(actor, "api:clinic-1 portal");
    env.cleanup().await;
}

#[tokio::test]
async fn a_tenant_token_on_another_tenant_is_forbidden_and_sees_no_data() {
    let env = TestEnv::new().await;
    let api = Api::start(&env).await;
    api.call(
        "PUT",
        "/tenants/clinic-2/messaging/email",
        Some(OPERATOR),
        Some(email_config(SECRET)),
    )
    .await;

    let (get, body) = api
        .call("GET", "/tenants/clinic-2/messaging", Some(CLINIC_1), None)
        .await;
    let (put, _) = api
        .call(
            "PUT",
            "/tenants/clinic-2/messaging/email",
            Some(CLINIC_1),
            Some(email_config(SECRET)),
        )
        .await;
    let (del, _) = api
        .call(
            "DELETE",
            "/tenants/clinic-2/messaging/email",
            Some(CLINIC_1),
            None,
        )
        .await;

    assert_eq!((get, put, del), (403, 403, 403));
    assert!(!body.contains("sendgrid") && !body.contains("clinic.example"));
    env.cleanup().await;
}

#[tokio::test]
async fn requests_without_a_token_or_with_an_unknown_one_are_unauthorised() {
    let env = TestEnv::new().await;
    let api = Api::start(&env).await;

    let (none, _) = api
        .call("GET", "/tenants/clinic-1/messaging", None, None)
        .await;
    let (unknown, _) = api
        .call("GET", "/tenants/clinic-1/messaging", Some("guessed"), None)
        .await;

    assert_eq!((none, unknown), (401, 401));
    env.cleanup().await;
}

#[tokio::test]
async fn an_invalid_config_is_refused_with_422_naming_the_field_and_not_echoing_it() {
    let env = TestEnv::new().await;
    let api = Api::start(&env).await;

    let (status, body) = api
        .call(
            "PUT",
            "/tenants/clinic-1/messaging/email",
            Some(OPERATOR),
            Some(email_config("not-a-sendgrid-key")),
        )
        .await;

    assert_eq!(status, 422);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["field"], "chain[0].api_key");
    assert!(!body.contains("not-a-sendgrid-key"));
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM tenant_channel_configs")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(stored, 0);
    env.cleanup().await;
}
