//! Panics are defects, and one must end the job or request it happened in,
//! never the worker's capacity: the provider guard
//! ([`crate::provider::guard`]), the pipeline (`worker` around
//! [`crate::pipeline::handle`]) and the admin API catch them, count them in
//! `outreach_panics_total{place}` and carry on.
//!
//! The hook installed here logs where a panic happened as one JSON log
//! line. Its message is logged only when it is a string literal of the code
//! (`panic!("…")` without arguments): a formatted message may hold a
//! recipient, message content or a credential.

use std::any::Any;
use std::sync::Once;

/// Panics caught while handling a job or a request (`place`: one of
/// [`PANIC_PLACES`]): each is a defect; the job ends `failed` (`internal`).
pub const PANICS: &str = "outreach_panics_total";
/// Where a panic can be caught, for [`PANICS`]'s `place` label.
pub const PANIC_PLACES: [&str; 3] = ["provider", "pipeline", "admin_api"];

/// Log panics through `tracing` instead of stderr text (idempotent). The
/// binary installs it at start; a test process keeps the default hook, so
/// its failed assertions still show their messages.
pub fn install_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            let location = info
                .location()
                .map(|l| format!("{}:{}", l.file(), l.line()))
                .unwrap_or_default();
            tracing::error!(
                %location,
                message = literal(info.payload()),
                "panic (a defect in outreach): caught, counted in outreach_panics_total"
            );
        }));
    });
}

/// The panic's message when it is a string literal, else a placeholder.
pub fn literal(payload: &(dyn Any + Send)) -> &'static str {
    payload
        .downcast_ref::<&'static str>()
        .copied()
        .unwrap_or("(formatted message withheld: it may hold job data)")
}

/// Count a caught panic at `place` (one of [`PANIC_PLACES`]).
pub fn caught(place: &'static str) {
    debug_assert!(PANIC_PLACES.contains(&place));
    metrics::counter!(PANICS, "place" => place).increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_literal_message_is_shown() {
        let literal_payload: Box<dyn Any + Send> = Box::new("stand-in panicked");
        assert_eq!(literal(literal_payload.as_ref()), "stand-in panicked");
        let formatted: Box<dyn Any + Send> = Box::new(format!("to {}", "pat@example.com"));
        assert!(!literal(formatted.as_ref()).contains("pat@"));
    }
}
