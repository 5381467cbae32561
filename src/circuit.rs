//! Circuit breakers, one per provider account (tenant chain step or system
//! default), per worker process.
//!
//! Closed: calls flow and their outcomes are kept for `window`. When at least
//! `min_calls` were made and the success rate fell below `min_success_rate`
//! (the seeds' "down" line is 80 %), the breaker opens: the chain skips the
//! account for `open_for`. Then it is half-open: `half_open_probes` calls go
//! through; a success closes it, a failure opens it again.
//!
//! Only the provider's own trouble counts as failure (5xx, timeouts,
//! credentials, account): a bad recipient says nothing about the provider, and
//! a 429 is handled by pausing the account (see `ratelimit`).

use crate::metrics as m;
use crate::provider::{ErrorKind, ProviderKind};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Breaker tuning (`[circuit]` in the settings).
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CircuitSettings {
    pub window_secs: u64,
    pub min_calls: usize,
    pub min_success_rate: f64,
    pub open_secs: u64,
    pub half_open_probes: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Closed,
    Open,
    HalfOpen,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half_open",
        }
    }

    pub const ALL: [State; 3] = [State::Closed, State::HalfOpen, State::Open];
}

/// What a call's outcome says about the provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Success,
    Failure,
    /// Says nothing about the provider's health (bad recipient, 429).
    Neutral,
}

impl Verdict {
    pub fn of(outcome: Option<ErrorKind>) -> Self {
        match outcome {
            None => Verdict::Success,
            Some(kind) if kind.is_account_scoped() => Verdict::Failure,
            Some(_) => Verdict::Neutral,
        }
    }

    /// The verdict on a call's result. A refusal the adapter made before
    /// any request (code [`CAPABILITY`](crate::provider::error::CAPABILITY):
    /// this job needs something the account lacks) is about the job, not
    /// the account: other jobs on it go through.
    pub fn of_result(err: Option<&crate::provider::ProviderError>) -> Self {
        match err {
            Some(e) if e.code.as_deref() == Some(crate::provider::error::CAPABILITY) => {
                Verdict::Neutral
            }
            e => Self::of(e.map(|e| e.kind)),
        }
    }
}

struct Breaker {
    state: State,
    provider: ProviderKind,
    calls: VecDeque<(Instant, bool)>,
    opened_at: Instant,
    probes: usize,
}

/// Accounts listed by [`Breakers::render`] at most.
pub const RENDERED_ACCOUNTS: usize = 100;

/// Every account's breaker in this process.
pub struct Breakers {
    cfg: CircuitSettings,
    map: Mutex<HashMap<Arc<str>, Breaker>>,
}

impl Breakers {
    pub fn new(cfg: CircuitSettings) -> Self {
        Self {
            cfg,
            map: Mutex::new(HashMap::new()),
        }
    }

    /// May a call go to this account now? In half-open state this hands out
    /// one of the probe slots, so a `true` must be followed by [`record`](Self::record).
    pub fn allow(&self, account: &Arc<str>, provider: ProviderKind) -> bool {
        let mut map = self.lock();
        let Some(b) = map.get_mut(account) else {
            return true;
        };
        match b.state {
            State::Closed => true,
            State::Open if b.opened_at.elapsed() >= Duration::from_secs(self.cfg.open_secs) => {
                self.transition(account, provider, b, State::HalfOpen);
                b.probes = 1;
                true
            }
            State::Open => false,
            State::HalfOpen if b.probes < self.cfg.half_open_probes => {
                b.probes += 1;
                true
            }
            State::HalfOpen => false,
        }
    }

    pub fn record(&self, account: &Arc<str>, provider: ProviderKind, verdict: Verdict) {
        let ok = match verdict {
            Verdict::Success => true,
            Verdict::Failure => false,
            Verdict::Neutral => {
                // A probe that proved nothing frees its slot.
                if let Some(b) = self.lock().get_mut(account) {
                    b.probes = b.probes.saturating_sub(1);
                }
                return;
            }
        };
        let mut map = self.lock();
        if ok && !map.contains_key(account) {
            // Healthy accounts cost nothing until their first failure.
            return;
        }
        let b = map.entry(account.clone()).or_insert_with(|| Breaker {
            state: State::Closed,
            provider,
            calls: VecDeque::new(),
            opened_at: Instant::now(),
            probes: 0,
        });
        match b.state {
            State::HalfOpen if ok => {
                b.calls.clear();
                self.transition(account, provider, b, State::Closed);
            }
            State::HalfOpen | State::Open if !ok => {
                b.opened_at = Instant::now();
                if b.state == State::HalfOpen {
                    self.transition(account, provider, b, State::Open);
                }
            }
            State::HalfOpen | State::Open => {}
            State::Closed => {
                let now = Instant::now();
                let window = Duration::from_secs(self.cfg.window_secs);
                b.calls.push_back((now, ok));
                while b
                    .calls
                    .front()
                    .is_some_and(|(t, _)| now.duration_since(*t) > window)
                {
                    b.calls.pop_front();
                }
                // Bound memory on busy accounts; the window's recent part decides.
                while b.calls.len() > 1000 {
                    b.calls.pop_front();
                }
                let total = b.calls.len();
                let good = b.calls.iter().filter(|(_, ok)| *ok).count();
                if total >= self.cfg.min_calls
                    && (good as f64) < self.cfg.min_success_rate * total as f64
                {
                    b.opened_at = now;
                    self.transition(account, provider, b, State::Open);
                    tracing::warn!(%account, %provider, calls = total, successes = good,
                        open_secs = self.cfg.open_secs, "circuit opened: skipping this provider account");
                }
            }
        }
    }

    /// Open and still cooling down: skip without taking a probe slot.
    pub fn is_open(&self, account: &str) -> bool {
        self.lock().get(account).is_some_and(|b| {
            b.state == State::Open
                && b.opened_at.elapsed() < Duration::from_secs(self.cfg.open_secs)
        })
    }

    pub fn state(&self, account: &str) -> State {
        self.lock().get(account).map_or(State::Closed, |b| b.state)
    }

    fn transition(&self, account: &Arc<str>, provider: ProviderKind, b: &mut Breaker, to: State) {
        let from = b.state;
        b.state = to;
        if to != State::HalfOpen {
            b.probes = 0;
        }
        tracing::info!(%account, %provider, from = from.as_str(), to = to.as_str(), "circuit state changed");
        for (s, delta) in [(from, -1.0), (to, 1.0)] {
            if s != State::Closed {
                metrics::gauge!(m::CIRCUITS_NOT_CLOSED, "provider" => provider.as_str(), "state" => s.as_str())
                    .increment(delta);
            }
        }
        metrics::counter!(m::CIRCUIT_TRANSITIONS, "provider" => provider.as_str(), "to" => to.as_str())
            .increment(1);
    }

    /// `outreach_circuit_state{account,provider,state}` for the accounts
    /// whose circuit is not closed (at most [`RENDERED_ACCOUNTS`], the rest
    /// are in `outreach_circuits_not_closed`), one series per state with 1
    /// on the current one. Written at scrape time, so an account's series
    /// go away once its circuit closes: their number cannot grow with tenants.
    pub fn render(&self, out: &mut String) {
        use std::fmt::Write;
        let map = self.lock();
        let mut not_closed: Vec<_> = map
            .iter()
            .filter(|(_, b)| b.state != State::Closed)
            .collect();
        not_closed.sort_by(|a, b| a.0.cmp(b.0));
        let _ = writeln!(
            out,
            "# HELP {n} Circuit state of a provider account that is not closed, one series per state (1 = current).\n# TYPE {n} gauge",
            n = m::CIRCUIT_STATE
        );
        for (account, b) in not_closed.into_iter().take(RENDERED_ACCOUNTS) {
            let account = account.replace('\\', "\\\\").replace('"', "\\\"");
            for s in State::ALL {
                let _ = writeln!(
                    out,
                    "{}{{account=\"{account}\",provider=\"{}\",state=\"{}\"}} {}",
                    m::CIRCUIT_STATE,
                    b.provider.as_str(),
                    s.as_str(),
                    u8::from(s == b.state)
                );
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, Breaker>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breakers(open_secs: u64) -> Breakers {
        Breakers::new(CircuitSettings {
            window_secs: 60,
            min_calls: 5,
            min_success_rate: 0.8,
            open_secs,
            half_open_probes: 1,
        })
    }
    const P: ProviderKind = ProviderKind::Twilio;

    #[test]
    fn it_opens_once_the_failure_rate_passes_the_threshold_with_enough_calls() {
        let b = breakers(30);
        let a: Arc<str> = "tenant:t:sms:0".into();
        for _ in 0..4 {
            b.record(&a, P, Verdict::Failure);
        }
        assert!(b.allow(&a, P), "four calls are below min_calls");
        b.record(&a, P, Verdict::Failure);
        assert_eq!(b.state(&a), State::Open);
        assert!(!b.allow(&a, P));
    }

    #[test]
    fn a_mostly_healthy_account_stays_closed() {
        let b = breakers(30);
        let a: Arc<str> = "a".into();
        b.record(&a, P, Verdict::Failure);
        for _ in 0..9 {
            b.record(&a, P, Verdict::Success);
        }
        b.record(&a, P, Verdict::Failure);
        assert_eq!(b.state(&a), State::Closed);
    }

    #[test]
    fn recipient_errors_do_not_count() {
        let b = breakers(30);
        let a: Arc<str> = "a".into();
        for _ in 0..20 {
            b.record(&a, P, Verdict::of(Some(ErrorKind::Recipient)));
        }
        assert_eq!(b.state(&a), State::Closed);
    }

    #[test]
    fn after_the_open_period_one_probe_goes_through_and_its_success_closes_it() {
        let b = breakers(0);
        let a: Arc<str> = "a".into();
        for _ in 0..5 {
            b.record(&a, P, Verdict::Failure);
        }
        assert!(b.allow(&a, P), "the probe");
        assert_eq!(b.state(&a), State::HalfOpen);
        assert!(!b.allow(&a, P), "only one probe at a time");
        b.record(&a, P, Verdict::Success);
        assert_eq!(b.state(&a), State::Closed);
        assert!(b.allow(&a, P));
    }

    #[test]
    fn an_open_account_is_rendered_one_series_per_state_and_is_gone_once_closed() {
        let b = breakers(0);
        let a: Arc<str> = "tenant:clinic-1:sms:0".into();
        for _ in 0..5 {
            b.record(&a, P, Verdict::Failure);
        }
        let mut out = String::new();
        b.render(&mut out);
        let series = |state: &str, v: u8| {
            format!(
                "outreach_circuit_state{{account=\"tenant:clinic-1:sms:0\",provider=\"twilio\",state=\"{state}\"}} {v}"
            )
        };
        for line in [
            series("open", 1),
            series("closed", 0),
            series("half_open", 0),
        ] {
            assert!(out.lines().any(|l| l == line), "{line} in\n{out}");
        }
        assert!(b.allow(&a, P), "the probe");
        b.record(&a, P, Verdict::Success);
        let mut out = String::new();
        b.render(&mut out);
        assert!(!out.contains("clinic-1"), "closed: no series left\n{out}");
    }

    #[test]
    fn a_failed_probe_opens_it_again() {
        let b = breakers(0);
        let a: Arc<str> = "a".into();
        for _ in 0..5 {
            b.record(&a, P, Verdict::Failure);
        }
        assert!(b.allow(&a, P));
        b.record(&a, P, Verdict::Failure);
        assert_eq!(b.state(&a), State::Open);
    }
}
