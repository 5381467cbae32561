//! Tenant config store, encryption, key rotation and resolution against a
//! real PostgreSQL.

use crate::support;

use outreach::crypto::KeyRing;
use outreach::job::{Channel, TenantId};
use outreach::provider::{ErrorKind, ProviderKind};
use outreach::tenant::{ChannelConfig, Directory, StoreError, TenantStore, rotate};
use secrecy::ExposeSecret;
use serde_json::{Value, json};
use std::sync::Arc;
use support::{TestEnv, cli_output};

const K0: &str = "0000000000000000000000000000000000000000000000000000000000000000";
const K1: &str = "1111111111111111111111111111111111111111111111111111111111111111";
const K2: &str = "2222222222222222222222222222222222222222222222222222222222222222";
const SECRET: &str = "SG.tenant-secret-value-0123456789";
const SMTP_PASSWORD: &str = "smtp-password-123";

fn ring(keys: &[(&str, &str)], active: Option<&str>) -> Arc<KeyRing> {
    let keys: Vec<(String, secrecy::SecretString)> = keys
        .iter()
        .map(|(k, v)| (k.to_string(), (*v).into()))
        .collect();
    Arc::new(KeyRing::new(&keys, active).unwrap())
}

fn tenant(s: &str) -> TenantId {
    TenantId::parse(s).unwrap()
}

fn sendgrid(api_key: &str, fallback: bool) -> ChannelConfig {
    ChannelConfig::from_json(
        json!({"fallback_to_system": fallback, "chain": [
            {"provider": "sendgrid", "api_key": api_key, "from_email": "a@clinic.example", "from_name": "Clinic"},
            {"provider": "smtp", "host": "127.0.0.1", "security": "none", "username": "u", "password": SMTP_PASSWORD, "from_email": "a@clinic.example"}
        ], "rate_limits": {"per_second": 10}}),
        Channel::Email,
    )
    .unwrap()
}

#[tokio::test]
async fn a_stored_config_reads_back_with_secrets_encrypted_at_rest_and_audited() {
    let env = TestEnv::new().await;
    let store = TenantStore::new(env.pool.clone(), ring(&[("k1", K1)], None));
    let t = tenant("clinic-1");

    store
        .put(&t, Channel::Email, &sendgrid(SECRET, true), "cli:test")
        .await
        .unwrap();

    let raw: String = sqlx::query_scalar("SELECT chain::text FROM tenant_channel_configs")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert!(!raw.contains("tenant-secret") && !raw.contains("smtp-password"));
    let row = store.get(&t, Channel::Email).await.unwrap().unwrap();
    assert_eq!(row.rate_limits.per_second, Some(10));
    let chain = store.open_chain(&row).unwrap();
    assert_eq!(chain[0].secret("api_key").unwrap().expose_secret(), SECRET);
    assert_eq!(chain[1].kind(), ProviderKind::Smtp);
    let (actor, fields): (String, Vec<String>) =
        sqlx::query_as("SELECT actor, changed_fields FROM config_audit")
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(actor, "cli:test");
    assert!(!fields.iter().any(|f| f.contains("secret")));
    env.cleanup().await;
}

#[tokio::test]
async fn a_bad_sendgrid_key_is_refused_naming_the_field_and_nothing_is_stored() {
    let env = TestEnv::new().await;
    let store = TenantStore::new(env.pool.clone(), ring(&[("k1", K1)], None));
    let mut cfg = sendgrid(SECRET, true);
    cfg.chain[0] = serde_json::from_value(
        json!({"provider": "sendgrid", "api_key": "not-a-key", "from_email": "a@clinic.example"}),
    )
    .unwrap();

    let err = store
        .put(&tenant("clinic-1"), Channel::Email, &cfg, "cli:test")
        .await
        .unwrap_err();

    match err {
        StoreError::Invalid(e) => assert_eq!(e.field, "chain[0].api_key"),
        other => panic!("unexpected {other}"),
    }
    let rows: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM tenants) + (SELECT count(*) FROM tenant_channel_configs) + (SELECT count(*) FROM config_audit)",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(rows, 0);
    env.cleanup().await;
}

#[tokio::test]
async fn ciphertext_copied_to_another_tenant_fails_naming_tenant_and_field() {
    let env = TestEnv::new().await;
    let store = TenantStore::new(env.pool.clone(), ring(&[("k1", K1)], None));
    store
        .put(
            &tenant("clinic-a"),
            Channel::Email,
            &sendgrid(SECRET, true),
            "t",
        )
        .await
        .unwrap();
    store
        .put(
            &tenant("clinic-b"),
            Channel::Email,
            &sendgrid("SG.other-key-000000000", true),
            "t",
        )
        .await
        .unwrap();

    sqlx::query("UPDATE tenant_channel_configs SET chain = (SELECT chain FROM tenant_channel_configs WHERE tenant_id = 'clinic-a') WHERE tenant_id = 'clinic-b'")
        .execute(&env.pool)
        .await
        .unwrap();

    let row = store
        .get(&tenant("clinic-b"), Channel::Email)
        .await
        .unwrap()
        .unwrap();
    let err = store.open_chain(&row).unwrap_err().to_string();
    assert!(
        err.contains("clinic-b") && err.contains("email.chain.0.api_key"),
        "{err}"
    );
    assert!(!err.contains("tenant-secret"));
    env.cleanup().await;
}

#[tokio::test]
async fn an_interrupted_rotation_resumes_and_leaves_every_value_on_the_new_key() {
    let env = TestEnv::new().await;
    let old = TenantStore::new(env.pool.clone(), ring(&[("k1", K1)], None));
    for t in ["clinic-a", "clinic-b", "clinic-c"] {
        old.put(&tenant(t), Channel::Email, &sendgrid(SECRET, true), "t")
            .await
            .unwrap();
    }
    let both = TenantStore::new(
        env.pool.clone(),
        ring(&[("k1", K1), ("k2", K2)], Some("k2")),
    );

    // The "interrupted" run got through one row only.
    assert_eq!(
        rotate::rotate_row(&both, &tenant("clinic-b"), Channel::Email, "t")
            .await
            .unwrap(),
        2
    );
    let report = rotate::rotate_all(&both, "t", |_, _, _, _, _| {})
        .await
        .unwrap();
    assert_eq!((report.rows, report.values), (3, 4));
    let again = rotate::rotate_all(&both, "t", |_, _, _, _, _| {})
        .await
        .unwrap();
    assert_eq!(again.values, 0);

    let new_only = TenantStore::new(env.pool.clone(), ring(&[("k2", K2)], None));
    for row in new_only.list().await.unwrap() {
        let chain = new_only.open_chain(&row).unwrap();
        assert_eq!(chain[0].secret("api_key").unwrap().expose_secret(), SECRET);
    }
    env.cleanup().await;
}

async fn chain(env: &TestEnv, t: &str) -> Vec<Value> {
    let raw: sqlx::types::Json<Vec<Value>> =
        sqlx::query_scalar("SELECT chain FROM tenant_channel_configs WHERE tenant_id = $1")
            .bind(t)
            .fetch_one(&env.pool)
            .await
            .unwrap();
    raw.0
}

async fn set_chain(env: &TestEnv, t: &str, chain: &[Value]) {
    sqlx::query("UPDATE tenant_channel_configs SET chain = $2 WHERE tenant_id = $1")
        .bind(t)
        .bind(sqlx::types::Json(chain))
        .execute(&env.pool)
        .await
        .unwrap();
}

/// The key id a stored value was encrypted with.
fn kid(value: &Value) -> &str {
    value.as_str().unwrap().split(':').nth(1).unwrap()
}

#[tokio::test]
async fn keys_rotate_re_encrypts_every_readable_value_lists_each_unreadable_one_and_exits_non_zero()
{
    let env = TestEnv::new().await;
    // clinic-b's values are on k0, which will not be configured.
    for (t, kid, key) in [
        ("clinic-a", "k1", K1),
        ("clinic-b", "k0", K0),
        ("clinic-c", "k1", K1),
        ("clinic-d", "k1", K1),
        ("clinic-e", "k1", K1),
    ] {
        TenantStore::new(env.pool.clone(), ring(&[(kid, key)], None))
            .put(&tenant(t), Channel::Email, &sendgrid(SECRET, true), "t")
            .await
            .unwrap();
    }
    // clinic-c: its API key's ciphertext altered (its password is intact).
    let mut c = chain(&env, "clinic-c").await;
    let (sealed, ciphertext) = c[0]["api_key"].as_str().unwrap().rsplit_once(':').unwrap();
    let other = if ciphertext.starts_with('A') {
        "B"
    } else {
        "A"
    };
    c[0]["api_key"] = Value::String(format!("{sealed}:{other}{}", &ciphertext[1..]));
    set_chain(&env, "clinic-c", &c).await;
    // clinic-e: clinic-a's values copied over (bound to another tenant).
    let a = chain(&env, "clinic-a").await;
    set_chain(&env, "clinic-e", &a).await;

    let mut vars = env.env_vars();
    vars.insert(
        "OUTREACH_ENCRYPTION_KEYS".into(),
        format!("k1:{K1},k2:{K2}"),
    );
    let out = cli_output(&vars, &["keys", "rotate"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let all = format!("{stdout}{stderr}");

    assert_eq!(out.status.code(), Some(1), "{all}");
    // Every row was gone through, and every readable value moved to k2.
    assert!(
        stdout.contains("[3/5] clinic-c email: 1 value(s) re-encrypted, 1 could not be decrypted"),
        "{all}"
    );
    assert!(
        stdout.contains("done: 5 row(s), 5 value(s) re-encrypted, 5 could not be decrypted"),
        "{all}"
    );
    let on_k2 = TenantStore::new(env.pool.clone(), ring(&[("k2", K2)], None));
    for t in ["clinic-a", "clinic-d"] {
        let row = on_k2
            .get(&tenant(t), Channel::Email)
            .await
            .unwrap()
            .unwrap();
        let opened = on_k2.open_chain(&row).unwrap();
        assert_eq!(opened[0].secret("api_key").unwrap().expose_secret(), SECRET);
        assert_eq!(
            opened[1].secret("password").unwrap().expose_secret(),
            SMTP_PASSWORD
        );
    }
    let c = chain(&env, "clinic-c").await;
    assert_eq!(
        (kid(&c[0]["api_key"]), kid(&c[1]["password"])),
        ("k1", "k2")
    );
    let b = chain(&env, "clinic-b").await;
    assert_eq!(
        (kid(&b[0]["api_key"]), kid(&b[1]["password"])),
        ("k0", "k0")
    );

    // Each failure named by tenant, channel and field, with its cause.
    let names = |t: &str, field: &str, cause: &str| {
        stderr
            .lines()
            .any(|l| l.contains(t) && l.contains(field) && l.contains(cause))
    };
    for (t, field, cause) in [
        ("clinic-b", "email.chain.0.api_key", "not configured"),
        ("clinic-b", "email.chain.1.password", "not configured"),
        ("clinic-c", "email.chain.0.api_key", "cannot decrypt"),
        ("clinic-e", "email.chain.0.api_key", "cannot decrypt"),
        ("clinic-e", "email.chain.1.password", "cannot decrypt"),
    ] {
        assert!(names(t, field, cause), "{t} {field} not listed:\n{all}");
    }
    assert!(!names("clinic-c", "email.chain.1.password", ""), "{all}");
    assert!(
        stderr.contains("5 value(s) could not be re-encrypted"),
        "{all}"
    );
    for secret in [SECRET, SMTP_PASSWORD, K0, K1, K2] {
        assert!(!all.contains(secret), "output shows a secret:\n{all}");
    }
    env.cleanup().await;
}

#[tokio::test]
async fn a_tenant_encrypted_with_an_unknown_key_fails_alone_while_another_tenant_resolves() {
    let env = TestEnv::new().await;
    let with_k1 = TenantStore::new(env.pool.clone(), ring(&[("k1", K1)], None));
    with_k1
        .put(
            &tenant("clinic-old"),
            Channel::Email,
            &sendgrid(SECRET, false),
            "t",
        )
        .await
        .unwrap();
    let with_k2 = TenantStore::new(env.pool.clone(), ring(&[("k2", K2)], None));
    with_k2
        .put(
            &tenant("clinic-new"),
            Channel::Email,
            &sendgrid(SECRET, true),
            "t",
        )
        .await
        .unwrap();
    let directory = Directory::new(&env.settings, &support::context())
        .unwrap()
        .with_store(with_k2);

    let old = directory
        .resolve(&tenant("clinic-old"), Channel::Email)
        .await
        .unwrap();
    let ok = directory
        .resolve(&tenant("clinic-new"), Channel::Email)
        .await
        .unwrap();

    // Neither of its entries can be opened: no usable step, both listed as
    // unusable (so its jobs fail with a config error that says which).
    assert!(old.steps.is_empty());
    let unusable: Vec<_> = old
        .unusable
        .iter()
        .map(|u| (u.step, u.kind, u.error.kind))
        .collect();
    assert_eq!(
        unusable,
        [
            (0, ProviderKind::Sendgrid, ErrorKind::Config),
            (1, ProviderKind::Smtp, ErrorKind::Config)
        ]
    );
    // The error says what to do: configure the key the values were sealed with.
    let said = &old.unusable[0].error.message;
    assert!(
        said.contains("add key \"k1\" to crypto.keys (or OUTREACH_ENCRYPTION_KEYS)"),
        "{said}"
    );
    let kinds: Vec<_> = ok.steps.iter().map(|s| (s.kind, s.is_system)).collect();
    assert_eq!(
        kinds,
        [
            (ProviderKind::Sendgrid, false),
            (ProviderKind::Smtp, false),
            (ProviderKind::Sandbox, true)
        ]
    );
    env.cleanup().await;
}

#[tokio::test]
async fn a_tenant_without_config_resolves_to_the_system_default_and_a_disabled_channel_to_disabled()
{
    let env = TestEnv::new().await;
    let store = TenantStore::new(env.pool.clone(), ring(&[("k1", K1)], None));
    let off = ChannelConfig::from_json(json!({"enabled": false}), Channel::Sms).unwrap();
    store
        .put(&tenant("clinic-off"), Channel::Sms, &off, "t")
        .await
        .unwrap();
    let directory = Directory::new(&env.settings, &support::context())
        .unwrap()
        .with_store(store);

    let none = directory
        .resolve(&tenant("clinic-none"), Channel::Sms)
        .await
        .unwrap();
    let disabled = directory
        .resolve(&tenant("clinic-off"), Channel::Sms)
        .await
        .unwrap();

    assert!(none.enabled && none.steps.len() == 1 && none.steps[0].is_system);
    assert!(!disabled.enabled);
    env.cleanup().await;
}
