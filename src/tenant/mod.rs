//! Tenants' messaging config, resolved into provider chains.
//!
//! - [`model`]: the config a tenant writes for a channel, and its validation.
//! - [`sealed`]: chain entries as stored, secrets encrypted per field.
//! - [`store`]: PostgreSQL reads and writes, audit and NOTIFY; [`rotate`]: key rotation.
//! - [`view`]: the masked form for `tenant show` and the admin API.
//! - [`directory`]: [`Directory::resolve`], the cached chains workers send through;
//!   [`listener`]: invalidation on every change.
//!
//! The `tenant`, `keys` and `admin` commands are in the binary (`src/cli/tenant.rs`).

pub mod directory;
pub mod listener;
pub mod model;
pub mod policy;
pub mod rotate;
pub mod sealed;
pub mod store;
pub mod view;

use crate::provider::{Provider, ProviderError, ProviderKind};
use std::sync::Arc;

pub use directory::Directory;
pub use model::{ChannelConfig, ConfigError, RateLimits};
pub use store::{StoreError, StoredConfig, TenantStore};

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
    /// The account's own limits (provider's, and the system-wide one for
    /// system defaults); scope = `account`.
    pub limits: crate::ratelimit::LimitSet,
}

/// A tenant's channel, ready to dispatch.
#[derive(Clone)]
pub struct ResolvedChannel {
    pub enabled: bool,
    /// The usable steps, in chain order (their `step` numbers may have gaps
    /// where an entry is [`unusable`](Self::unusable)).
    pub steps: Vec<ChainStep>,
    /// Entries of the tenant's chain that cannot be used (credentials that
    /// do not decrypt, settings that do not build), by step number. The
    /// chain goes on without them, and each appears in the attempt log of
    /// every job that passes it, so a fallback is never unexplained.
    pub unusable: Vec<UnusableStep>,
    /// The tenant's limits on the channel, across the chain (scope
    /// `tenant:<id>:<channel>`); empty for tenants without config.
    pub limits: crate::ratelimit::LimitSet,
}

/// A chain entry that could not be opened or built.
#[derive(Clone, Debug)]
pub struct UnusableStep {
    pub kind: ProviderKind,
    pub step: u16,
    /// Why (a `Config` error naming the field, never a value).
    pub error: ProviderError,
}
