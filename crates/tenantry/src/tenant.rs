//! Tenant identity and the catalog record that describes a tenant.
//!
//! A tenant has two names, and they are different types so that one cannot stand in for the
//! other:
//! - its [`TenantId`]: assigned at creation, immutable, never given to another tenant, even
//!   after this one is deleted. Everything the tenant owns is keyed by it: the `tenant_id`
//!   column of its rows in every placement, its jobs and queue, its API keys, its cache
//!   entries, its limiter, usage and connection-share state. A later tenant that takes a freed
//!   slug therefore starts from nothing, and a write that races a deletion can only leave rows
//!   nobody can read (which `tenantry doctor` reports).
//! - its [`Slug`]: the name humans and URLs use (`acme.example.com`, `X-Tenant-Id: acme`, a
//!   JWT's tenant claim). A slug is unique among live tenants and may be taken again once its
//!   tenant is gone.
//!
//! Parsing is the only way to get either ("parse, don't validate"), so every layer below the
//! HTTP edge can rely on their grammars: schema names, cache keys and log fields are built from
//! them without further escaping worries.

use std::fmt;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::placement::{Isolation, Placement};

/// A tenant's immutable identity (see the module doc): a UUID (v7) for tenants created by this
/// version, the slug of tenants created before ids existed (their rows were already keyed by
/// it). Either way it matches `^[a-z0-9][a-z0-9-]{1,63}$`, and the catalog's registry of ids
/// (`tenantry.tenant_ids`) keeps every id ever assigned, so none is assigned twice.
///
/// Cheap to clone (`Arc<str>`): it travels in every request context, cache key and job.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TenantId(Arc<str>);

/// Why a string is not a tenant id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("tenant ids match ^[a-z0-9][a-z0-9-]{{1,63}}$")]
pub struct InvalidTenantId;

impl TenantId {
    /// A fresh id for a new tenant.
    pub(crate) fn generate() -> Self {
        Self(Arc::from(uuid::Uuid::now_v7().hyphenated().to_string()))
    }

    /// Parses an id; anything outside the grammar is rejected.
    pub fn parse(s: &str) -> Result<Self, InvalidTenantId> {
        let b = s.as_bytes();
        let ok = (2..=64).contains(&b.len())
            && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
            && b[1..]
                .iter()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-');
        if ok {
            Ok(Self(Arc::from(s)))
        } else {
            Err(InvalidTenantId)
        }
    }

    /// The same id in an allocation of its own (see [`Slug::unshared`]).
    pub(crate) fn unshared(&self) -> Self {
        Self(Arc::from(&*self.0))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TenantId({})", &self.0)
    }
}

impl Serialize for TenantId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for TenantId {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .description(Some(
                "The tenant's immutable id: assigned at creation, never reused.",
            ))
            .examples(["0193b7a2-5f1e-7c3d-9a8b-2f4e6d8c1a0b"])
            .into()
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for TenantId {}

/// A tenant slug that matches `^[a-z][a-z0-9-]{1,62}$`.
///
/// Cheap to clone (`Arc<str>`): it travels in every request context, cache key and job.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Slug(Arc<str>);

#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for Slug {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .pattern(Some("^[a-z][a-z0-9-]{1,62}$"))
            .description(Some("A tenant slug."))
            .examples(["acme"])
            .into()
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for Slug {}

/// Why a string is not a tenant slug.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("tenant slugs match ^[a-z][a-z0-9-]{{1,62}}$")]
pub struct InvalidSlug;

impl Slug {
    /// The same slug in an allocation of its own. A per-thread copy holds one, so that
    /// cloning and dropping it on the request path writes a reference count no other core
    /// writes (see `catalog::front`).
    pub(crate) fn unshared(&self) -> Self {
        Self(Arc::from(&*self.0))
    }

    /// Parses a slug; anything outside the grammar is rejected.
    pub fn parse(s: &str) -> Result<Self, InvalidSlug> {
        if is_valid_slug(s) {
            Ok(Self(Arc::from(s)))
        } else {
            Err(InvalidSlug)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The slug grammar, checked byte by byte (no regex engine on the hot path).
pub(crate) fn is_valid_slug(s: &str) -> bool {
    let b = s.as_bytes();
    (2..=63).contains(&b.len())
        && b[0].is_ascii_lowercase()
        && b[1..]
            .iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

impl fmt::Display for Slug {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Slug {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Slug({})", &self.0)
    }
}

impl Serialize for Slug {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Slug {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Slug::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Whether a tenant may be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum TenantStatus {
    Active,
    Suspended,
}

impl TenantStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            TenantStatus::Active => "active",
            TenantStatus::Suspended => "suspended",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "active" => Some(Self::Active),
            "suspended" => Some(Self::Suspended),
            _ => None,
        }
    }
}

/// A per-tenant rate-limit override: `requests` per `per_seconds`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RateLimitOverride {
    pub requests: u32,
    pub per_seconds: u32,
}

/// Whether a tenant's storage is complete. Only `Ready` tenants are served: a tenant whose
/// provisioning crashed half-way stays `Provisioning` and is never reachable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum StorageState {
    Provisioning,
    Ready,
    Deleting,
}

impl StorageState {
    pub fn as_str(self) -> &'static str {
        match self {
            StorageState::Provisioning => "provisioning",
            StorageState::Ready => "ready",
            StorageState::Deleting => "deleting",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "provisioning" => Some(Self::Provisioning),
            "ready" => Some(Self::Ready),
            "deleting" => Some(Self::Deleting),
            _ => None,
        }
    }
}

/// A tenant as the catalog knows it. Shared read-only through `Arc` by the resolution cache.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Tenant {
    /// Immutable, never reused ([`TenantId`]).
    pub id: TenantId,
    pub slug: Slug,
    pub name: String,
    pub plan: String,
    pub status: TenantStatus,
    pub isolation: Isolation,
    pub rate_limit: Option<RateLimitOverride>,
    pub created_at: DateTime<Utc>,
    /// The database server of a `database` tenant.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    /// `ready` unless provisioning or deletion is under way (or crashed).
    pub storage_state: StorageState,
    #[serde(skip)]
    pub placement: Placement,
    /// The newest tenant migration applied to this tenant's storage.
    #[serde(skip)]
    pub schema_version: i32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slug_grammar() {
        for ok in [
            "ab",
            "acme",
            "a1",
            "acme-corp",
            "a-",
            &format!("a{}", "b".repeat(62)),
        ] {
            assert!(Slug::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "a",
            "1abc",
            "-abc",
            "Acme",
            "ac_me",
            "ac.me",
            "ac me",
            "acmé",
            &format!("a{}", "b".repeat(63)),
        ] {
            assert!(Slug::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn id_grammar() {
        let fresh = TenantId::generate();
        assert_eq!(TenantId::parse(fresh.as_str()).unwrap(), fresh);
        assert_ne!(TenantId::generate(), fresh);
        // Ids of tenants created before ids existed are their slugs.
        assert!(TenantId::parse("acme").is_ok());
        for bad in ["", "a", "-a", "Acme", "a b", "a_b", &"a".repeat(65)] {
            assert!(TenantId::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn deserialize_rejects_bad_slug() {
        assert!(serde_json::from_str::<Slug>("\"acme\"").is_ok());
        assert!(serde_json::from_str::<Slug>("\"ACME\"").is_err());
    }
}
