//! Rate-limit accounting, as a property: however many worker processes share
//! a tenant's bucket in PostgreSQL, and whatever the limit, the sends granted
//! never exceed what the limit allows over the time they were taken in
//! (`burst` at once, then one per interval).

use crate::support;

use outreach::ratelimit::{Limit, LimitSet, RateLimiter, Take};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use std::time::{Duration, Instant};
use support::TestEnv;

/// One case: `workers` limiters (one per simulated process) taking from the
/// same set as fast as they can, `rounds` times each.
#[derive(Debug, Clone)]
struct Case {
    count: u32,
    period_ms: u64,
    burst: u32,
    workers: usize,
    rounds: usize,
}

fn cases() -> impl Strategy<Value = Case> {
    (1u32..400, 50u64..2000, 1u32..50, 1usize..4, 20usize..150).prop_map(
        |(count, period_ms, burst, workers, rounds)| Case {
            count,
            period_ms,
            burst: burst.min(count),
            workers,
            rounds,
        },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn workers_sharing_a_bucket_are_never_granted_more_than_the_limit_allows() {
    let env = TestEnv::new().await;
    let handle = tokio::runtime::Handle::current();
    let mut runner = TestRunner::new(Config {
        cases: 32,
        ..Config::default()
    });
    let result = runner.run(&cases(), |case| {
        let (granted, allowed) = tokio::task::block_in_place(|| {
            handle.block_on(async {
                let limit = Limit::new(case.count, Duration::from_millis(case.period_ms))
                    .unwrap()
                    .with_burst(case.burst);
                // A scope of its own per case: a fresh bucket.
                let scope = format!("tenant:{}:sms", uuid::Uuid::now_v7().simple());
                let set = LimitSet::new(scope, vec![limit]);
                let limiters: Vec<RateLimiter> = (0..case.workers)
                    .map(|_| RateLimiter::new(Some(env.pool.clone())))
                    .collect();
                let started = Instant::now();
                let takes = limiters.iter().map(|rl| {
                    let set = set.clone();
                    async move {
                        let mut granted = 0u64;
                        for _ in 0..case.rounds {
                            match rl.take(&[&set]).await.unwrap() {
                                Take::Granted => granted += 1,
                                // Ask again soon, as a job waiting in place would.
                                Take::Wait { wait, .. } => {
                                    tokio::time::sleep(wait.min(Duration::from_millis(2))).await
                                }
                            }
                        }
                        granted
                    }
                });
                let granted: u64 = futures::future::join_all(takes).await.into_iter().sum();
                let elapsed = started.elapsed();
                // GCRA: the burst at once, then one per interval (and the
                // one whose interval began just before the end).
                let allowed = u64::from(limit.burst.get())
                    + (elapsed.as_micros() / limit.interval().as_micros().max(1)) as u64
                    + 1;
                (granted, allowed)
            })
        });
        prop_assert!(
            granted <= allowed,
            "{case:?}: granted {granted}, the limit allows {allowed}"
        );
        Ok(())
    });
    env.cleanup().await;
    if let Err(e) = result {
        panic!("{e}");
    }
}
