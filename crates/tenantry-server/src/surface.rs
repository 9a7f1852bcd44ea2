//! The HTTP surface in one list: every route with its OpenAPI description. The router, the
//! edge's route table and the OpenAPI document are all built from it, so what is served and
//! what is documented cannot drift apart.

use axum::middleware;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::routes::{self, admin};
use crate::state::AppState;

/// Every route with its OpenAPI description, and, when `state` is given, the layers that
/// guard the admin plane (the tenant plane is guarded by the [`crate::edge::Edge`], from
/// [`tenant_plane`]). The document is built from the same call (with `None`), so what is
/// served and what is documented come from one list.
pub fn surface(state: Option<&AppState>) -> OpenApiRouter<AppState> {
    let mut admin_data = routes::tenant_data("/admin/v1/tenants/{tenant}");
    if let Some(state) = state {
        admin_data = admin_data.layer(middleware::from_fn_with_state(
            state.clone(),
            admin::tenant_context,
        ));
    }
    let mut admin_plane = OpenApiRouter::default()
        .routes(routes!(admin::list_tenants, admin::create_tenant))
        .routes(routes!(
            admin::get_tenant,
            admin::patch_tenant,
            admin::delete_tenant
        ))
        .routes(routes!(admin::list_servers, admin::add_server))
        .routes(routes!(admin::drain_server))
        .routes(routes!(admin::list_keys, admin::create_key))
        .routes(routes!(admin::revoke_key))
        .routes(routes!(admin::rotate_key))
        .routes(routes!(admin::audit_log))
        .routes(routes!(admin::usage))
        .routes(routes!(admin::start_migration))
        .routes(routes!(admin::get_operation, admin::cancel_operation))
        .routes(routes!(admin::backup_tenant))
        .routes(routes!(admin::download_archive))
        .routes(routes!(admin::restore_tenant))
        .routes(routes!(admin::move_tenant))
        .merge(admin_data);
    if let Some(state) = state {
        admin_plane = admin_plane.layer(middleware::from_fn_with_state(
            state.clone(),
            admin::require_admin,
        ));
    }
    OpenApiRouter::default()
        .routes(routes!(routes::ops::healthz))
        .routes(routes!(routes::ops::readyz))
        .routes(routes!(routes::ops::metrics))
        .routes(routes!(routes::docs::openapi_json))
        .routes(routes!(routes::docs::docs))
        .routes(routes!(routes::docs::redoc_js))
        .merge(tenant_plane())
        .merge(admin_plane)
}

/// The tenant plane: every route here is served in the tenant context the [`crate::edge::Edge`] opens for
/// it (the library's [`tenantry::http::scope`], which [`tenantry::TenancyLayer`] runs
/// per route), so this list is also what decides which requests need one.
pub fn tenant_plane() -> OpenApiRouter<AppState> {
    OpenApiRouter::default()
        .merge(routes::tenant_plane_data("/v1"))
        .merge(routes::tenant_plane_data("/v1/tenants/{tenant}"))
}
