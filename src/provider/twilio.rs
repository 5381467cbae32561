//! Twilio Programmable Messaging (SMS and WhatsApp): `POST
//! /2010-04-01/Accounts/{AccountSid}/Messages.json`, HTTP Basic with the
//! account SID and auth token, form-encoded. 201 and a `sid` mean accepted.
//!
//! Wire format from `twilio_api_v2010.json` (twilio/twilio-oai): `To` is
//! required, then `From` or `MessagingServiceSid`, `Body`, `StatusCallback`.

use super::field::{SettingsError, is_sid, non_empty, opt_url};
use super::http::{self, Answer};
use super::scrub::Scrubber;
use super::{ErrorKind, Provider, ProviderContext, ProviderError, ProviderKind, Receipt};
use crate::job::{Channel, Content, Job, is_e164};
use async_trait::async_trait;
use reqwest::header::HeaderMap;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

// Settings: one account of this provider, as a tenant stores it.

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TwilioSettings {
    pub account_sid: String,
    #[serde(skip_serializing)]
    pub auth_token: SecretString,
    /// Sender number (E.164) for SMS, or WhatsApp sender number.
    #[serde(default)]
    pub from: Option<String>,
    /// Messaging service (`MG` + 32 hex) instead of `from`.
    #[serde(default)]
    pub messaging_service_sid: Option<String>,
    /// `https://api.twilio.com` by default.
    #[serde(default)]
    pub base_url: Option<String>,
}

impl TwilioSettings {
    /// The fields that hold secrets, in the order [`Self::secrets`] gives them.
    pub const SECRET_FIELDS: &'static [&'static str] = &["auth_token"];

    /// Every secret field, set or not.
    pub fn secrets(&self) -> Vec<(&'static str, Option<&SecretString>)> {
        vec![("auth_token", Some(&self.auth_token))]
    }

    /// Check every field; the error names the first bad one.
    pub fn validate(&self) -> Result<(), SettingsError> {
        if !is_sid(&self.account_sid, "AC") {
            return Err(SettingsError::new(
                "account_sid",
                "Twilio account SIDs are `AC` followed by 32 hex digits",
            ));
        }
        non_empty("auth_token", self.auth_token.expose_secret())?;
        match (&self.from, &self.messaging_service_sid) {
            (None, None) => {
                return Err(SettingsError::new(
                    "from",
                    "set `from` or `messaging_service_sid`",
                ));
            }
            (Some(f), _) if !is_e164(f.strip_prefix("whatsapp:").unwrap_or(f)) => {
                return Err(SettingsError::new(
                    "from",
                    "expected an E.164 number such as +14155550100",
                ));
            }
            (_, Some(m)) if !is_sid(m, "MG") => {
                return Err(SettingsError::new(
                    "messaging_service_sid",
                    "messaging service SIDs are `MG` followed by 32 hex digits",
                ));
            }
            _ => {}
        }
        opt_url("base_url", &self.base_url)
    }
}

const DEFAULT_BASE: &str = "https://api.twilio.com";

pub struct Twilio {
    http: reqwest::Client,
    net: std::sync::Arc<super::net::NetworkPolicy>,
    endpoint: String,
    account_sid: String,
    auth_token: SecretString,
    from: Option<String>,
    messaging_service_sid: Option<String>,
    webhook_base: Option<String>,
}

impl Twilio {
    pub fn new(s: &TwilioSettings, ctx: &ProviderContext) -> Self {
        let base = http::base_url(s.base_url.as_deref(), DEFAULT_BASE);
        Self {
            http: ctx.http.clone(),
            net: ctx.net.clone(),
            endpoint: format!("{base}/2010-04-01/Accounts/{}/Messages.json", s.account_sid),
            account_sid: s.account_sid.clone(),
            auth_token: s.auth_token.clone(),
            from: s.from.clone(),
            messaging_service_sid: s.messaging_service_sid.clone(),
            webhook_base: ctx
                .webhook_base_url
                .as_ref()
                .map(|u| u.as_str().trim_end_matches('/').to_owned()),
        }
    }

    /// The form fields for one job.
    pub fn form(&self, job: &Job) -> Result<Vec<(&'static str, String)>, ProviderError> {
        let text = match &job.content {
            Content::Text { text } => text,
            // Twilio sends WhatsApp templates only as Content API templates
            // (`ContentSid` HX…), which a job's template name cannot name.
            // A capability the account lacks: Config (another step may send
            // it; retrying this one never will).
            Content::Template { .. } => {
                return Err(ProviderError::new(
                    ErrorKind::Config,
                    Some(super::error::CAPABILITY.into()),
                    "twilio: WhatsApp templates need Twilio Content SIDs, which this account does not have: configure a Meta WhatsApp account for template messages",
                ));
            }
            Content::Email { .. } => {
                return Err(ProviderError::new(
                    ErrorKind::Content,
                    None,
                    "twilio carries sms and whatsapp only",
                ));
            }
        };
        let address = |n: &str| {
            let bare = n.strip_prefix("whatsapp:").unwrap_or(n);
            match job.channel {
                Channel::Whatsapp => format!("whatsapp:{bare}"),
                _ => bare.to_owned(),
            }
        };
        let mut form = vec![("To", address(&job.recipient))];
        if let Some(from) = &self.from {
            form.push(("From", address(from)));
        }
        if let Some(sid) = &self.messaging_service_sid {
            form.push(("MessagingServiceSid", sid.clone()));
        }
        form.push(("Body", text.clone()));
        if let Some(base) = &self.webhook_base {
            form.push((
                "StatusCallback",
                format!("{base}/webhooks/twilio/{}", job.tenant_id),
            ));
        }
        Ok(form)
    }
}

#[async_trait]
impl Provider for Twilio {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Twilio
    }

    async fn send(&self, job: &Job) -> Result<Receipt, ProviderError> {
        let form = self.form(job)?;
        let request = self
            .http
            .post(&self.endpoint)
            .basic_auth(&self.account_sid, Some(self.auth_token.expose_secret()))
            .form(&form);
        let answer = http::execute("twilio", &self.net, request).await?;
        Scrubber::read(answer, outcome, || {
            Scrubber::new()
                .basic(&self.account_sid, self.auth_token.expose_secret())
                .job(job)
        })
    }
}

fn outcome(a: &Answer) -> Result<Receipt, ProviderError> {
    #[derive(Deserialize)]
    struct Created {
        sid: Option<String>,
    }
    if !a.is_success() {
        return Err(classify(a.status, &a.headers, &a.body));
    }
    Ok(Receipt {
        message_id: a.json::<Created>().and_then(|c| c.sid),
    })
}

#[derive(Deserialize, Default)]
struct ErrorBody {
    code: Option<u32>,
    message: Option<String>,
}

/// Twilio's "the recipient replied STOP" (21610): the number opted out of
/// this sender. A send refused with it is marked
/// [`ProviderError::opted_out`]; a status callback with it suppresses the
/// number (`feedback::parse`).
pub const OPTED_OUT: u32 = 21610;

/// The kind of a Twilio error code, when the code decides it.
///
/// Sources: twilio.com/docs/api/errors/<code> for each code below.
///
/// Recipient-scoped codes (not held against the account): 21211, 21610,
/// 21614, 63016 (Recipient). Rate limits are held against neither. Every
/// other row is account-scoped.
fn kind_for_code(code: u32) -> Option<ErrorKind> {
    if config_fix(code).is_some() {
        return Some(ErrorKind::Config);
    }
    Some(match code {
        // 20429 Too Many Requests; 21611 'From' exceeded the maximum number of
        // queued messages; 63017/63018 rate limit exceeded.
        20429 | 21611 | 63017 | 63018 => ErrorKind::RateLimited,
        // 20005 account not active; 20403 account suspended or closed; 20404
        // resource (account) not found.
        20005 | 20403 | 20404 => ErrorKind::Provider,
        // Account restrictions another provider does not share: 21608 trial
        // account, To not verified; 21612 To/From combination not routable
        // from this sender; 63038 daily message limit.
        21608 | 21612 | 63038 => ErrorKind::Provider,
        // Recipient: 21211 invalid To; 21610 recipient replied STOP; 21614 To
        // is not a mobile number; 63016 outside the WhatsApp 24-hour window.
        21211 | 21610 | 21614 | 63016 => ErrorKind::Recipient,
        // Content: 21602 body required; 21617 body over 1600 characters;
        // 21619 body or media required; 21658 parameter over its limit.
        21602 | 21617 | 21619 | 21658 => ErrorKind::Content,
        _ => return None,
    })
}

/// For a code that needs a person: what is wrong and the fix.
fn config_fix(code: u32) -> Option<(&'static str, &'static str)> {
    Some(match code {
        // 20003 authenticate / permission denied.
        20003 => (
            "credentials refused",
            "check the account's account_sid and auth_token",
        ),
        // Sender trouble: 21212 invalid From; 21606 From not a valid
        // message-capable number for this account; 21659 From not a Twilio
        // number; 21660 From does not belong to the account; 21661 From not
        // SMS-capable; 63007 no WhatsApp channel for From.
        21212 | 21606 | 21659 | 21660 | 21661 | 63007 => (
            "sender refused",
            "check the account's from (a number of this account, enabled for this channel) or messaging_service_sid",
        ),
        // 21408 geo permission disabled for the destination's country.
        21408 => (
            "destination country not enabled",
            "enable the country in the Twilio account's Messaging Geo Permissions",
        ),
        _ => return None,
    })
}

/// Classify a Twilio error answer (`{"code", "message", "more_info",
/// "status"}`) by its code, else by HTTP status (401/403 → Config); see
/// [`kind_for_code`]. A body not in that shape leaves the status as the code
/// and an excerpt of the body as the message.
///
/// | code                                  | kind        | scope     |
/// |---------------------------------------|-------------|-----------|
/// | 20429, 21611, 63017, 63018            | RateLimited | neither   |
/// | 20003                                 | Config (check account_sid / auth_token) | account |
/// | 21212, 21606, 21659, 21660, 21661, 63007 | Config (check from) | account |
/// | 21408                                 | Config (enable Geo Permissions) | account |
/// | 20005, 20403, 20404, 21608, 21612, 63038 | Provider | account   |
/// | 21211, 21610, 21614, 63016            | Recipient   | recipient |
/// | 21602, 21617, 21619, 21658            | Content     | message   |
/// | anything else                         | by HTTP status | |
///
/// 21610 ([`OPTED_OUT`]) is also marked as an opt-out.
pub fn classify(status: u16, headers: &HeaderMap, body: &[u8]) -> ProviderError {
    let parsed: ErrorBody = serde_json::from_slice(body).unwrap_or_default();
    let message = parsed.message.unwrap_or_default();
    let code = parsed.code.map(|c| c.to_string());
    if let Some((what, fix)) = parsed.code.and_then(config_fix) {
        return http::config_error("twilio", code, what, fix, &message, body);
    }
    let kind = parsed
        .code
        .and_then(kind_for_code)
        .unwrap_or_else(|| http::kind_for_status(status));
    http::answer_error("twilio", kind, status, headers, code, &message, body)
        .with_opt_out(parsed.code == Some(OPTED_OUT))
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;
    use std::time::Duration;

    fn error(status: u16, code: u32, message: &str) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "code": code, "message": message, "status": status,
            "more_info": format!("https://www.twilio.com/docs/errors/{code}"),
        }))
        .unwrap()
    }

    #[test]
    fn error_codes_map_to_the_documented_kinds() {
        let cases = [
            (429, 20429, "Too Many Requests", ErrorKind::RateLimited),
            (401, 20003, "Authenticate", ErrorKind::Config),
            (
                404,
                20404,
                "The requested resource was not found",
                ErrorKind::Provider,
            ),
            (
                400,
                21606,
                "The 'From' phone number provided is not a valid message-capable Twilio phone number for this destination/account",
                ErrorKind::Config,
            ),
            (
                400,
                21408,
                "Permission to send an SMS has not been enabled for the region indicated by the 'To' number: +98…",
                ErrorKind::Config,
            ),
            (
                400,
                21608,
                "The number +1555… is unverified. Trial accounts cannot send messages to unverified numbers",
                ErrorKind::Provider,
            ),
            (
                400,
                21211,
                "The 'To' number +1555 is not a valid phone number.",
                ErrorKind::Recipient,
            ),
            (
                400,
                21610,
                "Attempt to send to unsubscribed recipient",
                ErrorKind::Recipient,
            ),
            (
                400,
                21614,
                "'To' number is not a valid mobile number",
                ErrorKind::Recipient,
            ),
            (
                400,
                21617,
                "The concatenated message body exceeds the 1600 character limit",
                ErrorKind::Content,
            ),
            (
                400,
                21611,
                "This 'From' number has exceeded the maximum number of queued messages",
                ErrorKind::RateLimited,
            ),
            (400, 29999, "Something new", ErrorKind::Content),
            (500, 20500, "Internal Server Error", ErrorKind::Transient),
        ];
        for (status, code, message, kind) in cases {
            let e = classify(status, &HeaderMap::new(), &error(status, code, message));
            assert_eq!(e.kind, kind, "{code}: {e}");
            assert_eq!(e.code, Some(code.to_string()));
            if kind == ErrorKind::Config {
                assert!(
                    e.message
                        .ends_with(&format!("the provider said: {message}"))
                );
            } else {
                assert_eq!(e.message, format!("twilio: {message}"));
            }
        }
    }

    #[test]
    fn a_refused_auth_token_names_the_credentials_as_the_fix() {
        let e = classify(401, &HeaderMap::new(), &error(401, 20003, "Authenticate"));
        assert_eq!(
            e.message,
            "twilio: credentials refused: check the account's account_sid and auth_token; the provider said: Authenticate"
        );
    }

    #[test]
    fn only_21610_marks_the_recipient_as_opted_out() {
        let stop = classify(400, &HeaderMap::new(), &error(400, 21610, "unsubscribed"));
        assert!(stop.opted_out, "{stop:?}");
        let bad = classify(400, &HeaderMap::new(), &error(400, 21211, "invalid To"));
        assert!(!bad.opted_out, "{bad:?}");
    }

    #[test]
    fn a_bare_401_without_a_twilio_body_is_config() {
        let e = classify(401, &HeaderMap::new(), b"Unauthorized");
        assert_eq!(e.kind, ErrorKind::Config);
        assert_eq!(e.code.as_deref(), Some("401"));
        assert!(e.message.contains("Unauthorized"), "{e}");
    }

    #[test]
    fn a_whatsapp_template_is_config_naming_a_meta_account_as_the_fix() {
        let t = Twilio::new(
            &serde_json::from_value(serde_json::json!({
                "account_sid": "AC0123", "auth_token": "tok", "from": "+14155550100",
            }))
            .unwrap(),
            &crate::provider::ProviderContext::new(
                Duration::from_secs(1),
                Duration::from_secs(1),
                None,
            ),
        );
        let job = Job::decode(br#"{"job_id":"j","tenant_id":"t","channel":"whatsapp","recipient":"+14155550111","content":{"template":{"name":"reminder","language":"en"}}}"#).unwrap();
        let e = t.form(&job).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Config);
        assert!(
            e.message
                .ends_with("configure a Meta WhatsApp account for template messages"),
            "{e}"
        );
    }

    #[test]
    fn a_429_honours_retry_after() {
        let mut h = HeaderMap::new();
        h.insert("retry-after", HeaderValue::from_static("2"));
        let e = classify(429, &h, &error(429, 20429, "Too Many Requests"));
        assert_eq!(e.retry_after, Some(Duration::from_secs(2)));
    }

    #[test]
    fn an_answer_without_a_body_is_classified_by_status() {
        let e = classify(503, &HeaderMap::new(), b"");
        assert_eq!(
            (e.kind, e.code.as_deref()),
            (ErrorKind::Transient, Some("503"))
        );
    }
}
