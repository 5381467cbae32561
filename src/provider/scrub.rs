//! What must not leave an adapter in an error: the account's credentials,
//! the job's recipient and the job's content (health information), in every
//! spelling the adapter put on the wire and a provider may echo back.
//!
//! Scrubbing comes before any cut. [`Scrubber::read`] classifies a provider's
//! answer by what it said but words the error from the answer scrubbed first,
//! so the body excerpt (200 characters) and the decoded provider message are
//! cut from scrubbed text; [`Scrubber::error`] scrubs the message again and
//! only then cuts it to [`MAX_ERROR_CHARS`]. A cut can therefore never leave
//! half a secret that no longer looks like the secret.
//!
//! Each item is looked for in these spellings, case-insensitively (`%2f`
//! and `%2F`, an address echoed in lower case; letters whose lower case has
//! another length in UTF-8 excepted): as is, form- and
//! query-encoded (`+` or `%20` for spaces), JSON-escaped (also with `\/`,
//! with `\uXXXX` for non-ASCII as Python's `json` writes, and for `<>&'` as
//! Go's does), with whitespace runs collapsed (as a body excerpt shows it),
//! quoted-printable and base64 (SMTP bodies; RFC 2047 `Q` words). Besides
//! whole copies, any run of [`WINDOW`] bytes of a spelling is removed (a copy
//! a provider cut or quoted in part, a quoted-printable or base64 line of a
//! body), and its first [`MIN_LEN`] bytes or more at the end of the text
//! (a copy the provider cut).

use super::ProviderError;
use super::http::Answer;
use std::collections::HashMap;

/// Longest provider error message kept (characters), after scrubbing.
pub const MAX_ERROR_CHARS: usize = 400;

/// Items shorter than this are not looked for (too short to be told from
/// ordinary text); so are pieces at the text's ends shorter than this.
pub const MIN_LEN: usize = 4;

/// Bytes of a spelling that, found anywhere, are taken for a copy of it.
pub const WINDOW: usize = 12;

/// What must not appear in provider error text before it is logged, stored
/// or published. The adapters feed it what they sent.
#[derive(Default, Clone)]
pub struct Scrubber {
    items: Vec<Item>,
}

#[derive(Clone)]
struct Item {
    /// Every spelling, in lower case ([`fold`]), at least [`MIN_LEN`] bytes.
    spellings: Vec<String>,
    mark: &'static str,
}

impl Scrubber {
    pub fn new() -> Self {
        Self::default()
    }

    fn add(mut self, s: &str, mark: &'static str) -> Self {
        let spellings = spellings(s);
        if !spellings.is_empty() {
            self.items.push(Item { spellings, mark });
        }
        self
    }

    /// A credential sent as is (bearer token, form field, query parameter).
    pub fn secret(self, s: &str) -> Self {
        self.add(s, "[redacted]")
    }

    /// HTTP Basic credentials: the password and `base64(user:password)`.
    pub fn basic(self, user: &str, password: &str) -> Self {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        self.secret(password).secret(&b64)
    }

    /// SMTP AUTH: the password, base64 of it (LOGIN) and of `\0user\0password` (PLAIN).
    pub fn smtp_auth(self, user: &str, password: &str) -> Self {
        use base64::Engine as _;
        let e = &base64::engine::general_purpose::STANDARD;
        let login = e.encode(password);
        let plain = e.encode(format!("\0{user}\0{password}"));
        self.secret(password).secret(&login).secret(&plain)
    }

    /// A recipient (also without its `+`: some APIs take numbers bare).
    pub fn recipient(self, r: &str) -> Self {
        let bare = r.strip_prefix('+').map(str::to_owned);
        let s = self.add(r, "[recipient]");
        match bare {
            Some(b) => s.add(&b, "[recipient]"),
            None => s,
        }
    }

    /// A piece of message content (subject, text, html, template parameter).
    pub fn content(self, t: &str) -> Self {
        self.add(t, "[content]")
    }

    /// The job's recipient and every piece of its content.
    pub fn job(self, job: &crate::job::Job) -> Self {
        use crate::job::Content;
        let mut s = self.recipient(&job.recipient);
        match &job.content {
            Content::Email {
                subject,
                text,
                html,
            } => {
                s = s.content(subject);
                for t in text.iter().chain(html) {
                    s = s.content(t);
                }
            }
            Content::Text { text } => s = s.content(text),
            Content::Template { template } => {
                for p in &template.parameters {
                    s = s.content(p);
                }
            }
        }
        s
    }

    /// `text` with every copy of every item replaced by the item's mark.
    pub fn text(&self, text: &str) -> String {
        // Longest first: a recipient inside a content item goes with it.
        let mut items: Vec<&Item> = self.items.iter().collect();
        items.sort_by_key(|i| std::cmp::Reverse(i.spellings.first().map_or(0, String::len)));
        items
            .into_iter()
            .fold(text.to_owned(), |out, item| redact(&out, item))
    }

    /// Every string (key or value) and number of `v` scrubbed.
    fn json(&self, v: serde_json::Value) -> serde_json::Value {
        use serde_json::Value;
        match v {
            Value::String(s) => Value::String(self.text(&s)),
            Value::Number(n) => {
                let shown = n.to_string();
                let scrubbed = self.text(&shown);
                if scrubbed == shown {
                    Value::Number(n)
                } else {
                    Value::String(scrubbed)
                }
            }
            Value::Array(a) => Value::Array(a.into_iter().map(|v| self.json(v)).collect()),
            Value::Object(m) => Value::Object(
                m.into_iter()
                    .map(|(k, v)| (self.text(&k), self.json(v)))
                    .collect(),
            ),
            other => other,
        }
    }

    /// The error with its message and code scrubbed, then the message cut
    /// to [`MAX_ERROR_CHARS`].
    pub fn error(&self, mut e: ProviderError) -> ProviderError {
        let mut message = self.text(&e.message);
        if message.chars().count() > MAX_ERROR_CHARS {
            message = message.chars().take(MAX_ERROR_CHARS - 1).collect();
            message.push('…');
        }
        e.message = message;
        e.code = e.code.map(|c| self.text(&c));
        e
    }

    /// `read(answer)`; on an error, its kind, code and wait hint as read
    /// from the answer, its message as read from the answer scrubbed (so
    /// every excerpt and cut `read` makes sees scrubbed text), then
    /// [`Self::error`]. The scrubber is built by `scrubber`, only for an
    /// error: a success (the hot path) computes no spellings.
    pub fn read<T>(
        answer: Answer,
        read: impl Fn(&Answer) -> Result<T, ProviderError>,
        scrubber: impl FnOnce() -> Scrubber,
    ) -> Result<T, ProviderError> {
        let first = match read(&answer) {
            Ok(receipt) => return Ok(receipt),
            Err(e) => e,
        };
        scrubber().scrubbed(answer, read, first)
    }

    fn scrubbed<T>(
        &self,
        answer: Answer,
        read: impl Fn(&Answer) -> Result<T, ProviderError>,
        first: ProviderError,
    ) -> Result<T, ProviderError> {
        // A JSON answer is scrubbed value by value, so its shape survives
        // for `read` (a copy found across an escape could take a quote).
        let body = match serde_json::from_slice::<serde_json::Value>(&answer.body) {
            Ok(v) => serde_json::to_vec(&self.json(v)).unwrap_or_default(),
            Err(_) => self
                .text(&String::from_utf8_lossy(&answer.body))
                .into_bytes(),
        };
        let scrubbed = Answer { body, ..answer };
        let message = match read(&scrubbed) {
            Err(e) => e.message,
            // Only if scrubbing changed what the answer means: say nothing of it.
            Ok(_) => "the provider's answer echoed what was sent and is not shown".into(),
        };
        Err(self.error(ProviderError { message, ..first }))
    }
}

/// Every spelling of `s` on the wire or in an echo (see the module
/// header), lowercased, deduplicated, longest first.
fn spellings(s: &str) -> Vec<String> {
    use base64::Engine as _;
    let collapsed = s.split_whitespace().collect::<Vec<_>>().join(" ");
    let crlf = s.replace("\r\n", "\n").replace('\n', "\r\n");
    let b64 = &base64::engine::general_purpose::STANDARD;
    let mut out = Vec::new();
    for v in [s, collapsed.as_str()] {
        let form: String = url::form_urlencoded::byte_serialize(v.as_bytes()).collect();
        out.push(form.replace('+', "%20"));
        out.push(form);
        let json = json_escaped(v);
        out.push(json.replace('/', "\\/"));
        out.push(ascii_json(&json, false));
        out.push(ascii_json(&json, true));
        out.push(json);
        out.push(v.to_owned());
    }
    let qp = quoted_printable(&crlf);
    out.push(qp.replace(' ', "_"));
    out.push(qp);
    out.push(b64.encode(&crlf));
    out.push(b64.encode(s));
    let mut out: Vec<String> = out
        .into_iter()
        .filter(|v| v.len() >= MIN_LEN)
        .map(|v| fold(&v))
        .collect();
    out.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
    out.dedup();
    out
}

/// `s` in lower case where that keeps every character's length in bytes
/// (ASCII, most Latin letters), so positions in it are positions in `s`.
fn fold(s: &str) -> String {
    if s.is_ascii() {
        return s.to_ascii_lowercase();
    }
    s.chars()
        .map(|c| {
            let mut lower = c.to_lowercase();
            match (lower.next(), lower.next()) {
                (Some(l), None) if l.len_utf8() == c.len_utf8() => l,
                _ => c,
            }
        })
        .collect()
}

/// `s` as inside a JSON string (serde_json's escaping, quotes removed).
fn json_escaped(s: &str) -> String {
    let json = serde_json::to_string(s).unwrap_or_default();
    json.get(1..json.len().saturating_sub(1))
        .unwrap_or_default()
        .to_owned()
}

/// A JSON-escaped string with non-ASCII as `\uXXXX` (UTF-16), and with
/// `html` also `<`, `>`, `&` and `'` escaped that way.
fn ascii_json(json: &str, html: bool) -> String {
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        if c.is_ascii() && !(html && matches!(c, '<' | '>' | '&' | '\'')) {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for u in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{u:04x}"));
            }
        }
    }
    out
}

/// Quoted-printable (RFC 2045) without soft line breaks: a line of an
/// encoded body, or a run of lines joined by CRLF.
fn quoted_printable(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for (i, line) in s.split("\r\n").enumerate() {
        if i > 0 {
            out.push_str("\r\n");
        }
        for &b in line.as_bytes() {
            if (b == b' ' || b.is_ascii_graphic()) && b != b'=' {
                out.push(b as char);
            } else {
                out.push_str(&format!("={b:02X}"));
            }
        }
    }
    out
}

/// Replace every copy of `item` in `text` (whole, any [`WINDOW`] of it, its
/// start at the end of the text) with its mark, adjacent copies by one mark.
fn redact(text: &str, item: &Item) -> String {
    let lower = fold(text);
    let hay = lower.as_bytes();
    let mut covered = vec![false; hay.len()];
    let mut cover = |from: usize, len: usize| covered[from..from + len].fill(true);
    // A text cut by an excerpt ends in `…`; its last piece is before it.
    let end = lower.strip_suffix('…').map_or(hay.len(), str::len);
    let mut windows: Option<Windows> = None;
    for sp in &item.spellings {
        let sp_bytes = sp.as_bytes();
        if sp_bytes.len() < WINDOW {
            for (at, _) in lower.match_indices(sp.as_str()) {
                cover(at, sp_bytes.len());
            }
        } else {
            // Each window of the text is consumed when it matches, so a
            // text and an item that repeat one pattern stay linear.
            let index = windows.get_or_insert_with(|| Windows::of(hay));
            for piece in sp_bytes.windows(WINDOW) {
                for at in index.take(piece) {
                    cover(at, WINDOW);
                }
            }
        }
        let longest = (WINDOW - 1).min(sp_bytes.len()).min(end);
        if let Some(k) = (MIN_LEN..=longest)
            .rev()
            .find(|&k| hay[..end].ends_with(&sp_bytes[..k]))
        {
            cover(end - k, k);
        }
    }
    render(text, &covered, item.mark)
}

/// Where each [`WINDOW`] of a text starts, and which two-byte starts occur
/// at all (most pieces of an item are not in the text: they are turned
/// away without hashing).
struct Windows<'a> {
    at: HashMap<&'a [u8], Vec<usize>>,
    starts: Vec<bool>,
}

impl<'a> Windows<'a> {
    fn of(hay: &'a [u8]) -> Self {
        let mut w = Windows {
            at: HashMap::new(),
            starts: vec![false; 1 << 16],
        };
        for (at, piece) in hay.windows(WINDOW).enumerate() {
            w.starts[Self::start(piece)] = true;
            w.at.entry(piece).or_default().push(at);
        }
        w
    }

    fn start(piece: &[u8]) -> usize {
        usize::from(piece[0]) << 8 | usize::from(piece[1])
    }

    /// Where `piece` starts in the text, once: a piece found is removed.
    fn take(&mut self, piece: &[u8]) -> Vec<usize> {
        if !self.starts[Self::start(piece)] {
            return Vec::new();
        }
        self.at.remove(piece).unwrap_or_default()
    }
}

/// `text` with each run of characters any byte of which is covered
/// replaced by one `mark`.
fn render(text: &str, covered: &[bool], mark: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_run = false;
    for (at, c) in text.char_indices() {
        if covered[at..at + c.len_utf8()].contains(&true) {
            if !in_run {
                out.push_str(mark);
            }
            in_run = true;
        } else {
            out.push(c);
            in_run = false;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::http::status_error;
    use proptest::prelude::*;
    use reqwest::header::HeaderMap;

    fn secret(s: &str, text: &str) -> String {
        Scrubber::new().secret(s).text(text)
    }

    /// What an adapter shows of an answer `body` it did not understand.
    fn shown(scrubber: &Scrubber, body: &str) -> String {
        let answer = Answer {
            status: 400,
            headers: HeaderMap::new(),
            body: body.as_bytes().to_vec(),
        };
        let read = |a: &Answer| -> Result<(), ProviderError> {
            Err(status_error("x", a.status, &a.headers, None, "", &a.body))
        };
        Scrubber::read(answer, read, || scrubber.clone())
            .unwrap_err()
            .message
    }

    #[test]
    fn every_copy_of_a_secret_is_replaced() {
        assert_eq!(
            secret("s3cr3t!", "key s3cr3t! and s3cr3t! again"),
            "key [redacted] and [redacted] again"
        );
        assert_eq!(secret("s3/cr3t", "a=s3%2Fcr3t"), "a=[redacted]");
        assert_eq!(secret("s3/cr3t", "a=S3%2fCR3T"), "a=[redacted]");
    }

    #[test]
    fn a_secret_cut_at_the_end_of_the_text_is_replaced() {
        assert_eq!(secret("s3cr3t!", "cut at s3cr"), "cut at [redacted]");
        assert_eq!(secret("s3cr3t-and-more", "s3cr3"), "[redacted]");
        assert_eq!(
            secret("CNRYvs3#special", "api_secret=CNRYvs3%23sp…"),
            "api_secret=[redacted]…"
        );
    }

    #[test]
    fn a_secret_echoed_with_json_escaped_slashes_is_replaced() {
        assert_eq!(
            secret("a/b+c/d0", r#"{"m":"key a\/b+c\/d0"}"#),
            r#"{"m":"key [redacted]"}"#
        );
    }

    #[test]
    fn a_recipient_echoed_in_lower_case_is_replaced() {
        let s = Scrubber::new().recipient("Jane.Doe@Clinic.Example");
        assert_eq!(
            s.text("550 5.1.1 <jane.doe@clinic.example>: rejected"),
            "550 5.1.1 <[recipient]>: rejected"
        );
    }

    #[test]
    fn a_quoted_printable_line_of_the_text_is_replaced() {
        let s = Scrubber::new().content("Résultat de votre biopsie : appelez-nous.");
        assert_eq!(
            s.text("554 refused: R=C3=A9sultat de votre biopsie : appelez-nous."),
            "554 refused: [content]"
        );
    }

    #[test]
    fn text_echoed_with_unicode_escapes_is_replaced() {
        let s = Scrubber::new().content("Résultat <positif> & à revoir");
        assert_eq!(
            s.text(r#"{"m":"R\u00e9sultat \u003cpositif\u003e \u0026 \u00e0 revoir"}"#),
            r#"{"m":"[content]"}"#
        );
    }

    #[test]
    fn part_of_a_long_text_quoted_anywhere_is_replaced() {
        let s = Scrubber::new().content("Dear patient, your biopsy result is ready.");
        assert_eq!(
            s.text("said: 'your biopsy res' (cut)"),
            "said: '[content]' (cut)"
        );
    }

    #[test]
    fn an_excerpt_of_an_echoed_secret_is_scrubbed() {
        let body = format!("{{\"oops\": \"token={}\"}}", "s3cr3t-token");
        let s = Scrubber::new().secret("s3cr3t-token");
        assert_eq!(
            shown(&s, &body),
            r#"x: HTTP 400: {"oops":"token=[redacted]"}"#
        );
    }

    #[test]
    fn a_json_answer_keeps_its_shape_when_a_copy_runs_into_an_escape() {
        // The html's `\u003c` spelling shares "u at 10:00.\" with the
        // text's copy followed by `\"`: scrubbed as text, the quote's
        // backslash would go and the provider's message with it.
        let s = Scrubber::new()
            .content("See you at 10:00.")
            .content("<p>See you at 10:00.</p>");
        let echo =
            r#"{"content":[{"value":"See you at 10:00."},{"value":"<p>See you at 10:00.</p>"}]}"#;
        let body = serde_json::json!({"message": echo}).to_string();
        let answer = Answer {
            status: 400,
            headers: HeaderMap::new(),
            body: body.into_bytes(),
        };
        let read = |a: &Answer| -> Result<(), ProviderError> {
            let said: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
            Err(ProviderError::new(
                crate::provider::ErrorKind::Content,
                None,
                format!("x: {}", said["message"].as_str().unwrap()),
            ))
        };
        assert_eq!(
            Scrubber::read(answer, read, || s).unwrap_err().message,
            r#"x: {"content":[{"value":"[content]"},{"value":"[content]"}]}"#
        );
    }

    #[test]
    fn scrubbing_a_long_secret_in_a_long_text_stays_cheap() {
        let long = "k".repeat(200_000);
        let text = "x".repeat(200_000);
        let started = std::time::Instant::now();
        assert_eq!(secret(&long, &text), text);
        let same = "x".repeat(100_000);
        assert_eq!(secret(&same, &text), "[redacted]");
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
    }

    /// The spellings a test expects gone, written independently of
    /// [`spellings`]: as is, both form encodings, JSON, quoted-printable,
    /// lower and upper case.
    fn wire_spellings(s: &str) -> Vec<String> {
        let form: String = url::form_urlencoded::byte_serialize(s.as_bytes()).collect();
        let json = serde_json::to_string(s).unwrap();
        let qp: String = s
            .bytes()
            .map(|b| match b {
                b'=' => "=3D".to_owned(),
                b' ' | 0x21..=0x7e => (b as char).to_string(),
                _ => format!("={b:02X}"),
            })
            .collect();
        vec![
            s.to_owned(),
            form.replace('+', "%20"),
            form,
            json[1..json.len() - 1].to_owned(),
            qp,
            s.to_lowercase(),
            s.to_uppercase(),
        ]
    }

    /// Which item: a secret, a recipient (email or number) or content.
    fn item() -> impl Strategy<Value = (u8, String)> {
        prop_oneof![
            "[A-Za-z0-9#&/+=%é ]{12,40}".prop_map(|s| (0, s)),
            "[A-Za-z][A-Za-z0-9.]{3,12}@[A-Za-z]{3,9}\\.[a-z]{2,4}".prop_map(|s| (1, s)),
            "\\+[1-9][0-9]{9,13}".prop_map(|s| (1, s)),
            "[A-Za-zéà,.:!?'<>& ]{12,300}".prop_map(|s| (2, s)),
        ]
    }

    proptest! {
        #[test]
        fn an_item_in_any_spelling_never_survives_scrub_and_cut(
            (which, s) in item(),
            pad in 0usize..420,
            spelling in 0usize..7,
        ) {
            prop_assume!(s.split_whitespace().map(str::len).sum::<usize>() >= WINDOW);
            let scrubber = match which {
                0 => Scrubber::new().secret(&s),
                1 => Scrubber::new().recipient(&s),
                _ => Scrubber::new().content(&s),
            };
            let spelled = wire_spellings(&s)[spelling].clone();
            // `pad` moves the echo across the excerpt's and the message's cuts.
            let body = format!("{{\"error\":\"{} {spelled} tail\"}}", "p".repeat(pad));
            let got = shown(&scrubber, &body).to_lowercase();
            for v in wire_spellings(&s) {
                let v = v.to_lowercase();
                let head: String = v.chars().take(WINDOW).collect();
                prop_assert!(!got.contains(&head), "{:?} in {:?}", head, got);
            }
            prop_assert!(got.chars().count() <= MAX_ERROR_CHARS);
        }
    }
}
