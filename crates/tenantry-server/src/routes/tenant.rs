//! `GET /v1/tenant`: the calling tenant as it sees itself.

use chrono::{DateTime, Utc};
use serde::Serialize;
use tenantry::RateLimitOverride;
use tenantry::{Json, TenantContext};

use crate::state::AppState;

/// The tenant's effective request quota.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Limits {
    pub requests: u32,
    pub per_seconds: u64,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CurrentUsage {
    /// Requests left right now (the rate limiter's bucket), as of this request.
    pub remaining: u32,
    /// Seconds until the quota is whole again.
    pub reset_seconds: u64,
    /// Requests allowed and rate-limited in the current fixed window.
    pub window: tenantry::ratelimit::Usage,
}

/// The calling tenant as it sees itself.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = TenantSelf)]
pub struct TenantView {
    pub slug: String,
    pub name: String,
    pub plan: String,
    #[schema(value_type = tenantry::TenantStatus)]
    pub status: &'static str,
    #[schema(value_type = tenantry::Isolation)]
    pub isolation: &'static str,
    pub rate_limit: Option<RateLimitOverride>,
    #[serde(serialize_with = "tenantry::http::serialize_timestamp")]
    pub created_at: DateTime<Utc>,
    pub limits: Limits,
    pub usage: Option<CurrentUsage>,
}

#[utoipa::path(get, path = "/tenant", tag = "tenant", operation_id = "get_tenant_self",
    summary = "The calling tenant",
    description = "Slug, name, plan, isolation, limits and current usage of the tenant the credential belongs to.",
    responses((status = 200, description = "The tenant.", body = TenantView)))]
pub async fn get(
    axum::extract::State(state): axum::extract::State<AppState>,
    ctx: TenantContext,
) -> Json<TenantView> {
    let t = ctx.tenant();
    let quota = ctx.limits().quota.clone();
    let window = state.tenancy.usage(t).await;
    Json(TenantView {
        slug: t.slug.to_string(),
        name: t.name.clone(),
        plan: t.plan.clone(),
        status: t.status.as_str(),
        isolation: t.isolation.as_str(),
        rate_limit: t.rate_limit,
        created_at: t.created_at,
        limits: Limits {
            requests: quota.requests,
            per_seconds: quota.window.as_secs(),
        },
        usage: ctx.rate_decision().map(|(_, d)| CurrentUsage {
            remaining: d.remaining,
            reset_seconds: d.reset_secs,
            window,
        }),
    })
}
