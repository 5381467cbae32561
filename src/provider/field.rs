//! Checks of one settings field, shared by the adapters' `validate()`s,
//! and the error they give. A leaf of `provider/`: every adapter uses it,
//! and it uses none (the registry of all of them is [`super::settings`]).

/// Bad provider settings: names the field, never its value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid `{field}`: {reason}")]
pub struct SettingsError {
    pub field: String,
    pub reason: String,
}

impl SettingsError {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

pub(super) fn non_empty(field: &str, v: &str) -> Result<(), SettingsError> {
    if v.trim().is_empty() {
        Err(SettingsError::new(field, "must not be empty"))
    } else {
        Ok(())
    }
}

pub(super) fn email(field: &str, v: &str) -> Result<(), SettingsError> {
    if v.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(SettingsError::new(
            field,
            "not an email address (contains a space, line break or control character)",
        ));
    }
    v.parse::<lettre::Address>()
        .map(|_| ())
        .map_err(|_| SettingsError::new(field, "not an email address"))
}

/// Longest sender display name accepted (`from_name`).
pub const MAX_DISPLAY_NAME: usize = 128;

/// A value an adapter writes into a message header, an address or a
/// protocol line (sender names, user names, categories): one line of at
/// most `max` characters. A line break would end the header and start
/// another (header injection), and the mail library refuses, or panics
/// on, one it is asked to write; other control and invisible
/// line-separator characters are refused with it.
pub(super) fn header_text(field: &str, v: &str, max: usize) -> Result<(), SettingsError> {
    if v.chars()
        .any(|c| c.is_control() || matches!(c, '\u{2028}' | '\u{2029}'))
    {
        return Err(SettingsError::new(
            field,
            "must be one line without control characters (no CR, LF or tab)",
        ));
    }
    if v.chars().count() > max {
        return Err(SettingsError::new(
            field,
            format!("longer than {max} characters"),
        ));
    }
    Ok(())
}

/// An optional [`header_text`].
pub(super) fn opt_header_text(
    field: &str,
    v: &Option<String>,
    max: usize,
) -> Result<(), SettingsError> {
    v.as_deref().map_or(Ok(()), |v| header_text(field, v, max))
}

pub(super) fn opt_url(field: &str, v: &Option<String>) -> Result<(), SettingsError> {
    match v {
        Some(u) => match url::Url::parse(u) {
            Ok(u) if u.scheme() == "https" || u.scheme() == "http" => Ok(()),
            _ => Err(SettingsError::new(field, "expected an http(s) URL")),
        },
        None => Ok(()),
    }
}

pub(super) fn is_sid(s: &str, prefix: &str) -> bool {
    s.len() == 34 && s.starts_with(prefix) && s[2..].bytes().all(|b| b.is_ascii_hexdigit())
}

/// `eu-west-1`, `us-gov-west-1`, `ap-southeast-2`…
pub(super) fn is_aws_region(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.len() >= 3
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        })
        && parts
            .last()
            .is_some_and(|p| p.bytes().all(|b| b.is_ascii_digit()))
}
