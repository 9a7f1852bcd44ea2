//! Tenant resolution: which tenant a request is for, and whether the caller may act in it.
//!
//! The rules, in order:
//! 1. **Hints are parsed first** (subdomain, `X-Tenant-Id`, path). A hint that is not a valid
//!    slug is 400 `invalid_tenant`, before any lookup.
//! 2. **The credential decides the tenant.** No credential is 401 `unauthenticated`, even when a
//!    hint names a tenant: a hint is a claim, never a credential.
//! 3. **Every hint must agree** with the credential's tenant, or the answer is 403
//!    `tenant_mismatch`. Agreement is checked for each hint present, not just the first.
//! 4. The tenant must exist and be active (403 `tenant_suspended`), the credential must allow
//!    the method (403 `forbidden` for a read-only key writing), and the plan's rate limit must
//!    admit the request (429, decided before any tenant database work).
//!
//! Each hint source is its own module so apps can enable the ones they use.

pub(crate) mod credential;
pub(crate) mod header;
pub(crate) mod path;
pub(crate) mod proxy;
pub(crate) mod subdomain;

pub use header::X_TENANT_ID;
pub use proxy::Cidr;

use crate::tenant::Slug;

/// Where a tenant hint came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HintSource {
    Subdomain,
    Header,
    Path,
}

impl HintSource {
    pub fn as_str(self) -> &'static str {
        match self {
            HintSource::Subdomain => "subdomain",
            HintSource::Header => "X-Tenant-Id header",
            HintSource::Path => "path",
        }
    }
}

/// Why a request cannot be resolved to a tenant context.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    #[error("the {0} does not name a valid tenant")]
    InvalidTenant(&'static str),
    #[error("credentials required")]
    Unauthenticated,
    #[error("invalid credentials")]
    InvalidCredentials,
    #[error("the {0} names a tenant other than the credential's")]
    Mismatch(&'static str),
    #[error("tenant suspended")]
    Suspended,
    #[error("this credential may not {0}")]
    Forbidden(&'static str),
    #[error("{0}")]
    BadHeader(&'static str),
    #[error("rate limit exceeded")]
    RateLimited {
        decision: crate::ratelimit::Decision,
        policy: String,
        tenant: Slug,
    },
    #[error("too many requests in flight for this tenant")]
    TooManyInFlight {
        decision: crate::ratelimit::Decision,
        policy: String,
        tenant: Slug,
    },
    #[error("tenant lookups unavailable")]
    Unavailable,
    /// The client address has failed to authenticate too often; nothing was verified.
    #[error("too many failed authentications from this address; retry later")]
    TooManyFailures { retry_after_secs: u64 },
    /// Public routes only: the subdomain names no tenant that exists.
    #[error("no such tenant")]
    UnknownTenant,
}

/// A credential kind a deployment accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialSource {
    /// `tk_…` keys in `Authorization: Bearer` or `X-Api-Key`.
    ApiKey,
    /// JWTs in `Authorization: Bearer` (needs a [`crate::auth::jwt::JwtVerifier`]).
    Jwt,
}

/// Which credentials and hints a deployment believes, and how to read them.
///
/// The lists are ordered for documentation and configuration; the rules do not depend on the
/// order, because nothing is decided by "first match": exactly one credential may be presented
/// (two are refused as ambiguous), and *every* hint present must agree with it.
#[derive(Debug, Clone)]
pub struct ResolverConfig {
    /// Accepted credential kinds. A credential of a kind not listed is `invalid_credentials`.
    pub credentials: Vec<CredentialSource>,
    /// Subdomain hints under this domain (`acme.<base>`); `None` disables them.
    pub base_domain: Option<String>,
    /// Subdomains that are never tenants (`www`, `api`).
    pub ignored_subdomains: Vec<String>,
    /// Whether `X-Tenant-Id` is read.
    pub header: bool,
    /// Path hints: the prefix before the slug segment (`/v1/tenants/`).
    pub path_prefix: Option<String>,
    /// Peers whose `X-Forwarded-Host` is believed for subdomain hints.
    pub trusted_proxies: Vec<proxy::Cidr>,
}

impl Default for ResolverConfig {
    fn default() -> Self {
        Self {
            credentials: vec![CredentialSource::ApiKey, CredentialSource::Jwt],
            base_domain: Some("localhost".into()),
            ignored_subdomains: vec!["www".into(), "api".into()],
            header: true,
            path_prefix: Some("/v1/tenants/".into()),
            trusted_proxies: Vec::new(),
        }
    }
}

/// All tenant hints of a request, each validated. Empty when the request names no tenant.
pub(crate) fn hints(
    parts: &http::request::Parts,
    cfg: &ResolverConfig,
) -> Result<Vec<(HintSource, Slug)>, ResolveError> {
    let mut out = Vec::new();
    if let Some(t) = subdomain_hint(parts, cfg)? {
        out.push((HintSource::Subdomain, t));
    }
    if cfg.header {
        header::hints(&parts.headers, &mut out)?;
    }
    if let Some(prefix) = &cfg.path_prefix {
        if let Some(t) = path::hint(parts.uri.path(), prefix)? {
            out.push((HintSource::Path, t));
        }
    }
    Ok(out)
}

/// Checks that every hint names `tenant`.
pub(crate) fn check_hints(hints: &[(HintSource, Slug)], tenant: &Slug) -> Result<(), ResolveError> {
    match hints.iter().find(|(_, t)| t != tenant) {
        Some((src, _)) => Err(ResolveError::Mismatch(src.as_str())),
        None => Ok(()),
    }
}

/// The subdomain hint alone (the forwarded host when the peer is a trusted proxy).
pub(crate) fn subdomain_hint(
    parts: &http::request::Parts,
    cfg: &ResolverConfig,
) -> Result<Option<Slug>, ResolveError> {
    let Some(base) = &cfg.base_domain else {
        return Ok(None);
    };
    let forwarded = proxy::effective_host(parts, &cfg.trusted_proxies);
    subdomain::hint(parts, forwarded, base, &cfg.ignored_subdomains)
}
