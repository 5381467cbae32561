//! Meta WhatsApp Cloud API: `POST /{version}/{phone_number_id}/messages` with
//! a Bearer token, JSON text or template messages. 200 and `messages[0].id`
//! (a `wamid.…`) mean accepted.
//!
//! Wire format from `business-messaging-api_v23.0.yaml` (facebook/openapi):
//! operation `sendMessage`, examples "Send Text Message" and "Send Message
//! Template Text"; errors `{"error": {"message", "type", "code",
//! "error_subcode", "fbtrace_id", "is_transient"}}`.

use super::http::{self, Answer};
use super::settings::MetaSettings;
use super::{ErrorKind, Provider, ProviderContext, ProviderError, ProviderKind, Receipt};
use crate::job::{Content, Job};
use async_trait::async_trait;
use reqwest::header::HeaderMap;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{Value, json};

const DEFAULT_BASE: &str = "https://graph.facebook.com";
const DEFAULT_VERSION: &str = "v23.0";

pub struct Meta {
    http: reqwest::Client,
    endpoint: String,
    access_token: SecretString,
}

impl Meta {
    pub fn new(s: &MetaSettings, ctx: &ProviderContext) -> Self {
        let base = http::base_url(s.base_url.as_deref(), DEFAULT_BASE);
        let version = s.api_version.as_deref().unwrap_or(DEFAULT_VERSION);
        Self {
            http: ctx.http.clone(),
            endpoint: format!("{base}/{version}/{}/messages", s.phone_number_id),
            access_token: s.access_token.clone(),
        }
    }

    /// The message object for one job.
    pub fn body(&self, job: &Job) -> Result<Value, ProviderError> {
        let to = job.recipient.trim_start_matches('+');
        let mut body = json!({
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": to,
        });
        match &job.content {
            Content::Text { text } => {
                body["type"] = json!("text");
                body["text"] = json!({"body": text});
            }
            Content::Template { template } => {
                let mut t = json!({"name": template.name, "language": {"code": template.language}});
                if !template.parameters.is_empty() {
                    let params: Vec<Value> = template
                        .parameters
                        .iter()
                        .map(|p| json!({"type": "text", "text": p}))
                        .collect();
                    t["components"] = json!([{"type": "body", "parameters": params}]);
                }
                body["type"] = json!("template");
                body["template"] = t;
            }
            Content::Email { .. } => {
                return Err(ProviderError::new(
                    ErrorKind::Content,
                    None,
                    "meta carries whatsapp only",
                ));
            }
        }
        Ok(body)
    }
}

#[async_trait]
impl Provider for Meta {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Meta
    }

    async fn send(&self, job: &Job) -> Result<Receipt, ProviderError> {
        let body = self.body(job)?;
        let request = self
            .http
            .post(&self.endpoint)
            .bearer_auth(self.access_token.expose_secret())
            .json(&body);
        let answer = http::execute("meta", request).await?;
        outcome(&answer).map_err(|e| http::scrub(e, &[self.access_token.expose_secret()]))
    }
}

fn outcome(a: &Answer) -> Result<Receipt, ProviderError> {
    if !a.is_success() {
        return Err(classify(a.status, &a.headers, &a.body));
    }
    let id = a.json::<Value>().and_then(|v| {
        v.pointer("/messages/0/id")
            .and_then(Value::as_str)
            .map(str::to_owned)
    });
    Ok(Receipt { message_id: id })
}

#[derive(Deserialize, Default)]
struct ErrorBody {
    #[serde(default)]
    error: GraphError,
}

#[derive(Deserialize, Default)]
struct GraphError {
    message: Option<String>,
    code: Option<i64>,
    error_subcode: Option<i64>,
    is_transient: Option<bool>,
    error_data: Option<Value>,
}

/// The kind of a Graph / Cloud API error code, when the code decides it.
///
/// Sources: developers.facebook.com/documentation/business-messaging/whatsapp/
/// support/error-codes (Cloud API error codes: authorization, throttling,
/// integrity, template and messaging errors), cross-checked with the copies
/// at niswey.com/knowledge-base/error-codes-meta and kwiqreply.io.
fn kind_for_code(code: i64) -> Option<ErrorKind> {
    Some(match code {
        // 4 app call rate; 80007 WABA rate limit; 130429 Cloud API throughput;
        // 131056 too many messages to the same recipient (pair rate limit).
        4 | 80007 | 130429 | 131056 => ErrorKind::RateLimited,
        // 1 API unknown; 2 API service (downtime/overload); 131000 something
        // went wrong; 131016 service unavailable; 133004 server unavailable.
        1 | 2 | 131000 | 131016 | 133004 => ErrorKind::Transient,
        // Credentials and account: 0 AuthException; 3 capability; 10 and
        // 200–299 permission; 190 token expired; 33 phone number deleted;
        // 368 blocked for policy violations; 130497 country restricted;
        // 131005 access denied; 131031 account locked; 131037 display name
        // not approved; 131042 payment issue; 131045 certificate/registration;
        // 131048 spam rate limit (sender quality); 133010 number not registered.
        0
        | 3
        | 10
        | 190
        | 200..=299
        | 33
        | 368
        | 130497
        | 131005
        | 131031
        | 131037
        | 131042
        | 131045
        | 131048
        | 133010 => ErrorKind::Provider,
        // Recipient: 131021 recipient is the sender; 131026 undeliverable;
        // 131047 re-engagement (outside the 24-hour window); 131050 the user
        // stopped marketing messages.
        131021 | 131026 | 131047 | 131050 => ErrorKind::Recipient,
        // Content: 100 invalid parameter; 131008 required parameter missing;
        // 131009 parameter value invalid; 131051 unsupported type; 131052/
        // 131053 media; 132000 param count mismatch; 132001 template missing;
        // 132005 hydrated text too long; 132007 format policy; 132012 param
        // format; 132015 template paused; 132016 template disabled.
        100 | 131008 | 131009 | 131051 | 131052 | 131053 | 132000 | 132001 | 132005 | 132007
        | 132012 | 132015 | 132016 => ErrorKind::Content,
        _ => return None,
    })
}

/// Classify a Graph API error answer by `error.code`, then `is_transient`,
/// then the HTTP status. The code is Meta's `code`; the message keeps Meta's
/// text, details and subcode.
pub fn classify(status: u16, headers: &HeaderMap, body: &[u8]) -> ProviderError {
    let g = serde_json::from_slice::<ErrorBody>(body)
        .unwrap_or_default()
        .error;
    let mut message = g.message.unwrap_or_default();
    if let Some(details) = g
        .error_data
        .as_ref()
        .and_then(|d| d.get("details"))
        .and_then(Value::as_str)
    {
        message = format!("{message} ({details})");
    }
    if let Some(sub) = g.error_subcode {
        message = format!("{message} [subcode {sub}]");
    }
    let kind = g.code.and_then(kind_for_code).or_else(|| {
        g.is_transient
            .unwrap_or(false)
            .then_some(ErrorKind::Transient)
    });
    let e = http::status_error(
        "meta",
        status,
        headers,
        g.code.map(|c| c.to_string()),
        &message,
    );
    match kind {
        Some(kind) => http::with_hint(ProviderError { kind, ..e }, headers),
        None => e,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;
    use std::time::Duration;

    fn error(code: i64, message: &str) -> Vec<u8> {
        serde_json::to_vec(&json!({"error": {
            "message": message, "type": "OAuthException", "code": code,
            "error_data": {"messaging_product": "whatsapp", "details": "details here"},
            "fbtrace_id": "AXsgnV2Cm3ZMGF3dF_cfYIn",
        }}))
        .unwrap()
    }

    #[test]
    fn error_codes_map_to_the_documented_kinds() {
        let cases = [
            (
                400,
                130429,
                "(#130429) Rate limit hit",
                ErrorKind::RateLimited,
            ),
            (
                400,
                131056,
                "(#131056) (Business Account, Consumer Account) pair rate limit hit",
                ErrorKind::RateLimited,
            ),
            (
                400,
                80007,
                "(#80007) Rate limit issues",
                ErrorKind::RateLimited,
            ),
            (
                429,
                4,
                "(#4) Application request limit reached",
                ErrorKind::RateLimited,
            ),
            (
                401,
                190,
                "Error validating access token: Session has expired",
                ErrorKind::Provider,
            ),
            (
                403,
                10,
                "(#10) Application does not have permission for this action",
                ErrorKind::Provider,
            ),
            (403, 200, "(#200) Permissions error", ErrorKind::Provider),
            (
                400,
                131031,
                "(#131031) Business Account locked",
                ErrorKind::Provider,
            ),
            (
                400,
                131026,
                "(#131026) Message Undeliverable",
                ErrorKind::Recipient,
            ),
            (
                400,
                131047,
                "(#131047) Re-engagement message",
                ErrorKind::Recipient,
            ),
            (
                400,
                131051,
                "(#131051) Unsupported message type",
                ErrorKind::Content,
            ),
            (
                400,
                132000,
                "(#132000) Number of parameters does not match the expected number of params",
                ErrorKind::Content,
            ),
            (
                404,
                132001,
                "(#132001) Template name does not exist in the translation",
                ErrorKind::Content,
            ),
            (400, 100, "(#100) Invalid parameter", ErrorKind::Content),
            (
                500,
                131000,
                "(#131000) Something went wrong",
                ErrorKind::Transient,
            ),
            (500, 999999, "unknown", ErrorKind::Transient),
        ];
        for (status, code, message, kind) in cases {
            let e = classify(status, &HeaderMap::new(), &error(code, message));
            assert_eq!(e.kind, kind, "{code}: {e}");
            assert_eq!(e.code, Some(code.to_string()));
        }
    }

    #[test]
    fn the_message_keeps_details_and_subcode() {
        let body = br#"{"error":{"message":"(#130429) Rate limit hit","type":"OAuthException","code":130429,"error_data":{"messaging_product":"whatsapp","details":"Message failed to send because there were too many messages sent from this phone number in a short period of time"},"error_subcode":2494055,"fbtrace_id":"Az8or2yhqkZfEZ-_4Qn_Bam"}}"#;
        let e = classify(400, &HeaderMap::new(), body);
        assert!(
            e.message
                .starts_with("meta: (#130429) Rate limit hit (Message failed")
        );
        assert!(e.message.ends_with("[subcode 2494055]"));
    }

    #[test]
    fn an_unknown_code_marked_transient_is_retried() {
        let body = br#"{"error":{"message":"hiccup","type":"OAuthException","code":12345,"is_transient":true}}"#;
        assert_eq!(
            classify(400, &HeaderMap::new(), body).kind,
            ErrorKind::Transient
        );
    }

    #[test]
    fn rate_limits_honour_retry_after() {
        let mut h = HeaderMap::new();
        h.insert("retry-after", HeaderValue::from_static("2"));
        let e = classify(429, &h, &error(130429, "(#130429) Rate limit hit"));
        assert_eq!(e.retry_after, Some(Duration::from_secs(2)));
    }
}
