//! Per-tenant backups and restores as operations: an archive written in the background and
//! downloaded from any node, and a new tenant made from an uploaded archive.

use std::io::Write;

use axum::body::Body;
use futures_util::StreamExt;
use tenantry::db::archive::{self, ArchiveError};
use tenantry::operations::{self, Operation, ScratchFile};

use super::*;

/// The largest archive a restore accepts.
pub const RESTORE_LIMIT: u64 = 4 * 1024 * 1024 * 1024;

#[utoipa::path(post, path = "/admin/v1/tenants/{tenant}/backup", tag = "admin", operation_id = "backup_tenant",
    summary = "Write a tenant's archive",
    description = "Starts an operation that writes one portable archive of the tenant's rows (every tenant table, one consistent snapshot, gzip) while the tenant keeps being served. When it has succeeded, `GET /admin/v1/operations/{id}/archive` downloads the archive. The archive is removed with the tenant.",
    responses(
        (status = 202, description = "Started.", body = Operation),
        (status = 404, description = "`tenant_not_found`: no such tenant."),
    ))]
pub async fn backup_tenant(
    State(state): State<AppState>,
    TenantPath(slug): TenantPath,
    AdminActor(actor): AdminActor,
) -> Result<(StatusCode, Json<Operation>), Problem> {
    let catalog = state.tenancy.catalog();
    let op = operations::start_backup(catalog, &slug)
        .await
        .map_err(catalog_error)?;
    audit::record(
        catalog.database(),
        &actor,
        Some(&slug),
        "tenant.backup",
        &op.id.to_string(),
    )
    .await?;
    Ok((StatusCode::ACCEPTED, Json(op)))
}

#[utoipa::path(get, path = "/admin/v1/operations/{id}/archive", tag = "admin", operation_id = "download_archive",
    summary = "Download a backup's archive",
    params(("id" = uuid::Uuid, Path, description = "The backup operation's id.")),
    responses(
        (status = 200, description = "The archive (gzip).", content_type = "application/gzip", body = Vec<u8>),
        (status = 404, description = "`not_found`: no such backup, it has not finished, or its tenant was deleted."),
    ))]
pub async fn download_archive(
    State(state): State<AppState>,
    crate::routes::users::ResourceId(id): crate::routes::users::ResourceId,
) -> Result<Response, Problem> {
    let db = state.tenancy.catalog().database();
    let Some(pieces) = operations::archive_pieces(db, id).await? else {
        return Err(Problem::new(
            ErrorCode::NotFound,
            "no archive for this operation (not a finished backup, or its tenant was deleted)",
        ));
    };
    let tenant = operations::get(db, id)
        .await?
        .and_then(|op| op.tenant)
        .unwrap_or_else(|| "tenant".into());
    let body = Body::from_stream(futures_util::stream::iter(
        pieces.into_iter().map(Ok::<_, std::io::Error>),
    ));
    Ok((
        [
            (
                axum::http::header::CONTENT_TYPE,
                "application/gzip".to_owned(),
            ),
            (
                axum::http::header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{tenant}.tenant\""),
            ),
        ],
        body,
    )
        .into_response())
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct RestoreQuery {
    /// The new tenant's slug.
    slug: String,
    /// Where its data lives (default `shared`).
    isolation: Option<String>,
    /// For `database` tenants: a registered server.
    server: Option<String>,
    /// Display name (default: the archived tenant's).
    name: Option<String>,
    /// A plan (default: the archived tenant's).
    plan: Option<String>,
}

#[utoipa::path(post, path = "/admin/v1/tenants/restore", tag = "admin", operation_id = "restore_tenant",
    summary = "Create a tenant from an archive",
    description = "The body is an archive from a backup. It is checked whole (structure, every table's row count and checksum, schema version) before anything is created: a damaged one is 422, one from a newer deployment 422. The new tenant gets a new id; an older archive is migrated forward. Poll the returned operation.",
    params(RestoreQuery),
    request_body(content = Vec<u8>, content_type = "application/gzip"),
    responses(
        (status = 202, description = "Started.", body = Operation),
        (status = 409, description = "`conflict`: the slug is taken."),
        (status = 413, description = "`payload_too_large`: the archive is larger than 4 GiB."),
        (status = 422, description = "`validation_failed`: a bad slug, plan, isolation or server, or a damaged or newer archive."),
    ))]
pub async fn restore_tenant(
    State(state): State<AppState>,
    Query(q): Query<RestoreQuery>,
    AdminActor(actor): AdminActor,
    body: Body,
) -> Result<(StatusCode, Json<Operation>), Problem> {
    let file = ScratchFile::new();
    receive(body, &file).await?;
    let path = file.path().to_owned();
    let manifest = tokio::task::spawn_blocking(move || archive::verify(&path))
        .await
        .map_err(|e| Problem::internal(&e))?
        .map_err(archive_problem)?;
    let tenancy = &state.tenancy;
    let new = new_tenant(
        tenancy,
        &q.slug,
        q.name.unwrap_or(manifest.tenant.name),
        q.plan.unwrap_or(manifest.tenant.plan),
        q.isolation.as_deref().unwrap_or("shared"),
        q.server,
    )
    .await?;
    if manifest.schema_version > tenancy.catalog().database().latest_version() {
        return Err(archive_problem(ArchiveError::NewerSchema {
            archive: manifest.schema_version,
            deployment: tenancy.catalog().database().latest_version(),
        }));
    }
    if tenancy.catalog().get_tenant(&new.slug).await?.is_some() {
        return Err(catalog_error(CatalogError::TenantExists(new.slug)));
    }
    let db = tenancy.catalog().database();
    let slug = new.slug.clone();
    let op = operations::start_restore(tenancy.catalog(), file, new, actor.clone()).await?;
    audit::record(
        db,
        &actor,
        Some(&slug),
        "tenant.restore",
        &op.id.to_string(),
    )
    .await?;
    Ok((StatusCode::ACCEPTED, Json(op)))
}

/// Streams the request body into `file`, refusing more than [`RESTORE_LIMIT`] bytes.
async fn receive(body: Body, file: &ScratchFile) -> Result<(), Problem> {
    let io = |e: std::io::Error| Problem::internal(&e);
    let mut out = std::io::BufWriter::new(std::fs::File::create(file.path()).map_err(io)?);
    let mut stream = body.into_data_stream();
    let mut total = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            Problem::new(
                ErrorCode::MalformedBody,
                format!("the body could not be read: {e}"),
            )
        })?;
        total += chunk.len() as u64;
        if total > RESTORE_LIMIT {
            return Err(Problem::new(
                ErrorCode::PayloadTooLarge,
                "the archive is larger than 4 GiB",
            ));
        }
        out.write_all(&chunk).map_err(io)?;
    }
    out.flush().map_err(io)?;
    Ok(())
}

fn archive_problem(e: ArchiveError) -> Problem {
    match e {
        e @ (ArchiveError::Corrupt(_)
        | ArchiveError::UnsupportedFormat(_)
        | ArchiveError::NewerSchema { .. }) => {
            Problem::validation(vec![FieldError::new("archive", e.to_string())])
        }
        ArchiveError::Catalog(e) => catalog_error(e),
        ArchiveError::Db(e) => e.into(),
        e => Problem::internal(&e),
    }
}
