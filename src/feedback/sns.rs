//! SES notifications arrive through Amazon SNS: each message is signed by
//! SNS (RSA, SHA1 for `SignatureVersion` 1, SHA256 for 2) with the key in the
//! certificate at `SigningCertURL`. That certificate is fetched only from an
//! allow-listed origin (`webhooks.sns_cert_origins`, by default
//! `https://sns.*.amazonaws.com`, `*` one DNS label), and cached a day per URL.
//! The same allow-list guards the `SubscribeURL` a subscription
//! confirmation asks us to visit.
//!
//! Anyone can post an envelope naming any allow-listed URL, so a fetch is
//! never made on its word alone: the receiver checks the topic first (it
//! must be one of the tenant's), a URL whose fetch failed is not asked for
//! again for [`FAILURE_TTL`] (concurrent envelopes for one URL wait for one
//! fetch), and every fetch goes through the providers' outbound address
//! guard ([`NetworkPolicy`]: no loopback, private or metadata address unless
//! `providers.allowed_private_networks` lists it).

use super::verify::Refusal;
use crate::provider::net::NetworkPolicy;
use aws_lc_rs::signature::{self, UnparsedPublicKey};
use base64::Engine;
use serde::Deserialize;
use std::sync::Arc;
use std::time::Duration;

/// The SNS envelope (HTTP/S delivery, raw message delivery off).
#[derive(Debug, Clone, Deserialize)]
pub struct SnsMessage {
    #[serde(rename = "Type")]
    pub kind: String,
    #[serde(rename = "MessageId")]
    pub message_id: String,
    #[serde(rename = "Token", default)]
    pub token: Option<String>,
    #[serde(rename = "TopicArn")]
    pub topic_arn: String,
    #[serde(rename = "Subject", default)]
    pub subject: Option<String>,
    #[serde(rename = "Message")]
    pub message: String,
    #[serde(rename = "Timestamp")]
    pub timestamp: String,
    #[serde(rename = "SignatureVersion")]
    pub signature_version: String,
    #[serde(rename = "Signature")]
    pub signature: String,
    #[serde(rename = "SigningCertURL")]
    pub signing_cert_url: String,
    #[serde(rename = "SubscribeURL", default)]
    pub subscribe_url: Option<String>,
}

/// What SNS signs: the listed fields, each as `Name\nvalue\n`, in this order.
pub fn string_to_sign(m: &SnsMessage) -> String {
    let mut out = String::new();
    let mut add = |name: &str, v: &str| {
        out.push_str(name);
        out.push('\n');
        out.push_str(v);
        out.push('\n');
    };
    add("Message", &m.message);
    add("MessageId", &m.message_id);
    if m.kind == "Notification" {
        if let Some(s) = &m.subject {
            add("Subject", s);
        }
    } else {
        add(
            "SubscribeURL",
            m.subscribe_url.as_deref().unwrap_or_default(),
        );
    }
    add("Timestamp", &m.timestamp);
    if m.kind != "Notification" {
        add("Token", m.token.as_deref().unwrap_or_default());
    }
    add("TopicArn", &m.topic_arn);
    add("Type", &m.kind);
    out
}

/// Whether `url` is on an allow-listed origin (`scheme://host[:port]`, `*`
/// standing for one DNS label of the host).
pub fn allowed(origins: &[String], url: &str) -> bool {
    let Ok(u) = url::Url::parse(url) else {
        return false;
    };
    let Some(host) = u.host_str() else {
        return false;
    };
    if !u.username().is_empty() || u.password().is_some() {
        return false;
    }
    origins.iter().any(|o| {
        let Ok(p) = url::Url::parse(&o.replace('*', "wildcard-label")) else {
            return false;
        };
        let pattern = p
            .host_str()
            .unwrap_or_default()
            .replace("wildcard-label", "*");
        let labels: Vec<&str> = host.split('.').collect();
        let wanted: Vec<&str> = pattern.split('.').collect();
        p.scheme() == u.scheme()
            && p.port_or_known_default() == u.port_or_known_default()
            && labels.len() == wanted.len()
            && labels
                .iter()
                .zip(&wanted)
                .all(|(l, w)| *w == "*" || l.eq_ignore_ascii_case(w))
    })
}

/// How long a certificate URL whose fetch failed is not asked for again
/// (SNS retries a delivery within seconds, then for up to an hour).
pub const FAILURE_TTL: Duration = Duration::from_secs(60);

/// Checks SNS signatures, fetching and caching signing certificates.
pub struct SnsVerifier {
    origins: Vec<String>,
    policy: Arc<NetworkPolicy>,
    client: reqwest::Client,
    keys: moka::future::Cache<String, Arc<Vec<u8>>>,
    /// URLs whose fetch failed lately, and why.
    failed: moka::future::Cache<String, Refusal>,
}

impl SnsVerifier {
    /// `policy`: where fetches may connect (the providers' outbound rule).
    pub fn new(origins: Vec<String>, timeout: Duration, policy: NetworkPolicy) -> Self {
        let policy = Arc::new(policy);
        Self {
            origins,
            client: crate::provider::http::client(timeout, timeout, policy.clone()),
            policy,
            keys: moka::future::Cache::builder()
                .max_capacity(64)
                .time_to_live(Duration::from_secs(86_400))
                .build(),
            failed: moka::future::Cache::builder()
                .max_capacity(1024)
                .time_to_live(FAILURE_TTL)
                .build(),
        }
    }

    pub fn origins(&self) -> &[String] {
        &self.origins
    }

    /// Check `m`'s signature.
    pub async fn verify(&self, m: &SnsMessage) -> Result<(), Refusal> {
        let alg: &'static dyn signature::VerificationAlgorithm = match m.signature_version.as_str()
        {
            "1" => &signature::RSA_PKCS1_2048_8192_SHA1_FOR_LEGACY_USE_ONLY,
            "2" => &signature::RSA_PKCS1_2048_8192_SHA256,
            _ => return Err(Refusal::MissingSignature),
        };
        if !allowed(&self.origins, &m.signing_cert_url) || !m.signing_cert_url.ends_with(".pem") {
            return Err(Refusal::CertificateOrigin);
        }
        let key = self.key(&m.signing_cert_url).await?;
        let sig = base64::engine::general_purpose::STANDARD
            .decode(m.signature.trim())
            .map_err(|_| Refusal::MissingSignature)?;
        UnparsedPublicKey::new(alg, key.as_slice())
            .verify(string_to_sign(m).as_bytes(), &sig)
            .map_err(|_| Refusal::BadSignature)
    }

    /// The certificate's public key: cached a day per URL, fetched once
    /// for concurrent envelopes, a failure remembered for [`FAILURE_TTL`].
    async fn key(&self, url: &str) -> Result<Arc<Vec<u8>>, Refusal> {
        if let Some(r) = self.failed.get(url).await {
            return Err(r);
        }
        let fetched = self
            .keys
            .try_get_with_by_ref(url, self.fetch_key(url))
            .await
            .map_err(|r| *r);
        if let Err(r) = fetched {
            self.failed.insert(url.to_owned(), r).await;
        }
        fetched
    }

    async fn fetch_key(&self, url: &str) -> Result<Arc<Vec<u8>>, Refusal> {
        let parsed = url::Url::parse(url).map_err(|_| Refusal::CertificateOrigin)?;
        // Names are checked by the client's resolver; a literal address here.
        self.policy
            .check_url(&parsed)
            .map_err(|_| Refusal::CertificateOrigin)?;
        let pem = self
            .client
            .get(parsed)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(|_| Refusal::CertificateUnavailable)?
            .text()
            .await
            .map_err(|_| Refusal::CertificateUnavailable)?;
        use x509_cert::der::DecodePem;
        let cert = x509_cert::Certificate::from_pem(pem.as_bytes())
            .map_err(|_| Refusal::CertificateUnavailable)?;
        Ok(Arc::new(
            cert.tbs_certificate
                .subject_public_key_info
                .subject_public_key
                .raw_bytes()
                .to_vec(),
        ))
    }

    /// Confirm a subscription: visit its `SubscribeURL` (allow-listed origins only).
    pub async fn confirm(&self, m: &SnsMessage) -> Result<(), Refusal> {
        let Some(url) = m
            .subscribe_url
            .as_deref()
            .filter(|u| allowed(&self.origins, u))
        else {
            return Err(Refusal::CertificateOrigin);
        };
        let parsed = url::Url::parse(url).map_err(|_| Refusal::CertificateOrigin)?;
        self.policy
            .check_url(&parsed)
            .map_err(|_| Refusal::CertificateOrigin)?;
        self.client
            .get(parsed)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map(|_| ())
            .map_err(|_| Refusal::CertificateUnavailable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origins() -> Vec<String> {
        vec!["https://sns.*.amazonaws.com".into()]
    }

    #[test]
    fn certificates_come_only_from_allow_listed_origins() {
        let o = origins();
        assert!(allowed(
            &o,
            "https://sns.eu-west-1.amazonaws.com/SimpleNotificationService-abc.pem"
        ));
        assert!(!allowed(&o, "http://sns.eu-west-1.amazonaws.com/x.pem"));
        assert!(!allowed(
            &o,
            "https://sns.eu-west-1.amazonaws.com.evil.example/x.pem"
        ));
        assert!(!allowed(
            &o,
            "https://evil.example/sns.eu-west-1.amazonaws.com/x.pem"
        ));
        assert!(!allowed(&o, "https://a.b.amazonaws.com/x.pem"));
        assert!(!allowed(
            &o,
            "https://sns.eu-west-1.amazonaws.com:8443/x.pem"
        ));
        assert!(allowed(
            &["http://127.0.0.1:4567".into()],
            "http://127.0.0.1:4567/c.pem"
        ));
    }

    #[test]
    fn the_string_to_sign_follows_the_sns_field_order() {
        let m = SnsMessage {
            kind: "Notification".into(),
            message_id: "id".into(),
            token: None,
            topic_arn: "arn".into(),
            subject: None,
            message: "hello".into(),
            timestamp: "2026-01-01T00:00:00.000Z".into(),
            signature_version: "1".into(),
            signature: String::new(),
            signing_cert_url: String::new(),
            subscribe_url: None,
        };
        assert_eq!(
            string_to_sign(&m),
            "Message\nhello\nMessageId\nid\nTimestamp\n2026-01-01T00:00:00.000Z\nTopicArn\narn\nType\nNotification\n"
        );
    }
}
