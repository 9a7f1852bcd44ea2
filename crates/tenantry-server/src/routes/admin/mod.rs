//! The admin plane: tenants, API keys, the audit log, servers, operations and usage (one module
//! each), and tenant data inside an explicitly named tenant. This module holds what they share:
//! the admin token check (every route needs it; every action is audited), the acting admin,
//! the tenant in the path, and the audited tenant context.

mod archives;
mod audit_log;
mod keys;
mod moves;
mod operations;
mod servers;
mod tenants;
mod usage;

pub use archives::*;
pub use audit_log::*;
pub use keys::*;
pub use moves::*;
pub use operations::*;
pub use servers::*;
pub use tenants::*;
pub use usage::*;

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
use tenantry::AdminContextError;
use tenantry::RateLimitOverride;
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
    // The tenant-data routes (`routes::tenant_data` under the admin prefix), which
    // `tenant_context` audits.
    if ["/users", "/orders", "/exports", "/jobs"]
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
