//! Where a tenant's rows live ([`Isolation`], [`Placement`]), and the names of its schema or
//! database.
//!
//! Names are derived from the validated slug once, at provisioning, and stored in the catalog;
//! nothing recomputes them from input afterwards. PostgreSQL truncates identifiers at 63
//! bytes, so long slugs get a hash suffix instead of being cut into a collision.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Where a tenant's rows live. The same tables and the same forced RLS policy exist in every
/// placement; only the place differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Isolation {
    Shared,
    Schema,
    Database,
}

impl Isolation {
    pub fn as_str(self) -> &'static str {
        match self {
            Isolation::Shared => "shared",
            Isolation::Schema => "schema",
            Isolation::Database => "database",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "shared" => Some(Self::Shared),
            "schema" => Some(Self::Schema),
            "database" => Some(Self::Database),
            _ => None,
        }
    }
}

/// The name of the implicit database server: the control plane's own.
pub const DEFAULT_SERVER: &str = "default";

/// A tenant's storage.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Placement {
    /// Rows in the shared tables.
    Shared,
    /// Tables in the tenant's own schema, in the control database.
    Schema { schema: String },
    /// Tables in the tenant's own database on a named server.
    Database { server: String, database: String },
}

impl Placement {
    pub fn isolation(&self) -> Isolation {
        match self {
            Placement::Shared => Isolation::Shared,
            Placement::Schema { .. } => Isolation::Schema,
            Placement::Database { .. } => Isolation::Database,
        }
    }

    /// Rebuilds a placement from catalog columns.
    pub fn from_catalog(
        isolation: Isolation,
        server: Option<String>,
        storage: Option<String>,
    ) -> Option<Self> {
        match isolation {
            Isolation::Shared => Some(Placement::Shared),
            Isolation::Schema => Some(Placement::Schema { schema: storage? }),
            Isolation::Database => Some(Placement::Database {
                server: server.unwrap_or_else(|| DEFAULT_SERVER.to_owned()),
                database: storage?,
            }),
        }
    }

    /// The placement a new tenant gets.
    pub fn for_new(
        isolation: Isolation,
        slug: &str,
        role_prefix: &str,
        server: Option<&str>,
    ) -> Self {
        match isolation {
            Isolation::Shared => Placement::Shared,
            Isolation::Schema => Placement::Schema {
                schema: schema_name(slug),
            },
            Isolation::Database => Placement::Database {
                server: server.unwrap_or(DEFAULT_SERVER).to_owned(),
                database: database_name(role_prefix, slug),
            },
        }
    }

    /// The catalog's `server` and `storage` columns.
    pub fn columns(&self) -> (Option<&str>, Option<&str>) {
        match self {
            Placement::Shared => (None, None),
            Placement::Schema { schema } => (None, Some(schema)),
            Placement::Database { server, database } => (Some(server), Some(database)),
        }
    }
}

/// `t_<slug>` (with `-` kept: names are always quoted). `slug` is a validated
/// [`crate::Slug`]'s text.
#[cfg_attr(not(feature = "internals"), allow(unreachable_pub))]
pub fn schema_name(slug: &str) -> String {
    bounded("t_", slug)
}

/// `<prefix>_t_<slug>`: the prefix keeps two deployments on one server apart.
#[cfg_attr(not(feature = "internals"), allow(unreachable_pub))]
pub fn database_name(prefix: &str, slug: &str) -> String {
    bounded(&format!("{prefix}_t_"), slug)
}

fn bounded(prefix: &str, slug: &str) -> String {
    let full = format!("{prefix}{slug}");
    if full.len() <= 63 {
        return full;
    }
    let hash = Sha256::digest(slug.as_bytes());
    let hex: String = hash[..8].iter().map(|b| format!("{b:02x}")).collect();
    let keep = 63 - prefix.len() - 1 - hex.len();
    format!("{prefix}{}_{hex}", &slug[..keep.min(slug.len())])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_and_do_not_collide() {
        let long_a = format!("a{}", "b".repeat(62));
        let long_b = format!("a{}c", "b".repeat(61));
        let a = schema_name(&long_a);
        let b = schema_name(&long_b);
        assert!(a.len() <= 63 && b.len() <= 63);
        assert_ne!(a, b);
        assert_eq!(schema_name("acme"), "t_acme");
        let d = database_name("tt_0123456789ab", &long_a);
        assert!(d.len() <= 63, "{d}");
    }
}
