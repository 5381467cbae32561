//! SendGrid v3 Mail Send: `POST /v3/mail/send` with a Bearer API key; 202 and
//! an `X-Message-Id` header mean accepted.
//!
//! Wire format from `tsg_mail_v3.json` (twilio/sendgrid-oai): `personalizations`
//! and `from` are required, `content` lists `text/plain` before `text/html`,
//! `custom_args` ride on the personalization so event webhooks carry them.

use super::field::{MAX_DISPLAY_NAME, SettingsError, email, header_text, opt_header_text, opt_url};
use super::http::{self, Answer};
use super::scrub::Scrubber;
use super::{
    EmailParts, ErrorKind, Provider, ProviderContext, ProviderError, ProviderKind, Receipt,
    email_parts,
};
use crate::job::Job;
use async_trait::async_trait;
use reqwest::header::HeaderMap;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

// Settings: one account of this provider, as a tenant stores it.

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SendgridSettings {
    #[serde(skip_serializing)]
    pub api_key: SecretString,
    pub from_email: String,
    #[serde(default)]
    pub from_name: Option<String>,
    /// Optional dynamic template id (`d-…`).
    #[serde(default)]
    pub template_id: Option<String>,
    /// Categories attached to every message.
    #[serde(default)]
    pub categories: Vec<String>,
    /// API base, `https://api.sendgrid.com` by default (EU: `https://api.eu.sendgrid.com`).
    #[serde(default)]
    pub base_url: Option<String>,
    /// The Signed Event Webhook's verification key (base64 public key, as
    /// SendGrid shows it under Mail Settings > Event Webhook). A public key,
    /// not a secret; without it this account's events are refused.
    #[serde(default)]
    pub webhook_verification_key: Option<String>,
}

impl SendgridSettings {
    /// The fields that hold secrets, in the order [`Self::secrets`] gives them.
    pub const SECRET_FIELDS: &'static [&'static str] = &["api_key"];

    /// Every secret field, set or not.
    pub fn secrets(&self) -> Vec<(&'static str, Option<&SecretString>)> {
        vec![("api_key", Some(&self.api_key))]
    }

    /// Check every field; the error names the first bad one.
    pub fn validate(&self) -> Result<(), SettingsError> {
        if !self.api_key.expose_secret().starts_with("SG.") {
            return Err(SettingsError::new(
                "api_key",
                "SendGrid API keys start with `SG.`",
            ));
        }
        email("from_email", &self.from_email)?;
        opt_header_text("from_name", &self.from_name, MAX_DISPLAY_NAME)?;
        // SendGrid's limit for a category.
        for (i, c) in self.categories.iter().enumerate() {
            header_text(&format!("categories[{i}]"), c, 255)?;
        }
        if let Some(k) = &self.webhook_verification_key
            && webhook_verification_key(k).is_none()
        {
            return Err(SettingsError::new(
                "webhook_verification_key",
                "expected the base64 P-256 public key SendGrid shows for the signed event webhook",
            ));
        }
        opt_url("base_url", &self.base_url)
    }
}

const DEFAULT_BASE: &str = "https://api.sendgrid.com";

pub struct Sendgrid {
    http: reqwest::Client,
    net: std::sync::Arc<super::net::NetworkPolicy>,
    endpoint: String,
    api_key: SecretString,
    settings: SendgridSettings,
}

impl Sendgrid {
    pub fn new(s: &SendgridSettings, ctx: &ProviderContext) -> Self {
        let base = http::base_url(s.base_url.as_deref(), DEFAULT_BASE);
        Self {
            http: ctx.http.clone(),
            net: ctx.net.clone(),
            endpoint: format!("{base}/v3/mail/send"),
            api_key: s.api_key.clone(),
            settings: s.clone(),
        }
    }

    /// The Mail Send body for one job.
    pub fn body(&self, job: &Job) -> Result<Value, ProviderError> {
        let EmailParts {
            subject,
            text,
            html,
        } = email_parts(job, ProviderKind::Sendgrid)?;
        let s = &self.settings;
        let mut personalization = json!({
            "to": [{"email": job.recipient}],
            "custom_args": {"job_id": job.id.as_str(), "tenant_id": job.tenant_id.as_str()},
        });
        let mut from = json!({"email": s.from_email});
        if let Some(name) = &s.from_name {
            from["name"] = json!(name);
        }
        let mut body = json!({"from": from, "subject": subject});
        if let Some(template_id) = &s.template_id {
            body["template_id"] = json!(template_id);
            personalization["dynamic_template_data"] =
                Value::Object(job.metadata.clone().unwrap_or_default());
        } else {
            // SendGrid requires text/plain first when both are present.
            let mut content = Vec::new();
            if let Some(t) = text {
                content.push(json!({"type": "text/plain", "value": t}));
            }
            if let Some(h) = html {
                content.push(json!({"type": "text/html", "value": h}));
            }
            if content.is_empty() {
                return Err(ProviderError::new(
                    ErrorKind::Content,
                    None,
                    "email has no body",
                ));
            }
            body["content"] = Value::Array(content);
        }
        body["personalizations"] = json!([personalization]);
        if !s.categories.is_empty() {
            body["categories"] = json!(s.categories);
        }
        Ok(body)
    }
}

#[async_trait]
impl Provider for Sendgrid {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Sendgrid
    }

    async fn send(&self, job: &Job) -> Result<Receipt, ProviderError> {
        let body = self.body(job)?;
        let request = self
            .http
            .post(&self.endpoint)
            .bearer_auth(self.api_key.expose_secret())
            .json(&body);
        let answer = http::execute("sendgrid", &self.net, request).await?;
        Scrubber::read(answer, outcome, || {
            Scrubber::new()
                .secret(self.api_key.expose_secret())
                .job(job)
        })
    }
}

fn outcome(a: &Answer) -> Result<Receipt, ProviderError> {
    if !a.is_success() {
        return Err(classify(a.status, &a.headers, &a.body));
    }
    let message_id = a
        .headers
        .get("x-message-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    Ok(Receipt { message_id })
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default)]
    errors: Vec<ErrorItem>,
}

#[derive(Deserialize)]
struct ErrorItem {
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    field: Option<String>,
}

/// Classify a SendGrid error answer. SendGrid has no error codes of its own:
/// the HTTP status is the code, refined by the `field` it blames.
///
/// Sources: `tsg_mail_v3.json` responses 400/401/403/404/413/429/500 and the
/// `ErrorResponse` schema; SendGrid's Mail Send errors page (401 for a
/// missing or wrong API key, 403 "The from address does not match a verified
/// Sender Identity" or a key without the Mail Send permission; 429 carries
/// `X-RateLimit-Reset`).
///
/// "Account" rows count against the account's circuit breaker; recipient
/// and message rows do not. SendGrid answers nothing recipient-deferred: it
/// queues and retries greylisted mail itself.
///
/// | status | field / text              | kind        | scope     |
/// |--------|---------------------------|-------------|-----------|
/// | 400    | `personalizations…to…`    | Recipient   | recipient |
/// | 400    | `from…`                   | Config (check from_email) | account |
/// | 400    | `template_id`             | Config (check template_id) | account |
/// | 400    | other                     | Content     | message   |
/// | 401    |                           | Config (check api_key) | account |
/// | 403    | `from…` or "verified"     | Config (verify the Sender Identity) | account |
/// | 403    | other                     | Config (give the key Mail Send) | account |
/// | 404    |                           | Provider    | account   |
/// | 413    |                           | Content     | message   |
/// | 429    |                           | RateLimited (hint from `Retry-After` / `X-RateLimit-Reset`) | neither |
/// | 5xx    |                           | Transient   | account   |
///
/// A body not in the `errors` shape leaves the status as the code and an
/// excerpt of the body as the message.
pub fn classify(status: u16, headers: &HeaderMap, body: &[u8]) -> ProviderError {
    let items = serde_json::from_slice::<ErrorBody>(body)
        .map(|b| b.errors)
        .unwrap_or_default();
    let message = items
        .iter()
        .map(|i| match (&i.field, &i.message) {
            (Some(f), Some(m)) if f != "null" => format!("{f}: {m}"),
            (_, Some(m)) => m.clone(),
            _ => String::new(),
        })
        .filter(|m| !m.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    let field = items
        .iter()
        .find_map(|i| i.field.as_deref())
        .unwrap_or_default();
    let unverified = field.starts_with("from") || message.to_ascii_lowercase().contains("verified");
    let config = match status {
        400 if field.starts_with("from") => {
            Some(("sender refused", "check the account's from_email"))
        }
        400 if field == "template_id" => {
            Some(("template refused", "check the account's template_id"))
        }
        401 => Some(("API key refused (401)", "check the account's api_key")),
        403 if unverified => Some((
            "sender not verified (403)",
            "verify from_email as a Sender Identity (or its domain) in SendGrid or change from_email",
        )),
        403 => Some((
            "API key not permitted (403)",
            "give the account's api_key the Mail Send permission",
        )),
        _ => None,
    };
    if let Some((what, fix)) = config {
        return http::config_error(
            "sendgrid",
            Some(status.to_string()),
            what,
            fix,
            &message,
            body,
        );
    }
    let e = http::status_error("sendgrid", status, headers, None, &message, body);
    match status {
        400 if field.starts_with("personalizations") && field.contains(".to") => ProviderError {
            kind: ErrorKind::Recipient,
            ..e
        },
        _ => e,
    }
}

/// The account's Event Webhook verification key (base64 DER
/// SubjectPublicKeyInfo, P-256), as SendGrid shows it; `None` if it is not one.
pub fn webhook_verification_key(b64: &str) -> Option<p256::ecdsa::VerifyingKey> {
    use base64::Engine;
    use p256::pkcs8::DecodePublicKey;
    let der = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()?;
    p256::ecdsa::VerifyingKey::from_public_key_der(&der).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;
    use std::time::Duration;

    fn errors(field: &str, message: &str) -> Vec<u8> {
        serde_json::to_vec(&json!({"errors": [{"message": message, "field": field, "help": null}]}))
            .unwrap()
    }

    #[test]
    fn error_answers_map_to_the_documented_kinds() {
        let cases: &[(u16, Vec<u8>, ErrorKind)] = &[
            (
                400,
                errors(
                    "personalizations.0.to.0.email",
                    "Does not contain a valid address.",
                ),
                ErrorKind::Recipient,
            ),
            (
                400,
                errors(
                    "from.email",
                    "The from email does not contain a valid address.",
                ),
                ErrorKind::Config,
            ),
            (
                400,
                errors("content.0.value", "The content value must be a string"),
                ErrorKind::Content,
            ),
            (
                401,
                errors("null", "authorization required"),
                ErrorKind::Config,
            ),
            (
                403,
                errors(
                    "from",
                    "The from address does not match a verified Sender Identity.",
                ),
                ErrorKind::Config,
            ),
            (403, errors("null", "access forbidden"), ErrorKind::Config),
            (404, errors("null", "not found"), ErrorKind::Provider),
            (413, errors("null", "content too large"), ErrorKind::Content),
            (
                429,
                errors("null", "too many requests"),
                ErrorKind::RateLimited,
            ),
            (
                500,
                br#"{"errors":[{"message":"internal server error"}]}"#.to_vec(),
                ErrorKind::Transient,
            ),
            (
                502,
                b"<html>bad gateway</html>".to_vec(),
                ErrorKind::Transient,
            ),
        ];
        for (status, body, kind) in cases {
            let e = classify(*status, &HeaderMap::new(), body);
            assert_eq!(e.kind, *kind, "{status} {e}");
            assert_eq!(e.code.as_deref(), Some(status.to_string().as_str()));
        }
    }

    #[test]
    fn the_message_names_the_field_sendgrid_blames() {
        let e = classify(
            400,
            &HeaderMap::new(),
            &errors("subject", "The subject is required."),
        );
        assert_eq!(e.message, "sendgrid: subject: The subject is required.");
    }

    #[test]
    fn a_429_honours_retry_after_and_clamps_it() {
        let mut h = HeaderMap::new();
        h.insert("retry-after", HeaderValue::from_static("2"));
        let e = classify(429, &h, b"");
        assert_eq!(e.retry_after, Some(Duration::from_secs(2)));

        h.insert("retry-after", HeaderValue::from_static("999999"));
        let e = classify(429, &h, b"");
        assert_eq!(e.retry_after, Some(super::super::error::MAX_RETRY_AFTER));
    }

    #[test]
    fn a_401_names_the_api_key_as_the_fix_and_keeps_sendgrids_words() {
        let e = classify(
            401,
            &HeaderMap::new(),
            &errors("null", "authorization required"),
        );
        assert_eq!(e.kind, ErrorKind::Config);
        assert_eq!(
            e.message,
            "sendgrid: API key refused (401): check the account's api_key; the provider said: authorization required"
        );
    }

    #[test]
    fn a_403_for_an_unverified_sender_names_the_sender_identity_as_the_fix() {
        let e = classify(
            403,
            &HeaderMap::new(),
            &errors(
                "from",
                "The from address does not match a verified Sender Identity.",
            ),
        );
        assert_eq!(e.kind, ErrorKind::Config);
        assert!(
            e.message
                .starts_with("sendgrid: sender not verified (403): verify from_email"),
            "{e}"
        );
    }

    #[test]
    fn a_403_without_a_sender_complaint_names_the_mail_send_permission() {
        let e = classify(403, &HeaderMap::new(), &errors("null", "access forbidden"));
        assert!(e.message.contains("Mail Send permission"), "{e}");
    }

    #[test]
    fn an_invalid_template_id_is_config() {
        let e = classify(
            400,
            &HeaderMap::new(),
            &errors("template_id", "The template_id must be a valid GUID"),
        );
        assert_eq!(e.kind, ErrorKind::Config);
        assert!(e.message.contains("check the account's template_id"), "{e}");
    }

    #[test]
    fn an_html_error_page_keeps_the_status_and_an_excerpt_of_the_body() {
        let e = classify(
            502,
            &HeaderMap::new(),
            b"<html>\n  <body>Bad   Gateway</body>\n</html>",
        );
        assert_eq!(e.code.as_deref(), Some("502"));
        assert_eq!(
            e.message,
            "sendgrid: HTTP 502: <html> <body>Bad Gateway</body> </html>"
        );
    }
}
