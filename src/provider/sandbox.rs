//! The sandbox provider: accepts and records, sends nothing. The default
//! system provider of a fresh install, so the pipeline runs without accounts.

use super::settings::SandboxSettings;
use super::{Provider, ProviderError, ProviderKind, Receipt};
use crate::job::Job;
use async_trait::async_trait;
use std::io::Write;

pub struct Sandbox {
    settings: SandboxSettings,
}

impl Sandbox {
    pub fn new(settings: SandboxSettings) -> Self {
        Self { settings }
    }
}

#[async_trait]
impl Provider for Sandbox {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Sandbox
    }

    async fn send(&self, job: &Job) -> Result<Receipt, ProviderError> {
        let id = format!("sandbox-{}", uuid::Uuid::now_v7());
        if let Some(path) = &self.settings.record_file {
            // Ids and recipient only: bodies carry patient data.
            let line = serde_json::json!({
                "message_id": id, "job_id": job.id, "tenant_id": job.tenant_id,
                "channel": job.channel, "recipient": job.recipient,
            });
            let path = path.clone();
            tokio::task::spawn_blocking(move || -> std::io::Result<()> {
                let mut f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?;
                writeln!(f, "{line}")
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
