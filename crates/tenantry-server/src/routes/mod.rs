//! HTTP routes: thin handlers over the library. Each resource has its module.

pub mod admin;
pub mod docs;
pub mod exports;
pub mod ops;
pub mod orders;
pub mod page;
pub mod tenant;
pub mod users;

use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouter};
use utoipa_axum::routes;

use crate::state::AppState;

/// The tenant-data routes, mounted at `/v1`, `/v1/tenants/{tenant}` and
/// `/admin/v1/tenants/{tenant}`. Every handler takes a `TenantContext`. Each route is
/// registered together with its OpenAPI description, so the document cannot miss one.
///
/// Mounted by registering every route under its full path rather than with `nest`: a nested
/// route runs a prefix-stripping layer that rebuilds the request URI on every request, and
/// nothing here needs the stripped path.
pub fn tenant_data(prefix: &str) -> OpenApiRouter<AppState> {
    OpenApiRouter::default()
        .routes(at(prefix, routes!(users::list, users::create)))
        .routes(at(
            prefix,
            routes!(users::get, users::update, users::delete),
        ))
        .routes(at(prefix, routes!(orders::list, orders::create)))
        .routes(at(
            prefix,
            routes!(orders::get, orders::update, orders::delete),
        ))
        .routes(at(prefix, routes!(exports::create)))
        .routes(at(prefix, routes!(exports::download)))
        .routes(at(prefix, routes!(exports::job)))
}

/// The tenant-data routes plus `/tenant` (the caller's own tenant), for the two tenant-plane
/// mounts.
pub fn tenant_plane_data(prefix: &str) -> OpenApiRouter<AppState> {
    tenant_data(prefix).routes(at(prefix, routes!(tenant::get)))
}

/// The same handlers and descriptions with every path under `prefix`.
fn at(
    prefix: &str,
    (schemas, paths, handlers): UtoipaMethodRouter<AppState>,
) -> UtoipaMethodRouter<AppState> {
    let mut mounted = utoipa::openapi::path::Paths::new();
    mounted.extensions = paths.extensions;
    for (path, item) in paths.paths {
        mounted.paths.insert(format!("{prefix}{path}"), item);
    }
    (schemas, mounted, handlers)
}
