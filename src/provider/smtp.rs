//! SMTP through lettre: pooled async transport per account, plain / STARTTLS /
//! implicit TLS, AUTH, and reply codes classified.

use super::settings::{SmtpSecurity, SmtpSettings};
use super::{
    EmailParts, ErrorKind, Provider, ProviderContext, ProviderError, ProviderKind, Receipt,
    SettingsError, email_parts,
};
use crate::job::Job;
use async_trait::async_trait;
use lettre::message::{Mailbox, MultiPart, SinglePart, header};
use lettre::transport::smtp::PoolConfig;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use secrecy::ExposeSecret;
use std::time::Duration;

pub struct Smtp {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    timeout: Duration,
}

impl Smtp {
    pub fn new(s: &SmtpSettings, ctx: &ProviderContext) -> Result<Self, SettingsError> {
        let tls_params = || -> Result<TlsParameters, SettingsError> {
            let mut b = TlsParameters::builder(s.host.clone());
            if let Some(path) = &s.ca_file {
                let pem = std::fs::read(path).map_err(|e| {
                    SettingsError::new("ca_file", format!("cannot read {path}: {e}"))
                })?;
                let cert = Certificate::from_pem(&pem)
                    .map_err(|_| SettingsError::new("ca_file", "not a PEM certificate"))?;
                b = b.add_root_certificate(cert);
            }
            b.build()
                .map_err(|e| SettingsError::new("host", format!("TLS setup failed: {e}")))
        };
        let (tls, port) = match s.security {
            SmtpSecurity::None => (Tls::None, 25),
            SmtpSecurity::Starttls => (Tls::Required(tls_params()?), 587),
            SmtpSecurity::Tls => (Tls::Wrapper(tls_params()?), 465),
        };
        let mut b = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&s.host)
            .port(s.port.unwrap_or(port))
            .tls(tls)
            .timeout(Some(ctx.connect_timeout))
            .pool_config(
                PoolConfig::new()
                    .max_size(s.pool_max)
                    .idle_timeout(Duration::from_secs(s.pool_idle_secs)),
            );
        if let (Some(user), Some(pass)) = (&s.username, &s.password) {
            b = b.credentials(Credentials::new(
                user.clone(),
                pass.expose_secret().to_owned(),
            ));
        }
        let email: lettre::Address = s
            .from_email
            .parse()
            .map_err(|_| SettingsError::new("from_email", "not an email address"))?;
        Ok(Self {
            transport: b.build(),
            from: Mailbox::new(s.from_name.clone(), email),
            timeout: ctx.timeout,
        })
    }

    fn message(&self, job: &Job) -> Result<(Message, String), ProviderError> {
        let EmailParts {
            subject,
            text,
            html,
        } = email_parts(job, ProviderKind::Smtp)?;
        let to: Mailbox = job.recipient.parse().map_err(|_| {
            ProviderError::new(
                ErrorKind::Recipient,
                None,
                "recipient is not an email address",
            )
        })?;
        let domain = self.from.email.domain();
        let message_id = format!("<{}.{}@{}>", job.id, uuid::Uuid::now_v7().simple(), domain);
        let b = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(subject)
            .message_id(Some(message_id.clone()))
            .header(JobIdHeader(job.id.to_string()));
        let built = match (text, html) {
            (Some(t), Some(h)) => b.multipart(MultiPart::alternative_plain_html(
                t.to_owned(),
                h.to_owned(),
            )),
            (Some(t), None) => b.singlepart(SinglePart::plain(t.to_owned())),
            (None, Some(h)) => b.singlepart(SinglePart::html(h.to_owned())),
            (None, None) => {
                return Err(ProviderError::new(
                    ErrorKind::Content,
                    None,
                    "email has no body",
                ));
            }
        };
        let msg = built.map_err(|e| {
            ProviderError::new(
                ErrorKind::Content,
                None,
                format!("message cannot be built: {e}"),
            )
        })?;
        Ok((msg, message_id))
    }
}

/// `X-Outreach-Job-Id`, so bounces and replies can be matched to the job.
#[derive(Clone)]
struct JobIdHeader(String);

impl header::Header for JobIdHeader {
    fn name() -> header::HeaderName {
        header::HeaderName::new_from_ascii_str("X-Outreach-Job-Id")
    }
    fn parse(s: &str) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        Ok(Self(s.to_owned()))
    }
    fn display(&self) -> header::HeaderValue {
        header::HeaderValue::new(Self::name(), self.0.clone())
    }
}

#[async_trait]
impl Provider for Smtp {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Smtp
    }

    async fn send(&self, job: &Job) -> Result<Receipt, ProviderError> {
        let (msg, message_id) = self.message(job)?;
        // lettre's own timeout covers the connection only.
        let reply = tokio::time::timeout(self.timeout, self.transport.send(msg))
            .await
            .map_err(|_| ProviderError::transient("smtp: timed out"))?
            .map_err(|e| classify(&e))?;
        let queued = reply.message().find_map(queue_id);
        Ok(Receipt {
            message_id: Some(queued.unwrap_or(message_id)),
        })
    }
}

/// The id from a `250 2.0.0 Ok: queued as 4XYZ` style reply.
fn queue_id(line: &str) -> Option<String> {
    let rest = line.split_once("queued as ")?.1;
    let id = rest
        .split_whitespace()
        .next()?
        .trim_matches(|c: char| c == '<' || c == '>');
    (!id.is_empty()).then(|| id.to_owned())
}

/// Classify an SMTP failure by its reply code.
pub fn classify(e: &lettre::transport::smtp::Error) -> ProviderError {
    let code = e.status().map(|c| c.to_string());
    let text = e.to_string();
    let kind = match code.as_deref().and_then(|c| c.parse::<u16>().ok()) {
        Some(400..=499) => ErrorKind::Transient,
        // Authentication required / failed / too weak: this account's trouble.
        Some(530 | 534 | 535 | 538) => ErrorKind::Provider,
        // Mailbox unavailable, user not local, bad mailbox name.
        Some(550 | 551 | 553) => ErrorKind::Recipient,
        // Exceeded storage / message too big, transaction failed.
        Some(552 | 554) => ErrorKind::Content,
        Some(_) => ErrorKind::Provider,
        // No reply code: connection, TLS or protocol trouble.
        None if e.is_timeout() => ErrorKind::Transient,
        None if e.is_tls() => ErrorKind::Provider,
        None => ErrorKind::Transient,
    };
    ProviderError::new(kind, code, format!("smtp: {text}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_ids_are_read_from_postfix_style_replies() {
        assert_eq!(
            queue_id("2.0.0 Ok: queued as 4Fx2Q93dKz"),
            Some("4Fx2Q93dKz".into())
        );
        assert_eq!(queue_id("OK"), None);
    }
}
