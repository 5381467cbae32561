//! Provider adapters behind one trait.
//!
//! Every adapter turns a [`Job`] into the provider's wire format and the
//! provider's answer into a [`Receipt`] or a classified [`ProviderError`]:
//! retry (and when), fall back to the next provider, or give up.

pub mod error;
pub mod field;
pub mod guard;
pub mod http;
pub mod meta;
pub mod net;
pub mod sandbox;
pub mod scrub;
pub mod sendgrid;
pub mod ses;
pub mod settings;
pub mod smtp;
pub mod twilio;
pub mod vonage;

use crate::job::{Channel, Content, Job, TenantId};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

pub use error::{Disposition, ErrorKind, ProviderError};
pub use field::SettingsError;
pub use settings::ProviderSettings;

/// The providers this service can send through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    Sandbox,
    Smtp,
    Sendgrid,
    Ses,
    Twilio,
    Meta,
    Vonage,
}

impl ProviderKind {
    /// Every kind, for metrics exported at zero and the list of names a
    /// wrong one is told (a unit test checks it against the enum).
    pub const ALL: [ProviderKind; 7] = [
        ProviderKind::Sandbox,
        ProviderKind::Smtp,
        ProviderKind::Sendgrid,
        ProviderKind::Ses,
        ProviderKind::Twilio,
        ProviderKind::Meta,
        ProviderKind::Vonage,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Sandbox => "sandbox",
            ProviderKind::Smtp => "smtp",
            ProviderKind::Sendgrid => "sendgrid",
            ProviderKind::Ses => "ses",
            ProviderKind::Twilio => "twilio",
            ProviderKind::Meta => "meta",
            ProviderKind::Vonage => "vonage",
        }
    }

    /// Whether an accepted message reaches anyone. The sandbox only
    /// records: its acceptances are logged `simulated`, never `sent`.
    pub fn delivers(self) -> bool {
        match self {
            ProviderKind::Sandbox => false,
            ProviderKind::Smtp
            | ProviderKind::Sendgrid
            | ProviderKind::Ses
            | ProviderKind::Twilio
            | ProviderKind::Meta
            | ProviderKind::Vonage => true,
        }
    }

    /// Channels the provider can carry.
    pub fn supports(self, channel: Channel) -> bool {
        match self {
            ProviderKind::Sandbox => true,
            ProviderKind::Smtp | ProviderKind::Sendgrid | ProviderKind::Ses => {
                channel == Channel::Email
            }
            ProviderKind::Twilio => channel != Channel::Email,
            ProviderKind::Meta => channel == Channel::Whatsapp,
            ProviderKind::Vonage => channel == Channel::Sms,
        }
    }
}

impl fmt::Display for ProviderKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A provider's acceptance of a message.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    /// The provider's id for the message (SendGrid X-Message-Id, SES MessageId,
    /// Twilio SID, Meta wamid, SMTP queue id), when it gives one.
    pub message_id: Option<String>,
}

/// One provider account, ready to send. Implementations are cheap to share
/// (`Arc`) and hold their pooled clients.
#[async_trait]
pub trait Provider: Send + Sync + 'static {
    fn kind(&self) -> ProviderKind;
    async fn send(&self, job: &Job) -> Result<Receipt, ProviderError>;
}

/// The parts of an email job an email adapter sends.
pub(crate) struct EmailParts<'a> {
    pub subject: &'a str,
    pub text: Option<&'a str>,
    pub html: Option<&'a str>,
}

/// The email parts of `job`, or a Content error naming `provider` for a job
/// that is not an email (decode already checks channel and content agree).
pub(crate) fn email_parts(
    job: &Job,
    provider: ProviderKind,
) -> Result<EmailParts<'_>, ProviderError> {
    match &job.content {
        Content::Email {
            subject,
            text,
            html,
        } => Ok(EmailParts {
            subject,
            text: text.as_deref(),
            html: html.as_deref(),
        }),
        _ => Err(ProviderError::new(
            ErrorKind::Content,
            None,
            format!("{provider} carries email only"),
        )),
    }
}

/// What adapters share: one pooled HTTP client and the service-wide knobs.
#[derive(Clone)]
pub struct ProviderContext {
    pub http: reqwest::Client,
    pub timeout: Duration,
    pub connect_timeout: Duration,
    /// Public base URL of this service's webhook endpoint, for status
    /// callbacks (Twilio `StatusCallback`); none disables them.
    pub webhook_base_url: Option<url::Url>,
    /// Where calls may connect (checked after DNS resolution, at call time).
    pub net: Arc<net::NetworkPolicy>,
}

impl ProviderContext {
    /// Public addresses only; see [`Self::with_network`].
    pub fn new(
        timeout: Duration,
        connect_timeout: Duration,
        webhook_base_url: Option<url::Url>,
    ) -> Self {
        let net = Arc::new(net::NetworkPolicy::public_only());
        Self {
            http: http::client(timeout, connect_timeout, net.clone()),
            timeout,
            connect_timeout,
            webhook_base_url,
            net,
        }
    }

    /// The same context under another network policy (a new HTTP client
    /// whose resolver enforces it).
    pub fn with_network(mut self, policy: net::NetworkPolicy) -> Self {
        self.net = Arc::new(policy);
        self.http = http::client(self.timeout, self.connect_timeout, self.net.clone());
        self
    }
}

/// Build the adapter for one provider account, behind the [`guard`].
pub fn build(
    settings: &ProviderSettings,
    ctx: &ProviderContext,
    tenant: Option<&TenantId>,
) -> Result<Arc<dyn Provider>, SettingsError> {
    settings.validate()?;
    // The adapters read the tenant from each job (Twilio's status callback
    // URL names the job's tenant), so the owning tenant is not needed here.
    let _ = tenant;
    use guard::Guarded;
    Ok(match settings {
        ProviderSettings::Sandbox(s) => Arc::new(Guarded(sandbox::Sandbox::new(s.clone())?)),
        ProviderSettings::Smtp(s) => Arc::new(Guarded(smtp::Smtp::new(s, ctx)?)),
        ProviderSettings::Sendgrid(s) => Arc::new(Guarded(sendgrid::Sendgrid::new(s, ctx))),
        ProviderSettings::Ses(s) => Arc::new(Guarded(ses::Ses::new(s, ctx))),
        ProviderSettings::Twilio(s) => Arc::new(Guarded(twilio::Twilio::new(s, ctx))),
        ProviderSettings::Meta(s) => Arc::new(Guarded(meta::Meta::new(s, ctx))),
        ProviderSettings::Vonage(s) => Arc::new(Guarded(vonage::Vonage::new(s, ctx))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_lists_every_kind_in_declaration_order() {
        // serde names every variant, in order, when it refuses a name.
        let refused = crate::enum_names::parse_name::<ProviderKind>("?").unwrap_err();
        let named: Vec<String> = ProviderKind::ALL.iter().map(|k| format!("`{k}`")).collect();
        assert!(
            refused.ends_with(&format!("expected one of {}", named.join(", "))),
            "{refused}"
        );
    }

    #[test]
    fn an_email_adapter_refuses_a_job_that_is_not_an_email_naming_itself() {
        let sms = Job::decode(br#"{"job_id":"j","tenant_id":"t","channel":"sms","recipient":"+14155550100","content":{"text":"hi"}}"#).unwrap();
        let e = email_parts(&sms, ProviderKind::Ses).err().unwrap();
        assert_eq!(e.kind, ErrorKind::Content);
        assert_eq!(e.message, "ses carries email only");
    }

    #[test]
    fn an_email_job_lends_its_subject_and_bodies() {
        let email = Job::decode(br#"{"job_id":"j","tenant_id":"t","channel":"email","recipient":"a@b.co","content":{"subject":"Hi","html":"<p>x</p>"}}"#).unwrap();
        let p = email_parts(&email, ProviderKind::Smtp).ok().unwrap();
        assert_eq!((p.subject, p.text, p.html), ("Hi", None, Some("<p>x</p>")));
    }
}
