//! The one place the tracing subscriber is built.
//!
//! Logs go to stderr: JSON lines when it is not a terminal (`auto`, the
//! default: files, pipes and container logs), text on a terminal. Colour
//! codes only on a terminal, never in files. Each job runs in a span
//! `job{job_id tenant_id channel attempt provider recipient}` whose
//! recipient is masked ([`mask_recipient`]); message bodies are never logged.

use crate::settings::{LogFormat, TelemetrySettings};
use std::io::IsTerminal;
use tracing_subscriber::EnvFilter;

/// Install the global subscriber. `RUST_LOG` overrides the configured filter.
/// Logs go to stderr so that command output on stdout stays parseable.
pub fn init(s: &TelemetrySettings) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&s.filter));
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
    use super::mask_recipient;

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
