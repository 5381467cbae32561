//! Rate limits that hold for the whole deployment.
//!
//! Each limit is a GCRA bucket in PostgreSQL (`rate_buckets`, taken with the
//! `outreach_rate_take` function): every worker process takes from the same
//! row, so three workers together send no more than the limit allows. A
//! process-local `governor` limiter with the same quota sits in front of it:
//! when this process alone has used the whole allowance, it answers "wait"
//! without a database round trip, so a backlog of jobs waiting for one tenant
//! does not turn into a storm of queries. Unlimited keys never touch either.
//! A query takes up to 20 ms worth of sends at once (a lease, used by this
//! worker's next jobs or dropped), so a high limit costs ~50 queries a second,
//! not one per send, and there is one query in flight per bucket set.
//!
//! A provider's 429 *pauses* an account until its `Retry-After`: recorded in
//! this process (so its next jobs skip the account at once), on the
//! account's buckets (so other workers taking from them see it too) and
//! announced to every worker with `NOTIFY outreach_pauses` (each worker's
//! [`crate::tenant::listener`] applies it with [`RateLimiter::announced`]),
//! so an account without a rate limit, which never touches a bucket, is
//! paused in every worker as well, at no cost per send.

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota};
use sqlx::PgPool;
use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// `count` sends per `period`, `burst` of them allowed back to back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    pub count: NonZeroU32,
    pub period: Duration,
    pub burst: NonZeroU32,
}

impl Limit {
    /// `count` per `period` with a burst of `count` (governor's convention).
    pub fn new(count: u32, period: Duration) -> Option<Self> {
        let count = NonZeroU32::new(count)?;
        Some(Self {
            count,
            period,
            burst: count,
        })
    }

    pub fn with_burst(mut self, burst: u32) -> Self {
        self.burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
        self
    }

    /// Time between two sends at the steady rate.
    pub fn interval(&self) -> Duration {
        (self.period / self.count.get()).max(Duration::from_micros(1))
    }
}

/// The limits on one scope (a tenant's channel, or a provider account); all
/// must allow a send. Empty: unlimited.
#[derive(Debug, Clone, Default)]
pub struct LimitSet {
    /// Secret-free name: `tenant:clinic-1:sms`, `tenant:clinic-1:sms:0`, `system:sms`.
    pub scope: Arc<str>,
    pub limits: Vec<Limit>,
}

impl LimitSet {
    pub fn new(scope: impl Into<Arc<str>>, limits: Vec<Limit>) -> Self {
        Self {
            scope: scope.into(),
            limits,
        }
    }

    pub fn is_unlimited(&self) -> bool {
        self.limits.is_empty()
    }

    fn bucket_key(&self, l: &Limit) -> String {
        format!(
            "{}|{}/{}ms",
            self.scope,
            l.count,
            l.period.as_millis().max(1)
        )
    }
}

/// The answer to "may I send now?".
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Take {
    Granted,
    /// Not before `wait`. `paused`: a provider asked us to back off (skip
    /// the account if there is another), rather than a limit being full.
    Wait {
        wait: Duration,
        paused: bool,
    },
}

/// Deployment-wide limiter (see the module docs).
pub struct RateLimiter {
    /// `None`: limits hold per process only (benchmarks, single-process tools).
    pool: Option<PgPool>,
    local: Mutex<HashMap<String, Arc<DefaultDirectRateLimiter>>>,
    paused: Mutex<HashMap<Arc<str>, Instant>>,
    /// Per bucket set: sends taken ahead and whether a query is in flight.
    leases: Mutex<HashMap<String, Lease>>,
    clock: DefaultClock,
}

/// Sends taken from the database ahead of use, for [`LEASE_FOR`] at most
/// (so a limit is overshot by at most that much of its rate), and the one
/// query allowed in flight per set: a backlog of one tenant must not queue
/// on the connection pool (and the bucket's row lock) in front of every
/// other tenant's work.
#[derive(Default)]
struct Lease {
    tokens: u32,
    until: Option<Instant>,
    querying: bool,
}

/// How long sends taken ahead stay usable.
const LEASE_FOR: Duration = Duration::from_millis(20);

/// Clears `querying` when the query is done (or abandoned).
struct Querying<'a>(&'a Mutex<HashMap<String, Lease>>, String);

impl Drop for Querying<'_> {
    fn drop(&mut self) {
        if let Some(l) = self
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(&self.1)
        {
            l.querying = false;
        }
    }
}

impl RateLimiter {
    pub fn new(pool: Option<PgPool>) -> Self {
        Self {
            pool,
            local: Mutex::new(HashMap::new()),
            paused: Mutex::new(HashMap::new()),
            leases: Mutex::new(HashMap::new()),
            clock: DefaultClock::default(),
        }
    }

    /// Take one send from every set, or none.
    pub async fn take(&self, sets: &[&LimitSet]) -> Result<Take, sqlx::Error> {
        if let Some(wait) = sets.iter().filter_map(|s| self.paused_for(&s.scope)).max() {
            return Ok(Take::Wait { wait, paused: true });
        }
        let mut buckets: Vec<(String, &Limit)> = sets
            .iter()
            .flat_map(|s| s.limits.iter().map(move |l| (s.bucket_key(l), l)))
            .collect();
        if buckets.is_empty() {
            return Ok(Take::Granted);
        }
        // This process alone has used the allowance: no need to ask.
        if let Some(wait) = self.local_wait(&buckets) {
            return Ok(Take::Wait {
                wait,
                paused: false,
            });
        }
        let Some(pool) = &self.pool else {
            return Ok(Take::Granted);
        };
        buckets.sort_by(|a, b| a.0.cmp(&b.0));
        let keys: Vec<&str> = buckets.iter().map(|(k, _)| k.as_str()).collect();
        let joined = keys.join(" ");
        let min_interval = buckets
            .iter()
            .map(|(_, l)| l.interval())
            .min()
            .unwrap_or_default();
        {
            let mut leases = self.leases.lock().unwrap_or_else(|p| p.into_inner());
            let lease = leases.entry(joined.clone()).or_default();
            if lease.tokens > 0 && lease.until.is_some_and(|u| u > Instant::now()) {
                lease.tokens -= 1;
                return Ok(Take::Granted);
            }
            if lease.querying {
                // Another job of this process is asking right now.
                return Ok(Take::Wait {
                    wait: min_interval.max(Duration::from_millis(1)),
                    paused: false,
                });
            }
            lease.querying = true;
            lease.tokens = 0;
        }
        let _querying = Querying(&self.leases, joined.clone());
        // As many sends as the strictest limit allows in LEASE_FOR.
        let want = buckets
            .iter()
            .map(|(_, l)| {
                (LEASE_FOR.as_micros() / l.interval().as_micros().max(1))
                    .clamp(1, l.burst.get() as u128)
            })
            .min()
            .unwrap_or(1) as i32;
        let intervals: Vec<i64> = buckets
            .iter()
            .map(|(_, l)| l.interval().as_micros() as i64)
            .collect();
        let bursts: Vec<i32> = buckets
            .iter()
            .map(|(_, l)| l.burst.get().min(i32::MAX as u32) as i32)
            .collect();
        let (granted, wait_secs, paused): (i32, f64, bool) = sqlx::query_as(
            "SELECT granted, wait_secs, paused FROM outreach_rate_take($1, $2, $3, $4)",
        )
        .bind(&keys)
        .bind(&intervals)
        .bind(&bursts)
        .bind(want)
        .fetch_one(pool)
        .await?;
        if granted < 1 {
            return Ok(Take::Wait {
                wait: Duration::from_secs_f64(wait_secs.max(0.0)).max(Duration::from_millis(1)),
                paused,
            });
        }
        if granted > 1
            && let Some(lease) = self
                .leases
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get_mut(&joined)
        {
            lease.tokens = granted as u32 - 1;
            lease.until = Some(Instant::now() + LEASE_FOR);
        }
        Ok(Take::Granted)
    }

    /// A provider said "not before `for_`" for this account.
    pub async fn pause(&self, set: &LimitSet, for_: Duration) -> Result<(), sqlx::Error> {
        self.pause_here(&set.scope, for_);
        if let Some(pool) = &self.pool {
            // Every worker, whether or not the account has buckets.
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(PAUSES_CHANNEL)
                .bind(format!("{} {}", for_.as_millis(), set.scope))
                .execute(pool)
                .await?;
        }
        if let (Some(pool), false) = (&self.pool, set.is_unlimited()) {
            let keys: Vec<String> = set.limits.iter().map(|l| set.bucket_key(l)).collect();
            sqlx::query(
                "UPDATE rate_buckets SET paused_until = greatest(paused_until, clock_timestamp() + $2 * interval '1 millisecond') \
                 WHERE key = ANY($1)",
            )
            .bind(&keys)
            .bind(for_.as_millis() as i64)
            .execute(pool)
            .await?;
        }
        Ok(())
    }

    /// Apply a pause another worker announced on [`PAUSES_CHANNEL`]
    /// (`<millis> <scope>`), clamped like a provider's hint.
    pub fn announced(&self, payload: &str) {
        if let Some((ms, scope)) = payload.split_once(' ')
            && let Ok(ms) = ms.parse::<u64>()
        {
            let for_ = Duration::from_millis(ms).min(crate::provider::error::MAX_RETRY_AFTER);
            self.pause_here(scope, for_);
        }
    }

    /// Pause `scope` in this process only (a pause another worker announced).
    pub fn pause_here(&self, scope: &str, for_: Duration) {
        let until = Instant::now() + for_;
        let mut paused = self.paused.lock().unwrap_or_else(|p| p.into_inner());
        let e = paused.entry(Arc::from(scope)).or_insert(until);
        *e = (*e).max(until);
    }

    /// Remaining pause of a scope seen by this process.
    pub fn paused_for(&self, scope: &str) -> Option<Duration> {
        let mut paused = self.paused.lock().unwrap_or_else(|p| p.into_inner());
        let until = *paused.get(scope)?;
        let now = Instant::now();
        if until <= now {
            paused.remove(scope);
            return None;
        }
        Some(until - now)
    }

    fn local_wait(&self, buckets: &[(String, &Limit)]) -> Option<Duration> {
        let mut local = self.local.lock().unwrap_or_else(|p| p.into_inner());
        let now = self.clock.now();
        buckets
            .iter()
            .filter_map(|(key, l)| {
                let limiter = local.entry(key.clone()).or_insert_with(|| {
                    let quota = Quota::with_period(l.interval())
                        .expect("interval above zero")
                        .allow_burst(l.burst);
                    Arc::new(DefaultDirectRateLimiter::direct(quota))
                });
                limiter
                    .check()
                    .err()
                    .map(|not_until| not_until.wait_time_from(now))
            })
            .max()
    }
}

/// Where workers announce a pause: `<millis> <scope>`.
pub const PAUSES_CHANNEL: &str = "outreach_pauses";

#[cfg(test)]
mod tests {
    use super::*;

    fn per_second(n: u32) -> LimitSet {
        LimitSet::new(
            "tenant:t:sms",
            vec![Limit::new(n, Duration::from_secs(1)).unwrap()],
        )
    }

    #[tokio::test]
    async fn without_a_database_the_local_limiter_allows_the_burst_then_waits() {
        let rl = RateLimiter::new(None);
        let set = per_second(3);
        for _ in 0..3 {
            assert_eq!(rl.take(&[&set]).await.unwrap(), Take::Granted);
        }
        match rl.take(&[&set]).await.unwrap() {
            Take::Wait { wait, paused } => {
                assert!(!paused);
                assert!(wait <= Duration::from_millis(334), "{wait:?}");
            }
            Take::Granted => panic!("the fourth send in a second must wait"),
        }
    }

    #[tokio::test]
    async fn an_unlimited_set_is_always_granted() {
        let rl = RateLimiter::new(None);
        let set = LimitSet::new("system:email", vec![]);
        for _ in 0..1000 {
            assert_eq!(rl.take(&[&set]).await.unwrap(), Take::Granted);
        }
    }

    #[tokio::test]
    async fn a_paused_account_waits_until_the_pause_ends() {
        let rl = RateLimiter::new(None);
        let set = LimitSet::new("tenant:t:sms:0", vec![]);
        rl.pause(&set, Duration::from_secs(2)).await.unwrap();
        match rl.take(&[&set]).await.unwrap() {
            Take::Wait { wait, paused } => {
                assert!(paused);
                assert!(wait > Duration::from_millis(1500) && wait <= Duration::from_secs(2));
            }
            Take::Granted => panic!("a paused account must not be used"),
        }
    }

    #[test]
    fn the_interval_spreads_the_period_over_the_count() {
        let l = Limit::new(10, Duration::from_secs(1)).unwrap();
        assert_eq!(l.interval(), Duration::from_millis(100));
        assert_eq!(l.with_burst(0).burst.get(), 1);
    }
}
