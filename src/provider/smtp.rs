//! SMTP through lettre: pooled async transport per account, plain / STARTTLS /
//! implicit TLS, AUTH, and reply codes classified.

use super::field::{MAX_DISPLAY_NAME, email, header_text, non_empty, opt_header_text};
use super::scrub::Scrubber;
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
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use std::time::Duration;

// Settings: one account of this provider, as a tenant stores it.

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpSecurity {
    /// Plain SMTP, for local catchers such as Mailpit.
    None,
    /// Upgrade with STARTTLS (required).
    #[default]
    Starttls,
    /// Implicit TLS (SMTPS, usually port 465).
    Tls,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpSettings {
    pub host: String,
    /// Defaults to 25 (none), 587 (starttls) or 465 (tls).
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default, deserialize_with = "crate::enum_names::by_name")]
    pub security: SmtpSecurity,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    #[serde(skip_serializing)]
    pub password: Option<SecretString>,
    pub from_email: String,
    #[serde(default)]
    pub from_name: Option<String>,
    /// Connections kept open for this account.
    #[serde(default = "default_pool_max")]
    pub pool_max: u32,
    /// Seconds an idle pooled connection is kept.
    #[serde(default = "default_pool_idle")]
    pub pool_idle_secs: u64,
    /// PEM file of an extra CA to trust (self-hosted relays, tests).
    #[serde(default)]
    pub ca_file: Option<String>,
}

fn default_pool_max() -> u32 {
    4
}

fn default_pool_idle() -> u64 {
    60
}

impl SmtpSettings {
    /// The fields that hold secrets, in the order [`Self::secrets`] gives them.
    pub const SECRET_FIELDS: &'static [&'static str] = &["password"];

    /// Every secret field, set or not.
    pub fn secrets(&self) -> Vec<(&'static str, Option<&SecretString>)> {
        vec![("password", self.password.as_ref())]
    }

    /// Check every field; the error names the first bad one.
    pub fn validate(&self) -> Result<(), SettingsError> {
        non_empty("host", &self.host)?;
        if self
            .host
            .contains(|c: char| c.is_whitespace() || c.is_control() || c == '/')
        {
            return Err(SettingsError::new(
                "host",
                "expected a host name or address, without spaces or a path",
            ));
        }
        email("from_email", &self.from_email)?;
        opt_header_text("from_name", &self.from_name, MAX_DISPLAY_NAME)?;
        if let Some(user) = &self.username {
            header_text("username", user, 256)?;
        }
        if self.password.is_some() && self.username.is_none() {
            return Err(SettingsError::new(
                "username",
                "required when a password is set",
            ));
        }
        if self.pool_max == 0 {
            return Err(SettingsError::new("pool_max", "must be at least 1"));
        }
        Ok(())
    }
}

pub struct Smtp {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    timeout: Duration,
    host: String,
    port: u16,
    /// Where it may connect: the relay's addresses are checked before each send.
    net: std::sync::Arc<super::net::NetworkPolicy>,
    username: Option<String>,
    /// The password, scrubbed from every error (servers may echo AUTH data).
    password: Option<secrecy::SecretString>,
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
        let port = s.port.unwrap_or(port);
        let mut b = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&s.host)
            .port(port)
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
            host: s.host.clone(),
            port,
            net: ctx.net.clone(),
            username: s.username.clone(),
            password: s.password.clone(),
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
        // Built only for an error: a success computes no spellings.
        let scrubber = || {
            let s = Scrubber::new().job(job);
            match &self.password {
                Some(p) => s.smtp_auth(
                    self.username.as_deref().unwrap_or_default(),
                    p.expose_secret(),
                ),
                None => s,
            }
        };
        // One bound on everything: resolving and checking the relay's
        // addresses, connecting, the greeting, TLS, AUTH and the whole
        // transaction. lettre's own timeout (connect_timeout) applies to each
        // connect and each read / write; this one also stops a server that
        // keeps answering slowly, and a silent server at `timeout` at most.
        let send = async {
            self.net
                .check_host(&self.host, self.port)
                .await
                .map_err(|e| match e {
                    super::net::ResolveError::Refused(r) => {
                        super::http::refused("smtp", &r.to_string())
                    }
                    e => ProviderError::transient(format!("smtp: {e}")),
                })?;
            self.transport
                .send(msg)
                .await
                .map_err(|e| classify(&e, &self.host))
        };
        let reply = tokio::time::timeout(self.timeout, send)
            .await
            .map_err(|_| ProviderError::transient("smtp: timed out"))?
            .map_err(|e| scrubber().error(e))?;
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

/// An RFC 3463 enhanced status code: `class.subject.detail`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Enhanced {
    class: u8,
    subject: u16,
    detail: u16,
}

/// The enhanced status code a reply's text starts with (`4.7.1 Greylisted`).
fn enhanced_code(text: &str) -> Option<Enhanced> {
    let token = text.split_whitespace().next()?;
    let mut parts = token.split('.');
    let class = parts.next()?.parse().ok()?;
    let subject = parts.next()?.parse().ok()?;
    let detail = parts.next()?.parse().ok()?;
    let valid =
        parts.next().is_none() && matches!(class, 2 | 4 | 5) && subject < 1000 && detail < 1000;
    valid.then_some(Enhanced {
        class,
        subject,
        detail,
    })
}

/// The kind of a negative SMTP reply, by reply code, RFC 3463 enhanced status
/// code (the first token of the text) and text. lettre does not say which
/// command (MAIL, RCPT, DATA, AUTH) drew the reply, so the enhanced code's
/// subject tells whether it is about the recipient (x.1 addressing — but
/// x.1.7/x.1.8 are the sender's —, x.2 mailbox) or about this account and
/// server. The first row that matches decides.
///
/// "Account-scoped" rows count against the account's circuit breaker;
/// "recipient-scoped" and "message" rows do not.
///
/// | reply | enhanced code / text                  | kind              | scope     |
/// |-------|---------------------------------------|-------------------|-----------|
/// | 421   | any (server closing the channel)      | Transient         | account   |
/// | 4xx   | text mentions greylist / graylist     | RecipientDeferred | recipient |
/// | 4xx   | 4.1.7, 4.1.8 (sender address)         | Transient         | account   |
/// | 4xx   | 4.1.x (addressing), 4.2.x (mailbox busy / full, e.g. 452 4.2.2) | RecipientDeferred | recipient |
/// | 4xx   | 4.7.1 (greylisting, per-recipient policy) | RecipientDeferred | recipient |
/// | 4xx   | 4.3.x (system), 4.4.x (network), 4.5.x (protocol, e.g. 452 4.5.3 too many recipients) | Transient | account |
/// | 450   | (mailbox unavailable, no enhanced code that says otherwise) | RecipientDeferred | recipient |
/// | 4xx   | anything else                         | Transient         | account   |
/// | 530, 534, 535, 538 | (authentication required / too weak / refused) | Config | account |
/// | 5xx   | 5.1.7, 5.1.8 (sender address refused) | Config            | account   |
/// | 5xx   | 5.2.3 (message longer than the mailbox takes), 5.3.4 (too big) | Content | message |
/// | 5xx   | 5.1.x (bad recipient address), 5.2.x (mailbox disabled / full) | Recipient | recipient |
/// | 550, 551, 553 | (mailbox unavailable, user not local, bad mailbox name) | Recipient | recipient |
/// | 552, 554 | (storage exceeded / too big, transaction failed) | Content | message |
/// | 5xx   | anything else                         | Provider          | account   |
///
/// Sources: RFC 5321 §4.2 (reply codes), RFC 3463 (enhanced status codes),
/// RFC 6647 (greylisting answers 4xx, often `451 4.7.1`).
pub fn classify_reply(code: u16, text: &str) -> ErrorKind {
    let enhanced = enhanced_code(text);
    let (subject, detail) = enhanced.map_or((0, 0), |e| (e.subject, e.detail));
    let lower = text.to_ascii_lowercase();
    match code {
        421 => ErrorKind::Transient,
        400..=499 if lower.contains("greylist") || lower.contains("graylist") => {
            ErrorKind::RecipientDeferred
        }
        400..=499 if subject == 1 && matches!(detail, 7 | 8) => ErrorKind::Transient,
        400..=499 if matches!(subject, 1 | 2) => ErrorKind::RecipientDeferred,
        400..=499 if (subject, detail) == (7, 1) => ErrorKind::RecipientDeferred,
        400..=499 if matches!(subject, 3..=5) => ErrorKind::Transient,
        450 => ErrorKind::RecipientDeferred,
        400..=499 => ErrorKind::Transient,
        530 | 534 | 535 | 538 => ErrorKind::Config,
        500..=599 if subject == 1 && matches!(detail, 7 | 8) => ErrorKind::Config,
        500..=599 if matches!((subject, detail), (2, 3) | (3, 4)) => ErrorKind::Content,
        500..=599 if matches!(subject, 1 | 2) => ErrorKind::Recipient,
        550 | 551 | 553 => ErrorKind::Recipient,
        552 | 554 => ErrorKind::Content,
        _ => ErrorKind::Provider,
    }
}

/// Classify an SMTP failure: a negative reply by [`classify_reply`]; without
/// a reply, a server certificate that does not verify is Config, its code
/// the reason in words (`certificate_unknown_issuer`; found in
/// the error's source chain: lettre reports a failed STARTTLS handshake as a
/// connection error, not `is_tls()`), a timeout or connection trouble is
/// Transient, other TLS trouble is Provider. `host` names the server in the
/// certificate message.
pub fn classify(e: &lettre::transport::smtp::Error, host: &str) -> ProviderError {
    use std::error::Error as _;
    let Some(status) = e.status() else {
        if let Some(why) = super::http::certificate_problem(e) {
            return ProviderError::new(
                ErrorKind::Config,
                Some(super::http::certificate_code(&why)),
                format!(
                    "smtp: certificate for {host} does not verify ({why}): fix the server certificate or set ca_file"
                ),
            );
        }
        let kind = if e.is_timeout() {
            ErrorKind::Transient
        } else if e.is_tls() {
            ErrorKind::Provider
        } else {
            ErrorKind::Transient
        };
        return ProviderError::new(kind, None, format!("smtp: {e}"));
    };
    let code = status.to_string();
    // A negative reply's source is the reply text, every line joined.
    let text = e.source().map(|s| s.to_string()).unwrap_or_default();
    let kind = code
        .parse()
        .map(|c| classify_reply(c, &text))
        .unwrap_or(ErrorKind::Provider);
    let message = match (kind, code.as_str()) {
        (ErrorKind::Config, "530" | "534" | "535" | "538") => format!(
            "smtp: authentication refused ({code} {text}): check the account's username and password (and that the server allows this AUTH over this security)"
        ),
        (ErrorKind::Config, _) => format!(
            "smtp: sender refused ({code} {text}): check from_email (the server must accept it for this login)"
        ),
        _ => format!("smtp: {e}"),
    };
    ProviderError::new(kind, Some(code), message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(code: u16, text: &str) -> ErrorKind {
        classify_reply(code, text)
    }

    #[test]
    fn greylisting_with_4_7_1_is_recipient_deferred() {
        assert_eq!(
            kind(451, "4.7.1 Greylisting in action, please come back later"),
            ErrorKind::RecipientDeferred
        );
    }

    #[test]
    fn a_4xx_mentioning_greylisting_without_an_enhanced_code_is_recipient_deferred() {
        assert_eq!(
            kind(450, "Recipient address rejected: Greylisted, see http://x"),
            ErrorKind::RecipientDeferred
        );
        assert_eq!(
            kind(451, "graylisted, try later"),
            ErrorKind::RecipientDeferred
        );
    }

    #[test]
    fn a_4_7_1_without_greylisting_text_is_recipient_deferred() {
        assert_eq!(
            kind(
                450,
                "4.7.1 <pat@example.com>: Recipient address rejected: try later"
            ),
            ErrorKind::RecipientDeferred
        );
    }

    #[test]
    fn a_mailbox_busy_450_is_recipient_deferred() {
        assert_eq!(
            kind(450, "Requested mail action not taken: mailbox unavailable"),
            ErrorKind::RecipientDeferred
        );
    }

    #[test]
    fn a_temporarily_full_mailbox_452_4_2_2_is_recipient_deferred() {
        assert_eq!(
            kind(452, "4.2.2 Mailbox full"),
            ErrorKind::RecipientDeferred
        );
    }

    #[test]
    fn a_4_1_x_addressing_reply_is_recipient_deferred() {
        assert_eq!(
            kind(
                450,
                "4.1.1 Recipient address rejected: temporary lookup failure"
            ),
            ErrorKind::RecipientDeferred
        );
    }

    #[test]
    fn a_temporary_sender_address_reply_is_account_scoped_transient() {
        assert_eq!(
            kind(450, "4.1.8 Sender address rejected: Domain not found"),
            ErrorKind::Transient
        );
    }

    #[test]
    fn a_421_is_transient_even_when_it_mentions_a_recipient_code() {
        assert_eq!(
            kind(421, "4.7.0 Try again later, closing connection"),
            ErrorKind::Transient
        );
        assert_eq!(kind(421, "4.2.1 busy"), ErrorKind::Transient);
    }

    #[test]
    fn a_451_4_3_0_system_trouble_is_transient() {
        assert_eq!(
            kind(451, "4.3.0 Temporary failure, try again later"),
            ErrorKind::Transient
        );
    }

    #[test]
    fn a_451_4_4_x_network_trouble_is_transient() {
        assert_eq!(kind(451, "4.4.1 No answer from host"), ErrorKind::Transient);
    }

    #[test]
    fn too_many_recipients_452_4_5_3_is_transient() {
        assert_eq!(kind(452, "4.5.3 Too many recipients"), ErrorKind::Transient);
    }

    #[test]
    fn a_4xx_without_hints_is_transient() {
        assert_eq!(kind(451, "Local error in processing"), ErrorKind::Transient);
        assert_eq!(
            kind(452, "Insufficient system storage"),
            ErrorKind::Transient
        );
    }

    #[test]
    fn authentication_replies_are_config() {
        for code in [530, 534, 535, 538] {
            assert_eq!(kind(code, "5.7.8 Authentication failed"), ErrorKind::Config);
        }
    }

    #[test]
    fn a_refused_sender_address_is_config() {
        assert_eq!(
            kind(553, "5.1.8 Sender address rejected: Domain not found"),
            ErrorKind::Config
        );
    }

    #[test]
    fn unknown_users_and_bad_mailboxes_are_recipient_errors() {
        assert_eq!(kind(550, "5.1.1 User unknown"), ErrorKind::Recipient);
        assert_eq!(kind(551, "User not local"), ErrorKind::Recipient);
        assert_eq!(kind(553, "Mailbox name not allowed"), ErrorKind::Recipient);
        assert_eq!(kind(550, "5.2.1 Mailbox disabled"), ErrorKind::Recipient);
    }

    #[test]
    fn a_too_big_message_is_content() {
        assert_eq!(kind(552, "5.3.4 Message too big"), ErrorKind::Content);
        assert_eq!(kind(552, "Exceeded storage allocation"), ErrorKind::Content);
        assert_eq!(kind(554, "Transaction failed"), ErrorKind::Content);
    }

    #[test]
    fn an_enhanced_code_is_only_read_from_the_first_token() {
        assert_eq!(enhanced_code("see 4.2.2 later"), None);
        assert_eq!(enhanced_code("4.2"), None);
        assert_eq!(
            enhanced_code("4.7.1 Greylisted"),
            Some(Enhanced {
                class: 4,
                subject: 7,
                detail: 1
            })
        );
    }

    #[test]
    fn queue_ids_are_read_from_postfix_style_replies() {
        assert_eq!(
            queue_id("2.0.0 Ok: queued as 4Fx2Q93dKz"),
            Some("4Fx2Q93dKz".into())
        );
        assert_eq!(queue_id("OK"), None);
    }
}
