//! Walk the provider chain (tenant primary, tenant fallbacks, system
//! default) from the step [`super::admit`] found usable: pass over steps that
//! cannot be used now, call the rest with quick retries
//! ([`super::retry`]), pause an account that answered 429, and move down
//! on failures another provider may not have. Every call and every step
//! passed over goes into the job's attempt log.

use super::failure::{Failure, Skip};
use super::fate::StepInfo;
use super::retry::QuickRetry;
use crate::circuit::Breakers;
use crate::delivery_log::{Attempt, SkipReason};
use crate::job::Job;
use crate::metrics as m;
use crate::provider::{Disposition, ErrorKind, ProviderError, Receipt};
use crate::ratelimit::{RateLimiter, Take};
use crate::tenant::{ChainStep, ResolvedChannel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use time::OffsetDateTime;

/// How a round goes through the chain: quick retries, and (in workers)
/// rate limits, 429 pauses and circuit breakers.
pub struct Policy {
    pub quick: QuickRetry,
    pub limiter: Option<Arc<RateLimiter>>,
    pub breakers: Option<Arc<Breakers>>,
    /// Longest rate-limit wait inside a round (for a fallback step).
    pub max_inline_wait: Duration,
}

/// What the chain did with a job.
#[derive(Debug)]
pub struct Report {
    pub outcome: Result<(StepInfo, Receipt), Failure>,
    /// Every provider call and every step passed over, in order.
    pub attempts: Vec<Attempt>,
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

    /// Send through the chain from an admitted step (`from`, with the steps
    /// `skipped` before it): primary, fallbacks, system default.
    pub async fn walk(
        &self,
        job: &Job,
        chain: &ResolvedChannel,
        from: usize,
        skipped_before: Vec<Attempt>,
    ) -> Report {
        let attempts = Mutex::new(skipped_before);
        let mut last_err: Option<Failure> = None;
        for (i, step) in chain.steps.iter().enumerate().skip(from) {
            note_unusable(
                chain,
                step.step,
                &mut attempts.lock().expect("not poisoned"),
            );
            if i > from
                && let Err(skip) = self.ready(job, step).await
            {
                pass_over(
                    step,
                    skip,
                    &mut attempts.lock().expect("not poisoned"),
                    &mut last_err,
                );
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
                        outcome: Err(e.into()),
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
                    last_err = Some(Failure::most_useful(last_err, e.into()));
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
    async fn ready(&self, job: &Job, step: &ChainStep) -> Result<(), Skip> {
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
                        return Err(Skip::Paused { wait });
                    }
                    Ok(Take::Wait { wait, .. }) if Instant::now() + wait <= deadline => {
                        metrics::counter!(m::RATE_LIMITED, "channel" => job.channel.as_str())
                            .increment(1);
                        tokio::time::sleep(wait).await;
                    }
                    Ok(Take::Wait { wait, .. }) => {
                        note_skip(step, SkipReason::RateLimit);
                        return Err(Skip::AtRateLimit {
                            provider: step.kind,
                            wait,
                        });
                    }
                    Err(e) => return Err(Skip::LimiterUnavailable(e.to_string())),
                }
            }
        }
        if !self.breaker_allows(step) {
            return Err(Skip::CircuitOpen);
        }
        Ok(())
    }

    /// The step's breaker lets a call through (in half-open state, takes a
    /// probe slot); when not, the skip is noted.
    pub(super) fn breaker_allows(&self, step: &ChainStep) -> bool {
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
    pub(super) fn skip(&self, step: &ChainStep) -> Option<Skip> {
        let skip = if self
            .breakers
            .as_ref()
            .is_some_and(|b| b.is_open(&step.account))
        {
            Skip::CircuitOpen
        } else {
            let wait = self.limiter.as_ref()?.paused_for(&step.account)?;
            Skip::Paused { wait }
        };
        note_skip(step, skip.reason());
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
}

/// Send with quick retries only (no limits, no breakers): `tenant test` and
/// the admin API's test send.
pub async fn walk_without_limits(job: &Job, chain: &ResolvedChannel, quick: &QuickRetry) -> Report {
    Policy::plain(quick.clone())
        .walk(job, chain, 0, Vec::new())
        .await
}

/// Pass over `step` without a call: its attempt-log entry, and its failure
/// kept in `last_err` if it is the most useful so far.
pub(super) fn pass_over(
    step: &ChainStep,
    skip: Skip,
    log: &mut Vec<Attempt>,
    last_err: &mut Option<Failure>,
) {
    let reason = skip.reason();
    let failure = Failure::Skipped(skip);
    log.push(Attempt {
        provider: step.kind,
        step: step.step,
        kind: Some(failure.kind()),
        code: failure.code(),
        at: OffsetDateTime::now_utc(),
        skipped: Some(reason),
    });
    *last_err = Some(Failure::most_useful(last_err.take(), failure));
}

/// The chain's unusable entries numbered below `below` that are not yet in
/// `log` (entries are sorted by step), appended to it.
pub(super) fn note_unusable(chain: &ResolvedChannel, below: u16, log: &mut Vec<Attempt>) {
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
/// are added to it, and the job's failure is the most useful of `last_err`
/// and theirs (`no_provider` when there was nothing at all).
pub(super) fn chain_exhausted(
    chain: &ResolvedChannel,
    last_err: Option<Failure>,
    log: &mut Vec<Attempt>,
) -> Failure {
    note_unusable(chain, u16::MAX, log);
    chain
        .unusable
        .iter()
        .map(|u| Failure::TenantConfig(u.error.clone()))
        .fold(last_err, |acc, e| Some(Failure::most_useful(acc, e)))
        .unwrap_or(Failure::NoProvider)
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

pub(super) fn note_skip(step: &ChainStep, reason: SkipReason) {
    metrics::counter!(m::STEPS_SKIPPED, "provider" => step.kind.as_str(), "reason" => reason.as_str())
        .increment(1);
    tracing::debug!(account = %step.account, provider = %step.kind, reason = reason.as_str(), "skipping chain step");
}
