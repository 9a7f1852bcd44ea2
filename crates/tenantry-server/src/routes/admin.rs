//! The admin plane: tenants, API keys, the audit log, and tenant data inside an explicitly
//! named tenant. Every route needs the admin bearer token; every action is audited.

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer};
use tenantry::audit::{self, Actor};
use tenantry::auth::Scope;
use tenantry::catalog::{ApiKeyInfo, CatalogError, NewTenant, TenantPatch};
use tenantry::db::provision;
use tenantry::http::{ErrorCode, FieldError, Problem, RequestId};
use tenantry::lifecycle;
use tenantry::tenancy::AdminContextError;
use tenantry::tenant::RateLimitOverride;
use tenantry::{Isolation, Json, Query, Slug, Tenant, TenantStatus};

use super::page::{self, Page};
use crate::state::AppState;
use crate::validate;

/// The token of an `Authorization: Bearer` header; `Err` for more than one header.
pub fn bearer(headers: &axum::http::HeaderMap) -> Result<Option<&str>, Problem> {
    let mut values = headers.get_all(axum::http::header::AUTHORIZATION).iter();
    let first = values.next();
    if values.next().is_some() {
        return Err(Problem::new(
            ErrorCode::InvalidHeader,
            "more than one Authorization header",
        ));
    }
    Ok(first
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim()))
}

/// Who is acting: set by [`require_admin`].
#[derive(Debug, Clone)]
struct AdminName(String);

/// Checks the admin bearer token on every admin route.
pub async fn require_admin(
    State(state): State<AppState>,
    mut req: Request,
    next: Next,
) -> Response {
    if req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .is_none()
    {
        return Problem::new(ErrorCode::Unauthenticated, "admin bearer token required")
            .into_response();
    }
    let token = match bearer(req.headers()) {
        Ok(t) => t,
        Err(p) => return p.into_response(),
    };
    match token.and_then(|t| state.admin.identify(t)) {
        Some(name) => {
            let name = format!("admin:{name}");
            tracing::Span::current().record("principal", name.as_str());
            if let Some((tenant, action, target, request_id)) = read_action(&req) {
                let actor = Actor {
                    name: name.clone(),
                    request_id,
                };
                let db = state.tenancy.catalog().database();
                if let Err(e) = audit::record(db, &actor, tenant.as_ref(), &action, &target).await {
                    return Problem::from(e).into_response();
                }
            }
            req.extensions_mut().insert(AdminName(name));
            next.run(req).await
        }
        None => Problem::new(ErrorCode::InvalidCredentials, "invalid admin token").into_response(),
    }
}

/// A read of the admin plane (a tenant, its keys, its usage, the audit log itself, operations,
/// servers), which [`require_admin`] records before it is served (no entry, no read): the
/// tenant it names, the action (method and route template), the target (path and query) and
/// the request id. `None` for writes, which record their own entry in the catalog transaction
/// that makes the change, and for reads of tenant data, which [`tenant_context`] records as it
/// opens the tenant's context, so nothing is recorded twice.
fn read_action(req: &Request) -> Option<(Option<Slug>, String, String, String)> {
    if !matches!(
        *req.method(),
        axum::http::Method::GET | axum::http::Method::HEAD
    ) {
        return None;
    }
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|m| m.as_str())
        .unwrap_or_default();
    const TENANT: &str = "/admin/v1/tenants/{tenant}";
    if ["/users", "/orders"]
        .iter()
        .any(|data| route.starts_with(&format!("{TENANT}{data}")))
    {
        return None;
    }
    let tenant = route
        .starts_with(TENANT)
        .then(|| req.uri().path().split('/').nth(4))
        .flatten()
        .and_then(|s| Slug::parse(s).ok());
    let target = match req.uri().query() {
        Some(q) => format!("{}?{q}", req.uri().path()),
        None => req.uri().path().to_owned(),
    };
    let request_id = req
        .extensions()
        .get::<RequestId>()
        .map(|r| r.as_str().to_owned())
        .unwrap_or_default();
    Some((
        tenant,
        format!("{} {route}", req.method()),
        target,
        request_id,
    ))
}

/// The acting admin and the request id, for audit entries.
pub struct AdminActor(pub Actor);

impl<S: Send + Sync> FromRequestParts<S> for AdminActor {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let name = parts
            .extensions
            .get::<AdminName>()
            .ok_or_else(|| Problem::internal(&"admin route without require_admin"))?;
        let request_id = parts
            .extensions
            .get::<RequestId>()
            .map(|r| r.as_str().to_owned())
            .unwrap_or_default();
        Ok(AdminActor(Actor {
            name: name.0.clone(),
            request_id,
        }))
    }
}

/// The `{tenant}` path segment, validated (400 `invalid_tenant` before any lookup).
pub struct TenantPath(pub Slug);

impl<S: Send + Sync> FromRequestParts<S> for TenantPath {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let params = axum::extract::RawPathParams::from_request_parts(parts, state)
            .await
            .map_err(|_| Problem::new(ErrorCode::InvalidTenant, "invalid tenant in path"))?;
        let raw = params
            .iter()
            .find(|(k, _)| *k == "tenant")
            .map(|(_, v)| v)
            .unwrap_or_default();
        Slug::parse(raw)
            .map(TenantPath)
            .map_err(|e| Problem::new(ErrorCode::InvalidTenant, e.to_string()))
    }
}

/// Opens an audited admin context for the tenant in the path and runs the tenant-data handler
/// inside it. The audit entry is written first; no entry, no access.
pub async fn tenant_context(
    State(state): State<AppState>,
    TenantPath(slug): TenantPath,
    AdminActor(actor): AdminActor,
    mut req: Request,
    next: Next,
) -> Response {
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|m| m.as_str().to_owned())
        .unwrap_or_default();
    let action = format!("{} {route}", req.method());
    let target = req.uri().path().to_owned();
    match state
        .tenancy
        .admin_context(&slug, &actor, &action, &target)
        .await
    {
        Ok(ctx) => {
            tracing::Span::current().record("tenant_id", slug.as_str());
            req.extensions_mut().insert(ctx);
            next.run(req).await
        }
        Err(AdminContextError::TenantNotFound) => tenant_not_found().into_response(),
        Err(AdminContextError::Db(e)) => Problem::from(e).into_response(),
    }
}

fn tenant_not_found() -> Problem {
    Problem::new(ErrorCode::TenantNotFound, "no such tenant")
}

fn catalog_error(e: CatalogError) -> Problem {
    match e {
        CatalogError::TenantExists(slug) => Problem::new(
            ErrorCode::Conflict,
            format!("tenant slug {slug} is already taken"),
        ),
        CatalogError::TenantNotFound => tenant_not_found(),
        e @ CatalogError::DeletedWhileProvisioning(_) => {
            Problem::new(ErrorCode::Conflict, e.to_string())
        }
        CatalogError::Db(e) => e.into(),
    }
}

// ----- tenants -----

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTenant {
    #[schema(pattern = "^[a-z][a-z0-9-]{1,62}$", example = "acme")]
    slug: String,
    name: String,
    /// A plan from the configuration (default `free`).
    #[serde(default = "free")]
    #[schema(required = false, example = "pro")]
    plan: String,
    /// `shared` (default), `schema` or `database`.
    #[serde(default = "shared")]
    #[schema(required = false, value_type = Isolation)]
    isolation: String,
    /// For `database` tenants: which registered server.
    server: Option<String>,
}

fn free() -> String {
    "free".into()
}
fn shared() -> String {
    "shared".into()
}

#[utoipa::path(post, path = "/admin/v1/tenants", tag = "admin", operation_id = "create_tenant",
    summary = "Create a tenant and provision its storage",
    description = "Writes a `provisioning` catalog entry (never served), creates the storage for the placement, then marks it ready. Re-sending the same request after a crash resumes.",
    request_body = CreateTenant,
    responses(
        (status = 201, description = "Created and ready.", body = Tenant),
        (status = 409, description = "`conflict`: the slug is taken."),
    ))]
pub async fn create_tenant(
    State(state): State<AppState>,
    AdminActor(actor): AdminActor,
    Json(body): Json<CreateTenant>,
) -> Result<(StatusCode, Json<Tenant>), Problem> {
    let new = new_tenant(
        &state.tenancy,
        &body.slug,
        body.name,
        body.plan,
        &body.isolation,
        body.server,
    )
    .await?;
    let t = lifecycle::create(state.tenancy.catalog(), &new, &actor)
        .await
        .map_err(catalog_error)?;
    Ok((StatusCode::CREATED, Json(t)))
}

/// Checks a new tenant's fields (slug, name, known plan, isolation, registered server) the same
/// way for the admin API and the CLI.
pub async fn new_tenant(
    tenancy: &tenantry::Tenancy,
    slug: &str,
    name: String,
    plan: String,
    isolation: &str,
    server: Option<String>,
) -> Result<NewTenant, Problem> {
    let slug =
        Slug::parse(slug).map_err(|e| Problem::new(ErrorCode::InvalidTenant, e.to_string()))?;
    let mut errors = Vec::new();
    validate::name("name", &name, &mut errors);
    if !tenancy.plans().contains(&plan) {
        errors.push(plan_error(tenancy));
    }
    let isolation = Isolation::parse(isolation);
    if isolation.is_none() {
        errors.push(FieldError::new(
            "isolation",
            "must be one of: shared, schema, database",
        ));
    }
    if let Some(server) = &server {
        if isolation != Some(Isolation::Database) {
            errors.push(FieldError::new(
                "server",
                "only database tenants are placed on a server",
            ));
        } else if !provision::server_names(tenancy.catalog().database())
            .await?
            .contains(server)
        {
            errors.push(FieldError::new("server", "no such database server"));
        }
    }
    if !errors.is_empty() {
        return Err(Problem::validation(errors));
    }
    Ok(NewTenant {
        slug,
        name,
        plan,
        isolation: isolation.unwrap_or(Isolation::Shared),
        server,
    })
}

fn plan_error(tenancy: &tenantry::Tenancy) -> FieldError {
    let names: Vec<&str> = tenancy.plans().0.keys().map(String::as_str).collect();
    FieldError::new("plan", format!("must be one of: {}", names.join(", ")))
}

#[utoipa::path(get, path = "/admin/v1/tenants", tag = "admin", operation_id = "list_tenants",
    summary = "List tenants",
    params(page::PageQuery),
    responses((status = 200, description = "A page of tenants, ordered by slug.", body = Page<Tenant>)))]
pub async fn list_tenants(
    State(state): State<AppState>,
    Query(q): Query<page::PageQuery>,
) -> Result<Json<Page<Tenant>>, Problem> {
    let limit = page::limit(q.limit).map_err(|e| Problem::validation(vec![e]))?;
    if let Some(c) = &q.cursor {
        Slug::parse(c).map_err(|_| {
            Problem::validation(vec![FieldError::new(
                "cursor",
                "not a cursor from this list",
            )])
        })?;
    }
    let rows = state
        .tenancy
        .catalog()
        .list_tenants(limit + 1, q.cursor.as_deref())
        .await?;
    Ok(Json(Page::from_rows(rows, limit, |t: &Tenant| {
        t.slug.to_string()
    })))
}

#[utoipa::path(delete, path = "/admin/v1/tenants/{tenant}", tag = "admin", operation_id = "delete_tenant",
    summary = "Deprovision a tenant",
    description = "Stops traffic, deletes keys, drops the tenant's rows, schema or database, then the catalog entry. Idempotent and resumable.",
    responses(
        (status = 204, description = "Deleted."),
        (status = 404, description = "`tenant_not_found`: no such tenant."),
    ))]
/// Deprovisions a tenant: keys, storage, catalog row. Retrying after a crash finishes the job;
/// a tenant that is already gone is 404.
pub async fn delete_tenant(
    State(state): State<AppState>,
    TenantPath(slug): TenantPath,
    AdminActor(actor): AdminActor,
) -> Result<StatusCode, Problem> {
    if let Some(gone) = lifecycle::delete(state.tenancy.catalog(), &slug, &actor).await? {
        state.cache.flush_tenant(&gone.id).await;
        state.tenancy.forget_tenant(&gone.id).await;
        state.metrics.forget(&gone.slug);
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(tenant_not_found())
    }
}

#[utoipa::path(get, path = "/admin/v1/tenants/{tenant}", tag = "admin", operation_id = "get_tenant",
    summary = "Read a tenant",
    responses(
        (status = 200, description = "The tenant.", body = Tenant),
        (status = 404, description = "`tenant_not_found`: no such tenant."),
    ))]
pub async fn get_tenant(
    State(state): State<AppState>,
    TenantPath(slug): TenantPath,
) -> Result<Json<Tenant>, Problem> {
    state
        .tenancy
        .catalog()
        .get_tenant(&slug)
        .await?
        .map(Json)
        .ok_or_else(tenant_not_found)
}

/// `rate_limit` distinguishes absent (leave alone) from `null` (clear).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchTenant {
    name: Option<String>,
    plan: Option<String>,
    #[schema(value_type = Option<TenantStatus>)]
    status: Option<String>,
    /// An override of the plan's request quota; `null` clears it.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<RateLimitOverride>)]
    rate_limit: Option<Option<RateLimitOverride>>,
}

fn present<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

#[utoipa::path(patch, path = "/admin/v1/tenants/{tenant}", tag = "admin", operation_id = "update_tenant",
    summary = "Change a tenant's name, plan, status or rate-limit override",
    description = "Suspension and plan changes take effect on every node at once.",
    request_body = PatchTenant,
    responses(
        (status = 200, description = "The updated tenant.", body = Tenant),
        (status = 404, description = "`tenant_not_found`: no such tenant."),
    ))]
pub async fn patch_tenant(
    State(state): State<AppState>,
    TenantPath(slug): TenantPath,
    AdminActor(actor): AdminActor,
    Json(body): Json<PatchTenant>,
) -> Result<Json<Tenant>, Problem> {
    let mut errors = Vec::new();
    if let Some(n) = &body.name {
        validate::name("name", n, &mut errors);
    }
    if let Some(p) = &body.plan {
        if !state.tenancy.plans().contains(p) {
            errors.push(plan_error(&state.tenancy));
        }
    }
    let status = match body.status.as_deref() {
        None => None,
        Some(s) => match TenantStatus::parse(s) {
            Some(st) => Some(st),
            None => {
                errors.push(FieldError::new(
                    "status",
                    "must be one of: active, suspended",
                ));
                None
            }
        },
    };
    if let Some(Some(r)) = &body.rate_limit {
        if r.requests == 0 || r.per_seconds == 0 || r.per_seconds > 86_400 * 31 {
            errors.push(FieldError::new(
                "rate_limit",
                "requests must be positive and per_seconds between 1 and 2678400",
            ));
        }
    }
    if !errors.is_empty() {
        return Err(Problem::validation(errors));
    }
    let patch = TenantPatch {
        name: body.name,
        plan: body.plan,
        status,
        rate_limit: body.rate_limit,
    };
    let t = state
        .tenancy
        .catalog()
        .update_tenant(&slug, &patch, &actor)
        .await
        .map_err(catalog_error)?;
    if patch.status == Some(TenantStatus::Suspended) {
        state.cache.flush_tenant(&t.id).await;
    }
    Ok(Json(t))
}

// ----- API keys -----

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
    super::users::ResourceId(id): super::users::ResourceId,
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
    super::users::ResourceId(id): super::users::ResourceId,
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

// ----- audit -----

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Only entries about this tenant.
    tenant: Option<String>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
    /// Page size, 1..=200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    limit: Option<i64>,
}

#[utoipa::path(get, path = "/admin/v1/audit", tag = "admin", operation_id = "list_audit",
    summary = "The audit log, newest first",
    params(AuditQuery),
    responses((status = 200, description = "A page of entries.", body = Page<audit::AuditEntry>)))]
pub async fn audit_log(
    State(state): State<AppState>,
    Query(q): Query<AuditQuery>,
) -> Result<Json<Page<audit::AuditEntry>>, Problem> {
    let mut errors = Vec::new();
    let limit = page::limit(q.limit).unwrap_or_else(|e| {
        errors.push(e);
        0
    });
    let tenant = match q.tenant.as_deref() {
        None | Some("") => None,
        Some(t) => Some(
            Slug::parse(t).map_err(|e| Problem::new(ErrorCode::InvalidTenant, e.to_string()))?,
        ),
    };
    let before = match q.cursor.as_deref() {
        None => None,
        Some(c) => match c.parse::<i64>() {
            Ok(n) if n > 0 => Some(n),
            _ => {
                errors.push(FieldError::new("cursor", "not a cursor from this list"));
                None
            }
        },
    };
    if !errors.is_empty() {
        return Err(Problem::validation(errors));
    }
    let rows = audit::list(
        state.tenancy.catalog().database(),
        tenant.as_ref(),
        before,
        limit + 1,
    )
    .await?;
    Ok(Json(Page::from_rows(
        rows,
        limit,
        |e: &audit::AuditEntry| e.id.clone(),
    )))
}

// ----- database servers -----

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

// ----- operations -----

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
        tenantry::http::json::parse(&body)?
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
    super::users::ResourceId(id): super::users::ResourceId,
) -> Result<Json<tenantry::operations::Operation>, Problem> {
    tenantry::operations::get(state.tenancy.catalog().database(), id)
        .await?
        .map(Json)
        .ok_or_else(|| Problem::new(ErrorCode::NotFound, "no such operation"))
}

// ----- usage -----

/// A tenant's usage as the admin plane reports it.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct UsageReport {
    pub tenant: Slug,
    pub requests: RequestUsage,
    pub rows: RowCounts,
    /// Bytes of the tenant's rows.
    pub storage_bytes: i64,
    /// Where rate-limit state lives: `redis` or `local`.
    pub limiter: &'static str,
}

/// Requests in the current fixed window (aligned to the epoch).
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct RequestUsage {
    /// Unix seconds.
    pub window_start: i64,
    pub window_seconds: u64,
    pub allowed: u64,
    pub limited: u64,
    /// The quota for the window.
    pub limit: u32,
}

#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct RowCounts {
    pub users: i64,
    pub orders: i64,
}

#[utoipa::path(get, path = "/admin/v1/tenants/{tenant}/usage", tag = "admin", operation_id = "get_usage",
    summary = "A tenant's requests, rate-limited requests, rows and storage",
    responses(
        (status = 200, description = "Usage in the current window.", body = UsageReport),
        (status = 404, description = "`tenant_not_found`: no such tenant."),
    ))]
/// Requests allowed and rate-limited in the current window, rows, and storage, for a tenant.
/// Counting rows reads tenant data, so it goes through an audited admin context.
pub async fn usage(
    State(state): State<AppState>,
    TenantPath(slug): TenantPath,
    AdminActor(actor): AdminActor,
) -> Result<Json<UsageReport>, Problem> {
    let ctx = state
        .tenancy
        .admin_context(&slug, &actor, "tenant.usage", slug.as_str())
        .await
        .map_err(|e| match e {
            AdminContextError::TenantNotFound => tenant_not_found(),
            AdminContextError::Db(e) => e.into(),
        })?;
    let requests = state.tenancy.usage(ctx.tenant()).await;
    let row = ctx
        .db()
        .run_opt(
            "SELECT (SELECT count(*) FROM users WHERE tenant_id = $1),
                    (SELECT count(*) FROM orders WHERE tenant_id = $1),
                    (SELECT coalesce(sum(pg_column_size(u.*)), 0) FROM users u WHERE tenant_id = $1)
                  + (SELECT coalesce(sum(pg_column_size(o.*)), 0) FROM orders o WHERE tenant_id = $1)",
            &[],
        )
        .await?
        .ok_or_else(|| Problem::internal(&"usage query returned nothing"))?;
    let limits = ctx.limits();
    Ok(Json(UsageReport {
        tenant: slug,
        requests: RequestUsage {
            window_start: requests.window_start,
            window_seconds: requests.window_seconds,
            allowed: requests.allowed,
            limited: requests.limited,
            limit: limits.quota.requests,
        },
        rows: RowCounts {
            users: row.get(0),
            orders: row.get(1),
        },
        storage_bytes: row.get(2),
        limiter: if state.tenancy.limiter().uses_redis() {
            "redis"
        } else {
            "local"
        },
    }))
}
