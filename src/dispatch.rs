//! The dispatch policy: walk the provider chain with quick retries, then
//! decide the job's fate. [`decide`] is the one place that fate is chosen.

use crate::delivery_log::Attempt;
use crate::job::Job;
use crate::metrics as m;
use crate::provider::{Disposition, ProviderError, Receipt};
use crate::tenant::{ChainStep, ResolvedChannel};
use backon::{ExponentialBuilder, Retryable};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use time::OffsetDateTime;

/// Quick in-process retries: a few, jittered, well under a second in all.
/// Anything longer goes back to the broker (see `broker::Topology::tier_for`).
#[derive(Debug, Clone)]
pub struct QuickRetry {
    pub times: usize,
    pub base: Duration,
}

impl QuickRetry {
    /// Longest provider hint worth waiting for in process.
    const MAX_INLINE_WAIT: Duration = Duration::from_millis(500);

    fn backoff(&self) -> ExponentialBuilder {
        ExponentialBuilder::default()
            .with_min_delay(self.base)
            .with_max_delay(Self::MAX_INLINE_WAIT)
            .with_max_times(self.times)
            .with_jitter()
    }
}

/// What the chain did with a job.
#[derive(Debug)]
pub struct Report {
    pub outcome: Result<(StepInfo, Receipt), ProviderError>,
    pub attempts: Vec<Attempt>,
}

/// Which chain step answered.
#[derive(Debug, Clone)]
pub struct StepInfo {
    pub kind: crate::provider::ProviderKind,
    pub step: u16,
}

/// Send through the chain: primary, fallbacks, system default.
pub async fn dispatch(job: &Job, chain: &ResolvedChannel, quick: &QuickRetry) -> Report {
    let attempts = Mutex::new(Vec::new());
    let mut last_err: Option<ProviderError> = None;
    for step in &chain.steps {
        match send_with_quick_retries(job, step, quick, &attempts).await {
            Ok(receipt) => {
                let info = StepInfo {
                    kind: step.kind,
                    step: step.step,
                };
                return Report {
                    outcome: Ok((info, receipt)),
                    attempts: attempts.into_inner().unwrap_or_default(),
                };
            }
            // Bad recipient or content: no other provider would do better.
            Err(e) if e.disposition() == Disposition::GiveUp => {
                return Report {
                    outcome: Err(e),
                    attempts: attempts.into_inner().unwrap_or_default(),
                };
            }
            Err(e) => {
                tracing::info!(job_id = %job.id, provider = %step.kind, step = step.step, error = %e, "moving down the chain");
                // Keep the most useful error: a retry hint beats a credential problem.
                last_err = Some(match last_err {
                    Some(prev)
                        if prev.disposition() == Disposition::Retry
                            && e.disposition() != Disposition::Retry =>
                    {
                        prev
                    }
                    _ => e,
                });
            }
        }
    }
    let err = last_err.unwrap_or_else(|| {
        ProviderError::new(
            crate::provider::ErrorKind::Config,
            Some("no_provider".into()),
            "no provider configured for this channel",
        )
    });
    Report {
        outcome: Err(err),
        attempts: attempts.into_inner().unwrap_or_default(),
    }
}

async fn send_with_quick_retries(
    job: &Job,
    step: &ChainStep,
    quick: &QuickRetry,
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
        attempts.lock().expect("not poisoned").push(Attempt {
            provider: step.kind,
            step: step.step,
            kind: err.map(|e| e.kind),
            code: err.and_then(|e| e.code.clone()),
            at: OffsetDateTime::now_utc(),
        });
        result
    };
    once.retry(quick.backoff())
        .when(|e: &ProviderError| {
            e.disposition() == Disposition::Retry
                && e.retry_after
                    .is_none_or(|d| d <= QuickRetry::MAX_INLINE_WAIT)
        })
        .adjust(|e: &ProviderError, d| {
            Some(
                e.retry_after
                    .map_or(d.unwrap_or_default(), |h| h.max(d.unwrap_or_default())),
            )
        })
        .await
}

/// A job's fate after one round through the chain.
#[derive(Debug)]
pub enum Fate {
    Sent {
        info: StepInfo,
        receipt: Receipt,
    },
    /// Back to the broker for `delay_secs`.
    Retry {
        error: ProviderError,
        delay_secs: u64,
    },
    /// Final failure; `reason` is the dead-letter reason code.
    Failed {
        error: ProviderError,
        reason: &'static str,
    },
    Expired {
        error: ProviderError,
    },
}

/// Limits that end retries.
#[derive(Debug, Clone)]
pub struct RetryBudget {
    pub max_attempts: u32,
    pub max_age: Duration,
}

/// Decide what happens after round `attempt` (1-based) of a job first seen
/// `age` ago. `tier_for(retry_number, hint)` picks the broker delay.
pub fn decide(
    outcome: Result<(StepInfo, Receipt), ProviderError>,
    attempt: u32,
    age: Duration,
    not_after: Option<OffsetDateTime>,
    budget: &RetryBudget,
    tier_for: impl Fn(u32, Option<Duration>) -> u64,
) -> Fate {
    let error = match outcome {
        Ok((info, receipt)) => return Fate::Sent { info, receipt },
        Err(e) => e,
    };
    match error.disposition() {
        Disposition::GiveUp => {
            let reason = error.kind.as_str();
            Fate::Failed { error, reason }
        }
        Disposition::Retry | Disposition::Fallback => {
            let delay_secs = tier_for(attempt, error.retry_after);
            let next_at = age + Duration::from_secs(delay_secs);
            let past_not_after = not_after
                .is_some_and(|t| OffsetDateTime::now_utc() + Duration::from_secs(delay_secs) > t);
            if attempt >= budget.max_attempts {
                Fate::Failed {
                    error,
                    reason: "max_attempts",
                }
            } else if next_at > budget.max_age || past_not_after {
                Fate::Expired { error }
            } else {
                Fate::Retry { error, delay_secs }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::{ErrorKind, ProviderKind};

    fn budget() -> RetryBudget {
        RetryBudget {
            max_attempts: 3,
            max_age: Duration::from_secs(3600),
        }
    }
    fn err(kind: ErrorKind) -> Result<(StepInfo, Receipt), ProviderError> {
        Err(ProviderError::new(kind, None, "x"))
    }

    #[test]
    fn a_recipient_error_fails_at_once() {
        let f = decide(
            err(ErrorKind::Recipient),
            1,
            Duration::ZERO,
            None,
            &budget(),
            |_, _| 5,
        );
        assert!(matches!(
            f,
            Fate::Failed {
                reason: "recipient",
                ..
            }
        ));
    }

    #[test]
    fn a_transient_error_is_retried_until_max_attempts() {
        assert!(matches!(
            decide(
                err(ErrorKind::Transient),
                2,
                Duration::ZERO,
                None,
                &budget(),
                |_, _| 5
            ),
            Fate::Retry { delay_secs: 5, .. }
        ));
        assert!(matches!(
            decide(
                err(ErrorKind::Transient),
                3,
                Duration::ZERO,
                None,
                &budget(),
                |_, _| 5
            ),
            Fate::Failed {
                reason: "max_attempts",
                ..
            }
        ));
    }

    #[test]
    fn a_retry_that_would_land_past_max_age_or_not_after_expires() {
        let f = decide(
            err(ErrorKind::Transient),
            1,
            Duration::from_secs(3599),
            None,
            &budget(),
            |_, _| 5,
        );
        assert!(matches!(f, Fate::Expired { .. }));
        let soon = OffsetDateTime::now_utc() + Duration::from_secs(1);
        assert!(matches!(
            decide(
                err(ErrorKind::Transient),
                1,
                Duration::ZERO,
                Some(soon),
                &budget(),
                |_, _| 5
            ),
            Fate::Expired { .. }
        ));
    }

    #[test]
    fn success_is_sent() {
        let ok = Ok((
            StepInfo {
                kind: ProviderKind::Sandbox,
                step: 0,
            },
            Receipt::default(),
        ));
        assert!(matches!(
            decide(ok, 1, Duration::ZERO, None, &budget(), |_, _| 5),
            Fate::Sent { .. }
        ));
    }
}
