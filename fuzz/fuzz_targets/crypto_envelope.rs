//! The credential envelope (`crypto::KeyRing`) with a fixed key ring (three
//! kids, two keys; the bytes drawn at start, see `KEYS`):
//!
//! - decrypting an arbitrary stored string never panics and only succeeds
//!   for a value `encrypt` made for that tenant and field. libFuzzer copies
//!   the operands of comparisons into its inputs, and the key ring is fixed,
//!   so an input can hold a real value from an earlier run in this process:
//!   the target remembers (a hash of) every value it encrypted;
//! - `encrypt` then `decrypt` gives back any plaintext, for any tenant id and
//!   field path, also through a ring that merely contains the key;
//! - the value does not open for another tenant or field, nor relabelled
//!   with another kid holding the same key bytes;
//! - any edit of the stored string that changes it makes it fail.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use outreach::crypto::{FieldContext, KeyRing, generate_key};
use secrecy::{ExposeSecret, SecretString};
use std::collections::HashSet;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{LazyLock, Mutex};

fn ring(keys: &[(&str, &SecretString)], active: Option<&str>) -> KeyRing {
    let keys: Vec<(String, SecretString)> = keys
        .iter()
        .map(|(kid, key)| (kid.to_string(), (*key).clone()))
        .collect();
    KeyRing::new(&keys, active).expect("key ring")
}

/// The key bytes are drawn once per process (`generate_key`), not written
/// here: with constant keys, a value encrypted in one run and kept in the
/// corpus would open in every later run, and its copies could not be told
/// from forgeries.
static KEYS: LazyLock<(SecretString, SecretString)> =
    LazyLock::new(|| (generate_key().1, generate_key().1));
/// `k1` encrypts; `k2` holds other key bytes; `k1-copy` the same bytes as `k1`.
static RING: LazyLock<KeyRing> = LazyLock::new(|| {
    ring(
        &[("k2", &KEYS.1), ("k1-copy", &KEYS.0), ("k1", &KEYS.0)],
        Some("k1"),
    )
});
/// Only `k1`, active by being last.
static K1_ONLY: LazyLock<KeyRing> = LazyLock::new(|| ring(&[("k1", &KEYS.0)], None));

/// Hashes of (stored value, tenant, field) of every value `encrypt` made in this process.
static MADE: LazyLock<Mutex<HashSet<u64>>> = LazyLock::new(Default::default);

fn key(stored: &str, ctx: &FieldContext<'_>) -> u64 {
    let mut h = DefaultHasher::new();
    (stored, ctx.tenant_id, ctx.field).hash(&mut h);
    h.finish()
}

fn made_by_encrypt(stored: &str, ctx: &FieldContext<'_>) -> bool {
    MADE.lock().unwrap().contains(&key(stored, ctx))
}

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    /// Decrypted as is: never made by `encrypt`.
    stored: &'a str,
    plaintext: String,
    tenant: &'a str,
    field: &'a str,
    other_tenant: &'a str,
    other_field: &'a str,
    /// Edits of the encrypted value.
    edits: Vec<Edit>,
}

#[derive(Arbitrary, Debug)]
enum Edit {
    Replace(u16, u8),
    Insert(u16, u8),
    Remove(u16),
}

fuzz_target!(|input: Input<'_>| {
    let ctx = FieldContext::new(input.tenant, input.field);

    // Arbitrary stored strings.
    for keys in [&*RING, &*K1_ONLY] {
        let _ = keys.needs_rotation(input.stored);
        if let Ok(v) = keys.decrypt(input.stored, &ctx) {
            assert!(
                made_by_encrypt(input.stored, &ctx),
                "a string not made by encrypt decrypted to {:?}",
                v.expose_secret()
            );
        }
        let _ = keys.rotate(input.stored, &ctx);
    }

    // Round trip.
    let stored = RING
        .encrypt(&SecretString::from(input.plaintext.clone()), &ctx)
        .expect("encrypt");
    MADE.lock().unwrap().insert(key(&stored, &ctx));
    assert!(!RING.needs_rotation(&stored));
    for keys in [&*RING, &*K1_ONLY] {
        let opened = keys
            .decrypt(&stored, &ctx)
            .expect("decrypt what encrypt made");
        assert_eq!(opened.expose_secret(), input.plaintext);
    }

    // Bound to its tenant and field.
    let other = FieldContext::new(input.other_tenant, input.other_field);
    if other != ctx {
        assert!(
            RING.decrypt(&stored, &other).is_err(),
            "opened under another tenant/field: {ctx:?} -> {other:?}"
        );
    }

    // Bound to its kid, even where another kid holds the same key bytes.
    let relabelled = stored.replacen("v1:k1:", "v1:k1-copy:", 1);
    assert!(
        RING.decrypt(&relabelled, &ctx).is_err(),
        "relabelled kid opened"
    );

    // Any change to the stored string makes it fail (no malleable encoding:
    // padding, trailing bits, case, separators).
    let mut bytes = stored.clone().into_bytes();
    for edit in &input.edits {
        let at = |i: u16, len: usize| usize::from(i) % len.max(1);
        match *edit {
            Edit::Replace(i, b) if !bytes.is_empty() => {
                let i = at(i, bytes.len());
                bytes[i] = b;
            }
            Edit::Insert(i, b) => bytes.insert(at(i, bytes.len() + 1), b),
            Edit::Remove(i) if !bytes.is_empty() => {
                bytes.remove(at(i, bytes.len()));
            }
            _ => {}
        }
    }
    if let Ok(edited) = String::from_utf8(bytes) {
        if edited != stored && !made_by_encrypt(&edited, &ctx) {
            if let Ok(v) = RING.decrypt(&edited, &ctx) {
                panic!(
                    "an edited value opened: {stored:?} -> {edited:?} = {:?}",
                    v.expose_secret()
                );
            }
        }
    }
});
