//! Vonage (Nexmo) legacy SMS API: `POST /sms/json`, form-encoded with
//! `api_key` and `api_secret` in the body. The answer is HTTP 200 whatever
//! happened; `messages[i].status` "0" means accepted, anything else is an
//! error code (developer.vonage.com/en/api-errors/sms).
//!
//! The secret travels in the body, so every error is scrubbed of it.

use super::field::{SettingsError, non_empty, opt_url};
use super::http::{self, Answer};
use super::scrub::Scrubber;
use super::{ErrorKind, Provider, ProviderContext, ProviderError, ProviderKind, Receipt};
use crate::job::{Content, Job};
use async_trait::async_trait;
use reqwest::header::HeaderMap;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

// Settings: one account of this provider, as a tenant stores it.

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct VonageSettings {
    pub api_key: String,
    #[serde(skip_serializing)]
    pub api_secret: SecretString,
    /// Sender: E.164 number or alphanumeric sender id.
    pub from: String,
    /// `https://rest.nexmo.com` by default.
    #[serde(default)]
    pub base_url: Option<String>,
    /// The account's signature secret (dashboard → Settings): delivery
    /// receipts and inbound messages are signed with it (`sig`). Without it
    /// this account's webhooks are refused.
    #[serde(default)]
    #[serde(skip_serializing)]
    pub signature_secret: Option<SecretString>,
    /// The signing method chosen with it in the dashboard.
    #[serde(default, deserialize_with = "crate::enum_names::by_name")]
    pub signature_method: VonageSignatureMethod,
}

/// How Vonage signs webhooks (HMAC-MD5 is not supported: choose another).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum VonageSignatureMethod {
    /// MD5 of the parameters followed by the secret (Vonage's default).
    #[default]
    Md5hash,
    Sha1,
    Sha256,
    Sha512,
}

impl VonageSettings {
    /// The fields that hold secrets, in the order [`Self::secrets`] gives them.
    pub const SECRET_FIELDS: &'static [&'static str] = &["api_secret", "signature_secret"];

    /// Every secret field, set or not.
    pub fn secrets(&self) -> Vec<(&'static str, Option<&SecretString>)> {
        vec![
            ("api_secret", Some(&self.api_secret)),
            ("signature_secret", self.signature_secret.as_ref()),
        ]
    }

    /// Check every field; the error names the first bad one.
    pub fn validate(&self) -> Result<(), SettingsError> {
        non_empty("api_key", &self.api_key)?;
        non_empty("api_secret", self.api_secret.expose_secret())?;
        non_empty("from", &self.from)?;
        if !is_sender_id(&self.from) {
            return Err(SettingsError::new(
                "from",
                "expected a number of up to 15 digits or a sender name of up to 11 letters, digits and spaces",
            ));
        }
        opt_url("base_url", &self.base_url)
    }
}

/// Vonage's `from`: a number (digits, an optional leading `+`, up to 15
/// digits) or an alphanumeric sender id of up to 11 characters.
fn is_sender_id(from: &str) -> bool {
    let digits = from.strip_prefix('+').unwrap_or(from);
    let number =
        !digits.is_empty() && digits.len() <= 15 && digits.bytes().all(|b| b.is_ascii_digit());
    let name = from.chars().count() <= 11
        && from.trim() == from
        && from.chars().all(|c| c.is_ascii_alphanumeric() || c == ' ');
    number || name
}

const DEFAULT_BASE: &str = "https://rest.nexmo.com";

pub struct Vonage {
    http: reqwest::Client,
    net: std::sync::Arc<super::net::NetworkPolicy>,
    endpoint: String,
    api_key: String,
    api_secret: SecretString,
    from: String,
}

impl Vonage {
    pub fn new(s: &VonageSettings, ctx: &ProviderContext) -> Self {
        let base = http::base_url(s.base_url.as_deref(), DEFAULT_BASE);
        Self {
            http: ctx.http.clone(),
            net: ctx.net.clone(),
            endpoint: format!("{base}/sms/json"),
            api_key: s.api_key.clone(),
            api_secret: s.api_secret.clone(),
            // Numbers go without the `+`; alphanumeric sender ids unchanged.
            from: s.from.trim_start_matches('+').to_owned(),
        }
    }

    /// The form fields for one job, without the credentials.
    pub fn form(&self, job: &Job) -> Result<Vec<(&'static str, String)>, ProviderError> {
        let Content::Text { text } = &job.content else {
            return Err(ProviderError::new(
                ErrorKind::Content,
                None,
                "vonage carries sms text only",
            ));
        };
        let mut form = vec![
            ("from", self.from.clone()),
            ("to", job.recipient.trim_start_matches('+').to_owned()),
            ("text", text.clone()),
        ];
        // Without `type=unicode` non-GSM characters arrive garbled; any
        // non-ASCII text is sent as unicode (a superset, at worst dearer).
        if !text.is_ascii() {
            form.push(("type", "unicode".to_owned()));
        }
        Ok(form)
    }
}

#[async_trait]
impl Provider for Vonage {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Vonage
    }

    async fn send(&self, job: &Job) -> Result<Receipt, ProviderError> {
        let mut form = self.form(job)?;
        form.push(("api_key", self.api_key.clone()));
        form.push(("api_secret", self.api_secret.expose_secret().to_owned()));
        let request = self.http.post(&self.endpoint).form(&form);
        let answer = http::execute("vonage", &self.net, request).await?;
        Scrubber::read(answer, outcome, || {
            Scrubber::new()
                .secret(self.api_secret.expose_secret())
                .job(job)
        })
    }
}

#[derive(Deserialize, Default)]
struct SmsAnswer {
    #[serde(default)]
    messages: Vec<SmsMessage>,
}

#[derive(Deserialize)]
struct SmsMessage {
    status: Option<String>,
    #[serde(rename = "message-id")]
    message_id: Option<String>,
    #[serde(rename = "error-text")]
    error_text: Option<String>,
}

fn outcome(a: &Answer) -> Result<Receipt, ProviderError> {
    let parsed = a.json::<SmsAnswer>().unwrap_or_default();
    let accepted = a.status == 200
        && !parsed.messages.is_empty()
        && parsed
            .messages
            .iter()
            .all(|m| m.status.as_deref() == Some("0"));
    if !accepted {
        return Err(classify(a.status, &a.headers, &a.body));
    }
    // A long text is split into parts, one message each; the first names it.
    Ok(Receipt {
        message_id: parsed.messages.into_iter().find_map(|m| m.message_id),
    })
}

/// The kind of a Vonage SMS API status (those that need a person are in
/// [`config_fix`]).
///
/// Source: developer.vonage.com/en/api-errors/sms and the SMS
/// troubleshooting guide (status table 0–34, 101–103).
fn kind_for_status(status: u32) -> ErrorKind {
    if config_fix(status).is_some() {
        return ErrorKind::Config;
    }
    match status {
        // 1 throttled; 10 too many existing binds (back off and retry).
        1 | 10 => ErrorKind::RateLimited,
        // 5 internal error; 13 communication failed.
        5 | 13 => ErrorKind::Transient,
        // The account, for now: 8 account barred; 9 quota (no credit); 29
        // non-whitelisted destination (demo accounts); 102 invalid campaign
        // short code.
        8 | 9 | 29 | 102 => ErrorKind::Provider,
        // Recipient: 6 unroutable (unrecognised prefix); 7 number barred;
        // 34 invalid or missing msisdn; 101 opted out; 103 invalid msisdn.
        6 | 7 | 34 | 101 | 103 => ErrorKind::Recipient,
        // Request or content: 2 missing parameters; 3 invalid parameters;
        // 12 message too long; 16 invalid TTL; 20 invalid message class; 23
        // bad callback; others not listed.
        _ => ErrorKind::Content,
    }
}

/// For a status that needs a person: what is wrong and the fix.
fn config_fix(status: u32) -> Option<(&'static str, &'static str)> {
    Some(match status {
        // 4 invalid credentials.
        4 => (
            "credentials refused",
            "check the account's api_key and api_secret",
        ),
        // 14 invalid signature (the account requires signed requests).
        14 => (
            "signature refused",
            "turn off signed requests for this key in the Vonage dashboard (this adapter sends the api_secret)",
        ),
        // 15 sender id not allowed.
        15 => (
            "sender refused",
            "change the account's from to a sender id or number Vonage allows for it",
        ),
        // 11 not enabled for HTTP; 19 facility not allowed.
        11 | 19 => (
            "capability not enabled",
            "ask Vonage to enable the SMS API (HTTP) for this account",
        ),
        _ => return None,
    })
}

/// Classify a Vonage answer that is not an acceptance: a non-zero
/// `messages[].status` in a 200, or a non-200 (gateway trouble, by status;
/// 401/403 → Config).
///
/// | status                   | kind        | scope     |
/// |--------------------------|-------------|-----------|
/// | 1, 10                    | RateLimited | neither   |
/// | 5, 13                    | Transient   | account   |
/// | 4, 14                    | Config (check api_key / api_secret) | account |
/// | 15                       | Config (change from) | account |
/// | 11, 19                   | Config (enable the capability) | account |
/// | 8, 9, 29, 102            | Provider    | account   |
/// | 6, 7, 34, 101, 103       | Recipient   | recipient |
/// | anything else            | Content     | message   |
pub fn classify(status: u16, headers: &HeaderMap, body: &[u8]) -> ProviderError {
    let parsed = serde_json::from_slice::<SmsAnswer>(body).unwrap_or_default();
    let failed = parsed
        .messages
        .iter()
        .find(|m| m.status.as_deref().is_some_and(|s| s != "0"));
    match (status, failed) {
        (200, Some(m)) => {
            let code = m.status.clone().unwrap_or_default();
            let text = m.error_text.as_deref().unwrap_or("rejected");
            if let Some((what, fix)) = code.parse().ok().and_then(config_fix) {
                return http::config_error("vonage", Some(code), what, fix, text, body);
            }
            let kind = code
                .parse()
                .map(kind_for_status)
                .unwrap_or(ErrorKind::Content);
            let e = ProviderError::new(kind, Some(code), format!("vonage: {text}"));
            http::with_hint(e, headers)
        }
        (200, None) => {
            let excerpt = http::body_excerpt(body);
            ProviderError::new(
                ErrorKind::Transient,
                None,
                format!("vonage: answer without a message status: {excerpt}"),
            )
        }
        _ => http::status_error("vonage", status, headers, None, "", body),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rejected(status: &str, text: &str) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "message-count": "1",
            "messages": [{"to": "447700900000", "status": status, "error-text": text}],
        }))
        .unwrap()
    }

    #[test]
    fn statuses_map_to_the_documented_kinds() {
        let cases = [
            (
                "1",
                "Throughput Rate Exceeded - please wait [ 1000 ] and retry",
                ErrorKind::RateLimited,
            ),
            ("2", "Missing to param", ErrorKind::Content),
            ("3", "Invalid to param", ErrorKind::Content),
            ("4", "Bad Credentials", ErrorKind::Config),
            ("5", "Internal Error", ErrorKind::Transient),
            ("6", "Unroutable message - rejected", ErrorKind::Recipient),
            ("7", "Number barred.", ErrorKind::Recipient),
            ("8", "Partner account barred.", ErrorKind::Provider),
            ("9", "Partner quota exceeded.", ErrorKind::Provider),
            ("12", "Message too long", ErrorKind::Content),
            ("15", "Illegal Sender Address - rejected", ErrorKind::Config),
            (
                "29",
                "Non White-listed Destination - rejected",
                ErrorKind::Provider,
            ),
        ];
        for (status, text, kind) in cases {
            let e = classify(200, &HeaderMap::new(), &rejected(status, text));
            assert_eq!(e.kind, kind, "{status}: {e}");
            assert_eq!(e.code.as_deref(), Some(status));
            if kind == ErrorKind::Config {
                assert!(e.message.ends_with(&format!("the provider said: {text}")));
            } else {
                assert_eq!(e.message, format!("vonage: {text}"));
            }
        }
    }

    #[test]
    fn a_gateway_error_is_classified_by_http_status() {
        let e = classify(503, &HeaderMap::new(), b"<html>unavailable</html>");
        assert_eq!(e.kind, ErrorKind::Transient);
        let e = classify(401, &HeaderMap::new(), b"");
        assert_eq!(e.kind, ErrorKind::Config);
    }

    #[test]
    fn bad_credentials_name_the_key_and_secret_as_the_fix() {
        let e = classify(200, &HeaderMap::new(), &rejected("4", "Bad Credentials"));
        assert_eq!(
            e.message,
            "vonage: credentials refused: check the account's api_key and api_secret; the provider said: Bad Credentials"
        );
    }

    #[test]
    fn a_gateway_error_page_keeps_an_excerpt_of_the_body() {
        let e = classify(503, &HeaderMap::new(), b"<html>unavailable</html>");
        assert_eq!(e.message, "vonage: HTTP 503: <html>unavailable</html>");
    }

    #[test]
    fn a_multipart_message_is_accepted_only_if_every_part_is() {
        let body = br#"{"message-count":"2","messages":[
            {"to":"447700900000","message-id":"0A0000000123ABCD1","status":"0"},
            {"to":"447700900000","status":"1","error-text":"Throttled"}]}"#;
        let a = Answer {
            status: 200,
            headers: HeaderMap::new(),
            body: body.to_vec(),
        };
        assert_eq!(outcome(&a).unwrap_err().kind, ErrorKind::RateLimited);
    }
}
