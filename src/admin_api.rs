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

fn error(code: StatusCode, msg: &str, field: Option<&str>) -> Response {
    (code, Json(json!({ "error": msg, "field": field }))).into_response()
}

/// Authorise the caller for `tenant`; returns the audit actor.
fn authorise(s: &AdminState, headers: &HeaderMap, tenant: &str) -> Result<String, Response> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| error(StatusCode::UNAUTHORIZED, "bearer token required", None))?;
    match s.auth.authenticate(token.trim()) {
        None => Err(error(StatusCode::UNAUTHORIZED, "unknown token", None)),
        Some(Principal::Operator) => Ok("api:operator".into()),
        Some(Principal::Tenant { tenant: t, name }) if t == tenant => Ok(format!("api:{name}")),
        Some(Principal::Tenant { .. }) => Err(error(
            StatusCode::FORBIDDEN,
            "this token may not manage this tenant",
            None,
        )),
    }
}

fn parse_ids(tenant: &str, channel: Option<&str>) -> Result<(TenantId, Option<Channel>), Response> {
    let t = TenantId::parse(tenant)
        .map_err(|_| error(StatusCode::NOT_FOUND, "no such tenant", None))?;
    let c = channel
        .map(|c| c.parse::<Channel>())
        .transpose()
        .map_err(|_| error(StatusCode::NOT_FOUND, "no such channel", None))?;
    Ok((t, c))
}

fn store_error(e: StoreError) -> Response {
    match e {
        StoreError::Invalid(e) => error(
            StatusCode::UNPROCESSABLE_ENTITY,
            &e.to_string(),
            Some(&e.field),
        ),
        e => {
            tracing::error!(error = %e, "admin api: store failed");
            error(StatusCode::INTERNAL_SERVER_ERROR, "store failed", None)
        }
    }
}

async fn show(
    State(s): State<AdminState>,
    headers: HeaderMap,
    Path(tenant): Path<String>,
) -> Response {
    if let Err(r) = authorise(&s, &headers, &tenant) {
        return r;
    }
    let (t, _) = match parse_ids(&tenant, None) {
        Ok(ids) => ids,
        Err(r) => return r,
    };
    match s.store.get_tenant(&t).await {
        Ok(rows) => {
            let mut channels = serde_json::Map::new();
            for r in &rows {
                channels.insert(r.channel.to_string(), view::masked(&s.store, r));
            }
            Json(json!({ "tenant": tenant, "channels": channels })).into_response()
        }
        Err(e) => store_error(e),
    }
}

async fn set(
    State(s): State<AdminState>,
    headers: HeaderMap,
    Path((tenant, channel)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Response {
    let actor = match authorise(&s, &headers, &tenant) {
        Ok(a) => a,
        Err(r) => return r,
    };
    let (t, Some(c)) = (match parse_ids(&tenant, Some(&channel)) {
        Ok(ids) => ids,
        Err(r) => return r,
    }) else {
        unreachable!("channel given")
    };
    let value: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(_) => return error(StatusCode::UNPROCESSABLE_ENTITY, "body is not JSON", None),
    };
    let cfg = match ChannelConfig::from_json(value, c) {
        Ok(cfg) => cfg,
        Err(e) => return store_error(e.into()),
    };
    match s.store.put(&t, c, &cfg, &actor).await {
        Ok(_) => match s.store.get(&t, c).await {
            Ok(Some(row)) => Json(view::masked(&s.store, &row)).into_response(),
            Ok(None) => StatusCode::NO_CONTENT.into_response(),
            Err(e) => store_error(e),
        },
        Err(e) => store_error(e),
    }
}

async fn remove(
    State(s): State<AdminState>,
    headers: HeaderMap,
    Path((tenant, channel)): Path<(String, String)>,
) -> Response {
    let actor = match authorise(&s, &headers, &tenant) {
        Ok(a) => a,
        Err(r) => return r,
    };
    let (t, c) = match parse_ids(&tenant, Some(&channel)) {
        Ok(ids) => ids,
        Err(r) => return r,
    };
    match s.store.delete(&t, c, &actor).await {
        Ok(true) => StatusCode::NO_CONTENT.into_response(),
        Ok(false) => error(StatusCode::NOT_FOUND, "no config for this channel", None),
        Err(e) => store_error(e),
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
    Path((tenant, channel)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Response {
    if let Err(r) = authorise(&s, &headers, &tenant) {
        return r;
    }
    let (t, Some(c)) = (match parse_ids(&tenant, Some(&channel)) {
        Ok(ids) => ids,
        Err(r) => return r,
    }) else {
        unreachable!("channel given")
    };
    let Ok(b) = serde_json::from_slice::<TestBody>(&body) else {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "expected {\"to\": ...}",
            Some("to"),
        );
    };
    let job = match test_job(&t, c, &b.to) {
        Ok(j) => j,
        Err(e) => return error(StatusCode::UNPROCESSABLE_ENTITY, &e, Some("to")),
    };
    Json(send_test(&s.directory, &job, &s.quick_retry).await).into_response()
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

/// Send through the tenant's current chain (not the cache) and describe the result.
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
            "sent": true,
            "provider": info.kind,
            "step": info.step,
            "system_default": chain.steps.get(info.step as usize).is_some_and(|s| s.is_system),
            "message_id": receipt.message_id,
        }),
        Err(e) => json!({"sent": false, "error": e.to_string(), "kind": format!("{:?}", e.kind)}),
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
