//! `ChannelConfig::from_json` for every channel on arbitrary bytes read as
//! JSON: never panics, and an error quotes no submitted value. The module
//! promises (src/tenant/model.rs, src/provider/settings.rs) that an error
//! names the field by its path and gives a reason that never quotes a
//! value: field paths and plain-identifier field names come from the
//! input's keys, everything else from fixed text. So: every segment of the
//! error's field path is an index, (part of) one of the input's keys or a
//! field name of the config; and 9 characters in a row of a string value
//! that show up in the reason are a leak, unless they are part of the fixed
//! wording (a value such as "expected a string" cannot be told apart from
//! the message).
#![no_main]

use libfuzzer_sys::fuzz_target;
use outreach::job::Channel;
use outreach::tenant::ChannelConfig;
use serde_json::Value;

/// Every fixed text an error may carry: serde's expectations for the
/// config's types, this crate's reasons, the provider and channel names.
const WORDING: &[&str] = &[
    "invalid `",
    "`: ",
    "chain[",
    "].provider",
    "expected ",
    // The phrases whole too: a value can hold a run of 9 characters that
    // spans "expected " and what follows it (found by the fuzzer).
    "expected a string",
    "expected a boolean",
    "expected a sequence",
    "expected a map",
    "expected an object",
    "expected one of ",
    "a string",
    "a boolean",
    "a sequence",
    "a map",
    "an object",
    "u16",
    "u32",
    "u64",
    "struct ",
    "internally tagged enum ProviderSettings",
    "option",
    "unit",
    "one of ",
    "invalid value, ",
    "invalid length, ",
    "unknown value, ",
    "unknown field `",
    "unknown field",
    "missing field `",
    "missing field",
    "duplicate field",
    "wrong type",
    "invalid value",
    "needs a provider when fallback_to_system is false",
    "must be at least 1 (omit it for no limit)",
    "expected a local time HH:MM",
    "unknown provider, expected one of sandbox, smtp, sendgrid, ses, twilio, meta, vonage",
    " cannot carry ",
    "must not be empty",
    "not an email address",
    "expected an http(s) URL",
    "required when a password is set",
    "must be at least 1",
    "SendGrid API keys start with `SG.`",
    "expected an AWS region such as `eu-west-1`",
    "expected an AWS access key id such as `AKIA…`",
    "Twilio account SIDs are `AC` followed by 32 hex digits",
    "set `from` or `messaging_service_sid`",
    "expected an E.164 number such as +14155550100",
    "messaging service SIDs are `MG` followed by 32 hex digits",
    "expected the numeric phone-number id from Meta",
    "expected a Graph API version such as `v23.0`",
    "sandbox smtp sendgrid ses twilio meta vonage email sms whatsapp",
];

/// Field and type names of the config's structs.
const FIELDS: &[&str] = &[
    "enabled fallback_to_system chain rate_limits quiet_hours time_zone provider",
    "per_second per_minute per_hour per_day burst start end",
    "record_file host port security username password from_email from_name pool_max",
    "pool_idle_secs ca_file api_key template_id categories base_url region access_key_id",
    "secret_access_key configuration_set account_sid auth_token from messaging_service_sid",
    "access_token phone_number_id api_version api_secret",
    "struct Input",
    "struct RateLimits",
    "struct QuietHours",
    "struct SandboxSettings",
    "struct SmtpSettings",
    "struct SendgridSettings",
    "struct SesSettings",
    "struct TwilioSettings",
    "struct MetaSettings",
    "struct VonageSettings",
];

fn strings<'a>(v: &'a Value, values: &mut Vec<&'a str>, keys: &mut Vec<&'a str>) {
    match v {
        Value::String(s) => values.push(s),
        Value::Array(a) => a.iter().for_each(|v| strings(v, values, keys)),
        Value::Object(m) => {
            for (k, v) in m {
                keys.push(k);
                strings(v, values, keys);
            }
        }
        _ => {}
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(value) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let (mut values, mut keys) = (Vec::new(), Vec::new());
    strings(&value, &mut values, &mut keys);
    for channel in Channel::ALL {
        let Err(e) = ChannelConfig::from_json(value.clone(), channel) else {
            continue;
        };
        // Display is exactly "invalid `{field}`: {reason}".
        let shown = e.to_string();
        assert_eq!(shown, format!("invalid `{}`: {}", e.field, e.reason));
        // The field path is made of the input's keys, indices and the
        // config's own field names only.
        let explained = |seg: &str| {
            seg.is_empty()
                || seg == "?"
                || seg.bytes().all(|b| b.is_ascii_digit())
                || keys.iter().any(|k| k.contains(seg))
                || FIELDS.iter().any(|w| w.contains(seg))
        };
        for seg in e.field.split(['.', '[', ']']) {
            assert!(
                explained(seg),
                "{channel}: the error {shown:?} has {seg:?} in its field path"
            );
        }
        // The reason is fixed wording, or names a field that is one of the
        // input's keys (unknown) or one of the config's fields (missing).
        let named = |prefix: &str| {
            e.reason
                .strip_prefix(prefix)
                .and_then(|r| r.strip_suffix('`'))
        };
        let free_text = match (named("unknown field `"), named("missing field `")) {
            // A key holding a backtick is named up to it: still the key's.
            (Some(k), _) if keys.iter().any(|key| key.starts_with(k)) => "",
            (_, Some(f)) if FIELDS.iter().any(|w| w.split(' ').any(|w| w == f)) => "",
            _ => e.reason.as_str(),
        };
        // What is left once the fixed wording and the input's keys are cut
        // out: a run of characters spanning two of those pieces (which a
        // value can copy, as the fuzzer found) is then no longer matched.
        let mut residual = free_text.to_owned();
        let mut pieces: Vec<&str> = WORDING.iter().chain(FIELDS).copied().collect();
        pieces.extend(keys.iter().copied().filter(|k| !k.is_empty()));
        pieces.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for p in pieces {
            residual = residual.replace(p, "\u{1}");
        }
        // Not only whole values: any 9 characters in a row of one.
        for s in &values {
            let chars: Vec<char> = s.chars().collect();
            for window in chars.windows(9) {
                let w: String = window.iter().collect();
                assert!(
                    !residual.contains(&w),
                    "{channel}: the error {shown:?} quotes {w:?} of the value {s:?}"
                );
            }
        }
    }
});
