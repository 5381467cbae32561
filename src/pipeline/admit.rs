//! May the job go now? Before its claim, so a job that must wait costs no
//! database write. In order: a suppressed recipient or a passed `not_after`
//! stops it; the tenant's chain is resolved; the first usable step is found
//! and its sends taken from the tenant's and the account's limits
//! ([`first_usable`], asking [`Policy::check_step`] step by step). A full
//! limit is waited for in place when the wait is short
//! (`rate_limits.max_inline_wait_ms`), else the job moves to its tenant's
//! held queue ([`super::held`]) so the work queue keeps moving.

use super::chain::{Check, Policy, Report, chain_exhausted, note_unusable, pass_over};
use super::failure::Failure;
use super::{HandleError, Shared, Source};
use crate::delivery_log::{Attempt, LogError};
use crate::job::Job;
use crate::metrics as m;
use crate::suppression;
use crate::tenant::ResolvedChannel;
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;

/// The admission of one delivery ([`super::fate::of_admission`] says what
/// each means for the job).
pub enum Admission {
    /// Send from the start found.
    Go(Start),
    /// Its limit is full for longer than a job waits in place, or its
    /// tenant's earlier jobs are in the held queue: to that queue.
    ToHeldQueue,
    /// Not sent in this round: the round's report, without a call.
    Stop(Report),
}

/// Where an admitted round starts: `chain.steps[from]`, whose sends are
/// taken. Steps passed over on the way are in `skipped`, for the attempt log.
pub struct Start {
    pub chain: Arc<ResolvedChannel>,
    pub from: usize,
    pub skipped: Vec<Attempt>,
}

/// A round that goes on to its claim: from its start, or stopped already.
pub type Admitted = Result<Start, Report>;

/// A round stopped before any call, with the steps passed over.
fn stopped(failure: Failure, skipped: Vec<Attempt>) -> Admission {
    Admission::Stop(Report {
        outcome: Err(failure),
        attempts: skipped,
    })
}

/// The first usable step, before any wait.
#[derive(Debug)]
pub enum Usable {
    Go {
        from: usize,
        skipped: Vec<Attempt>,
    },
    /// The tenant's or the first usable account's limit is full.
    Wait(Duration),
    /// No step is usable now (circuits open, accounts paused, limiter
    /// unavailable, entries unusable, or no provider at all).
    Blocked {
        failure: Failure,
        skipped: Vec<Attempt>,
    },
}

/// Admit a delivery that came from `source`.
pub async fn admit(shared: &Shared, job: &Job, source: Source) -> Result<Admission, HandleError> {
    let stop = |failure| stopped(failure, vec![]);
    let expired = || {
        job.not_after
            .is_some_and(|t| t <= OffsetDateTime::now_utc())
    };
    // A recipient on the tenant's suppression list is never sent to; checked
    // before the limits are taken from. (A recipient that does not normalise
    // was refused at validation.)
    if let Ok(recipient) = suppression::normalise(job.channel, &job.recipient)
        && let Some(reason) = shared
            .suppressions
            .reason(suppression::Check {
                tenant: job.tenant_id.to_string(),
                channel: job.channel,
                recipient,
            })
            .await
            .map_err(LogError::from)?
    {
        return Ok(stop(Failure::Suppressed {
            channel: job.channel,
            reason,
        }));
    }
    if expired() {
        return Ok(stop(Failure::NotAfterPassed));
    }
    let chain = match shared.directory.resolve(&job.tenant_id, job.channel).await {
        Ok(chain) if !chain.enabled => return Ok(stop(Failure::ChannelDisabled(job.channel))),
        Ok(chain) => chain,
        Err(e) => return Ok(stop(Failure::TenantConfig(e))),
    };
    let holds = &shared.holds;
    // Its tenant's earlier jobs are waiting in the held queue: queue up behind them.
    if source == Source::WorkQueue && holds.is_holding(&job.tenant_id, job.channel) {
        return Ok(Admission::ToHeldQueue);
    }
    let mut slot = None;
    loop {
        match first_usable(&shared.policy, &chain).await {
            // A wait for the limit may have outlived the job.
            Usable::Go { skipped, .. } if expired() => {
                return Ok(stopped(Failure::NotAfterPassed, skipped));
            }
            Usable::Go { from, skipped } => {
                return Ok(Admission::Go(Start {
                    chain,
                    from,
                    skipped,
                }));
            }
            Usable::Blocked { failure, skipped } => return Ok(stopped(failure, skipped)),
            Usable::Wait(wait) => {
                metrics::counter!(m::RATE_LIMITED, "channel" => job.channel.as_str()).increment(1);
                let has_place = || {
                    if slot.is_none() {
                        slot = holds.wait_slot(&holds.queue_name(&job.tenant_id, job.channel));
                    }
                    slot.is_some()
                };
                if !waits_in_place(source, wait, holds.max_inline_wait, has_place) {
                    tracing::debug!(
                        wait_ms = wait.as_millis() as u64,
                        "rate limited: moving the job to its tenant's held queue"
                    );
                    return Ok(Admission::ToHeldQueue);
                }
                tokio::time::sleep(wait).await;
            }
        }
    }
}

/// Whether a job that must wait `wait` for its limit waits here (holding
/// its delivery) rather than moving to its tenant's held queue: always in
/// the held queue itself; from the work queue only within `max_inline_wait`
/// and with a place among its tenant's jobs waiting in process
/// (`has_place`, asked only then: it takes the place).
fn waits_in_place(
    source: Source,
    wait: Duration,
    max_inline_wait: Duration,
    has_place: impl FnOnce() -> bool,
) -> bool {
    source == Source::HeldQueue || (wait <= max_inline_wait && has_place())
}

/// Find the first usable step and take its sends (the tenant's with the
/// first account's): each step's [`Policy::check_step`] in chain order.
pub async fn first_usable(policy: &Policy, chain: &ResolvedChannel) -> Usable {
    let mut tenant = Some(&chain.limits);
    let mut log = Vec::new();
    let mut last_err: Option<Failure> = None;
    for (i, step) in chain.steps.iter().enumerate() {
        note_unusable(chain, step.step, &mut log);
        match policy.check_step(step, &mut tenant).await {
            Check::Go => {
                return Usable::Go {
                    from: i,
                    skipped: log,
                };
            }
            Check::Wait(wait) => return Usable::Wait(wait),
            Check::Skip(skip) => pass_over(step, skip, &mut log, &mut last_err),
        }
    }
    let failure = chain_exhausted(chain, last_err, &mut log);
    Usable::Blocked {
        failure,
        skipped: log,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::chain::tests::{
        chain, ok, one_an_hour, open_circuit, pause, policy, policy_without_its_limiter, step,
    };
    use crate::provider::ErrorKind;
    use crate::tenant::ChainStep;

    /// The first usable step in a word, for the tables.
    fn word(u: &Usable) -> String {
        match u {
            Usable::Go { from, skipped } => {
                format!("go from {from}, {} passed over", skipped.len())
            }
            Usable::Wait(_) => "wait".into(),
            Usable::Blocked { failure, skipped } => format!(
                "blocked ({}), {} passed over",
                failure.code().unwrap_or_default(),
                skipped.len()
            ),
        }
    }

    #[tokio::test]
    async fn the_first_usable_step_is_found_and_its_sends_taken() {
        type Setup = fn(&Policy, &ResolvedChannel);
        let nothing: Setup = |_, _| {};
        let first_paused: Setup = |p, c| pause(p, &c.steps[0]);
        let first_open: Setup = |p, c| open_circuit(p, &c.steps[0]);
        let both_out: Setup = |p, c| {
            pause(p, &c.steps[0]);
            open_circuit(p, &c.steps[1]);
        };
        let two = || vec![step(0, ok, vec![]), step(1, ok, vec![])];
        let cases: [(&str, Vec<ChainStep>, Setup, Vec<_>, &str); 6] = [
            (
                "all free",
                two(),
                nothing,
                vec![],
                "go from 0, 0 passed over",
            ),
            (
                "primary paused",
                two(),
                first_paused,
                vec![],
                "go from 1, 1 passed over",
            ),
            (
                "primary's circuit open",
                two(),
                first_open,
                vec![],
                "go from 1, 1 passed over",
            ),
            // Both worth waiting for: the later one says why.
            (
                "every step out",
                two(),
                both_out,
                vec![],
                "blocked (circuit_open), 2 passed over",
            ),
            (
                "no provider",
                vec![],
                nothing,
                vec![],
                "blocked (no_provider), 0 passed over",
            ),
            (
                "the tenant's limit",
                two(),
                nothing,
                one_an_hour(),
                "go from 0, 0 passed over",
            ),
        ];
        for (what, steps, setup, tenant_limits, want) in cases {
            let p = policy();
            let c = chain(steps, tenant_limits);
            setup(&p, &c);
            assert_eq!(word(&first_usable(&p, &c).await), want, "{what}");
        }
    }

    #[tokio::test]
    async fn a_full_tenant_limit_is_waited_for_whichever_step_is_free() {
        let p = policy();
        let c = chain(
            vec![step(0, ok, vec![]), step(1, ok, vec![])],
            one_an_hour(),
        );
        assert_eq!(
            word(&first_usable(&p, &c).await),
            "go from 0, 0 passed over"
        );
        assert_eq!(word(&first_usable(&p, &c).await), "wait");
    }

    #[tokio::test]
    async fn a_limiter_outage_is_not_an_error_but_every_step_passed_over() {
        let p = policy_without_its_limiter();
        let c = chain(vec![step(0, ok, one_an_hour())], vec![]);
        let got = first_usable(&p, &c).await;
        assert_eq!(
            word(&got),
            "blocked (rate_limiter_unavailable), 1 passed over"
        );
        let Usable::Blocked { failure, .. } = got else {
            unreachable!()
        };
        assert_eq!(failure.kind(), ErrorKind::Transient);
    }

    #[test]
    fn a_job_waits_in_place_only_briefly_and_with_a_place_unless_it_is_in_its_held_queue() {
        let (short, long, max) = (
            Duration::from_millis(10),
            Duration::from_secs(5),
            Duration::from_millis(100),
        );
        // Where it came from, its wait, whether its tenant has a place
        // left to wait in process; waits here?
        let cases = [
            (Source::WorkQueue, short, true, true),
            (Source::WorkQueue, short, false, false),
            (Source::WorkQueue, long, true, false),
            (Source::HeldQueue, long, false, true),
            (Source::HeldQueue, short, false, true),
        ];
        for (source, wait, place, want) in cases {
            let mut asked = false;
            let got = waits_in_place(source, wait, max, || {
                asked = true;
                place
            });
            assert_eq!(got, want, "{source:?} {wait:?} place: {place}");
            // A place is taken only by a job that would use it.
            assert_eq!(
                asked,
                source == Source::WorkQueue && wait <= max,
                "{source:?} {wait:?}"
            );
        }
    }
}
