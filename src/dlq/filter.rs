//! Which dead letters a command applies to.

use super::DeadLetter;
use crate::pipeline::DeadLetterReason;
use std::time::Duration;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Every given condition must hold; none given matches everything.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub tenant: Option<String>,
    /// Dead-lettered at or after this instant. A letter whose time is unknown
    /// does not match.
    pub since: Option<OffsetDateTime>,
    /// The reason (`invalid_recipient`, `max_attempts`…).
    pub reason: Option<DeadLetterReason>,
}

impl Filter {
    pub fn matches(&self, l: &DeadLetter) -> bool {
        let same = |want: &Option<String>, have: &Option<String>| {
            want.as_ref().is_none_or(|w| have.as_ref() == Some(w))
        };
        same(&self.tenant, &l.tenant_id)
            && self
                .reason
                .is_none_or(|r| l.reason.as_deref() == Some(r.as_str()))
            && self
                .since
                .is_none_or(|s| l.failed_at.is_some_and(|t| t >= s))
    }
}

/// `--since`: an RFC 3339 instant (`2026-03-01T09:00:00Z`) or a duration
/// back from `now`: a whole number and `s`, `m`, `h`, `d` or `w` (`30m`, `2h`, `7d`).
pub fn parse_since(s: &str, now: OffsetDateTime) -> Result<OffsetDateTime, String> {
    let s = s.trim();
    if let Ok(t) = OffsetDateTime::parse(s, &Rfc3339) {
        return Ok(t);
    }
    let bad = || {
        format!(
            "expected an RFC 3339 time such as 2026-03-01T09:00:00Z or a duration such as \
             30m, 2h or 7d (units s, m, h, d, w); got {s:?}"
        )
    };
    let split = s.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().map_err(|_| bad())?;
    let secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => return Err(bad()),
    };
    n.checked_mul(secs)
        .and_then(|secs| now.checked_sub(Duration::from_secs(secs).try_into().ok()?))
        .ok_or_else(|| format!("{s:?} reaches back before any date we can represent"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dlq::DeadLetteredBy;
    use time::macros::datetime;

    const NOW: OffsetDateTime = datetime!(2026-03-08 12:00 UTC);

    #[test]
    fn since_takes_durations_back_from_now() {
        assert_eq!(parse_since("30m", NOW), Ok(datetime!(2026-03-08 11:30 UTC)));
        assert_eq!(parse_since("2h", NOW), Ok(datetime!(2026-03-08 10:00 UTC)));
        assert_eq!(parse_since("7d", NOW), Ok(datetime!(2026-03-01 12:00 UTC)));
        assert_eq!(parse_since("1w", NOW), Ok(datetime!(2026-03-01 12:00 UTC)));
        assert_eq!(
            parse_since("45s", NOW),
            Ok(datetime!(2026-03-08 11:59:15 UTC))
        );
    }

    #[test]
    fn since_takes_rfc3339_instants() {
        assert_eq!(
            parse_since("2026-03-01T09:00:00+01:00", NOW),
            Ok(datetime!(2026-03-01 08:00 UTC))
        );
    }

    #[test]
    fn since_refuses_what_it_cannot_read_and_says_what_it_expects() {
        for bad in [
            "",
            "2",
            "h",
            "2x",
            "-2h",
            "2 h",
            "yesterday",
            "99999999999999999999d",
        ] {
            let err = parse_since(bad, NOW).unwrap_err();
            assert!(err.contains("2h") || err.contains("before"), "{bad}: {err}");
        }
    }

    proptest::proptest! {
        #[test]
        fn since_of_n_minutes_is_n_minutes_ago(n in 0u64..10_000_000) {
            let t = parse_since(&format!("{n}m"), NOW).unwrap();
            proptest::prop_assert_eq!((NOW - t).whole_seconds() as u64, n * 60);
        }
    }

    fn letter(tenant: &str, reason: &str, at: Option<OffsetDateTime>) -> DeadLetter {
        DeadLetter {
            job_id: Some("j".into()),
            tenant_id: Some(tenant.into()),
            reason: Some(reason.into()),
            error: None,
            attempts: None,
            failed_at: at,
            dead_lettered_by: DeadLetteredBy::Worker,
            valid_job: true,
            outcome: None,
        }
    }

    #[test]
    fn a_filter_needs_every_condition_it_was_given() {
        let l = letter("clinic-1", "max_attempts", Some(NOW));
        assert!(Filter::default().matches(&l));
        let f = Filter {
            tenant: Some("clinic-1".into()),
            reason: Some(DeadLetterReason::MaxAttempts),
            since: Some(NOW),
        };
        assert!(f.matches(&l));
        assert!(!f.matches(&letter("clinic-2", "max_attempts", Some(NOW))));
        assert!(!f.matches(&letter("clinic-1", "expired", Some(NOW))));
        assert!(!f.matches(&letter(
            "clinic-1",
            "max_attempts",
            Some(NOW - Duration::from_secs(1))
        )));
        assert!(!f.matches(&letter("clinic-1", "max_attempts", None)));
    }
}
