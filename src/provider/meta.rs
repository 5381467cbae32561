//! Meta WhatsApp Cloud API: `POST /{version}/{phone_number_id}/messages` with
//! a Bearer token, JSON text or template messages. 200 and `messages[0].id`
//! (a `wamid.…`) mean accepted.
//!
//! Wire format from `business-messaging-api_v23.0.yaml` (facebook/openapi):
//! operation `sendMessage`, examples "Send Text Message" and "Send Message
//! Template Text"; errors `{"error": {"message", "type", "code",
//! "error_subcode", "fbtrace_id", "is_transient"}}`.

use super::field::{SettingsError, non_empty, opt_url};
use super::http::{self, Answer};
use super::scrub::Scrubber;
use super::{ErrorKind, Provider, ProviderContext, ProviderError, ProviderKind, Receipt};
use crate::job::{Content, Job};
use async_trait::async_trait;
use reqwest::header::HeaderMap;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

// Settings: one account of this provider, as a tenant stores it.

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MetaSettings {
    #[serde(skip_serializing)]
    pub access_token: SecretString,
    pub phone_number_id: String,
    /// Graph API version, `v23.0` by default.
    #[serde(default)]
    pub api_version: Option<String>,
    /// `https://graph.facebook.com` by default.
    #[serde(default)]
    pub base_url: Option<String>,
    /// The Meta app's secret: webhooks are signed with it
    /// (`X-Hub-Signature-256`). Without it this account's webhooks are refused.
    #[serde(default)]
    #[serde(skip_serializing)]
    pub app_secret: Option<SecretString>,
    /// The verify token entered in the app's webhook subscription; the
    /// subscription `GET` is answered only when it matches.
    #[serde(default)]
    #[serde(skip_serializing)]
    pub webhook_verify_token: Option<SecretString>,
}

impl MetaSettings {
    /// The fields that hold secrets, in the order [`Self::secrets`] gives them.
    pub const SECRET_FIELDS: &'static [&'static str] =
        &["access_token", "app_secret", "webhook_verify_token"];

    /// Every secret field, set or not.
    pub fn secrets(&self) -> Vec<(&'static str, Option<&SecretString>)> {
        vec![
            ("access_token", Some(&self.access_token)),
            ("app_secret", self.app_secret.as_ref()),
            ("webhook_verify_token", self.webhook_verify_token.as_ref()),
        ]
    }

    /// Check every field; the error names the first bad one.
    pub fn validate(&self) -> Result<(), SettingsError> {
        non_empty("access_token", self.access_token.expose_secret())?;
        if self.phone_number_id.is_empty()
            || !self.phone_number_id.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(SettingsError::new(
                "phone_number_id",
                "expected the numeric phone-number id from Meta",
            ));
        }
        if let Some(v) = &self.api_version {
            let ok = v.strip_prefix('v').is_some_and(|n| {
                !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit() || b == b'.')
            });
            if !ok {
                return Err(SettingsError::new(
                    "api_version",
                    "expected a Graph API version such as `v23.0`",
                ));
            }
        }
        opt_url("base_url", &self.base_url)
    }
}

const DEFAULT_BASE: &str = "https://graph.facebook.com";
const DEFAULT_VERSION: &str = "v23.0";

pub struct Meta {
    http: reqwest::Client,
    net: std::sync::Arc<super::net::NetworkPolicy>,
    endpoint: String,
    access_token: SecretString,
}

impl Meta {
    pub fn new(s: &MetaSettings, ctx: &ProviderContext) -> Self {
        let base = http::base_url(s.base_url.as_deref(), DEFAULT_BASE);
        let version = s.api_version.as_deref().unwrap_or(DEFAULT_VERSION);
        Self {
            http: ctx.http.clone(),
            net: ctx.net.clone(),
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
                // `LanguageObject` requires `policy` ("deterministic", its only value)
                // beside `code` in the business messaging spec.
                let mut t = json!({
                    "name": template.name,
                    "language": {"code": template.language, "policy": "deterministic"},
                });
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
        let answer = http::execute("meta", &self.net, request).await?;
        Scrubber::read(answer, outcome, || {
            Scrubber::new()
                .secret(self.access_token.expose_secret())
                .job(job)
        })
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

/// The kind of a Graph / Cloud API error code, when the code decides it
/// (codes that need a person are in [`config_fix`]).
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
        // The account, for now: 368 blocked for policy violations; 130497
        // country restricted; 131031 account locked; 131048 spam rate limit
        // (sender quality).
        368 | 130497 | 131031 | 131048 => ErrorKind::Provider,
        // 131049 Meta chose not to deliver (per-user marketing message
        // limit, "healthy ecosystem engagement"): this user, later.
        131049 => ErrorKind::RecipientDeferred,
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

/// For an error that needs a person: what is wrong and the fix.
fn config_fix(
    code: i64,
    subcode: Option<i64>,
    message: &str,
) -> Option<(&'static str, &'static str)> {
    let permission = message.to_ascii_lowercase().contains("permission");
    Some(match code {
        // 0 AuthException; 190 access token invalid or expired.
        0 | 190 => (
            "access token refused",
            "renew the account's access_token (a system user token does not expire)",
        ),
        // 3 capability; 10 and 200–299 permission; 131005 access denied.
        3 | 10 | 200..=299 | 131005 => (
            "permission denied",
            "give the access token whatsapp_business_messaging on this WhatsApp Business Account",
        ),
        // 100 with a permission message, or subcode 33 (the object does not
        // exist or the token may not see it): a wrong phone_number_id or a
        // token without access to it.
        100 if permission || subcode == Some(33) => (
            "phone number not accessible",
            "check the account's phone_number_id and that the access_token has access to it",
        ),
        // 33 the business phone number was deleted.
        33 => (
            "phone number deleted",
            "check the account's phone_number_id",
        ),
        // 131045 certificate / registration; 133010 number not registered.
        131045 | 133010 => (
            "phone number not registered",
            "register the phone number with the Cloud API",
        ),
        // 131037 display name not approved.
        131037 => (
            "display name not approved",
            "get the phone number's display name approved in WhatsApp Manager",
        ),
        // 131042 eligibility: payment issue.
        131042 => (
            "payment issue",
            "fix the WhatsApp Business Account's payment method",
        ),
        _ => return None,
    })
}

/// Classify a Graph API error answer by `error.code`, then `is_transient`,
/// then the HTTP status (401/403 → Config). The code is Meta's `code`; the
/// message keeps Meta's text, details and subcode. A body without
/// `error.message` leaves an excerpt of the body as the message (and the
/// status as the code when there is no `error.code`).
///
/// | code                                       | kind        | scope     |
/// |--------------------------------------------|-------------|-----------|
/// | 4, 80007, 130429, 131056                   | RateLimited | neither   |
/// | 1, 2, 131000, 131016, 133004; unknown with `is_transient` | Transient | account |
/// | 0, 190                                     | Config (renew the token) | account |
/// | 3, 10, 200–299, 131005; 100 mentioning a permission or subcode 33 | Config (permissions / phone_number_id) | account |
/// | 33, 131037, 131042, 131045, 133010         | Config (the phone number, its name, payment) | account |
/// | 368, 130497, 131031, 131048                | Provider    | account   |
/// | 131049 (per-user marketing limit)          | RecipientDeferred | recipient |
/// | 131021, 131026, 131047, 131050             | Recipient   | recipient |
/// | 100, 131008, 131009, 131051–131053, 132000, 132001, 132005, 132007, 132012, 132015, 132016 | Content | message |
/// | anything else                              | by HTTP status | |
pub fn classify(status: u16, headers: &HeaderMap, body: &[u8]) -> ProviderError {
    let g = serde_json::from_slice::<ErrorBody>(body)
        .unwrap_or_default()
        .error;
    let mut message = g.message.clone().unwrap_or_default();
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
    let message = if g.message.is_none() {
        // Not the documented shape: keep what the body said.
        let excerpt = http::body_excerpt(body);
        match (excerpt.is_empty(), message.is_empty()) {
            (true, _) => message,
            (false, true) => format!("HTTP {status}: {excerpt}"),
            (false, false) => format!("HTTP {status}: {excerpt} {message}"),
        }
    } else {
        message
    };
    let code = g.code.map(|c| c.to_string());
    if let Some((what, fix)) = g
        .code
        .and_then(|c| config_fix(c, g.error_subcode, &message))
    {
        return http::config_error("meta", code, what, fix, &message, body);
    }
    let kind = g
        .code
        .and_then(kind_for_code)
        .or_else(|| {
            g.is_transient
                .unwrap_or(false)
                .then_some(ErrorKind::Transient)
        })
        .unwrap_or_else(|| http::kind_for_status(status));
    http::answer_error("meta", kind, status, headers, code, &message, body)
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
                ErrorKind::Config,
            ),
            (
                403,
                10,
                "(#10) Application does not have permission for this action",
                ErrorKind::Config,
            ),
            (403, 200, "(#200) Permissions error", ErrorKind::Config),
            (400, 100, "(#100) Missing permission", ErrorKind::Config),
            (
                400,
                131049,
                "(#131049) This message was not delivered to maintain healthy ecosystem engagement.",
                ErrorKind::RecipientDeferred,
            ),
            (
                400,
                131048,
                "(#131048) Spam rate limit hit",
                ErrorKind::Provider,
            ),
            (
                400,
                133010,
                "(#133010) Phone number Not Registered",
                ErrorKind::Config,
            ),
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
    fn an_expired_token_names_renewing_it_as_the_fix() {
        let e = classify(401, &HeaderMap::new(), &error(190, "Session has expired"));
        assert!(
            e.message
                .starts_with("meta: access token refused: renew the account's access_token"),
            "{e}"
        );
    }

    #[test]
    fn an_invalid_parameter_with_subcode_33_is_config_naming_the_phone_number_id() {
        let body = br#"{"error":{"message":"Unsupported post request. Object with ID '1' does not exist, cannot be loaded due to missing permissions, or does not support this operation.","type":"GraphMethodException","code":100,"error_subcode":33}}"#;
        let e = classify(400, &HeaderMap::new(), body);
        assert_eq!(e.kind, ErrorKind::Config);
        assert!(
            e.message.contains("check the account's phone_number_id"),
            "{e}"
        );
    }

    #[test]
    fn an_invalid_parameter_without_a_permission_hint_stays_content() {
        let e = classify(
            400,
            &HeaderMap::new(),
            &error(100, "(#100) Invalid parameter"),
        );
        assert_eq!(e.kind, ErrorKind::Content);
    }

    #[test]
    fn a_422_without_error_message_keeps_the_status_and_an_excerpt() {
        let e = classify(
            422,
            &HeaderMap::new(),
            b"{\"detail\": \"unprocessable\x07 entity\"}",
        );
        assert_eq!(e.kind, ErrorKind::Content);
        assert_eq!(e.code.as_deref(), Some("422"));
        assert_eq!(
            e.message,
            r#"meta: HTTP 422: {"detail": "unprocessable entity"}"#
        );
    }

    #[test]
    fn a_template_carries_the_deterministic_language_policy() {
        let m = Meta::new(
            &serde_json::from_value(json!({"access_token": "t", "phone_number_id": "1"})).unwrap(),
            &crate::provider::ProviderContext::new(
                Duration::from_secs(1),
                Duration::from_secs(1),
                None,
            ),
        );
        let job = Job::decode(br#"{"job_id":"j","tenant_id":"t","channel":"whatsapp","recipient":"+14155550111","content":{"template":{"name":"reminder","language":"en"}}}"#).unwrap();
        let body = m.body(&job).unwrap();
        assert_eq!(
            body["template"]["language"],
            json!({"code": "en", "policy": "deterministic"})
        );
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
