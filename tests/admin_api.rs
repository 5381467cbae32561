//! The admin API over real HTTP: tokens, tenant scoping, validation, masking.

use crate::support;

use outreach::admin_api::{self, AdminState, hash_token};
use outreach::crypto::KeyRing;
use outreach::pipeline::QuickRetry;
use outreach::settings::{OperatorToken, Settings, TenantToken};
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
        Self::start_with(env, |_| {}).await
    }

    /// With the test's settings changed by `adjust` (network allow-list,
    /// limits, tokens) before anything is built from them.
    async fn start_with(env: &TestEnv, adjust: impl FnOnce(&mut Settings)) -> Self {
        let mut settings = env.settings.clone();
        settings.admin.operator_token_sha256 = vec![hash_token(OPERATOR).into()];
        settings.admin.tenant_tokens = vec![TenantToken {
            tenant: "clinic-1".into(),
            sha256: hash_token(CLINIC_1),
            name: "clinic-1 portal".into(),
        }];
        adjust(&mut settings);
        let keys = KeyRing::new(&[("k1".into(), "ab".repeat(32).into())], None).unwrap();
        let store = TenantStore::new(env.pool.clone(), Arc::new(keys))
            .with_max_chain_len(settings.tenant_config.max_chain_len);
        let directory = Arc::new(
            Directory::new(&settings, &outreach::app::provider_context(&settings))
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
    assert_eq!(stored_configs(&env).await, 0);
    env.cleanup().await;
}

// ------------------------------------------------------------ boundaries

const TWILIO_SID: &str = "AC0123456789abcdef0123456789abcdef";

fn twilio_entry(base_url: &str) -> Value {
    json!({"provider": "twilio", "account_sid": TWILIO_SID, "auth_token": "tok-0123456789",
        "from": "+14155550100", "base_url": base_url})
}

/// Channel configs stored, for every tenant.
async fn stored_configs(env: &TestEnv) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM tenant_channel_configs")
        .fetch_one(&env.pool)
        .await
        .unwrap()
}

fn field_of(body: &str) -> Value {
    serde_json::from_str::<Value>(body).unwrap()["field"].clone()
}

#[tokio::test]
async fn a_tenant_token_may_not_configure_the_sandbox_or_its_record_file() {
    let env = TestEnv::new().await;
    let api = Api::start(&env).await;
    let path = env.path("written-by-a-tenant.jsonl");

    let (with_file, body) = api
        .call(
            "PUT",
            "/tenants/clinic-1/messaging/sms",
            Some(CLINIC_1),
            Some(json!({"chain": [{"provider": "sandbox", "record_file": path}]})),
        )
        .await;
    let (bare, bare_body) = api
        .call(
            "PUT",
            "/tenants/clinic-1/messaging/sms",
            Some(CLINIC_1),
            Some(json!({"chain": [{"provider": "sandbox"}]})),
        )
        .await;
    let (test, _) = api
        .call(
            "POST",
            "/tenants/clinic-1/messaging/sms/test",
            Some(CLINIC_1),
            Some(json!({"to": "+447700900123"})),
        )
        .await;

    assert_eq!((with_file, bare), (403, 403));
    assert_eq!(field_of(&body), "chain[0].record_file");
    assert_eq!(field_of(&bare_body), "chain[0].provider");
    assert!(!body.contains(&path), "{body}");
    assert_eq!(test, 200);
    assert!(!std::path::Path::new(&path).exists());
    assert_eq!(stored_configs(&env).await, 0);
    env.cleanup().await;
}

#[tokio::test]
async fn a_tenant_token_may_not_point_a_provider_outside_the_allow_list() {
    let env = TestEnv::new().await;
    let api = Api::start(&env).await;

    for base in [
        "http://127.0.0.1:9464/metrics#",
        "https://127.0.0.1",
        "http://169.254.169.254/latest/meta-data/",
        "https://10.0.0.1",
        "https://api.twilio.com.attacker.example",
    ] {
        let (status, body) = api
            .call(
                "PUT",
                "/tenants/clinic-1/messaging/sms",
                Some(CLINIC_1),
                Some(json!({"chain": [twilio_entry(base)]})),
            )
            .await;
        assert_eq!(status, 403, "{base}: {body}");
        assert_eq!(field_of(&body), "chain[0].base_url", "{base}");
    }
    let (smtp, body) = api
        .call(
            "PUT",
            "/tenants/clinic-1/messaging/email",
            Some(CLINIC_1),
            Some(
                json!({"chain": [{"provider": "smtp", "host": "127.0.0.1", "port": 5432,
                "security": "none", "from_email": "a@clinic.example"}]}),
            ),
        )
        .await;
    assert_eq!(smtp, 403);
    assert_eq!(field_of(&body), "chain[0].host");
    // The real endpoint is fine.
    let (real, body) = api
        .call(
            "PUT",
            "/tenants/clinic-1/messaging/sms",
            Some(CLINIC_1),
            Some(json!({"chain": [twilio_entry("https://api.twilio.com")]})),
        )
        .await;
    assert_eq!(real, 200, "{body}");
    env.cleanup().await;
}

/// A TCP listener on 127.0.0.1 that counts the connections it accepts (and
/// keeps them open, silent).
async fn counting_listener() -> (u16, Arc<std::sync::atomic::AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        let mut held = vec![];
        while let Ok((conn, _)) = listener.accept().await {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            held.push(conn);
        }
    });
    (port, accepted)
}

#[tokio::test]
async fn an_endpoint_an_operator_set_on_a_network_not_allow_listed_is_refused_at_call_time() {
    let env = TestEnv::new().await;
    // No private network allowed: the production default.
    let api = Api::start_with(&env, |s| s.providers.allowed_private_networks.clear()).await;
    let (port, accepted) = counting_listener().await;

    for (channel, entry) in [
        ("sms", twilio_entry(&format!("http://127.0.0.1:{port}"))),
        // A name that resolves to loopback goes through the resolver.
        (
            "whatsapp",
            twilio_entry(&format!("http://localhost:{port}")),
        ),
        (
            "email",
            json!({"provider": "smtp", "host": "127.0.0.1", "port": port, "security": "none",
                "from_email": "a@clinic.example"}),
        ),
    ] {
        let (put, body) = api
            .call(
                "PUT",
                &format!("/tenants/clinic-2/messaging/{channel}"),
                Some(OPERATOR),
                Some(json!({"chain": [entry], "fallback_to_system": false})),
            )
            .await;
        assert_eq!(put, 200, "{body}");
        let to = if channel == "email" {
            "pat@example.com"
        } else {
            "+447700900123"
        };
        let started = std::time::Instant::now();
        let (status, body) = api
            .call(
                "POST",
                &format!("/tenants/clinic-2/messaging/{channel}/test"),
                Some(OPERATOR),
                Some(json!({"to": to})),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["sent"], false, "{channel}: {body}");
        assert_eq!(v["code"], "address_refused", "{channel}: {body}");
        assert!(started.elapsed() < Duration::from_secs(5), "{channel}");
    }
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 0);
    env.cleanup().await;
}

#[tokio::test]
async fn an_operator_reaches_a_self_hosted_smtp_relay_on_an_allow_listed_network() {
    let env = TestEnv::new().await;
    // TestEnv allow-lists 127.0.0.1/32, as an operator would for a relay.
    let api = Api::start(&env).await;
    let smtp = support::smtp::SmtpServer::start(env.dir.path(), Default::default());

    let (put, body) = api
        .call(
            "PUT",
            "/tenants/clinic-1/messaging/email",
            Some(OPERATOR),
            Some(
                json!({"chain": [{"provider": "smtp", "host": "127.0.0.1", "port": smtp.port,
                "security": "none", "from_email": "desk@clinic.example"}],
                "fallback_to_system": false}),
            ),
        )
        .await;
    let (status, body2) = api
        .call(
            "POST",
            "/tenants/clinic-1/messaging/email/test",
            Some(OPERATOR),
            Some(json!({"to": "pat@example.com"})),
        )
        .await;
    // The tenant may rotate its own settings and keep the relay the
    // operator chose for it (same position, same host and port).
    let (tenant_put, body3) = api
        .call(
            "PUT",
            "/tenants/clinic-1/messaging/email",
            Some(CLINIC_1),
            Some(
                json!({"chain": [{"provider": "smtp", "host": "127.0.0.1", "port": smtp.port,
                "security": "none", "from_email": "frontdesk@clinic.example"}],
                "fallback_to_system": false}),
            ),
        )
        .await;

    assert_eq!(put, 200, "{body}");
    assert_eq!(status, 200);
    let v: Value = serde_json::from_str(&body2).unwrap();
    assert_eq!(v["sent"], true, "{body2}");
    assert_eq!(smtp.messages().len(), 1);
    assert_eq!(tenant_put, 200, "{body3}");
    env.cleanup().await;
}

#[tokio::test]
async fn a_chain_longer_than_the_limit_is_refused_naming_chain() {
    let env = TestEnv::new().await;
    let api = Api::start(&env).await;
    let entry =
        json!({"provider": "sendgrid", "api_key": SECRET, "from_email": "a@clinic.example"});

    let (six, body) = api
        .call(
            "PUT",
            "/tenants/clinic-1/messaging/email",
            Some(OPERATOR),
            Some(json!({"chain": vec![entry.clone(); 6]})),
        )
        .await;
    let (five, _) = api
        .call(
            "PUT",
            "/tenants/clinic-1/messaging/email",
            Some(CLINIC_1),
            Some(json!({"chain": vec![entry; 5]})),
        )
        .await;

    assert_eq!((six, five), (422, 200));
    assert_eq!(field_of(&body), "chain");
    env.cleanup().await;
}

#[tokio::test]
async fn a_secret_given_as_a_number_is_not_echoed_in_the_422() {
    let env = TestEnv::new().await;
    let api = Api::start(&env).await;

    let mut answers = vec![];
    for secret in [json!(12345678901234_u64), json!(98765.4321), json!(true)] {
        answers.push(
            api.call(
                "PUT",
                "/tenants/clinic-1/messaging/email",
                Some(CLINIC_1),
                Some(json!({"chain": [{"provider": "sendgrid", "api_key": secret,
                    "from_email": "a@clinic.example"}]})),
            )
            .await,
        );
    }

    for (status, body) in answers {
        assert_eq!(status, 422, "{body}");
        assert_eq!(field_of(&body), "chain[0].api_key", "{body}");
        for value in ["12345678901234", "98765", "true"] {
            assert!(!body.contains(value), "{body}");
        }
        assert!(body.contains("expected a string"), "{body}");
    }
    env.cleanup().await;
}

#[tokio::test]
async fn a_lowercase_bearer_scheme_is_accepted() {
    let env = TestEnv::new().await;
    let api = Api::start(&env).await;

    let status = api
        .client
        .get(format!("{}/tenants/clinic-1/messaging", api.base))
        .header("authorization", format!("bearer {CLINIC_1}"))
        .send()
        .await
        .unwrap()
        .status();

    assert_eq!(status, 200);
    env.cleanup().await;
}

#[tokio::test]
async fn operator_tokens_are_recorded_by_name() {
    let env = TestEnv::new().await;
    let api = Api::start_with(&env, |s| {
        s.admin.operator_token_sha256.push(OperatorToken::Named {
            sha256: hash_token("alice-token"),
            name: "alice".into(),
        })
    })
    .await;

    for token in [OPERATOR, "alice-token"] {
        let (status, _) = api
            .call(
                "PUT",
                "/tenants/clinic-2/messaging/email",
                Some(token),
                Some(email_config(SECRET)),
            )
            .await;
        assert_eq!(status, 200);
    }

    let actors: Vec<String> = sqlx::query_scalar("SELECT actor FROM config_audit ORDER BY id")
        .fetch_all(&env.pool)
        .await
        .unwrap();
    let bare = format!("api:operator-{}", &hash_token(OPERATOR)[..8]);
    assert_eq!(actors, vec![bare, "api:alice".to_string()]);
    env.cleanup().await;
}

#[tokio::test]
async fn requests_over_the_per_token_limit_get_429_with_retry_after() {
    let env = TestEnv::new().await;
    let api = Api::start_with(&env, |s| s.admin.requests_per_minute = 3).await;

    let mut statuses = vec![];
    let mut retry_after = None;
    for _ in 0..4 {
        let r = api
            .client
            .get(format!("{}/tenants/clinic-1/messaging", api.base))
            .bearer_auth(CLINIC_1)
            .send()
            .await
            .unwrap();
        statuses.push(r.status().as_u16());
        retry_after = r.headers().get("retry-after").cloned();
    }
    // Another token has its own allowance.
    let (operator, _) = api
        .call("GET", "/tenants/clinic-1/messaging", Some(OPERATOR), None)
        .await;

    assert_eq!(statuses, vec![200, 200, 200, 429]);
    let secs: u64 = retry_after.unwrap().to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&secs), "{secs}");
    assert_eq!(operator, 200);
    env.cleanup().await;
}

/// Refused with 413, as JSON like every other error of the API, naming the
/// setting.
#[tokio::test]
async fn a_body_over_the_limit_is_refused_with_413() {
    let env = TestEnv::new().await;
    let api = Api::start(&env).await;
    let big = json!({"chain": [], "time_zone": "x".repeat(70 * 1024)});

    let (status, body) = api
        .call(
            "PUT",
            "/tenants/clinic-1/messaging/email",
            Some(OPERATOR),
            Some(big),
        )
        .await;

    assert_eq!(status, 413);
    let error: Value = serde_json::from_str(&body).unwrap_or_else(|_| panic!("not JSON: {body}"));
    assert!(
        error["error"]
            .as_str()
            .is_some_and(|e| e.contains("admin.max_body_bytes")),
        "{error}"
    );
    env.cleanup().await;
}

#[tokio::test]
async fn path_like_tenant_ids_are_refused() {
    let env = TestEnv::new().await;
    let api = Api::start(&env).await;

    let mut statuses = vec![];
    for t in ["a..b", ".hidden", "..x", "-x"] {
        let (status, _) = api
            .call(
                "PUT",
                &format!("/tenants/{t}/messaging/email"),
                Some(OPERATOR),
                Some(email_config(SECRET)),
            )
            .await;
        statuses.push(status);
    }

    assert_eq!(statuses, vec![404; 4]);
    for t in ["..", ".", "a..b", ".x", "-x", "_x"] {
        assert!(outreach::job::TenantId::parse(t).is_err(), "{t}");
    }
    for t in ["clinic-1", "a.b", "9:x_y-z"] {
        assert!(outreach::job::TenantId::parse(t).is_ok(), "{t}");
    }
    env.cleanup().await;
}

// ------------------------------------------------------------ header values

/// Every value an adapter writes into a header, an address or a sender id,
/// with a line break (header injection; the mail library panicked writing
/// one), as a tenant token would store it.
fn header_injections() -> Vec<(&'static str, Value, &'static str)> {
    let bad = "Clinic\r\nBcc: everyone@example.com";
    vec![
        (
            "email",
            json!({"provider": "smtp", "host": "smtp.clinic.example", "from_email": "desk@clinic.example", "from_name": bad}),
            "chain[0].from_name",
        ),
        (
            "email",
            json!({"provider": "smtp", "host": "smtp.clinic.example", "from_email": "desk@clinic.example", "username": bad}),
            "chain[0].username",
        ),
        (
            "email",
            json!({"provider": "sendgrid", "api_key": SECRET, "from_email": "desk@clinic.example", "from_name": bad}),
            "chain[0].from_name",
        ),
        (
            "email",
            json!({"provider": "sendgrid", "api_key": SECRET, "from_email": "desk@clinic.example", "categories": ["ok", bad]}),
            "chain[0].categories[1]",
        ),
        (
            "email",
            json!({"provider": "ses", "region": "eu-west-1", "access_key_id": "AKIAIOSFODNN7EXAMPLE",
                "secret_access_key": "s", "from_email": "desk@clinic.example", "from_name": bad}),
            "chain[0].from_name",
        ),
        (
            "email",
            json!({"provider": "sendgrid", "api_key": SECRET, "from_email": "desk@clinic.example\r\nBcc: x@example.com"}),
            "chain[0].from_email",
        ),
        (
            "sms",
            json!({"provider": "vonage", "api_key": "k", "api_secret": "s", "from": "Clinic\r\n"}),
            "chain[0].from",
        ),
    ]
}

#[tokio::test]
async fn a_header_value_with_a_line_break_is_refused_naming_the_field_and_nothing_is_stored() {
    let env = TestEnv::new().await;
    // The tenant may use its own SMTP relay (allow-listed by the operator).
    let api = Api::start_with(&env, |s| {
        s.providers.allowed_hosts.smtp = vec!["smtp.clinic.example".into()]
    })
    .await;

    for (channel, entry, field) in header_injections() {
        let (status, body) = api
            .call(
                "PUT",
                &format!("/tenants/clinic-1/messaging/{channel}"),
                Some(CLINIC_1),
                Some(json!({"chain": [entry]})),
            )
            .await;
        assert_eq!(status, 422, "{field}: {body}");
        assert_eq!(field_of(&body), field, "{body}");
        assert!(!body.contains("Bcc"), "the value is not echoed: {body}");
    }
    assert_eq!(stored_configs(&env).await, 0);
    env.cleanup().await;
}

#[tokio::test]
async fn a_test_send_through_an_adapter_that_panics_answers_500_naming_the_defect() {
    let env = TestEnv::new().await;
    // The stand-in (test builds only), stored by an operator.
    let api = Api::start(&env).await;
    let (stored, body) = api
        .call(
            "PUT",
            "/tenants/clinic-1/messaging/sms",
            Some(OPERATOR),
            Some(json!({"chain": [{"provider": "sandbox", "panic_on_send": true}], "fallback_to_system": false})),
        )
        .await;
    assert_eq!(stored, 200, "{body}");

    let (status, body) = api
        .call(
            "POST",
            "/tenants/clinic-1/messaging/sms/test",
            Some(OPERATOR),
            Some(json!({"to": "+447700900123"})),
        )
        .await;

    assert_eq!(status, 500, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["sent"], false);
    assert_eq!(v["kind"], "internal");
    assert_eq!(v["code"], "panic");
    env.cleanup().await;
}
