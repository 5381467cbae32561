//! Envelope encryption of tenant credentials with AES-256-GCM.
//!
//! Provider credentials (API keys, SMTP passwords, tokens) are stored
//! encrypted in the tenant store and only decrypted when a provider is built.
//! Keys come from configuration as 64 hex characters (32 bytes), each under a
//! key id ("kid"). A [`KeyRing`] holds every configured key: the *active* one
//! (named explicitly, or else the last in the list) encrypts, any configured
//! one decrypts, so keys can be rotated without a flag day:
//! add the new key, make it active, run `outreach keys rotate`, and remove the
//! old key only once [`KeyRing::needs_rotation`] is false for every value.
//!
//! # Stored format
//!
//! ```text
//! v1:<kid>:<nonce>:<ciphertext>
//! ```
//!
//! - `v1`: format version, so the scheme can change without guessing.
//! - `<kid>`: the key that encrypted the value, 1 to 64 characters of
//!   `A-Z a-z 0-9 . _ -` (never `:`, so the string splits unambiguously).
//! - `<nonce>`: 12 random bytes (96 bits, fresh per encryption), base64url
//!   without padding.
//! - `<ciphertext>`: AES-256-GCM ciphertext followed by its 16-byte tag,
//!   base64url without padding.
//!
//! # Associated data
//!
//! Every ciphertext is bound to where it lives. The associated data is the
//! sequence `outreach/credential`, `v1`, kid, tenant id, field path, each
//! preceded by its length as a big-endian `u64`. Length prefixes make the
//! encoding unambiguous whatever characters tenant ids or field paths contain
//! (tenant `ab` + field `c` differs from tenant `a` + field `bc`), so a value
//! copied to another tenant's row, to another field, or relabelled with
//! another kid fails authentication instead of decrypting.
//!
//! # Secret hygiene
//!
//! Decrypted values are [`SecretString`]s (zeroized on drop, redacted in
//! `Debug`); every intermediate plaintext or key buffer is a [`Zeroizing`]
//! allocated at its final size, so no unwiped copy is left behind by a
//! reallocation. Errors name the tenant, field and kid, never the value or
//! key material; `hex` decoding errors are dropped on purpose because they
//! quote the offending character. The AES key schedule inside [`Aes256Gcm`]
//! is only wiped on drop when `aes-gcm`'s `zeroize` feature is enabled.

use aes_gcm::Aes256Gcm;
use aes_gcm::aead::{AeadInOut, Generate, KeyInit, Nonce};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore as _;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use std::fmt;
use zeroize::Zeroizing;

/// Version tag of the stored format (first field of every stored value).
const VERSION: &str = "v1";
/// Domain separation: this module's associated data never equals another use's.
const AAD_DOMAIN: &str = "outreach/credential";
const KEY_BYTES: usize = 32;
const NONCE_BYTES: usize = 12;
const TAG_BYTES: usize = 16;
const MAX_KID_CHARS: usize = 64;
/// Shortest secret [`mask`] reveals anything of: at least 9 characters stay hidden.
const MASK_MIN_CHARS: usize = 16;

/// Errors of this module. Messages name key ids, tenants and fields, never
/// plaintext or key material, so they are safe to log and show to operators.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    /// A configured key id is empty, too long or has a character outside `A-Z a-z 0-9 . _ -`.
    #[error("key id {kid:?} is invalid: use 1 to 64 characters of A-Z a-z 0-9 . _ -")]
    InvalidKeyId { kid: String },
    /// A configured key is not hexadecimal.
    #[error("key {kid:?} is not valid hex (expected 64 hex characters)")]
    InvalidKeyHex { kid: String },
    /// A configured key does not have 64 hex characters.
    #[error("key {kid:?} has {len} characters, expected 64 hex characters (32 bytes)")]
    WrongKeyLength { kid: String, len: usize },
    /// The same key id is configured twice.
    #[error("key id {kid:?} is configured more than once")]
    DuplicateKeyId { kid: String },
    /// The configured active key id is not among the configured keys.
    #[error("active key {kid:?} is not among the configured keys")]
    UnknownActiveKey { kid: String },
    /// Encryption was asked of a ring without keys.
    #[error("no encryption key is configured (generate one with `outreach keys generate`)")]
    NoActiveKey,
    /// The value was encrypted with a key id that is not configured.
    #[error(
        "tenant {tenant:?} field {field:?}: encrypted with key {kid:?}, which is not configured"
    )]
    UnknownKey {
        kid: String,
        tenant: String,
        field: String,
    },
    /// Authentication failed: wrong key bytes, altered value, or a value copied
    /// from another tenant or field.
    #[error(
        "tenant {tenant:?} field {field:?}: cannot decrypt with key {kid:?} \
         (wrong key, altered value, or value copied from another tenant or field)"
    )]
    Decrypt {
        kid: String,
        tenant: String,
        field: String,
    },
    /// The stored value is not in the `v1:<kid>:<nonce>:<ciphertext>` format.
    #[error("tenant {tenant:?} field {field:?}: malformed encrypted value: {reason}")]
    Malformed {
        tenant: String,
        field: String,
        reason: &'static str,
    },
    /// AES-GCM refused to encrypt (only for values beyond its 64 GiB limit).
    #[error("tenant {tenant:?} field {field:?}: encryption failed")]
    Encrypt { tenant: String, field: String },
    /// The operating system's random number generator failed.
    #[error("the system random number generator failed")]
    Rng,
}

/// One configured key, as found in the settings file or environment.
/// `key` is 64 hex characters; surrounding whitespace is ignored.
#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    pub id: String,
    pub key: SecretString,
}

/// Where a credential lives; bound into the ciphertext as associated data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldContext<'a> {
    pub tenant_id: &'a str,
    /// Path of the field inside the tenant's settings, e.g. `email.chain.0.api_key`.
    pub field: &'a str,
}

impl<'a> FieldContext<'a> {
    pub fn new(tenant_id: &'a str, field: &'a str) -> Self {
        Self { tenant_id, field }
    }

    fn unknown_key(&self, kid: &str) -> CryptoError {
        CryptoError::UnknownKey {
            kid: kid.into(),
            tenant: self.tenant_id.to_owned(),
            field: self.field.to_owned(),
        }
    }

    fn decrypt_failed(&self, kid: &str) -> CryptoError {
        CryptoError::Decrypt {
            kid: kid.into(),
            tenant: self.tenant_id.to_owned(),
            field: self.field.to_owned(),
        }
    }

    fn malformed(&self, reason: &'static str) -> CryptoError {
        CryptoError::Malformed {
            tenant: self.tenant_id.to_owned(),
            field: self.field.to_owned(),
            reason,
        }
    }
}

/// The configured keys. Cheap to share behind an `Arc`; `Debug` shows kids only.
#[derive(Clone)]
pub struct KeyRing {
    keys: Vec<(String, Aes256Gcm)>,
    /// Index into `keys` of the encrypting key; `None` only when `keys` is empty.
    active: Option<usize>,
}

impl fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyRing")
            .field("kids", &self.kids().collect::<Vec<_>>())
            .field("active", &self.active_kid())
            .finish()
    }
}

impl KeyRing {
    /// Builds a ring from `(kid, hex key)` pairs. `active` names the encrypting
    /// key; without it the last pair encrypts (newest last, as operators append).
    /// An empty list gives a ring that decrypts nothing and refuses to encrypt
    /// with [`CryptoError::NoActiveKey`], so deployments without stored
    /// credentials need no key.
    pub fn new(keys: &[(String, SecretString)], active: Option<&str>) -> Result<Self, CryptoError> {
        Self::build(keys.iter().map(|(kid, key)| (kid.as_str(), key)), active)
    }

    /// Like [`KeyRing::new`], from the deserialized settings.
    pub fn from_config(keys: &[KeyConfig], active: Option<&str>) -> Result<Self, CryptoError> {
        Self::build(keys.iter().map(|k| (k.id.as_str(), &k.key)), active)
    }

    fn build<'a>(
        pairs: impl Iterator<Item = (&'a str, &'a SecretString)>,
        active: Option<&str>,
    ) -> Result<Self, CryptoError> {
        let mut keys: Vec<(String, Aes256Gcm)> = Vec::new();
        for (kid, key) in pairs {
            if !is_valid_kid(kid) {
                return Err(CryptoError::InvalidKeyId { kid: kid.into() });
            }
            if keys.iter().any(|(known, _)| known == kid) {
                return Err(CryptoError::DuplicateKeyId { kid: kid.into() });
            }
            keys.push((kid.to_owned(), parse_key(kid, key)?));
        }
        let active = match active {
            Some(kid) => Some(
                keys.iter()
                    .position(|(known, _)| known == kid)
                    .ok_or_else(|| CryptoError::UnknownActiveKey { kid: kid.into() })?,
            ),
            None => keys.len().checked_sub(1),
        };
        Ok(Self { keys, active })
    }

    /// The kid new values are encrypted with, if any key is configured.
    pub fn active_kid(&self) -> Option<&str> {
        self.active.map(|i| self.keys[i].0.as_str())
    }

    /// Every configured kid, in configuration order.
    pub fn kids(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(|(kid, _)| kid.as_str())
    }

    fn cipher(&self, kid: &str) -> Option<&Aes256Gcm> {
        self.keys
            .iter()
            .find(|(known, _)| known == kid)
            .map(|(_, cipher)| cipher)
    }

    /// Encrypts `plaintext` with the active key and a fresh random nonce,
    /// bound to `ctx`; returns the stored form `v1:<kid>:<nonce>:<ciphertext>`.
    pub fn encrypt(
        &self,
        plaintext: &SecretString,
        ctx: &FieldContext<'_>,
    ) -> Result<String, CryptoError> {
        let (kid, cipher) = self
            .active
            .map(|i| &self.keys[i])
            .ok_or(CryptoError::NoActiveKey)?;
        // A repeated (key, nonce) pair would break GCM: the nonce comes from the OS RNG every time.
        let nonce = Nonce::<Aes256Gcm>::try_generate().map_err(|_| CryptoError::Rng)?;
        let plaintext = plaintext.expose_secret().as_bytes();
        // Sized for the tag up front: growing the Vec would leave an unwiped copy of the plaintext.
        let mut buffer = Zeroizing::new(Vec::with_capacity(plaintext.len() + TAG_BYTES));
        buffer.extend_from_slice(plaintext);
        cipher
            .encrypt_in_place(&nonce, &associated_data(kid, ctx), &mut *buffer)
            .map_err(|_| CryptoError::Encrypt {
                tenant: ctx.tenant_id.to_owned(),
                field: ctx.field.to_owned(),
            })?;
        Ok(format!(
            "{VERSION}:{kid}:{}:{}",
            URL_SAFE_NO_PAD.encode(nonce),
            URL_SAFE_NO_PAD.encode(&*buffer)
        ))
    }

    /// Decrypts a value produced by [`KeyRing::encrypt`] with the same `ctx`,
    /// using whichever configured key its kid names.
    pub fn decrypt(
        &self,
        stored: &str,
        ctx: &FieldContext<'_>,
    ) -> Result<SecretString, CryptoError> {
        let sealed = Sealed::parse(stored).map_err(|reason| ctx.malformed(reason))?;
        let cipher = self
            .cipher(sealed.kid)
            .ok_or_else(|| ctx.unknown_key(sealed.kid))?;
        // Wrapped before decryption: on success this buffer holds the plaintext.
        let mut buffer = Zeroizing::new(sealed.ciphertext);
        cipher
            .decrypt_in_place(
                &sealed.nonce,
                &associated_data(sealed.kid, ctx),
                &mut *buffer,
            )
            .map_err(|_| ctx.decrypt_failed(sealed.kid))?;
        // Only reachable if a non-UTF-8 value was encrypted by something else with our key.
        let text = std::str::from_utf8(&buffer)
            .map_err(|_| ctx.malformed("decrypted value is not UTF-8"))?;
        Ok(SecretString::from(text))
    }

    /// True when `stored` was not encrypted with the active key, i.e. when
    /// `outreach keys rotate` should rewrite it. Also true for values that are
    /// not in the stored format (or when no key is active), so that rotation
    /// reports them (decrypting them fails) instead of skipping them.
    pub fn needs_rotation(&self, stored: &str) -> bool {
        match Sealed::parse(stored) {
            Ok(sealed) => self.active_kid() != Some(sealed.kid),
            Err(_) => true,
        }
    }

    /// Decrypts `stored` and encrypts it again with the active key (and a new nonce).
    pub fn rotate(&self, stored: &str, ctx: &FieldContext<'_>) -> Result<String, CryptoError> {
        if self.active.is_none() {
            return Err(CryptoError::NoActiveKey);
        }
        self.encrypt(&self.decrypt(stored, ctx)?, ctx)
    }
}

/// A parsed stored value; `kid` borrows from it.
struct Sealed<'a> {
    kid: &'a str,
    nonce: Nonce<Aes256Gcm>,
    ciphertext: Vec<u8>,
}

impl<'a> Sealed<'a> {
    /// Reasons are static strings so that a malformed value (perhaps a legacy
    /// plaintext credential) can never end up in an error message.
    fn parse(stored: &'a str) -> Result<Self, &'static str> {
        let mut parts = stored.split(':');
        let (Some(version), Some(kid), Some(nonce), Some(ciphertext), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err("expected v1:<kid>:<nonce>:<ciphertext>");
        };
        if version != VERSION {
            return Err("unsupported format version");
        }
        if !is_valid_kid(kid) {
            return Err("invalid key id");
        }
        let nonce = URL_SAFE_NO_PAD
            .decode(nonce)
            .ok()
            .filter(|n| n.len() == NONCE_BYTES)
            .and_then(|n| Nonce::<Aes256Gcm>::try_from(n.as_slice()).ok())
            .ok_or("nonce is not 12 bytes of base64url")?;
        let ciphertext = URL_SAFE_NO_PAD
            .decode(ciphertext)
            .map_err(|_| "ciphertext is not base64url")?;
        if ciphertext.len() < TAG_BYTES {
            return Err("ciphertext is shorter than its authentication tag");
        }
        Ok(Self {
            kid,
            nonce,
            ciphertext,
        })
    }
}

/// Length-prefixed, hence unambiguous, encoding of everything the ciphertext is bound to.
fn associated_data(kid: &str, ctx: &FieldContext<'_>) -> Vec<u8> {
    let parts = [AAD_DOMAIN, VERSION, kid, ctx.tenant_id, ctx.field];
    let mut aad = Vec::with_capacity(parts.iter().map(|p| 8 + p.len()).sum());
    for part in parts {
        aad.extend_from_slice(&(part.len() as u64).to_be_bytes());
        aad.extend_from_slice(part.as_bytes());
    }
    aad
}

fn is_valid_kid(kid: &str) -> bool {
    (1..=MAX_KID_CHARS).contains(&kid.len())
        && kid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Decodes a 64-hex-character key into a cipher, through a wiped buffer.
fn parse_key(kid: &str, key: &SecretString) -> Result<Aes256Gcm, CryptoError> {
    let hex_key = key.expose_secret().trim();
    if hex_key.len() != 2 * KEY_BYTES {
        return Err(CryptoError::WrongKeyLength {
            kid: kid.into(),
            len: hex_key.chars().count(),
        });
    }
    let mut bytes = Zeroizing::new([0u8; KEY_BYTES]);
    // The hex error is dropped: it would quote a character of the key.
    hex::decode_to_slice(hex_key, &mut *bytes)
        .map_err(|_| CryptoError::InvalidKeyHex { kid: kid.into() })?;
    Aes256Gcm::new_from_slice(&*bytes).map_err(|_| CryptoError::WrongKeyLength {
        kid: kid.into(),
        len: hex_key.len(),
    })
}

/// A new random key for `outreach keys generate`: returns `(kid, hex key)`.
///
/// The kid is `k` + today's UTC date `YYYYMMDD` + 4 random hex characters
/// (e.g. `k20250314a3f9`): sortable by age at a glance, and two keys generated
/// the same day still differ (a collision would be caught as a duplicate id).
pub fn generate_key() -> (String, SecretString) {
    let mut rng = rand::rng(); // ChaCha12 seeded from the OS: a CSPRNG.
    let mut bytes = Zeroizing::new([0u8; KEY_BYTES]);
    rng.fill_bytes(&mut *bytes);
    let mut hex_key = Zeroizing::new([0u8; 2 * KEY_BYTES]);
    // A slice, not `*bytes`: passing the array by value would leave an unwiped copy.
    hex::encode_to_slice(bytes.as_slice(), &mut *hex_key).expect("64 bytes hold the hex of 32");
    let hex_key = std::str::from_utf8(&*hex_key).expect("hex is ASCII");
    let mut suffix = [0u8; 2];
    rng.fill_bytes(&mut suffix);
    let date = time::OffsetDateTime::now_utc().date();
    let kid = format!(
        "k{:04}{:02}{:02}{}",
        date.year(),
        u8::from(date.month()),
        date.day(),
        hex::encode(suffix)
    );
    (kid, SecretString::from(hex_key))
}

/// Shows enough of a secret to tell which one is set: a known prefix up to the
/// first `.` or 3 characters, whichever is shorter, and the last 4 characters
/// (`SG.****…ab12`). Secrets under 16 characters show only `****`, so at least
/// 9 characters always stay hidden.
pub fn mask(secret: &str) -> String {
    let len = secret.chars().count();
    if len < MASK_MIN_CHARS {
        return "****".to_owned();
    }
    let prefix_len = secret
        .chars()
        .take(3)
        .position(|c| c == '.')
        .map_or(3, |dot| dot + 1);
    let prefix: String = secret.chars().take(prefix_len).collect();
    let suffix: String = secret.chars().skip(len - 4).collect();
    format!("{prefix}****…{suffix}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX_1: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
    const HEX_2: &str = "f0e0d0c0b0a090807060504030201000ffeeddccbbaa99887766554433221100";
    const SECRET: &str = "SG.super-secret-api-key-value";
    const CTX: FieldContext<'static> = FieldContext {
        tenant_id: "acme",
        field: "email.chain.0.api_key",
    };

    fn ring(keys: &[(&str, &str)], active: Option<&str>) -> Result<KeyRing, CryptoError> {
        let keys: Vec<(String, SecretString)> = keys
            .iter()
            .map(|(kid, hex)| (kid.to_string(), SecretString::from(*hex)))
            .collect();
        KeyRing::new(&keys, active)
    }

    fn one_key() -> KeyRing {
        ring(&[("k1", HEX_1)], None).unwrap()
    }

    fn secret(s: &str) -> SecretString {
        SecretString::from(s)
    }

    /// Flips the lowest bit of the first byte of base64url part `index` of a stored value.
    fn flip_bit(stored: &str, index: usize) -> String {
        let mut parts: Vec<String> = stored.split(':').map(str::to_owned).collect();
        let mut bytes = URL_SAFE_NO_PAD.decode(&parts[index]).unwrap();
        bytes[0] ^= 1;
        parts[index] = URL_SAFE_NO_PAD.encode(bytes);
        parts.join(":")
    }

    #[test]
    fn a_value_round_trips_through_encrypt_and_decrypt() {
        let keys = one_key();
        let stored = keys.encrypt(&secret(SECRET), &CTX).unwrap();
        assert_eq!(keys.decrypt(&stored, &CTX).unwrap().expose_secret(), SECRET);
        let empty = keys.encrypt(&secret(""), &CTX).unwrap();
        assert_eq!(keys.decrypt(&empty, &CTX).unwrap().expose_secret(), "");
    }

    #[test]
    fn the_stored_form_is_versioned_names_its_key_and_hides_the_value() {
        let stored = one_key().encrypt(&secret(SECRET), &CTX).unwrap();
        let parts: Vec<&str> = stored.split(':').collect();
        assert_eq!(parts.len(), 4);
        assert_eq!(&parts[..2], ["v1", "k1"]);
        assert_eq!(URL_SAFE_NO_PAD.decode(parts[2]).unwrap().len(), NONCE_BYTES);
        assert_eq!(
            URL_SAFE_NO_PAD.decode(parts[3]).unwrap().len(),
            SECRET.len() + TAG_BYTES
        );
        assert!(!stored.contains("secret"));
    }

    #[test]
    fn encrypting_the_same_value_twice_gives_different_ciphertexts() {
        let keys = one_key();
        let a = keys.encrypt(&secret(SECRET), &CTX).unwrap();
        let b = keys.encrypt(&secret(SECRET), &CTX).unwrap();
        assert_ne!(
            a.split(':').nth(2),
            b.split(':').nth(2),
            "nonces must differ"
        );
        assert_ne!(a, b);
    }

    #[test]
    fn flipping_a_bit_in_the_ciphertext_is_refused() {
        let keys = one_key();
        let stored = keys.encrypt(&secret(SECRET), &CTX).unwrap();
        let err = keys.decrypt(&flip_bit(&stored, 3), &CTX).unwrap_err();
        assert!(matches!(err, CryptoError::Decrypt { .. }), "{err:?}");
    }

    #[test]
    fn flipping_a_bit_in_the_nonce_is_refused() {
        let keys = one_key();
        let stored = keys.encrypt(&secret(SECRET), &CTX).unwrap();
        let err = keys.decrypt(&flip_bit(&stored, 2), &CTX).unwrap_err();
        assert!(matches!(err, CryptoError::Decrypt { .. }), "{err:?}");
    }

    #[test]
    fn relabelling_the_kid_is_refused_even_when_both_kids_hold_the_same_key() {
        let keys = ring(&[("k1", HEX_1), ("k2", HEX_1)], Some("k1")).unwrap();
        let stored = keys.encrypt(&secret(SECRET), &CTX).unwrap();
        let relabelled = stored.replacen(":k1:", ":k2:", 1);
        let err = keys.decrypt(&relabelled, &CTX).unwrap_err();
        assert!(
            matches!(&err, CryptoError::Decrypt { kid, .. } if kid == "k2"),
            "{err:?}"
        );
    }

    #[test]
    fn a_value_copied_to_another_tenant_does_not_decrypt() {
        let keys = one_key();
        let stored = keys.encrypt(&secret(SECRET), &CTX).unwrap();
        let other = FieldContext::new("globex", CTX.field);
        let err = keys.decrypt(&stored, &other).unwrap_err();
        assert!(
            matches!(&err, CryptoError::Decrypt { tenant, field, kid } if tenant == "globex" && field == CTX.field && kid == "k1"),
            "{err:?}"
        );
    }

    #[test]
    fn a_value_copied_to_another_field_does_not_decrypt() {
        let keys = one_key();
        let stored = keys.encrypt(&secret(SECRET), &CTX).unwrap();
        let err = keys
            .decrypt(&stored, &FieldContext::new("acme", "email.chain.1.api_key"))
            .unwrap_err();
        assert!(matches!(err, CryptoError::Decrypt { .. }), "{err:?}");
    }

    #[test]
    fn tenant_and_field_boundaries_cannot_be_shifted() {
        let keys = one_key();
        let stored = keys
            .encrypt(&secret(SECRET), &FieldContext::new("ab", "c"))
            .unwrap();
        assert!(
            keys.decrypt(&stored, &FieldContext::new("a", "bc"))
                .is_err()
        );
        assert!(
            keys.decrypt(&stored, &FieldContext::new("abc", ""))
                .is_err()
        );
        assert!(keys.decrypt(&stored, &FieldContext::new("ab", "c")).is_ok());
    }

    #[test]
    fn rotation_re_encrypts_old_values_with_the_new_active_key() {
        let old = one_key();
        let stored = old.encrypt(&secret(SECRET), &CTX).unwrap();
        assert!(!old.needs_rotation(&stored));

        let both = ring(&[("k1", HEX_1), ("k2", HEX_2)], None).unwrap();
        assert_eq!(both.active_kid(), Some("k2"));
        assert_eq!(both.decrypt(&stored, &CTX).unwrap().expose_secret(), SECRET);
        assert!(both.needs_rotation(&stored));

        let rotated = both.rotate(&stored, &CTX).unwrap();
        assert!(rotated.starts_with("v1:k2:"));
        assert!(!both.needs_rotation(&rotated));
        assert_eq!(
            both.decrypt(&rotated, &CTX).unwrap().expose_secret(),
            SECRET
        );

        let new_only = ring(&[("k2", HEX_2)], None).unwrap();
        assert_eq!(
            new_only.decrypt(&rotated, &CTX).unwrap().expose_secret(),
            SECRET
        );
    }

    #[test]
    fn an_explicit_active_kid_overrides_the_last_key() {
        let keys = ring(&[("k1", HEX_1), ("k2", HEX_2)], Some("k1")).unwrap();
        assert_eq!(keys.active_kid(), Some("k1"));
        assert!(
            keys.encrypt(&secret(SECRET), &CTX)
                .unwrap()
                .starts_with("v1:k1:")
        );
        assert_eq!(keys.kids().collect::<Vec<_>>(), ["k1", "k2"]);
    }

    #[test]
    fn values_not_in_the_stored_format_need_rotation_and_fail_it_clearly() {
        let keys = one_key();
        assert!(keys.needs_rotation(SECRET));
        let err = keys.rotate(SECRET, &CTX).unwrap_err();
        assert!(matches!(err, CryptoError::Malformed { .. }), "{err:?}");
    }

    #[test]
    fn a_wrong_key_under_the_same_kid_is_a_decrypt_error() {
        let stored = one_key().encrypt(&secret(SECRET), &CTX).unwrap();
        let impostor = ring(&[("k1", HEX_2)], None).unwrap();
        let err = impostor.decrypt(&stored, &CTX).unwrap_err();
        assert!(
            matches!(&err, CryptoError::Decrypt { kid, .. } if kid == "k1"),
            "{err:?}"
        );
    }

    #[test]
    fn an_unknown_kid_is_reported_with_tenant_and_field() {
        let stored = one_key().encrypt(&secret(SECRET), &CTX).unwrap();
        let other = ring(&[("k2", HEX_2)], None).unwrap();
        let err = other.decrypt(&stored, &CTX).unwrap_err();
        assert!(
            matches!(&err, CryptoError::UnknownKey { kid, tenant, field }
            if kid == "k1" && tenant == "acme" && field == CTX.field),
            "{err:?}"
        );
        let message = err.to_string();
        assert!(
            message.contains("\"k1\"") && message.contains("acme") && message.contains(CTX.field)
        );
    }

    #[test]
    fn malformed_values_are_refused_without_being_echoed() {
        let keys = one_key();
        let stored = keys.encrypt(&secret(SECRET), &CTX).unwrap();
        let nonce = stored.split(':').nth(2).unwrap().to_owned();
        let cases = [
            SECRET.to_owned(),
            String::new(),
            stored.replacen("v1:", "v2:", 1),
            format!("{stored}:extra"),
            stored.replacen(&nonce, "AAAA", 1),
            stored.replacen(&nonce, "not base64!", 1),
            format!("v1:k1:{nonce}:AAAA"),
            format!("v1:k1:{nonce}:{SECRET}!"),
            format!("v1::{nonce}:AAAAAAAAAAAAAAAAAAAAAA"),
        ];
        for case in cases {
            let err = keys.decrypt(&case, &CTX).unwrap_err();
            assert!(
                matches!(err, CryptoError::Malformed { .. }),
                "{case:?}: {err:?}"
            );
            assert!(!err.to_string().contains("secret"), "{err}");
            assert!(!format!("{err:?}").contains("secret"), "{err:?}");
        }
    }

    #[test]
    fn invalid_key_configs_are_refused_naming_the_kid() {
        let bad_hex = HEX_1.replacen('0', "g", 1);
        let err = ring(&[("k1", &bad_hex)], None).unwrap_err();
        assert!(
            matches!(&err, CryptoError::InvalidKeyHex { kid } if kid == "k1"),
            "{err:?}"
        );

        let err = ring(&[("k1", &HEX_1[..62])], None).unwrap_err();
        assert!(
            matches!(&err, CryptoError::WrongKeyLength { kid, len: 62 } if kid == "k1"),
            "{err:?}"
        );

        let err = ring(&[("k1", HEX_1), ("k1", HEX_2)], None).unwrap_err();
        assert!(
            matches!(&err, CryptoError::DuplicateKeyId { kid } if kid == "k1"),
            "{err:?}"
        );

        let err = ring(&[("k1", HEX_1)], Some("k9")).unwrap_err();
        assert!(
            matches!(&err, CryptoError::UnknownActiveKey { kid } if kid == "k9"),
            "{err:?}"
        );

        for kid in ["", "has:colon", "has space", &"k".repeat(65)] {
            let err = ring(&[(kid, HEX_1)], None).unwrap_err();
            assert!(
                matches!(err, CryptoError::InvalidKeyId { .. }),
                "{kid:?}: {err:?}"
            );
        }
        assert!(err_mentions_kid(
            &ring(&[("k7", "zz")], None).unwrap_err(),
            "k7"
        ));
    }

    fn err_mentions_kid(err: &CryptoError, kid: &str) -> bool {
        err.to_string().contains(&format!("{kid:?}"))
    }

    #[test]
    fn keys_are_accepted_in_upper_case_and_with_surrounding_whitespace() {
        let stored = one_key().encrypt(&secret(SECRET), &CTX).unwrap();
        let padded = format!("  {}\n", HEX_1.to_uppercase());
        let keys = ring(&[("k1", &padded)], None).unwrap();
        assert_eq!(keys.decrypt(&stored, &CTX).unwrap().expose_secret(), SECRET);
    }

    #[test]
    fn an_empty_ring_refuses_to_encrypt_and_says_why() {
        let keys = KeyRing::from_config(&[], None).unwrap();
        assert_eq!(keys.active_kid(), None);
        let err = keys.encrypt(&secret(SECRET), &CTX).unwrap_err();
        assert!(matches!(err, CryptoError::NoActiveKey), "{err:?}");
        assert!(err.to_string().contains("no encryption key"));
        let stored = one_key().encrypt(&secret(SECRET), &CTX).unwrap();
        assert!(keys.needs_rotation(&stored));
        assert!(matches!(
            keys.rotate(&stored, &CTX),
            Err(CryptoError::NoActiveKey)
        ));
    }

    #[test]
    fn key_configs_deserialize_from_settings() {
        let json =
            format!(r#"[{{"id": "k1", "key": "{HEX_1}"}}, {{"id": "k2", "key": "{HEX_2}"}}]"#);
        let configs: Vec<KeyConfig> = serde_json::from_str(&json).unwrap();
        let keys = KeyRing::from_config(&configs, None).unwrap();
        assert_eq!(keys.active_kid(), Some("k2"));
        assert!(!format!("{configs:?}").contains(HEX_1));
    }

    #[test]
    fn errors_and_debug_output_never_contain_secrets_or_keys() {
        let keys = ring(&[("k1", HEX_1), ("k2", HEX_2)], None).unwrap();
        let debug = format!("{keys:?}");
        assert_eq!(
            debug,
            r#"KeyRing { kids: ["k1", "k2"], active: Some("k2") }"#
        );

        let stored = keys.encrypt(&secret(SECRET), &CTX).unwrap();
        let errors = [
            keys.decrypt(&flip_bit(&stored, 3), &CTX).unwrap_err(),
            ring(&[("k2", HEX_1)], None)
                .unwrap()
                .decrypt(&stored, &CTX)
                .unwrap_err(),
            one_key().decrypt(&stored, &CTX).unwrap_err(),
            keys.decrypt(SECRET, &CTX).unwrap_err(),
            ring(&[("k1", &HEX_1.replacen('0', "x", 1))], None).unwrap_err(),
            ring(&[("k1", &HEX_1[..60])], None).unwrap_err(),
            ring(&[("k1", HEX_1), ("k1", HEX_1)], None).unwrap_err(),
        ];
        let decrypted = keys.decrypt(&stored, &CTX).unwrap();
        let mut outputs: Vec<String> = vec![debug, format!("{decrypted:?}")];
        for err in &errors {
            outputs.push(err.to_string());
            outputs.push(format!("{err:?}"));
        }
        for output in outputs {
            for needle in [
                SECRET,
                "super-secret",
                HEX_1,
                HEX_2,
                &HEX_1[..16],
                &HEX_2[..16],
            ] {
                assert!(!output.contains(needle), "{output:?} leaks {needle:?}");
            }
        }
    }

    #[test]
    fn generated_keys_are_usable_and_have_dated_kids() {
        let (kid, key) = generate_key();
        assert_eq!(kid.len(), 13, "{kid}");
        assert!(
            kid.starts_with('k') && kid[1..9].bytes().all(|b| b.is_ascii_digit()),
            "{kid}"
        );
        assert!(kid[9..].bytes().all(|b| b.is_ascii_hexdigit()), "{kid}");
        assert_eq!(key.expose_secret().len(), 64);
        let (_, other) = generate_key();
        assert_ne!(key.expose_secret(), other.expose_secret());

        let keys = KeyRing::from_config(
            &[KeyConfig {
                id: kid.clone(),
                key,
            }],
            None,
        )
        .unwrap();
        let stored = keys.encrypt(&secret(SECRET), &CTX).unwrap();
        assert!(stored.starts_with(&format!("v1:{kid}:")));
        assert_eq!(keys.decrypt(&stored, &CTX).unwrap().expose_secret(), SECRET);
    }

    #[test]
    fn mask_keeps_a_short_prefix_and_the_last_four_characters() {
        assert_eq!(mask("SG.abcdefghijklmnopqrstuvwxyzab12"), "SG.****…ab12");
        assert_eq!(mask("sk_live_1234567890abcdef"), "sk_****…cdef");
        assert_eq!(mask("a.bcdefghijklmnopqrst"), "a.****…qrst");
        assert_eq!(mask(".abcdefghijklmnopqrst"), ".****…qrst");
        assert_eq!(mask("0123456789abcdef"), "012****…cdef");
        assert_eq!(mask("ключ.секретный-ключ-длинный"), "клю****…нный");
    }

    #[test]
    fn mask_hides_short_secrets_entirely() {
        assert_eq!(mask(""), "****");
        assert_eq!(mask("abc"), "****");
        assert_eq!(mask("SG.123456789abc"), "****");
    }

    proptest::proptest! {
        #[test]
        fn encrypt_then_decrypt_is_the_identity(
            plaintext in proptest::prelude::any::<String>(),
            tenant in "[a-z0-9:._-]{0,16}",
            field in "\\PC{0,24}",
        ) {
            let keys = one_key();
            let ctx = FieldContext::new(&tenant, &field);
            let stored = keys.encrypt(&SecretString::from(plaintext.as_str()), &ctx).unwrap();
            let decrypted = keys.decrypt(&stored, &ctx).unwrap();
            proptest::prop_assert_eq!(decrypted.expose_secret(), plaintext.as_str());
        }
    }
}
