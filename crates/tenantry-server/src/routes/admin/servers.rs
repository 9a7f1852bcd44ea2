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
