//! Credentials: who is calling, and what they may do.

pub(crate) mod api_key;
pub(crate) mod jwt;

pub use jwt::{JwtConfig, JwtError, JwtIdentity, JwtVerifier};

use serde::{Deserialize, Serialize};

/// What a credential allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Scope {
    Read,
    Write,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Write => "write",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "read" => Some(Scope::Read),
            "write" => Some(Scope::Write),
            _ => None,
        }
    }
}

/// Who acts in a tenant context. Recorded in logs and, for admins, in the audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// An API key of the tenant.
    ApiKey { id: uuid::Uuid, read_only: bool },
    /// A verified JWT for the tenant.
    Jwt {
        subject: Option<String>,
        read_only: bool,
    },
    /// An operator acting through the admin plane, inside an explicitly named tenant.
    Admin { token: String },
    /// An anonymous visitor on a route an app opted into public, subdomain-resolved access.
    /// Always read-only.
    Public,
    /// A background job of the tenant.
    Job,
}

impl Principal {
    /// Whether this principal may write.
    pub fn can_write(&self) -> bool {
        match self {
            Principal::ApiKey { read_only, .. } | Principal::Jwt { read_only, .. } => !read_only,
            Principal::Admin { .. } => true,
            Principal::Public => false,
            Principal::Job => true,
        }
    }
}
