//! API keys: format, generation, hashing and constant-time verification.
//!
//! Format: `tk_<prefix>_<secret><check>`
//! - `prefix`: 12 base62 characters, public, unique: the lookup id (shown in lists);
//! - `secret`: 40 base62 characters from a CSPRNG (~238 bits): never stored, only its SHA-256;
//! - `check`: 6 base62 characters (~35.7 bits) of a MAC over everything before it, keyed with
//!   the deployment's secret ([`KeyCheck`]): SipHash-2-4, a PRF made for short inputs. Anyone
//!   can write a key of the right shape, but without the secret only one in ~5.7·10¹⁰ forgeries
//!   passes the check, so a flood of made-up keys is refused from memory, before any lookup:
//!   unauthenticated traffic cannot buy database work. A mistyped key is refused the same way.
//!
//! Keys issued before the keyed checksum carry a CRC-32 one. They still work: they are known
//! by their prefixes ([`KeyCheck::with_legacy`], read once at start-up), and a CRC-checked key
//! whose prefix is not among them is refused without a lookup too.
//!
//! A fast hash (SHA-256) is right for the secret, unlike for passwords: it is high-entropy, so
//! there is nothing to brute-force, and verification sits on every request's path.

use std::collections::HashSet;
use std::hash::Hasher;

use rand::distr::{Alphanumeric, SampleString};
use sha2::{Digest, Sha256};
use siphasher::sip::SipHasher24;
use subtle::ConstantTimeEq;

const PREFIX_LEN: usize = 12;
const SECRET_LEN: usize = 40;
const CHECK_LEN: usize = 6;
/// Total length of a well-formed key.
pub(crate) const KEY_LEN: usize = 3 + PREFIX_LEN + 1 + SECRET_LEN + CHECK_LEN;

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Why a string is not a usable key (before any lookup).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum KeyFormatError {
    #[error("not an API key")]
    Malformed,
    #[cfg(test)]
    #[error("API key checksum mismatch (typo?)")]
    Checksum,
}

/// The deployment's key checksum: the MAC key, and the prefixes of keys issued before it.
#[derive(Clone)]
pub(crate) struct KeyCheck {
    mac: [u8; 16],
    legacy: HashSet<String>,
}

impl std::fmt::Debug for KeyCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyCheck")
            .field("legacy_keys", &self.legacy.len())
            .finish_non_exhaustive()
    }
}

impl KeyCheck {
    /// A checksum keyed by `secret` (at least 16 bytes of the operating system's randomness;
    /// the MAC key is derived from it).
    pub(crate) fn new(secret: &[u8]) -> Self {
        let digest = Sha256::digest([b"tenantry key check\0".as_slice(), secret].concat());
        let mut mac = [0u8; 16];
        mac.copy_from_slice(&digest[..16]);
        Self {
            mac,
            legacy: HashSet::new(),
        }
    }

    /// Also accepts the CRC-32 checksum for these prefixes (keys issued before the keyed one).
    pub(crate) fn with_legacy(mut self, prefixes: impl IntoIterator<Item = String>) -> Self {
        self.legacy = prefixes.into_iter().collect();
        self
    }

    /// The base62 check digits of `body` (on the stack: every request checks one).
    fn digits(&self, body: &str) -> [u8; CHECK_LEN] {
        let mut h = SipHasher24::new_with_key(&self.mac);
        h.write(body.as_bytes());
        base62(h.finish())
    }
}

/// A freshly generated key: the full text (shown once) and what the catalog stores.
#[derive(Debug, Clone)]
pub(crate) struct NewKey {
    pub key: String,
    pub prefix: String,
    pub hash: [u8; 32],
}

/// A syntactically valid key presented by a client.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PresentedKey<'a> {
    text: &'a str,
    prefix: &'a str,
    secret: &'a str,
}

impl NewKey {
    /// A new key, checksummed with the deployment's key check.
    pub(crate) fn generate(check: &KeyCheck) -> Self {
        let mut rng = rand::rng();
        let prefix = Alphanumeric.sample_string(&mut rng, PREFIX_LEN);
        let secret = Alphanumeric.sample_string(&mut rng, SECRET_LEN);
        let body = format!("tk_{prefix}_{secret}");
        let check = check.digits(&body);
        let key = format!(
            "{body}{}",
            std::str::from_utf8(&check).expect("base62 is ascii")
        );
        NewKey {
            hash: hash_secret(&secret),
            key,
            prefix,
        }
    }
}

impl<'a> PresentedKey<'a> {
    /// Parses and checksums a key, as resolution does in two steps (the checksum only when
    /// the prefix is not cached).
    #[cfg(test)]
    pub(crate) fn parse(s: &'a str, check: &KeyCheck) -> Result<Self, KeyFormatError> {
        let key = Self::parse_format(s)?;
        if key.checksum_ok(check) {
            Ok(key)
        } else {
            Err(KeyFormatError::Checksum)
        }
    }

    /// Parses a key's format alone. Its checksum must then be checked
    /// ([`checksum_ok`](Self::checksum_ok)) before anything is looked up for it; a caller that
    /// finds the prefix already cached may skip it, because the stored hash decides then.
    pub(crate) fn parse_format(s: &'a str) -> Result<Self, KeyFormatError> {
        let b = s.as_bytes();
        if b.len() != KEY_LEN
            || !s.starts_with("tk_")
            || b[3 + PREFIX_LEN] != b'_'
            || !b[3..3 + PREFIX_LEN].iter().all(u8::is_ascii_alphanumeric)
            || !b[4 + PREFIX_LEN..].iter().all(u8::is_ascii_alphanumeric)
        {
            return Err(KeyFormatError::Malformed);
        }
        Ok(Self {
            text: s,
            prefix: &s[3..3 + PREFIX_LEN],
            secret: &s[4 + PREFIX_LEN..KEY_LEN - CHECK_LEN],
        })
    }

    /// Whether the key's checksum is the deployment's (or, for a key issued before the keyed
    /// checksum, its CRC-32 one).
    pub(crate) fn checksum_ok(&self, check: &KeyCheck) -> bool {
        let (body, digits) = self.text.split_at(KEY_LEN - CHECK_LEN);
        let keyed = bool::from(check.digits(body).ct_eq(digits.as_bytes()));
        keyed || (crc_digits(body) == digits.as_bytes() && check.legacy.contains(self.prefix))
    }

    /// The lookup id.
    pub(crate) fn prefix(&self) -> &'a str {
        self.prefix
    }

    /// Compares the secret with a stored hash in constant time.
    pub(crate) fn matches(&self, stored: &[u8]) -> bool {
        let h = hash_secret(self.secret);
        stored.len() == h.len() && bool::from(h.as_slice().ct_eq(stored))
    }
}

fn hash_secret(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// The CRC-32 check digits of keys issued before the keyed checksum.
fn crc_digits(body: &str) -> [u8; CHECK_LEN] {
    base62(crc32fast::hash(body.as_bytes()) as u64)
}

/// The low base62 digits of `n`.
fn base62(mut n: u64) -> [u8; CHECK_LEN] {
    let mut out = [b'0'; CHECK_LEN];
    for slot in out.iter_mut().rev() {
        *slot = BASE62[(n % 62) as usize];
        n /= 62;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check() -> KeyCheck {
        KeyCheck::new(b"0123456789abcdef0123456789abcdef")
    }

    #[test]
    fn round_trip() {
        let c = check();
        let k = NewKey::generate(&c);
        assert_eq!(k.key.len(), KEY_LEN);
        let p = PresentedKey::parse(&k.key, &c).unwrap();
        assert_eq!(p.prefix(), k.prefix);
        assert!(p.matches(&k.hash));
        assert!(!p.matches(&NewKey::generate(&c).hash));
        assert!(!p.matches(&k.hash[..31]));
    }

    #[test]
    fn typo_is_caught_by_checksum() {
        let c = check();
        let k = NewKey::generate(&c);
        let mut bytes = k.key.clone().into_bytes();
        let i = 20;
        bytes[i] = if bytes[i] == b'a' { b'b' } else { b'a' };
        let typo = String::from_utf8(bytes).unwrap();
        assert_eq!(
            PresentedKey::parse(&typo, &c).unwrap_err(),
            KeyFormatError::Checksum
        );
    }

    #[test]
    fn a_key_checked_with_another_secret_is_refused() {
        let ours = check();
        let theirs = KeyCheck::new(b"another deployment's secret, 32+");
        let k = NewKey::generate(&theirs);
        assert_eq!(
            PresentedKey::parse(&k.key, &ours).unwrap_err(),
            KeyFormatError::Checksum
        );
    }

    /// A key with a CRC-32 checksum (anyone can compute one) passes only when its prefix is
    /// one of the keys issued before the keyed checksum.
    #[test]
    fn crc_checksums_only_for_legacy_prefixes() {
        let body = format!("tk_{}_{}", "A".repeat(PREFIX_LEN), "b".repeat(SECRET_LEN));
        let key = format!("{body}{}", std::str::from_utf8(&crc_digits(&body)).unwrap());
        assert_eq!(
            PresentedKey::parse(&key, &check()).unwrap_err(),
            KeyFormatError::Checksum
        );
        let legacy = check().with_legacy(["A".repeat(PREFIX_LEN)]);
        assert!(PresentedKey::parse(&key, &legacy).is_ok());
    }

    #[test]
    fn malformed() {
        let c = check();
        for bad in ["", "tk_", "tk_short", &"x".repeat(KEY_LEN), "tk_é"] {
            assert_eq!(
                PresentedKey::parse(bad, &c).unwrap_err(),
                KeyFormatError::Malformed
            );
        }
        let k = NewKey::generate(&c);
        let swapped = k.key.replacen("tk_", "tx_", 1);
        assert!(PresentedKey::parse(&swapped, &c).is_err());
    }
}
