//! Tenantry: multi-tenancy for axum/tower services on PostgreSQL, where one tenant seeing
//! another's data is made impossible by construction.
//!
//! # Layout
//!
//! In the order a request meets them:
//!
//! - [`resolve`]: finding the tenant of a request: credential first, hints (subdomain,
//!   `X-Tenant-Id`, path) must agree.
//! - [`auth`]: API keys (format, keyed checksum, hashing, constant-time checks), JWTs and
//!   principals.
//! - [`tenancy`]: [`Tenancy`], which ties the rest together: resolution, then admission.
//! - [`plan`] and [`ratelimit`]: plans, the limits they give a tenant, and per-tenant GCRA
//!   limits.
//! - [`context`]: [`TenantContext`], the proof a request was resolved.
//! - [`db`]: the pools and the scoped transaction that is the only way to tenant tables;
//!   `db::control` is the control plane's side (roles, migrations, provisioning, fleet
//!   migrations, the doctor).
//! - [`http`]: tower layers ([`TenancyLayer`], [`RequestIdLayer`]), extractors and
//!   problem+json errors.
//!
//! Around them:
//!
//! - [`tenant`]: a tenant's immutable id, its slug, its status and catalog record.
//! - [`placement`]: where a tenant's rows live (shared tables, a schema, a database).
//! - [`catalog`]: the control-plane catalog of tenants and keys, with a cache that every node
//!   invalidates through PostgreSQL LISTEN/NOTIFY.
//! - [`lifecycle`]: creating and deleting tenants in every placement.
//! - [`cache`]: a tenant-keyed cache with single-flight loads and cross-node invalidation.
//! - [`jobs`]: tenant-isolated background jobs in PostgreSQL, claimed fairly across tenants.
//! - [`audit`]: the audit log, written only by the control role.
//! - [`operations`]: long-running admin operations (fleet migrations) and their progress.
//! - [`metrics`]: Prometheus metrics with per-tenant series of bounded cardinality.
//!
//! # Features
//!
//! - `openapi`: `utoipa::ToSchema` for the public resource types ([`Tenant`], API keys, jobs,
//!   operations, audit entries, problem codes), so an application's OpenAPI document can
//!   describe them without mirroring them.
//! - `internals`: the exact statements the library sends (`db::single_statement_form`,
//!   `db::SCOPE_SCHEMA_SQL`), for a benchmark that must send the same ones; not for
//!   applications.
//!
//! A complete example app (its own table and routes behind [`TenancyLayer`]) is
//! `examples/notes.rs`.
//!
//! # Quick start
//!
//! ```no_run
//! use axum::{routing::get, Router};
//! use tenantry::{db, Catalog, Json, Problem, Tenancy, TenancyConfig, TenancyLayer, TenantContext};
//!
//! async fn count(ctx: TenantContext) -> Result<Json<i64>, Problem> {
//!     // `$1` is always the context's tenant; the statement must say `tenant_id = $1`.
//!     let row = ctx
//!         .db()
//!         .run_opt("SELECT count(*) FROM notes WHERE tenant_id = $1", &[])
//!         .await?;
//!     Ok(Json(row.map(|r| r.get(0)).unwrap_or(0)))
//! }
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let control: tokio_postgres::Config = "postgres://postgres@127.0.0.1/app".parse()?;
//! // The tenant tables, defined once; the runner adds the forced RLS policy to each.
//! static MIGRATIONS: &[db::TenantMigration] = &[db::TenantMigration {
//!     version: 1,
//!     name: "notes",
//!     sql: "CREATE TABLE notes (tenant_id text NOT NULL CHECK (tenant_id <> ''),
//!           id uuid NOT NULL, body text NOT NULL, PRIMARY KEY (tenant_id, id))",
//! }];
//! let database = db::Database::connect(
//!     control, None, &db::RoleNames::default(), MIGRATIONS, &Default::default(),
//! ).await?;
//! let tenancy = Tenancy::new(Catalog::new(database), TenancyConfig::default());
//! let app: Router = Router::new()
//!     .route("/notes/count", get(count))
//!     .layer(TenancyLayer::new(tenancy));
//! # Ok(()) }
//! ```

pub mod audit;
pub mod auth;
pub mod cache;
pub mod catalog;
pub mod context;
pub mod db;
pub mod http;
pub mod jobs;
pub mod lifecycle;
pub mod metrics;
pub mod operations;
pub mod placement;
pub mod plan;
pub mod ratelimit;
pub mod resolve;
pub mod tenancy;
pub mod tenant;

/// The hash map of the request path's internal tables (limiter, in-flight counts, metrics,
/// statement forms, key usage, the catalog fronts). What they hold is keyed by tenants, keys,
/// route templates and static statements, which the operator created, and each is bounded, so
/// a randomly seeded foldhash stands in for std's SipHash, which costs several times more per
/// lookup and is met several times per request. The moka caches, which also remember what a client presented that
/// does not exist, keep SipHash.
pub(crate) type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// A process-wide table of values worked out once per key and never changed after (a
/// statement's single-statement form, a problem's rendered body): a hit is a hash under a
/// shared read lock. At most `cap` entries are kept; past that a value is worked out on each
/// call, so keys made at run time cannot grow the table without bound.
pub(crate) struct Kept<K, V> {
    map: std::sync::RwLock<FastMap<K, V>>,
    cap: usize,
}

impl<K: std::hash::Hash + Eq, V: Clone> Kept<K, V> {
    pub(crate) fn new(cap: usize) -> Self {
        Self {
            map: Default::default(),
            cap,
        }
    }

    /// The value kept for `key`, or `make`'s (kept if there is room).
    pub(crate) fn get_or_keep(&self, key: K, make: impl FnOnce() -> V) -> V {
        if let Some(v) = self.map.read().ok().and_then(|m| m.get(&key).cloned()) {
            return v;
        }
        let v = make();
        if let Ok(mut m) = self.map.write() {
            if m.len() < self.cap {
                m.insert(key, v.clone());
            }
        }
        v
    }
}

pub use catalog::Catalog;
pub use context::TenantContext;
pub use http::{Json, Problem, Query, RequestIdLayer, TenancyLayer};
pub use placement::{Isolation, Placement};
pub use plan::{Plan, Plans, TenantLimits};
pub use tenancy::{Tenancy, TenancyConfig};
pub use tenant::{Slug, Tenant, TenantId, TenantStatus};
