//! Fake providers on 127.0.0.1 (wiremock). Each checks a request the way the
//! real API does (method and path by the mount, then auth, content type and
//! required fields) and answers with the real success or error shape, so a
//! malformed request fails the test with the provider's own complaint.

use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

pub const SENDGRID_KEY: &str = "SG.fake-key.sendgrid-secret-0123456789";
pub const SES_ACCESS_KEY_ID: &str = "AKIAIOSFODNN7EXAMPLE";
pub const SES_SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
pub const SES_REGION: &str = "eu-west-1";
pub const TWILIO_SID: &str = "AC0123456789abcdef0123456789abcdef";
pub const TWILIO_TOKEN: &str = "twilio-auth-token-0123456789abcdef";
pub const META_TOKEN: &str = "EAAG-meta-access-token-0123456789";
pub const META_PHONE_ID: &str = "106540352242922";
pub const VONAGE_KEY: &str = "a1b2c3d4";
pub const VONAGE_SECRET: &str = "vonage-secret-0123456789";

pub const SENDGRID_MESSAGE_ID: &str = "W-7yBAtETnS8HrLuqY5r5g";
pub const SES_MESSAGE_ID: &str = "0102018c5f3c2f1a-3b3a4c1e-4b5d-4c4e-9d7f-1a2b3c4d5e6f-000000";
pub const TWILIO_MESSAGE_SID: &str = "SMaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
pub const META_WAMID: &str = "wamid.HBgLMTY1MDM4Nzk0MzkVAgARGBI3RjE2RkQ2RTg0MzI0MzhBNTQA";
pub const VONAGE_MESSAGE_ID: &str = "0A0000000123ABCD1";

/// A server answering `POST path` with `fake`.
pub async fn serve(p: &str, fake: impl Respond + 'static) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(p))
        .respond_with(fake)
        .mount(&server)
        .await;
    server
}

fn header<'a>(r: &'a Request, name: &str) -> &'a str {
    r.headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

fn form(r: &Request) -> Vec<(String, String)> {
    url::form_urlencoded::parse(&r.body).into_owned().collect()
}

fn field<'a>(f: &'a [(String, String)], name: &str) -> Option<&'a str> {
    f.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

fn is_str(v: &Value, pointer: &str) -> bool {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .is_some_and(|s| !s.is_empty())
}

// ---------------------------------------------------------------- SendGrid

/// `POST /v3/mail/send` as `tsg_mail_v3.json` describes it.
pub struct Sendgrid;

impl Respond for Sendgrid {
    fn respond(&self, r: &Request) -> ResponseTemplate {
        let error = |status: u16, field: Option<&str>, message: &str| {
            ResponseTemplate::new(status).set_body_json(
                json!({"errors": [{"message": message, "field": field, "help": null}]}),
            )
        };
        if header(r, "authorization") != format!("Bearer {SENDGRID_KEY}") {
            return error(401, None, "authorization required");
        }
        if !header(r, "content-type").starts_with("application/json") {
            return error(400, None, "Content-Type should be application/json.");
        }
        let Ok(b) = serde_json::from_slice::<Value>(&r.body) else {
            return error(400, None, "Bad Request");
        };
        if !is_str(&b, "/personalizations/0/to/0/email") {
            return error(
                400,
                Some("personalizations.0.to"),
                "The to array is required.",
            );
        }
        if !is_str(&b, "/from/email") {
            return error(400, Some("from.email"), "The from email is required.");
        }
        let args = b.pointer("/personalizations/0/custom_args");
        if args
            .and_then(Value::as_object)
            .is_some_and(|m| m.values().any(|v| !v.is_string()))
        {
            return error(
                400,
                Some("custom_args"),
                "Custom args values must be strings.",
            );
        }
        if b.get("template_id").is_none() {
            if !is_str(&b, "/subject") {
                return error(400, Some("subject"), "The subject is required.");
            }
            let Some(content) = b
                .get("content")
                .and_then(Value::as_array)
                .filter(|c| !c.is_empty())
            else {
                return error(400, Some("content"), "The content value must be present.");
            };
            let types: Vec<&str> = content.iter().filter_map(|c| c["type"].as_str()).collect();
            if types.contains(&"text/plain") && types[0] != "text/plain" {
                return error(
                    400,
                    Some("content"),
                    "The text/plain content type must be first.",
                );
            }
        }
        ResponseTemplate::new(202).insert_header("x-message-id", SENDGRID_MESSAGE_ID)
    }
}

// ---------------------------------------------------------------- SES

/// `POST /v2/email/outbound-emails`: checks the SigV4 signature by
/// recomputing it, then the `SendEmail` body.
pub struct Ses;

impl Respond for Ses {
    fn respond(&self, r: &Request) -> ResponseTemplate {
        let error = |status: u16, name: &str, message: &str| {
            ResponseTemplate::new(status)
                .insert_header(
                    "x-amzn-ErrorType",
                    format!("{name}:http://internal.amazon.com/coral/com.amazon.aws.ses/"),
                )
                .set_body_json(json!({"message": message}))
        };
        if let Err(why) = verify_sigv4(r, SES_ACCESS_KEY_ID, SES_SECRET, SES_REGION, "ses") {
            return error(403, "InvalidSignatureException", &why);
        }
        if !header(r, "content-type").starts_with("application/json") {
            return error(
                400,
                "BadRequestException",
                "Content-Type must be application/json",
            );
        }
        let Ok(b) = serde_json::from_slice::<Value>(&r.body) else {
            return error(400, "BadRequestException", "Malformed JSON");
        };
        for (pointer, what) in [
            ("/FromEmailAddress", "FromEmailAddress"),
            ("/Destination/ToAddresses/0", "Destination"),
            ("/Content/Simple/Subject/Data", "Subject"),
        ] {
            if !is_str(&b, pointer) {
                return error(
                    400,
                    "BadRequestException",
                    &format!("Missing required key '{what}'"),
                );
            }
        }
        if !is_str(&b, "/Content/Simple/Body/Text/Data")
            && !is_str(&b, "/Content/Simple/Body/Html/Data")
        {
            return error(400, "BadRequestException", "Missing required key 'Body'");
        }
        ResponseTemplate::new(200).set_body_json(json!({"MessageId": SES_MESSAGE_ID}))
    }
}

type HmacSha256 = Hmac<Sha256>;

fn hmac(key: &[u8], data: &str) -> Vec<u8> {
    let mut m = HmacSha256::new_from_slice(key).unwrap();
    m.update(data.as_bytes());
    m.finalize().into_bytes().to_vec()
}

/// What SigV4 signs of a request; `headers` are the signed ones, lower-case
/// and sorted.
pub struct Signed<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: &'a str,
    pub headers: &'a [(&'a str, &'a str)],
    pub body: &'a [u8],
}

/// The SigV4 signature of a request, by the documented algorithm
/// (docs.aws.amazon.com, "Create a signed AWS API request"): canonical
/// request, string to sign, derived key. `scope` is
/// `date/region/service/aws4_request`.
pub fn sigv4_signature(secret: &str, r: &Signed, amz_date: &str, scope: &str) -> String {
    let Signed {
        method,
        path,
        query,
        headers,
        body,
    } = r;
    let canonical_headers: String = headers
        .iter()
        .map(|(k, v)| format!("{k}:{}\n", v.trim()))
        .collect();
    let signed: Vec<&str> = headers.iter().map(|(k, _)| *k).collect();
    let canonical_request = format!(
        "{method}\n{path}\n{query}\n{canonical_headers}\n{}\n{}",
        signed.join(";"),
        hex::encode(Sha256::digest(body))
    );
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        hex::encode(Sha256::digest(canonical_request.as_bytes()))
    );
    let mut parts = scope.split('/');
    let mut key = format!("AWS4{secret}").into_bytes();
    for part in [
        parts.next(),
        parts.next(),
        parts.next(),
        Some("aws4_request"),
    ] {
        key = hmac(&key, part.unwrap_or_default());
    }
    hex::encode(hmac(&key, &string_to_sign))
}

/// Check a request's `Authorization: AWS4-HMAC-SHA256 …` header.
pub fn verify_sigv4(
    r: &Request,
    access_key_id: &str,
    secret: &str,
    region: &str,
    service: &str,
) -> Result<(), String> {
    let auth = header(r, "authorization");
    let rest = auth
        .strip_prefix("AWS4-HMAC-SHA256 ")
        .ok_or("Authorization is not AWS4-HMAC-SHA256")?;
    let part = |name: &str| {
        rest.split(',')
            .map(str::trim)
            .find_map(|p| p.strip_prefix(name))
            .ok_or(format!("Authorization lacks {name}"))
    };
    let (credential, signed, signature) = (
        part("Credential=")?,
        part("SignedHeaders=")?,
        part("Signature=")?,
    );
    let (key_id, scope) = credential.split_once('/').ok_or("bad Credential")?;
    if key_id != access_key_id {
        return Err("The security token included in the request is invalid.".into());
    }
    let amz_date = header(r, "x-amz-date");
    let expected_scope = format!(
        "{}/{region}/{service}/aws4_request",
        amz_date.get(..8).unwrap_or_default()
    );
    if scope != expected_scope {
        return Err(format!(
            "Credential should be scoped to {expected_scope}, not {scope}"
        ));
    }
    let names: Vec<&str> = signed.split(';').collect();
    for required in ["content-type", "host", "x-amz-date"] {
        if !names.contains(&required) {
            return Err(format!("{required} must be signed"));
        }
    }
    let headers: Vec<(&str, &str)> = names.iter().map(|n| (*n, header(r, n))).collect();
    let query = r.url.query().unwrap_or_default();
    let signed = Signed {
        method: r.method.as_str(),
        path: r.url.path(),
        query,
        headers: &headers,
        body: &r.body,
    };
    let expected = sigv4_signature(secret, &signed, amz_date, scope);
    if expected == signature {
        Ok(())
    } else {
        Err("The request signature we calculated does not match the signature you provided.".into())
    }
}

// ---------------------------------------------------------------- Twilio

/// `POST /2010-04-01/Accounts/{sid}/Messages.json` as `twilio_api_v2010.json`
/// describes it.
pub struct Twilio;

pub fn twilio_path() -> String {
    format!("/2010-04-01/Accounts/{TWILIO_SID}/Messages.json")
}

impl Respond for Twilio {
    fn respond(&self, r: &Request) -> ResponseTemplate {
        let error = |status: u16, code: u32, message: &str| {
            ResponseTemplate::new(status).set_body_json(json!({
                "code": code, "message": message, "status": status,
                "more_info": format!("https://www.twilio.com/docs/errors/{code}"),
            }))
        };
        let basic = base64::engine::general_purpose::STANDARD
            .encode(format!("{TWILIO_SID}:{TWILIO_TOKEN}"));
        if header(r, "authorization") != format!("Basic {basic}") {
            return error(401, 20003, "Authenticate");
        }
        if !header(r, "content-type").starts_with("application/x-www-form-urlencoded") {
            return error(
                400,
                20001,
                "Content-Type must be application/x-www-form-urlencoded",
            );
        }
        let f = form(r);
        let Some(to) = field(&f, "To") else {
            return error(400, 21604, "A 'To' phone number is required.");
        };
        let from = field(&f, "From");
        if from.is_none() && field(&f, "MessagingServiceSid").is_none() {
            return error(400, 21603, "A 'From' phone number is required.");
        }
        if field(&f, "Body").is_none_or(str::is_empty) {
            return error(400, 21602, "Message body is required.");
        }
        if from.is_some_and(|from| from.starts_with("whatsapp:") != to.starts_with("whatsapp:")) {
            return error(
                400,
                21910,
                "Invalid From and To pair. From and To should be of the same channel",
            );
        }
        ResponseTemplate::new(201).set_body_json(json!({
            "account_sid": TWILIO_SID, "api_version": "2010-04-01", "body": field(&f, "Body"),
            "direction": "outbound-api", "error_code": null, "error_message": null,
            "from": from, "to": to, "num_segments": "1", "num_media": "0",
            "sid": TWILIO_MESSAGE_SID, "status": "queued",
            "uri": format!("/2010-04-01/Accounts/{TWILIO_SID}/Messages/{TWILIO_MESSAGE_SID}.json"),
        }))
    }
}

// ---------------------------------------------------------------- Meta

/// `POST /v23.0/{phone_number_id}/messages` as the business messaging spec
/// (`sendMessage`) describes it.
pub struct Meta;

pub fn meta_path() -> String {
    format!("/v23.0/{META_PHONE_ID}/messages")
}

pub fn meta_error(status: u16, code: i64, message: &str) -> ResponseTemplate {
    ResponseTemplate::new(status).set_body_json(json!({"error": {
        "message": message, "type": "OAuthException", "code": code,
        "fbtrace_id": "AXsgnV2Cm3ZMGF3dF_cfYIn",
    }}))
}

impl Respond for Meta {
    fn respond(&self, r: &Request) -> ResponseTemplate {
        if header(r, "authorization") != format!("Bearer {META_TOKEN}") {
            return meta_error(
                401,
                190,
                "Invalid OAuth access token - Cannot parse access token",
            );
        }
        if !header(r, "content-type").starts_with("application/json") {
            return meta_error(400, 100, "(#100) Invalid parameter");
        }
        let Ok(b) = serde_json::from_slice::<Value>(&r.body) else {
            return meta_error(400, 100, "(#100) Invalid parameter");
        };
        if b["messaging_product"] != "whatsapp" {
            return meta_error(
                400,
                100,
                "(#100) The parameter messaging_product is required.",
            );
        }
        let to = b["to"].as_str().unwrap_or_default();
        if to.is_empty() || !to.bytes().all(|c| c.is_ascii_digit()) {
            return meta_error(400, 100, "(#100) Invalid parameter: to");
        }
        let ok = match b["type"].as_str() {
            Some("text") => is_str(&b, "/text/body"),
            // `LanguageObject` requires both `code` and `policy`
            // ("deterministic", its only value).
            Some("template") => {
                is_str(&b, "/template/name")
                    && is_str(&b, "/template/language/code")
                    && b.pointer("/template/language/policy") == Some(&json!("deterministic"))
            }
            _ => false,
        };
        if !ok {
            return meta_error(400, 131008, "(#131008) Required parameter is missing");
        }
        ResponseTemplate::new(200).set_body_json(json!({
            "messaging_product": "whatsapp",
            "contacts": [{"input": to, "wa_id": to}],
            "messages": [{"id": META_WAMID}],
        }))
    }
}

// ---------------------------------------------------------------- Vonage

/// `POST /sms/json`: always 200, the verdict in `messages[0].status`.
pub struct Vonage;

pub fn vonage_status(status: &str, text: &str) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(json!({
        "message-count": "1",
        "messages": [{"status": status, "error-text": text}],
    }))
}

impl Respond for Vonage {
    fn respond(&self, r: &Request) -> ResponseTemplate {
        let f = form(r);
        if field(&f, "api_key") != Some(VONAGE_KEY)
            || field(&f, "api_secret") != Some(VONAGE_SECRET)
        {
            return vonage_status("4", "Bad Credentials");
        }
        for name in ["from", "to", "text"] {
            if field(&f, name).is_none_or(str::is_empty) {
                return vonage_status("2", &format!("Missing {name} param"));
            }
        }
        let to = field(&f, "to").unwrap_or_default();
        if !to.bytes().all(|c| c.is_ascii_digit()) {
            return vonage_status("3", "Invalid to param");
        }
        ResponseTemplate::new(200).set_body_json(json!({
            "message-count": "1",
            "messages": [{
                "to": to, "message-id": VONAGE_MESSAGE_ID, "status": "0",
                "remaining-balance": "3.14159265", "message-price": "0.03330000", "network": "12345",
            }],
        }))
    }
}

/// Answers 400 with the request echoed into the provider's message field,
/// as some APIs do with invalid input: `render` builds the body from the
/// request's headers and body text.
pub struct Echo(pub fn(&str) -> Value);

impl Respond for Echo {
    fn respond(&self, r: &Request) -> ResponseTemplate {
        let mut seen = String::from_utf8_lossy(&r.body).into_owned();
        for (k, v) in r.headers.iter() {
            let v = v.to_str().unwrap_or_default();
            seen.push_str(&format!(" {k}: {v}"));
            // Show Basic credentials decoded, the worst an echo could do.
            if let Some(b64) = v.strip_prefix("Basic ") {
                let decoded = base64::engine::general_purpose::STANDARD.decode(b64);
                seen.push_str(&String::from_utf8_lossy(&decoded.unwrap_or_default()));
            }
        }
        let body = (self.0)(&seen);
        let status = if body.get("message-count").is_some() {
            200
        } else {
            400
        };
        ResponseTemplate::new(status).set_body_json(body)
    }
}

// ---------------------------------------------------------------- scripting

/// When each request arrived, shared with the test.
#[derive(Clone, Default)]
pub struct Arrivals(pub std::sync::Arc<std::sync::Mutex<Vec<std::time::Instant>>>);

impl Arrivals {
    pub fn times(&self) -> Vec<std::time::Instant> {
        self.0.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    /// The most requests that arrived within any `window`.
    pub fn max_in_window(&self, window: std::time::Duration) -> usize {
        let mut t = self.times();
        t.sort();
        (0..t.len())
            .map(|i| t[i..].iter().take_while(|x| **x - t[i] < window).count())
            .max()
            .unwrap_or(0)
    }
}

/// Answers the first requests from `script`, then delegates to `then`;
/// records every arrival.
pub struct Scripted<R> {
    pub script: std::sync::Mutex<std::collections::VecDeque<ResponseTemplate>>,
    pub then: R,
    pub arrivals: Arrivals,
}

impl<R: Respond> Scripted<R> {
    pub fn new(script: Vec<ResponseTemplate>, then: R) -> (Self, Arrivals) {
        let arrivals = Arrivals::default();
        let s = Self {
            script: std::sync::Mutex::new(script.into()),
            then,
            arrivals: arrivals.clone(),
        };
        (s, arrivals)
    }
}

impl<R: Respond> Respond for Scripted<R> {
    fn respond(&self, r: &Request) -> ResponseTemplate {
        self.arrivals
            .0
            .lock()
            .unwrap()
            .push(std::time::Instant::now());
        match self.script.lock().unwrap().pop_front() {
            Some(t) => t,
            None => self.then.respond(r),
        }
    }
}

/// `R`'s answer, `after` it (a slow provider).
pub struct Slow<R>(pub R, pub std::time::Duration);

impl<R: Respond> Respond for Slow<R> {
    fn respond(&self, r: &Request) -> ResponseTemplate {
        self.0.respond(r).set_delay(self.1)
    }
}

/// Always the same answer.
pub struct Always(pub ResponseTemplate);

impl Respond for Always {
    fn respond(&self, _: &Request) -> ResponseTemplate {
        self.0.clone()
    }
}

/// SendGrid's error shape.
pub fn sendgrid_error(status: u16, message: &str) -> ResponseTemplate {
    ResponseTemplate::new(status)
        .set_body_json(json!({"errors": [{"field": null, "message": message, "help": null}]}))
}

/// Twilio's error shape.
pub fn twilio_error(status: u16, code: u32, message: &str) -> ResponseTemplate {
    ResponseTemplate::new(status).set_body_json(json!({
        "code": code, "message": message, "status": status,
        "more_info": format!("https://www.twilio.com/docs/errors/{code}"),
    }))
}
