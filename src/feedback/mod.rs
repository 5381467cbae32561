//! Delivery feedback: what providers report after `sent`.
//!
//! - [`verify`]: signature checks (Twilio, SendGrid signed events, Meta, Vonage), before anything is parsed.
//! - [`parse`]: verified bodies into provider events and inbound STOP / START.
//! - [`apply`]: each event kept in `provider_events`, the job's row moved
//!   forward ([`advances`]), its delivery event published, suppressions added.
//! - [`sns`]: SES notifications through SNS (signature, certificate origin and cache).
//! - [`server`]: the `/webhooks/{provider}/{tenant}` routes.
//! - [`listen`]: the listener's connections (limit, header and body timeouts).
//! - [`throttle`]: refusals counted, and logged at most a line a second per reason.

pub mod apply;
pub mod listen;
pub mod parse;
pub mod server;
pub mod sns;
pub mod throttle;
pub mod verify;

use crate::delivery_log::DeliveryStatus;

/// How far along a message is; a status is applied only when it goes further
/// than the row's current one, so a late `sent` never overwrites `delivered`,
/// while a `bounced` after `delivered` (a late asynchronous bounce) is
/// recorded as the provider reports it. `None`: a status webhooks never move
/// (the job was not sent: processing, retrying, failed, expired, suppressed,
/// simulated).
pub fn rank(s: DeliveryStatus) -> Option<u8> {
    use DeliveryStatus as S;
    Some(match s {
        S::Sent => 1,
        S::Delivered | S::Undelivered => 2,
        S::Opened | S::Read => 3,
        S::Clicked => 4,
        S::Bounced => 5,
        S::Unsubscribed => 6,
        S::Complained => 7,
        S::Processing | S::Retrying | S::Simulated | S::Failed | S::Expired | S::Suppressed => {
            return None;
        }
    })
}

/// Whether a row at `current` moves to `reported`.
pub fn advances(current: DeliveryStatus, reported: DeliveryStatus) -> bool {
    matches!((rank(current), rank(reported)), (Some(c), Some(r)) if r > c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use DeliveryStatus as S;

    #[test]
    fn a_late_sent_never_overwrites_delivered() {
        assert!(advances(S::Sent, S::Delivered));
        assert!(!advances(S::Delivered, S::Sent));
        assert!(!advances(S::Delivered, S::Delivered));
    }

    #[test]
    fn a_bounce_after_delivered_is_recorded() {
        assert!(advances(S::Delivered, S::Bounced));
        assert!(!advances(S::Bounced, S::Delivered));
    }

    #[test]
    fn rows_that_were_never_sent_do_not_move() {
        for s in [
            S::Processing,
            S::Retrying,
            S::Failed,
            S::Suppressed,
            S::Simulated,
        ] {
            assert!(!advances(s, S::Delivered));
        }
    }
}
