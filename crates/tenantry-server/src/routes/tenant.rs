//! `GET /v1/tenant`: the calling tenant as it sees itself.

use chrono::{DateTime, Utc};
use serde::Serialize;
use tenantry::tenant::RateLimitOverride;
use tenantry::{Json, TenantContext};

use crate::app::AppState;

#[derive(Debug, Serialize)]
pub struct Limits {
    pub requests: u32,
    pub per_seconds: u64,
}

#[derive(Debug, Serialize)]
pub struct Usage {
    /// Requests left right now (the rate limiter's bucket), as of this request.
    pub remaining: u32,
    /// Seconds until the quota is whole again.
    pub reset_seconds: u64,
    /// Requests allowed and rate-limited in the current fixed window.
    pub window: tenantry::ratelimit::Usage,
}

#[derive(Debug, Serialize)]
pub struct TenantView {
    pub slug: String,
    pub name: String,
    pub plan: String,
    pub status: &'static str,
    pub isolation: &'static str,
    pub rate_limit: Option<RateLimitOverride>,
    pub created_at: DateTime<Utc>,
    pub limits: Limits,
    pub usage: Option<Usage>,
}

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
        usage: ctx.rate_decision().map(|(_, d)| Usage {
            remaining: d.remaining,
            reset_seconds: d.reset_secs,
            window,
        }),
    })
}
