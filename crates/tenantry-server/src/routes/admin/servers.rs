//! Database servers that `database` tenants can be placed on.

use super::*;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddServer {
    name: String,
    /// A PostgreSQL URL whose role may create databases. Stored, never shown again.
    url: String,
}

/// A registered database server (its URL is never shown).
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ServerInfo {
    pub name: String,
}

#[utoipa::path(post, path = "/admin/v1/servers", tag = "admin", operation_id = "add_server",
    summary = "Register a PostgreSQL server for database tenants",
    request_body = AddServer,
    responses((status = 201, description = "Registered.", body = ServerInfo)))]
/// Registers a PostgreSQL server for `database` tenants. The URL's role must be allowed to
/// create databases; it is stored in the catalog and never shown again.
pub async fn add_server(
    State(state): State<AppState>,
    AdminActor(actor): AdminActor,
    Json(body): Json<AddServer>,
) -> Result<(StatusCode, Json<ServerInfo>), Problem> {
    let db = state.tenancy.catalog().database();
    provision::add_server(db, &body.name, &body.url)
        .await
        .map_err(|e| match e {
            tenantry::db::DbError::Config(m) => {
                Problem::validation(vec![FieldError::new("server", m)])
            }
            tenantry::db::DbError::Unavailable(m) => {
                Problem::validation(vec![FieldError::new("url", format!("cannot connect: {m}"))])
            }
            other => other.into(),
        })?;
    audit::record(db, &actor, None, "server.add", &body.name).await?;
    Ok((StatusCode::CREATED, Json(ServerInfo { name: body.name })))
}

#[utoipa::path(get, path = "/admin/v1/servers", tag = "admin", operation_id = "list_servers",
    summary = "List the registered database servers",
    responses((status = 200, description = "All servers (one page).", body = Page<ServerInfo>)))]
pub async fn list_servers(
    State(state): State<AppState>,
) -> Result<Json<Page<ServerInfo>>, Problem> {
    let names = provision::server_names(state.tenancy.catalog().database()).await?;
    Ok(Json(Page {
        items: names.into_iter().map(|name| ServerInfo { name }).collect(),
        next_cursor: None,
    }))
}

/// Where a drain moves a server's tenants.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DrainRequest {
    /// The server that takes the tenants (default: the control plane's own, `default`).
    #[schema(required = false)]
    to: Option<String>,
}

#[utoipa::path(post, path = "/admin/v1/servers/{name}/drain", tag = "admin", operation_id = "drain_server",
    summary = "Move every database tenant off a server",
    description = "Starts an operation that moves the server's database tenants, one at a time and each online (as `POST /admin/v1/tenants/{tenant}/move`), to another server. The body is optional. Cancel it with `DELETE /admin/v1/operations/{id}`: it stops between tenants.",
    params(("name" = String, Path, description = "The server to drain.")),
    request_body(content = Option<DrainRequest>, content_type = "application/json"),
    responses(
        (status = 202, description = "Started.", body = tenantry::operations::Operation),
        (status = 404, description = "`not_found`: no such server."),
        (status = 422, description = "`validation_failed`: an unknown target server, or the server itself."),
    ))]
pub async fn drain_server(
    State(state): State<AppState>,
    axum::extract::Path(name): axum::extract::Path<String>,
    AdminActor(actor): AdminActor,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<tenantry::operations::Operation>), Problem> {
    let body: DrainRequest = if body.iter().all(u8::is_ascii_whitespace) {
        DrainRequest::default()
    } else {
        tenantry::http::parse_json(&body)?
    };
    let catalog = state.tenancy.catalog();
    let db = catalog.database();
    let servers = provision::server_names(db).await?;
    if !servers.contains(&name) {
        return Err(Problem::new(ErrorCode::NotFound, "no such server"));
    }
    let to = body
        .to
        .unwrap_or_else(|| tenantry::DEFAULT_SERVER.to_owned());
    if !servers.contains(&to) || to == name {
        return Err(Problem::validation(vec![FieldError::new(
            "to",
            "must be another registered server",
        )]));
    }
    let op = tenantry::operations::start_drain(catalog, &name, &to, state.move_grace).await?;
    audit::record(db, &actor, None, "server.drain", &name).await?;
    Ok((StatusCode::ACCEPTED, Json(op)))
}
