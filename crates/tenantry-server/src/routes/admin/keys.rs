//! A tenant's API keys: create (the key shown once), list, revoke, rotate.

use super::*;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    /// Default `default`.
    #[serde(default = "default_key_name")]
    #[schema(required = false)]
    name: String,
    /// Default both `read` and `write`.
    #[serde(default = "all_scopes")]
    #[schema(required = false)]
    scopes: Vec<Scope>,
    expires_at: Option<DateTime<Utc>>,
}

fn default_key_name() -> String {
    "default".into()
}
fn all_scopes() -> Vec<Scope> {
    vec![Scope::Read, Scope::Write]
}

/// A new key: the `key` is shown this once.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct CreatedKey {
    #[serde(flatten)]
    pub info: ApiKeyInfo,
    pub key: String,
}

/// Checks a new key's name, scopes and expiry the same way for the admin API and the CLI, and
/// returns the scopes it gets: a write key can read too (writing usually needs reading what
/// was written).
pub fn new_key(
    name: &str,
    scopes: &[Scope],
    expires_at: Option<DateTime<Utc>>,
) -> Result<Vec<Scope>, Problem> {
    let mut errors = Vec::new();
    validate::name("name", name, &mut errors);
    if scopes.is_empty() {
        errors.push(FieldError::new("scopes", "at least one of: read, write"));
    }
    if expires_at.is_some_and(|e| e <= Utc::now()) {
        errors.push(FieldError::new("expires_at", "must be in the future"));
    }
    if !errors.is_empty() {
        return Err(Problem::validation(errors));
    }
    let mut scopes = scopes.to_vec();
    if scopes.contains(&Scope::Write) && !scopes.contains(&Scope::Read) {
        scopes.insert(0, Scope::Read);
    }
    scopes.dedup();
    Ok(scopes)
}

#[utoipa::path(post, path = "/admin/v1/tenants/{tenant}/api-keys", tag = "admin", operation_id = "create_api_key",
    summary = "Create an API key",
    description = "The key is in this response only; it is stored hashed.",
    request_body = CreateKey,
    responses(
        (status = 201, description = "Created.", body = CreatedKey),
        (status = 404, description = "`tenant_not_found`: no such tenant."),
    ))]
pub async fn create_key(
    State(state): State<AppState>,
    TenantPath(slug): TenantPath,
    AdminActor(actor): AdminActor,
    Json(body): Json<CreateKey>,
) -> Result<(StatusCode, Json<CreatedKey>), Problem> {
    let scopes = new_key(&body.name, &body.scopes, body.expires_at)?;
    let (info, key) = state
        .tenancy
        .catalog()
        .create_key(&slug, &body.name, &scopes, body.expires_at, &actor)
        .await
        .map_err(catalog_error)?;
    Ok((StatusCode::CREATED, Json(CreatedKey { info, key })))
}

#[utoipa::path(get, path = "/admin/v1/tenants/{tenant}/api-keys", tag = "admin", operation_id = "list_api_keys",
    summary = "List a tenant's API keys (never the secrets)",
    params(page::PageQuery),
    responses(
        (status = 200, description = "A page of keys.", body = Page<ApiKeyInfo>),
        (status = 404, description = "`tenant_not_found`: no such tenant."),
    ))]
pub async fn list_keys(
    State(state): State<AppState>,
    TenantPath(slug): TenantPath,
    Query(q): Query<page::PageQuery>,
) -> Result<Json<Page<ApiKeyInfo>>, Problem> {
    let page = page::uuid_page(q.limit, q.cursor.as_deref())?;
    if state.tenancy.catalog().get_tenant(&slug).await?.is_none() {
        return Err(tenant_not_found());
    }
    let rows = state
        .tenancy
        .catalog()
        .list_keys(&slug, page.fetch(), page.after)
        .await?;
    Ok(Json(Page::from_rows(rows, page.limit, |k: &ApiKeyInfo| {
        k.id.to_string()
    })))
}

#[utoipa::path(delete, path = "/admin/v1/tenants/{tenant}/api-keys/{id}", tag = "admin", operation_id = "revoke_api_key",
    summary = "Revoke an API key",
    description = "Effective on the next request, on every node.",
    params(("id" = uuid::Uuid, Path, description = "The key's id.")),
    responses(
        (status = 200, description = "The revoked key (revoking again answers the same).", body = ApiKeyInfo),
        (status = 404, description = "`tenant_not_found`, or `not_found`: no such key in this tenant."),
    ))]
pub async fn revoke_key(
    State(state): State<AppState>,
    TenantPath(slug): TenantPath,
    AdminActor(actor): AdminActor,
    crate::routes::users::ResourceId(id): crate::routes::users::ResourceId,
) -> Result<Json<ApiKeyInfo>, Problem> {
    if state.tenancy.catalog().get_tenant(&slug).await?.is_none() {
        return Err(tenant_not_found());
    }
    state
        .tenancy
        .catalog()
        .revoke_key(&slug, id, &actor)
        .await?
        .map(Json)
        .ok_or_else(|| Problem::new(ErrorCode::NotFound, "no such API key in this tenant"))
}

/// Rotation: a new key (same name, scopes, expiry), and the old one revoked, atomically. 201
/// with the new key, shown this once.
#[utoipa::path(post, path = "/admin/v1/tenants/{tenant}/api-keys/{id}/rotate", tag = "admin", operation_id = "rotate_api_key",
    summary = "Rotate an API key",
    description = "Issues a new key with the same name and scopes and revokes the old one.",
    params(("id" = uuid::Uuid, Path, description = "The key's id.")),
    responses(
        (status = 201, description = "The new key.", body = CreatedKey),
        (status = 404, description = "`tenant_not_found`, or `not_found`: no such live key in this tenant."),
    ))]
pub async fn rotate_key(
    State(state): State<AppState>,
    TenantPath(slug): TenantPath,
    AdminActor(actor): AdminActor,
    crate::routes::users::ResourceId(id): crate::routes::users::ResourceId,
) -> Result<(StatusCode, Json<CreatedKey>), Problem> {
    if state.tenancy.catalog().get_tenant(&slug).await?.is_none() {
        return Err(tenant_not_found());
    }
    let (info, key) = state
        .tenancy
        .catalog()
        .rotate_key(&slug, id, &actor)
        .await?
        .ok_or_else(|| Problem::new(ErrorCode::NotFound, "no such live API key in this tenant"))?;
    Ok((StatusCode::CREATED, Json(CreatedKey { info, key })))
}
