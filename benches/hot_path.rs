//! Criterion micro-benchmarks of the pieces every delivery goes through:
//! job decode + validate, chain lookup, credential decrypt, event encode and
//! provider error classification. No broker, database or network: each bench
//! calls the library's public API on realistic inputs.
//!
//! `cargo bench --bench hot_path`; under `cargo test --all-targets` each
//! bench runs once as a smoke test. Figures: BENCHMARKS.md.

use criterion::{Criterion, criterion_group, criterion_main};
use outreach::crypto::{FieldContext, KeyRing};
use outreach::delivery_log::{Attempt, DeliveryStatus, LogRow};
use outreach::events::DeliveryEvent;
use outreach::job::{Channel, Job, TenantId};
use outreach::provider::{self, ErrorKind, ProviderKind, ProviderSettings};
use outreach::settings::Settings;
use outreach::tenant::{Directory, ResolvedChannel, TenantStore, sealed};
use outreach::{app, db, metrics};
use reqwest::header::{HeaderMap, HeaderValue};
use serde_json::{Value, json};
use sqlx::types::Json;
use std::hint::black_box;
use std::sync::Arc;
use time::OffsetDateTime;

const TENANT: &str = "clinic-42";

fn job_decode(c: &mut Criterion) {
    // The README's example job.
    let email = serde_json::to_vec(&json!({
        "version": 1,
        "job_id": "appt-7781-reminder-1",
        "tenant_id": TENANT,
        "channel": "email",
        "recipient": "patient@example.com",
        "content": {
            "subject": "Your appointment",
            "text": "See you Tuesday at 10:00.",
            "html": "<p>See you <b>Tuesday</b> at 10:00.</p>",
        },
        "metadata": {"appointment_id": "7781"},
        "not_after": "2026-11-24T09:00:00Z",
    }))
    .unwrap();
    let sms = serde_json::to_vec(&json!({
        "version": 1,
        "job_id": "appt-7781-reminder-sms-1",
        "tenant_id": TENANT,
        "channel": "sms",
        "recipient": "+14155550100",
        "content": {"text": "Clinic 42: reminder of your appointment on Tue 24 Nov at 10:00. Reply C to confirm, R to reschedule."},
        "metadata": {"appointment_id": "7781"},
    }))
    .unwrap();
    let mut g = c.benchmark_group("job_decode");
    g.bench_function("email", |b| {
        b.iter(|| Job::decode(black_box(&email)).unwrap())
    });
    g.bench_function("sms", |b| b.iter(|| Job::decode(black_box(&sms)).unwrap()));
    g.finish();
}

fn key_ring() -> KeyRing {
    // Two keys, as during a rotation; values are sealed with the active one.
    KeyRing::new(
        &[
            ("k2025a".into(), "11".repeat(32).into()),
            ("k2026a".into(), "22".repeat(32).into()),
        ],
        None,
    )
    .unwrap()
}

fn sendgrid_entry() -> ProviderSettings {
    serde_json::from_value(json!({
        "provider": "sendgrid",
        "api_key": "SG.aBcDeFgHiJkLmNoPqRsTuV.wXyZ0123456789aBcDeFgHiJkLmNoPqRsTuVwXyZ01",
        "from_email": "reminders@clinic42.example",
        "from_name": "Clinic 42",
        "categories": ["reminders"],
    }))
    .unwrap()
}

fn config_lookup(c: &mut Criterion) {
    app::install_crypto();
    // Workers count hits and misses; measure with the real recorder installed.
    let _ = metrics::install();
    let mut settings = Settings::load(None).unwrap();
    settings.sandbox_where_no_default();
    let ctx = app::provider_context(&settings);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let tenant = TenantId::parse(TENANT).unwrap();

    // No tenant store: every tenant gets the system default chain.
    let system = Directory::new(&settings, &ctx).unwrap();

    // With a store: a cached chain is served without touching the database,
    // so a lazy pool that never connects will do. The cached chain is what a
    // load builds: the tenant's SendGrid account, then the system default.
    let cached = rt.block_on(async {
        let keys = Arc::new(key_ring());
        let store = TenantStore::new(db::pool(&settings.database).unwrap(), keys.clone());
        let dir = Directory::new(&settings, &ctx).unwrap().with_store(store);
        let stored = sealed::seal(&keys, &tenant, Channel::Email, 0, &sendgrid_entry()).unwrap();
        let opened = sealed::open(&keys, &tenant, Channel::Email, 0, &stored).unwrap();
        let p = provider::build(&opened, &ctx, Some(&tenant)).unwrap();
        // Built from the system chain by field, so fields added to the chain
        // types later keep their system values instead of breaking the bench.
        let mut chain = ResolvedChannel::clone(&dir.system_chain(Channel::Email));
        let mut first = chain.steps[0].clone();
        first.kind = p.kind();
        first.provider = p;
        first.is_system = false;
        first.account = format!("tenant:{tenant}:email:0").into();
        chain.steps[0].step = 1;
        chain.steps.insert(0, first);
        dir.prime_cache(&tenant, Channel::Email, Arc::new(chain))
            .await;
        dir
    });
    let hit = rt
        .block_on(cached.resolve(&tenant, Channel::Email))
        .unwrap();
    assert_eq!(
        hit.steps[0].kind,
        ProviderKind::Sendgrid,
        "served from the cache"
    );

    let mut g = c.benchmark_group("config_lookup");
    g.bench_function("system_default", |b| {
        b.to_async(&rt)
            .iter(|| system.resolve(black_box(&tenant), Channel::Email))
    });
    g.bench_function("cache_hit", |b| {
        b.to_async(&rt)
            .iter(|| cached.resolve(black_box(&tenant), Channel::Email))
    });
    g.finish();
}

fn credential_decrypt(c: &mut Criterion) {
    let keys = key_ring();
    let tenant = TenantId::parse(TENANT).unwrap();
    let stored = sealed::seal(&keys, &tenant, Channel::Email, 0, &sendgrid_entry()).unwrap();
    let api_key = stored["api_key"].as_str().unwrap().to_owned();
    let path = sealed::field_path(Channel::Email, 0, "api_key");
    let mut g = c.benchmark_group("credential_decrypt");
    // One field: AES-256-GCM open of a SendGrid API key bound to its place.
    g.bench_function("field", |b| {
        b.iter(|| {
            keys.decrypt(black_box(&api_key), &FieldContext::new(TENANT, &path))
                .unwrap()
        })
    });
    // A whole stored chain entry, as a cache miss opens it: decrypt + parse.
    g.bench_function("chain_entry", |b| {
        b.iter(|| sealed::open(&keys, &tenant, Channel::Email, 0, black_box(&stored)).unwrap())
    });
    g.finish();
}

fn log_row(status: DeliveryStatus, attempts: Vec<Attempt>) -> LogRow {
    let now = OffsetDateTime::now_utc();
    let last = attempts.last().cloned().unwrap();
    let mut metadata = serde_json::Map::new();
    metadata.insert("appointment_id".into(), json!("7781"));
    LogRow {
        job_id: "appt-7781-reminder-1".into(),
        tenant_id: Some(TENANT.into()),
        channel: Some(Channel::Email),
        status,
        provider: Some(last.provider.as_str().into()),
        provider_message_id: (status == DeliveryStatus::Sent)
            .then(|| "W3Ta3B6JTq2Wx3qUJXIU-Q.filterdrecv-6f9b5c7d8-abcde-1-6743F2A1-2.0".into()),
        chain_step: Some(last.step as i16),
        fallback_used: last.step > 0,
        attempts: 1,
        error_kind: last.kind,
        error_code: last.code.clone(),
        error_message: last.kind.map(|_| {
            "sendgrid: personalizations.0.to.0.email: Does not contain a valid address.".into()
        }),
        attempt_log: Json(attempts),
        retry_at: None,
        metadata: Some(Json(metadata)),
        created_at: now,
        updated_at: now,
        sent_at: (status == DeliveryStatus::Sent).then_some(now),
    }
}

fn event_encode(c: &mut Criterion) {
    let at = OffsetDateTime::now_utc();
    let attempt = |provider, step, kind: Option<ErrorKind>, code: Option<&str>| Attempt {
        provider,
        step,
        kind,
        code: code.map(str::to_owned),
        at,
        skipped: None,
    };
    let sent = log_row(
        DeliveryStatus::Sent,
        vec![attempt(ProviderKind::Sendgrid, 0, None, None)],
    );
    // A fallback that ended in a recipient error: two attempts and an error.
    let failed = log_row(
        DeliveryStatus::Failed,
        vec![
            attempt(
                ProviderKind::Sendgrid,
                0,
                Some(ErrorKind::Provider),
                Some("401"),
            ),
            attempt(
                ProviderKind::Ses,
                1,
                Some(ErrorKind::Recipient),
                Some("400"),
            ),
        ],
    );
    let mut g = c.benchmark_group("event_encode");
    for (name, row) in [("sent", &sent), ("failed_after_fallback", &failed)] {
        g.bench_function(name, |b| {
            b.iter(|| {
                let event = DeliveryEvent::from_row(black_box(row), false);
                serde_json::to_vec(&event).unwrap()
            })
        });
    }
    g.finish();
}

/// A provider's error answer and the kind its classify function must give.
struct Answer {
    name: &'static str,
    classify: fn(u16, &HeaderMap, &[u8]) -> provider::ProviderError,
    status: u16,
    headers: HeaderMap,
    body: Value,
    kind: ErrorKind,
}

fn error_classify(c: &mut Criterion) {
    let headers = |pairs: &[(&'static str, &'static str)]| {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    };
    // Answers as the providers document them (see each classify's tests).
    let answers = [
        Answer {
            name: "sendgrid_400_recipient",
            classify: provider::sendgrid::classify,
            status: 400,
            headers: HeaderMap::new(),
            body: json!({"errors": [{"message": "Does not contain a valid address.",
                "field": "personalizations.0.to.0.email", "help": null}]}),
            kind: ErrorKind::Recipient,
        },
        Answer {
            name: "sendgrid_429_retry_after",
            classify: provider::sendgrid::classify,
            status: 429,
            headers: headers(&[("retry-after", "2")]),
            body: json!({"errors": [{"message": "too many requests", "field": null, "help": null}]}),
            kind: ErrorKind::RateLimited,
        },
        Answer {
            name: "ses_400_message_rejected",
            classify: provider::ses::classify,
            status: 400,
            headers: headers(&[(
                "x-amzn-errortype",
                "MessageRejected:http://internal.amazon.com/coral/com.amazon.aws.ses/",
            )]),
            body: json!({"message": "Email address is not verified. The following identities \
                failed the check in region EU-WEST-1: reminders@clinic42.example"}),
            // Needs a person (verify the sender), not time.
            kind: ErrorKind::Config,
        },
        Answer {
            name: "twilio_400_21211",
            classify: provider::twilio::classify,
            status: 400,
            headers: HeaderMap::new(),
            body: json!({"code": 21211, "message": "The 'To' number +1555 is not a valid phone number.",
                "more_info": "https://www.twilio.com/docs/errors/21211", "status": 400}),
            kind: ErrorKind::Recipient,
        },
        Answer {
            name: "meta_400_131047",
            classify: provider::meta::classify,
            status: 400,
            headers: HeaderMap::new(),
            body: json!({"error": {"message": "(#131047) Re-engagement message",
                "type": "OAuthException", "code": 131047,
                "error_data": {"messaging_product": "whatsapp", "details": "Message failed to send \
                    because more than 24 hours have passed since the customer last replied to this number."},
                "fbtrace_id": "AXsgnV2Cm3ZMGF3dF_cfYIn"}}),
            kind: ErrorKind::Recipient,
        },
        Answer {
            name: "vonage_200_status_1",
            classify: provider::vonage::classify,
            status: 200,
            headers: HeaderMap::new(),
            body: json!({"message-count": "1", "messages": [{"to": "447700900000", "status": "1",
                "error-text": "Throughput Rate Exceeded - please wait [ 1000 ] and retry"}]}),
            kind: ErrorKind::RateLimited,
        },
    ];
    let mut g = c.benchmark_group("error_classify");
    for a in &answers {
        let body = serde_json::to_vec(&a.body).unwrap();
        assert_eq!(
            (a.classify)(a.status, &a.headers, &body).kind,
            a.kind,
            "{}",
            a.name
        );
        g.bench_function(a.name, |b| {
            b.iter(|| (a.classify)(black_box(a.status), &a.headers, black_box(&body)))
        });
    }
    g.finish();
}

criterion_group!(
    benches,
    job_decode,
    config_lookup,
    credential_decrypt,
    event_encode,
    error_classify
);
criterion_main!(benches);
