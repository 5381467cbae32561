//! What the HTTP adapters share: the pooled client, `Retry-After` parsing and
//! the generic reading of a status code, the capped reading of an answer.

use super::{ErrorKind, ProviderError};
use reqwest::header::HeaderMap;
use std::time::{Duration, SystemTime};

/// `User-Agent` sent to every provider.
pub const USER_AGENT: &str = concat!("outreach/", env!("CARGO_PKG_VERSION"));

/// The one pooled, rustls-backed client every HTTP adapter reuses: a
/// connect timeout and a whole-request timeout on every call, redirects never
/// followed (a provider's redirect could point anywhere), and a resolver
/// that drops every address `policy` refuses.
pub fn client(
    timeout: Duration,
    connect_timeout: Duration,
    policy: std::sync::Arc<super::net::NetworkPolicy>,
) -> reqwest::Client {
    reqwest::Client::builder()
        .user_agent(USER_AGENT)
        .timeout(timeout)
        .connect_timeout(connect_timeout)
        .redirect(reqwest::redirect::Policy::none())
        .dns_resolver(std::sync::Arc::new(super::net::GuardedResolver { policy }))
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(256)
        .tcp_nodelay(true)
        .build()
        .expect("the HTTP client configuration is static and valid")
}

/// Reads `Retry-After` (seconds or an HTTP date), then `X-RateLimit-Reset`
/// (epoch seconds, as SendGrid sends), relative to `now`.
pub fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    if let Some(v) = headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
    {
        let v = v.trim();
        if let Ok(secs) = v.parse::<f64>()
            && secs.is_finite()
            && secs >= 0.0
        {
            return Some(Duration::from_secs_f64(secs.min(1e6)));
        }
        if let Ok(at) = httpdate_parse(v) {
            return Some(at.duration_since(now).unwrap_or_default());
        }
    }
    let reset = headers
        .get("x-ratelimit-reset")
        .and_then(|v| v.to_str().ok())?
        .trim()
        .parse::<u64>()
        .ok()?;
    let at = SystemTime::UNIX_EPOCH + Duration::from_secs(reset);
    Some(at.duration_since(now).unwrap_or_default())
}

fn httpdate_parse(s: &str) -> Result<SystemTime, ()> {
    let fmt = time::macros::format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    let dt = time::PrimitiveDateTime::parse(s, &fmt).map_err(|_| ())?;
    Ok(SystemTime::from(dt.assume_utc()))
}

/// The class of an HTTP status when the body has nothing more precise.
///
/// | status        | kind        | scope                         |
/// |---------------|-------------|-------------------------------|
/// | 429           | RateLimited | neither (waits for the hint)  |
/// | 401, 403      | Config      | account (credentials refused) |
/// | 408, 5xx      | Transient   | account                       |
/// | 404           | Provider    | account                       |
/// | 413, other 4xx| Content     | neither (this message)        |
pub fn kind_for_status(status: u16) -> ErrorKind {
    match status {
        429 => ErrorKind::RateLimited,
        401 | 403 => ErrorKind::Config,
        408 | 500..=599 => ErrorKind::Transient,
        413 => ErrorKind::Content,
        404 => ErrorKind::Provider,
        400..=499 => ErrorKind::Content,
        _ => ErrorKind::Transient,
    }
}

/// A request that got no answer: timeouts and connection errors are worth a
/// retry; a server certificate that does not verify is [`ErrorKind::Config`]
/// (waiting will not make it verify).
pub fn transport_error(provider: &str, e: &reqwest::Error) -> ProviderError {
    if let Some(why) = certificate_problem(e) {
        let host = e.url().and_then(|u| u.host_str()).unwrap_or("the server");
        return ProviderError::new(
            ErrorKind::Config,
            Some(certificate_code(&why)),
            format!(
                "{provider}: certificate for {host} does not verify ({why}): fix the server certificate or the account's base_url"
            ),
        );
    }
    if let Some(why) = refusal(e) {
        return refused(provider, &why);
    }
    // reqwest's Display includes the URL; our URLs carry no secrets (Twilio's
    // account SID is an identifier, not a credential), but keep it short.
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else if e.is_body() || e.is_decode() {
        "response could not be read"
    } else {
        "request failed"
    };
    ProviderError::new(ErrorKind::Transient, None, format!("{provider}: {what}"))
}

/// The error for an address the network policy refuses: Config (waiting
/// will not change it), code `address_refused`.
pub fn refused(provider: &str, why: &str) -> ProviderError {
    ProviderError::new(
        ErrorKind::Config,
        Some("address_refused".into()),
        format!("{provider}: {why}"),
    )
}

/// The resolver's refusal, if that is why the request failed.
fn refusal(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut next = Some(e);
    let mut depth = 0;
    while let Some(err) = next {
        if let Some(r) = err.downcast_ref::<super::net::Refused>() {
            return Some(r.to_string());
        }
        if let Some(super::net::ResolveError::Refused(r)) =
            err.downcast_ref::<super::net::ResolveError>()
        {
            return Some(r.to_string());
        }
        depth += 1;
        if depth > 32 {
            break;
        }
        next = err.source();
    }
    None
}

/// Why the server's certificate did not verify, if that is what `e` (or an
/// error in its `source()` chain) says: a `rustls::Error::InvalidCertificate`
/// found through the chain and through `std::io::Error::get_ref` (an
/// `io::Error`'s own `source()` skips the error it wraps, and TLS streams
/// report handshake failures as `io::Error`s), else any error in the chain
/// whose text mentions a certificate.
pub fn certificate_problem(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    fn walk(e: &(dyn std::error::Error + 'static), depth: usize) -> Option<String> {
        if depth > 32 {
            return None;
        }
        if let Some(rustls::Error::InvalidCertificate(ce)) = e.downcast_ref::<rustls::Error>() {
            return Some(describe_certificate_error(ce));
        }
        if let Some(inner) = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| walk(inner, depth + 1))
        {
            return Some(inner);
        }
        e.source().and_then(|s| walk(s, depth + 1))
    }
    walk(e, 0).or_else(|| {
        let mut next = Some(e);
        while let Some(err) = next {
            let text = err.to_string();
            if text.to_ascii_lowercase().contains("certificate") {
                return Some(body_excerpt(text.as_bytes()));
            }
            next = err.source();
        }
        None
    })
}

/// The error code for a certificate that does not verify, from
/// [`certificate_problem`]'s words: `certificate_unknown_issuer`,
/// `certificate_expired`…, or `certificate_invalid` when the words are not
/// ours (a TLS library's own text).
pub fn certificate_code(why: &str) -> String {
    let ours = why.len() <= 32 && why.bytes().all(|b| b.is_ascii_lowercase() || b == b' ');
    if ours {
        format!("certificate_{}", why.replace(' ', "_"))
    } else {
        "certificate_invalid".into()
    }
}

/// A certificate error in a few words, for an error message.
fn describe_certificate_error(ce: &rustls::CertificateError) -> String {
    use rustls::CertificateError as C;
    match ce {
        C::UnknownIssuer => "unknown issuer".into(),
        C::NotValidForName | C::NotValidForNameContext { .. } => "not valid for this name".into(),
        C::Expired | C::ExpiredContext { .. } => "expired".into(),
        C::NotValidYet | C::NotValidYetContext { .. } => "not valid yet".into(),
        C::Revoked => "revoked".into(),
        C::BadSignature => "bad signature".into(),
        C::BadEncoding => "bad encoding".into(),
        C::InvalidPurpose | C::InvalidPurposeContext { .. } => "not valid for server use".into(),
        // Other(CaUsedAsEndEntity) and the like: webpki's name for it.
        other => body_excerpt(other.to_string().as_bytes()),
    }
}

/// A short, printable excerpt of a body the adapter did not understand, for
/// the error message: at most 200 characters, whitespace runs collapsed to
/// one space, control and non-printable characters dropped. It goes into the
/// message; an adapter reads its answer through
/// [`super::scrub::Scrubber::read`], so the body is scrubbed before this cut.
pub fn body_excerpt(body: &[u8]) -> String {
    const MAX: usize = 200;
    // Enough input for 200 printable characters in all but absurd bodies.
    let text = String::from_utf8_lossy(&body[..body.len().min(16 * 1024)]);
    let words = text
        .split(char::is_whitespace)
        .map(|w| {
            w.chars()
                .filter(|&c| {
                    !(c.is_control() || c == char::REPLACEMENT_CHARACTER || is_format_char(c))
                })
                .collect::<String>()
        })
        .filter(|w| !w.is_empty());
    let mut out = String::new();
    for w in words {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(&w);
        if out.len() > 4 * MAX {
            break;
        }
    }
    if out.chars().count() > MAX {
        out = out.chars().take(MAX - 1).collect();
        out.push('…');
    }
    out
}

/// Invisible formatting characters (zero-width, bidi controls, BOM).
fn is_format_char(c: char) -> bool {
    matches!(c, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2069}' | '\u{FEFF}')
}

/// Largest response body an adapter reads; providers answer in a few hundred
/// bytes, and a misbehaving endpoint must not make us buffer megabytes.
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// A provider's answer, read in full (up to [`MAX_RESPONSE_BYTES`]).
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The body as JSON, if it is JSON of that shape.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Option<T> {
        serde_json::from_slice(&self.body).ok()
    }
}

/// Send a request and read the answer with the size cap. A request that got
/// no complete answer (timeout, connection, truncated read) is transient. A
/// URL whose host is a literal address `policy` refuses is not sent at all
/// (names are checked by the client's resolver): a Config error.
pub async fn execute(
    provider: &str,
    policy: &super::net::NetworkPolicy,
    request: reqwest::RequestBuilder,
) -> Result<Answer, ProviderError> {
    let (client, request) = request.build_split();
    let request = request.map_err(|e| transport_error(provider, &e))?;
    policy
        .check_url(request.url())
        .map_err(|e| refused(provider, &e.to_string()))?;
    let mut response = client
        .execute(request)
        .await
        .map_err(|e| transport_error(provider, &e))?;
    let status = response.status().as_u16();
    let headers = std::mem::take(response.headers_mut());
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| transport_error(provider, &e))?
    {
        let room = MAX_RESPONSE_BYTES - body.len();
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() == MAX_RESPONSE_BYTES {
            // Enough to classify; the rest is dropped with the connection.
            break;
        }
    }
    Ok(Answer {
        status,
        headers,
        body,
    })
}

/// The error for an answer whose body says nothing more precise than its
/// status: [`kind_for_status`], with the provider's wait hint on 429 and 5xx.
/// Without a `message` (the body was not in the provider's documented
/// format), the message is the status and an excerpt of `body`.
pub fn status_error(
    provider: &str,
    status: u16,
    headers: &HeaderMap,
    code: Option<String>,
    message: &str,
    body: &[u8],
) -> ProviderError {
    answer_error(
        provider,
        kind_for_status(status),
        status,
        headers,
        code,
        message,
        body,
    )
}

/// The error of `kind` for an answer: the provider's `code` (else the
/// status), its `message` (else the status and an excerpt of `body`), the
/// wait hint on 429 and 5xx. A Config error from a bare 401/403 names the
/// fix (the account's credentials).
pub fn answer_error(
    provider: &str,
    kind: ErrorKind,
    status: u16,
    headers: &HeaderMap,
    code: Option<String>,
    message: &str,
    body: &[u8],
) -> ProviderError {
    let excerpt = body_excerpt(body);
    let said = match (message.is_empty(), excerpt.is_empty()) {
        (false, _) => message.to_owned(),
        (true, false) => format!("HTTP {status}: {excerpt}"),
        (true, true) => format!("HTTP {status}"),
    };
    let message = if kind == ErrorKind::Config && matches!(status, 401 | 403) {
        format!(
            "{provider}: credentials refused ({status}): check the account's credentials; {said}"
        )
    } else {
        format!("{provider}: {said}")
    };
    let code = code.or_else(|| Some(status.to_string()));
    with_hint(ProviderError::new(kind, code, message), headers)
}

/// A Config error that names what is wrong and the fix, keeping what the
/// provider said (its message, else an excerpt of the body).
pub fn config_error(
    provider: &str,
    code: Option<String>,
    what: &str,
    fix: &str,
    said: &str,
    body: &[u8],
) -> ProviderError {
    let said = if said.is_empty() {
        body_excerpt(body)
    } else {
        said.to_owned()
    };
    let tail = if said.is_empty() {
        String::new()
    } else {
        format!("; the provider said: {said}")
    };
    ProviderError::new(
        ErrorKind::Config,
        code,
        format!("{provider}: {what}: {fix}{tail}"),
    )
}

/// Attach the `Retry-After` hint to an error worth retrying.
pub fn with_hint(e: ProviderError, headers: &HeaderMap) -> ProviderError {
    if matches!(e.kind, ErrorKind::RateLimited | ErrorKind::Transient) {
        let after = retry_after(headers, SystemTime::now());
        e.with_retry_after(after)
    } else {
        e
    }
}

/// `base` (settings) or the provider's default, without a trailing slash.
pub fn base_url(configured: Option<&str>, default: &str) -> String {
    configured
        .unwrap_or(default)
        .trim_end_matches('/')
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn retry_after_reads_seconds_dates_and_ratelimit_reset() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut h = HeaderMap::new();
        h.insert("retry-after", HeaderValue::from_static("2"));
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(2)));

        let mut h = HeaderMap::new();
        h.insert(
            "retry-after",
            HeaderValue::from_static("Tue, 14 Nov 2023 22:13:40 GMT"),
        );
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(20)));

        let mut h = HeaderMap::new();
        h.insert("x-ratelimit-reset", HeaderValue::from_static("1700000005"));
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(5)));

        assert_eq!(retry_after(&HeaderMap::new(), now), None);
    }

    #[test]
    fn a_503_with_retry_after_is_transient_with_the_hint() {
        let mut h = HeaderMap::new();
        h.insert("retry-after", HeaderValue::from_static("7"));
        let e = status_error("x", 503, &h, None, "", b"");
        assert_eq!(e.kind, ErrorKind::Transient);
        assert_eq!(e.code.as_deref(), Some("503"));
        assert_eq!(e.retry_after, Some(Duration::from_secs(7)));
    }

    #[test]
    fn a_bare_401_is_config_and_names_the_credentials() {
        let e = status_error("x", 401, &HeaderMap::new(), None, "", b"");
        assert_eq!(e.kind, ErrorKind::Config);
        assert_eq!(
            e.message,
            "x: credentials refused (401): check the account's credentials; HTTP 401"
        );
    }

    #[test]
    fn a_403_is_config() {
        assert_eq!(kind_for_status(403), ErrorKind::Config);
    }

    #[test]
    fn a_body_excerpt_collapses_whitespace_and_drops_control_characters() {
        assert_eq!(
            body_excerpt(b"  <h1>Bad\r\n\tGateway</h1>\x07\x1b[0m \xff  "),
            "<h1>Bad Gateway</h1>[0m"
        );
    }

    #[test]
    fn a_body_excerpt_is_at_most_200_characters() {
        let e = body_excerpt("é".repeat(500).as_bytes());
        assert_eq!(e.chars().count(), 200);
        assert!(e.ends_with('…'));
        assert_eq!(body_excerpt("a".repeat(200).as_bytes()), "a".repeat(200));
    }

    #[test]
    fn a_rustls_certificate_error_inside_an_io_error_is_found() {
        let io = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        );
        let outer = std::io::Error::other(io);
        assert_eq!(
            certificate_problem(&outer).as_deref(),
            Some("unknown issuer")
        );
        assert_eq!(
            certificate_code("unknown issuer"),
            "certificate_unknown_issuer"
        );
        assert_eq!(
            certificate_code("invalid peer certificate: Other(CaUsedAsEndEntity)"),
            "certificate_invalid"
        );
    }

    #[test]
    fn a_certificate_error_is_found_by_its_text_when_rustls_is_not_in_the_chain() {
        let e = std::io::Error::other("invalid peer certificate: Expired");
        assert!(certificate_problem(&e).is_some());
        let e = std::io::Error::other("connection refused");
        assert_eq!(certificate_problem(&e), None);
    }

    #[tokio::test]
    async fn a_refused_connection_is_transient() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let c = client(
            Duration::from_secs(2),
            Duration::from_secs(2),
            std::sync::Arc::new(
                super::super::net::NetworkPolicy::allowing(&["127.0.0.1"]).unwrap(),
            ),
        );
        let e = c
            .get(format!("https://127.0.0.1:{port}/"))
            .send()
            .await
            .unwrap_err();
        assert_eq!(transport_error("x", &e).kind, ErrorKind::Transient);
    }

    #[test]
    fn a_huge_retry_after_is_clamped_by_the_error() {
        let e =
            ProviderError::transient("x").with_retry_after(Some(Duration::from_secs(86_400 * 7)));
        assert_eq!(e.retry_after, Some(super::super::error::MAX_RETRY_AFTER));
    }
}
