//! The one place the tracing subscriber is built.

use crate::settings::{LogFormat, TelemetrySettings};
use tracing_subscriber::EnvFilter;

/// Install the global subscriber. `RUST_LOG` overrides the configured filter.
/// Logs go to stderr so that command output on stdout stays parseable.
pub fn init(s: &TelemetrySettings) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&s.filter));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match s.format {
        LogFormat::Json => b.json().flatten_event(true).try_init(),
        LogFormat::Pretty => b.compact().try_init(),
    };
}
