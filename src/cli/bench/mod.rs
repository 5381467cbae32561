//! `outreach bench`: throughput, latency, CPU, memory and fairness of the
//! whole pipeline against the real RabbitMQ and PostgreSQL, compared with a
//! broker-only baseline of the same shape measured in the same run.
//!
//! - [`fake`]: in-process SendGrid / Twilio fakes (latency, faults).
//! - [`setup`]: fresh database, tenants (the per-tenant config hook),
//!   providers pointed at the fake, workers in-process or as child processes.
//! - [`load`]: payloads, confirmed publishing, the event collector.
//! - [`baseline`]: consume, publish an event with confirm, ack; nothing else.
//! - [`measure`]: `/proc` CPU and RSS; [`report`]: results, table, JSON.
//! - [`soak`]: a long run at a fixed rate, sampled for growth.
//!
//! Method: the N jobs are *pre-enqueued*, then the workers start and drain
//! them; jobs/s is the steady state (middle 80% of completions), so warm-up
//! and tail are excluded. Latency is measured separately by a *probe*: after
//! the drain, jobs offered at half the measured rate (open loop), timed from
//! their enqueue (in `metadata`) to the arrival of their final event. In the
//! noisy scenario the quiet tenants' jobs are offered *during* the drain, and
//! with `--live-backlog` the noisy tenant's backlog is published during it too.

mod baseline;
mod fake;
mod load;
mod measure;
mod report;
mod setup;
mod soak;

pub use report::Report;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use load::Collector;
use measure::{CpuSnapshot, WorkerProcs};
use outreach::broker::Topology;
use outreach::enqueue::JobPublisher;
use outreach::settings::Settings;
use report::{CpuPer1k, Latency, Phase};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

/// What to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// Fast fake provider: what the pipeline costs on top of the broker.
    Pipeline,
    /// 200 ms per provider call: bounded by concurrency / latency.
    Latency,
    /// 10,000 active tenants: memory.
    Tenants,
    /// One tenant with a big backlog and 100 quiet tenants: fairness.
    Noisy,
    /// 5% of provider calls answer 500: quick retries.
    Faults,
    /// `--jobs` offered at `--rate` jobs/s; memory, connections and queue
    /// depths sampled for growth.
    Soak,
}

/// `outreach bench` options.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchOptions {
    #[arg(long, value_enum, default_value_t = Scenario::Pipeline)]
    pub scenario: Scenario,
    /// Jobs to drain (pre-enqueued, unless `--live-backlog`).
    #[arg(long, default_value_t = 200_000)]
    pub jobs: usize,
    /// Tenants (default 100; tenants scenario 10,000; noisy 1 + 100).
    #[arg(long)]
    pub tenants: Option<usize>,
    /// Workers run in this process (each its own `run_worker`).
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// Run this many `outreach worker` child processes instead.
    #[arg(long, conflicts_with = "workers")]
    pub processes: Option<usize>,
    /// Override amqp.prefetch (pipeline and baseline alike).
    #[arg(long)]
    pub prefetch: Option<u16>,
    /// Override worker.concurrency (pipeline and baseline alike).
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// Added provider latency in ms (latency scenario: 200).
    #[arg(long)]
    pub latency_ms: Option<u64>,
    /// Fraction of provider calls answered 500 (faults scenario: 0.05).
    #[arg(long)]
    pub fault_ratio: Option<f64>,
    /// Skip the broker-only baseline.
    #[arg(long)]
    pub no_baseline: bool,
    /// Noisy scenario: publish the backlog while the workers run, as an
    /// upstream campaign would arrive, instead of before they start.
    #[arg(long)]
    pub live_backlog: bool,
    /// With `--live-backlog`: publish it at this rate (jobs/s) instead of as
    /// fast as the broker takes it.
    #[arg(long, requires = "live_backlog")]
    pub backlog_per_sec: Option<f64>,
    /// Soak: jobs offered per second (keep it below the pipeline's measured rate).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Soak: seconds between samples.
    #[arg(long, default_value_t = 10)]
    pub sample_secs: u64,
    /// Give up when a phase takes longer than this.
    #[arg(long, default_value_t = 1800)]
    pub timeout_secs: u64,
    /// Print one JSON object as the last line of stdout (tables go to stderr).
    #[arg(long)]
    pub json: bool,
}

/// Jobs per quiet tenant in the noisy scenario, their count and offered rate.
const QUIET_TENANTS: usize = 100;
const QUIET_JOBS_EACH: usize = 10;
const QUIET_PER_SEC: f64 = 50.0;
/// The noisy tenant's own rate limit: its backlog drains at this rate.
const NOISY_PER_SEC: u32 = 1000;

/// Run the bench and print its report.
pub async fn run(mut settings: Settings, opts: BenchOptions) -> anyhow::Result<()> {
    outreach::app::install_crypto();
    let run_id = uuid::Uuid::now_v7().simple().to_string()[20..].to_owned();
    if let Some(p) = opts.prefetch {
        settings.amqp.prefetch = p;
    }
    if let Some(c) = opts.concurrency {
        settings.worker.concurrency = c;
    }
    let behaviour = fake::FakeBehaviour {
        latency: Duration::from_millis(opts.latency_ms.unwrap_or(
            if opts.scenario == Scenario::Latency {
                200
            } else {
                0
            },
        )),
        fault_ratio: opts
            .fault_ratio
            .unwrap_or(if opts.scenario == Scenario::Faults {
                0.05
            } else {
                0.0
            }),
    };
    // Before anything is made: from here on SIGINT / SIGTERM end the run
    // through the clean-up below instead of killing the process.
    let mut signals = Signals::install()?;
    let db_name = format!("outreach_bench_{run_id}");
    // Under the configured prefix (so a broker's permissions and policies
    // for it apply), one level down so nothing of a deployment's is touched.
    let base = format!("{}.bench-{run_id}", settings.amqp.prefix);
    let prefixes = [base.clone(), format!("{base}-base")];
    eprintln!(
        "bench {run_id}: database {db_name}, queues and exchanges {base}.* and {base}-base.* \
         (under amqp.prefix); all removed when it ends"
    );
    let stop = CancellationToken::new();
    let aux = aux_runtime(stop.clone())?;
    let fake = aux
        .spawn(fake::FakeProvider::start(behaviour, stop.clone()))
        .await??;
    setup::point_defaults_at(&mut settings, &fake.base_url)?;

    let ctx = Ctx {
        opts: &opts,
        aux: &aux,
        fake: &fake,
        behaviour,
        run_id: &run_id,
        bar: progress_bar(),
        workers: setup::Fleet::default(),
    };
    let mut interrupted = false;
    let outcome = tokio::select! {
        outcome = async {
            if opts.scenario == Scenario::Soak {
                ctx.bar.finish_and_clear();
                ctx.soak(&mut settings, &db_name, &prefixes[0])
                    .await
                    .map(Outcome::Soak)
            } else {
                ctx.run(&mut settings, &db_name, &prefixes)
                    .await
                    .map(|r| Outcome::Report(Box::new(r)))
            }
        } => outcome,
        signal = signals.recv() => {
            interrupted = true;
            Err(anyhow::anyhow!("interrupted by {signal}"))
        }
    };
    ctx.bar.finish_and_clear();
    if interrupted {
        signals.exit_on_next(&run_id, &base);
    }

    // Clean up whatever happened: the workers first (a running worker
    // would declare its queues again), then queues, exchanges, database.
    if let Err(e) = &outcome {
        eprintln!("bench {run_id}: ended early ({e}); removing its queues and database");
    }
    if let Err(e) = ctx.workers.stop().await {
        eprintln!("stopping the bench's workers: {e:#}");
    }
    let held = setup::held_queues(&settings).await;
    for p in &prefixes {
        let mut s = settings.amqp.clone();
        s.prefix = p.clone();
        let t = Topology::new(&s, &settings.worker.retry_delays_secs);
        let own = format!("{p}.");
        let held: Vec<String> = held
            .iter()
            .filter(|q| q.starts_with(&own))
            .cloned()
            .collect();
        if let Err(e) = load::delete_topology(&settings.amqp.nodes(), &t, &held).await {
            eprintln!("cleanup of {p} incomplete: {e:#}");
        }
    }
    if let Err(e) = setup::drop_database(&settings, &db_name).await {
        eprintln!("could not drop database {db_name}: {e:#}");
    }
    stop.cancel();

    match outcome? {
        Outcome::Report(report) => {
            eprintln!("\n{}", report.table());
            if opts.json {
                println!("{}", serde_json::to_string(&report)?);
            }
        }
        Outcome::Soak((samples, summary)) => {
            eprintln!("\n{summary}");
            if opts.json {
                println!("{}", serde_json::to_string(&samples)?);
            }
        }
    }
    Ok(())
}

/// SIGINT and SIGTERM, caught from the start of a run.
struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            int: signal(SignalKind::interrupt()).context("SIGINT handler")?,
            term: signal(SignalKind::terminate()).context("SIGTERM handler")?,
        })
    }

    /// The next signal's name.
    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.int.recv() => "SIGINT",
            _ = self.term.recv() => "SIGTERM",
        }
    }

    /// A second signal during the clean-up exits at once (a broker or
    /// database that does not answer must not make the bench unkillable),
    /// saying what is left.
    fn exit_on_next(mut self, run_id: &str, base: &str) {
        let (run_id, base) = (run_id.to_owned(), base.to_owned());
        tokio::spawn(async move {
            let signal = self.recv().await;
            eprintln!(
                "bench {run_id}: {signal} again, exiting without cleaning up: delete its queues \
                 and exchanges ({base}.*, {base}-base.*) and database outreach_bench_{run_id} \
                 by hand"
            );
            std::process::exit(130);
        });
    }
}

/// What a bench run gives.
enum Outcome {
    Report(Box<Report>),
    /// The samples and their summary.
    Soak((Vec<soak::Sample>, String)),
}

/// A current-thread runtime on its own thread (named so its CPU is not
/// counted as the worker's) for the fake provider and the event collectors.
fn aux_runtime(stop: CancellationToken) -> anyhow::Result<Handle> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name(measure::AUX_THREAD.into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("bench auxiliary runtime");
            let _ = tx.send(rt.handle().clone());
            rt.block_on(stop.cancelled());
        })?;
    Ok(rx.recv()?)
}

fn progress_bar() -> ProgressBar {
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} {msg:<24} [{elapsed_precise}] {bar:40} {pos}/{len} ({per_sec})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

struct Ctx<'a> {
    opts: &'a BenchOptions,
    aux: &'a Handle,
    fake: &'a fake::FakeProvider,
    behaviour: fake::FakeBehaviour,
    run_id: &'a str,
    bar: ProgressBar,
    workers: setup::Fleet,
}

impl Ctx<'_> {
    async fn run(
        &self,
        settings: &mut Settings,
        db_name: &str,
        prefixes: &[String; 2],
    ) -> anyhow::Result<Report> {
        let o = self.opts;
        let n = o.jobs.max(10);
        let noisy = o.scenario == Scenario::Noisy;
        let tenants = o.tenants.unwrap_or(match o.scenario {
            Scenario::Tenants => 10_000,
            Scenario::Noisy => 1 + QUIET_TENANTS,
            _ => 100,
        });
        let pool = setup::fresh_database(settings, db_name).await?;
        setup::configure_tenants(&pool, 0..tenants).await?;
        if noisy {
            setup::limit_tenant(&pool, 0, NOISY_PER_SEC).await?;
        }
        settings.amqp.prefix = prefixes[0].clone();
        let extra = if noisy {
            QUIET_TENANTS * QUIET_JOBS_EACH
        } else {
            (n / 10).clamp(200, 10_000)
        };
        // Noisy: the backlog is tenant 0's, the extra jobs the quiet tenants'.
        let tenant_of: Arc<dyn Fn(usize) -> String + Send + Sync> = if noisy {
            Arc::new(move |i| setup::tenant_id(if i < n { 0 } else { 1 + i % QUIET_TENANTS }))
        } else {
            Arc::new(move |i| setup::tenant_id(i % tenants))
        };

        let (topology, publisher, collector, events_conn) =
            self.prepare(settings, n + extra).await?;
        // Noisy: which quiet (tenant, channel) routing keys share a work
        // queue with the noisy tenant's backlog.
        let key_of = |tenant: &str, channel: &str| {
            outreach::job::routing_key_of(Some(tenant), Some(channel))
        };
        let sharing: Option<HashSet<String>> = if noisy && topology.work_queues.len() > 1 {
            let pairs: Vec<(String, &str)> = (0..=QUIET_TENANTS)
                .flat_map(|t| load::CHANNELS.map(|c| (setup::tenant_id(t), c)))
                .collect();
            let queue_of =
                load::work_queue_of(&settings.amqp.nodes(), &topology, &publisher, &pairs).await?;
            let queue = |(t, c): &(String, &str)| queue_of[&key_of(t, c)];
            let (backlog, quiet) = pairs.split_at(load::CHANNELS.len());
            let noisy_queues: HashSet<usize> = backlog.iter().map(queue).collect();
            Some(
                quiet
                    .iter()
                    .filter(|p| noisy_queues.contains(&queue(p)))
                    .map(|(t, c)| key_of(t, c))
                    .collect(),
            )
        } else {
            None
        };
        let live = noisy && o.live_backlog;
        if !live {
            self.enqueue(&publisher, 0..n, &*tenant_of).await?;
        }
        let procs = self.start_workers(settings).await?;
        // A live backlog is published as fast as the broker takes it, while
        // the workers run and the quiet tenants' jobs trickle in.
        let backlog = live.then(|| {
            let (p, run, t) = (publisher.clone(), self.run_id.to_owned(), tenant_of.clone());
            let rate = o.backlog_per_sec;
            tokio::spawn(async move {
                match rate {
                    Some(r) => load::enqueue_paced(&p, &run, 0..n, &*t, r).await,
                    None => load::enqueue_all(&p, &run, 0..n, &*t, &|_| {}).await,
                }
            })
        });
        let trickle = noisy.then(|| {
            let (p, run, t) = (publisher.clone(), self.run_id.to_owned(), tenant_of.clone());
            tokio::spawn(async move {
                load::enqueue_paced(&p, &run, n..n + extra, &*t, QUIET_PER_SEC).await
            })
        });
        let pipeline = self.drain("pipeline", &collector, 0..n, &procs).await?;
        if let Some(b) = backlog {
            b.await??;
        }
        let mut split = None;
        let (latency, quiet) = match trickle {
            Some(t) => {
                t.await??;
                self.wait("quiet tenants", &collector, n..n + extra).await?;
                let q = Latency::from_micros(collector.take(n..n + extra).1, QUIET_PER_SEC);
                if let Some(sharing) = &sharing {
                    let shares =
                        |i: usize| sharing.contains(&key_of(&tenant_of(i), load::channel_of(i)));
                    let pick = |want: bool| {
                        let lat = collector.take_if(n..n + extra, |i| shares(i) == want).1;
                        Latency::from_micros(lat, QUIET_PER_SEC)
                    };
                    split = Some((pick(true), pick(false), sharing.len()));
                }
                (q.clone(), Some(q))
            }
            None => {
                let rate = (pipeline.jobs_per_sec * 0.5).max(10.0);
                let t = tenant_of.clone();
                let (p, run) = (publisher.clone(), self.run_id.to_owned());
                let offer = tokio::spawn(async move {
                    load::enqueue_paced(&p, &run, n..n + extra, &*t, rate).await
                });
                self.wait("latency probe", &collector, n..n + extra).await?;
                offer.await??;
                (
                    Latency::from_micros(collector.take(n..n + extra).1, rate),
                    None,
                )
            }
        };
        self.workers.stop().await?;
        let _ = events_conn.close(200, "bye".into()).await;
        let final_states: Vec<(String, i64)> = sqlx::query_as(
            "SELECT status::text, count(*) FROM outreach_logs GROUP BY 1 ORDER BY 1",
        )
        .fetch_all(&pool)
        .await?;
        pool.close().await;
        drop(topology);

        let baseline = if o.no_baseline {
            None
        } else {
            settings.amqp.prefix = prefixes[1].clone();
            Some(self.baseline(settings, n, &*tenant_of).await?)
        };
        let workers_n = o.processes.unwrap_or(o.workers);
        // Sends in flight per worker: worker.concurrency, and jobs between
        // their first call and their record (delivery_log.max_unrecorded).
        let concurrency = settings
            .worker
            .concurrency
            .min(settings.delivery_log.max_unrecorded);
        let in_flight_limit = (!self.behaviour.latency.is_zero())
            .then(|| (workers_n * concurrency) as f64 / self.behaviour.latency.as_secs_f64());
        let (calls, faults) = self.fake.calls();
        Ok(Report {
            scenario: format!("{:?}", o.scenario).to_lowercase(),
            jobs: n,
            tenants,
            workers: workers_n,
            worker_mode: if o.processes.is_some() {
                "processes"
            } else {
                "in-process"
            },
            prefetch: settings.amqp.prefetch,
            concurrency,
            provider_latency_ms: self.behaviour.latency.as_millis() as u64,
            fault_ratio: self.behaviour.fault_ratio,
            pipeline_jobs_per_sec: pipeline.jobs_per_sec,
            baseline_jobs_per_sec: baseline.as_ref().map(|b| b.jobs_per_sec),
            pipeline_to_baseline_ratio: baseline
                .as_ref()
                .map(|b| pipeline.jobs_per_sec / b.jobs_per_sec),
            p50_ms: latency.p50_ms,
            p95_ms: latency.p95_ms,
            p99_ms: latency.p99_ms,
            in_flight_limit_per_sec: in_flight_limit,
            achieved_to_in_flight_limit_ratio: in_flight_limit.map(|l| pipeline.jobs_per_sec / l),
            pipeline,
            baseline,
            latency,
            quiet_tenants: quiet,
            live_backlog: live,
            backlog_per_sec: o.backlog_per_sec.filter(|_| live),
            quiet_keys_sharing: split
                .as_ref()
                .map(|s| (s.2, QUIET_TENANTS * load::CHANNELS.len())),
            quiet_sharing_noisy_queue: split.as_ref().map(|s| s.0.clone()),
            quiet_other_queues: split.map(|s| s.1),
            provider_calls: calls,
            provider_faults: faults,
            final_states,
        })
    }

    /// Start the workers under test (`--processes` or `--workers`) in
    /// [`Ctx::workers`]; returns what to sample.
    async fn start_workers(&self, settings: &Settings) -> anyhow::Result<WorkerProcs> {
        let workers = match self.opts.processes {
            Some(p) => setup::Workers::processes(settings, &self.fake.base_url, p)?,
            None => setup::Workers::in_process(settings, self.opts.workers),
        };
        let procs = workers
            .pids()
            .map_or(WorkerProcs::InProcess, WorkerProcs::Children);
        self.workers.start(workers).await;
        Ok(procs)
    }

    /// The soak scenario (see [`soak`]).
    async fn soak(
        &self,
        settings: &mut Settings,
        db_name: &str,
        prefix: &str,
    ) -> anyhow::Result<(Vec<soak::Sample>, String)> {
        let o = self.opts;
        let n = o.jobs.max(10);
        let rate = o.rate.context(
            "--scenario soak needs --rate (jobs/s): take it below the rate the pipeline \
             scenario measures on this machine",
        )?;
        let tenants = o.tenants.unwrap_or(100);
        let pool = setup::fresh_database(settings, db_name).await?;
        setup::configure_tenants(&pool, 0..tenants).await?;
        settings.amqp.prefix = prefix.to_owned();
        let (topology, publisher, collector, events_conn) = self.prepare(settings, n).await?;
        let procs = self.start_workers(settings).await?;
        let started = Instant::now();
        let offer = {
            let (p, run) = (publisher.clone(), self.run_id.to_owned());
            tokio::spawn(async move {
                load::enqueue_paced(
                    &p,
                    &run,
                    0..n,
                    &move |i| setup::tenant_id(i % tenants),
                    rate,
                )
                .await
            })
        };
        let nodes = settings.amqp.nodes();
        let probe = soak::Probe {
            nodes: &nodes,
            topology: &topology,
            pool: &pool,
            procs: &procs,
            started,
            rate,
            jobs: n,
        };
        let limit = Duration::from_secs(o.timeout_secs);
        eprintln!("{}", soak::Sample::HEADER);
        let mut samples = Vec::new();
        let outcome = loop {
            if let Err(e) = self.workers.check().await {
                break Err(e);
            }
            let finals = collector.finals_in(0..n);
            let sample = match probe.sample(finals).await {
                Ok(s) => s,
                Err(e) => break Err(e),
            };
            eprintln!("{}", sample.line());
            samples.push(sample);
            if finals >= n {
                break Ok(());
            }
            if started.elapsed() > limit {
                break Err(anyhow::anyhow!(
                    "soak: only {finals} of {n} jobs final after {limit:?} (raise --timeout-secs, or lower --rate)"
                ));
            }
            tokio::time::sleep(Duration::from_secs(o.sample_secs.max(1))).await;
        };
        let elapsed = started.elapsed();
        offer.abort();
        self.workers.stop().await?;
        let _ = events_conn.close(200, "bye".into()).await;
        outcome?;
        let final_states: Vec<(String, i64)> = sqlx::query_as(
            "SELECT status::text, count(*) FROM outreach_logs GROUP BY 1 ORDER BY 1",
        )
        .fetch_all(&pool)
        .await?;
        pool.close().await;
        let mut summary = soak::summary(&samples, rate, elapsed);
        summary.push_str(&format!("final states: {final_states:?}\n"));
        Ok((samples, summary))
    }

    /// Declare the prefix's topology, connect a publisher and start a
    /// collector (on the auxiliary runtime) for `capacity` job indices.
    async fn prepare(
        &self,
        settings: &Settings,
        capacity: usize,
    ) -> anyhow::Result<(Topology, Arc<JobPublisher>, Collector, lapin::Connection)> {
        let topology = Topology::new(&settings.amqp, &settings.worker.retry_delays_secs);
        let publisher = JobPublisher::connect(&settings.amqp.nodes(), &topology)
            .await
            .context("bench publisher")?;
        let (nodes, t) = (settings.amqp.nodes(), topology.clone());
        let (collector, conn) = self
            .aux
            .spawn(async move { Collector::start(&nodes, &t, capacity).await })
            .await??;
        Ok((topology, Arc::new(publisher), collector, conn))
    }

    async fn enqueue(
        &self,
        publisher: &JobPublisher,
        range: std::ops::Range<usize>,
        tenant_of: &(dyn Fn(usize) -> String + Sync),
    ) -> anyhow::Result<()> {
        self.bar.reset();
        self.bar.set_length(range.len() as u64);
        self.bar.set_message("enqueue");
        let bar = self.bar.clone();
        load::enqueue_all(publisher, self.run_id, range, tenant_of, &move |k| {
            bar.inc(k as u64)
        })
        .await
    }

    /// Wait until every job in `range` is final; measure the drain.
    async fn drain(
        &self,
        what: &str,
        collector: &Collector,
        range: std::ops::Range<usize>,
        procs: &WorkerProcs,
    ) -> anyhow::Result<Phase> {
        let cpu0 = CpuSnapshot::take(procs);
        let mut peak_rss = 0;
        self.wait_sampling(what, collector, range.clone(), &mut || {
            peak_rss = peak_rss.max(measure::worker_rss(procs));
        })
        .await?;
        let cpu = CpuSnapshot::take(procs).since(&cpu0);
        let (mut done, _) = collector.take(range.clone());
        let elapsed = match (done.iter().min(), done.iter().max()) {
            (Some(a), Some(b)) => (b - a) as f64 / 1e6,
            _ => 0.0,
        };
        let per_1k = |s: f64| s / range.len() as f64 * 1000.0;
        Ok(Phase {
            jobs: done.len(),
            jobs_per_sec: report::steady_rate(&mut done),
            elapsed_secs: elapsed,
            cpu_per_1k: CpuPer1k {
                worker: per_1k(cpu.worker),
                rabbitmq: per_1k(cpu.rabbitmq),
                postgres: per_1k(cpu.postgres),
            },
            peak_rss_mb: peak_rss as f64 / 1_048_576.0,
        })
    }

    async fn wait(
        &self,
        what: &str,
        collector: &Collector,
        range: std::ops::Range<usize>,
    ) -> anyhow::Result<()> {
        self.wait_sampling(what, collector, range, &mut || {}).await
    }

    async fn wait_sampling(
        &self,
        what: &str,
        collector: &Collector,
        range: std::ops::Range<usize>,
        sample: &mut (dyn FnMut() + Send),
    ) -> anyhow::Result<()> {
        self.bar.reset();
        self.bar.set_length(range.len() as u64);
        self.bar.set_message(what.to_owned());
        let started = Instant::now();
        let limit = Duration::from_secs(self.opts.timeout_secs);
        loop {
            // A worker that stopped (a port taken…) fails the run now,
            // with its reason, rather than after the timeout.
            self.workers.check().await?;
            sample();
            let done = collector.finals_in(range.clone());
            self.bar.set_position(done as u64);
            if done >= range.len() {
                return Ok(());
            }
            if started.elapsed() > limit {
                anyhow::bail!(
                    "{what}: only {done} of {} jobs final after {limit:?} ({} events seen)",
                    range.len(),
                    collector.events()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The broker-only baseline over the same number of jobs on its own prefix.
    async fn baseline(
        &self,
        settings: &Settings,
        n: usize,
        tenant_of: &(dyn Fn(usize) -> String + Sync),
    ) -> anyhow::Result<Phase> {
        let (topology, publisher, collector, events_conn) = self.prepare(settings, n).await?;
        self.enqueue(&publisher, 0..n, tenant_of).await?;
        let stop = CancellationToken::new();
        let consumers: Vec<_> = (0..self.opts.processes.unwrap_or(self.opts.workers))
            .map(|_| {
                tokio::spawn(baseline::consume(
                    settings.amqp.nodes(),
                    topology.clone(),
                    settings.amqp.prefetch,
                    settings.worker.concurrency,
                    stop.clone(),
                ))
            })
            .collect();
        let phase = self
            .drain("baseline", &collector, 0..n, &WorkerProcs::InProcess)
            .await;
        stop.cancel();
        for c in consumers {
            c.await??;
        }
        let _ = events_conn.close(200, "bye".into()).await;
        phase
    }
}
