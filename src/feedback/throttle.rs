//! Log lines for refused webhooks, at most one a second per reason. A flood
//! of bad requests (a misconfigured provider, a scanner) would otherwise
//! write a line each (ten thousand in ten seconds were seen); every refusal
//! is still counted in `outreach_webhooks_refused_total`, and the line that
//! is written says how many like it were held back since the previous one.

use super::verify::Refusal;
use crate::metrics as m;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A refused request: counted by provider and reason, logged with provider,
/// tenant and reason only (no body, no secret), at most once a second per
/// reason; `held_back`: refusals for that reason not logged since its
/// previous line.
pub fn refused(log: &Throttle, provider: &str, tenant: &str, r: Refusal) {
    metrics::counter!(m::WEBHOOKS_REFUSED, "provider" => provider.to_owned(), "reason" => r.reason())
        .increment(1);
    if let Some(held_back) = log.admit(r.reason(), Instant::now()) {
        tracing::warn!(
            provider,
            tenant,
            reason = r.reason(),
            held_back,
            "webhook refused"
        );
    }
}

/// One line per `every` per key.
#[derive(Debug)]
pub struct Throttle {
    every: Duration,
    /// Per key: when its last line was written, and how many were held back since.
    keys: Mutex<HashMap<&'static str, (Instant, u64)>>,
}

impl Throttle {
    pub fn new(every: Duration) -> Self {
        Self {
            every,
            keys: Mutex::new(HashMap::new()),
        }
    }

    /// `Some(held_back)`: write a line now, saying that `held_back` were
    /// not written since the previous one; `None`: hold this one back.
    pub fn admit(&self, key: &'static str, now: Instant) -> Option<u64> {
        let mut keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        match keys.get_mut(key) {
            Some((last, held)) if now.duration_since(*last) < self.every => {
                *held += 1;
                None
            }
            Some((last, held)) => {
                *last = now;
                Some(std::mem::take(held))
            }
            None => {
                keys.insert(key, (now, 0));
                Some(0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_is_one_line_a_second_per_reason_with_the_count_held_back() {
        let t = Throttle::new(Duration::from_secs(1));
        let start = Instant::now();
        let at = |ms| start + Duration::from_millis(ms);
        assert_eq!(t.admit("signature", at(0)), Some(0));
        for ms in 1..=999 {
            assert_eq!(t.admit("signature", at(ms)), None);
        }
        // Another reason has its own line.
        assert_eq!(t.admit("stale", at(500)), Some(0));
        assert_eq!(t.admit("signature", at(1000)), Some(999));
        assert_eq!(t.admit("signature", at(1001)), None);
        assert_eq!(t.admit("signature", at(5000)), Some(1));
    }
}
