//! HTTP routes: thin handlers over the library. Each resource has its module.

pub mod admin;
pub mod exports;
pub mod ops;
pub mod orders;
pub mod page;
pub mod tenant;
pub mod users;

use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::app::AppState;

/// The tenant-data routes, mounted at `/v1`, `/v1/tenants/{tenant}` and
/// `/admin/v1/tenants/{tenant}`. Every handler takes a `TenantContext`. Each route is
/// registered together with its OpenAPI description, so the document cannot miss one.
pub fn tenant_data() -> OpenApiRouter<AppState> {
    OpenApiRouter::default()
        .routes(routes!(users::list, users::create))
        .routes(routes!(users::get, users::update, users::delete))
        .routes(routes!(orders::list, orders::create))
        .routes(routes!(orders::get, orders::update, orders::delete))
        .routes(routes!(exports::create))
        .routes(routes!(exports::download))
        .routes(routes!(exports::job))
}

/// The tenant-data routes plus `/tenant` (the caller's own tenant), for the two tenant-plane
/// mounts.
pub fn tenant_plane_data() -> OpenApiRouter<AppState> {
    tenant_data().routes(routes!(tenant::get))
}
