//! Tenantry: multi-tenancy for axum/tower services on PostgreSQL, where one tenant seeing
//! another's data is made impossible by construction.
//!
//! # Layout
//!
//! In the order a request meets them:
//!
//! 1. [`http`]: [`TenancyLayer`] takes the request (with [`RequestIdLayer`], extractors and
//!    problem+json errors).
//! 2. [`resolve`] and [`auth`]: the tenant of the request: a credential (API key or JWT)
//!    decides it, hints (subdomain, `X-Tenant-Id`, path) must agree.
//! 3. [`Tenancy`] (`tenancy/`): resolution, then admission: the tenant's [`Plan`] and its
//!    limits ([`ratelimit`]: per-tenant GCRA, requests in flight).
//! 4. [`TenantContext`] (`context.rs`): the proof a request was resolved and admitted.
//! 5. [`db`]: the scoped transaction that is the only way to tenant tables, in the tenant's
//!    [`Placement`]; `db/control/` is the control plane's side (roles, migrations,
//!    provisioning, fleet migrations, the doctor).
//! 6. The handler's answer goes back through [`TenancyLayer`], which puts the tenant's
//!    rate-limit state on it.
//!
//! Around them:
//!
//! - [`Tenant`], [`TenantId`], [`Slug`] (`tenant.rs`): a tenant's immutable id, its slug, its
//!   status and catalog record.
//! - [`Placement`] and [`Isolation`] (`placement.rs`): where a tenant's rows live (shared
//!   tables, a schema, a database).
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

#![warn(unreachable_pub)]

pub mod audit;
pub mod auth;
pub mod cache;
pub mod catalog;
pub(crate) mod context;
pub mod db;
pub mod http;
pub mod jobs;
pub mod lifecycle;
pub mod metrics;
pub mod operations;
pub(crate) mod placement;
pub(crate) mod plan;
pub mod ratelimit;
pub mod resolve;
pub(crate) mod tenancy;
pub(crate) mod tenant;

mod breaker;
mod fast_map;
mod memo;
#[cfg(test)]
mod parser_properties;

pub(crate) use fast_map::FastMap;

pub use catalog::Catalog;
pub use context::TenantContext;
pub use http::{Json, Problem, Query, RequestIdLayer, TenancyLayer};
pub use placement::{Isolation, Placement, DEFAULT_SERVER};
pub use plan::{Plan, Plans, TenantLimits};
pub use tenancy::{AdminContextError, Tenancy, TenancyConfig};
pub use tenant::{
    InvalidSlug, InvalidTenantId, RateLimitOverride, Slug, StorageState, Tenant, TenantId,
    TenantStatus,
};
