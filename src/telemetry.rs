//! The one place the tracing subscriber is built.
//!
//! Logs go to stderr: JSON lines when it is not a terminal (`auto`, the
//! default: files, pipes and container logs), text on a terminal. Colour
//! codes only on a terminal, never in files. Each job runs in a span
//! `job{job_id tenant_id channel attempt provider recipient}` whose
//! recipient is masked ([`mask_recipient`]); message bodies are never logged.
//! A bare level (`RUST_LOG=trace`) is outreach's own: dependencies stay at
//! `info` at most unless named ([`filter`]), since some log whole payloads.

use crate::settings::{LogFormat, TelemetrySettings};
use std::io::IsTerminal;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::LevelFilter;

/// Install the global subscriber. `RUST_LOG` overrides the configured filter.
/// Logs go to stderr so that command output on stdout stays parseable.
pub fn init(s: &TelemetrySettings) {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .and_then(|v| filter(&v).ok())
        .unwrap_or_else(|| filter(&s.filter).unwrap_or_else(|_| EnvFilter::new("info")));
    let terminal = std::io::stderr().is_terminal();
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(terminal)
        .with_writer(std::io::stderr);
    let json = match s.format {
        LogFormat::Auto => !terminal,
        LogFormat::Json => true,
        LogFormat::Pretty => false,
    };
    let _ = if json {
        b.json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init()
    } else {
        b.compact().try_init()
    };
}

/// The filter for `directives` (`RUST_LOG` syntax), where a bare level
/// (`trace`, `debug`) applies to outreach's own targets and, capped at
/// `info`, to everything else: at `trace` the AMQP client logs whole job
/// bodies (patient data), the HTTP and SMTP clients whole requests. A
/// dependency is more verbose only when named (`trace,lapin=trace`).
pub fn filter(directives: &str) -> Result<EnvFilter, tracing_subscriber::filter::ParseError> {
    let parts: Vec<&str> = directives
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .collect();
    let names_outreach = parts
        .iter()
        .any(|d| d.split('=').next() == Some("outreach"));
    let mut scoped = Vec::new();
    for d in parts {
        match d.parse::<LevelFilter>() {
            Ok(level) => {
                scoped.push(level.min(LevelFilter::INFO).to_string());
                if !names_outreach {
                    scoped.push(format!("outreach={level}"));
                }
            }
            Err(_) => scoped.push(d.to_owned()),
        }
    }
    EnvFilter::try_new(scoped.join(","))
}

/// A recipient as logs may show it (patient data): an email keeps its
/// first character and its domain (`j***@example.com`), a phone number its
/// country-code start and last two digits (`+44*******23`).
pub fn mask_recipient(r: &str) -> String {
    match r.rsplit_once('@') {
        Some((local, domain)) => {
            let first: String = local.chars().take(1).collect();
            format!("{first}***@{domain}")
        }
        None => {
            let chars: Vec<char> = r.chars().collect();
            if chars.len() <= 6 {
                return "*".repeat(chars.len());
            }
            let head: String = chars[..3].iter().collect();
            let tail: String = chars[chars.len() - 2..].iter().collect();
            format!("{head}{}{tail}", "*".repeat(chars.len() - 5))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{filter, mask_recipient};
    use tracing::Level;
    use tracing_subscriber::layer::SubscriberExt as _;

    /// Whether `directives` let through a trace event of lapin's and one of ours.
    fn trace_enabled(directives: &str) -> (bool, bool) {
        let subscriber = tracing_subscriber::registry().with(filter(directives).unwrap());
        tracing::subscriber::with_default(subscriber, || {
            (
                tracing::enabled!(target: "lapin::channel", Level::TRACE),
                tracing::enabled!(target: "outreach::pipeline", Level::TRACE),
            )
        })
    }

    #[test]
    fn a_bare_trace_level_is_outreach_s_and_keeps_the_amqp_client_quiet() {
        assert_eq!(trace_enabled("trace"), (false, true));
    }

    #[test]
    fn a_dependency_named_at_trace_logs_at_trace() {
        assert_eq!(trace_enabled("trace,lapin=trace"), (true, true));
        assert_eq!(trace_enabled("lapin=trace"), (true, false));
    }

    #[test]
    fn a_bare_level_still_lets_dependencies_warn() {
        let subscriber = tracing_subscriber::registry().with(filter("debug").unwrap());
        tracing::subscriber::with_default(subscriber, || {
            assert!(tracing::enabled!(target: "reqwest::connect", Level::WARN));
            assert!(!tracing::enabled!(target: "reqwest::connect", Level::DEBUG));
            assert!(tracing::enabled!(target: "outreach::worker", Level::DEBUG));
        });
    }

    #[test]
    fn an_email_keeps_only_its_first_letter_and_domain() {
        assert_eq!(
            mask_recipient("jane.doe@clinic.example"),
            "j***@clinic.example"
        );
    }

    #[test]
    fn a_phone_number_keeps_its_start_and_last_two_digits() {
        assert_eq!(mask_recipient("+447700900123"), "+44********23");
        assert_eq!(mask_recipient("+1234"), "*****");
    }
}
