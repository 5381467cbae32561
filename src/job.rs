//! The job wire format (version 1) and its validation.
//!
//! Upstream apps publish one JSON object per job; see README.md ("Job format").
//! [`Job::decode`] turns raw bytes into a validated [`Job`] or a [`JobError`]
//! whose [`JobError::reason`] ends up in the dead-letter headers, the log row
//! and the `failed` event.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use time::OffsetDateTime;

/// Largest accepted job payload in bytes.
pub const MAX_JOB_BYTES: usize = 256 * 1024;
/// Largest email body (text or html) in bytes.
pub const MAX_EMAIL_BODY_BYTES: usize = 200 * 1024;
/// Email subject limit (RFC 5322 line length).
pub const MAX_SUBJECT_CHARS: usize = 998;
/// SMS body limit in characters (Twilio's documented maximum).
pub const MAX_SMS_CHARS: usize = 1600;
/// WhatsApp text body limit in characters (Meta's documented maximum).
pub const MAX_WHATSAPP_CHARS: usize = 4096;
/// Serialized metadata limit in bytes: it is echoed into every event.
pub const MAX_METADATA_BYTES: usize = 4096;

macro_rules! id_newtype {
    ($name:ident, $what:literal, $max:expr) => {
        id_newtype!($name, $what, $max, |_: &str| true, "");
    };
    ($name:ident, $what:literal, $max:expr, $extra:expr, $extra_rule:literal) => {
        #[doc = concat!("A validated ", $what, ": 1 to ", stringify!($max), " characters of `A-Z a-z 0-9 . _ : -`.")]
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub fn parse(s: &str) -> Result<Self, JobError> {
                let ok = !s.is_empty()
                    && s.len() <= $max
                    && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b))
                    && ($extra)(s);
                if ok {
                    Ok(Self(s.to_owned()))
                } else {
                    Err(JobError::InvalidField {
                        field: $what,
                        reason: format!(concat!("must be 1-", stringify!($max), " characters of A-Z a-z 0-9 . _ : -", $extra_rule, " (got {:?})"), truncate(s, 80)),
                    })
                }
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::parse(&s).map_err(serde::de::Error::custom)
            }
        }
    };
}

id_newtype!(JobId, "job_id", 128);
id_newtype!(
    TenantId,
    "tenant_id",
    64,
    tenant_id_rule,
    ", starting with a letter or digit, without `..`"
);

/// Tenant ids also name files, queues and URL path segments: they start
/// with an ASCII letter or digit and never contain `..` (so `.`, `..` and
/// other path-like ids are refused).
fn tenant_id_rule(s: &str) -> bool {
    s.as_bytes()[0].is_ascii_alphanumeric() && !s.contains("..")
}

/// The three delivery channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, sqlx::Type)]
#[serde(rename_all = "lowercase")]
#[sqlx(type_name = "channel", rename_all = "lowercase")]
pub enum Channel {
    Email,
    Sms,
    Whatsapp,
}

impl Channel {
    pub const ALL: [Channel; 3] = [Channel::Email, Channel::Sms, Channel::Whatsapp];

    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Email => "email",
            Channel::Sms => "sms",
            Channel::Whatsapp => "whatsapp",
        }
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Channel {
    type Err = JobError;
    fn from_str(s: &str) -> Result<Self, JobError> {
        match s {
            "email" => Ok(Channel::Email),
            "sms" => Ok(Channel::Sms),
            "whatsapp" => Ok(Channel::Whatsapp),
            other => Err(JobError::UnknownChannel(truncate(other, 40))),
        }
    }
}

/// A WhatsApp template message (pre-approved by Meta).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Template {
    pub name: String,
    /// Language code such as `en_US`.
    pub language: String,
    /// Body parameters, in order.
    #[serde(default)]
    pub parameters: Vec<String>,
}

/// What to send, already checked against the channel.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Content {
    Email {
        subject: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        text: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        html: Option<String>,
    },
    /// SMS or WhatsApp free text.
    Text { text: String },
    /// WhatsApp template.
    Template { template: Template },
}

/// A validated job.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    pub id: JobId,
    pub tenant_id: TenantId,
    pub channel: Channel,
    /// Email address (email) or E.164 number (sms, whatsapp).
    pub recipient: String,
    pub content: Content,
    /// Echoed verbatim into every delivery event.
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
    /// After this instant the job is not sent; it ends `expired`.
    pub not_after: Option<OffsetDateTime>,
}

/// Why a job was refused. `reason()` is the stable code used in dead-letter
/// headers, log rows and events; `Display` is the human explanation.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum JobError {
    #[error("payload is not valid UTF-8 (first bad byte at offset {0})")]
    InvalidUtf8(usize),
    #[error("payload is not valid JSON: {0}")]
    MalformedJson(String),
    #[error("payload is {size} bytes; the limit is {limit}")]
    TooLarge { size: usize, limit: usize },
    #[error("unsupported job version {0}; this worker understands version 1")]
    UnsupportedVersion(u64),
    #[error("missing field `{0}`")]
    MissingField(&'static str),
    #[error("unknown channel {0:?}; expected email, sms or whatsapp")]
    UnknownChannel(String),
    #[error("invalid recipient for {channel}: {reason}")]
    InvalidRecipient { channel: Channel, reason: String },
    #[error("invalid `{field}`: {reason}")]
    InvalidField { field: &'static str, reason: String },
    #[error("`{field}` is too long: {size} (limit {limit})")]
    FieldTooLong {
        field: &'static str,
        size: usize,
        limit: usize,
    },
    #[error("content does not fit the {channel} channel: {reason}")]
    WrongContent { channel: Channel, reason: String },
    /// A field version 1 does not have, named with its path
    /// (`content.attachments`); its value is never quoted.
    #[error("unknown field `{0}`: version 1 jobs carry only the fields in the README's job table")]
    UnknownField(String),
}

impl JobError {
    /// Stable machine-readable reason code.
    pub fn reason(&self) -> &'static str {
        self.code().as_str()
    }

    pub fn code(&self) -> Invalid {
        match self {
            JobError::InvalidUtf8(_) => Invalid::InvalidUtf8,
            JobError::MalformedJson(_) => Invalid::MalformedJson,
            JobError::TooLarge { .. } => Invalid::TooLarge,
            JobError::UnsupportedVersion(_) => Invalid::UnsupportedVersion,
            JobError::MissingField(_) => Invalid::MissingField,
            JobError::UnknownChannel(_) => Invalid::UnknownChannel,
            JobError::InvalidRecipient { .. } => Invalid::InvalidRecipient,
            JobError::InvalidField { .. } => Invalid::InvalidField,
            JobError::FieldTooLong { .. } => Invalid::FieldTooLong,
            JobError::WrongContent { .. } => Invalid::WrongContent,
            JobError::UnknownField(_) => Invalid::UnknownField,
        }
    }
}

/// The reason codes of [`JobError`], one per variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Invalid {
    InvalidUtf8,
    MalformedJson,
    TooLarge,
    UnsupportedVersion,
    MissingField,
    UnknownChannel,
    InvalidRecipient,
    InvalidField,
    FieldTooLong,
    WrongContent,
    UnknownField,
}

impl Invalid {
    pub const ALL: [Invalid; 11] = [
        Invalid::InvalidUtf8,
        Invalid::MalformedJson,
        Invalid::TooLarge,
        Invalid::UnsupportedVersion,
        Invalid::MissingField,
        Invalid::UnknownChannel,
        Invalid::InvalidRecipient,
        Invalid::InvalidField,
        Invalid::FieldTooLong,
        Invalid::WrongContent,
        Invalid::UnknownField,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Invalid::InvalidUtf8 => "invalid_utf8",
            Invalid::MalformedJson => "malformed_json",
            Invalid::TooLarge => "too_large",
            Invalid::UnsupportedVersion => "unsupported_version",
            Invalid::MissingField => "missing_field",
            Invalid::UnknownChannel => "unknown_channel",
            Invalid::InvalidRecipient => "invalid_recipient",
            Invalid::InvalidField => "invalid_field",
            Invalid::FieldTooLong => "field_too_long",
            Invalid::WrongContent => "wrong_content",
            Invalid::UnknownField => "unknown_field",
        }
    }
}

/// The loose shape first read from the wire; every field optional so that a
/// missing one gets a precise error instead of serde's generic message.
/// Unknown fields are refused (a `send_at` or `recipients` must not be
/// silently ignored); [`unknown_field`] then names the field. The field lists
/// below must match these structs (a test checks that).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WireJob {
    version: Option<u64>,
    job_id: Option<String>,
    tenant_id: Option<String>,
    channel: Option<String>,
    recipient: Option<String>,
    content: Option<WireContent>,
    #[serde(default, deserialize_with = "crate::strict_json::opt_object")]
    metadata: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    not_after: Option<OffsetDateTime>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WireContent {
    subject: Option<String>,
    text: Option<String>,
    html: Option<String>,
    template: Option<Template>,
}

const JOB_FIELDS: &[&str] = &[
    "version",
    "job_id",
    "tenant_id",
    "channel",
    "recipient",
    "content",
    "metadata",
    "not_after",
];
const CONTENT_FIELDS: &[&str] = &["subject", "text", "html", "template"];
const TEMPLATE_FIELDS: &[&str] = &["name", "language", "parameters"];

/// Longest field path quoted in an [`JobError::UnknownField`].
const MAX_FIELD_PATH_CHARS: usize = 64;

/// After serde refused a payload: the first field (in key order) that
/// version 1 does not have, at the top level, in `content` or in
/// `content.template`, as an [`JobError::UnknownField`]. Only run on the
/// error path, so valid jobs pay nothing for it. `metadata` is free-form.
fn unknown_field(v: &serde_json::Value) -> Option<JobError> {
    let path = |prefix: &str, key: &str| {
        let printable = key.chars().filter(|c| !is_invisible(*c));
        JobError::UnknownField(
            prefix
                .chars()
                .chain(printable)
                .take(MAX_FIELD_PATH_CHARS)
                .collect(),
        )
    };
    fn unknown<'a>(
        map: &'a serde_json::Map<String, serde_json::Value>,
        known: &[&str],
    ) -> Option<&'a str> {
        map.keys().map(String::as_str).find(|k| !known.contains(k))
    }
    let job = v.as_object()?;
    if let Some(k) = unknown(job, JOB_FIELDS) {
        return Some(path("", k));
    }
    let content = job.get("content")?.as_object()?;
    if let Some(k) = unknown(content, CONTENT_FIELDS) {
        return Some(path("content.", k));
    }
    let template = content.get("template")?.as_object()?;
    unknown(template, TEMPLATE_FIELDS).map(|k| path("content.template.", k))
}

/// Characters left out of a quoted field name: controls, and the invisible
/// format characters (zero-width, bidirectional overrides) that could
/// disguise it in a log.
fn is_invisible(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200b}'..='\u{200f}' | '\u{2028}'..='\u{202e}' | '\u{2060}'..='\u{2064}' | '\u{feff}')
}

/// PostgreSQL cannot store U+0000 in `text` or `jsonb`: a job carrying one
/// would make the whole batched log write fail, so it is refused up front.
fn check_no_nul(field: &'static str, s: &str) -> Result<(), JobError> {
    if s.contains('\0') {
        Err(nul_error(field))
    } else {
        Ok(())
    }
}

fn nul_error(field: &'static str) -> JobError {
    JobError::InvalidField {
        field,
        reason: "contains a NUL character (U+0000), which cannot be stored".into(),
    }
}

/// Whether a NUL is in any key or string of a JSON value.
fn json_has_nul(v: &serde_json::Value) -> bool {
    match v {
        serde_json::Value::String(s) => s.contains('\0'),
        serde_json::Value::Array(a) => a.iter().any(json_has_nul),
        serde_json::Value::Object(m) => map_has_nul(m),
        _ => false,
    }
}

fn map_has_nul(m: &serde_json::Map<String, serde_json::Value>) -> bool {
    m.iter().any(|(k, v)| k.contains('\0') || json_has_nul(v))
}

/// Identifiers read from a payload that failed validation, so the failure
/// can still be logged against its job and tenant.
#[derive(Debug, Clone, Default)]
pub struct Salvaged {
    pub job_id: Option<JobId>,
    pub tenant_id: Option<TenantId>,
    pub channel: Option<Channel>,
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
}

/// The `tenant_id` field of a payload, as written, without validating the rest.
pub fn peek_tenant(bytes: &[u8]) -> Option<String> {
    peek(bytes)
        .and_then(|p| p.tenant_id)
        .map(|t| t.into_owned())
}

/// The routing key a job is published with: `<tenant>.<channel>`
/// (`clinic-42.email`), so all of a tenant's jobs of a channel land in the
/// same work queue (their order is kept, a burst stays in that queue) and a
/// held queue can be bound to exactly them. Parts that cannot be read are
/// left out (`clinic-42`, ""): such jobs still reach a work queue.
pub fn routing_key_of(tenant_id: Option<&str>, channel: Option<&str>) -> String {
    match (tenant_id, channel) {
        (Some(t), Some(c)) => format!("{t}.{c}"),
        (Some(t), None) => t.to_owned(),
        (None, _) => String::new(),
    }
}

/// The routing key to publish a payload with ([`routing_key_of`] its
/// `tenant_id` and `channel`, as far as they can be read).
pub fn routing_key(bytes: &[u8]) -> String {
    let p = peek(bytes);
    let p = p.as_ref();
    routing_key_of(
        p.and_then(|p| p.tenant_id.as_deref()),
        p.and_then(|p| p.channel.as_deref()),
    )
}

#[derive(Deserialize)]
struct Peek<'a> {
    #[serde(borrow)]
    tenant_id: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    channel: Option<std::borrow::Cow<'a, str>>,
}

fn peek(bytes: &[u8]) -> Option<Peek<'_>> {
    serde_json::from_slice::<Peek>(bytes).ok()
}

impl Salvaged {
    /// Best-effort read of the ids from an invalid payload. Nothing is
    /// read from a payload with a duplicate key (which `job_id` would it
    /// be?): its failure is then logged against no job.
    pub fn from_payload(bytes: &[u8]) -> Self {
        let Ok(serde_json::Value::Object(map)) = crate::strict_json::from_slice(bytes) else {
            return Self::default();
        };
        let s = |k: &str| map.get(k).and_then(|v| v.as_str());
        Self {
            job_id: s("job_id").and_then(|v| JobId::parse(v).ok()),
            tenant_id: s("tenant_id").and_then(|v| TenantId::parse(v).ok()),
            channel: s("channel").and_then(|v| v.parse().ok()),
            // Left out when too big or when it holds a NUL, so that the
            // `failed` row itself can be written.
            metadata: map
                .get("metadata")
                .and_then(|v| v.as_object().cloned())
                .filter(|m| {
                    !map_has_nul(m)
                        && serde_json::to_vec(m)
                            .map(|b| b.len() <= MAX_METADATA_BYTES)
                            .unwrap_or(false)
                }),
        }
    }
}

impl Job {
    /// Decode and validate one payload.
    pub fn decode(bytes: &[u8]) -> Result<Job, JobError> {
        if bytes.len() > MAX_JOB_BYTES {
            return Err(JobError::TooLarge {
                size: bytes.len(),
                limit: MAX_JOB_BYTES,
            });
        }
        if let Err(e) = std::str::from_utf8(bytes) {
            return Err(JobError::InvalidUtf8(e.valid_up_to()));
        }
        let wire: WireJob = serde_json::from_slice(bytes).map_err(|_| Self::refused(bytes))?;
        Self::from_wire(wire)
    }

    /// The error for a payload serde refused: an unsupported version or an
    /// unknown field when the payload is a JSON object with one (an unknown
    /// field is a serde error too, but its message has no path), else
    /// [`wrong_type`] for a value of the wrong type, else the JSON syntax
    /// error (which quotes no value).
    #[cold]
    fn refused(bytes: &[u8]) -> JobError {
        // Strictly: a payload with a duplicate key is not read at all.
        let parsed = crate::strict_json::from_slice(bytes);
        if let Ok(v) = &parsed {
            match v.get("version").and_then(serde_json::Value::as_u64) {
                Some(version) if version != 1 => return JobError::UnsupportedVersion(version),
                _ => {}
            }
            if let Some(unknown) = unknown_field(v) {
                return unknown;
            }
        }
        let mut de = serde_json::Deserializer::from_slice(bytes);
        let Err(e) = serde_path_to_error::deserialize::<_, WireJob>(&mut de) else {
            return JobError::MalformedJson("not a version 1 job".into());
        };
        let path = e.path().clone();
        let e = e.into_inner();
        match (&parsed, e.classify()) {
            (Ok(v), serde_json::error::Category::Data) => {
                JobError::MalformedJson(wrong_type(v, &path, &e.to_string()))
            }
            _ => JobError::MalformedJson(e.to_string()),
        }
    }

    fn from_wire(w: WireJob) -> Result<Job, JobError> {
        match w.version {
            None | Some(1) => {}
            Some(v) => return Err(JobError::UnsupportedVersion(v)),
        }
        let id = JobId::parse(&w.job_id.ok_or(JobError::MissingField("job_id"))?)?;
        let tenant_id = TenantId::parse(&w.tenant_id.ok_or(JobError::MissingField("tenant_id"))?)?;
        let channel: Channel = w
            .channel
            .ok_or(JobError::MissingField("channel"))?
            .parse()?;
        let recipient = w.recipient.ok_or(JobError::MissingField("recipient"))?;
        check_no_nul("recipient", &recipient)?;
        validate_recipient(channel, &recipient)?;
        let content =
            validate_content(channel, w.content.ok_or(JobError::MissingField("content"))?)?;
        if let Some(m) = &w.metadata {
            if map_has_nul(m) {
                return Err(nul_error("metadata"));
            }
            let size = serde_json::to_vec(m).map(|b| b.len()).unwrap_or(usize::MAX);
            if size > MAX_METADATA_BYTES {
                return Err(JobError::FieldTooLong {
                    field: "metadata",
                    size,
                    limit: MAX_METADATA_BYTES,
                });
            }
        }
        Ok(Job {
            id,
            tenant_id,
            channel,
            recipient,
            content,
            metadata: w.metadata,
            not_after: w.not_after,
        })
    }

    /// The wire form of this job (used when it is re-published for a retry).
    pub fn to_wire(&self) -> serde_json::Value {
        let mut v = serde_json::json!({
            "version": 1,
            "job_id": self.id,
            "tenant_id": self.tenant_id,
            "channel": self.channel,
            "recipient": self.recipient,
            "content": self.content,
        });
        if let Some(m) = &self.metadata {
            v["metadata"] = serde_json::Value::Object(m.clone());
        }
        if let Some(t) = self.not_after {
            v["not_after"] = t
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default()
                .into();
        }
        v
    }
}

/// Check a recipient for a channel (email address or E.164 number).
pub fn validate_recipient(channel: Channel, r: &str) -> Result<(), JobError> {
    let bad = |reason: String| JobError::InvalidRecipient { channel, reason };
    match channel {
        Channel::Email => {
            if r.len() > 254 {
                return Err(bad("longer than 254 characters".into()));
            }
            // The address itself is not quoted: recipients are patient data,
            // and this text reaches logs and dead-letter headers.
            lettre::Address::from_str(r)
                .map(|_| ())
                .map_err(|e| bad(format!("not an email address ({e})")))
        }
        Channel::Sms | Channel::Whatsapp => {
            if is_e164(r) {
                Ok(())
            } else {
                Err(bad("not an E.164 number such as +14155550100".into()))
            }
        }
    }
}

/// E.164: a `+`, a non-zero country digit, 8 to 15 digits in all.
pub fn is_e164(s: &str) -> bool {
    let Some(digits) = s.strip_prefix('+') else {
        return false;
    };
    (8..=15).contains(&digits.len())
        && digits.bytes().all(|b| b.is_ascii_digit())
        && !digits.starts_with('0')
}

fn check_len(field: &'static str, size: usize, limit: usize) -> Result<(), JobError> {
    if size > limit {
        Err(JobError::FieldTooLong { field, size, limit })
    } else {
        Ok(())
    }
}

fn validate_content(channel: Channel, c: WireContent) -> Result<Content, JobError> {
    let wrong = |reason: &str| JobError::WrongContent {
        channel,
        reason: reason.into(),
    };
    match channel {
        Channel::Email => {
            if c.template.is_some() {
                return Err(wrong(
                    "templates are WhatsApp-only; send subject and text or html",
                ));
            }
            let subject = c.subject.ok_or(JobError::MissingField("content.subject"))?;
            check_no_nul("content.subject", &subject)?;
            if subject.trim().is_empty() {
                return Err(wrong("subject is empty"));
            }
            check_len(
                "content.subject",
                subject.chars().count(),
                MAX_SUBJECT_CHARS,
            )?;
            if subject.contains(['\r', '\n']) {
                return Err(wrong("subject contains a line break"));
            }
            if c.text.is_none() && c.html.is_none() {
                return Err(JobError::MissingField("content.text or content.html"));
            }
            for (field, body) in [("content.text", &c.text), ("content.html", &c.html)] {
                if let Some(b) = body {
                    check_len(field, b.len(), MAX_EMAIL_BODY_BYTES)?;
                    check_no_nul(field, b)?;
                }
            }
            Ok(Content::Email {
                subject,
                text: c.text,
                html: c.html,
            })
        }
        Channel::Sms | Channel::Whatsapp => {
            if c.subject.is_some() || c.html.is_some() {
                return Err(wrong("subject and html are email-only; send text"));
            }
            let limit = if channel == Channel::Sms {
                MAX_SMS_CHARS
            } else {
                MAX_WHATSAPP_CHARS
            };
            match (c.text, c.template) {
                (Some(_), Some(_)) => Err(wrong("send either text or template, not both")),
                (None, Some(_)) if channel == Channel::Sms => {
                    Err(wrong("templates are WhatsApp-only"))
                }
                (None, Some(t)) => {
                    if t.name.is_empty() || t.language.is_empty() {
                        return Err(wrong("template needs a name and a language"));
                    }
                    check_no_nul("content.template.name", &t.name)?;
                    check_no_nul("content.template.language", &t.language)?;
                    if t.parameters.iter().any(|p| p.contains('\0')) {
                        return Err(nul_error("content.template.parameters"));
                    }
                    Ok(Content::Template { template: t })
                }
                (Some(text), None) => {
                    if text.trim().is_empty() {
                        return Err(wrong("text is empty"));
                    }
                    check_len("content.text", text.chars().count(), limit)?;
                    check_no_nul("content.text", &text)?;
                    Ok(Content::Text { text })
                }
                (None, None) => Err(JobError::MissingField("content.text")),
            }
        }
    }
}

/// A value of the wrong type, in words that never quote it (it may be a
/// message text or a phone number): "`content.text`: expected a string,
/// found an array". serde's own message (`invalid type: string "Dear…",
/// expected …`) gives only the expectation, which names types, not values.
fn wrong_type(v: &serde_json::Value, path: &serde_path_to_error::Path, serde_said: &str) -> String {
    use serde_path_to_error::Segment;
    let mut at = Some(v);
    let mut name = String::new();
    for segment in path.iter() {
        match segment {
            Segment::Map { key } => {
                at = at.and_then(|v| v.get(key));
                if !name.is_empty() {
                    name.push('.');
                }
                name.extend(
                    key.chars()
                        .filter(|c| !is_invisible(*c))
                        .take(MAX_FIELD_PATH_CHARS),
                );
            }
            Segment::Seq { index } => {
                at = at.and_then(|v| v.get(index));
                name.push_str(&format!("[{index}]"));
            }
            Segment::Enum { .. } | Segment::Unknown => at = None,
        }
    }
    let field = if name.is_empty() {
        "the payload".to_owned()
    } else {
        format!("`{name}`")
    };
    let expected = serde_said
        .split_once(", expected ")
        .map(|(_, rest)| rest.split(" at line ").next().unwrap_or(rest))
        .map(|e| match e {
            "a string" | "a borrowed string" => "a string",
            "u8" | "u16" | "u32" | "u64" | "usize" => "a non-negative integer",
            "a map" => "an object",
            "a sequence" => "an array",
            e if e.starts_with("struct ") => "an object",
            _ => "another type",
        });
    let found = at.map(|v| match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(n) if n.is_f64() => "a number",
        serde_json::Value::Number(_) => "an integer",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    });
    match (expected, found) {
        (Some(e), Some(f)) => format!("{field}: expected {e}, found {f}"),
        (Some(e), None) => format!("{field}: expected {e}"),
        (None, _) => format!("{field}: not a valid value"),
    }
}

fn truncate(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn decode(v: serde_json::Value) -> Result<Job, JobError> {
        Job::decode(&serde_json::to_vec(&v).unwrap())
    }

    fn email() -> serde_json::Value {
        json!({"job_id": "j-1", "tenant_id": "clinic-1", "channel": "email",
               "recipient": "pat@example.com", "content": {"subject": "Hi", "text": "See you"}})
    }

    #[test]
    fn a_valid_email_job_decodes_and_round_trips() {
        let job = decode(email()).unwrap();
        assert_eq!(job.channel, Channel::Email);
        assert_eq!(
            Job::decode(&serde_json::to_vec(&job.to_wire()).unwrap()).unwrap(),
            job
        );
    }

    #[test]
    fn each_kind_of_bad_input_has_its_own_reason() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"{not json".to_vec(), "malformed_json"),
            (vec![b'{', 0xff, b'}'], "invalid_utf8"),
            (
                serde_json::to_vec(&{
                    let mut v = email();
                    v["channel"] = json!("fax");
                    v
                })
                .unwrap(),
                "unknown_channel",
            ),
            (
                serde_json::to_vec(&{
                    let mut v = email();
                    v["recipient"] = json!("nope");
                    v
                })
                .unwrap(),
                "invalid_recipient",
            ),
            (
                serde_json::to_vec(&{
                    let mut v = email();
                    v.as_object_mut().unwrap().remove("tenant_id");
                    v
                })
                .unwrap(),
                "missing_field",
            ),
            (
                serde_json::to_vec(&{
                    let mut v = email();
                    v["content"]["text"] = json!("x".repeat(MAX_EMAIL_BODY_BYTES + 1));
                    v
                })
                .unwrap(),
                "field_too_long",
            ),
            (
                serde_json::to_vec(&{
                    let mut v = email();
                    v["content"] = json!({"text": "no subject"});
                    v
                })
                .unwrap(),
                "missing_field",
            ),
            (vec![b' '; MAX_JOB_BYTES + 1], "too_large"),
            (
                serde_json::to_vec(&{
                    let mut v = email();
                    v["version"] = json!(2);
                    v
                })
                .unwrap(),
                "unsupported_version",
            ),
        ];
        for (payload, reason) in cases {
            let err = Job::decode(&payload).unwrap_err();
            assert_eq!(err.reason(), reason, "{err}");
        }
    }

    #[test]
    fn an_invalid_recipient_is_refused_without_quoting_it() {
        for (channel, to) in [
            (Channel::Email, "jane.doe-at-clinic.example"),
            (Channel::Sms, "0155-JANE-DOE"),
        ] {
            let e = validate_recipient(channel, to).unwrap_err();
            assert_eq!(e.reason(), "invalid_recipient");
            assert!(
                !e.to_string().contains("jane") && !e.to_string().contains("JANE"),
                "{e}"
            );
        }
    }

    #[test]
    fn sms_needs_an_e164_number_and_plain_text() {
        let base = json!({"job_id": "j", "tenant_id": "t", "channel": "sms",
                          "recipient": "+14155550100", "content": {"text": "hello"}});
        assert!(decode(base.clone()).is_ok());
        let mut v = base.clone();
        v["recipient"] = json!("0155550100");
        assert_eq!(decode(v).unwrap_err().reason(), "invalid_recipient");
        let mut v = base.clone();
        v["content"] = json!({"template": {"name": "n", "language": "en"}});
        assert_eq!(decode(v).unwrap_err().reason(), "wrong_content");
        let mut v = base;
        v["content"]["text"] = json!("x".repeat(MAX_SMS_CHARS + 1));
        assert_eq!(decode(v).unwrap_err().reason(), "field_too_long");
    }

    #[test]
    fn whatsapp_accepts_a_template() {
        let job = decode(json!({"job_id": "j", "tenant_id": "t", "channel": "whatsapp",
            "recipient": "+447700900123",
            "content": {"template": {"name": "appointment_reminder", "language": "en_US", "parameters": ["Tue 10:00"]}}}))
        .unwrap();
        assert!(matches!(job.content, Content::Template { .. }));
    }

    #[test]
    fn ids_of_an_invalid_job_are_salvaged_for_its_log_row() {
        let s = Salvaged::from_payload(br#"{"job_id":"j-9","tenant_id":"t","channel":"fax"}"#);
        assert_eq!(s.job_id.unwrap().as_str(), "j-9");
        assert_eq!(s.tenant_id.unwrap().as_str(), "t");
        assert!(s.channel.is_none());
    }

    fn whatsapp_template() -> serde_json::Value {
        json!({"job_id": "j", "tenant_id": "t", "channel": "whatsapp", "recipient": "+447700900123",
               "content": {"template": {"name": "appointment_reminder", "language": "en_US", "parameters": ["Tue 10:00"]}}})
    }

    fn unknown(v: serde_json::Value) -> String {
        match decode(v) {
            Err(e @ JobError::UnknownField(_)) => {
                assert_eq!(e.reason(), "unknown_field");
                let JobError::UnknownField(path) = &e else {
                    unreachable!()
                };
                assert!(e.to_string().contains(&format!("`{path}`")), "{e}");
                path.clone()
            }
            other => panic!("expected unknown_field, got {other:?}"),
        }
    }

    #[test]
    fn fields_version_1_does_not_have_are_refused_by_name() {
        let mut v = email();
        v["send_at"] = json!("2026-11-24T09:00:00Z");
        assert_eq!(unknown(v), "send_at");
        let mut v = email();
        v["recipients"] = json!(["a@example.com", "b@example.com"]);
        assert_eq!(unknown(v), "recipients");
        let mut v = email();
        let r = v.as_object_mut().unwrap().remove("recipient").unwrap();
        v["recipeint"] = r;
        assert_eq!(unknown(v), "recipeint");
        let mut v = email();
        v["locale"] = json!("de_DE");
        assert_eq!(unknown(v), "locale");
        let mut v = email();
        v["content"]["attachments"] = json!([{"name": "a.pdf", "data": "JVBERi0="}]);
        assert_eq!(unknown(v), "content.attachments");
        let mut v = whatsapp_template();
        v["content"]["template"]["components"] = json!([{"type": "header"}]);
        assert_eq!(unknown(v), "content.template.components");
    }

    #[test]
    fn a_wrong_typed_value_is_named_by_its_field_and_type_never_quoted() {
        let cases = [
            (
                "/content/text",
                json!(["Dear patient, call us"]),
                "`content.text`: expected a string, found an array",
            ),
            (
                "/content",
                json!("Dear patient, call us"),
                "`content`: expected an object, found a string",
            ),
            (
                "/recipient",
                json!(14155550123u64),
                "`recipient`: expected a string, found an integer",
            ),
            (
                "/version",
                json!("Dear patient, call us"),
                "`version`: expected a non-negative integer, found a string",
            ),
            (
                "/metadata",
                json!("Dear patient, call us"),
                "`metadata`: expected an object, found a string",
            ),
            (
                "/content/template/parameters/1",
                json!(14155550123u64),
                "`content.template.parameters[1]`: expected a string, found an integer",
            ),
        ];
        for (pointer, value, said) in cases {
            let mut v = email();
            v["version"] = json!(1);
            v["metadata"] = json!({});
            if pointer.starts_with("/content/template") {
                v["channel"] = json!("whatsapp");
                v["recipient"] = json!("+14155550100");
                v["content"] =
                    json!({"template": {"name": "t", "language": "en", "parameters": ["a", "b"]}});
            }
            *v.pointer_mut(pointer).unwrap() = value;
            let e = decode(v).unwrap_err();
            assert_eq!(e.reason(), "malformed_json", "{e}");
            let shown = e.to_string();
            assert!(shown.contains(said), "{pointer}: {shown}");
            assert!(
                !shown.contains("Dear patient") && !shown.contains("14155550123"),
                "{shown}"
            );
        }
    }

    #[test]
    fn metadata_stays_free_form() {
        let mut v = email();
        v["metadata"] = json!({"send_at": "x", "nested": {"recipients": [1, 2]}});
        assert!(decode(v).is_ok());
    }

    #[test]
    fn the_field_lists_match_what_serde_accepts() {
        // Each listed field is one serde knows: carrying it in a type serde
        // refuses is malformed, not an unknown field.
        let refused = |v: serde_json::Value, f: &str| match decode(v) {
            Err(JobError::MalformedJson(m)) => assert!(!m.contains("unknown field"), "{f}: {m}"),
            other => panic!("{f}: {other:?}"),
        };
        for f in JOB_FIELDS {
            let mut v = email();
            v[*f] = json!([]);
            refused(v, f);
        }
        for f in CONTENT_FIELDS {
            let mut v = email();
            v["content"][*f] = json!([]);
            refused(v, f);
        }
        for f in TEMPLATE_FIELDS {
            let mut v = whatsapp_template();
            v["content"]["template"][*f] = json!({});
            refused(v, f);
        }
        // And each field serde knows is listed: a payload with all of them
        // and another error is not reported as having an unknown field.
        let all = json!({"version": "one", "job_id": "j", "tenant_id": "t", "channel": "email",
            "recipient": "a@example.com", "metadata": {}, "not_after": "2026-11-24T09:00:00Z",
            "content": {"subject": "s", "text": "t", "html": "h",
                        "template": {"name": "n", "language": "en", "parameters": []}}});
        assert_eq!(decode(all).unwrap_err().reason(), "malformed_json");
    }

    #[test]
    fn an_unknown_field_name_is_cut_and_cleaned_before_it_is_quoted() {
        let mut v = email();
        v["content"][format!("a\u{0}b\u{7}c\u{202e}d\n{}", "x".repeat(100))] = json!(1);
        let path = unknown(v);
        assert!(path.starts_with("content.abcd"), "{path:?}");
        assert_eq!(path.chars().count(), MAX_FIELD_PATH_CHARS);
        assert!(!path.chars().any(is_invisible));
    }

    #[test]
    fn a_newer_version_with_new_fields_is_an_unsupported_version() {
        let mut v = email();
        v["version"] = json!(2);
        v["send_at"] = json!("2026-11-24T09:00:00Z");
        assert_eq!(decode(v).unwrap_err().reason(), "unsupported_version");
    }

    #[test]
    fn a_nul_in_any_text_field_is_refused_naming_the_field() {
        let nul = "a\u{0}b";
        let sms = || {
            json!({"job_id": "j", "tenant_id": "t", "channel": "sms",
                   "recipient": "+14155550100", "content": {"text": "hello"}})
        };
        let cases: Vec<(serde_json::Value, &str)> = vec![
            (
                {
                    let mut v = email();
                    v["recipient"] = json!(format!("pat{nul}@example.com"));
                    v
                },
                "recipient",
            ),
            (
                {
                    let mut v = sms();
                    v["recipient"] = json!("+1415555\u{0}0100");
                    v
                },
                "recipient",
            ),
            (
                {
                    let mut v = email();
                    v["content"]["subject"] = json!(nul);
                    v
                },
                "content.subject",
            ),
            (
                {
                    let mut v = email();
                    v["content"]["text"] = json!(nul);
                    v
                },
                "content.text",
            ),
            (
                {
                    let mut v = email();
                    v["content"]["html"] = json!(nul);
                    v
                },
                "content.html",
            ),
            (
                {
                    let mut v = sms();
                    v["content"]["text"] = json!(nul);
                    v
                },
                "content.text",
            ),
            (
                {
                    let mut v = whatsapp_template();
                    v["content"]["template"]["name"] = json!(nul);
                    v
                },
                "content.template.name",
            ),
            (
                {
                    let mut v = whatsapp_template();
                    v["content"]["template"]["language"] = json!(nul);
                    v
                },
                "content.template.language",
            ),
            (
                {
                    let mut v = whatsapp_template();
                    v["content"]["template"]["parameters"] = json!(["ok", nul]);
                    v
                },
                "content.template.parameters",
            ),
            (
                {
                    let mut v = email();
                    v["metadata"] = json!({"k": nul});
                    v
                },
                "metadata",
            ),
            (
                {
                    let mut v = email();
                    v["metadata"] = json!({nul: "v"});
                    v
                },
                "metadata",
            ),
            (
                {
                    let mut v = email();
                    v["metadata"] = json!({"a": [{"b": {"c": [1, nul]}}]});
                    v
                },
                "metadata",
            ),
        ];
        for (v, field) in cases {
            let err = decode(v.clone()).unwrap_err();
            assert_eq!(err.reason(), "invalid_field", "{v}: {err}");
            assert!(
                matches!(&err, JobError::InvalidField { field: f, .. } if *f == field),
                "{v}: {err:?}"
            );
            let msg = err.to_string();
            assert!(!msg.contains('\0') && !msg.contains("a\u{0}b"), "{msg:?}");
        }
        // The same job without the NUL decodes.
        let mut v = email();
        v["metadata"] = json!({"a": [{"b": {"c": [1, "ab"]}}]});
        assert!(decode(v).is_ok());
    }

    #[test]
    fn salvaged_metadata_with_a_nul_is_left_out() {
        let s = Salvaged::from_payload(
            br#"{"job_id":"j-9","tenant_id":"t","channel":"fax","metadata":{"k":"a\u0000b"}}"#,
        );
        assert_eq!(s.job_id.unwrap().as_str(), "j-9");
        assert!(s.metadata.is_none());
        let s = Salvaged::from_payload(
            br#"{"job_id":"j-9","tenant_id":"t","channel":"fax","metadata":{"a\u0000":1}}"#,
        );
        assert!(s.metadata.is_none());
        let s = Salvaged::from_payload(
            br#"{"job_id":"j-9","tenant_id":"t","channel":"fax","metadata":{"k":"v"}}"#,
        );
        assert_eq!(s.metadata.unwrap()["k"], "v");
    }

    proptest::proptest! {
        #[test]
        fn an_unknown_field_error_never_quotes_its_value(
            key in "[a-z_]{1,12}",
            marker in "[0-9]{6,12}",
            level in 0usize..3,
            shape in 0usize..4,
        ) {
            let known = [JOB_FIELDS, CONTENT_FIELDS, TEMPLATE_FIELDS][level];
            proptest::prop_assume!(!known.contains(&key.as_str()));
            let secret = format!("SECRET{marker}");
            let value = match shape {
                0 => json!(secret),
                1 => json!([secret]),
                2 => json!({"inner": secret}),
                _ => json!({ secret.clone(): {"deep": [secret]} }),
            };
            let mut v = whatsapp_template();
            match level {
                0 => v[&key] = value,
                1 => v["content"][&key] = value,
                _ => v["content"]["template"][&key] = value,
            }
            let err = decode(v).unwrap_err();
            proptest::prop_assert_eq!(err.reason(), "unknown_field");
            let msg = err.to_string();
            proptest::prop_assert!(!msg.contains(&marker), "{}", msg);
            proptest::prop_assert!(!msg.contains("SECRET"), "{}", msg);
            let prefix = ["", "content.", "content.template."][level];
            proptest::prop_assert_eq!(err, JobError::UnknownField(format!("{prefix}{key}")));
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = Job::decode(&bytes);
        }

        #[test]
        fn e164_accepts_exactly_plus_and_8_to_15_digits(d in "[1-9][0-9]{0,20}") {
            proptest::prop_assert_eq!(is_e164(&format!("+{d}")), (8..=15).contains(&d.len()));
        }
    }
}
