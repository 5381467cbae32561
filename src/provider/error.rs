//! Provider error classification.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::time::Duration;

/// Code of a `Config` error an adapter raises before any request: the job
/// needs a capability the account lacks (a WhatsApp template on a Twilio
/// account without Content SIDs). Not held against the account's breaker.
pub const CAPABILITY: &str = "capability";

/// Longest `Retry-After` we honour; longer hints are clamped to this.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// What went wrong, in words every provider's answer maps onto.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, sqlx::Type)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "error_kind", rename_all = "snake_case")]
pub enum ErrorKind {
    /// 5xx, timeout, connection trouble: try again.
    Transient,
    /// 429 or a rate-limit code: try again after the provider's hint.
    RateLimited,
    /// The account cannot send for now for reasons on the provider's side
    /// (suspended, sending paused, quota used up): another provider may do
    /// better, and it may clear by itself.
    Provider,
    /// Configuration that needs a person, not time: credentials refused, a
    /// sender not verified, a certificate that does not verify, a capability
    /// the account lacks, no provider at all, a tenant config that cannot be
    /// read. Another step may do better; retrying this one will not.
    Config,
    /// The recipient's side asked to come back later (greylisting, mailbox
    /// busy or full for now): retried later, but says nothing about the
    /// account's health and no other provider would do better now.
    RecipientDeferred,
    /// The recipient is invalid, unreachable or opted out: no provider will do better.
    Recipient,
    /// The content was refused (body error, too large, template): no provider will do better.
    Content,
    /// The job itself could not be read or validated.
    InvalidJob,
    /// The job's `not_after` or the maximum age passed before it could be sent.
    Expired,
    /// A defect in outreach: handling the job panicked (counted in
    /// `outreach_panics_total`). The job ends `failed` and is not retried:
    /// whether a provider accepted it may be unknown.
    Internal,
}

/// What the pipeline makes of an error: in the round ([`crate::pipeline::chain`])
/// and for the job ([`crate::pipeline::fate`], whose table shows both).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Retry this provider a few times in place, then the next step; if none
    /// sends, the job comes back through a delay tier.
    Retry,
    /// The next step now; if none sends, the job comes back through a delay tier.
    Fallback,
    /// The next step now; if none sends, the job fails: waiting will not fix
    /// a configuration (dead-lettered with reason `config`).
    Reconfigure,
    /// Stop the chain and come back through a delay tier (the recipient's
    /// side asked for it; no other provider would do better now).
    Defer,
    /// Stop the chain and fail: no provider will do better.
    GiveUp,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Transient => "transient",
            ErrorKind::RateLimited => "rate_limited",
            ErrorKind::Provider => "provider",
            ErrorKind::Config => "config",
            ErrorKind::RecipientDeferred => "recipient_deferred",
            ErrorKind::Recipient => "recipient",
            ErrorKind::Content => "content",
            ErrorKind::InvalidJob => "invalid_job",
            ErrorKind::Expired => "expired",
            ErrorKind::Internal => "internal",
        }
    }

    /// Every kind, for metrics exported at zero and for docs.
    pub const ALL: [ErrorKind; 10] = [
        ErrorKind::Transient,
        ErrorKind::RateLimited,
        ErrorKind::Provider,
        ErrorKind::Config,
        ErrorKind::RecipientDeferred,
        ErrorKind::Recipient,
        ErrorKind::Content,
        ErrorKind::InvalidJob,
        ErrorKind::Expired,
        ErrorKind::Internal,
    ];

    /// Whether the outcome says something about the provider account's
    /// health (counts in its circuit breaker). Recipient-scoped answers,
    /// refused content and 429s do not; configuration trouble does (the
    /// account is unusable until someone fixes it). An exhaustive match: a
    /// new kind must say which side it is on.
    pub fn is_account_scoped(self) -> bool {
        match self {
            ErrorKind::Transient | ErrorKind::Provider | ErrorKind::Config => true,
            ErrorKind::RateLimited
            | ErrorKind::RecipientDeferred
            | ErrorKind::Recipient
            | ErrorKind::Content
            | ErrorKind::InvalidJob
            | ErrorKind::Expired
            | ErrorKind::Internal => false,
        }
    }

    pub fn disposition(self) -> Disposition {
        match self {
            ErrorKind::Transient | ErrorKind::RateLimited => Disposition::Retry,
            ErrorKind::Provider => Disposition::Fallback,
            ErrorKind::Config => Disposition::Reconfigure,
            ErrorKind::RecipientDeferred => Disposition::Defer,
            ErrorKind::Recipient
            | ErrorKind::Content
            | ErrorKind::InvalidJob
            | ErrorKind::Expired
            | ErrorKind::Internal => Disposition::GiveUp,
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A classified provider failure. It keeps the provider's own code and
/// message (never a credential) for the log row and the event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[error("{kind}{}: {message}", code.as_deref().map(|c| format!(" ({c})")).unwrap_or_default())]
pub struct ProviderError {
    pub kind: ErrorKind,
    /// The provider's code: HTTP status, Twilio/Meta error code, SES
    /// exception name, SMTP reply code.
    pub code: Option<String>,
    pub message: String,
    /// When the provider said to come back (`Retry-After` and the like), clamped.
    #[serde(skip_serializing_if = "Option::is_none", with = "opt_secs", default)]
    pub retry_after: Option<Duration>,
    /// The provider refused because the recipient opted out (replied STOP
    /// to this sender): the pipeline puts them on the tenant's suppression
    /// list. Set by the adapter whose provider says so ([`Self::with_opt_out`]).
    #[serde(skip_serializing_if = "std::ops::Not::not", default)]
    pub opted_out: bool,
}

impl ProviderError {
    pub fn new(kind: ErrorKind, code: Option<String>, message: impl Into<String>) -> Self {
        // Not cut here: an adapter's message may hold what the provider
        // echoed, and a cut before scrubbing could leave a piece of a secret
        // no longer spelled like it. `scrub::Scrubber::error` cuts it after.
        Self {
            kind,
            code,
            message: message.into(),
            retry_after: None,
            opted_out: false,
        }
    }

    pub fn with_retry_after(mut self, after: Option<Duration>) -> Self {
        self.retry_after = after.map(|d| d.min(MAX_RETRY_AFTER));
        self
    }

    /// Marked as the recipient having opted out, when `opted_out`.
    pub fn with_opt_out(mut self, opted_out: bool) -> Self {
        self.opted_out = opted_out;
        self
    }

    pub fn transient(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Transient, None, message)
    }

    pub fn disposition(&self) -> Disposition {
        self.kind.disposition()
    }
}

mod opt_secs {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_f64(d.as_secs_f64()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Ok(Option::<f64>::deserialize(d)?.map(Duration::from_secs_f64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_opt_out_is_serialized_only_when_set_and_older_json_still_reads() {
        let plain = ProviderError::new(ErrorKind::Recipient, Some("21211".into()), "bad number");
        let json = serde_json::to_value(&plain).unwrap();
        assert!(json.get("opted_out").is_none(), "{json}");
        let old = r#"{"kind":"recipient","code":"21211","message":"bad number"}"#;
        assert_eq!(serde_json::from_str::<ProviderError>(old).unwrap(), plain);
        let stop = plain.with_opt_out(true);
        let json = serde_json::to_value(&stop).unwrap();
        assert_eq!(json["opted_out"], true);
        assert_eq!(serde_json::from_value::<ProviderError>(json).unwrap(), stop);
    }
}
