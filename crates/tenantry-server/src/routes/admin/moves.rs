//! Moving a tenant to another placement, online, as an operation.

use tenantry::db::moves::MoveTarget;
use tenantry::operations::{self, Operation};

use super::*;

/// Where a tenant is to go.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MoveRequest {
    /// `shared`, `schema` or `database`.
    #[schema(example = "database")]
    isolation: String,
    /// For `database`: a registered server (default: the control plane's own).
    #[schema(required = false)]
    server: Option<String>,
}

#[utoipa::path(post, path = "/admin/v1/tenants/{tenant}/move", tag = "admin", operation_id = "move_tenant",
    summary = "Move a tenant to another placement, online",
    description = "Starts an operation that copies the tenant's rows to the new placement while it is served, verifies every table (row counts and checksums) and flips the catalog on every node; the old storage goes after a grace period. The tenant's reads go on throughout; its writes wait while the rows are copied. Poll the operation for its phase (`preparing`, `copying`, `verifying`, `flipping`, `cleaning`) and outcome.",
    request_body = MoveRequest,
    responses(
        (status = 202, description = "Started.", body = Operation),
        (status = 404, description = "`tenant_not_found`: no such tenant."),
        (status = 409, description = "`conflict`: the tenant is already in that placement."),
        (status = 422, description = "`validation_failed`: an unknown isolation or server."),
    ))]
pub async fn move_tenant(
    State(state): State<AppState>,
    TenantPath(slug): TenantPath,
    AdminActor(actor): AdminActor,
    Json(body): Json<MoveRequest>,
) -> Result<(StatusCode, Json<Operation>), Problem> {
    let catalog = state.tenancy.catalog();
    let db = catalog.database();
    let Some(isolation) = Isolation::parse(&body.isolation) else {
        return Err(Problem::validation(vec![FieldError::new(
            "isolation",
            "must be shared, schema or database",
        )]));
    };
    if let Some(server) = &body.server {
        if isolation != Isolation::Database {
            return Err(Problem::validation(vec![FieldError::new(
                "server",
                "only a database tenant is placed on a server",
            )]));
        }
        if !provision::server_names(db).await?.contains(server) {
            return Err(Problem::validation(vec![FieldError::new(
                "server",
                format!("unknown database server {server:?}"),
            )]));
        }
    }
    let tenant = catalog
        .get_tenant(&slug)
        .await?
        .ok_or_else(tenant_not_found)?;
    let server = |s: Option<&str>| s.unwrap_or(tenantry::DEFAULT_SERVER).to_owned();
    if tenant.isolation == isolation
        && (isolation != Isolation::Database
            || server(tenant.server.as_deref()) == server(body.server.as_deref()))
    {
        return Err(Problem::new(
            ErrorCode::Conflict,
            "the tenant is already in that placement",
        ));
    }
    let target = MoveTarget {
        isolation,
        server: body.server,
    };
    let op = operations::start_move(catalog, &slug, target, state.move_grace)
        .await
        .map_err(catalog_error)?;
    audit::record(db, &actor, Some(&slug), "tenant.move", &op.id.to_string()).await?;
    Ok((StatusCode::ACCEPTED, Json(op)))
}
