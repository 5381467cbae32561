//! What a bench run measured: per-phase results, latency percentiles, the
//! human table (stderr) and the one-line JSON (stdout, last line).

use serde::Serialize;

/// One measured drain (pipeline or baseline).
#[derive(Debug, Clone, Serialize)]
pub struct Phase {
    /// Jobs with a final event.
    pub jobs: usize,
    /// Steady state: jobs finished between the 10th and 90th percentile of
    /// completion times, divided by that time (no warm-up, no tail).
    pub jobs_per_sec: f64,
    /// Wall time from the first to the last final event, seconds.
    pub elapsed_secs: f64,
    /// CPU seconds per 1,000 jobs over the whole drain.
    pub cpu_per_1k: CpuPer1k,
    /// Highest sampled resident set of the worker process(es), MB.
    pub peak_rss_mb: f64,
}

/// CPU seconds per 1,000 jobs, per party.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct CpuPer1k {
    pub worker: f64,
    pub rabbitmq: f64,
    pub postgres: f64,
}

/// Enqueue-to-final latency of a set of jobs.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub jobs: usize,
    /// Rate the jobs were offered at (jobs/s).
    pub offered_per_sec: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Latency {
    /// Percentiles of `micros` (nearest rank).
    pub fn from_micros(mut micros: Vec<u64>, offered_per_sec: f64) -> Latency {
        micros.sort_unstable();
        let pick = |p: f64| -> f64 {
            if micros.is_empty() {
                return 0.0;
            }
            let rank = ((p * micros.len() as f64).ceil() as usize).clamp(1, micros.len());
            micros[rank - 1] as f64 / 1000.0
        };
        Latency {
            jobs: micros.len(),
            offered_per_sec,
            p50_ms: pick(0.50),
            p95_ms: pick(0.95),
            p99_ms: pick(0.99),
            max_ms: pick(1.0),
        }
    }
}

/// Steady-state rate from completion times (µs): the middle 80%.
pub fn steady_rate(done_us: &mut [u64]) -> f64 {
    if done_us.len() < 10 {
        return 0.0;
    }
    done_us.sort_unstable();
    let n = done_us.len();
    let (lo, hi) = (n / 10, n * 9 / 10);
    let secs = (done_us[hi] - done_us[lo]) as f64 / 1e6;
    if secs <= 0.0 {
        return 0.0;
    }
    (hi - lo) as f64 / secs
}

/// The whole run. Field names are the JSON contract.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: String,
    pub jobs: usize,
    pub tenants: usize,
    pub workers: usize,
    /// `in-process` or `processes`.
    pub worker_mode: &'static str,
    pub prefetch: u16,
    pub concurrency: usize,
    pub provider_latency_ms: u64,
    pub fault_ratio: f64,
    pub pipeline_jobs_per_sec: f64,
    pub baseline_jobs_per_sec: Option<f64>,
    /// pipeline / baseline steady-state jobs/s.
    pub pipeline_to_baseline_ratio: Option<f64>,
    /// Latency of the probe (pipeline, latency, tenants, faults: jobs offered
    /// at half the drain rate after the drain) or of the quiet tenants (noisy).
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub pipeline: Phase,
    pub baseline: Option<Phase>,
    pub latency: Latency,
    /// Noisy scenario: the quiet tenants' jobs, offered during the backlog.
    pub quiet_tenants: Option<Latency>,
    /// Noisy scenario: the backlog was published while the workers ran
    /// (`--live-backlog`) rather than before they started…
    pub live_backlog: bool,
    /// … at this rate (`--backlog-per-sec`), else as fast as it went.
    pub backlog_per_sec: Option<f64>,
    /// Noisy scenario, split by work queue: the quiet jobs whose routing key
    /// (tenant and channel) hashes to a work queue the noisy tenant's
    /// backlog is in (`sharing`, FIFO behind it until it is moved to its held
    /// queues) and all the others.
    pub quiet_sharing_noisy_queue: Option<Latency>,
    pub quiet_other_queues: Option<Latency>,
    /// Quiet routing keys sharing a work queue with the backlog, of all.
    pub quiet_keys_sharing: Option<(usize, usize)>,
    /// Latency scenario: workers × concurrency / provider latency.
    pub in_flight_limit_per_sec: Option<f64>,
    pub achieved_to_in_flight_limit_ratio: Option<f64>,
    pub provider_calls: u64,
    pub provider_faults: u64,
    pub final_states: Vec<(String, i64)>,
}

impl Report {
    /// The human table.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let mut line = |k: &str, v: String| out.push_str(&format!("{k:<34} {v}\n"));
        line(
            "scenario",
            match (self.live_backlog, self.backlog_per_sec) {
                (true, Some(rate)) => {
                    format!("{} (backlog published live at {rate:.0}/s)", self.scenario)
                }
                (true, None) => format!("{} (backlog published live)", self.scenario),
                (false, _) => self.scenario.clone(),
            },
        );
        line(
            "jobs / tenants / workers",
            format!(
                "{} / {} / {} ({})",
                self.jobs, self.tenants, self.workers, self.worker_mode
            ),
        );
        line(
            "prefetch / concurrency",
            format!("{} / {}", self.prefetch, self.concurrency),
        );
        line(
            "provider latency / faults",
            format!(
                "{} ms / {:.1}% ({} of {} calls)",
                self.provider_latency_ms,
                self.fault_ratio * 100.0,
                self.provider_faults,
                self.provider_calls
            ),
        );
        line(
            "pipeline steady state",
            format!("{:.0} jobs/s", self.pipeline_jobs_per_sec),
        );
        if let (Some(b), Some(r)) = (self.baseline_jobs_per_sec, self.pipeline_to_baseline_ratio) {
            line("baseline (broker only)", format!("{b:.0} jobs/s"));
            line("pipeline / baseline", format!("{:.0}%", r * 100.0));
        }
        if let (Some(l), Some(r)) = (
            self.in_flight_limit_per_sec,
            self.achieved_to_in_flight_limit_ratio,
        ) {
            line(
                "in-flight / latency limit",
                format!("{l:.0} jobs/s (achieved {:.0}%)", r * 100.0),
            );
        }
        for (name, p) in [
            ("pipeline", Some(&self.pipeline)),
            ("baseline", self.baseline.as_ref()),
        ] {
            if let Some(p) = p {
                line(
                    &format!("{name} CPU s / 1k jobs"),
                    format!(
                        "worker {:.3}, rabbitmq {:.3}, postgres {:.3}",
                        p.cpu_per_1k.worker, p.cpu_per_1k.rabbitmq, p.cpu_per_1k.postgres
                    ),
                );
                line(
                    &format!("{name} peak RSS"),
                    format!("{:.0} MB", p.peak_rss_mb),
                );
            }
        }
        let lat = |l: &Latency| {
            format!(
                "p50 {:.0} ms, p95 {:.0} ms, p99 {:.0} ms, max {:.0} ms ({} jobs at {:.0}/s)",
                l.p50_ms, l.p95_ms, l.p99_ms, l.max_ms, l.jobs, l.offered_per_sec
            )
        };
        line("enqueue-to-final latency", lat(&self.latency));
        if let Some(q) = &self.quiet_tenants {
            line("quiet tenants' latency", lat(q));
        }
        if let (Some(q), Some((k, of))) = (&self.quiet_other_queues, self.quiet_keys_sharing) {
            line(
                &format!("  {} of {of} quiet keys elsewhere", of - k),
                lat(q),
            );
        }
        if let (Some(q), Some((k, _))) = (&self.quiet_sharing_noisy_queue, self.quiet_keys_sharing)
        {
            line(&format!("  {k} sharing a noisy queue"), lat(q));
        }
        let states: Vec<String> = self
            .final_states
            .iter()
            .map(|(s, n)| format!("{s} {n}"))
            .collect();
        line("log rows by status", states.join(", "));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let l = Latency::from_micros((1..=100).map(|v| v * 1000).collect(), 1.0);
        assert_eq!(
            (l.p50_ms, l.p95_ms, l.p99_ms, l.max_ms),
            (50.0, 95.0, 99.0, 100.0)
        );
    }

    #[test]
    fn steady_rate_ignores_the_first_and_last_tenth() {
        // 1,000 jobs one ms apart, plus a slow start: the rate is 1,000/s.
        let mut t: Vec<u64> = (0..1000).map(|i| 5_000_000 + i * 1000).collect();
        t[0] = 0;
        assert!((steady_rate(&mut t) - 1000.0).abs() < 5.0);
    }
}
