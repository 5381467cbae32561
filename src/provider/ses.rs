//! Amazon SES v2 `SendEmail`: `POST /v2/email/outbound-emails`, JSON, signed
//! with SigV4 (service `ses`) by the `aws-sigv4` crate. 200 and a `MessageId`
//! mean accepted.

use super::field::{
    MAX_DISPLAY_NAME, SettingsError, email, is_aws_region, non_empty, opt_header_text, opt_url,
};
use super::http::{self, Answer};
use super::scrub::Scrubber;
use super::{
    EmailParts, ErrorKind, Provider, ProviderContext, ProviderError, ProviderKind, Receipt,
    email_parts,
};
use crate::job::Job;
use async_trait::async_trait;
use aws_credential_types::Credentials;
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use base64::Engine;
use reqwest::header::HeaderMap;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::time::SystemTime;

// Settings: one account of this provider, as a tenant stores it.

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SesSettings {
    pub region: String,
    pub access_key_id: String,
    #[serde(skip_serializing)]
    pub secret_access_key: SecretString,
    pub from_email: String,
    #[serde(default)]
    pub from_name: Option<String>,
    #[serde(default)]
    pub configuration_set: Option<String>,
    /// SNS topics (ARNs) this account's SES notifications are published to;
    /// a notification from any other topic is refused for this tenant.
    #[serde(default)]
    pub sns_topic_arns: Vec<String>,
    /// Endpoint, `https://email.{region}.amazonaws.com` by default.
    #[serde(default)]
    pub base_url: Option<String>,
}

impl SesSettings {
    /// The fields that hold secrets, in the order [`Self::secrets`] gives them.
    pub const SECRET_FIELDS: &'static [&'static str] = &["secret_access_key"];

    /// Every secret field, set or not.
    pub fn secrets(&self) -> Vec<(&'static str, Option<&SecretString>)> {
        vec![("secret_access_key", Some(&self.secret_access_key))]
    }

    /// Check every field; the error names the first bad one.
    pub fn validate(&self) -> Result<(), SettingsError> {
        if !is_aws_region(&self.region) {
            return Err(SettingsError::new(
                "region",
                "expected an AWS region such as `eu-west-1`",
            ));
        }
        if self.access_key_id.len() < 16
            || !self
                .access_key_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric())
        {
            return Err(SettingsError::new(
                "access_key_id",
                "expected an AWS access key id such as `AKIA…`",
            ));
        }
        non_empty("secret_access_key", self.secret_access_key.expose_secret())?;
        email("from_email", &self.from_email)?;
        opt_header_text("from_name", &self.from_name, MAX_DISPLAY_NAME)?;
        // SES's rule for configuration set names.
        if let Some(set) = &self.configuration_set
            && (set.is_empty()
                || set.len() > 64
                || !set
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'))
        {
            return Err(SettingsError::new(
                "configuration_set",
                "expected 1 to 64 letters, digits, `_` or `-`",
            ));
        }
        opt_url("base_url", &self.base_url)
    }
}

pub struct Ses {
    http: reqwest::Client,
    net: std::sync::Arc<super::net::NetworkPolicy>,
    endpoint: String,
    region: String,
    /// Its `Debug` redacts the secret key.
    credentials: Credentials,
    from: String,
    configuration_set: Option<String>,
}

impl Ses {
    pub fn new(s: &SesSettings, ctx: &ProviderContext) -> Self {
        let default = format!("https://email.{}.amazonaws.com", s.region);
        let base = http::base_url(s.base_url.as_deref(), &default);
        Self {
            http: ctx.http.clone(),
            net: ctx.net.clone(),
            endpoint: format!("{base}/v2/email/outbound-emails"),
            region: s.region.clone(),
            credentials: Credentials::new(
                &s.access_key_id,
                s.secret_access_key.expose_secret(),
                None,
                None,
                "outreach-provider-settings",
            ),
            from: mailbox(s.from_name.as_deref(), &s.from_email),
            configuration_set: s.configuration_set.clone(),
        }
    }

    /// The `SendEmail` body for one job.
    pub fn body(&self, job: &Job) -> Result<Value, ProviderError> {
        let EmailParts {
            subject,
            text,
            html,
        } = email_parts(job, ProviderKind::Ses)?;
        let mut parts = serde_json::Map::new();
        if let Some(t) = text {
            parts.insert("Text".into(), json!({"Data": t, "Charset": "UTF-8"}));
        }
        if let Some(h) = html {
            parts.insert("Html".into(), json!({"Data": h, "Charset": "UTF-8"}));
        }
        if parts.is_empty() {
            return Err(ProviderError::new(
                ErrorKind::Content,
                None,
                "email has no body",
            ));
        }
        let mut body = json!({
            "FromEmailAddress": self.from,
            "Destination": {"ToAddresses": [job.recipient]},
            "Content": {"Simple": {
                "Subject": {"Data": subject, "Charset": "UTF-8"},
                "Body": parts,
            }},
        });
        if let Some(set) = &self.configuration_set {
            body["ConfigurationSetName"] = json!(set);
        }
        // Tag values allow only A-Z a-z 0-9 _ - (SES MessageTag); ids with
        // other characters are left untagged rather than altered.
        let tags: Vec<Value> = [
            ("job_id", job.id.as_str()),
            ("tenant_id", job.tenant_id.as_str()),
        ]
        .into_iter()
        .filter(|(_, v)| {
            v.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-".contains(&b))
        })
        .map(|(k, v)| json!({"Name": k, "Value": v}))
        .collect();
        if !tags.is_empty() {
            body["EmailTags"] = Value::Array(tags);
        }
        Ok(body)
    }

    /// SigV4 headers (`authorization`, `x-amz-date`) for this body at `now`.
    fn signature(
        &self,
        body: &[u8],
        now: SystemTime,
    ) -> Result<Vec<(String, String)>, ProviderError> {
        let failed = |e: &dyn std::fmt::Display| {
            ProviderError::new(ErrorKind::Config, None, format!("ses: signing failed: {e}"))
        };
        let identity: Identity = self.credentials.clone().into();
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.region)
            .name("ses")
            .time(now)
            .settings(SigningSettings::default())
            .build()
            .map_err(|e| failed(&e))?
            .into();
        let headers = [("content-type", "application/json")];
        let request = SignableRequest::new(
            "POST",
            self.endpoint.as_str(),
            headers.into_iter(),
            SignableBody::Bytes(body),
        )
        .map_err(|e| failed(&e))?;
        let (instructions, _) = sign(request, &params).map_err(|e| failed(&e))?.into_parts();
        Ok(instructions
            .headers()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect())
    }
}

/// `From` with an optional display name; non-ASCII names as an RFC 2047
/// encoded word, which SES requires.
fn mailbox(name: Option<&str>, email: &str) -> String {
    match name {
        None => email.to_owned(),
        Some(n) if n.is_ascii() => {
            format!(
                "\"{}\" <{email}>",
                n.replace('\\', "\\\\").replace('"', "\\\"")
            )
        }
        Some(n) => {
            let b64 = base64::engine::general_purpose::STANDARD.encode(n);
            format!("=?UTF-8?B?{b64}?= <{email}>")
        }
    }
}

#[async_trait]
impl Provider for Ses {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Ses
    }

    async fn send(&self, job: &Job) -> Result<Receipt, ProviderError> {
        let body = serde_json::to_vec(&self.body(job)?)
            .map_err(|e| ProviderError::new(ErrorKind::Content, None, format!("ses: {e}")))?;
        let mut request = self
            .http
            .post(&self.endpoint)
            .header(reqwest::header::CONTENT_TYPE, "application/json");
        for (name, value) in self.signature(&body, SystemTime::now())? {
            request = request.header(name, value);
        }
        let answer = http::execute("ses", &self.net, request.body(body)).await?;
        let secret = self.credentials.secret_access_key();
        Scrubber::read(answer, outcome, || Scrubber::new().secret(secret).job(job))
    }
}

fn outcome(a: &Answer) -> Result<Receipt, ProviderError> {
    #[derive(Deserialize)]
    struct Sent {
        #[serde(rename = "MessageId")]
        message_id: Option<String>,
    }
    if !a.is_success() {
        return Err(classify(a.status, &a.headers, &a.body));
    }
    Ok(Receipt {
        message_id: a.json::<Sent>().and_then(|s| s.message_id),
    })
}

#[derive(Deserialize, Default)]
struct ErrorBody {
    #[serde(rename = "__type", alias = "code", alias = "Code")]
    kind: Option<String>,
    #[serde(alias = "Message")]
    message: Option<String>,
}

impl ErrorBody {
    /// The JSON error body, else the `<Code>` and `<Message>` of an AWS XML
    /// error (`<ErrorResponse><Error>…`, as the edge answers some 403s).
    fn parse(body: &[u8]) -> Self {
        if let Ok(b) = serde_json::from_slice(body) {
            return b;
        }
        let text = String::from_utf8_lossy(body);
        let element = |name: &str| {
            let open = format!("<{name}>");
            let start = text.find(&open)? + open.len();
            let end = start + text[start..].find(&format!("</{name}>"))?;
            let value = text[start..end].trim();
            (!value.is_empty()).then(|| value.to_owned())
        };
        Self {
            kind: element("Code"),
            message: element("Message"),
        }
    }
}

/// `x-amzn-ErrorType: MessageRejected:http://internal.amazon.com/…` or a body
/// `__type` of `com.amazonaws…#MessageRejected` → `MessageRejected`.
fn exception_name(headers: &HeaderMap, body: &ErrorBody) -> Option<String> {
    let raw = headers
        .get("x-amzn-errortype")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| body.kind.clone())?;
    let name = raw.split(':').next().unwrap_or_default();
    let name = name.rsplit('#').next().unwrap_or_default().trim();
    (!name.is_empty()).then(|| name.to_owned())
}

/// Classify an SES v2 error answer by its exception name.
///
/// Sources: SES v2 API reference, SendEmail "Errors" (the exceptions below and
/// their statuses); AWS SDK `SendEmailError` docs (docs.rs aws-sdk-sesv2);
/// SES developer guide "Amazon SES email sending errors" and AWS re:Post
/// "400 Message rejected … Email address is not verified" (an unverified
/// identity, or a sandboxed account, surfaces as `MessageRejected`); AWS
/// common errors (`ThrottlingException`, `AccessDenied…`, signature errors).
///
/// "Account" rows count against the account's circuit breaker; message rows
/// and throttling do not. SES answers nothing recipient-scoped at send time
/// (bounces come later, by notification).
///
/// | exception                                   | kind        | scope   |
/// |---------------------------------------------|-------------|---------|
/// | TooManyRequestsException, LimitExceededException, ThrottlingException, Throttling | RateLimited | neither |
/// | SendingPausedException, AccountSuspendedException | Provider | account |
/// | UnrecognizedClientException, InvalidSignatureException, SignatureDoesNotMatch, IncompleteSignature(Exception), MissingAuthenticationToken(Exception), InvalidClientTokenId, ExpiredToken(Exception) | Config (check the keys) | account |
/// | AccessDenied, AccessDeniedException          | Config (allow ses:SendEmail) | account |
/// | MailFromDomainNotVerifiedException, MessageRejected with "not verified" | Config (verify the identity) | account |
/// | NotFoundException (e.g. the configuration set) | Config (check configuration_set) | account |
/// | MessageRejected, BadRequestException         | Content     | message |
/// | InternalFailure, ServiceUnavailable, RequestTimeout… | Transient | account |
/// | anything else, or a body in neither the JSON nor the XML shape | by HTTP status ([`http::kind_for_status`]; 403 → Config) | |
pub fn classify(status: u16, headers: &HeaderMap, body: &[u8]) -> ProviderError {
    let parsed = ErrorBody::parse(body);
    let name = exception_name(headers, &parsed);
    let message = parsed.message.unwrap_or_default();
    let config = match name.as_deref() {
        Some(
            "UnrecognizedClientException"
            | "InvalidSignatureException"
            | "SignatureDoesNotMatch"
            | "IncompleteSignature"
            | "IncompleteSignatureException"
            | "MissingAuthenticationToken"
            | "MissingAuthenticationTokenException"
            | "InvalidClientTokenId"
            | "ExpiredToken"
            | "ExpiredTokenException",
        ) => Some((
            "credentials refused",
            "check the account's access_key_id, secret_access_key and region",
        )),
        Some("AccessDenied" | "AccessDeniedException") => Some((
            "access denied",
            "allow ses:SendEmail for the access key's IAM identity",
        )),
        Some("MailFromDomainNotVerifiedException") => Some((
            "MAIL FROM domain not verified",
            "verify the custom MAIL FROM domain in SES or change from_email",
        )),
        Some("MessageRejected") if message.to_ascii_lowercase().contains("not verified") => Some((
            "sender not verified",
            "verify the identity in SES or change from_email (in the SES sandbox, recipients must be verified too)",
        )),
        Some("NotFoundException") => Some((
            "not found",
            "check the account's configuration_set exists in this region",
        )),
        _ => None,
    };
    if let Some((what, fix)) = config {
        let code = name.or_else(|| Some(status.to_string()));
        return http::config_error("ses", code, what, fix, &message, body);
    }
    let kind = match name.as_deref() {
        Some(
            "TooManyRequestsException"
            | "LimitExceededException"
            | "ThrottlingException"
            | "Throttling",
        ) => Some(ErrorKind::RateLimited),
        Some("SendingPausedException" | "AccountSuspendedException") => Some(ErrorKind::Provider),
        Some("MessageRejected" | "BadRequestException") => Some(ErrorKind::Content),
        Some(
            "InternalFailure"
            | "InternalServerError"
            | "ServiceUnavailable"
            | "ServiceUnavailableException"
            | "RequestTimeout"
            | "RequestTimeoutException",
        ) => Some(ErrorKind::Transient),
        _ => None,
    };
    let kind = kind.unwrap_or_else(|| http::kind_for_status(status));
    http::answer_error("ses", kind, status, headers, name, &message, body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;
    use std::time::Duration;

    fn answer(status: u16, error_type: &str, message: &str) -> ProviderError {
        let mut h = HeaderMap::new();
        h.insert(
            "x-amzn-errortype",
            HeaderValue::from_str(&format!(
                "{error_type}:http://internal.amazon.com/coral/com.amazon.aws.ses/"
            ))
            .unwrap(),
        );
        classify(
            status,
            &h,
            &serde_json::to_vec(&json!({"message": message})).unwrap(),
        )
    }

    #[test]
    fn exceptions_map_to_the_documented_kinds() {
        let cases = [
            (
                429,
                "TooManyRequestsException",
                "Too many requests",
                ErrorKind::RateLimited,
            ),
            (
                400,
                "LimitExceededException",
                "Maximum sending rate exceeded.",
                ErrorKind::RateLimited,
            ),
            (
                400,
                "SendingPausedException",
                "Sending paused for this account.",
                ErrorKind::Provider,
            ),
            (
                400,
                "AccountSuspendedException",
                "Account suspended.",
                ErrorKind::Provider,
            ),
            (
                400,
                "MailFromDomainNotVerifiedException",
                "MAIL FROM domain not verified.",
                ErrorKind::Config,
            ),
            (
                404,
                "NotFoundException",
                "Configuration set <x> does not exist.",
                ErrorKind::Config,
            ),
            (
                400,
                "MessageRejected",
                "Email address is not verified. The following identities failed the check in region EU-WEST-1: a@b.co",
                ErrorKind::Config,
            ),
            (
                400,
                "MessageRejected",
                "Illegal address",
                ErrorKind::Content,
            ),
            (
                400,
                "BadRequestException",
                "Missing required key 'Destination'",
                ErrorKind::Content,
            ),
            (
                403,
                "InvalidSignatureException",
                "The request signature we calculated does not match",
                ErrorKind::Config,
            ),
            (
                403,
                "UnrecognizedClientException",
                "The security token included in the request is invalid.",
                ErrorKind::Config,
            ),
            (403, "SignatureDoesNotMatch", "", ErrorKind::Config),
            (403, "IncompleteSignatureException", "", ErrorKind::Config),
            (
                403,
                "MissingAuthenticationTokenException",
                "",
                ErrorKind::Config,
            ),
            (403, "InvalidClientTokenId", "", ErrorKind::Config),
            (403, "ExpiredTokenException", "", ErrorKind::Config),
            (403, "AccessDeniedException", "", ErrorKind::Config),
            (403, "AccessDenied", "", ErrorKind::Config),
            (500, "InternalFailure", "", ErrorKind::Transient),
            (503, "SomethingNew", "", ErrorKind::Transient),
        ];
        for (status, name, message, kind) in cases {
            let e = answer(status, name, message);
            assert_eq!(e.kind, kind, "{name}: {e}");
            assert_eq!(e.code.as_deref(), Some(name));
        }
    }

    #[test]
    fn the_exception_name_is_read_from_the_body_when_the_header_is_missing() {
        let body = br#"{"__type":"com.amazonaws.sesv2#SendingPausedException","Message":"paused"}"#;
        let e = classify(400, &HeaderMap::new(), body);
        assert_eq!(e.kind, ErrorKind::Provider);
        assert_eq!(e.code.as_deref(), Some("SendingPausedException"));
        assert_eq!(e.message, "ses: paused");
    }

    #[test]
    fn an_unverified_sender_names_the_identity_as_the_fix() {
        let e = answer(
            400,
            "MessageRejected",
            "Email address is not verified. The following identities failed the check in region EU-WEST-1: a@b.co",
        );
        assert!(
            e.message.starts_with(
                "ses: sender not verified: verify the identity in SES or change from_email"
            ),
            "{e}"
        );
        assert!(e.message.contains("identities failed the check"), "{e}");
    }

    #[test]
    fn a_bad_signature_names_the_keys_as_the_fix() {
        let e = answer(403, "SignatureDoesNotMatch", "signature mismatch");
        assert!(
            e.message
                .contains("check the account's access_key_id, secret_access_key and region"),
            "{e}"
        );
    }

    #[test]
    fn an_xml_403_is_config_with_its_code_and_message() {
        let body = br#"<ErrorResponse xmlns="http://ses.amazonaws.com/doc/2010-12-01/">
  <Error><Type>Sender</Type><Code>SignatureDoesNotMatch</Code>
  <Message>The request signature we calculated does not match the signature you provided.</Message></Error>
  <RequestId>0b8b7ac9-0000-0000-0000-000000000000</RequestId></ErrorResponse>"#;
        let e = classify(403, &HeaderMap::new(), body);
        assert_eq!(e.kind, ErrorKind::Config);
        assert_eq!(e.code.as_deref(), Some("SignatureDoesNotMatch"));
        assert!(e.message.contains("we calculated does not match"), "{e}");
    }

    #[test]
    fn a_403_in_no_known_shape_keeps_the_status_and_an_excerpt_of_the_body() {
        let e = classify(
            403,
            &HeaderMap::new(),
            b"<html><h1>Forbidden</h1>\n\t</html>",
        );
        assert_eq!(e.kind, ErrorKind::Config);
        assert_eq!(e.code.as_deref(), Some("403"));
        assert!(
            e.message
                .ends_with("HTTP 403: <html><h1>Forbidden</h1> </html>"),
            "{e}"
        );
        assert!(e.message.contains("check the account's credentials"), "{e}");
    }

    #[test]
    fn throttling_honours_retry_after() {
        let mut h = HeaderMap::new();
        h.insert(
            "x-amzn-errortype",
            HeaderValue::from_static("TooManyRequestsException"),
        );
        h.insert("retry-after", HeaderValue::from_static("3"));
        let e = classify(429, &h, br#"{"message":"slow down"}"#);
        assert_eq!(e.kind, ErrorKind::RateLimited);
        assert_eq!(e.retry_after, Some(Duration::from_secs(3)));
    }

    #[test]
    fn display_names_are_quoted_or_encoded() {
        assert_eq!(mailbox(None, "a@b.co"), "a@b.co");
        assert_eq!(
            mailbox(Some("Dr \"Who\""), "a@b.co"),
            "\"Dr \\\"Who\\\"\" <a@b.co>"
        );
        assert_eq!(
            mailbox(Some("Zoë"), "a@b.co"),
            "=?UTF-8?B?Wm/Dqw==?= <a@b.co>"
        );
    }
}
