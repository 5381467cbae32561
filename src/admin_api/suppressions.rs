//! `/admin/v1/tenants/{tenant}/suppressions` (mounted by [`super::router`],
//! same tokens: a tenant-scoped token sees and changes only its tenant).
//!
//! - `GET  …/suppressions[?channel=sms]`: the list.
//! - `POST …/suppressions` `{"channel", "recipient", "reason"?}`: add (201; 200 if listed).
//! - `DELETE …/suppressions/{channel}/{recipient}`: remove (204; 404 if not listed).

use super::{AdminState, ApiError, authorise, channel, tenant_id};
use crate::job::Channel;
use crate::suppression::{Reason, SuppressionError, change_audited, list};
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

impl From<SuppressionError> for ApiError {
    fn from(e: SuppressionError) -> Self {
        match e {
            SuppressionError::Db(e) => {
                tracing::error!(error = %e, "admin api: suppression list failed");
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "store failed", None)
            }
            SuppressionError::InvalidRecipient(_) => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                e.to_string(),
                Some("recipient"),
            ),
            SuppressionError::UnknownReason => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                e.to_string(),
                Some("reason"),
            ),
        }
    }
}

#[derive(Deserialize)]
pub struct ListQuery {
    channel: Option<String>,
}

pub async fn get_list(
    State(s): State<AdminState>,
    headers: HeaderMap,
    Path(tenant): Path<String>,
    Query(q): Query<ListQuery>,
) -> Result<Response, ApiError> {
    authorise(&s, &headers, &tenant)?;
    let t = tenant_id(&tenant)?;
    let c = q.channel.as_deref().map(channel).transpose()?;
    let entries = list(s.store.pool(), t.as_str(), c).await?;
    Ok(Json(json!({ "tenant": tenant, "suppressions": entries })).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddBody {
    channel: Channel,
    recipient: String,
    #[serde(default)]
    reason: Option<String>,
}

pub async fn post_add(
    State(s): State<AdminState>,
    headers: HeaderMap,
    Path(tenant): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let actor = authorise(&s, &headers, &tenant)?.actor();
    let t = tenant_id(&tenant)?;
    let b: AddBody = serde_json::from_slice(&body).map_err(|_| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "expected {\"channel\", \"recipient\", \"reason\"?}",
            None,
        )
    })?;
    let reason: Reason = b.reason.as_deref().unwrap_or("manual").parse()?;
    let added = change_audited(
        s.store.pool(),
        &actor,
        &t,
        b.channel,
        &b.recipient,
        Some(reason),
    )
    .await?;
    let code = if added {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((code, Json(json!({ "added": added }))).into_response())
}

pub async fn delete_one(
    State(s): State<AdminState>,
    headers: HeaderMap,
    Path((tenant, c, recipient)): Path<(String, String, String)>,
) -> Result<Response, ApiError> {
    let actor = authorise(&s, &headers, &tenant)?.actor();
    let (t, c) = (tenant_id(&tenant)?, channel(&c)?);
    if change_audited(s.store.pool(), &actor, &t, c, &recipient, None).await? {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(ApiError::new(StatusCode::NOT_FOUND, "not suppressed", None))
    }
}
