//! `outreach keys rotate`: re-encrypt every stored credential with the active key.
//!
//! One transaction per (tenant, channel) row, so an interrupted run leaves
//! every row either fully old or fully new; values already on the active key
//! are skipped, so re-running simply finishes the job. A value that cannot
//! be decrypted (its key is not configured, it was altered, or it was copied
//! from another tenant or field) is left as it is and reported; the run goes
//! on with the others.

use super::sealed;
use super::store::{StoreError, TenantStore, audit_and_notify};
use crate::crypto::{CryptoError, FieldContext};
use crate::job::{Channel, TenantId};
use crate::provider::{ProviderKind, ProviderSettings};
use serde_json::Value;
use sqlx::types::Json;

/// What a run did.
#[derive(Debug, Default)]
pub struct RotateReport {
    /// Rows looked at.
    pub rows: usize,
    /// Secret values re-encrypted.
    pub values: usize,
    /// Values that could not be decrypted and were left as they were.
    pub failures: Vec<RotationFailure>,
}

/// What rotating one row did.
#[derive(Debug, Default)]
pub struct RowRotation {
    /// Secret values re-encrypted.
    pub rotated: usize,
    /// Values that could not be decrypted and were left as they were.
    pub failures: Vec<RotationFailure>,
}

/// A stored value rotation could not decrypt: its key is not configured, it
/// was altered, or it was copied from another tenant or field.
#[derive(Debug)]
pub struct RotationFailure {
    pub tenant: TenantId,
    pub channel: Channel,
    /// `chain[0].api_key`.
    pub field: String,
    /// Names the tenant, field and key id; never the value or the key.
    pub error: CryptoError,
}

/// Rotate every row, going on past values that cannot be decrypted (they
/// are in the report); `progress(done, total, tenant, channel, row)` after
/// each row. Stops only when the database fails or encryption itself does.
pub async fn rotate_all(
    store: &TenantStore,
    actor: &str,
    mut progress: impl FnMut(usize, usize, &TenantId, Channel, &RowRotation),
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
        let mut row = rotate_row_outcome(store, &tenant, channel, actor).await?;
        report.rows += 1;
        report.values += row.rotated;
        progress(report.rows, total, &tenant, channel, &row);
        report.failures.append(&mut row.failures);
    }
    Ok(report)
}

/// Rotate one row in its own transaction; returns the values re-encrypted,
/// or the first value that could not be decrypted (the row's other values
/// are re-encrypted and committed either way).
pub async fn rotate_row(
    store: &TenantStore,
    tenant: &TenantId,
    channel: Channel,
    actor: &str,
) -> Result<usize, StoreError> {
    let row = rotate_row_outcome(store, tenant, channel, actor).await?;
    match row.failures.into_iter().next() {
        Some(failure) => Err(failure.error.into()),
        None => Ok(row.rotated),
    }
}

/// Rotate one row in its own transaction, leaving the values that cannot
/// be decrypted as they are and listing them.
pub async fn rotate_row_outcome(
    store: &TenantStore,
    tenant: &TenantId,
    channel: Channel,
    actor: &str,
) -> Result<RowRotation, StoreError> {
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
        return Ok(RowRotation::default());
    };
    let mut row = RowRotation::default();
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
            let ctx = FieldContext::new(tenant.as_str(), &path);
            let field = format!("chain[{i}].{name}");
            let plain = match keys.decrypt(stored, &ctx) {
                Ok(plain) => plain,
                Err(error) => {
                    row.failures.push(RotationFailure {
                        tenant: tenant.clone(),
                        channel,
                        field,
                        error,
                    });
                    continue;
                }
            };
            entry[*name] = Value::String(keys.encrypt(&plain, &ctx)?);
            changed.push(field);
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
    row.rotated = changed.len();
    Ok(row)
}
