//! API keys: format, generation, hashing and constant-time verification.
//!
//! Format: `tk_<prefix>_<secret><check>`
//! - `prefix`: 12 base62 characters, public, unique: the lookup id (shown in lists);
//! - `secret`: 40 base62 characters from a CSPRNG (~238 bits): never stored, only its SHA-256;
//! - `check`: 6 base62 characters of CRC-32 over everything before it, so a mistyped key is
//!   rejected without a database lookup.
//!
//! A fast hash (SHA-256) is right here, unlike for passwords: the secret is high-entropy, so
//! there is nothing to brute-force, and verification sits on every request's path.

use rand::distr::{Alphanumeric, SampleString};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

const PREFIX_LEN: usize = 12;
const SECRET_LEN: usize = 40;
const CHECK_LEN: usize = 6;
/// Total length of a well-formed key.
pub const KEY_LEN: usize = 3 + PREFIX_LEN + 1 + SECRET_LEN + CHECK_LEN;

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Why a string is not a usable key (before any lookup).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyFormatError {
    #[error("not an API key")]
    Malformed,
    #[error("API key checksum mismatch (typo?)")]
    Checksum,
}

/// A freshly generated key: the full text (shown once) and what the catalog stores.
#[derive(Debug, Clone)]
pub struct NewKey {
    pub key: String,
    pub prefix: String,
    pub hash: [u8; 32],
}

/// A syntactically valid key presented by a client.
#[derive(Debug, Clone, Copy)]
pub struct PresentedKey<'a> {
    prefix: &'a str,
    secret: &'a str,
}

impl NewKey {
    pub fn generate() -> Self {
        let mut rng = rand::rng();
        let prefix = Alphanumeric.sample_string(&mut rng, PREFIX_LEN);
        let secret = Alphanumeric.sample_string(&mut rng, SECRET_LEN);
        let body = format!("tk_{prefix}_{secret}");
        let check = checksum(&body);
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

    /// The display form of the prefix (`tk_` + lookup id).
    pub fn display_prefix(&self) -> String {
        format!("tk_{}", self.prefix)
    }
}

impl<'a> PresentedKey<'a> {
    /// Parses and checksums a key. No allocation, no lookup.
    pub fn parse(s: &'a str) -> Result<Self, KeyFormatError> {
        let b = s.as_bytes();
        if b.len() != KEY_LEN
            || !s.starts_with("tk_")
            || b[3 + PREFIX_LEN] != b'_'
            || !b[3..3 + PREFIX_LEN].iter().all(u8::is_ascii_alphanumeric)
            || !b[4 + PREFIX_LEN..].iter().all(u8::is_ascii_alphanumeric)
        {
            return Err(KeyFormatError::Malformed);
        }
        let (body, check) = s.split_at(KEY_LEN - CHECK_LEN);
        if checksum(body) != check.as_bytes() {
            return Err(KeyFormatError::Checksum);
        }
        Ok(Self {
            prefix: &s[3..3 + PREFIX_LEN],
            secret: &body[4 + PREFIX_LEN..],
        })
    }

    /// The lookup id.
    pub fn prefix(&self) -> &'a str {
        self.prefix
    }

    /// Compares the secret with a stored hash in constant time.
    pub fn matches(&self, stored: &[u8]) -> bool {
        let h = hash_secret(self.secret);
        stored.len() == h.len() && bool::from(h.as_slice().ct_eq(stored))
    }
}

fn hash_secret(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// The base62 check digits of `body` (on the stack: every request checks one).
fn checksum(body: &str) -> [u8; CHECK_LEN] {
    let mut n = crc32fast::hash(body.as_bytes()) as u64;
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

    #[test]
    fn round_trip() {
        let k = NewKey::generate();
        assert_eq!(k.key.len(), KEY_LEN);
        let p = PresentedKey::parse(&k.key).unwrap();
        assert_eq!(p.prefix(), k.prefix);
        assert!(p.matches(&k.hash));
        assert!(!p.matches(&NewKey::generate().hash));
        assert!(!p.matches(&k.hash[..31]));
    }

    #[test]
    fn typo_is_caught_by_checksum() {
        let k = NewKey::generate();
        let mut bytes = k.key.clone().into_bytes();
        let i = 20;
        bytes[i] = if bytes[i] == b'a' { b'b' } else { b'a' };
        let typo = String::from_utf8(bytes).unwrap();
        assert_eq!(
            PresentedKey::parse(&typo).unwrap_err(),
            KeyFormatError::Checksum
        );
    }

    #[test]
    fn malformed() {
        for bad in ["", "tk_", "tk_short", &"x".repeat(KEY_LEN), "tk_é"] {
            assert_eq!(
                PresentedKey::parse(bad).unwrap_err(),
                KeyFormatError::Malformed
            );
        }
        let k = NewKey::generate();
        let swapped = k.key.replacen("tk_", "tx_", 1);
        assert!(PresentedKey::parse(&swapped).is_err());
    }
}
