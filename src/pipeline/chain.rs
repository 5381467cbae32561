//! Walk the provider chain (tenant primary, tenant fallbacks, system
//! default) from the step [`super::admit`] found usable: pass over steps that
//! cannot be used now, call the rest with quick retries
//! ([`super::retry`]), pause an account that answered 429, and move down
//! on failures another provider may not have. Every call and every step
//! passed over goes into the job's attempt log.
//!
//! [`Policy::check_step`] is the one answer to "may this step be tried now,
//! and how", for admit's first step and the chain's later ones alike.

use super::failure::{Failure, Skip};
use super::retry::QuickRetry;
use crate::circuit::{Breakers, Verdict};
use crate::delivery_log::{Attempt, SkipReason};
use crate::job::Job;
use crate::metrics as m;
use crate::provider::{Disposition, ErrorKind, ProviderError, ProviderKind, Receipt};
use crate::ratelimit::{LimitSet, RateLimiter, Take};
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

/// Which chain step answered.
#[derive(Debug, Clone)]
pub struct StepInfo {
    pub kind: ProviderKind,
    pub step: u16,
}

/// May a step be tried now, and how: [`Policy::check_step`]'s answer.
#[derive(Debug)]
pub enum Check {
    /// Call it: its sends are taken and its breaker lets the call through.
    Go,
    /// Its limit (the tenant's or the account's) is full for this long;
    /// nothing was taken. How long a caller may wait is its own: admit
    /// waits in place or moves the job to its held queue, the chain waits
    /// up to `max_inline_wait` and else passes the step over.
    Wait(Duration),
    /// Pass it over now, for this reason.
    Skip(Skip),
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

    /// May `step` be tried now? In order: an open circuit or a paused
    /// account passes it over (no limiter asked); then its sends are taken,
    /// with `tenant`'s when given (set to `None` once taken, so a later step
    /// does not take them again); then its breaker must let a call through
    /// (in half-open state this takes a probe slot).
    ///
    /// A limiter that cannot be asked (its database is down or slow) is the
    /// one answer [`Check::Skip`] with [`Skip::LimiterUnavailable`], for
    /// admit and the chain alike: a limit that cannot be checked is not
    /// assumed free, the step is passed over as `transient`, and a job whose
    /// every step was passed over comes back through a delay tier
    /// ([`super::fate`]). (An outage of the whole database hands the job
    /// back to the broker before that, at admit's suppression check or the
    /// claim: the limiter's answer changes nothing there.)
    pub async fn check_step(&self, step: &ChainStep, tenant: &mut Option<&LimitSet>) -> Check {
        if let Some(skip) = self.skip(step) {
            return Check::Skip(skip);
        }
        if let Some(limiter) = &self.limiter {
            let taken = match *tenant {
                Some(t) => limiter.take(&[t, &step.limits]).await,
                None => limiter.take(&[&step.limits]).await,
            };
            match taken {
                Ok(Take::Granted) => *tenant = None,
                Ok(Take::Wait { wait, paused: true }) => {
                    note_skip(step, SkipReason::Paused);
                    return Check::Skip(Skip::Paused { wait });
                }
                Ok(Take::Wait { wait, .. }) => return Check::Wait(wait),
                Err(e) => return Check::Skip(Skip::LimiterUnavailable(e.to_string())),
            }
        }
        if !self.breaker_allows(step) {
            return Check::Skip(Skip::CircuitOpen);
        }
        Check::Go
    }

    /// A step after the admitted one: [`Self::check_step`], waiting in place
    /// for its limit up to `max_inline_wait` in all.
    async fn ready(&self, job: &Job, step: &ChainStep) -> Result<(), Skip> {
        let deadline = Instant::now() + self.max_inline_wait;
        loop {
            match self.check_step(step, &mut None).await {
                Check::Go => return Ok(()),
                Check::Skip(skip) => return Err(skip),
                Check::Wait(wait) if Instant::now() + wait <= deadline => {
                    metrics::counter!(m::RATE_LIMITED, "channel" => job.channel.as_str())
                        .increment(1);
                    tokio::time::sleep(wait).await;
                }
                Check::Wait(wait) => {
                    note_skip(step, SkipReason::RateLimit);
                    return Err(Skip::AtRateLimit {
                        provider: step.kind,
                        wait,
                    });
                }
            }
        }
    }

    /// One step: the first call, then quick retries ([`QuickRetry::run`])
    /// while the account's circuit stays closed. Every call goes into
    /// `attempts`, the breaker and the metrics.
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
        // An account whose circuit just opened gets no more calls.
        let circuit_closed = |_: &ProviderError| {
            !self
                .breakers
                .as_ref()
                .is_some_and(|b| b.is_open(&step.account))
        };
        self.quick.run(once, circuit_closed).await
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
    fn skip(&self, step: &ChainStep) -> Option<Skip> {
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

fn note_skip(step: &ChainStep, reason: SkipReason) {
    metrics::counter!(m::STEPS_SKIPPED, "provider" => step.kind.as_str(), "reason" => reason.as_str())
        .increment(1);
    tracing::debug!(account = %step.account, provider = %step.kind, reason = reason.as_str(), "skipping chain step");
}

#[cfg(test)]
pub(super) mod tests {
    //! The chain's decisions with the process-local pieces a worker has
    //! (limiter without a database, breakers), and providers that always
    //! give one answer. Shared with admit's tests.

    use super::*;
    use crate::circuit::CircuitSettings;
    use crate::provider::Provider;
    use crate::ratelimit::Limit;
    use futures::FutureExt;

    /// What a provider answers, every time.
    pub type Answer = fn() -> Result<Receipt, ProviderError>;

    struct Says(Answer);

    #[async_trait::async_trait]
    impl Provider for Says {
        fn kind(&self) -> ProviderKind {
            ProviderKind::Sandbox
        }
        async fn send(&self, _: &Job) -> Result<Receipt, ProviderError> {
            (self.0)()
        }
    }

    pub fn ok() -> Result<Receipt, ProviderError> {
        Ok(Receipt::default())
    }
    fn said(kind: ErrorKind, code: &str) -> Result<Receipt, ProviderError> {
        Err(ProviderError::new(kind, Some(code.into()), "x"))
    }
    fn e503() -> Result<Receipt, ProviderError> {
        said(ErrorKind::Transient, "503")
    }
    fn e401() -> Result<Receipt, ProviderError> {
        said(ErrorKind::Config, "401")
    }
    fn e429() -> Result<Receipt, ProviderError> {
        Err(
            ProviderError::new(ErrorKind::RateLimited, Some("429".into()), "slow")
                .with_retry_after(Some(Duration::from_secs(30))),
        )
    }
    fn suspended() -> Result<Receipt, ProviderError> {
        said(ErrorKind::Provider, "suspended")
    }
    fn bad_number() -> Result<Receipt, ProviderError> {
        said(ErrorKind::Recipient, "21211")
    }
    fn greylisted() -> Result<Receipt, ProviderError> {
        said(ErrorKind::RecipientDeferred, "451")
    }

    /// Step `n` of tenant `t`'s sms chain, with its account's `limits`.
    pub fn step(n: u16, answer: Answer, limits: Vec<Limit>) -> ChainStep {
        let account: Arc<str> = format!("tenant:t:sms:{n}").into();
        ChainStep {
            provider: Arc::new(Says(answer)),
            kind: ProviderKind::Sandbox,
            step: n,
            is_system: false,
            limits: LimitSet::new(account.clone(), limits),
            account,
        }
    }

    /// Tenant `t`'s sms chain, with the tenant's `limits`.
    pub fn chain(steps: Vec<ChainStep>, limits: Vec<Limit>) -> ResolvedChannel {
        ResolvedChannel {
            enabled: true,
            steps,
            unusable: vec![],
            limits: LimitSet::new("tenant:t:sms", limits),
        }
    }

    /// One send an hour: the first is granted, the next waits.
    pub fn one_an_hour() -> Vec<Limit> {
        vec![Limit::new(1, Duration::from_secs(3600)).expect("non-zero")]
    }

    /// A worker's policy: no quick retries, no waiting in a round, a
    /// limiter without a database, breakers that open on one failure.
    pub fn policy() -> Policy {
        Policy {
            quick: QuickRetry {
                times: 0,
                base: Duration::from_millis(1),
            },
            limiter: Some(Arc::new(RateLimiter::new(None))),
            breakers: Some(Arc::new(Breakers::new(CircuitSettings {
                window_secs: 60,
                min_calls: 1,
                min_success_rate: 0.8,
                open_secs: 600,
                half_open_probes: 1,
            }))),
            max_inline_wait: Duration::ZERO,
        }
    }

    /// A limiter whose database refuses connections: an outage.
    pub fn policy_without_its_limiter() -> Policy {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .acquire_timeout(Duration::from_millis(200))
            .connect_lazy("postgres://postgres@127.0.0.1:1/none")
            .expect("a valid URL");
        Policy {
            limiter: Some(Arc::new(RateLimiter::new(Some(pool)))),
            ..policy()
        }
    }

    pub fn open_circuit(p: &Policy, s: &ChainStep) {
        let b = p.breakers.as_ref().expect("breakers");
        b.record(&s.account, s.kind, Verdict::Failure);
    }

    pub fn pause(p: &Policy, s: &ChainStep) {
        let l = p.limiter.as_ref().expect("limiter");
        l.pause_here(&s.account, Duration::from_secs(30));
    }

    /// A check's answer in a word, for the tables.
    fn word(c: &Check) -> &'static str {
        match c {
            Check::Go => "go",
            Check::Wait(_) => "wait",
            Check::Skip(Skip::CircuitOpen) => "skip: circuit open",
            Check::Skip(Skip::Paused { .. }) => "skip: paused",
            Check::Skip(Skip::AtRateLimit { .. }) => "skip: at rate limit",
            Check::Skip(Skip::LimiterUnavailable(_)) => "skip: limiter unavailable",
        }
    }

    fn job() -> Job {
        Job::decode(
            br#"{"version":1,"job_id":"j-1","tenant_id":"t","channel":"sms",
                "recipient":"+14155550100","content":{"text":"hi"}}"#,
        )
        .expect("valid job")
    }

    #[tokio::test]
    async fn a_step_is_tried_skipped_or_waited_for_by_one_check() {
        type Setup = fn(&Policy, &ChainStep);
        let nothing: Setup = |_, _| {};
        let spent: Setup = |p, s| {
            let l = p.limiter.as_ref().expect("limiter");
            // Without a database the limiter answers without waiting.
            let took = l.take(&[&s.limits]).now_or_never();
            assert!(matches!(took, Some(Ok(Take::Granted))));
        };
        let cases: [(&str, Setup, Vec<Limit>, &str); 5] = [
            ("a free account", nothing, vec![], "go"),
            (
                "an open circuit",
                open_circuit,
                vec![],
                "skip: circuit open",
            ),
            ("an account paused by a 429", pause, vec![], "skip: paused"),
            ("an account at its limit", spent, one_an_hour(), "wait"),
            ("an account with a free limit", nothing, one_an_hour(), "go"),
        ];
        for (what, setup, limits, want) in cases {
            let p = policy();
            let s = step(0, ok, limits);
            setup(&p, &s);
            let got = p.check_step(&s, &mut None).await;
            assert_eq!(word(&got), want, "{what}");
        }
    }

    #[tokio::test]
    async fn a_limiter_outage_passes_the_step_over_as_transient() {
        let p = policy_without_its_limiter();
        let s = step(0, ok, one_an_hour());
        let got = p.check_step(&s, &mut None).await;
        assert_eq!(word(&got), "skip: limiter unavailable");
        let Check::Skip(skip) = got else {
            unreachable!()
        };
        assert_eq!(Failure::Skipped(skip).kind(), ErrorKind::Transient);
    }

    #[tokio::test]
    async fn the_tenants_send_is_taken_with_the_first_step_granted_and_only_then() {
        let p = policy();
        let c = chain(vec![step(0, ok, vec![])], one_an_hour());
        let mut tenant = Some(&c.limits);
        pause(&p, &c.steps[0]);
        let got = p.check_step(&c.steps[0], &mut tenant).await;
        assert_eq!(word(&got), "skip: paused");
        assert!(tenant.is_some(), "a step passed over takes nothing");
        let free = step(1, ok, vec![]);
        assert_eq!(word(&p.check_step(&free, &mut tenant).await), "go");
        assert!(tenant.is_none(), "taken");
        let mut again = Some(&c.limits);
        assert_eq!(word(&p.check_step(&free, &mut again).await), "wait");
    }

    #[tokio::test]
    async fn the_chain_stops_or_moves_down_by_what_each_provider_said() {
        // What each step answers; the step that sent, or the kind of the
        // job's failure; how many providers were called.
        type Case = (&'static str, Vec<Answer>, Result<u16, ErrorKind>, usize);
        let cases: [Case; 8] = [
            ("primary sends", vec![ok, ok], Ok(0), 1),
            ("5xx: the next step", vec![e503, ok], Ok(1), 2),
            ("401: the next step", vec![e401, ok], Ok(1), 2),
            ("suspended: the next step", vec![suspended, ok], Ok(1), 2),
            ("429: the next step", vec![e429, ok], Ok(1), 2),
            (
                "bad recipient: stops",
                vec![bad_number, ok],
                Err(ErrorKind::Recipient),
                1,
            ),
            (
                "greylisted: stops",
                vec![greylisted, ok],
                Err(ErrorKind::RecipientDeferred),
                1,
            ),
            (
                "retry beats config",
                vec![e503, e401],
                Err(ErrorKind::Transient),
                2,
            ),
        ];
        for (what, answers, want, calls) in cases {
            let steps = (0..).zip(answers).map(|(n, a)| step(n, a, vec![]));
            let c = chain(steps.collect(), vec![]);
            let report = policy().walk(&job(), &c, 0, vec![]).await;
            let got = match &report.outcome {
                Ok((info, _)) => Ok(info.step),
                Err(f) => Err(f.kind()),
            };
            assert_eq!(got, want, "{what}");
            assert_eq!(report.attempts.len(), calls, "{what}");
        }
    }

    #[tokio::test]
    async fn a_429_pauses_its_account_and_later_steps_pass_over_what_they_cannot_use() {
        let p = policy();
        let c = chain(
            vec![
                step(0, e429, vec![]),
                step(1, ok, vec![]),
                step(2, ok, vec![]),
            ],
            vec![],
        );
        open_circuit(&p, &c.steps[1]);
        let report = p.walk(&job(), &c, 0, vec![]).await;
        assert_eq!(report.outcome.as_ref().map(|(i, _)| i.step).ok(), Some(2));
        let skipped: Vec<_> = report.attempts.iter().map(|a| a.skipped).collect();
        assert_eq!(skipped, [None, Some(SkipReason::CircuitOpen), None]);
        let limiter = p.limiter.as_ref().expect("limiter");
        assert!(limiter.paused_for(&c.steps[0].account).is_some());
    }
}
