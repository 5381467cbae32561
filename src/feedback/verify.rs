//! Webhook signature checks, each exactly as its provider documents it, run
//! on the raw request before anything in it is read. Pure functions: the
//! providers' SDK test vectors run through them unchanged (tests below).
//!
//! - Twilio: `X-Twilio-Signature` = base64(HMAC-SHA1(auth token, full public
//!   URL + each form parameter's name and value, sorted by name then value)).
//! - SendGrid signed Event Webhook: ECDSA P-256 / SHA-256 over the
//!   `X-Twilio-Email-Event-Webhook-Timestamp` header followed by the raw body,
//!   base64 DER signature, the account's base64 SPKI public key.
//! - Meta: `X-Hub-Signature-256` = `sha256=` + hex(HMAC-SHA256(app secret, raw body)).
//! - Vonage (SMS API delivery receipts and inbound messages): `sig` over
//!   every other parameter sorted by name, each as `&name=value` with `&` and
//!   `=` in values replaced by `_`: MD5 of that string followed by the
//!   signature secret (`md5hash`), or its HMAC-SHA1/256/512 keyed by the
//!   secret; hex, compared regardless of case. Its `timestamp` parameter is
//!   checked for freshness like SendGrid's.
//!
//! Comparisons are constant-time (`hmac`'s `verify_slice`, `subtle`).

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, Mac};
use p256::ecdsa::signature::Verifier;
use p256::ecdsa::{Signature, VerifyingKey};
use secrecy::{ExposeSecret, SecretString};

/// Why a webhook request was refused. Carries no part of the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("signature header missing or not in the provider's format")]
    MissingSignature,
    #[error("signature does not verify with any of the tenant's accounts")]
    BadSignature,
    #[error("timestamp outside the accepted window")]
    Stale,
    #[error("the tenant has no account of this provider that can verify webhooks")]
    NoAccount,
    #[error("providers.webhook_base_url is not set: the signed URL is unknown")]
    NoBaseUrl,
    #[error("SNS certificate or subscribe URL not on an allow-listed origin")]
    CertificateOrigin,
    #[error("SNS signing certificate could not be fetched or read")]
    CertificateUnavailable,
    #[error("SNS topic is not one of the tenant's SES accounts' topics")]
    UnknownTopic,
    #[error("Content-Type is not the one this provider sends")]
    ContentType,
    #[error("body larger than webhooks.max_body_bytes")]
    TooLarge,
    #[error("body not received within webhooks.body_read_timeout_ms")]
    BodyTimeout,
    #[error("body could not be read")]
    Unreadable,
    #[error("verified body is not in the provider's documented shape")]
    Malformed,
    #[error("webhooks.max_connections connections are open")]
    ConnectionLimit,
}

impl Refusal {
    /// The metric label.
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::MissingSignature => "missing_signature",
            Refusal::BadSignature => "signature",
            Refusal::Stale => "stale",
            Refusal::NoAccount => "no_account",
            Refusal::NoBaseUrl => "no_base_url",
            Refusal::CertificateOrigin => "certificate_origin",
            Refusal::CertificateUnavailable => "certificate_unavailable",
            Refusal::UnknownTopic => "topic",
            Refusal::ContentType => "content_type",
            Refusal::TooLarge => "too_large",
            Refusal::BodyTimeout => "body_timeout",
            Refusal::Unreadable => "unreadable",
            Refusal::Malformed => "malformed",
            Refusal::ConnectionLimit => "connection_limit",
        }
    }

    /// The answer: 401 for what a signature decides, otherwise what the
    /// refusal means to the sender (503 asks it to retry).
    pub fn status(self) -> http::StatusCode {
        use http::StatusCode as S;
        match self {
            Refusal::NoAccount => S::FORBIDDEN,
            // Ours to retry: SNS delivers again.
            Refusal::CertificateUnavailable | Refusal::ConnectionLimit => S::SERVICE_UNAVAILABLE,
            Refusal::ContentType => S::UNSUPPORTED_MEDIA_TYPE,
            Refusal::TooLarge => S::PAYLOAD_TOO_LARGE,
            Refusal::BodyTimeout => S::REQUEST_TIMEOUT,
            Refusal::Unreadable | Refusal::Malformed => S::BAD_REQUEST,
            Refusal::MissingSignature
            | Refusal::BadSignature
            | Refusal::Stale
            | Refusal::NoBaseUrl
            | Refusal::CertificateOrigin
            | Refusal::UnknownTopic => S::UNAUTHORIZED,
        }
    }
}

/// Twilio's expected signature for `url` and the form `params`.
pub fn twilio_signature(
    auth_token: &SecretString,
    url: &str,
    params: &[(String, String)],
) -> String {
    B64.encode(twilio_mac(auth_token, url, params).finalize().into_bytes())
}

/// The HMAC-SHA1 over the URL and the parameters sorted by name then value,
/// each pair once (as Twilio's SDKs do).
fn twilio_mac(
    auth_token: &SecretString,
    url: &str,
    params: &[(String, String)],
) -> Hmac<sha1::Sha1> {
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(auth_token.expose_secret().as_bytes())
        .expect("HMAC takes any key length");
    mac.update(url.as_bytes());
    let mut sorted: Vec<&(String, String)> = params.iter().collect();
    sorted.sort();
    sorted.dedup();
    for (k, v) in sorted {
        mac.update(k.as_bytes());
        mac.update(v.as_bytes());
    }
    mac
}

/// Check `X-Twilio-Signature` against one auth token. Twilio's validators
/// also accept the URL with the default port added or removed; so does this.
pub fn verify_twilio(
    auth_token: &SecretString,
    url: &str,
    params: &[(String, String)],
    header: &str,
) -> bool {
    let Ok(presented) = B64.decode(header.trim()) else {
        return false;
    };
    url_variants(url).iter().any(|u| {
        twilio_mac(auth_token, u, params)
            .verify_slice(&presented)
            .is_ok()
    })
}

/// The URL as given, and with its scheme's default port left out and
/// written in (`Url` drops a default port when parsing, so both are built).
fn url_variants(url: &str) -> Vec<String> {
    let mut out = vec![url.to_owned()];
    if let Ok(mut u) = url::Url::parse(url)
        && let (Some(host), Some(port)) =
            (u.host_str().map(str::to_owned), u.port_or_known_default())
        && u.port().is_none()
    {
        let _ = u.set_port(None);
        let without = u.to_string();
        let with = without.replacen(&format!("://{host}"), &format!("://{host}:{port}"), 1);
        out.extend([without, with]);
    }
    out
}

/// Parse a SendGrid verification key (see
/// [`crate::provider::sendgrid::webhook_verification_key`]).
pub fn sendgrid_key(b64: &str) -> Result<VerifyingKey, Refusal> {
    crate::provider::sendgrid::webhook_verification_key(b64).ok_or(Refusal::NoAccount)
}

/// Check a SendGrid signed event: signature over `timestamp` + raw `body`.
pub fn verify_sendgrid(
    key: &VerifyingKey,
    timestamp: &str,
    body: &[u8],
    signature_b64: &str,
) -> bool {
    let Ok(der) = B64.decode(signature_b64.trim()) else {
        return false;
    };
    let Ok(sig) = Signature::from_der(&der) else {
        return false;
    };
    let mut signed = Vec::with_capacity(timestamp.len() + body.len());
    signed.extend_from_slice(timestamp.as_bytes());
    signed.extend_from_slice(body);
    // SendGrid's signatures are not always low-S; the check is the same.
    let sig = sig.normalize_s().unwrap_or(sig);
    key.verify(&signed, &sig).is_ok()
}

/// Whether a SendGrid timestamp (Unix seconds) is within `max_age_secs` of `now`.
pub fn fresh(timestamp: &str, now_unix: i64, max_age_secs: u64) -> bool {
    timestamp
        .trim()
        .parse::<i64>()
        .is_ok_and(|t| now_unix.abs_diff(t) <= max_age_secs)
}

/// Check Meta's `X-Hub-Signature-256` (`sha256=<hex>`) over the raw body.
pub fn verify_meta(app_secret: &SecretString, body: &[u8], header: &str) -> bool {
    let Some(hex_sig) = header.trim().strip_prefix("sha256=") else {
        return false;
    };
    let Ok(presented) = hex::decode(hex_sig) else {
        return false;
    };
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(app_secret.expose_secret().as_bytes())
        .expect("HMAC takes any key length");
    mac.update(body);
    mac.verify_slice(&presented).is_ok()
}

/// Meta's signature header for `body` (for tests and tools).
pub fn meta_signature(app_secret: &SecretString, body: &[u8]) -> String {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(app_secret.expose_secret().as_bytes())
        .expect("HMAC takes any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Vonage's `sig` for `params` (any `sig` among them is left out).
pub fn vonage_signature(
    secret: &SecretString,
    method: crate::provider::settings::VonageSignatureMethod,
    params: &[(String, String)],
) -> String {
    use crate::provider::settings::VonageSignatureMethod as M;
    let mut sorted: Vec<&(String, String)> = params.iter().filter(|(k, _)| k != "sig").collect();
    sorted.sort();
    let mut signed = String::new();
    for (k, v) in sorted {
        signed.push('&');
        signed.push_str(k);
        signed.push('=');
        signed.push_str(&v.replace(['&', '='], "_"));
    }
    let key = secret.expose_secret().as_bytes();
    fn hmac_hex<H: Mac + hmac::digest::KeyInit>(key: &[u8], msg: &[u8]) -> String {
        let mut mac =
            <H as hmac::digest::KeyInit>::new_from_slice(key).expect("HMAC takes any key length");
        mac.update(msg);
        hex::encode(mac.finalize().into_bytes())
    }
    match method {
        M::Md5hash => {
            use md5::Digest;
            let mut h = md5::Md5::new();
            h.update(signed.as_bytes());
            h.update(key);
            hex::encode(h.finalize())
        }
        M::Sha1 => hmac_hex::<Hmac<sha1::Sha1>>(key, signed.as_bytes()),
        M::Sha256 => hmac_hex::<Hmac<sha2::Sha256>>(key, signed.as_bytes()),
        M::Sha512 => hmac_hex::<Hmac<sha2::Sha512>>(key, signed.as_bytes()),
    }
}

/// Check a Vonage webhook's `sig` (constant-time, any case).
pub fn verify_vonage(
    secret: &SecretString,
    method: crate::provider::settings::VonageSignatureMethod,
    params: &[(String, String)],
) -> bool {
    use subtle::ConstantTimeEq;
    let Some((_, sig)) = params.iter().find(|(k, _)| k == "sig") else {
        return false;
    };
    let expected = vonage_signature(secret, method, params);
    bool::from(
        expected
            .as_bytes()
            .ct_eq(sig.to_ascii_lowercase().as_bytes()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    /// The providers' SDK test vectors, copied unchanged from
    /// shared/provider-specs (sources inside each file).
    fn spec(name: &str) -> Value {
        let path = format!("{}/tests/vectors/{name}", env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        serde_json::from_str(&text).unwrap()
    }

    fn pairs(v: &Value) -> Vec<(String, String)> {
        match v {
            Value::Object(m) => m
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
                .collect(),
            Value::Array(a) => a
                .iter()
                .map(|p| {
                    (
                        p[0].as_str().unwrap().to_owned(),
                        p[1].as_str().unwrap().to_owned(),
                    )
                })
                .collect(),
            _ => panic!("params"),
        }
    }

    #[test]
    fn twilio_sdk_vectors_verify() {
        let v = spec("twilio_signature.json");
        let token = SecretString::from(v["auth_token"].as_str().unwrap());
        let url = v["url"].as_str().unwrap();
        let params = pairs(&v["params"]);
        assert_eq!(
            twilio_signature(&token, url, &params),
            v["expected"].as_str().unwrap()
        );
        assert!(verify_twilio(
            &token,
            url,
            &params,
            v["expected"].as_str().unwrap()
        ));
        let dup = pairs(&v["duplicate_params"]);
        assert!(verify_twilio(
            &token,
            url,
            &dup,
            v["duplicate_expected"].as_str().unwrap()
        ));
    }

    #[test]
    fn twilio_signature_fails_for_another_token_url_or_param() {
        let v = spec("twilio_signature.json");
        let token = SecretString::from(v["auth_token"].as_str().unwrap());
        let url = v["url"].as_str().unwrap();
        let params = pairs(&v["params"]);
        let sig = v["expected"].as_str().unwrap();
        assert!(!verify_twilio(
            &SecretString::from("12346"),
            url,
            &params,
            sig
        ));
        assert!(!verify_twilio(
            &token,
            &url.replace("foo=1", "foo=2"),
            &params,
            sig
        ));
        let mut changed = params.clone();
        changed[0].1.push('0');
        assert!(!verify_twilio(&token, url, &changed, sig));
        assert!(!verify_twilio(&token, url, &params, "not base64!"));
    }

    #[test]
    fn twilio_accepts_the_url_with_its_default_port_written_out() {
        let token = SecretString::from("t");
        let p = vec![("A".to_owned(), "1".to_owned())];
        let sig = twilio_signature(&token, "https://x.example/webhooks/twilio/c", &p);
        assert!(verify_twilio(
            &token,
            "https://x.example:443/webhooks/twilio/c",
            &p,
            &sig
        ));
        assert!(verify_twilio(
            &token,
            "https://x.example/webhooks/twilio/c",
            &p,
            &sig
        ));
    }

    #[test]
    fn sendgrid_sdk_vector_verifies_and_a_flipped_byte_does_not() {
        let v = spec("sendgrid_signed_webhook.json");
        let key = sendgrid_key(v["public_key_b64_spki_der"].as_str().unwrap()).unwrap();
        let ts = v["timestamp"].as_str().unwrap();
        let body = v["payload_exact"].as_str().unwrap().as_bytes();
        let sig = v["signature_b64_der"].as_str().unwrap();
        assert!(verify_sendgrid(&key, ts, body, sig));
        let mut flipped = body.to_vec();
        flipped[10] ^= 1;
        assert!(!verify_sendgrid(&key, ts, &flipped, sig));
        assert!(!verify_sendgrid(&key, "1600112503", body, sig));
    }

    #[test]
    fn sendgrid_timestamps_outside_the_window_are_stale() {
        assert!(fresh("1000", 1500, 600));
        assert!(!fresh("1000", 1601, 600));
        assert!(!fresh("2000", 1000, 600));
        assert!(!fresh("soon", 1000, 600));
    }

    #[test]
    fn a_sendgrid_key_that_is_not_p256_spki_is_refused() {
        assert!(sendgrid_key("not a key").is_err());
        assert!(sendgrid_key(&B64.encode([4u8; 65])).is_err());
    }

    fn kv(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_vonage_sdk_vector_verifies() {
        // vonage-python-sdk tests/test_signature.py: md5hash, secret "secret".
        use crate::provider::settings::VonageSignatureMethod as M;
        let secret = SecretString::from("secret");
        let p = kv(&[
            ("a", "1"),
            ("b", "2"),
            ("timestamp", "1461605396"),
            ("sig", "6af838ef94998832dbfc29020b564830"),
        ]);
        assert_eq!(
            vonage_signature(&secret, M::Md5hash, &p),
            "6af838ef94998832dbfc29020b564830"
        );
        assert!(verify_vonage(&secret, M::Md5hash, &p));
        let mut upper = p.clone();
        upper[3].1 = upper[3].1.to_ascii_uppercase();
        assert!(verify_vonage(&secret, M::Md5hash, &upper));
        let mut changed = p.clone();
        changed[0].1 = "2".into();
        assert!(!verify_vonage(&secret, M::Md5hash, &changed));
        assert!(!verify_vonage(&SecretString::from("other"), M::Md5hash, &p));
        assert!(!verify_vonage(&secret, M::Sha256, &p));
    }

    #[test]
    fn vonage_values_have_ampersands_and_equals_replaced_before_signing() {
        use crate::provider::settings::VonageSignatureMethod as M;
        let secret = SecretString::from("s");
        let a = vonage_signature(&secret, M::Sha256, &kv(&[("text", "a&b=c")]));
        let b = vonage_signature(&secret, M::Sha256, &kv(&[("text", "a_b_c")]));
        assert_eq!(a, b);
        assert_eq!(a.len(), 64);
    }

    #[test]
    fn meta_signature_round_trips_and_refuses_another_secret() {
        let secret = SecretString::from("app-secret");
        let body = br#"{"object":"whatsapp_business_account"}"#;
        let header = meta_signature(&secret, body);
        assert!(verify_meta(&secret, body, &header));
        assert!(!verify_meta(&SecretString::from("other"), body, &header));
        assert!(!verify_meta(&secret, b"{}", &header));
        assert!(!verify_meta(
            &secret,
            body,
            header.trim_start_matches("sha256=")
        ));
    }
}
