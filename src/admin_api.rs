//! Admin HTTP API (`/admin/v1`): tenants manage their messaging config.
//!
//! Bearer tokens are configured as SHA-256 digests only; operator tokens may
//! manage every tenant, tenant tokens only their own. Answers never contain a
//! secret: configs are shown masked, errors name fields, never values.

use crate::dispatch::{self, QuickRetry};
use crate::job::{Channel, Content, Job, JobId, TenantId};
use crate::settings::AdminSettings;
use crate::tenant::{ChannelConfig, Directory, StoreError, TenantStore, view};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use std::sync::Arc;

/// What the admin routes need.
#[derive(Clone)]
pub struct AdminState {
    pub store: TenantStore,
    pub directory: Arc<Directory>,
    pub auth: Arc<Tokens>,
    pub quick_retry: QuickRetry,
}

/// The configured token digests.
pub struct Tokens {
    operators: Vec<[u8; 32]>,
    tenants: Vec<([u8; 32], String, String)>,
}

/// Who a token belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    Operator,
    Tenant { tenant: String, name: String },
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
            operators: s.operator_token_sha256.iter().map(|h| digest(h)).collect(),
            tenants: s
                .tenant_tokens
                .iter()
                .map(|t| (digest(&t.sha256), t.tenant.clone(), t.name.clone()))
                .collect(),
        }
    }

    /// The principal of a presented token. Every digest is compared, in
    /// constant time, so timing tells nothing about which (if any) matched.
    pub fn authenticate(&self, token: &str) -> Option<Principal> {
        let presented: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut found = None;
        for d in &self.operators {
            if ct_eq(d, &presented) {
                found = Some(Principal::Operator);
            }
        }
        for (d, tenant, name) in &self.tenants {
            if ct_eq(d, &presented) && found.is_none() {
                found = Some(Principal::Tenant {
                    tenant: tenant.clone(),
                    name: name.clone(),
                });
            }
        }
        found
    }
}

fn ct_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The hex SHA-256 of a token, as configured (`outreach admin hash-token`).
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/tenants/{tenant}/messaging", get(show))
        .route(
            "/tenants/{tenant}/messaging/{channel}",
            put(set).delete(remove),
        )
        .route("/tenants/{tenant}/messaging/{channel}/test", post(test))
        .with_state(state)
}

/// An answer other than success: status, message and the field at fault.
/// Messages name fields, never values.
pub struct ApiError {
    status: StatusCode,
    message: String,
    field: Option<String>,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>, field: Option<&str>) -> Self {
        Self {
            status,
            message: message.into(),
            field: field.map(str::to_owned),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({ "error": self.message, "field": self.field });
        (self.status, Json(body)).into_response()
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

/// Authorise the caller for `tenant`; returns the audit actor.
fn authorise(s: &AdminState, headers: &HeaderMap, tenant: &str) -> Result<String, ApiError> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| ApiError::new(StatusCode::UNAUTHORIZED, "bearer token required", None))?;
    match s.auth.authenticate(token.trim()) {
        None => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unknown token",
            None,
        )),
        Some(Principal::Operator) => Ok("api:operator".into()),
        Some(Principal::Tenant { tenant: t, name }) if t == tenant => Ok(format!("api:{name}")),
        Some(Principal::Tenant { .. }) => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "this token may not manage this tenant",
            None,
        )),
    }
}

fn tenant_id(tenant: &str) -> Result<TenantId, ApiError> {
    TenantId::parse(tenant)
        .map_err(|_| ApiError::new(StatusCode::NOT_FOUND, "no such tenant", None))
}

fn channel(c: &str) -> Result<Channel, ApiError> {
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
    let actor = authorise(&s, &headers, &tenant)?;
    let (t, c) = (tenant_id(&tenant)?, channel(&c)?);
    let value: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|_| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "body is not JSON", None))?;
    let cfg = ChannelConfig::from_json(value, c).map_err(StoreError::from)?;
    s.store.put(&t, c, &cfg, &actor).await?;
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
    let actor = authorise(&s, &headers, &tenant)?;
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
    Ok(Json(send_test(&s.directory, &job, &s.quick_retry).await).into_response())
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
    crate::job::validate_recipient(channel, to).map_err(|e| e.to_string())?;
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
    let report = dispatch::dispatch(job, &chain, quick).await;
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
            "kind": e.kind.as_str(),
            "code": e.code,
            "attempts": report.attempts,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::TenantToken;

    #[test]
    fn tokens_are_recognised_by_their_digest_only() {
        let tokens = Tokens::new(&AdminSettings {
            operator_token_sha256: vec![hash_token("op-secret")],
            tenant_tokens: vec![TenantToken {
                tenant: "clinic-1".into(),
                sha256: hash_token("t1-secret"),
                name: "portal".into(),
            }],
        });
        assert_eq!(tokens.authenticate("op-secret"), Some(Principal::Operator));
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
