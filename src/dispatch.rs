//! The dispatch policy: [`Policy::admit`] a job (rate limits, paused
//! accounts, open circuits), walk the provider chain with quick retries
//! ([`Policy::dispatch`]), then [`decide`] the job's fate, the one place that
//! fate is chosen.

use crate::circuit::{Breakers, Verdict};
use crate::delivery_log::Attempt;
use crate::job::Job;
use crate::metrics as m;
use crate::provider::{Disposition, ErrorKind, ProviderError, Receipt};
use crate::ratelimit::{LimitSet, RateLimiter, Take};
use crate::tenant::{ChainStep, ResolvedChannel};
use backon::{ExponentialBuilder, Retryable};
use std::sync::{Arc, Mutex};
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

/// How a round goes through the chain: quick retries, and (in workers)
/// rate limits, 429 pauses and circuit breakers.
pub struct Policy {
    pub quick: QuickRetry,
    pub limiter: Option<Arc<RateLimiter>>,
    pub breakers: Option<Arc<Breakers>>,
    /// Longest rate-limit wait inside a round (for a fallback step).
    pub max_inline_wait: Duration,
}

/// May a job start its round?
#[derive(Debug)]
pub enum Admission {
    /// Send from step `from` on; that step's sends (tenant's and account's)
    /// are already taken.
    Go { from: usize },
    /// The tenant's or the first usable account's limit is full.
    Wait(Duration),
    /// No step is usable now (circuits open, accounts paused).
    Blocked(ProviderError),
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

/// Why a step was passed over without a call.
enum Skip {
    CircuitOpen,
    Paused(Duration),
}

impl Policy {
    /// Quick retries only: `tenant test` and the admin API's test send.
    pub fn plain(quick: QuickRetry) -> Self {
        Self {
            quick,
            limiter: None,
            breakers: None,
            max_inline_wait: Duration::ZERO,
        }
    }

    /// Find the first usable step and take its sends. Called before the job
    /// is claimed, so a job that must wait costs nothing but this.
    pub async fn admit(&self, chain: &ResolvedChannel) -> Result<Admission, sqlx::Error> {
        let mut tenant_pending = true;
        let mut paused: Option<Duration> = None;
        for (i, step) in chain.steps.iter().enumerate() {
            if let Some(skip) = self.skip(step) {
                paused = paused_min(paused, &skip);
                continue;
            }
            if let Some(limiter) = &self.limiter {
                let sets: &[&LimitSet] = if tenant_pending {
                    &[&chain.limits, &step.limits]
                } else {
                    &[&step.limits]
                };
                match limiter.take(sets).await? {
                    Take::Granted => tenant_pending = false,
                    Take::Wait { wait, paused: true } => {
                        note_skip(step, &Skip::Paused(wait));
                        paused = paused_min(paused, &Skip::Paused(wait));
                        continue;
                    }
                    Take::Wait { wait, .. } => return Ok(Admission::Wait(wait)),
                }
            }
            if !self.breaker_allows(step) {
                continue;
            }
            return Ok(Admission::Go { from: i });
        }
        Ok(Admission::Blocked(blocked_error(chain, paused)))
    }

    /// Send through the chain from an admitted step: primary, fallbacks,
    /// system default.
    pub async fn dispatch(&self, job: &Job, chain: &ResolvedChannel, from: usize) -> Report {
        let attempts = Mutex::new(Vec::new());
        let mut last_err: Option<ProviderError> = None;
        for (i, step) in chain.steps.iter().enumerate().skip(from) {
            if i > from
                && let Err(e) = self.ready(step).await
            {
                last_err = Some(keep_most_useful(last_err, e));
                continue;
            }
            match self.send_with_quick_retries(job, step, &attempts).await {
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
                    if e.kind == ErrorKind::RateLimited {
                        self.pause(step, &e).await;
                    }
                    tracing::info!(job_id = %job.id, provider = %step.kind, step = step.step, error = %e, "moving down the chain");
                    last_err = Some(keep_most_useful(last_err, e));
                }
            }
        }
        let err = last_err.unwrap_or_else(|| blocked_error(chain, None));
        Report {
            outcome: Err(err),
            attempts: attempts.into_inner().unwrap_or_default(),
        }
    }

    /// A step after the admitted one: usable now, within `max_inline_wait`?
    async fn ready(&self, step: &ChainStep) -> Result<(), ProviderError> {
        if let Some(skip) = self.skip(step) {
            return Err(skip_error(&skip));
        }
        if let Some(limiter) = &self.limiter {
            let deadline = Instant::now() + self.max_inline_wait;
            loop {
                match limiter.take(&[&step.limits]).await {
                    Ok(Take::Granted) => break,
                    Ok(Take::Wait { wait, paused: true }) => {
                        note_skip(step, &Skip::Paused(wait));
                        return Err(skip_error(&Skip::Paused(wait)));
                    }
                    Ok(Take::Wait { wait, .. }) if Instant::now() + wait <= deadline => {
                        metrics::counter!(m::RATE_LIMITED, "scope" => "account").increment(1);
                        tokio::time::sleep(wait).await;
                    }
                    Ok(Take::Wait { wait, .. }) => {
                        return Err(ProviderError::new(
                            ErrorKind::RateLimited,
                            Some("rate_limit".into()),
                            format!("{} account at its rate limit", step.kind),
                        )
                        .with_retry_after(Some(wait)));
                    }
                    Err(e) => {
                        return Err(ProviderError::transient(format!(
                            "rate limiter unavailable: {e}"
                        )));
                    }
                }
            }
        }
        if !self.breaker_allows(step) {
            return Err(skip_error(&Skip::CircuitOpen));
        }
        Ok(())
    }

    /// The step's breaker lets a call through (in half-open state, takes a
    /// probe slot); when not, the skip is noted.
    fn breaker_allows(&self, step: &ChainStep) -> bool {
        let allowed = self
            .breakers
            .as_ref()
            .is_none_or(|b| b.allow(&step.account, step.kind));
        if !allowed {
            note_skip(step, &Skip::CircuitOpen);
        }
        allowed
    }

    fn skip(&self, step: &ChainStep) -> Option<Skip> {
        let skip = if self
            .breakers
            .as_ref()
            .is_some_and(|b| b.is_open(&step.account))
        {
            Skip::CircuitOpen
        } else {
            Skip::Paused(self.limiter.as_ref()?.paused_for(&step.account)?)
        };
        note_skip(step, &skip);
        Some(skip)
    }

    /// The provider said 429: stop using the account until its hint.
    async fn pause(&self, step: &ChainStep, e: &ProviderError) {
        let Some(limiter) = &self.limiter else { return };
        let pause = e.retry_after.unwrap_or(Duration::from_secs(1));
        metrics::counter!(m::PROVIDER_PAUSES, "provider" => step.kind.as_str()).increment(1);
        tracing::warn!(account = %step.account, provider = %step.kind, pause_ms = pause.as_millis() as u64,
            "provider rate-limited us: pausing the account");
        if let Err(err) = limiter.pause(&step.limits, pause).await {
            // This process still pauses it; others find out from their own 429.
            tracing::warn!(error = %err, "could not share the pause through the database");
        }
    }

    async fn send_with_quick_retries(
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
                b.record(&step.account, step.kind, Verdict::of(err.map(|e| e.kind)));
            }
            attempts.lock().expect("not poisoned").push(Attempt {
                provider: step.kind,
                step: step.step,
                kind: err.map(|e| e.kind),
                code: err.and_then(|e| e.code.clone()),
                at: OffsetDateTime::now_utc(),
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
            .adjust(|e: &ProviderError, d| {
                Some(
                    e.retry_after
                        .map_or(d.unwrap_or_default(), |h| h.max(d.unwrap_or_default())),
                )
            })
            .await
    }
}

/// Send with quick retries only (no limits, no breakers).
pub async fn dispatch(job: &Job, chain: &ResolvedChannel, quick: &QuickRetry) -> Report {
    Policy::plain(quick.clone()).dispatch(job, chain, 0).await
}

fn note_skip(step: &ChainStep, skip: &Skip) {
    let reason = match skip {
        Skip::CircuitOpen => "circuit_open",
        Skip::Paused(_) => "paused",
    };
    metrics::counter!(m::STEPS_SKIPPED, "provider" => step.kind.as_str(), "reason" => reason)
        .increment(1);
    tracing::debug!(account = %step.account, provider = %step.kind, reason, "skipping chain step");
}

fn paused_min(acc: Option<Duration>, skip: &Skip) -> Option<Duration> {
    match skip {
        Skip::Paused(d) => Some(acc.map_or(*d, |a| a.min(*d))),
        Skip::CircuitOpen => acc,
    }
}

fn skip_error(skip: &Skip) -> ProviderError {
    match skip {
        Skip::CircuitOpen => ProviderError::new(
            ErrorKind::Transient,
            Some("circuit_open".into()),
            "provider account skipped: its circuit is open",
        ),
        Skip::Paused(d) => ProviderError::new(
            ErrorKind::RateLimited,
            Some("paused".into()),
            "provider account paused after a 429",
        )
        .with_retry_after(Some(*d)),
    }
}

/// Why no step could be used.
fn blocked_error(chain: &ResolvedChannel, paused: Option<Duration>) -> ProviderError {
    if chain.steps.is_empty() {
        return ProviderError::new(
            ErrorKind::Config,
            Some("no_provider".into()),
            "no provider configured for this channel",
        );
    }
    match paused {
        Some(d) => skip_error(&Skip::Paused(d)),
        None => skip_error(&Skip::CircuitOpen),
    }
}

/// Keep the most useful error: a retry hint beats a credential problem.
fn keep_most_useful(prev: Option<ProviderError>, e: ProviderError) -> ProviderError {
    match prev {
        Some(prev)
            if prev.disposition() == Disposition::Retry
                && e.disposition() != Disposition::Retry =>
        {
            prev
        }
        _ => e,
    }
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

/// The dead-letter reason of a configuration failure: the specific codes
/// operators filter on, else `config`.
fn config_reason(e: &ProviderError) -> &'static str {
    match e.code.as_deref() {
        Some("no_provider") => "no_provider",
        Some("channel_disabled") => "channel_disabled",
        _ => "config",
    }
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
        // Waiting will not fix a configuration: fail now, naming it.
        Disposition::Reconfigure => {
            let reason = config_reason(&error);
            Fate::Failed { error, reason }
        }
        Disposition::Retry | Disposition::Fallback | Disposition::Defer => {
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
