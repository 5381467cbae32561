//! Retries, both kinds: quick ones in process, within one chain step
//! ([`QuickRetry`], jittered, well under a second in all), and the delay
//! tiers a job goes back to the broker through between rounds
//! ([`tier_for`]), bounded by [`RetryBudget`]. Which errors are retried at
//! all is [`super::fate`]'s table.

use super::chain::Policy;
use crate::circuit::Verdict;
use crate::delivery_log::Attempt;
use crate::job::Job;
use crate::metrics as m;
use crate::provider::{Disposition, ProviderError, Receipt};
use crate::tenant::ChainStep;
use backon::{ExponentialBuilder, Retryable};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use time::OffsetDateTime;

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

impl Policy {
    /// One step: the first call, then at most `quick.times` more while the
    /// error is retryable in place (transient, or a wait hint under
    /// [`QuickRetry::MAX_INLINE_WAIT`]) and the account's circuit is closed.
    /// Every call goes into `attempts`, the breaker and the metrics.
    pub(super) async fn send_with_quick_retries(
        &self,
        job: &Job,
        step: &ChainStep,
        attempts: &Mutex<Vec<Attempt>>,
    ) -> Result<Receipt, ProviderError> {
        let once = || async {
            let started = Instant::now();
            let result = step.provider.send(job).await;
            let outcome = match &result {
                Ok(_) => "ok",
                Err(e) => e.kind.as_str(),
            };
            metrics::histogram!(m::SEND_DURATION, "channel" => job.channel.as_str(), "provider" => step.kind.as_str(), "outcome" => outcome)
                .record(started.elapsed().as_secs_f64());
            metrics::counter!(m::PROVIDER_CALLS, "provider" => step.kind.as_str(), "outcome" => outcome).increment(1);
            let err = result.as_ref().err();
            if let Some(b) = &self.breakers {
                b.record(&step.account, step.kind, Verdict::of_result(err));
            }
            attempts.lock().expect("not poisoned").push(Attempt {
                provider: step.kind,
                step: step.step,
                kind: err.map(|e| e.kind),
                code: err.and_then(|e| e.code.clone()),
                at: OffsetDateTime::now_utc(),
                skipped: None,
            });
            result
        };
        once.retry(self.quick.backoff())
            .when(|e: &ProviderError| {
                e.disposition() == Disposition::Retry
                    && e.retry_after
                        .is_none_or(|d| d <= QuickRetry::MAX_INLINE_WAIT)
                    // An account whose circuit just opened gets no more calls.
                    && !self
                        .breakers
                        .as_ref()
                        .is_some_and(|b| b.is_open(&step.account))
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
