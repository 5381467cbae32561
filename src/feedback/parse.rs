//! Provider webhook payloads (already verified) into [`ProviderEvent`]s and
//! inbound opt-out / opt-in messages. Pure functions.

use crate::delivery_log::DeliveryStatus;
use crate::job::Channel;
use crate::provider::ProviderKind;
use crate::suppression::Reason;
use serde::Deserialize;
use time::OffsetDateTime;

/// One status a provider reported for one message.
#[derive(Debug, Clone, PartialEq)]
pub struct ProviderEvent {
    pub provider: ProviderKind,
    /// Identifies this event among the provider's redeliveries.
    pub event_key: String,
    /// The message id the provider gave at send time (what `outreach_logs` holds).
    pub message_id: Option<String>,
    /// The job id the send carried, where the provider echoes it (SendGrid custom_args).
    pub job_id: Option<String>,
    /// The provider's own status word.
    pub raw_status: String,
    /// What it means here; `None`: nothing changes (`deferred`, `queued`).
    pub status: Option<DeliveryStatus>,
    pub error_code: Option<String>,
    /// The recipient as the provider wrote it, and its channel.
    pub recipient: Option<String>,
    pub channel: Channel,
    /// Put the recipient on the tenant's suppression list, and why.
    pub suppress: Option<Reason>,
    pub occurred_at: OffsetDateTime,
}

/// What a recipient's keyword asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// STOP and its variants.
    OptOut,
    /// START / UNSTOP: an SMS or WhatsApp opt-out is lifted.
    OptIn,
}

/// A message a recipient sent back that changes whether they may be messaged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inbound {
    pub decision: Decision,
    pub channel: Channel,
    pub from: String,
    /// The provider's id of the inbound message: a redelivery carries the same.
    pub message_id: String,
    /// When the recipient sent it, by the provider's clock (when it arrived,
    /// for Twilio, whose webhook carries no time): the newest decision wins.
    pub sent_at: OffsetDateTime,
}

/// What one webhook request carried.
#[derive(Debug, Default)]
pub struct Parsed {
    pub events: Vec<ProviderEvent>,
    pub inbound: Vec<Inbound>,
}

/// A verified body that is not in the provider's documented shape.
#[derive(Debug, thiserror::Error)]
#[error("{provider} webhook body is not in the documented shape")]
pub struct Malformed {
    pub provider: &'static str,
}

/// Keywords carriers and Twilio treat as an opt-out (whole message, any case).
const STOP_WORDS: &[&str] = &[
    "STOP",
    "STOPALL",
    "STOP ALL",
    "UNSUBSCRIBE",
    "CANCEL",
    "END",
    "QUIT",
    "OPTOUT",
    "OPT OUT",
    "REVOKE",
];
/// Keywords that lift an opt-out.
const START_WORDS: &[&str] = &["START", "UNSTOP", "YES"];

/// An inbound text's meaning, if it is an opt-out or opt-in keyword.
pub fn keyword(body: &str) -> Option<Decision> {
    let word = body
        .trim()
        .trim_end_matches(['.', '!'])
        .to_ascii_uppercase();
    if STOP_WORDS.contains(&word.as_str()) {
        Some(Decision::OptOut)
    } else if START_WORDS.contains(&word.as_str()) {
        Some(Decision::OptIn)
    } else {
        None
    }
}

// --- SendGrid -------------------------------------------------------------

#[derive(Deserialize)]
struct SendgridEvent {
    event: String,
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    timestamp: Option<i64>,
    #[serde(default)]
    sg_event_id: Option<String>,
    #[serde(default)]
    sg_message_id: Option<String>,
    /// For `bounce`: `bounce` (hard) or `blocked`.
    #[serde(default, rename = "type")]
    kind: Option<String>,
    /// SMTP status of a bounce (`5.1.1`).
    #[serde(default)]
    status: Option<serde_json::Value>,
    /// Our custom_args, echoed.
    #[serde(default)]
    job_id: Option<String>,
}

/// A SendGrid Event Webhook body: a JSON array of events.
pub fn sendgrid(body: &[u8]) -> Result<Parsed, Malformed> {
    let malformed = Malformed {
        provider: "sendgrid",
    };
    let events: Vec<SendgridEvent> = serde_json::from_slice(body).map_err(|_| malformed)?;
    let mut out = Parsed::default();
    for e in events {
        let (status, suppress) = match e.event.as_str() {
            "processed" => (Some(DeliveryStatus::Sent), None),
            "delivered" => (Some(DeliveryStatus::Delivered), None),
            "bounce" if e.kind.as_deref() == Some("blocked") => {
                (Some(DeliveryStatus::Bounced), None)
            }
            "bounce" => (Some(DeliveryStatus::Bounced), Some(Reason::HardBounce)),
            "dropped" => (Some(DeliveryStatus::Undelivered), None),
            "spamreport" => (Some(DeliveryStatus::Complained), Some(Reason::Complaint)),
            "open" => (Some(DeliveryStatus::Opened), None),
            "click" => (Some(DeliveryStatus::Clicked), None),
            "unsubscribe" | "group_unsubscribe" => (
                Some(DeliveryStatus::Unsubscribed),
                Some(Reason::Unsubscribe),
            ),
            _ => (None, None),
        };
        // `sg_message_id` is the send's X-Message-Id plus `.filter…`.
        let message_id = e
            .sg_message_id
            .as_deref()
            .map(|m| m.split('.').next().unwrap_or(m).to_owned());
        let occurred_at = e
            .timestamp
            .and_then(|t| OffsetDateTime::from_unix_timestamp(t).ok())
            .unwrap_or_else(OffsetDateTime::now_utc);
        let event_key = e.sg_event_id.clone().unwrap_or_else(|| {
            format!(
                "{}:{}:{}",
                e.sg_message_id.as_deref().unwrap_or("-"),
                e.event,
                e.timestamp.unwrap_or(0)
            )
        });
        out.events.push(ProviderEvent {
            provider: ProviderKind::Sendgrid,
            event_key,
            message_id,
            job_id: e.job_id,
            raw_status: e.event,
            status,
            error_code: e.status.map(|s| match s {
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            }),
            recipient: e.email,
            channel: Channel::Email,
            suppress,
            occurred_at,
        });
    }
    Ok(out)
}

// --- Twilio ---------------------------------------------------------------

/// A Twilio callback (form parameters): a status callback, or an inbound message.
pub fn twilio(params: &[(String, String)]) -> Result<Parsed, Malformed> {
    let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let mut out = Parsed::default();
    let sid = get("MessageSid")
        .or_else(|| get("SmsSid"))
        .ok_or(Malformed { provider: "twilio" })?;
    if let Some(raw) = get("MessageStatus").filter(|s| *s != "received") {
        let to = get("To").unwrap_or_default();
        let channel = if to.starts_with("whatsapp:") {
            Channel::Whatsapp
        } else {
            Channel::Sms
        };
        let error_code = get("ErrorCode")
            .filter(|c| !c.is_empty())
            .map(str::to_owned);
        let status = match raw {
            "sent" => Some(DeliveryStatus::Sent),
            "delivered" => Some(DeliveryStatus::Delivered),
            "undelivered" | "failed" => Some(DeliveryStatus::Undelivered),
            "read" => Some(DeliveryStatus::Read),
            _ => None,
        };
        let opted_out = crate::provider::twilio::OPTED_OUT.to_string();
        let suppress = (error_code.as_ref() == Some(&opted_out)).then_some(Reason::OptOut);
        out.events.push(ProviderEvent {
            provider: ProviderKind::Twilio,
            event_key: format!("{sid}:{raw}"),
            message_id: Some(sid.to_owned()),
            job_id: None,
            raw_status: raw.to_owned(),
            status,
            error_code,
            recipient: (!to.is_empty()).then(|| to.to_owned()),
            channel,
            suppress,
            occurred_at: OffsetDateTime::now_utc(),
        });
    } else if let (Some(from), Some(body)) = (get("From"), get("Body")) {
        let channel = if from.starts_with("whatsapp:") {
            Channel::Whatsapp
        } else {
            Channel::Sms
        };
        out.inbound.extend(keyword(body).map(|decision| Inbound {
            decision,
            channel,
            from: from.to_owned(),
            message_id: sid.to_owned(),
            sent_at: OffsetDateTime::now_utc(),
        }));
    }
    Ok(out)
}

// --- SES (through SNS) -----------------------------------------------------

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SesNote {
    /// `notificationType` (identity notifications) or `eventType` (configuration set events).
    #[serde(alias = "eventType")]
    notification_type: String,
    mail: SesMail,
    #[serde(default)]
    bounce: Option<SesBounce>,
    #[serde(default)]
    complaint: Option<SesComplaint>,
}
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SesMail {
    message_id: String,
    #[serde(default)]
    destination: Vec<String>,
}
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SesBounce {
    bounce_type: String,
    #[serde(default)]
    bounced_recipients: Vec<SesRecipient>,
}
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SesComplaint {
    #[serde(default)]
    complained_recipients: Vec<SesRecipient>,
}
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SesRecipient {
    email_address: String,
}

/// An SES notification (the SNS message's `Message`), one event per
/// recipient it names; `sns_id` (the SNS MessageId) keys them.
pub fn ses(message: &str, sns_id: &str) -> Result<Parsed, Malformed> {
    let n: SesNote = serde_json::from_str(message).map_err(|_| Malformed { provider: "ses" })?;
    let (status, suppress, recipients) = match n.notification_type.as_str() {
        "Send" => (Some(DeliveryStatus::Sent), None, n.mail.destination),
        "Delivery" => (Some(DeliveryStatus::Delivered), None, n.mail.destination),
        "Reject" | "RenderingFailure" => {
            (Some(DeliveryStatus::Undelivered), None, n.mail.destination)
        }
        "Bounce" => {
            let b = n.bounce.ok_or(Malformed { provider: "ses" })?;
            let hard = (b.bounce_type == "Permanent").then_some(Reason::HardBounce);
            let to = b
                .bounced_recipients
                .into_iter()
                .map(|r| r.email_address)
                .collect();
            (Some(DeliveryStatus::Bounced), hard, to)
        }
        "Complaint" => {
            let c = n.complaint.ok_or(Malformed { provider: "ses" })?;
            let to = c
                .complained_recipients
                .into_iter()
                .map(|r| r.email_address)
                .collect();
            (
                Some(DeliveryStatus::Complained),
                Some(Reason::Complaint),
                to,
            )
        }
        "Open" => (Some(DeliveryStatus::Opened), None, n.mail.destination),
        "Click" => (Some(DeliveryStatus::Clicked), None, n.mail.destination),
        _ => (None, None, n.mail.destination),
    };
    let mut out = Parsed::default();
    for (i, to) in recipients.into_iter().enumerate() {
        out.events.push(ProviderEvent {
            provider: ProviderKind::Ses,
            event_key: format!("{sns_id}:{i}"),
            message_id: Some(n.mail.message_id.clone()),
            job_id: None,
            raw_status: n.notification_type.clone(),
            status,
            error_code: None,
            recipient: Some(to),
            channel: Channel::Email,
            suppress,
            occurred_at: OffsetDateTime::now_utc(),
        });
    }
    Ok(out)
}

// --- Vonage (SMS API) ------------------------------------------------------

/// A Vonage SMS API delivery receipt (`messageId`, `status`) or inbound
/// message (`msisdn`, `text`), as its parameters.
pub fn vonage(params: &[(String, String)]) -> Result<Parsed, Malformed> {
    let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let mut out = Parsed::default();
    let msisdn = get("msisdn").ok_or(Malformed { provider: "vonage" })?;
    // msisdn: the number without its `+`.
    let number = format!("+{}", msisdn.trim_start_matches('+'));
    if let (Some(id), Some(raw)) = (get("messageId"), get("status")) {
        let status = match raw {
            "delivered" => Some(DeliveryStatus::Delivered),
            "expired" | "failed" | "rejected" => Some(DeliveryStatus::Undelivered),
            _ => None,
        };
        let ts = get("message-timestamp").unwrap_or_default();
        out.events.push(ProviderEvent {
            provider: ProviderKind::Vonage,
            event_key: format!("{id}:{raw}:{ts}"),
            message_id: Some(id.to_owned()),
            job_id: None,
            raw_status: raw.to_owned(),
            status,
            error_code: get("err-code").filter(|c| *c != "0").map(str::to_owned),
            recipient: Some(number),
            channel: Channel::Sms,
            suppress: None,
            occurred_at: OffsetDateTime::now_utc(),
        });
    } else if let Some(text) = get("text") {
        let ts = get("message-timestamp").unwrap_or_default();
        out.inbound.extend(keyword(text).map(|decision| Inbound {
            decision,
            channel: Channel::Sms,
            message_id: get("messageId").map_or_else(|| format!("{msisdn}:{ts}"), str::to_owned),
            from: number.clone(),
            sent_at: vonage_time(ts).unwrap_or_else(OffsetDateTime::now_utc),
        }));
    } else {
        return Err(Malformed { provider: "vonage" });
    }
    Ok(out)
}

/// Vonage's `message-timestamp`: `2020-01-01 12:00:00`, UTC.
fn vonage_time(ts: &str) -> Option<OffsetDateTime> {
    let fmt = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
    time::PrimitiveDateTime::parse(ts.trim(), &fmt)
        .ok()
        .map(|t| t.assume_utc())
}

/// Unix seconds as Meta writes them (a string).
fn unix_time(ts: Option<&str>) -> Option<OffsetDateTime> {
    ts?.parse::<i64>()
        .ok()
        .and_then(|t| OffsetDateTime::from_unix_timestamp(t).ok())
}

// --- Meta (WhatsApp Cloud API) ---------------------------------------------

/// Meta's `WebhookPayload`: `object` and `entry` required, each entry's
/// `id` and `changes` too (business-messaging-api v23.0).
#[derive(Deserialize)]
struct MetaBody {
    object: String,
    entry: Vec<MetaEntry>,
}
#[derive(Deserialize)]
struct MetaEntry {
    /// Required, not used (the WhatsApp Business Account's id).
    #[serde(rename = "id")]
    _id: serde::de::IgnoredAny,
    changes: Vec<MetaChange>,
}
#[derive(Deserialize)]
struct MetaChange {
    value: MetaValue,
}
#[derive(Deserialize)]
struct MetaValue {
    #[serde(default)]
    statuses: Vec<MetaStatus>,
    #[serde(default)]
    messages: Vec<MetaMessage>,
}
#[derive(Deserialize)]
struct MetaStatus {
    id: String,
    status: String,
    #[serde(default)]
    timestamp: Option<String>,
    #[serde(default)]
    recipient_id: Option<String>,
    #[serde(default)]
    errors: Vec<MetaError>,
}
#[derive(Deserialize)]
struct MetaError {
    code: i64,
}
#[derive(Deserialize)]
struct MetaMessage {
    from: String,
    /// The inbound message's wamid.
    id: String,
    #[serde(default)]
    timestamp: Option<String>,
    #[serde(default)]
    text: Option<MetaText>,
}
#[derive(Deserialize)]
struct MetaText {
    body: String,
}

/// A WhatsApp Cloud API webhook (`object: whatsapp_business_account`).
pub fn meta(body: &[u8]) -> Result<Parsed, Malformed> {
    let b: MetaBody = serde_json::from_slice(body).map_err(|_| Malformed { provider: "meta" })?;
    if b.object != "whatsapp_business_account" {
        return Err(Malformed { provider: "meta" });
    }
    let mut out = Parsed::default();
    for value in b.entry.into_iter().flat_map(|e| e.changes).map(|c| c.value) {
        for s in value.statuses {
            let status = match s.status.as_str() {
                "sent" => Some(DeliveryStatus::Sent),
                "delivered" => Some(DeliveryStatus::Delivered),
                "read" => Some(DeliveryStatus::Read),
                "failed" => Some(DeliveryStatus::Undelivered),
                _ => None,
            };
            let ts = s.timestamp.clone().unwrap_or_default();
            out.events.push(ProviderEvent {
                provider: ProviderKind::Meta,
                event_key: format!("{}:{}:{ts}", s.id, s.status),
                message_id: Some(s.id),
                job_id: None,
                raw_status: s.status,
                status,
                error_code: s.errors.first().map(|e| e.code.to_string()),
                // wa_id: the number without its `+`.
                recipient: s
                    .recipient_id
                    .map(|r| format!("+{}", r.trim_start_matches('+'))),
                channel: Channel::Whatsapp,
                suppress: None,
                occurred_at: unix_time(Some(&ts)).unwrap_or_else(OffsetDateTime::now_utc),
            });
        }
        for m in value.messages {
            let Some(decision) = m.text.and_then(|t| keyword(&t.body)) else {
                continue;
            };
            out.inbound.push(Inbound {
                decision,
                channel: Channel::Whatsapp,
                from: format!("+{}", m.from.trim_start_matches('+')),
                sent_at: unix_time(m.timestamp.as_deref()).unwrap_or_else(OffsetDateTime::now_utc),
                message_id: m.id,
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sendgrid_sdk_payload_parses_to_an_undelivered_event() {
        let body = "[{\"email\":\"hello@world.com\",\"event\":\"dropped\",\"reason\":\"Bounced Address\",\"sg_event_id\":\"ZHJvcC0xMDk5NDkxOS1MUnpYbF9OSFN0T0doUTRrb2ZTbV9BLTA\",\"sg_message_id\":\"LRzXl_NHStOGhQ4kofSm_A.filterdrecv-p3mdw1-756b745b58-kmzbl-18-5F5FC76C-9.0\",\"smtp-id\":\"<LRzXl_NHStOGhQ4kofSm_A@ismtpd0039p1iad1.sendgrid.net>\",\"timestamp\":1600112492}]\r\n";
        let p = sendgrid(body.as_bytes()).unwrap();
        let e = &p.events[0];
        assert_eq!(e.message_id.as_deref(), Some("LRzXl_NHStOGhQ4kofSm_A"));
        assert_eq!(e.status, Some(DeliveryStatus::Undelivered));
        assert_eq!(e.occurred_at.unix_timestamp(), 1600112492);
        assert_eq!(e.suppress, None);
    }

    #[test]
    fn a_hard_bounce_suppresses_and_a_block_does_not() {
        let body = br#"[{"event":"bounce","type":"bounce","email":"a@b.co","sg_event_id":"1"},
                        {"event":"bounce","type":"blocked","email":"a@b.co","sg_event_id":"2"},
                        {"event":"spamreport","email":"a@b.co","sg_event_id":"3"}]"#;
        let p = sendgrid(body).unwrap();
        let s: Vec<_> = p.events.iter().map(|e| e.suppress).collect();
        assert_eq!(s, [Some(Reason::HardBounce), None, Some(Reason::Complaint)]);
    }

    #[test]
    fn twilio_error_21610_suppresses_the_number() {
        let params: Vec<(String, String)> = [
            ("MessageSid", "SM1"),
            ("MessageStatus", "undelivered"),
            ("ErrorCode", "21610"),
            ("To", "+14155550100"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let p = twilio(&params).unwrap();
        assert_eq!(p.events[0].suppress, Some(Reason::OptOut));
        assert_eq!(p.events[0].status, Some(DeliveryStatus::Undelivered));
    }

    #[test]
    fn a_vonage_receipt_and_an_inbound_stop_parse() {
        let kv = |p: &[(&str, &str)]| -> Vec<(String, String)> {
            p.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let dlr = vonage(&kv(&[
            ("msisdn", "447700900123"),
            ("messageId", "0A0000000123ABCD1"),
            ("status", "delivered"),
            ("err-code", "0"),
        ]))
        .unwrap();
        assert_eq!(dlr.events[0].status, Some(DeliveryStatus::Delivered));
        assert_eq!(dlr.events[0].recipient.as_deref(), Some("+447700900123"));
        assert_eq!(dlr.events[0].error_code, None);
        let stop = vonage(&kv(&[
            ("msisdn", "447700900123"),
            ("messageId", "0B000000D0EBB58D"),
            ("message-timestamp", "2020-01-01 12:00:00"),
            ("text", "STOP"),
        ]))
        .unwrap();
        assert_eq!(stop.inbound[0].decision, Decision::OptOut);
        assert_eq!(stop.inbound[0].message_id, "0B000000D0EBB58D");
        assert_eq!(stop.inbound[0].sent_at.unix_timestamp(), 1577880000);
    }

    #[test]
    fn a_permanent_ses_bounce_suppresses_each_bounced_recipient() {
        let msg = r#"{"notificationType":"Bounce","mail":{"messageId":"m-1","destination":["a@b.co","c@d.co"]},
            "bounce":{"bounceType":"Permanent","bouncedRecipients":[{"emailAddress":"a@b.co"}]}}"#;
        let p = ses(msg, "sns-1").unwrap();
        assert_eq!(p.events.len(), 1);
        assert_eq!(p.events[0].suppress, Some(Reason::HardBounce));
        assert_eq!(p.events[0].message_id.as_deref(), Some("m-1"));
        let transient = msg.replace("Permanent", "Transient");
        assert_eq!(ses(&transient, "sns-2").unwrap().events[0].suppress, None);
    }

    #[test]
    fn stop_variants_opt_out_and_start_opts_in() {
        for w in ["STOP", "stop", " Stop. ", "unsubscribe", "StopAll", "quit"] {
            assert_eq!(keyword(w), Some(Decision::OptOut), "{w}");
        }
        for w in ["START", "unstop", "Yes"] {
            assert_eq!(keyword(w), Some(Decision::OptIn), "{w}");
        }
        assert_eq!(keyword("please stop by at 10"), None);
    }

    #[test]
    fn a_meta_body_without_its_object_and_entries_is_malformed() {
        for body in [
            &br#"{}"#[..],
            br#"{"hello":"world"}"#,
            br#"{"object":"page","entry":[]}"#,
            br#"{"object":"whatsapp_business_account"}"#,
            br#"{"object":"whatsapp_business_account","entry":[{"changes":[]}]}"#,
        ] {
            assert!(meta(body).is_err(), "{}", String::from_utf8_lossy(body));
        }
        assert!(meta(br#"{"object":"whatsapp_business_account","entry":[]}"#).is_ok());
    }

    #[test]
    fn meta_statuses_and_inbound_stop_parse() {
        let body = br#"{"object":"whatsapp_business_account","entry":[{"id":"1","changes":[{"field":"messages","value":{
            "statuses":[{"id":"wamid.X","status":"read","timestamp":"1700000000","recipient_id":"447700900123"}],
            "messages":[{"from":"447700900123","id":"wamid.Y","timestamp":"1700000001","type":"text","text":{"body":"STOP"}}]}}]}]}"#;
        let p = meta(body).unwrap();
        assert_eq!(p.events[0].status, Some(DeliveryStatus::Read));
        assert_eq!(p.events[0].recipient.as_deref(), Some("+447700900123"));
        assert_eq!(
            p.inbound,
            [Inbound {
                decision: Decision::OptOut,
                channel: Channel::Whatsapp,
                from: "+447700900123".into(),
                message_id: "wamid.Y".into(),
                sent_at: OffsetDateTime::from_unix_timestamp(1700000001).unwrap(),
            }]
        );
    }
}
