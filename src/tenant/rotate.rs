//! `outreach keys rotate`: re-encrypt every stored credential with the active key.
//!
//! One transaction per (tenant, channel) row, so an interrupted run leaves
//! every row either fully old or fully new; values already on the active key
//! are skipped, so re-running simply finishes the job.

use super::sealed;
use super::store::{StoreError, TenantStore, audit_and_notify};
use crate::crypto::{CryptoError, FieldContext};
use crate::job::{Channel, TenantId};
use crate::provider::{ProviderKind, ProviderSettings};
use serde_json::Value;
use sqlx::types::Json;

/// What a run did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RotateReport {
    /// Rows looked at.
    pub rows: usize,
    /// Secret values re-encrypted.
    pub values: usize,
}

/// Rotate every row; `progress(done, total, tenant, channel, values)` after each.
pub async fn rotate_all(
    store: &TenantStore,
    actor: &str,
    mut progress: impl FnMut(usize, usize, &TenantId, Channel, usize),
) -> Result<RotateReport, StoreError> {
    if store.keys().active_kid().is_none() {
        return Err(CryptoError::NoActiveKey.into());
    }
    let rows: Vec<(String, Channel)> = sqlx::query_as(
        "SELECT tenant_id, channel FROM tenant_channel_configs ORDER BY tenant_id, channel",
    )
    .fetch_all(store.pool())
    .await?;
    let mut report = RotateReport::default();
    let total = rows.len();
    for (tenant, channel) in rows {
        let tenant =
            TenantId::parse(&tenant).map_err(|_| sqlx::Error::Decode("tenant_id".into()))?;
        let n = rotate_row(store, &tenant, channel, actor).await?;
        report.rows += 1;
        report.values += n;
        progress(report.rows, total, &tenant, channel, n);
    }
    Ok(report)
}

/// Rotate one row in its own transaction; returns the values re-encrypted.
pub async fn rotate_row(
    store: &TenantStore,
    tenant: &TenantId,
    channel: Channel,
    actor: &str,
) -> Result<usize, StoreError> {
    let keys = store.keys();
    let mut tx = store.pool().begin().await?;
    // FOR UPDATE: a concurrent `tenant set` waits rather than being overwritten.
    let Some((Json(mut chain),)): Option<(Json<Vec<Value>>,)> = sqlx::query_as(
        "SELECT chain FROM tenant_channel_configs WHERE tenant_id = $1 AND channel = $2 FOR UPDATE",
    )
    .bind(tenant.as_str())
    .bind(channel)
    .fetch_optional(&mut *tx)
    .await?
    else {
        return Ok(0);
    };
    let mut changed = vec![];
    for (i, entry) in chain.iter_mut().enumerate() {
        let Some(kind) = entry
            .get("provider")
            .and_then(|k| serde_json::from_value::<ProviderKind>(k.clone()).ok())
        else {
            continue;
        };
        for name in ProviderSettings::secret_fields(kind) {
            let Some(Value::String(stored)) = entry.get(*name) else {
                continue;
            };
            if !keys.needs_rotation(stored) {
                continue;
            }
            let path = sealed::field_path(channel, i, name);
            let fresh = keys.rotate(stored, &FieldContext::new(tenant.as_str(), &path))?;
            entry[*name] = Value::String(fresh);
            changed.push(format!("chain[{i}].{name}"));
        }
    }
    if !changed.is_empty() {
        // The version is unchanged on purpose: the settings are the same.
        sqlx::query(
            "UPDATE tenant_channel_configs SET chain = $3, updated_at = now() \
             WHERE tenant_id = $1 AND channel = $2",
        )
        .bind(tenant.as_str())
        .bind(channel)
        .bind(Json(&chain))
        .execute(&mut *tx)
        .await?;
        audit_and_notify(&mut tx, actor, tenant, Some(channel), "rotate", &changed).await?;
    }
    tx.commit().await?;
    Ok(changed.len())
}
