//! The sandbox provider: accepts and records, sends nothing. The default
//! system provider of a fresh install, so the pipeline runs without accounts.

use super::{Provider, ProviderError, ProviderKind, Receipt, SettingsError};
use crate::job::Job;
use async_trait::async_trait;
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::sync::{Arc, Mutex};

// Settings: one account of this provider, as a tenant stores it.

/// Accepts and records messages, sends nothing.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxSettings {
    /// Append one JSON line per accepted message (ids and recipient, no body) to this file.
    #[serde(default)]
    pub record_file: Option<String>,
    /// Test builds only (feature `fault-injection`): panic on every send,
    /// a stand-in for an adapter defect.
    #[cfg(feature = "fault-injection")]
    #[serde(default)]
    pub panic_on_send: bool,
}

impl SandboxSettings {
    /// The fields that hold secrets, in the order [`Self::secrets`] gives them.
    pub const SECRET_FIELDS: &'static [&'static str] = &[];

    /// Every secret field, set or not.
    pub fn secrets(&self) -> Vec<(&'static str, Option<&SecretString>)> {
        vec![]
    }

    /// Check every field; the error names the first bad one.
    pub fn validate(&self) -> Result<(), SettingsError> {
        Ok(())
    }

    /// The `record_file`'s folder exists on this machine: checked when a
    /// config is stored, so a typo is refused then rather than found when
    /// a worker first builds the account. (Not part of [`Self::validate`],
    /// which runs before an admin API caller's rights are checked: it would
    /// tell anyone whether a folder exists. The path is never quoted.)
    pub fn check_folder(&self) -> Result<(), SettingsError> {
        let Some(path) = &self.record_file else {
            return Ok(());
        };
        let folder = match std::path::Path::new(path).parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => std::path::Path::new("."),
        };
        if folder.is_dir() {
            Ok(())
        } else {
            Err(SettingsError::new(
                "record_file",
                "its folder does not exist on this machine: create it, or name a file in an \
                 existing folder",
            ))
        }
    }
}

pub struct Sandbox {
    /// The record file, one writer at a time so lines never interleave.
    record: Option<Arc<Mutex<std::fs::File>>>,
    #[cfg(feature = "fault-injection")]
    panic_on_send: bool,
}

impl Sandbox {
    pub fn new(settings: SandboxSettings) -> Result<Self, SettingsError> {
        let record = match &settings.record_file {
            Some(path) => {
                let f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|e| {
                        SettingsError::new("record_file", format!("cannot open {path}: {e}"))
                    })?;
                Some(Arc::new(Mutex::new(f)))
            }
            None => None,
        };
        Ok(Self {
            record,
            #[cfg(feature = "fault-injection")]
            panic_on_send: settings.panic_on_send,
        })
    }
}

#[async_trait]
impl Provider for Sandbox {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Sandbox
    }

    async fn send(&self, job: &Job) -> Result<Receipt, ProviderError> {
        #[cfg(feature = "fault-injection")]
        if self.panic_on_send {
            panic!("sandbox stand-in: panic_on_send");
        }
        let id = format!("sandbox-{}", uuid::Uuid::now_v7());
        if let Some(file) = &self.record {
            // Ids and recipient only: bodies carry patient data.
            let line = serde_json::json!({
                "message_id": id, "job_id": job.id, "tenant_id": job.tenant_id,
                "channel": job.channel, "recipient": job.recipient,
            });
            let file = file.clone();
            tokio::task::spawn_blocking(move || -> std::io::Result<()> {
                let mut f = file.lock().unwrap_or_else(|p| p.into_inner());
                f.write_all(format!("{line}\n").as_bytes())
            })
            .await
            .map_err(|e| ProviderError::transient(format!("sandbox: {e}")))?
            .map_err(|e| ProviderError::transient(format!("sandbox record file: {e}")))?;
        }
        tracing::debug!(job_id = %job.id, message_id = %id, "sandbox accepted message");
        Ok(Receipt {
            message_id: Some(id),
        })
    }
}
