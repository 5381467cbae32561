//! Why a round did not send: a provider's answer is one source among the
//! pipeline's own (a step passed over, the tenant's configuration, the
//! job's deadline, its recipient's suppression, its payload).
//!
//! Every failure is recorded the same way (kind, code, message: the row's
//! and the event's `error`), through [`Failure::recorded`].

use crate::delivery_log::SkipReason;
use crate::job::{Channel, JobError};
use crate::provider::{Disposition, ErrorKind, ProviderError, ProviderKind};
use std::fmt;
use std::time::Duration;

#[derive(Debug, Clone)]
pub enum Failure {
    /// A provider answered (or could not be reached), as its adapter
    /// classified it.
    Provider(ProviderError),
    /// A chain step passed over without a call.
    Skipped(Skip),
    /// The tenant's configuration could not be read, or one of its entries
    /// cannot be used (credentials that do not decrypt, settings that do
    /// not build): the tenant directory's error.
    TenantConfig(ProviderError),
    /// No tenant chain and no system default for the channel.
    NoProvider,
    /// The tenant switched the channel off.
    ChannelDisabled(Channel),
    /// The job's `not_after` passed before it could be sent.
    NotAfterPassed,
    /// The recipient is on the tenant's suppression list (`reason`).
    Suppressed { channel: Channel, reason: String },
    /// The payload is not a valid job.
    Invalid(JobError),
    /// Handling the job panicked outside a provider adapter (a defect; an
    /// adapter's own panic is a `Provider` error of kind `internal`).
    Panicked,
}

/// Why a step was passed over, with what the attempt log needs.
#[derive(Debug, Clone)]
pub enum Skip {
    CircuitOpen,
    /// Paused after a 429, for `wait` more.
    Paused {
        wait: Duration,
    },
    /// At its rate limit for longer than a step may wait in place.
    AtRateLimit {
        provider: ProviderKind,
        wait: Duration,
    },
    /// The shared limiter (PostgreSQL) could not be asked.
    LimiterUnavailable(String),
}

impl Skip {
    pub fn reason(&self) -> SkipReason {
        match self {
            Skip::CircuitOpen => SkipReason::CircuitOpen,
            Skip::Paused { .. } => SkipReason::Paused,
            Skip::AtRateLimit { .. } => SkipReason::RateLimit,
            Skip::LimiterUnavailable(_) => SkipReason::LimiterUnavailable,
        }
    }
}

impl Failure {
    /// As the log row and the event carry it.
    pub fn recorded(&self) -> ProviderError {
        let new = |kind, code: &str, message: String| {
            ProviderError::new(kind, Some(code.into()), message)
        };
        match self {
            Failure::Provider(e) | Failure::TenantConfig(e) => e.clone(),
            Failure::Skipped(Skip::CircuitOpen) => new(
                ErrorKind::Transient,
                "circuit_open",
                "provider account skipped: its circuit is open".into(),
            ),
            Failure::Skipped(Skip::Paused { wait }) => new(
                ErrorKind::RateLimited,
                "paused",
                "provider account paused after a 429".into(),
            )
            .with_retry_after(Some(*wait)),
            Failure::Skipped(Skip::AtRateLimit { provider, wait }) => new(
                ErrorKind::RateLimited,
                "rate_limit",
                format!("{provider} account at its rate limit"),
            )
            .with_retry_after(Some(*wait)),
            Failure::Skipped(Skip::LimiterUnavailable(e)) => new(
                ErrorKind::Transient,
                "rate_limiter_unavailable",
                format!("rate limiter unavailable: {e}"),
            ),
            Failure::NoProvider => new(
                ErrorKind::Config,
                "no_provider",
                "no provider for this channel: the tenant has no chain and there is no system \
                 default (configure one with `outreach tenant set` or defaults.<channel> in the \
                 settings)"
                    .into(),
            ),
            Failure::ChannelDisabled(channel) => new(
                ErrorKind::Config,
                "channel_disabled",
                format!("{channel} is disabled for this tenant"),
            ),
            Failure::NotAfterPassed => new(
                ErrorKind::Expired,
                "not_after",
                "not_after passed before sending".into(),
            ),
            Failure::Suppressed { channel, reason } => new(
                ErrorKind::Recipient,
                "suppressed",
                format!(
                    "the recipient is on the tenant's {channel} suppression list ({reason}); \
                     no provider was called"
                ),
            ),
            Failure::Invalid(e) => new(ErrorKind::InvalidJob, e.reason(), e.to_string()),
            Failure::Panicked => new(
                ErrorKind::Internal,
                "panic",
                "handling this job panicked (a defect in outreach, counted in \
                 outreach_panics_total); not retried, as a provider may have been reached"
                    .into(),
            ),
        }
    }

    pub fn kind(&self) -> ErrorKind {
        match self {
            Failure::Provider(e) | Failure::TenantConfig(e) => e.kind,
            Failure::Skipped(Skip::CircuitOpen | Skip::LimiterUnavailable(_)) => {
                ErrorKind::Transient
            }
            Failure::Skipped(Skip::Paused { .. } | Skip::AtRateLimit { .. }) => {
                ErrorKind::RateLimited
            }
            Failure::NoProvider | Failure::ChannelDisabled(_) => ErrorKind::Config,
            Failure::NotAfterPassed => ErrorKind::Expired,
            Failure::Suppressed { .. } => ErrorKind::Recipient,
            Failure::Invalid(_) => ErrorKind::InvalidJob,
            Failure::Panicked => ErrorKind::Internal,
        }
    }

    pub fn disposition(&self) -> Disposition {
        self.kind().disposition()
    }

    /// When to come back, if the provider or the limiter said.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Failure::Provider(e) | Failure::TenantConfig(e) => e.retry_after,
            Failure::Skipped(Skip::Paused { wait } | Skip::AtRateLimit { wait, .. }) => Some(*wait),
            _ => None,
        }
    }

    /// Whether the provider said the recipient opted out (its adapter
    /// marked the error [`ProviderError::opted_out`]).
    pub fn opted_out(&self) -> bool {
        matches!(self, Failure::Provider(e) if e.opted_out)
    }

    /// The provider's (or the pipeline's) code, as recorded.
    pub fn code(&self) -> Option<String> {
        self.recorded().code
    }

    /// Which of two failures decides the job's fate: one worth waiting for
    /// (retry, then an account that may recover) beats one that needs a
    /// person; among equals the later one.
    pub fn most_useful(prev: Option<Failure>, e: Failure) -> Failure {
        let rank = |e: &Failure| match e.disposition() {
            Disposition::Retry => 2,
            Disposition::Fallback => 1,
            _ => 0,
        };
        match prev {
            Some(prev) if rank(&prev) > rank(&e) => prev,
            _ => e,
        }
    }
}

impl From<ProviderError> for Failure {
    fn from(e: ProviderError) -> Self {
        Failure::Provider(e)
    }
}

/// As recorded: `kind (code): message`.
impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.recorded().fmt(f)
    }
}

impl std::error::Error for Failure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Failure::Provider(e) | Failure::TenantConfig(e) => Some(e),
            Failure::Invalid(e) => Some(e),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_provider_failure_is_recorded_as_the_provider_said_it() {
        let e = ProviderError::new(ErrorKind::RateLimited, Some("429".into()), "slow down")
            .with_retry_after(Some(Duration::from_secs(7)));
        let f = Failure::from(e.clone());
        assert_eq!(f.recorded(), e);
        assert_eq!(f.retry_after(), Some(Duration::from_secs(7)));
        assert!(std::error::Error::source(&f).is_some());
    }

    #[test]
    fn a_retryable_failure_outranks_one_that_needs_a_person() {
        let paused = Failure::Skipped(Skip::Paused {
            wait: Duration::from_secs(3),
        });
        let kept = Failure::most_useful(Some(paused), Failure::NoProvider);
        assert_eq!(kept.code().as_deref(), Some("paused"));
        let kept = Failure::most_useful(Some(Failure::NoProvider), Failure::NotAfterPassed);
        assert_eq!(kept.code().as_deref(), Some("not_after"));
    }
}
