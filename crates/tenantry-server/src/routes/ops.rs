//! `/healthz` (the process is up) and `/readyz` (the database answers).

use axum::extract::State;
use tenantry::{Json, Problem};

use crate::state::AppState;

/// `{"status": "ok"}` or `{"status": "ready"}`.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Status {
    pub status: &'static str,
}

#[utoipa::path(get, path = "/healthz", tag = "operations", summary = "The process is up",
    responses((status = 200, description = "Up.", body = Status)))]
pub async fn healthz() -> Json<Status> {
    Json(Status { status: "ok" })
}

#[utoipa::path(get, path = "/readyz", tag = "operations", summary = "The database answers",
    responses(
        (status = 200, description = "Ready.", body = Status),
        (status = 503, description = "`unavailable`: the database does not answer."),
    ))]
pub async fn readyz(State(state): State<AppState>) -> Result<Json<Status>, Problem> {
    state.tenancy.catalog().database().ping().await?;
    Ok(Json(Status { status: "ready" }))
}

#[utoipa::path(get, path = "/metrics", tag = "operations", summary = "Prometheus metrics",
    description = "Request counts and latency histograms by route and status; per-tenant request and rate-limited counts for the top tenants (the rest as `other`); pool and budget gauges; jobs queued and running; cache hits and misses; rate-limiter backend health. Needs `Authorization: Bearer` with the metrics token (`TENANTRY_METRICS_TOKEN`) or an admin token.",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Prometheus text exposition format 0.0.4.", content_type = "text/plain", body = String),
        (status = 401, description = "`unauthenticated` or `invalid_credentials`: no metrics or admin token."),
    ))]
/// `GET /metrics`: Prometheus text. Request counters and latency histograms by route, per-tenant
/// counters (top tenants, the rest as `other`), pool and budget gauges, job queue depth by
/// state, cache hits and misses, and the rate limiter's backend health.
pub async fn metrics(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    use subtle::ConstantTimeEq;
    use tenantry::http::ErrorCode;
    use tenantry::metrics::Sample;
    // Per-tenant series name tenants: only operators read them.
    let token = match crate::routes::admin::bearer(&headers) {
        Ok(t) => t,
        Err(p) => return p.into_response(),
    };
    let allowed = token.is_some_and(|t| {
        let metrics = state
            .metrics_token
            .as_ref()
            .is_some_and(|m| bool::from(m.as_bytes().ct_eq(t.as_bytes())));
        metrics | state.admin.identify(t).is_some()
    });
    if !allowed {
        let (code, detail) = if token.is_none() {
            (
                ErrorCode::Unauthenticated,
                "a metrics or admin bearer token is required",
            )
        } else {
            (ErrorCode::InvalidCredentials, "invalid metrics token")
        };
        return Problem::new(code, detail).into_response();
    }
    let db = state.tenancy.catalog().database();
    let mut extra = Vec::new();
    let gauge = |name, help, labels: Vec<(&'static str, String)>, value: f64| Sample {
        name,
        help,
        kind: "gauge",
        labels,
        value,
    };
    for (pool_name, s) in [
        ("runtime", db.runtime_status()),
        ("control", db.control_status()),
    ] {
        extra.push(gauge(
            "tenantry_db_pool_connections",
            "Open connections per pool.",
            vec![("pool", pool_name.into())],
            s.size as f64,
        ));
        extra.push(gauge(
            "tenantry_db_pool_available",
            "Idle connections per pool.",
            vec![("pool", pool_name.into())],
            s.available as f64,
        ));
        extra.push(gauge(
            "tenantry_db_pool_max",
            "Pool size limit.",
            vec![("pool", pool_name.into())],
            s.max_size as f64,
        ));
    }
    let pools = db.tenant_pools();
    extra.push(gauge(
        "tenantry_tenant_db_connections",
        "Connections open to tenant databases (never above the budget).",
        vec![],
        pools.open_connections() as f64,
    ));
    extra.push(gauge(
        "tenantry_tenant_db_budget",
        "The tenant-database connection budget.",
        vec![],
        pools.settings().total as f64,
    ));
    extra.push(gauge(
        "tenantry_tenant_db_pools",
        "Tenant-database pools open.",
        vec![],
        pools.open_pools() as f64,
    ));
    // Refreshed in the background (`AppState::job_depth`): a scrape runs no query.
    let (queued, running) = state.job_depth.get();
    for (state_name, n) in [("queued", queued), ("running", running)] {
        extra.push(gauge(
            "tenantry_jobs",
            "Jobs queued and running, over every tenant (refreshed every few seconds).",
            vec![("state", state_name.into())],
            n as f64,
        ));
    }
    extra.push(Sample {
        name: "tenantry_catalog_key_lookups_total",
        help: "API keys looked up in the catalog (cache misses); forged keys cost none.",
        kind: "counter",
        labels: vec![],
        value: state.tenancy.catalog().key_lookups() as f64,
    });
    let (hits, misses) = state.cache.stats();
    extra.push(Sample {
        name: "tenantry_cache_hits_total",
        help: "Tenant cache hits.",
        kind: "counter",
        labels: vec![],
        value: hits as f64,
    });
    extra.push(Sample {
        name: "tenantry_cache_misses_total",
        help: "Tenant cache misses (loads).",
        kind: "counter",
        labels: vec![],
        value: misses as f64,
    });
    let limiter = state.tenancy.limiter();
    extra.push(gauge(
        "tenantry_rate_limiter_backend_up",
        "1 when the rate limiter's backend (Redis, or in-process) answers.",
        vec![(
            "backend",
            if limiter.uses_redis() {
                "redis"
            } else {
                "local"
            }
            .into(),
        )],
        if limiter.backend_healthy() { 1.0 } else { 0.0 },
    ));
    extra.push(Sample {
        name: "tenantry_rate_limiter_fallbacks_total",
        help: "Decisions made by the local fallback while Redis was down.",
        kind: "counter",
        labels: vec![],
        value: limiter.fallbacks() as f64,
    });
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        state.metrics.render(&extra),
    )
        .into_response()
}
