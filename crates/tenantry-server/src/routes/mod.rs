//! HTTP routes: thin handlers over the library. Each resource has its module.

pub mod admin;
pub mod exports;
pub mod ops;
pub mod orders;
pub mod page;
pub mod tenant;
pub mod users;

use axum::routing::get;
use axum::Router;

use crate::app::AppState;

/// The tenant-data routes, mounted at `/v1`, `/v1/tenants/{tenant}` and
/// `/admin/v1/tenants/{tenant}`. Every handler takes a `TenantContext`.
pub fn tenant_data() -> Router<AppState> {
    Router::new()
        .route("/users", get(users::list).post(users::create))
        .route(
            "/users/{id}",
            get(users::get).patch(users::update).delete(users::delete),
        )
        .route("/orders", get(orders::list).post(orders::create))
        .route(
            "/orders/{id}",
            get(orders::get)
                .patch(orders::update)
                .delete(orders::delete),
        )
        .route("/exports", axum::routing::post(exports::create))
        .route("/exports/{id}/download", get(exports::download))
        .route("/jobs/{id}", get(exports::job))
}
