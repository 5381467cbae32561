//! The `dlq list` and `dlq replay` commands (glue: errors are `anyhow`).

use clap::{Args, Subcommand};
use outreach::dlq::{self, DeadLetter, Filter, Listing, ReplayOptions, ReplayOutcome, parse_since};
use outreach::pipeline::DeadLetterReason;
use outreach::settings::Settings;
use std::collections::BTreeMap;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

#[derive(Subcommand)]
pub enum DlqCommand {
    /// Show dead-lettered jobs; the queue is left exactly as it was.
    List {
        #[command(flatten)]
        filter: FilterArgs,
        /// Show at most N.
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        limit: Option<u64>,
        /// One JSON object per line on stdout (the summary goes to stderr).
        #[arg(long)]
        json: bool,
    },
    /// Send dead-lettered jobs again: reset their log rows, re-enqueue them,
    /// then remove them from the dead-letter queue.
    Replay {
        #[command(flatten)]
        filter: FilterArgs,
        /// Replay at most N.
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        limit: Option<u64>,
        /// Show what would be replayed; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Args)]
pub struct FilterArgs {
    /// Only this tenant's jobs.
    #[arg(long)]
    tenant: Option<String>,
    /// Dead-lettered at or after: an RFC 3339 time (2026-03-01T09:00:00Z) or
    /// a duration back from now (30m, 2h, 7d).
    #[arg(long, value_parser = since_arg)]
    since: Option<OffsetDateTime>,
    /// Only this reason (invalid_recipient, max_attempts, expired…; a wrong
    /// name lists them all). For replay, also replays payloads that are not
    /// valid jobs with that reason.
    #[arg(long)]
    reason: Option<DeadLetterReason>,
}

impl From<FilterArgs> for Filter {
    fn from(a: FilterArgs) -> Self {
        Filter {
            tenant: a.tenant,
            since: a.since,
            reason: a.reason,
        }
    }
}

fn since_arg(s: &str) -> Result<OffsetDateTime, String> {
    parse_since(s, OffsetDateTime::now_utc())
}

pub async fn dlq(settings: &Settings, cmd: DlqCommand) -> anyhow::Result<()> {
    match cmd {
        DlqCommand::List {
            filter,
            limit,
            json,
        } => {
            let listing = dlq::list(settings, &filter.into(), limit.map(|n| n as usize)).await?;
            if json {
                for l in &listing.letters {
                    println!("{}", serde_json::to_string(l)?);
                }
                eprintln!("{}", list_summary(&listing));
            } else {
                print!("{}", table(&listing.letters));
                println!("{}", list_summary(&listing));
            }
        }
        DlqCommand::Replay {
            filter,
            limit,
            dry_run,
        } => {
            let opts = ReplayOptions {
                filter: filter.into(),
                limit: limit.map(|n| n as usize),
                dry_run,
            };
            let reason_flag = opts.filter.reason.is_some();
            let s = dlq::replay(settings, &opts, |l, outcome| {
                let (verb, note) = match outcome {
                    ReplayOutcome::Replayed => ("replayed", String::new()),
                    ReplayOutcome::ReplayedAlreadySent => (
                        "replayed",
                        "; its log row says sent, so it is only re-reported".into(),
                    ),
                    ReplayOutcome::WouldReplay => ("would replay", String::new()),
                    ReplayOutcome::SkippedAccepted => (
                        "skipped",
                        format!(
                            "; a provider accepted it (outcome {}) but it could not be recorded: \
                             replaying would send it again",
                            show(&l.outcome)
                        ),
                    ),
                    ReplayOutcome::SkippedInvalid => (
                        "skipped",
                        format!(
                            "; not a valid job: add --reason {} to replay it anyway",
                            show(&l.reason)
                        ),
                    ),
                };
                println!(
                    "{verb:<12} {} (tenant {}, {}){note}",
                    show(&l.job_id),
                    show(&l.tenant_id),
                    show(&l.reason)
                );
            })
            .await?;
            let verb = if dry_run { "would replay" } else { "replayed" };
            let mut line = format!(
                "{verb} {}, skipped {}, left {} in {}",
                s.replayed, s.skipped, s.left, s.queue
            );
            if s.skipped > 0 && !reason_flag {
                line.push_str(" (invalid payloads are replayed only with --reason)");
            }
            if dry_run {
                line.push_str("; dry run, nothing changed");
            }
            println!("{line}");
        }
    }
    Ok(())
}

fn show(v: &Option<String>) -> &str {
    v.as_deref().unwrap_or("-")
}

fn time(t: Option<OffsetDateTime>) -> String {
    t.and_then(|t| t.replace_nanosecond(0).ok())
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| "-".into())
}

/// Longest error shown in the table (`--json` has all of it).
const ERROR_CHARS: usize = 80;

fn table(letters: &[DeadLetter]) -> String {
    if letters.is_empty() {
        return String::new();
    }
    let mut rows = vec![[
        "JOB ID".to_owned(),
        "TENANT".into(),
        "REASON".into(),
        "ATTEMPTS".into(),
        "FAILED AT".into(),
        "ERROR".into(),
    ]];
    for l in letters {
        let mut error = show(&l.error).replace('\n', " ");
        if error.chars().count() > ERROR_CHARS {
            error = error.chars().take(ERROR_CHARS - 1).collect::<String>() + "…";
        }
        rows.push([
            show(&l.job_id).to_owned(),
            show(&l.tenant_id).to_owned(),
            show(&l.reason).to_owned(),
            l.attempts.map_or("-".into(), |a| a.to_string()),
            time(l.failed_at),
            error,
        ]);
    }
    let widths: Vec<usize> = (0..6)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in &rows {
        let cells: Vec<String> = r[..5]
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(&format!("{}  {}\n", cells.join("  "), r[5]));
    }
    out
}

fn list_summary(l: &Listing) -> String {
    let mut by_reason: BTreeMap<&str, usize> = BTreeMap::new();
    for letter in &l.letters {
        *by_reason.entry(show(&letter.reason)).or_default() += 1;
    }
    let mut s = format!(
        "{} shown of {} dead-lettered in {}",
        l.letters.len(),
        l.in_queue,
        l.queue
    );
    if l.matched > l.letters.len() {
        s.push_str(&format!(" ({} match; raise --limit to see all)", l.matched));
    }
    if !by_reason.is_empty() {
        let counts: Vec<String> = by_reason.iter().map(|(r, n)| format!("{r} {n}")).collect();
        s.push_str(&format!("; by reason: {}", counts.join(", ")));
    }
    s
}
