//! What becomes of a job: every fate is chosen here, from what the earlier
//! steps found ([`of_admission`], [`of_claim`], [`of_round`], [`of_panic`]).
//! [`super::settle`] then carries it out. (A payload that is not a job has
//! no fate to choose: [`super::settle::invalid`] ends it at once, as the
//! table's first row below says.)
//!
//! After a round through the chain ([`super::chain`]), by the error kind the
//! adapter gave the provider's answer:
//!
//! | the provider said | in this round | the account | the job |
//! |---|---|---|---|
//! | 2xx | the chain stops | its breaker counts a success | `sent` (`simulated` when the sandbox answered) |
//! | 429 (`rate_limited`) | retried in place if its hint is ≤ 500 ms, else the next step | paused until the hint, in every worker | back through the first delay tier ≥ the hint |
//! | 5xx, timeout, connection (`transient`) | `worker.quick_retries` more calls, then the next step | counts toward its circuit | back through a delay tier |
//! | suspended, quota (`provider`) | the next step | counts toward its circuit | back through a delay tier |
//! | 401/403, sender not verified (`config`) | the next step | counts toward its circuit; `outreach_provider_config_errors_total` | `failed`, dead letter `config`: waiting will not fix it |
//! | greylisted, mailbox full (`recipient_deferred`) | the chain stops | not counted | back through a delay tier |
//! | bad recipient, opted out (`recipient`) | the chain stops | not counted | `failed`, dead letter `recipient` (Twilio 21610 also suppresses the recipient) |
//! | content refused (`content`) | the chain stops | not counted | `failed`, dead letter `content` |
//! | the adapter panicked (`internal`, a defect) | the chain stops | not counted | `failed`, dead letter `internal`: not retried, the provider may have been reached |
//!
//! Of the failures in one round, the most useful decides (one worth waiting
//! for beats one that needs a person: [`Failure::most_useful`]). A job that
//! would come back instead ends `failed` with `max_attempts` after
//! `worker.max_attempts` rounds, and `expired` when its next round would come
//! after `worker.max_age_secs` or its `not_after`.
//!
//! Before any provider call:
//!
//! | found | the job |
//! |---|---|
//! | not a valid job | `failed` (a row when its `job_id` can be read), dead letter with the validator's code |
//! | its row already final | that row's event again; nothing sent |
//! | another delivery holds its claim | back through the first delay tier, not counted as a round |
//! | its tenant's limit is full for longer than a job waits in place | moved to the tenant's held queue |
//! | recipient suppressed | `suppressed`; no dead letter |
//! | `not_after` passed (also after waiting for the limit) | `expired`, dead letter `expired` |
//! | channel disabled, no provider, tenant config unreadable | `failed`, dead letter `channel_disabled`, `no_provider`, `config` |
//! | tenant config unavailable (database down), every step skipped (circuit open, paused, rate limiter unavailable) | back through a delay tier |
//!
//! And after: an outcome the log refuses to store ends in the dead-letter
//! queue as `unrecordable` (see [`super::settle`]). A panic anywhere else
//! while handling the job (caught by the worker) ends it `failed`, dead
//! letter `internal` ([`super::settle::panicked`]), unless its row is final.

use super::admit::{Admission, Admitted};
use super::chain::StepInfo;
use super::failure::Failure;
use super::retry::{self, RetryBudget};
use crate::delivery_log::{Claim, LogRow};
use crate::job::Invalid;
use crate::provider::{Disposition, ErrorKind, Receipt};
use std::fmt;
use std::time::Duration;
use time::OffsetDateTime;

/// A job's fate after this delivery.
#[derive(Debug)]
pub enum Fate {
    /// Its row is final already: never send twice; report that row again.
    AlreadyFinal(Box<LogRow>),
    /// Another delivery of the job holds a live claim: come back later.
    Busy {
        delay_secs: u64,
    },
    /// Moved to its tenant's held queue, to wait for the limit there.
    ToHeldQueue,
    /// The recipient is on the tenant's suppression list.
    Suppressed {
        failure: Failure,
    },
    Sent {
        step: StepInfo,
        receipt: Receipt,
        /// False when the sandbox answered: nothing reached the recipient.
        delivered: bool,
    },
    /// Back to the broker for `delay_secs`.
    Retry {
        failure: Failure,
        delay_secs: u64,
    },
    /// Final failure.
    Failed {
        failure: Failure,
        reason: DeadLetterReason,
    },
    Expired {
        failure: Failure,
    },
}

/// The round a job is in, and its time left.
#[derive(Debug, Clone)]
pub struct Round {
    /// 1-based; rounds that reached the chain or a final state.
    pub attempt: u32,
    /// Since the job was first consumed.
    pub age: Duration,
    pub not_after: Option<OffsetDateTime>,
}

/// Before the claim: go on to it with what admit found (a stop is then the
/// round's outcome, recorded as [`of_round`] says), or move the job to its
/// tenant's held queue now, without a row.
pub fn of_admission(admission: Admission) -> Result<Admitted, Fate> {
    match admission {
        Admission::Go(start) => Ok(Ok(start)),
        Admission::Stop(report) => Ok(Err(report)),
        Admission::ToHeldQueue => Err(Fate::ToHeldQueue),
    }
}

/// Go on with round `Ok(attempt)`, or what the claim says instead.
pub fn of_claim(claim: Claim, tiers: &[u64]) -> Result<u32, Fate> {
    match claim {
        Claim::Granted { attempts } => Ok(attempts + 1),
        Claim::Done(row) => Err(Fate::AlreadyFinal(row)),
        Claim::Busy => Err(Fate::Busy {
            delay_secs: retry::tier_for(tiers, 1, None),
        }),
    }
}

/// Handling the job panicked outside an adapter (a defect, caught by the
/// worker): `failed`, dead letter `internal`, never retried (a provider may
/// have been reached).
pub fn of_panic() -> Fate {
    Fate::Failed {
        failure: Failure::Panicked,
        reason: DeadLetterReason::Internal,
    }
}

/// What a round's outcome means for the job: the tables above.
pub fn of_round(
    outcome: Result<(StepInfo, Receipt), Failure>,
    round: &Round,
    budget: &RetryBudget,
    tiers: &[u64],
) -> Fate {
    let failure = match outcome {
        Ok((step, receipt)) => {
            let delivered = step.kind.delivers();
            return Fate::Sent {
                step,
                receipt,
                delivered,
            };
        }
        Err(f) => f,
    };
    if let Failure::Suppressed { .. } = failure {
        return Fate::Suppressed { failure };
    }
    if failure.kind() == ErrorKind::Expired {
        return Fate::Expired { failure };
    }
    match failure.disposition() {
        Disposition::GiveUp => {
            let reason = DeadLetterReason::of(&failure);
            Fate::Failed { failure, reason }
        }
        // Waiting will not fix a configuration: fail now, naming it.
        Disposition::Reconfigure => {
            let reason = DeadLetterReason::of(&failure);
            Fate::Failed { failure, reason }
        }
        Disposition::Retry | Disposition::Fallback | Disposition::Defer => {
            let delay_secs = retry::tier_for(tiers, round.attempt, failure.retry_after());
            let next_at = round.age + Duration::from_secs(delay_secs);
            let past_not_after = round
                .not_after
                .is_some_and(|t| OffsetDateTime::now_utc() + Duration::from_secs(delay_secs) > t);
            if round.attempt >= budget.max_attempts {
                Fate::Failed {
                    failure,
                    reason: DeadLetterReason::MaxAttempts,
                }
            } else if next_at > budget.max_age || past_not_after {
                Fate::Expired { failure }
            } else {
                Fate::Retry {
                    failure,
                    delay_secs,
                }
            }
        }
    }
}

/// Why a message is in the dead-letter queue (`x-outreach-reason`; what
/// `outreach dlq --reason` filters on). One vocabulary: the worker's
/// reasons and the broker's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeadLetterReason {
    /// Not a valid job: the validator's code (`invalid_recipient`…).
    Invalid(Invalid),
    /// A provider refused the recipient (invalid, unreachable, opted out).
    Recipient,
    /// A provider refused the content.
    Content,
    /// Configuration that needs a person (credentials refused, sender not
    /// verified, tenant config unreadable).
    Config,
    /// No tenant chain and no system default for the channel.
    NoProvider,
    /// The tenant switched the channel off.
    ChannelDisabled,
    /// `worker.max_attempts` rounds without a send.
    MaxAttempts,
    /// `not_after` or `worker.max_age_secs` passed (also RabbitMQ's reason
    /// for a message whose TTL ran out).
    Expired,
    /// The outcome could not be stored in the delivery log.
    Unrecordable,
    /// Handling the job panicked (a defect in outreach; `outreach_panics_total`).
    Internal,
    /// Set by RabbitMQ: a quorum queue's delivery limit was reached.
    DeliveryLimit,
    /// Set by RabbitMQ: the message was rejected without requeue.
    Rejected,
    /// Set by RabbitMQ: a queue length limit pushed it out.
    Maxlen,
}

impl DeadLetterReason {
    const OTHERS: [DeadLetterReason; 12] = [
        DeadLetterReason::Recipient,
        DeadLetterReason::Content,
        DeadLetterReason::Config,
        DeadLetterReason::NoProvider,
        DeadLetterReason::ChannelDisabled,
        DeadLetterReason::MaxAttempts,
        DeadLetterReason::Expired,
        DeadLetterReason::Unrecordable,
        DeadLetterReason::Internal,
        DeadLetterReason::DeliveryLimit,
        DeadLetterReason::Rejected,
        DeadLetterReason::Maxlen,
    ];

    /// Every reason, for `--reason`'s help and errors.
    pub fn all() -> impl Iterator<Item = DeadLetterReason> {
        Invalid::ALL
            .into_iter()
            .map(DeadLetterReason::Invalid)
            .chain(Self::OTHERS)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            DeadLetterReason::Invalid(i) => i.as_str(),
            DeadLetterReason::Recipient => "recipient",
            DeadLetterReason::Content => "content",
            DeadLetterReason::Config => "config",
            DeadLetterReason::NoProvider => "no_provider",
            DeadLetterReason::ChannelDisabled => "channel_disabled",
            DeadLetterReason::MaxAttempts => "max_attempts",
            DeadLetterReason::Expired => "expired",
            DeadLetterReason::Unrecordable => "unrecordable",
            DeadLetterReason::Internal => "internal",
            DeadLetterReason::DeliveryLimit => "delivery_limit",
            DeadLetterReason::Rejected => "rejected",
            DeadLetterReason::Maxlen => "maxlen",
        }
    }

    /// The reason of a failure that ends the job at once.
    fn of(failure: &Failure) -> Self {
        match failure {
            Failure::Invalid(e) => DeadLetterReason::Invalid(e.code()),
            Failure::NoProvider => DeadLetterReason::NoProvider,
            Failure::ChannelDisabled(_) => DeadLetterReason::ChannelDisabled,
            Failure::NotAfterPassed => DeadLetterReason::Expired,
            f => match f.kind() {
                // Adapters raise no `invalid_job`: the validator's are `Failure::Invalid`.
                ErrorKind::Content | ErrorKind::InvalidJob => DeadLetterReason::Content,
                ErrorKind::Expired => DeadLetterReason::Expired,
                ErrorKind::Recipient => DeadLetterReason::Recipient,
                ErrorKind::Internal => DeadLetterReason::Internal,
                ErrorKind::Config
                | ErrorKind::Transient
                | ErrorKind::RateLimited
                | ErrorKind::Provider
                | ErrorKind::RecipientDeferred => DeadLetterReason::Config,
            },
        }
    }
}

impl fmt::Display for DeadLetterReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for DeadLetterReason {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Self::all().find(|r| r.as_str() == s).ok_or_else(|| {
            let names: Vec<_> = Self::all().map(|r| r.as_str()).collect();
            format!("unknown reason `{s}`; expected one of {}", names.join(", "))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::failure::Skip;
    use crate::provider::{ProviderError, ProviderKind};

    const TIERS: [u64; 3] = [5, 30, 120];

    fn budget() -> RetryBudget {
        RetryBudget {
            max_attempts: 3,
            max_age: Duration::from_secs(3600),
        }
    }
    fn round(attempt: u32, age: u64) -> Round {
        Round {
            attempt,
            age: Duration::from_secs(age),
            not_after: None,
        }
    }
    fn said(kind: ErrorKind, code: &str) -> Result<(StepInfo, Receipt), Failure> {
        Err(ProviderError::new(kind, Some(code.into()), "x").into())
    }
    fn decide(outcome: Result<(StepInfo, Receipt), Failure>, round: Round) -> Fate {
        of_round(outcome, &round, &budget(), &TIERS)
    }

    #[test]
    fn a_recipient_error_fails_at_once() {
        let f = decide(said(ErrorKind::Recipient, "21211"), round(1, 0));
        assert!(matches!(
            f,
            Fate::Failed {
                reason: DeadLetterReason::Recipient,
                ..
            }
        ));
    }

    #[test]
    fn a_401_fails_at_once_as_config() {
        let f = decide(said(ErrorKind::Config, "401"), round(1, 0));
        assert!(matches!(
            f,
            Fate::Failed {
                reason: DeadLetterReason::Config,
                ..
            }
        ));
    }

    #[test]
    fn a_429_comes_back_no_sooner_than_its_hint() {
        let e = ProviderError::new(ErrorKind::RateLimited, Some("429".into()), "slow")
            .with_retry_after(Some(Duration::from_secs(20)));
        let f = decide(Err(e.into()), round(1, 0));
        assert!(matches!(f, Fate::Retry { delay_secs: 30, .. }), "{f:?}");
    }

    #[test]
    fn a_transient_error_is_retried_until_max_attempts() {
        assert!(matches!(
            decide(said(ErrorKind::Transient, "503"), round(2, 0)),
            Fate::Retry { delay_secs: 30, .. }
        ));
        assert!(matches!(
            decide(said(ErrorKind::Transient, "503"), round(3, 0)),
            Fate::Failed {
                reason: DeadLetterReason::MaxAttempts,
                ..
            }
        ));
    }

    #[test]
    fn a_retry_that_would_land_past_max_age_or_not_after_expires() {
        let f = decide(said(ErrorKind::Transient, "503"), round(1, 3599));
        assert!(matches!(f, Fate::Expired { .. }));
        let soon = Round {
            not_after: Some(OffsetDateTime::now_utc() + Duration::from_secs(1)),
            ..round(1, 0)
        };
        assert!(matches!(
            decide(said(ErrorKind::Transient, "503"), soon),
            Fate::Expired { .. }
        ));
    }

    #[test]
    fn a_passed_not_after_expires_and_a_suppressed_recipient_is_not_dead_lettered() {
        assert!(matches!(
            decide(Err(Failure::NotAfterPassed), round(1, 0)),
            Fate::Expired { .. }
        ));
        let suppressed = Failure::Suppressed {
            channel: crate::job::Channel::Sms,
            reason: "opt_out".into(),
        };
        assert!(matches!(
            decide(Err(suppressed), round(1, 0)),
            Fate::Suppressed { .. }
        ));
    }

    #[test]
    fn every_step_skipped_comes_back_later() {
        let f = decide(Err(Failure::Skipped(Skip::CircuitOpen)), round(1, 0));
        assert!(matches!(f, Fate::Retry { delay_secs: 5, .. }));
    }

    #[test]
    fn the_sandbox_is_simulated_not_delivered() {
        let ok = Ok((
            StepInfo {
                kind: ProviderKind::Sandbox,
                step: 0,
            },
            Receipt::default(),
        ));
        assert!(matches!(
            decide(ok, round(1, 0)),
            Fate::Sent {
                delivered: false,
                ..
            }
        ));
    }

    #[test]
    fn a_live_claim_elsewhere_delays_and_a_final_row_is_not_sent_again() {
        assert!(matches!(
            of_claim(Claim::Busy, &TIERS),
            Err(Fate::Busy { delay_secs: 5 })
        ));
        assert_eq!(
            of_claim(Claim::Granted { attempts: 2 }, &TIERS).ok(),
            Some(3)
        );
    }

    #[test]
    fn every_reason_reads_back_by_its_name() {
        for r in DeadLetterReason::all() {
            assert_eq!(r.as_str().parse::<DeadLetterReason>(), Ok(r));
        }
        let e = "nope".parse::<DeadLetterReason>().unwrap_err();
        assert!(
            e.contains("max_attempts") && e.contains("invalid_recipient"),
            "{e}"
        );
    }
}
