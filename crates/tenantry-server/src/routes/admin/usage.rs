//! A tenant's usage: requests in the current window, rows and storage.

use super::*;

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
