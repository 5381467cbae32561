//! Retries, both kinds: quick ones in process, within one chain step
//! ([`QuickRetry`], jittered, well under a second in all), and the delay
//! tiers a job goes back to the broker through between rounds
//! ([`tier_for`]), bounded by [`RetryBudget`]. Which errors are retried at
//! all is [`super::fate`]'s table.
//!
//! A leaf: it knows provider errors and time, nothing of chains, accounts
//! or jobs ([`super::chain`] brings those to [`QuickRetry::run`]).

use crate::provider::{Disposition, ProviderError};
use backon::{ExponentialBuilder, Retryable};
use std::future::Future;
use std::time::Duration;

/// Quick in-process retries: `times` more calls after the first, jittered,
/// well under a second in all. Anything longer goes back to the broker
/// ([`tier_for`]). One provider call is bounded by `providers.timeout_secs`,
/// so one step takes at most `1 + times` of those.
#[derive(Debug, Clone)]
pub struct QuickRetry {
    pub times: usize,
    pub base: Duration,
}

impl QuickRetry {
    /// Longest provider hint worth waiting for in process.
    pub const MAX_INLINE_WAIT: Duration = Duration::from_millis(500);

    fn backoff(&self) -> ExponentialBuilder {
        ExponentialBuilder::default()
            .with_min_delay(self.base)
            .with_max_delay(Self::MAX_INLINE_WAIT)
            .with_max_times(self.times)
            .with_jitter()
    }
}

/// Limits that end retries through the broker.
#[derive(Debug, Clone)]
pub struct RetryBudget {
    pub max_attempts: u32,
    pub max_age: Duration,
}

/// The delay tier (seconds, from `tiers`, ascending) for the n-th retry:
/// the n-th tier (the last repeats), raised to the first tier that covers
/// the provider's hint.
pub fn tier_for(tiers: &[u64], retry_number: u32, at_least: Option<Duration>) -> u64 {
    let last = *tiers.last().expect("at least one retry tier");
    let idx = (retry_number.saturating_sub(1) as usize).min(tiers.len() - 1);
    let tier = tiers[idx];
    match at_least {
        Some(hint) if hint.as_secs_f64().ceil() as u64 > tier => {
            let need = hint.as_secs_f64().ceil() as u64;
            tiers.iter().copied().find(|t| *t >= need).unwrap_or(last)
        }
        _ => tier,
    }
}

impl QuickRetry {
    /// Call `once`, then at most `times` more while the error is retryable
    /// in place (transient, or a wait hint under [`Self::MAX_INLINE_WAIT`])
    /// and `still_worth` it (the caller's say: the account's circuit still
    /// closed). A longer provider hint than our own delay is honoured.
    pub async fn run<T, Fut>(
        &self,
        once: impl FnMut() -> Fut,
        still_worth: impl Fn(&ProviderError) -> bool,
    ) -> Result<T, ProviderError>
    where
        Fut: Future<Output = Result<T, ProviderError>>,
    {
        once.retry(self.backoff())
            .when(|e: &ProviderError| {
                e.disposition() == Disposition::Retry
                    && e.retry_after.is_none_or(|d| d <= Self::MAX_INLINE_WAIT)
                    && still_worth(e)
            })
            // The provider's hint, if longer than our own delay. `None`
            // means the retries are used up: it must stay `None`.
            .adjust(|e: &ProviderError, d| d.map(|d| e.retry_after.map_or(d, |h| h.max(d))))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_retry_waits_the_next_tier_and_the_last_tier_repeats() {
        let t = [5, 30, 120];
        assert_eq!(
            [1, 2, 3, 4, 9].map(|n| tier_for(&t, n, None)),
            [5, 30, 120, 120, 120]
        );
    }

    #[test]
    fn retry_after_raises_the_tier_to_the_first_that_covers_it() {
        let t = [5, 30, 120];
        assert_eq!(tier_for(&t, 1, Some(Duration::from_secs(2))), 5);
        assert_eq!(tier_for(&t, 1, Some(Duration::from_secs(6))), 30);
        assert_eq!(tier_for(&t, 1, Some(Duration::from_secs(9999))), 120);
    }
}
