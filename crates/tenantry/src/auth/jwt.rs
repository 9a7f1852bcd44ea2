//! JWT verification: HS256 with a shared secret, RS256/ES256 with a PEM public key or a JWKS
//! file (selected by `kid`, reloaded when the file changes).
//!
//! What must hold:
//! - **A strict algorithm allowlist, bound to the key.** The token's `alg` picks the key *family*
//!   (HS256 → only the configured secret; RS256/ES256 → only public keys of that type), so an
//!   HS256 token "signed" with the RSA public key as a secret never meets that key. `none` and
//!   every other algorithm are refused.
//! - `exp` is required; `nbf`, `iss` and `aud` are checked when configured, with a small leeway.
//! - The tenant comes from one configurable claim and must be a valid slug; the tenant must
//!   then exist and be active (checked by [`crate::Tenancy`] exactly as for API keys).
//! - `iat` is required, and a token issued before its tenant was created is refused (by
//!   [`crate::Tenancy`], which knows when that was): a slug freed by a deleted tenant can be
//!   taken again, and a token minted for the old tenant must not open the new one. A token
//!   without `iat` cannot show that it is younger than its tenant, so it is refused too. An
//!   `iat` in the future (beyond the leeway) is refused as malformed.
//! - Oversized tokens are refused before any parsing.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

use crate::tenant::Slug;

/// The largest token accepted.
pub(crate) const MAX_TOKEN_LEN: usize = 8 * 1024;

/// JWT settings.
#[derive(Debug, Clone)]
pub struct JwtConfig {
    /// HS256 shared secret.
    pub hs256_secret: Option<Vec<u8>>,
    /// A PEM public key (RSA for RS256, P-256 for ES256).
    pub public_key_pem: Option<Vec<u8>>,
    /// A JWKS file; keys are chosen by `kid` and the file is re-read when it changes.
    pub jwks_file: Option<PathBuf>,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    /// The claim naming the tenant (default `tenant_id`).
    pub tenant_claim: String,
    /// Clock skew tolerated on `exp` and `nbf`.
    pub leeway: Duration,
}

impl Default for JwtConfig {
    fn default() -> Self {
        Self {
            hs256_secret: None,
            public_key_pem: None,
            jwks_file: None,
            issuer: None,
            audience: None,
            tenant_claim: "tenant_id".into(),
            leeway: Duration::from_secs(30),
        }
    }
}

impl JwtConfig {
    pub fn enabled(&self) -> bool {
        self.hs256_secret.is_some() || self.public_key_pem.is_some() || self.jwks_file.is_some()
    }
}

/// Why a token was refused. All map to 401 `invalid_credentials`; the detail goes to logs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("token too large")]
    TooLarge,
    #[error("malformed token")]
    Malformed,
    #[error("algorithm not allowed")]
    Algorithm,
    #[error("unknown key id")]
    UnknownKey,
    #[error("invalid token: {0}")]
    Invalid(String),
    #[error("token has no valid tenant claim")]
    Tenant,
    #[error("key configuration: {0}")]
    Config(String),
}

/// What a verified token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtIdentity {
    pub tenant: Slug,
    pub subject: Option<String>,
    pub read_only: bool,
    /// `iat`, seconds since the epoch.
    pub issued_at: i64,
}

#[derive(Default)]
struct Keys {
    hs: Option<DecodingKey>,
    /// The PEM key and its algorithm.
    pem: Option<(Algorithm, DecodingKey)>,
    /// JWKS keys by kid.
    jwks: HashMap<String, (Algorithm, DecodingKey)>,
    jwks_stamp: Option<(SystemTime, u64)>,
}

/// Verifies tokens. Cheap to clone.
#[derive(Clone)]
pub struct JwtVerifier {
    config: Arc<JwtConfig>,
    keys: Arc<RwLock<Keys>>,
}

impl JwtVerifier {
    pub fn new(config: JwtConfig) -> Result<Self, JwtError> {
        let mut keys = Keys::default();
        if let Some(secret) = &config.hs256_secret {
            if secret.len() < 32 {
                return Err(JwtError::Config(
                    "the HS256 secret must be at least 32 bytes".into(),
                ));
            }
            keys.hs = Some(
                DecodingKey::from_secret(secret).map_err(|e| JwtError::Config(e.to_string()))?,
            );
        }
        if let Some(pem) = &config.public_key_pem {
            keys.pem = Some(if let Ok(k) = DecodingKey::from_rsa_pem(pem) {
                (Algorithm::RS256, k)
            } else if let Ok(k) = DecodingKey::from_ec_pem(pem) {
                (Algorithm::ES256, k)
            } else {
                return Err(JwtError::Config(
                    "the public key is neither an RSA nor a P-256 PEM key".into(),
                ));
            });
        }
        let v = Self {
            config: Arc::new(config),
            keys: Arc::new(RwLock::new(keys)),
        };
        if v.config.jwks_file.is_some() {
            v.reload_jwks()?;
        }
        Ok(v)
    }

    pub fn config(&self) -> &JwtConfig {
        &self.config
    }

    /// Re-reads the JWKS file if it changed (by modification time and size). On a bad file the
    /// previous keys stay in force and the error is returned (and logged by the caller).
    pub fn reload_jwks(&self) -> Result<bool, JwtError> {
        let Some(path) = &self.config.jwks_file else {
            return Ok(false);
        };
        let meta = std::fs::metadata(path)
            .map_err(|e| JwtError::Config(format!("{}: {e}", path.display())))?;
        let stamp = (
            meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            meta.len(),
        );
        if self.read().jwks_stamp == Some(stamp) {
            return Ok(false);
        }
        let text = std::fs::read_to_string(path).map_err(|e| JwtError::Config(e.to_string()))?;
        let set: JwkSet =
            serde_json::from_str(&text).map_err(|e| JwtError::Config(format!("JWKS: {e}")))?;
        let mut map = HashMap::new();
        for jwk in &set.keys {
            let Some(kid) = jwk.common.key_id.clone() else {
                continue;
            };
            // Only asymmetric keys: a symmetric key in a JWKS would reopen HS/RS confusion.
            let alg = match &jwk.algorithm {
                AlgorithmParameters::RSA(_) => Algorithm::RS256,
                AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P256 => {
                    Algorithm::ES256
                }
                _ => continue,
            };
            if let Ok(key) = DecodingKey::from_jwk(jwk) {
                map.insert(kid, (alg, key));
            }
        }
        let mut keys = self.keys.write().unwrap_or_else(|p| p.into_inner());
        keys.jwks = map;
        keys.jwks_stamp = Some(stamp);
        Ok(true)
    }

    /// Polls the JWKS file for changes until the task is dropped.
    pub async fn watch_jwks(self, every: Duration) {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            match self.reload_jwks() {
                Ok(true) => tracing::info!("reloaded the JWKS file"),
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "could not reload the JWKS file; keeping the previous keys")
                }
            }
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Keys> {
        self.keys.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Verifies a token and extracts the tenant and access level.
    pub fn verify(&self, token: &str) -> Result<JwtIdentity, JwtError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(JwtError::TooLarge);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| JwtError::Malformed)?;
        let claims = {
            let keys = self.read();
            let (alg, key) = match header.alg {
                Algorithm::HS256 => (
                    Algorithm::HS256,
                    keys.hs.as_ref().ok_or(JwtError::Algorithm)?,
                ),
                Algorithm::RS256 | Algorithm::ES256 => {
                    let found = match &header.kid {
                        Some(kid) if !keys.jwks.is_empty() => keys
                            .jwks
                            .get(kid)
                            .map(|(a, k)| (*a, k))
                            .ok_or(JwtError::UnknownKey)?,
                        _ => keys
                            .pem
                            .as_ref()
                            .map(|(a, k)| (*a, k))
                            .ok_or(JwtError::UnknownKey)?,
                    };
                    if found.0 != header.alg {
                        return Err(JwtError::Algorithm);
                    }
                    found
                }
                _ => return Err(JwtError::Algorithm),
            };
            let mut v = Validation::new(alg);
            v.algorithms = vec![alg];
            v.leeway = self.config.leeway.as_secs();
            v.validate_exp = true;
            v.validate_nbf = true;
            v.set_required_spec_claims(&["exp", "iat"]);
            match &self.config.audience {
                Some(aud) => v.set_audience(&[aud]),
                None => v.validate_aud = false,
            }
            if let Some(iss) = &self.config.issuer {
                v.set_issuer(&[iss]);
            }
            jsonwebtoken::decode::<Map<String, Value>>(token, key, &v)
                .map_err(|e| JwtError::Invalid(e.to_string()))?
                .claims
        };
        let tenant = claims
            .get(&self.config.tenant_claim)
            .and_then(Value::as_str)
            .and_then(|s| Slug::parse(s).ok())
            .ok_or(JwtError::Tenant)?;
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs() as i64;
        let issued_at = claims
            .get("iat")
            .and_then(Value::as_i64)
            .filter(|iat| *iat <= now + self.config.leeway.as_secs() as i64)
            .ok_or_else(|| JwtError::Invalid("missing, non-integer or future iat".into()))?;
        Ok(JwtIdentity {
            issued_at,
            tenant,
            subject: claims.get("sub").and_then(Value::as_str).map(str::to_owned),
            read_only: read_only(&claims),
        })
    }

    /// Mints a development token with the HS256 secret (`tenantry token`).
    pub fn mint_hs256(
        &self,
        tenant: &Slug,
        ttl: Duration,
        scope: Option<&str>,
    ) -> Result<String, JwtError> {
        let secret = self
            .config
            .hs256_secret
            .as_ref()
            .ok_or_else(|| JwtError::Config("no HS256 secret configured".into()))?;
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let mut claims = Map::new();
        claims.insert(
            self.config.tenant_claim.clone(),
            Value::from(tenant.as_str()),
        );
        claims.insert("iat".into(), Value::from(now));
        claims.insert("exp".into(), Value::from(now + ttl.as_secs()));
        claims.insert("sub".into(), Value::from("tenantry-dev-token"));
        if let Some(s) = scope {
            claims.insert("scope".into(), Value::from(s));
        }
        if let Some(iss) = &self.config.issuer {
            claims.insert("iss".into(), Value::from(iss.as_str()));
        }
        if let Some(aud) = &self.config.audience {
            claims.insert("aud".into(), Value::from(aud.as_str()));
        }
        let key = jsonwebtoken::EncodingKey::from_secret(secret)
            .map_err(|e| JwtError::Config(e.to_string()))?;
        jsonwebtoken::encode(&jsonwebtoken::Header::new(Algorithm::HS256), &claims, &key)
            .map_err(|e| JwtError::Config(e.to_string()))
    }
}

/// `scope` (space-separated, OAuth style) or `role` decide read-only vs read-write. Without
/// either the token is read-write, like an API key with default scopes. A scope list without
/// `write` is read-only; so are the roles `viewer` and `read`.
fn read_only(claims: &Map<String, Value>) -> bool {
    if let Some(scope) = claims.get("scope").and_then(Value::as_str) {
        return !scope.split_whitespace().any(|s| s == "write");
    }
    if let Some(role) = claims.get("role").and_then(Value::as_str) {
        return matches!(role, "viewer" | "read" | "readonly" | "read-only");
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hs() -> JwtVerifier {
        JwtVerifier::new(JwtConfig {
            hs256_secret: Some(b"0123456789abcdef0123456789abcdef".to_vec()),
            ..JwtConfig::default()
        })
        .unwrap()
    }

    #[test]
    fn mint_and_verify() {
        let v = hs();
        let t = Slug::parse("acme").unwrap();
        let tok = v.mint_hs256(&t, Duration::from_secs(60), None).unwrap();
        let id = v.verify(&tok).unwrap();
        assert_eq!(id.tenant, t);
        assert!(!id.read_only);
        let ro = v
            .mint_hs256(&t, Duration::from_secs(60), Some("read"))
            .unwrap();
        assert!(v.verify(&ro).unwrap().read_only);
    }

    #[test]
    fn iat_is_required_and_not_in_the_future() {
        let v = hs();
        let key =
            jsonwebtoken::EncodingKey::from_secret(b"0123456789abcdef0123456789abcdef").unwrap();
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let sign = |claims: serde_json::Value| {
            jsonwebtoken::encode(&jsonwebtoken::Header::new(Algorithm::HS256), &claims, &key)
                .unwrap()
        };
        let ok = sign(serde_json::json!({"tenant_id": "acme", "exp": now + 60, "iat": now}));
        assert_eq!(v.verify(&ok).unwrap().issued_at, now as i64);
        let none = sign(serde_json::json!({"tenant_id": "acme", "exp": now + 60}));
        assert!(v.verify(&none).is_err());
        let future =
            sign(serde_json::json!({"tenant_id": "acme", "exp": now + 900, "iat": now + 600}));
        assert!(v.verify(&future).is_err());
    }

    #[test]
    fn short_secret_refused() {
        assert!(JwtVerifier::new(JwtConfig {
            hs256_secret: Some(b"short".to_vec()),
            ..JwtConfig::default()
        })
        .is_err());
    }

    #[test]
    fn garbage_refused() {
        let v = hs();
        for bad in [
            "",
            "a.b.c",
            "eyJhbGciOiJub25lIn0.eyJ0ZW5hbnRfaWQiOiJhY21lIn0.",
            &"x".repeat(10_000),
        ] {
            assert!(v.verify(bad).is_err(), "{bad}");
        }
    }
}
