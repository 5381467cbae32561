//! `outreach bench --scenario soak --rate R --jobs N`: jobs offered at a
//! fixed rate (open loop, below the ceiling) for as long as N takes, the
//! whole system sampled every `--sample-secs`: jobs final, the backlog in the
//! work and dead-letter queues, the workers' RSS and open file descriptors
//! (connections included), PostgreSQL sessions on the bench database and
//! RabbitMQ's RSS. Each sample is printed as it is taken (the progress); the
//! end compares the first and last quarters, so growth shows.

use super::measure::WorkerProcs;
use outreach::broker::{self, Nodes, Topology};
use serde::Serialize;
use sqlx::PgPool;
use std::fs;
use std::time::{Duration, Instant};

/// One look at the system.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    pub secs: f64,
    pub offered: usize,
    pub finals: usize,
    pub work_queue_depth: u32,
    pub dead_letters: u32,
    pub worker_rss_mb: f64,
    pub worker_fds: usize,
    pub postgres_sessions: i64,
    pub rabbitmq_rss_mb: f64,
}

impl Sample {
    pub const HEADER: &str =
        "   secs    offered     final  backlog  dlq  worker MB  fds  pg conns  rabbit MB";

    pub fn line(&self) -> String {
        format!(
            "{:>7.0} {:>10} {:>9} {:>8} {:>4} {:>10.1} {:>4} {:>9} {:>10.1}",
            self.secs,
            self.offered,
            self.finals,
            self.work_queue_depth,
            self.dead_letters,
            self.worker_rss_mb,
            self.worker_fds,
            self.postgres_sessions,
            self.rabbitmq_rss_mb
        )
    }
}

/// What the sampler reads from.
pub struct Probe<'a> {
    pub nodes: &'a Nodes,
    pub topology: &'a Topology,
    pub pool: &'a PgPool,
    pub procs: &'a WorkerProcs,
    pub started: Instant,
    pub rate: f64,
    pub jobs: usize,
}

impl Probe<'_> {
    pub async fn sample(&self, finals: usize) -> anyhow::Result<Sample> {
        let secs = self.started.elapsed().as_secs_f64();
        let conn = broker::connect(self.nodes, "bench-soak-probe").await?;
        let work_queue_depth = self.topology.work_depth(&conn).await?;
        let dead_letters = broker::queue_depth(&conn, &self.topology.dead_letter_queue)
            .await?
            .unwrap_or(0);
        let _ = conn.close(200, "bye".into()).await;
        let postgres_sessions: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()",
        )
        .fetch_one(self.pool)
        .await?;
        Ok(Sample {
            secs,
            offered: ((secs * self.rate) as usize).min(self.jobs),
            finals,
            work_queue_depth,
            dead_letters,
            worker_rss_mb: super::measure::worker_rss(self.procs) as f64 / 1_048_576.0,
            worker_fds: worker_fds(self.procs),
            // Less the sampler's own session.
            postgres_sessions: postgres_sessions - 1,
            // The RabbitMQ node(s) on this machine.
            rabbitmq_rss_mb: super::measure::rss_of_command("beam.smp") as f64 / 1_048_576.0,
        })
    }
}

/// Open file descriptors of the worker process(es): sockets to RabbitMQ,
/// PostgreSQL and providers, plus files.
fn worker_fds(procs: &WorkerProcs) -> usize {
    let count = |pid: &str| {
        fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    match procs {
        WorkerProcs::InProcess => count("self"),
        WorkerProcs::Children(pids) => pids.iter().map(|p| count(&p.to_string())).sum(),
    }
}

/// First-quarter and last-quarter averages of a measure, and its peak.
pub fn growth(samples: &[Sample], f: impl Fn(&Sample) -> f64) -> (f64, f64, f64) {
    let q = (samples.len() / 4).max(1);
    let avg = |s: &[Sample]| s.iter().map(&f).sum::<f64>() / s.len().max(1) as f64;
    let peak = samples.iter().map(&f).fold(0.0, f64::max);
    (
        avg(&samples[..q.min(samples.len())]),
        avg(&samples[samples.len().saturating_sub(q)..]),
        peak,
    )
}

/// The summary printed at the end.
pub fn summary(samples: &[Sample], rate: f64, elapsed: Duration) -> String {
    let mut out = format!(
        "soak: {} jobs offered at {rate}/s, all final after {:.0} s\n\
         measure            first quarter  last quarter      peak\n",
        samples.last().map_or(0, |s| s.finals),
        elapsed.as_secs_f64()
    );
    type Measure = fn(&Sample) -> f64;
    let rows: [(&str, Measure); 6] = [
        ("worker RSS MB", |s| s.worker_rss_mb),
        ("worker fds", |s| s.worker_fds as f64),
        ("pg sessions", |s| s.postgres_sessions as f64),
        ("backlog", |s| f64::from(s.work_queue_depth)),
        ("dead letters", |s| f64::from(s.dead_letters)),
        ("rabbitmq RSS MB", |s| s.rabbitmq_rss_mb),
    ];
    for (name, f) in rows {
        let (first, last, peak) = growth(samples, f);
        out.push_str(&format!(
            "{name:<18} {first:>13.1} {last:>13.1} {peak:>9.1}\n"
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(rss: f64) -> Sample {
        Sample {
            secs: 0.0,
            offered: 0,
            finals: 0,
            work_queue_depth: 0,
            dead_letters: 0,
            worker_rss_mb: rss,
            worker_fds: 0,
            postgres_sessions: 0,
            rabbitmq_rss_mb: 0.0,
        }
    }

    #[test]
    fn growth_compares_the_first_and_last_quarters() {
        let samples: Vec<Sample> = [10.0, 10.0, 20.0, 20.0, 30.0, 30.0, 40.0, 40.0]
            .into_iter()
            .map(at)
            .collect();
        assert_eq!(growth(&samples, |s| s.worker_rss_mb), (10.0, 40.0, 40.0));
    }
}
