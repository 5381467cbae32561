//! Every adapter behind one guard ([`super::build`] wraps each): what an
//! adapter does wrong or a provider sends back cannot take more than the
//! one job with it.
//!
//! - A panic inside an adapter (a defect, such as a header value the mail
//!   library cannot write) becomes an [`ErrorKind::Internal`] error for
//!   that job: the pipeline fails it (dead letter `internal`) and goes on,
//!   the admin test route and `outreach tenant test` answer with it.
//!   Not retried: the adapter may have reached the provider before it
//!   panicked.
//! - A message id from the provider is stored and indexed: one longer than
//!   [`MAX_MESSAGE_ID`] or with bytes outside printable ASCII is dropped
//!   (logged with its length), so the job's row can still be written.

use super::{ErrorKind, Provider, ProviderError, ProviderKind, Receipt};
use crate::job::Job;
use async_trait::async_trait;
use futures::FutureExt;
use std::panic::AssertUnwindSafe;

/// Longest provider message id kept (SendGrid, SES, Twilio and Meta ids
/// are well under 100 characters; SMTP queue ids under 256).
pub const MAX_MESSAGE_ID: usize = 256;

/// An adapter behind the guard.
pub struct Guarded<P>(pub P);

#[async_trait]
impl<P: Provider> Provider for Guarded<P> {
    fn kind(&self) -> ProviderKind {
        self.0.kind()
    }

    async fn send(&self, job: &Job) -> Result<Receipt, ProviderError> {
        let kind = self.0.kind();
        match AssertUnwindSafe(self.0.send(job)).catch_unwind().await {
            Ok(Ok(receipt)) => Ok(checked(kind, receipt)),
            Ok(Err(e)) => Err(e),
            Err(_) => {
                crate::panics::caught("provider");
                Err(panicked(kind))
            }
        }
    }
}

/// The error of an adapter that panicked: no payload text (it may quote
/// the job), what happened and what it means.
pub fn panicked(kind: ProviderKind) -> ProviderError {
    ProviderError::new(
        ErrorKind::Internal,
        Some("panic".into()),
        format!(
            "the {kind} adapter panicked (a defect in outreach, counted in \
             outreach_panics_total); not retried, as the provider may have been reached"
        ),
    )
}

/// `receipt` with its message id dropped when it cannot be stored.
fn checked(kind: ProviderKind, mut receipt: Receipt) -> Receipt {
    if let Some(id) = &receipt.message_id
        && !storable(id)
    {
        tracing::warn!(
            provider = kind.as_str(),
            length = id.len(),
            "the provider's message id is too long or not printable ASCII: recorded without it"
        );
        receipt.message_id = None;
    }
    receipt
}

fn storable(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_MESSAGE_ID && id.bytes().all(|b| b.is_ascii_graphic())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Answers(Option<String>);

    #[async_trait]
    impl Provider for Answers {
        fn kind(&self) -> ProviderKind {
            ProviderKind::Sendgrid
        }
        async fn send(&self, _: &Job) -> Result<Receipt, ProviderError> {
            match &self.0 {
                Some(id) => Ok(Receipt {
                    message_id: Some(id.clone()),
                }),
                None => panic!("stand-in adapter panicked"),
            }
        }
    }

    fn job() -> Job {
        Job::decode(br#"{"job_id":"j","tenant_id":"t","channel":"email","recipient":"a@b.co","content":{"subject":"s","text":"t"}}"#).unwrap()
    }

    #[tokio::test]
    async fn a_panicking_adapter_fails_the_job_as_internal() {
        let e = Guarded(Answers(None)).send(&job()).await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::Internal);
        assert_eq!(e.code.as_deref(), Some("panic"));
        assert!(e.message.contains("sendgrid adapter panicked"), "{e}");
    }

    #[tokio::test]
    async fn a_message_id_that_cannot_be_stored_is_dropped_and_a_normal_one_kept() {
        for (id, kept) in [
            ("x".repeat(8000), false),
            ("abc\ndef".into(), false),
            ("bé".into(), false),
            ("".into(), false),
            (
                "14c5d75ce93.dfd.64b469.filter-0001.sendgrid.net".into(),
                true,
            ),
            ("<j-1.0192@clinic.example>".into(), true),
        ] {
            let r = Guarded(Answers(Some(id.clone())))
                .send(&job())
                .await
                .unwrap();
            assert_eq!(r.message_id.is_some(), kept, "{id:.40}");
        }
    }
}
