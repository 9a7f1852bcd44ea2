//! The `tenantry` server: a reference multi-tenant SaaS API built on the `tenantry` library,
//! and the operator's CLI.
//!
//! # Layout
//!
//! - [`config`]: settings from flags, environment and `tenantry.toml`.
//! - [`local_pg`]: the managed local PostgreSQL used when `DATABASE_URL` is unset.
//! - [`app`]: building the server and serving with graceful shutdown.
//! - [`connections`]: accepting connections, with deadlines on headers, idle and bodies.
//! - [`edge`]: what every request passes once in front of the router.
//! - [`state`]: what every handler can reach.
//! - [`surface`]: every route with its OpenAPI description, in one list.
//! - [`cli`]: operator subcommands (`migrate`, `doctor`).
//! - [`routes`]: thin handlers per resource (tenant, users, orders, admin, ops).
//! - [`openapi`]: the OpenAPI document, generated from the surface and completed.
//! - [`migrations`]: the tenant tables, defined once for every placement.
//! - [`validate`]: field checks shared by handlers.

pub mod app;
pub mod cli;
pub mod config;
pub mod connections;
pub mod edge;
pub mod local_pg;
pub mod migrations;
pub mod openapi;
pub mod routes;
pub mod state;
pub mod surface;
pub mod validate;
