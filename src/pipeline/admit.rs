//! May the job go now? Before its claim, so a job that must wait costs no
//! database write. In order: a suppressed recipient or a passed `not_after`
//! stops it; the tenant's chain is resolved; the first usable step is found
//! and its sends taken from the tenant's and the account's limits
//! ([`Policy::first_usable`]). A full limit is waited for in place when the
//! wait is short (`rate_limits.max_inline_wait_ms`), else the job is held
//! in its tenant's queue ([`super::held`]) so the work queue keeps moving.

use super::chain::{Policy, chain_exhausted, note_skip, note_unusable, pass_over};
use super::failure::{Failure, Skip};
use super::{HandleError, Shared, Source};
use crate::delivery_log::{Attempt, LogError, SkipReason};
use crate::job::Job;
use crate::metrics as m;
use crate::ratelimit::{LimitSet, Take};
use crate::suppression::Check;
use crate::tenant::ResolvedChannel;
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;

/// The admission of one delivery.
pub enum Admission {
    /// Send from `chain.steps[from]` on; that step's sends are taken. Steps
    /// passed over on the way are in `skipped`, for the attempt log.
    Go {
        chain: Arc<ResolvedChannel>,
        from: usize,
        skipped: Vec<Attempt>,
    },
    /// Its limit is full for longer than a job waits in place, or its
    /// tenant's earlier jobs are held: to the tenant's held queue.
    Hold,
    /// Not sent in this round, and why.
    Stop {
        failure: Failure,
        skipped: Vec<Attempt>,
    },
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
    /// No step is usable now (circuits open, accounts paused, entries
    /// unusable, or no provider at all).
    Blocked {
        failure: Failure,
        skipped: Vec<Attempt>,
    },
}

/// Admit a delivery that came from `source`.
pub async fn admit(shared: &Shared, job: &Job, source: Source) -> Result<Admission, HandleError> {
    let stop = |failure| Admission::Stop {
        failure,
        skipped: vec![],
    };
    let expired = || {
        job.not_after
            .is_some_and(|t| t <= OffsetDateTime::now_utc())
    };
    // A recipient on the tenant's suppression list is never sent to; checked
    // before the limits are taken from. (A recipient that does not normalise
    // was refused at validation.)
    if let Ok(recipient) = crate::suppression::normalise(job.channel, &job.recipient)
        && let Some(reason) = shared
            .suppressions
            .reason(Check {
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
    if source == Source::Work && holds.is_holding(&job.tenant_id, job.channel) {
        return Ok(Admission::Hold);
    }
    let mut slot = None;
    loop {
        match shared
            .policy
            .first_usable(&chain)
            .await
            .map_err(LogError::from)?
        {
            // A wait for the limit may have outlived the job.
            Usable::Go { skipped, .. } if expired() => {
                return Ok(Admission::Stop {
                    failure: Failure::NotAfterPassed,
                    skipped,
                });
            }
            Usable::Go { from, skipped } => {
                return Ok(Admission::Go {
                    chain,
                    from,
                    skipped,
                });
            }
            Usable::Blocked { failure, skipped } => {
                return Ok(Admission::Stop { failure, skipped });
            }
            Usable::Wait(wait) => {
                metrics::counter!(m::RATE_LIMITED, "channel" => job.channel.as_str()).increment(1);
                let wait_here = source == Source::Held
                    || (wait <= holds.max_inline_wait && {
                        if slot.is_none() {
                            slot = holds.wait_slot(&holds.queue_name(&job.tenant_id, job.channel));
                        }
                        slot.is_some()
                    });
                if !wait_here {
                    tracing::debug!(
                        wait_ms = wait.as_millis() as u64,
                        "rate limited: moving the job to its tenant's held queue"
                    );
                    return Ok(Admission::Hold);
                }
                tokio::time::sleep(wait).await;
            }
        }
    }
}

impl Policy {
    /// Find the first usable step and take its sends (the tenant's with the
    /// first account's).
    pub async fn first_usable(&self, chain: &ResolvedChannel) -> Result<Usable, sqlx::Error> {
        let mut tenant_pending = true;
        let mut log = Vec::new();
        let mut last_err: Option<Failure> = None;
        for (i, step) in chain.steps.iter().enumerate() {
            note_unusable(chain, step.step, &mut log);
            if let Some(skip) = self.skip(step) {
                pass_over(step, skip, &mut log, &mut last_err);
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
                        note_skip(step, SkipReason::Paused);
                        pass_over(step, Skip::Paused { wait }, &mut log, &mut last_err);
                        continue;
                    }
                    Take::Wait { wait, .. } => return Ok(Usable::Wait(wait)),
                }
            }
            if !self.breaker_allows(step) {
                pass_over(step, Skip::CircuitOpen, &mut log, &mut last_err);
                continue;
            }
            return Ok(Usable::Go {
                from: i,
                skipped: log,
            });
        }
        let failure = chain_exhausted(chain, last_err, &mut log);
        Ok(Usable::Blocked {
            failure,
            skipped: log,
        })
    }
}
