//! Long-running operations: fleet migrations and their progress.

use super::*;

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartMigration {
    /// Tenants migrated at once, 1..=64 (default 4).
    #[schema(minimum = 1, maximum = 64)]
    parallelism: Option<usize>,
    /// Report what would run without changing anything.
    #[schema(required = false)]
    #[serde(default)]
    dry_run: bool,
}

#[utoipa::path(post, path = "/admin/v1/migrations", tag = "admin", operation_id = "start_migration",
    summary = "Migrate every tenant's storage to the newest tenant schema",
    description = "The body is optional. Poll the returned operation.",
    request_body(content = Option<StartMigration>, content_type = "application/json"),
    responses((status = 202, description = "Started.", body = tenantry::operations::Operation)))]
/// Starts a fleet migration; 202 with the operation to poll.
pub async fn start_migration(
    State(state): State<AppState>,
    AdminActor(actor): AdminActor,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<tenantry::operations::Operation>), Problem> {
    // The body is optional: an empty POST starts a migration with the defaults.
    let body: StartMigration = if body.iter().all(u8::is_ascii_whitespace) {
        StartMigration::default()
    } else {
        tenantry::http::parse_json(&body)?
    };
    let parallelism = body.parallelism.unwrap_or(4);
    if !(1..=64).contains(&parallelism) {
        return Err(Problem::validation(vec![FieldError::new(
            "parallelism",
            "must be between 1 and 64",
        )]));
    }
    let db = state.tenancy.catalog().database();
    let op = tenantry::operations::start_migration(
        db,
        tenantry::db::fleet::MigrateOptions {
            parallelism,
            dry_run: body.dry_run,
        },
    )
    .await?;
    audit::record(db, &actor, None, "fleet.migrate", &op.id.to_string()).await?;
    Ok((StatusCode::ACCEPTED, Json(op)))
}

#[utoipa::path(get, path = "/admin/v1/operations/{id}", tag = "admin", operation_id = "get_operation",
    summary = "Progress and outcome of an operation",
    params(("id" = uuid::Uuid, Path, description = "The operation's id.")),
    responses(
        (status = 200, description = "The operation.", body = tenantry::operations::Operation),
        (status = 404, description = "`not_found`: no such operation."),
    ))]
pub async fn get_operation(
    State(state): State<AppState>,
    crate::routes::users::ResourceId(id): crate::routes::users::ResourceId,
) -> Result<Json<tenantry::operations::Operation>, Problem> {
    tenantry::operations::get(state.tenancy.catalog().database(), id)
        .await?
        .map(Json)
        .ok_or_else(|| Problem::new(ErrorCode::NotFound, "no such operation"))
}

#[utoipa::path(delete, path = "/admin/v1/operations/{id}", tag = "admin", operation_id = "cancel_operation",
    summary = "Cancel a move or drain that has not flipped yet",
    description = "A move stops before its flip and the tenant stays where it was (a drain stops between tenants). Poll the operation: it ends `cancelled`. Once a move is flipping, it finishes.",
    params(("id" = uuid::Uuid, Path, description = "The operation's id.")),
    responses(
        (status = 202, description = "Cancellation requested.", body = tenantry::operations::Operation),
        (status = 404, description = "`not_found`: no such operation."),
        (status = 409, description = "`conflict`: not a move or drain, or it has flipped or finished."),
    ))]
pub async fn cancel_operation(
    State(state): State<AppState>,
    crate::routes::users::ResourceId(id): crate::routes::users::ResourceId,
    AdminActor(actor): AdminActor,
) -> Result<(StatusCode, Json<tenantry::operations::Operation>), Problem> {
    use tenantry::operations::Cancel;
    let db = state.tenancy.catalog().database();
    match tenantry::operations::cancel(db, id).await? {
        Cancel::Requested(op) => {
            let tenant = op.tenant.as_deref().and_then(|t| Slug::parse(t).ok());
            audit::record(
                db,
                &actor,
                tenant.as_ref(),
                "operation.cancel",
                &id.to_string(),
            )
            .await?;
            Ok((StatusCode::ACCEPTED, Json(op)))
        }
        Cancel::TooLate(op) => Err(Problem::new(
            ErrorCode::Conflict,
            format!(
                "the {} operation cannot be cancelled now (state {}, phase {:?})",
                op.kind, op.state, op.phase
            ),
        )),
        Cancel::NotFound => Err(Problem::new(ErrorCode::NotFound, "no such operation")),
    }
}
