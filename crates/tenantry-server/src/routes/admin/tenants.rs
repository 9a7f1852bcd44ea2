//! Tenants: create, list, read, change, delete.

use super::*;

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
