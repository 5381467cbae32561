//! The dispatch policy: [`Policy::admit`] a job (rate limits, paused
//! accounts, open circuits), walk the provider chain with quick retries
//! ([`Policy::dispatch`]), then [`decide`] the job's fate, the one place that
//! fate is chosen.

use crate::circuit::{Breakers, Verdict};
use crate::delivery_log::{Attempt, SkipReason};
use crate::job::Job;
use crate::metrics as m;
use crate::provider::{Disposition, ErrorKind, ProviderError, Receipt};
use crate::ratelimit::{LimitSet, RateLimiter, Take};
use crate::tenant::{ChainStep, ResolvedChannel};
use backon::{ExponentialBuilder, Retryable};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use time::OffsetDateTime;

/// Quick in-process retries: `times` more calls after the first, jittered,
/// well under a second in all. Anything longer goes back to the broker (see
/// `broker::Topology::tier_for`). One provider call is bounded by
/// `providers.timeout_secs`, so one step takes at most `1 + times` of those.
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

/// How a round goes through the chain: quick retries, and (in workers)
/// rate limits, 429 pauses and circuit breakers.
pub struct Policy {
    pub quick: QuickRetry,
    pub limiter: Option<Arc<RateLimiter>>,
    pub breakers: Option<Arc<Breakers>>,
    /// Longest rate-limit wait inside a round (for a fallback step).
    pub max_inline_wait: Duration,
}

/// May a job start its round? Steps passed over on the way are in
/// `skipped`, for the job's attempt log.
#[derive(Debug)]
pub enum Admission {
    /// Send from `chain.steps[from]` on; that step's sends (tenant's and
    /// account's) are already taken.
    Go { from: usize, skipped: Vec<Attempt> },
    /// The tenant's or the first usable account's limit is full.
    Wait(Duration),
    /// No step is usable now (circuits open, accounts paused, entries
    /// unusable, or no provider at all).
    Blocked {
        error: ProviderError,
        skipped: Vec<Attempt>,
    },
}

/// What the chain did with a job.
#[derive(Debug)]
pub struct Report {
    pub outcome: Result<(StepInfo, Receipt), ProviderError>,
    /// Every provider call and every step passed over, in order.
    pub attempts: Vec<Attempt>,
}

/// Which chain step answered.
#[derive(Debug, Clone)]
pub struct StepInfo {
    pub kind: crate::provider::ProviderKind,
    pub step: u16,
}

/// The attempt-log entry of a step passed over without a call.
fn skipped(step: &ChainStep, reason: SkipReason, error: &ProviderError) -> Attempt {
    Attempt {
        provider: step.kind,
        step: step.step,
        kind: Some(error.kind),
        code: error.code.clone(),
        at: OffsetDateTime::now_utc(),
        skipped: Some(reason),
    }
}

/// The chain's unusable entries numbered below `below` that are not yet in
/// `log` (entries are sorted by step), appended to it.
fn note_unusable(chain: &ResolvedChannel, below: u16, log: &mut Vec<Attempt>) {
    for u in &chain.unusable {
        let noted = log
            .iter()
            .any(|a| a.step == u.step && a.skipped == Some(SkipReason::Unusable));
        if u.step < below && !noted {
            metrics::counter!(m::STEPS_SKIPPED, "provider" => u.kind.as_str(), "reason" => SkipReason::Unusable.as_str())
                .increment(1);
            log.push(Attempt {
                provider: u.kind,
                step: u.step,
                kind: Some(u.error.kind),
                code: u.error.code.clone(),
                at: OffsetDateTime::now_utc(),
                skipped: Some(SkipReason::Unusable),
            });
        }
    }
}

/// The chain ran out without a send: the unusable entries not yet in `log`
/// are added to it, and the job's error is the most useful of `last_err` and
/// theirs (`no_provider` when there was nothing at all).
fn chain_exhausted(
    chain: &ResolvedChannel,
    last_err: Option<ProviderError>,
    log: &mut Vec<Attempt>,
) -> ProviderError {
    note_unusable(chain, u16::MAX, log);
    chain
        .unusable
        .iter()
        .map(|u| u.error.clone())
        .fold(last_err, |acc, e| Some(keep_most_useful(acc, e)))
        .unwrap_or_else(no_provider_error)
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
        let mut log = Vec::new();
        let mut last_err: Option<ProviderError> = None;
        for (i, step) in chain.steps.iter().enumerate() {
            note_unusable(chain, step.step, &mut log);
            if let Some((reason, e)) = self.skip(step) {
                log.push(skipped(step, reason, &e));
                last_err = Some(keep_most_useful(last_err, e));
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
                        let e = paused_error(wait);
                        note_skip(step, SkipReason::Paused);
                        log.push(skipped(step, SkipReason::Paused, &e));
                        last_err = Some(keep_most_useful(last_err, e));
                        continue;
                    }
                    Take::Wait { wait, .. } => return Ok(Admission::Wait(wait)),
                }
            }
            if !self.breaker_allows(step) {
                let e = circuit_open_error();
                log.push(skipped(step, SkipReason::CircuitOpen, &e));
                last_err = Some(keep_most_useful(last_err, e));
                continue;
            }
            return Ok(Admission::Go {
                from: i,
                skipped: log,
            });
        }
        let error = chain_exhausted(chain, last_err, &mut log);
        Ok(Admission::Blocked {
            error,
            skipped: log,
        })
    }

    /// Send through the chain from an admitted step (`from`, with the steps
    /// `skipped` before it): primary, fallbacks, system default.
    pub async fn dispatch(
        &self,
        job: &Job,
        chain: &ResolvedChannel,
        from: usize,
        skipped_before: Vec<Attempt>,
    ) -> Report {
        let attempts = Mutex::new(skipped_before);
        let log = |a: Attempt| attempts.lock().expect("not poisoned").push(a);
        let mut last_err: Option<ProviderError> = None;
        for (i, step) in chain.steps.iter().enumerate().skip(from) {
            note_unusable(
                chain,
                step.step,
                &mut attempts.lock().expect("not poisoned"),
            );
            if i > from
                && let Err((reason, e)) = self.ready(job, step).await
            {
                log(skipped(step, reason, &e));
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
                // Bad recipient or content, or the recipient's side asked us
                // to come back later: no other provider would do better now.
                Err(e) if matches!(e.disposition(), Disposition::GiveUp | Disposition::Defer) => {
                    return Report {
                        outcome: Err(e),
                        attempts: attempts.into_inner().unwrap_or_default(),
                    };
                }
                Err(e) => {
                    if e.kind == ErrorKind::RateLimited {
                        self.pause(step, &e).await;
                    }
                    let e = if e.kind == ErrorKind::Config {
                        config_trouble(job, step, e)
                    } else {
                        e
                    };
                    tracing::info!(job_id = %job.id, provider = %step.kind, step = step.step, error = %e, "moving down the chain");
                    last_err = Some(keep_most_useful(last_err, e));
                }
            }
        }
        let mut attempts = attempts.into_inner().unwrap_or_default();
        let err = chain_exhausted(chain, last_err, &mut attempts);
        Report {
            outcome: Err(err),
            attempts,
        }
    }

    /// A step after the admitted one: usable now, within `max_inline_wait`?
    async fn ready(&self, job: &Job, step: &ChainStep) -> Result<(), (SkipReason, ProviderError)> {
        if let Some(skip) = self.skip(step) {
            return Err(skip);
        }
        if let Some(limiter) = &self.limiter {
            let deadline = Instant::now() + self.max_inline_wait;
            loop {
                match limiter.take(&[&step.limits]).await {
                    Ok(Take::Granted) => break,
                    Ok(Take::Wait { wait, paused: true }) => {
                        note_skip(step, SkipReason::Paused);
                        return Err((SkipReason::Paused, paused_error(wait)));
                    }
                    Ok(Take::Wait { wait, .. }) if Instant::now() + wait <= deadline => {
                        metrics::counter!(m::RATE_LIMITED, "channel" => job.channel.as_str())
                            .increment(1);
                        tokio::time::sleep(wait).await;
                    }
                    Ok(Take::Wait { wait, .. }) => {
                        note_skip(step, SkipReason::RateLimit);
                        return Err((
                            SkipReason::RateLimit,
                            ProviderError::new(
                                ErrorKind::RateLimited,
                                Some("rate_limit".into()),
                                format!("{} account at its rate limit", step.kind),
                            )
                            .with_retry_after(Some(wait)),
                        ));
                    }
                    Err(e) => {
                        return Err((
                            SkipReason::RateLimit,
                            ProviderError::new(
                                ErrorKind::Transient,
                                Some("rate_limiter_unavailable".into()),
                                format!("rate limiter unavailable: {e}"),
                            ),
                        ));
                    }
                }
            }
        }
        if !self.breaker_allows(step) {
            return Err((SkipReason::CircuitOpen, circuit_open_error()));
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
            note_skip(step, SkipReason::CircuitOpen);
        }
        allowed
    }

    /// Why the step must be passed over now (open circuit, paused account).
    fn skip(&self, step: &ChainStep) -> Option<(SkipReason, ProviderError)> {
        let skip = if self
            .breakers
            .as_ref()
            .is_some_and(|b| b.is_open(&step.account))
        {
            (SkipReason::CircuitOpen, circuit_open_error())
        } else {
            let paused = self.limiter.as_ref()?.paused_for(&step.account)?;
            (SkipReason::Paused, paused_error(paused))
        };
        note_skip(step, skip.0);
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

    /// One step: the first call, then at most `quick.times` more while the
    /// error is retryable in place (transient, or a wait hint under
    /// [`QuickRetry::MAX_INLINE_WAIT`]) and the account's circuit is closed.
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

/// Send with quick retries only (no limits, no breakers): `tenant test` and
/// the admin API's test send.
pub async fn dispatch(job: &Job, chain: &ResolvedChannel, quick: &QuickRetry) -> Report {
    Policy::plain(quick.clone())
        .dispatch(job, chain, 0, Vec::new())
        .await
}

/// A configuration error from a step, made to name its account (the
/// adapter's message already names the fix), and counted for alerts.
fn config_trouble(job: &Job, step: &ChainStep, e: ProviderError) -> ProviderError {
    metrics::counter!(m::PROVIDER_CONFIG_ERRORS, "channel" => job.channel.as_str(), "provider" => step.kind.as_str())
        .increment(1);
    tracing::warn!(job_id = %job.id, account = %step.account, provider = %step.kind, error = %e,
        "provider account misconfigured: needs a person");
    let message = format!(
        "account {} (step {}): {}",
        step.account, step.step, e.message
    );
    ProviderError { message, ..e }
}

fn note_skip(step: &ChainStep, reason: SkipReason) {
    metrics::counter!(m::STEPS_SKIPPED, "provider" => step.kind.as_str(), "reason" => reason.as_str())
        .increment(1);
    tracing::debug!(account = %step.account, provider = %step.kind, reason = reason.as_str(), "skipping chain step");
}

fn circuit_open_error() -> ProviderError {
    ProviderError::new(
        ErrorKind::Transient,
        Some("circuit_open".into()),
        "provider account skipped: its circuit is open",
    )
}

fn paused_error(wait: Duration) -> ProviderError {
    ProviderError::new(
        ErrorKind::RateLimited,
        Some("paused".into()),
        "provider account paused after a 429",
    )
    .with_retry_after(Some(wait))
}

/// A channel with no step at all: no tenant chain and no system default.
fn no_provider_error() -> ProviderError {
    ProviderError::new(
        ErrorKind::Config,
        Some("no_provider".into()),
        "no provider for this channel: the tenant has no chain and there is no system default \
         (configure one with `outreach tenant set` or defaults.<channel> in the settings)",
    )
}

/// Keep the most useful error for the job's fate: one worth waiting for
/// (retry, then an account that may recover) beats one that needs a person;
/// among equals the later one.
fn keep_most_useful(prev: Option<ProviderError>, e: ProviderError) -> ProviderError {
    let rank = |e: &ProviderError| match e.disposition() {
        Disposition::Retry => 2,
        Disposition::Fallback => 1,
        _ => 0,
    };
    match prev {
        Some(prev) if rank(&prev) > rank(&e) => prev,
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
