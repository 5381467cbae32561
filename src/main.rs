//! The `outreach` command line.

mod cli;

use clap::{Parser, Subcommand};
use cli::dlq::{self as dlq_cli, DlqCommand};
use cli::enqueue::EnqueueArgs;
use cli::tenant::{self as tenant_cli, AdminCommand, KeysCommand, TenantCommand};
use cli::{bench, demo};
use outreach::broker::{self, Topology};
use outreach::settings::Settings;
use outreach::{app, db, health, telemetry};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "outreach",
    version,
    about = "Multi-tenant email, SMS and WhatsApp delivery"
)]
struct Cli {
    /// Configuration file layered over the defaults (env OUTREACH__* still wins).
    #[arg(long, global = true, env = "OUTREACH_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create the database if needed, apply the embedded migrations and
    /// declare the broker's exchanges and queues, so upstream apps can
    /// publish jobs before any worker has started.
    Migrate {
        /// Only the database (the broker is declared by the first worker).
        #[arg(long)]
        database_only: bool,
    },
    /// Consume and deliver jobs until SIGTERM / SIGINT.
    Worker {
        /// Do not apply migrations at start (overrides worker.migrate_on_start).
        #[arg(long)]
        no_migrate: bool,
    },
    /// Publish a job (from a JSON file or flags) to the jobs exchange.
    Enqueue(Box<EnqueueArgs>),
    /// Manage tenants' messaging config.
    #[command(subcommand)]
    Tenant(TenantCommand),
    /// Encryption keys of stored credentials.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Admin API helpers.
    #[command(subcommand)]
    Admin(AdminCommand),
    /// Recipients a tenant must not message (bounces, complaints, opt-outs).
    #[command(subcommand)]
    Suppression(cli::suppression::SuppressionCommand),
    /// Inspect and replay the dead-letter queue.
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// Run the whole pipeline on a few hundred demo jobs and summarise.
    Demo {
        #[arg(long, default_value_t = 300)]
        jobs: usize,
        #[arg(long, default_value_t = 3)]
        tenants: usize,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 120)]
        timeout_secs: u64,
    },
    /// Ask a running worker's /readyz (on http.bind) whether it is ready:
    /// exit 0 when it is, 1 otherwise (container HEALTHCHECK, probes).
    Health {
        /// Whole URL to ask instead of http.bind's /readyz.
        #[arg(long)]
        url: Option<String>,
        /// One JSON object: `{url, ready, broker, database}` or `{url,
        /// ready: false, error}` (the exit code is the same).
        #[arg(long)]
        json: bool,
    },
    /// Measure throughput, latency, CPU and memory against a broker-only baseline.
    Bench(Box<bench::BenchOptions>),
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {}", once_each(&e));
            std::process::ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, each once: many errors already
/// quote their source in their own message ("cannot reach PostgreSQL …:
/// Connection refused"), which anyhow's report would print again as
/// "Caused by".
fn once_each(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain().map(ToString::to_string) {
        if !line.contains(&cause) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&cause);
        }
    }
    line
}

fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let mut settings = Settings::load(cli.config.as_deref())?;
    if matches!(cli.command, Command::Bench(_)) {
        // Per-job info logs would cost the bench CPU; RUST_LOG still overrides.
        settings.telemetry.filter = "warn".into();
    }
    telemetry::init(&settings.telemetry);
    outreach::panics::install_hook();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        match cli.command {
            Command::Migrate { database_only } => {
                let pool = db::connect_creating(&settings.database).await?;
                db::migrate(&pool).await?;
                println!("migrations applied");
                if !database_only {
                    let topology =
                        Topology::new(&settings.amqp, &settings.worker.retry_delays_secs);
                    let conn = broker::connect(&settings.amqp.nodes(), "migrate").await?;
                    topology.declare(&conn.create_channel().await?).await?;
                    let _ = conn.close(200, "declared".into()).await;
                    println!(
                        "broker topology declared: publish jobs to exchange {}",
                        topology.jobs_exchange
                    );
                }
                Ok(())
            }
            Command::Worker { no_migrate } => {
                let mut settings = settings;
                settings.worker.migrate_on_start &= !no_migrate;
                app::run_worker(settings, app::shutdown_on_signals()).await
            }
            Command::Enqueue(args) => cli::enqueue::enqueue(&settings, *args).await,
            Command::Tenant(cmd) => tenant_cli::tenant(&settings, cmd).await,
            Command::Keys(cmd) => tenant_cli::keys(&settings, cmd).await,
            Command::Admin(cmd) => tenant_cli::admin(cmd),
            Command::Dlq(cmd) => dlq_cli::dlq(&settings, cmd).await,
            Command::Suppression(cmd) => cli::suppression::suppression(&settings, cmd).await,
            Command::Bench(opts) => bench::run(settings, *opts).await,
            Command::Health { url, json } => {
                let url = url.unwrap_or_else(|| health::readyz_url(&settings.http.bind));
                let answer = health::ask(&url).await;
                if json {
                    println!("{}", health::as_json(&url, &answer));
                }
                if let Ok(body) = &answer
                    && !json
                {
                    println!("{body}");
                }
                answer.map(drop)
            }
            Command::Demo {
                jobs,
                tenants,
                timeout_secs,
            } => {
                demo::run(
                    settings,
                    demo::DemoOptions {
                        jobs,
                        tenants,
                        timeout: Duration::from_secs(timeout_secs),
                    },
                )
                .await
            }
        }
    })
}
