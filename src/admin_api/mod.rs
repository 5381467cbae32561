//! Admin HTTP API (`/admin/v1`): tenants manage their messaging config.
//!
//! Bearer tokens are configured as SHA-256 digests only; operator tokens may
//! manage every tenant and every field, tenant tokens only their own tenant
//! and only what [`TenantPolicy`] lets a tenant set. Answers never contain a
//! secret: configs are shown masked, errors name fields, never values.
//! Bounded: request bodies (`admin.max_body_bytes`, 413 above), requests per
//! token per minute (`admin.requests_per_minute`, 429 with Retry-After),
//! chain length (`tenant_config.max_chain_len`, 422).

use crate::job::{Channel, Content, Job, JobId, TenantId};
use crate::pipeline::{QuickRetry, chain};
use crate::provider::ErrorKind;
use crate::settings::{AdminSettings, Settings};
mod suppressions;

use crate::tenant::policy::TenantPolicy;
use crate::tenant::{ChannelConfig, Directory, StoreError, TenantStore, view};
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use std::num::NonZeroU32;
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// What the admin routes need.
#[derive(Clone)]
pub struct AdminState {
    pub store: TenantStore,
    pub directory: Arc<Directory>,
    pub auth: Arc<Tokens>,
    pub quick_retry: QuickRetry,
    /// What tenant-scoped tokens may set.
    pub policy: Arc<TenantPolicy>,
    /// Requests per token per minute; `None`: unlimited.
    pub limiter: Option<Arc<DefaultKeyedRateLimiter<String>>>,
    /// Largest request body, bytes.
    pub max_body_bytes: usize,
}

impl AdminState {
    /// The admin API of a worker configured by `settings`.
    pub fn new(
        store: TenantStore,
        directory: Arc<Directory>,
        quick_retry: QuickRetry,
        settings: &Settings,
    ) -> Self {
        Self {
            store,
            directory,
            auth: Arc::new(Tokens::new(&settings.admin)),
            quick_retry,
            policy: Arc::new(TenantPolicy::from_settings(&settings.providers)),
            limiter: per_minute(settings.admin.requests_per_minute),
            max_body_bytes: settings.admin.max_body_bytes,
        }
    }
}

/// A keyed limiter of `n` requests per minute (bursts up to `n`); none for 0.
pub fn per_minute(n: u32) -> Option<Arc<DefaultKeyedRateLimiter<String>>> {
    let n = NonZeroU32::new(n)?;
    Some(Arc::new(governor::RateLimiter::keyed(
        Quota::per_minute(n).allow_burst(n),
    )))
}

/// The configured token digests.
pub struct Tokens {
    operators: Vec<([u8; 32], String)>,
    tenants: Vec<([u8; 32], String, String)>,
}

/// Who a token belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    Operator { name: String },
    Tenant { tenant: String, name: String },
}

impl Principal {
    /// The audit actor (`api:<name>`) and the rate-limit key.
    pub fn actor(&self) -> String {
        match self {
            Principal::Operator { name } | Principal::Tenant { name, .. } => format!("api:{name}"),
        }
    }
}

impl Tokens {
    /// From settings (digests already validated as 64 hex characters).
    pub fn new(s: &AdminSettings) -> Self {
        let digest = |h: &str| {
            let mut out = [0u8; 32];
            let _ = hex::decode_to_slice(h, &mut out);
            out
        };
        Self {
            operators: s
                .operator_token_sha256
                .iter()
                .map(|t| (digest(t.sha256()), t.name()))
                .collect(),
            tenants: s
                .tenant_tokens
                .iter()
                .map(|t| (digest(&t.sha256), t.tenant.clone(), t.name.clone()))
                .collect(),
        }
    }

    /// The principal of a presented token. Every digest is compared, in
    /// constant time (`subtle`), so timing tells nothing about which (if
    /// any) matched.
    pub fn authenticate(&self, token: &str) -> Option<Principal> {
        let presented: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut found = None;
        for (d, name) in &self.operators {
            if bool::from(d.ct_eq(&presented)) && found.is_none() {
                found = Some(Principal::Operator { name: name.clone() });
            }
        }
        for (d, tenant, name) in &self.tenants {
            if bool::from(d.ct_eq(&presented)) && found.is_none() {
                found = Some(Principal::Tenant {
                    tenant: tenant.clone(),
                    name: name.clone(),
                });
            }
        }
        found
    }
}

/// A 413 from the body limit (plain text) answered as the API's JSON error.
async fn json_413(r: Response) -> Response {
    let json = r
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if r.status() == StatusCode::PAYLOAD_TOO_LARGE && !json {
        return ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request body larger than admin.max_body_bytes",
            None,
        )
        .into_response();
    }
    r
}

/// The hex SHA-256 of a token, as configured (`outreach admin hash-token`).
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

pub fn router(state: AdminState) -> Router {
    let limit = state.max_body_bytes;
    Router::new()
        .route("/tenants/{tenant}/messaging", get(show))
        .route(
            "/tenants/{tenant}/messaging/{channel}",
            put(set).delete(remove),
        )
        .route("/tenants/{tenant}/messaging/{channel}/test", post(test))
        .route(
            "/tenants/{tenant}/suppressions",
            get(suppressions::get_list).post(suppressions::post_add),
        )
        .route(
            "/tenants/{tenant}/suppressions/{channel}/{recipient}",
            delete(suppressions::delete_one),
        )
        .layer(DefaultBodyLimit::max(limit))
        // The body limit's refusal is axum's plain text: JSON like the rest.
        .layer(axum::middleware::map_response(json_413))
        // A panic in a handler (a defect) answers 500 like other errors
        // instead of dropping the connection, and is counted.
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            |_: Box<dyn std::any::Any + Send>| {
                crate::panics::caught("admin_api");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal error (a defect in outreach, counted in outreach_panics_total)",
                    None,
                )
                .into_response()
            },
        ))
        .with_state(state)
}

/// An answer other than success: status, message and the field at fault.
/// Messages name fields, never values.
pub struct ApiError {
    status: StatusCode,
    message: String,
    field: Option<String>,
    retry_after: Option<u64>,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, message: impl Into<String>, field: Option<&str>) -> Self {
        Self {
            status,
            message: message.into(),
            field: field.map(str::to_owned),
            retry_after: None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({ "error": self.message, "field": self.field });
        let mut r = (self.status, Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        r
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Invalid(e) => Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                e.to_string(),
                Some(&e.field),
            ),
            e => {
                tracing::error!(error = %e, "admin api: store failed");
                Self::new(StatusCode::INTERNAL_SERVER_ERROR, "store failed", None)
            }
        }
    }
}

type ApiResult = Result<Response, ApiError>;

/// The token of an `Authorization: Bearer <token>` header; the scheme is
/// case-insensitive (RFC 9110 §11.1).
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, token) = v.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Take one request from `key`'s allowance, or a 429 with Retry-After.
fn take(s: &AdminState, key: &str) -> Result<(), ApiError> {
    let Some(limiter) = &s.limiter else {
        return Ok(());
    };
    limiter.check_key(&key.to_owned()).map_err(|not_until| {
        let wait = not_until.wait_time_from(DefaultClock::default().now());
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        let mut e = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too many requests for this token",
            None,
        );
        e.retry_after = Some(secs.max(1));
        e
    })
}

/// Authorise the caller for `tenant`; returns who it is.
pub(crate) fn authorise(
    s: &AdminState,
    headers: &HeaderMap,
    tenant: &str,
) -> Result<Principal, ApiError> {
    // Requests without a known token share one allowance.
    const ANONYMOUS: &str = "-";
    let Some(token) = bearer(headers) else {
        take(s, ANONYMOUS)?;
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "bearer token required",
            None,
        ));
    };
    let Some(principal) = s.auth.authenticate(token) else {
        take(s, ANONYMOUS)?;
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unknown token",
            None,
        ));
    };
    take(s, &principal.actor())?;
    match &principal {
        Principal::Tenant { tenant: t, .. } if t != tenant => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "this token may not manage this tenant",
            None,
        )),
        _ => Ok(principal),
    }
}

pub(crate) fn tenant_id(tenant: &str) -> Result<TenantId, ApiError> {
    TenantId::parse(tenant)
        .map_err(|_| ApiError::new(StatusCode::NOT_FOUND, "no such tenant", None))
}

pub(crate) fn channel(c: &str) -> Result<Channel, ApiError> {
    c.parse()
        .map_err(|_| ApiError::new(StatusCode::NOT_FOUND, "no such channel", None))
}

async fn show(
    State(s): State<AdminState>,
    headers: HeaderMap,
    Path(tenant): Path<String>,
) -> ApiResult {
    authorise(&s, &headers, &tenant)?;
    let rows = s.store.get_tenant(&tenant_id(&tenant)?).await?;
    let mut channels = serde_json::Map::new();
    for r in &rows {
        channels.insert(r.channel.to_string(), view::masked(&s.store, r));
    }
    Ok(Json(json!({ "tenant": tenant, "channels": channels })).into_response())
}

async fn set(
    State(s): State<AdminState>,
    headers: HeaderMap,
    Path((tenant, c)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> ApiResult {
    let principal = authorise(&s, &headers, &tenant)?;
    let (t, c) = (tenant_id(&tenant)?, channel(&c)?);
    let value: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|_| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "body is not JSON", None))?;
    // Before parsing: a long chain is refused without building its entries.
    if let Some(chain) = value.get("chain").and_then(|c| c.as_array()) {
        s.store
            .check_chain_len(chain.len())
            .map_err(StoreError::from)?;
    }
    let cfg = ChannelConfig::from_json(value, c).map_err(StoreError::from)?;
    if let Principal::Tenant { .. } = principal {
        let stored = s.store.get(&t, c).await?;
        s.policy
            .check(&cfg, stored.as_ref())
            .map_err(|f| ApiError::new(StatusCode::FORBIDDEN, f.to_string(), Some(&f.field)))?;
    }
    s.store.put(&t, c, &cfg, &principal.actor()).await?;
    Ok(match s.store.get(&t, c).await? {
        Some(row) => Json(view::masked(&s.store, &row)).into_response(),
        // Deleted again in between.
        None => StatusCode::NO_CONTENT.into_response(),
    })
}

async fn remove(
    State(s): State<AdminState>,
    headers: HeaderMap,
    Path((tenant, c)): Path<(String, String)>,
) -> ApiResult {
    let actor = authorise(&s, &headers, &tenant)?.actor();
    let (t, c) = (tenant_id(&tenant)?, channel(&c)?);
    if s.store.delete(&t, Some(c), &actor).await? {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "no config for this channel",
            None,
        ))
    }
}

/// Body of the test endpoint.
#[derive(Deserialize)]
struct TestBody {
    to: String,
}

async fn test(
    State(s): State<AdminState>,
    headers: HeaderMap,
    Path((tenant, c)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> ApiResult {
    authorise(&s, &headers, &tenant)?;
    let (t, c) = (tenant_id(&tenant)?, channel(&c)?);
    let unprocessable = |m: String| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, m, Some("to"));
    let b: TestBody = serde_json::from_slice(&body)
        .map_err(|_| unprocessable("expected {\"to\": ...}".into()))?;
    let job = test_job(&t, c, &b.to).map_err(unprocessable)?;
    let result = send_test(&s.directory, &job, &s.quick_retry).await;
    // An adapter that panicked is a defect on our side, not the provider's answer.
    let status = match result["kind"] == ErrorKind::Internal.as_str() {
        true => StatusCode::INTERNAL_SERVER_ERROR,
        false => StatusCode::OK,
    };
    Ok((status, Json(result)).into_response())
}

/// A small test message for `tenant test` and the test endpoint.
pub fn test_job(tenant: &TenantId, channel: Channel, to: &str) -> Result<Job, String> {
    let content = match channel {
        Channel::Email => Content::Email {
            subject: "outreach test message".into(),
            text: Some("This is a test of your messaging configuration.".into()),
            html: None,
        },
        _ => Content::Text {
            text: "outreach test message: your messaging configuration works.".into(),
        },
    };
    // The validator's message quotes the value; this one does not.
    crate::job::validate_recipient(channel, to).map_err(|_| match channel {
        Channel::Email => "not an email address".to_owned(),
        _ => "not an E.164 number such as +14155550100".to_owned(),
    })?;
    Ok(Job {
        id: JobId::parse(&format!("test-{}", uuid::Uuid::now_v7())).map_err(|e| e.to_string())?,
        tenant_id: tenant.clone(),
        channel,
        recipient: to.to_owned(),
        content,
        metadata: None,
        not_after: None,
    })
}

/// Send through the tenant's current chain (not the cache) and describe the
/// result: `sent` only when a real provider accepted it (`simulated` when the
/// sandbox did), and every provider call and skipped step in `attempts`.
/// Bounded: each step makes at most `1 + worker.quick_retries` calls of at
/// most `providers.timeout_secs` each.
pub async fn send_test(directory: &Directory, job: &Job, quick: &QuickRetry) -> serde_json::Value {
    let chain = match directory
        .resolve_uncached(&job.tenant_id, job.channel)
        .await
    {
        Ok(c) if !c.enabled => return json!({"sent": false, "error": "channel disabled"}),
        Ok(c) => c,
        Err(e) => return json!({"sent": false, "error": e.to_string()}),
    };
    let report = chain::walk_without_limits(job, &chain, quick).await;
    match report.outcome {
        Ok((info, receipt)) => json!({
            "sent": info.kind.delivers(),
            "simulated": !info.kind.delivers(),
            "provider": info.kind,
            "step": info.step,
            "system_default": chain.steps.iter().any(|s| s.step == info.step && s.is_system),
            "message_id": receipt.message_id,
            "attempts": report.attempts,
        }),
        Err(e) => json!({
            "sent": false,
            "simulated": false,
            "error": e.to_string(),
            "kind": e.kind().as_str(),
            "code": e.code(),
            "attempts": report.attempts,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::{OperatorToken, TenantToken};

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        for v in ["Bearer tok", "bearer tok", "BEARER  tok ", "bEaReR tok"] {
            let mut h = HeaderMap::new();
            h.insert(header::AUTHORIZATION, HeaderValue::from_str(v).unwrap());
            assert_eq!(bearer(&h), Some("tok"), "{v}");
        }
        for v in ["Basic tok", "Bearer", "Bearertok", "Bearer "] {
            let mut h = HeaderMap::new();
            h.insert(header::AUTHORIZATION, HeaderValue::from_str(v).unwrap());
            assert_eq!(bearer(&h), None, "{v}");
        }
    }

    #[test]
    fn tokens_are_recognised_by_their_digest_only() {
        let tokens = Tokens::new(&AdminSettings {
            operator_token_sha256: vec![
                OperatorToken::Digest(hash_token("op-secret")),
                OperatorToken::Named {
                    sha256: hash_token("alice-secret"),
                    name: "alice".into(),
                },
            ],
            tenant_tokens: vec![TenantToken {
                tenant: "clinic-1".into(),
                sha256: hash_token("t1-secret"),
                name: "portal".into(),
            }],
            max_body_bytes: 65536,
            requests_per_minute: 0,
        });
        let bare = format!("operator-{}", &hash_token("op-secret")[..8]);
        assert_eq!(
            tokens.authenticate("op-secret"),
            Some(Principal::Operator { name: bare })
        );
        assert_eq!(
            tokens.authenticate("alice-secret").map(|p| p.actor()),
            Some("api:alice".into())
        );
        assert_eq!(
            tokens.authenticate("t1-secret"),
            Some(Principal::Tenant {
                tenant: "clinic-1".into(),
                name: "portal".into()
            })
        );
        assert_eq!(tokens.authenticate("guess"), None);
    }
}
