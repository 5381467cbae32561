//! The webhook receiver: `POST /webhooks/{provider}/{tenant}` (sendgrid,
//! twilio, meta, vonage), Meta's subscription `GET` and Vonage's `GET`
//! receipts. Each request is verified
//! with the tenant's own accounts of that provider (and the system default
//! account of that provider, for its system-default sends) before its body
//! is parsed. Refused: 401 (403 when the tenant has no such account; 415
//! for a Content-Type the provider does not send, 413 / 408 for a body too
//! large or too slow, 400 for a verified body not in the provider's shape),
//! counted by provider and reason, logged without body or secrets, at most
//! a line a second per reason ([`super::throttle`]). Slow clients and the
//! connection limit: [`super::listen`].
//! Accepted: every event applied, then 200; a database or broker failure
//! answers 503 so the provider retries.
//!
//! `POST /webhooks/{provider}` (no tenant) is for the system default
//! accounts, which many tenants share while SendGrid, SES, Meta and Vonage
//! take one webhook URL per account: verified with the system accounts only,
//! each event is then applied to the tenant whose row holds its provider
//! message id. Inbound messages (STOP) there cannot be told apart by tenant
//! and are counted and logged, not applied.

use super::apply::{Publisher, Recorder};
use super::parse::{self, Parsed};
use super::throttle::Throttle;
use super::verify::{self, Refusal};
use crate::enum_names::parse_name;
use crate::job::{Channel, TenantId};
use crate::metrics as m;
use crate::provider::{ProviderKind, ProviderSettings};
use crate::settings::Settings;
use crate::tenant::TenantStore;
use axum::Router;
use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use http_body_util::BodyExt;
use secrecy::{ExposeSecret, SecretString};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use subtle::ConstantTimeEq;

/// What the receiver needs.
#[derive(Clone)]
pub struct WebhookState {
    pub store: TenantStore,
    /// System default accounts (shared by every tenant).
    pub system: Arc<Vec<ProviderSettings>>,
    pub recorder: Arc<Recorder>,
    /// `providers.webhook_base_url`, without a trailing `/`.
    pub base_url: Option<String>,
    pub max_age_secs: u64,
    pub max_body_bytes: usize,
    /// A body must have arrived, in total, within this.
    pub body_read_timeout: Duration,
    /// SES notifications' SNS signatures.
    pub sns: Arc<super::sns::SnsVerifier>,
    /// Log lines for refusals, at most one a second per reason.
    pub refusals: Arc<Throttle>,
}

impl WebhookState {
    pub fn new(settings: &Settings, store: TenantStore, events_exchange: String) -> Self {
        let system = Channel::ALL
            .iter()
            .filter_map(|c| settings.system_default(*c).cloned())
            .collect();
        Self {
            recorder: Arc::new(Recorder {
                pool: store.pool().clone(),
                publisher: Publisher::new(settings.amqp.url.clone(), events_exchange),
            }),
            store,
            system: Arc::new(system),
            base_url: settings
                .providers
                .webhook_base_url
                .as_ref()
                .map(|u| u.as_str().trim_end_matches('/').to_owned()),
            max_age_secs: settings.webhooks.max_age_secs,
            max_body_bytes: settings.webhooks.max_body_bytes,
            body_read_timeout: settings.webhooks.body_read_timeout(),
            refusals: Arc::new(Throttle::new(Duration::from_secs(1))),
            sns: Arc::new(super::sns::SnsVerifier::new(
                settings.webhooks.sns_cert_origins.clone(),
                settings.provider_timeout(),
                settings.network_policy().unwrap_or_default(),
            )),
        }
    }

    /// The tenant's accounts of `kind`, then the system default's (only the
    /// latter for [`Addressee::System`]). Entries that cannot be opened are
    /// left out (the worker reports those).
    async fn accounts(
        &self,
        who: &Addressee,
        kind: ProviderKind,
    ) -> Result<Vec<ProviderSettings>, crate::tenant::StoreError> {
        let mut out = vec![];
        let Addressee::Tenant(tenant) = who else {
            out.extend(self.system.iter().filter(|s| s.kind() == kind).cloned());
            return Ok(out);
        };
        for cfg in self.store.get_tenant(tenant).await? {
            match self.store.open_chain(&cfg) {
                Ok(chain) => out.extend(chain.into_iter().filter(|s| s.kind() == kind)),
                Err(e) => {
                    tracing::warn!(tenant = %tenant, field = %e.field(), "webhook: a stored chain cannot be opened")
                }
            }
        }
        out.extend(self.system.iter().filter(|s| s.kind() == kind).cloned());
        Ok(out)
    }
}

pub fn router(state: WebhookState) -> Router {
    Router::new()
        .route(
            "/webhooks/{provider}/{tenant}",
            post(receive).get(subscribe),
        )
        .route(
            "/webhooks/{provider}",
            post(receive_system).get(subscribe_system),
        )
        .with_state(state)
}

/// Bind `webhooks.bind` and serve until `stop`; `None` when the receiver is off.
pub async fn spawn(
    settings: &Settings,
    store: TenantStore,
    events_exchange: String,
    stop: tokio_util::sync::CancellationToken,
) -> anyhow::Result<Option<tokio::task::JoinHandle<std::io::Result<()>>>> {
    use anyhow::Context;
    let bind = &settings.webhooks.bind;
    if bind.is_empty() {
        if settings.providers.webhook_base_url.is_some() {
            tracing::warn!(
                "providers.webhook_base_url is set but webhooks.bind is empty: this process receives no provider webhooks"
            );
        }
        return Ok(None);
    }
    let listener = tokio::net::TcpListener::bind(bind)
        .await
        .with_context(|| format!("cannot listen on webhooks.bind = {bind}"))?;
    tracing::info!(addr = %listener.local_addr()?, "webhooks listening (/webhooks/{{provider}}/{{tenant}})");
    let state = WebhookState::new(settings, store, events_exchange);
    let refusals = state.refusals.clone();
    let limits = super::listen::Limits {
        header_read_timeout: settings.webhooks.header_read_timeout(),
        max_connections: settings.webhooks.max_connections,
    };
    Ok(Some(tokio::spawn(super::listen::serve(
        listener,
        router(state),
        limits,
        refusals,
        stop,
    ))))
}

fn refuse(s: &WebhookState, provider: &str, tenant: &str, r: Refusal) -> Response {
    super::throttle::refused(&s.refusals, provider, tenant, r);
    let mut answer = (r.status(), r.to_string()).into_response();
    if matches!(
        r,
        Refusal::ContentType | Refusal::TooLarge | Refusal::BodyTimeout | Refusal::Unreadable
    ) {
        // The body was not read to its end: the connection cannot carry another request.
        answer
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    answer
}

/// The body, at most `max_body_bytes` of it, arrived within `body_read_timeout`
/// in total (a deadline, not an idle timer: a body dripped a byte at a time
/// is cut off too).
async fn read_body(s: &WebhookState, body: Body) -> Result<Bytes, Refusal> {
    if body.size_hint().lower() > s.max_body_bytes as u64 {
        return Err(Refusal::TooLarge);
    }
    let limited = http_body_util::Limited::new(body, s.max_body_bytes);
    match tokio::time::timeout(s.body_read_timeout, limited.collect()).await {
        Err(_) => Err(Refusal::BodyTimeout),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(Refusal::TooLarge),
        Ok(Err(_)) => Err(Refusal::Unreadable),
    }
}

/// The providers whose webhooks this receiver takes. [`Hook::of`] is an
/// exhaustive match over [`ProviderKind`], so a new provider does not
/// compile until it says whether it posts webhooks; one that does gets a
/// variant here, and each match over `Hook` below then asks how its
/// requests are checked and answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hook {
    Sendgrid,
    Twilio,
    Meta,
    Vonage,
    Ses,
}

impl Hook {
    fn of(kind: ProviderKind) -> Option<Hook> {
        match kind {
            ProviderKind::Sendgrid => Some(Hook::Sendgrid),
            ProviderKind::Twilio => Some(Hook::Twilio),
            ProviderKind::Meta => Some(Hook::Meta),
            ProviderKind::Vonage => Some(Hook::Vonage),
            ProviderKind::Ses => Some(Hook::Ses),
            ProviderKind::Sandbox | ProviderKind::Smtp => None,
        }
    }

    /// The `{provider}` of a webhook path.
    fn named(provider: &str) -> Option<Hook> {
        parse_name::<ProviderKind>(provider).ok().and_then(Hook::of)
    }

    fn kind(self) -> ProviderKind {
        match self {
            Hook::Sendgrid => ProviderKind::Sendgrid,
            Hook::Twilio => ProviderKind::Twilio,
            Hook::Meta => ProviderKind::Meta,
            Hook::Vonage => ProviderKind::Vonage,
            Hook::Ses => ProviderKind::Ses,
        }
    }
}

/// Whether the request's Content-Type is the one `hook` posts (media type
/// only, any case, parameters such as `charset` ignored). Vonage posts a
/// form or JSON (a dashboard choice) and SNS `text/plain`: not checked.
fn content_type_ok(hook: Hook, h: &HeaderMap) -> bool {
    let wanted = match hook {
        Hook::Twilio => "application/x-www-form-urlencoded",
        Hook::Sendgrid | Hook::Meta => "application/json",
        Hook::Vonage | Hook::Ses => return true,
    };
    header_str(h, "content-type")
        .and_then(|c| c.split(';').next())
        .is_some_and(|media| media.trim().eq_ignore_ascii_case(wanted))
}

fn unavailable(provider: &str, e: &dyn std::fmt::Display) -> Response {
    tracing::error!(provider, error = %e, "webhook could not be recorded; the provider will retry");
    StatusCode::SERVICE_UNAVAILABLE.into_response()
}

fn header_str<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

/// Whom a webhook request is for.
#[derive(Debug, Clone)]
enum Addressee {
    /// `/webhooks/{provider}/{tenant}`: the tenant's accounts and the system's.
    Tenant(TenantId),
    /// `/webhooks/{provider}`: the system default accounts only.
    System,
}

impl Addressee {
    fn name(&self) -> &str {
        match self {
            Addressee::Tenant(t) => t.as_str(),
            Addressee::System => "(system accounts)",
        }
    }
}

async fn receive(
    State(s): State<WebhookState>,
    Path((provider, tenant)): Path<(String, String)>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let Ok(t) = TenantId::parse(&tenant) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    handle(s, Addressee::Tenant(t), provider, uri, headers, body).await
}

async fn receive_system(
    State(s): State<WebhookState>,
    Path(provider): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    handle(s, Addressee::System, provider, uri, headers, body).await
}

async fn handle(
    s: WebhookState,
    t: Addressee,
    provider: String,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let Some(hook) = Hook::named(&provider) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    if !content_type_ok(hook, &headers) {
        return refuse(&s, &provider, t.name(), Refusal::ContentType);
    }
    let body = match read_body(&s, body).await {
        Ok(b) => b,
        Err(r) => return refuse(&s, &provider, t.name(), r),
    };
    let accounts = match s.accounts(&t, hook.kind()).await {
        Ok(a) => a,
        Err(e) => return unavailable(&provider, &e),
    };
    let verified = match hook {
        Hook::Sendgrid => check_sendgrid(&s, &accounts, &headers, &body),
        Hook::Twilio => check_twilio(&s, &accounts, &uri, &headers, &body),
        Hook::Vonage => check_vonage(&s, &accounts, &vonage_params(&headers, &body)),
        Hook::Ses => match check_ses(&s, &accounts, &body).await {
            // A subscription confirmed (or an unsubscribe noted): nothing to apply.
            Ok(None) => return StatusCode::OK.into_response(),
            Ok(Some(parsed)) => Ok(parsed),
            Err(r) => Err(r),
        },
        Hook::Meta => check_meta(&accounts, &headers, &body),
    };
    finish(&s, &t, &provider, hook, verified).await
}

/// After the check: refuse, or apply what the body says and answer 200.
async fn finish(
    s: &WebhookState,
    who: &Addressee,
    provider: &str,
    hook: Hook,
    verified: Checked,
) -> Response {
    let tenant = who.name();
    let parsed = match verified {
        Err(r) => return refuse(s, provider, tenant, r),
        Ok(Err(parse::Malformed { .. })) => return refuse(s, provider, tenant, Refusal::Malformed),
        Ok(Ok(parsed)) => parsed,
    };
    for ev in &parsed.events {
        let owner = match who {
            Addressee::Tenant(t) => Some(t.clone()),
            Addressee::System => match s.recorder.owner_of(ev).await {
                Ok(owner) => owner,
                Err(e) => return unavailable(provider, &e),
            },
        };
        let Some(owner) = owner else {
            // No row holds its message id: accepted (the provider would
            // retry), counted like any unknown message.
            metrics::counter!(m::WEBHOOK_UNKNOWN_MESSAGES, "provider" => provider.to_owned())
                .increment(1);
            continue;
        };
        if let Err(e) = s.recorder.event(&owner, ev).await {
            return unavailable(provider, &e);
        }
    }
    for msg in &parsed.inbound {
        let Addressee::Tenant(t) = who else {
            metrics::counter!(m::WEBHOOK_UNKNOWN_MESSAGES, "provider" => provider.to_owned())
                .increment(1);
            tracing::warn!(
                provider,
                "inbound message on a system account's number: not attributed to a tenant, not applied"
            );
            continue;
        };
        if let Err(e) = s.recorder.inbound(t, provider, msg).await {
            return unavailable(provider, &e);
        }
    }
    match hook {
        // An empty TwiML answer: no auto-reply to an inbound message.
        Hook::Twilio => (
            [(header::CONTENT_TYPE, "text/xml")],
            "<Response></Response>",
        )
            .into_response(),
        Hook::Sendgrid | Hook::Meta | Hook::Vonage | Hook::Ses => StatusCode::OK.into_response(),
    }
}

type Checked = Result<Result<Parsed, parse::Malformed>, Refusal>;

fn check_sendgrid(
    s: &WebhookState,
    accounts: &[ProviderSettings],
    h: &HeaderMap,
    body: &[u8],
) -> Checked {
    let keys: Vec<_> = accounts
        .iter()
        .filter_map(|a| match a {
            ProviderSettings::Sendgrid(g) => g.webhook_verification_key.as_deref(),
            _ => None,
        })
        .filter_map(|k| verify::sendgrid_key(k).ok())
        .collect();
    if keys.is_empty() {
        return Err(Refusal::NoAccount);
    }
    let (Some(sig), Some(ts)) = (
        header_str(h, "x-twilio-email-event-webhook-signature"),
        header_str(h, "x-twilio-email-event-webhook-timestamp"),
    ) else {
        return Err(Refusal::MissingSignature);
    };
    if !keys
        .iter()
        .any(|k| verify::verify_sendgrid(k, ts, body, sig))
    {
        return Err(Refusal::BadSignature);
    }
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    if !verify::fresh(ts, now, s.max_age_secs) {
        return Err(Refusal::Stale);
    }
    Ok(parse::sendgrid(body))
}

fn check_twilio(
    s: &WebhookState,
    accounts: &[ProviderSettings],
    uri: &Uri,
    h: &HeaderMap,
    body: &[u8],
) -> Checked {
    let tokens: Vec<&SecretString> = accounts
        .iter()
        .filter_map(|a| match a {
            ProviderSettings::Twilio(t) => Some(&t.auth_token),
            _ => None,
        })
        .collect();
    if tokens.is_empty() {
        return Err(Refusal::NoAccount);
    }
    let Some(sig) = header_str(h, "x-twilio-signature") else {
        return Err(Refusal::MissingSignature);
    };
    let Some(base) = &s.base_url else {
        return Err(Refusal::NoBaseUrl);
    };
    // The URL Twilio was given (twilio.rs): the public base and this path.
    let url = match uri.query() {
        Some(q) => format!("{base}{}?{q}", uri.path()),
        None => format!("{base}{}", uri.path()),
    };
    let params: Vec<(String, String)> = url::form_urlencoded::parse(body).into_owned().collect();
    if !tokens
        .iter()
        .any(|t| verify::verify_twilio(t, &url, &params, sig))
    {
        return Err(Refusal::BadSignature);
    }
    Ok(parse::twilio(&params))
}

/// An SNS message for SES: the tenant's SES accounts name its topic, its
/// signature verifies; a subscription confirmation is confirmed (`None`).
async fn check_ses(
    s: &WebhookState,
    accounts: &[ProviderSettings],
    body: &[u8],
) -> Result<Option<Result<Parsed, parse::Malformed>>, Refusal> {
    let topics: Vec<&str> = accounts
        .iter()
        .filter_map(|a| match a {
            ProviderSettings::Ses(x) => Some(x.sns_topic_arns.iter().map(String::as_str)),
            _ => None,
        })
        .flatten()
        .collect();
    if topics.is_empty() {
        return Err(Refusal::NoAccount);
    }
    // The envelope must be read to know what was signed; nothing in it is
    // used before the signature verifies.
    let Ok(m) = serde_json::from_slice::<super::sns::SnsMessage>(body) else {
        return Err(Refusal::MissingSignature);
    };
    // The topic first: an envelope for a topic that is not the tenant's
    // makes no certificate fetch, whatever URL it names. The signature then
    // decides whether the topic (and the rest) is what SNS sent.
    if !topics.contains(&m.topic_arn.as_str()) {
        return Err(Refusal::UnknownTopic);
    }
    s.sns.verify(&m).await?;
    match m.kind.as_str() {
        "SubscriptionConfirmation" => {
            s.sns.confirm(&m).await?;
            tracing::info!(topic = %m.topic_arn, "SNS subscription confirmed");
            Ok(None)
        }
        "Notification" => Ok(Some(parse::ses(&m.message, &m.message_id))),
        _ => Ok(None),
    }
}

/// Vonage's parameters: a form or a flat JSON object (dashboard choice).
fn vonage_params(h: &HeaderMap, body: &[u8]) -> Vec<(String, String)> {
    let json = header_str(h, "content-type").is_some_and(|c| c.starts_with("application/json"));
    if !json {
        return url::form_urlencoded::parse(body).into_owned().collect();
    }
    let Ok(serde_json::Value::Object(m)) = serde_json::from_slice(body) else {
        return vec![];
    };
    m.into_iter()
        .map(|(k, v)| match v {
            serde_json::Value::String(s) => (k, s),
            other => (k, other.to_string()),
        })
        .collect()
}

fn check_vonage(
    s: &WebhookState,
    accounts: &[ProviderSettings],
    params: &[(String, String)],
) -> Checked {
    let secrets: Vec<_> = accounts
        .iter()
        .filter_map(|a| match a {
            ProviderSettings::Vonage(v) => {
                v.signature_secret.as_ref().map(|k| (k, v.signature_method))
            }
            _ => None,
        })
        .collect();
    if secrets.is_empty() {
        return Err(Refusal::NoAccount);
    }
    let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let (Some(_), Some(ts)) = (get("sig"), get("timestamp")) else {
        return Err(Refusal::MissingSignature);
    };
    if !secrets
        .iter()
        .any(|(k, m)| verify::verify_vonage(k, *m, params))
    {
        return Err(Refusal::BadSignature);
    }
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    if !verify::fresh(ts, now, s.max_age_secs) {
        return Err(Refusal::Stale);
    }
    Ok(parse::vonage(params))
}

fn check_meta(accounts: &[ProviderSettings], h: &HeaderMap, body: &[u8]) -> Checked {
    let secrets: Vec<&SecretString> = accounts
        .iter()
        .filter_map(|a| match a {
            ProviderSettings::Meta(m) => m.app_secret.as_ref(),
            _ => None,
        })
        .collect();
    if secrets.is_empty() {
        return Err(Refusal::NoAccount);
    }
    let Some(sig) = header_str(h, "x-hub-signature-256") else {
        return Err(Refusal::MissingSignature);
    };
    if !secrets.iter().any(|k| verify::verify_meta(k, body, sig)) {
        return Err(Refusal::BadSignature);
    }
    Ok(parse::meta(body))
}

/// Meta's subscription check: `hub.mode=subscribe`, `hub.verify_token`
/// matching one of the tenant's Meta accounts' `webhook_verify_token`
/// (constant-time), answered with `hub.challenge`.
async fn subscribe(
    State(s): State<WebhookState>,
    Path((provider, tenant)): Path<(String, String)>,
    uri: Uri,
    query: Query<HashMap<String, String>>,
) -> Response {
    let Ok(t) = TenantId::parse(&tenant) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    answer_get(s, Addressee::Tenant(t), provider, uri, query).await
}

async fn subscribe_system(
    State(s): State<WebhookState>,
    Path(provider): Path<String>,
    uri: Uri,
    query: Query<HashMap<String, String>>,
) -> Response {
    answer_get(s, Addressee::System, provider, uri, query).await
}

async fn answer_get(
    s: WebhookState,
    t: Addressee,
    provider: String,
    uri: Uri,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let tenant = t.name().to_owned();
    match Hook::named(&provider) {
        Some(Hook::Vonage) => {
            // Vonage's default: receipts and inbound messages as GET parameters.
            let params: Vec<(String, String)> =
                url::form_urlencoded::parse(uri.query().unwrap_or_default().as_bytes())
                    .into_owned()
                    .collect();
            let verified = match s.accounts(&t, ProviderKind::Vonage).await {
                Ok(a) => check_vonage(&s, &a, &params),
                Err(e) => return unavailable(&provider, &e),
            };
            return finish(&s, &t, &provider, Hook::Vonage, verified).await;
        }
        // Meta's subscription check, below.
        Some(Hook::Meta) => {}
        Some(Hook::Sendgrid | Hook::Twilio | Hook::Ses) | None => {
            return StatusCode::METHOD_NOT_ALLOWED.into_response();
        }
    }
    let accounts = match s.accounts(&t, ProviderKind::Meta).await {
        Ok(a) => a,
        Err(e) => return unavailable(&provider, &e),
    };
    let tokens: Vec<&SecretString> = accounts
        .iter()
        .filter_map(|a| match a {
            ProviderSettings::Meta(m) => m.webhook_verify_token.as_ref(),
            _ => None,
        })
        .collect();
    if tokens.is_empty() {
        return refuse(&s, &provider, &tenant, Refusal::NoAccount);
    }
    let presented = q
        .get("hub.verify_token")
        .map(String::as_str)
        .unwrap_or_default();
    let matches = tokens
        .iter()
        .any(|t| bool::from(t.expose_secret().as_bytes().ct_eq(presented.as_bytes())));
    match (
        q.get("hub.mode").map(String::as_str),
        q.get("hub.challenge"),
    ) {
        (Some("subscribe"), Some(challenge)) if matches => challenge.clone().into_response(),
        _ => refuse(&s, &provider, &tenant, Refusal::BadSignature),
    }
}
