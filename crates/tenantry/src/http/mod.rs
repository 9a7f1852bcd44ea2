//! The HTTP edge: tower layers, extractors and problem+json errors.

pub(crate) mod json;
pub(crate) mod json_writer;
pub(crate) mod layer;
pub(crate) mod moved;
pub(crate) mod problem;
pub(crate) mod request_id;
pub(crate) mod rfc3339;

use axum::extract::FromRequestParts;
use http::request::Parts;

pub use json::{parse_json, Json, Query, BODY_LIMIT};
pub use json_writer::{Object, WriteJson, Written};
pub use layer::{scope, Scoped, TenancyLayer, TenancyService};
pub use problem::{ErrorCode, FieldError, Problem};
pub use request_id::{RequestId, RequestIdLayer, RequestIdService, X_REQUEST_ID};
pub use rfc3339::serialize as serialize_timestamp;

use crate::context::TenantContext;
use crate::resolve::ResolveError;

impl<S: Send + Sync> FromRequestParts<S> for TenantContext {
    type Rejection = Problem;

    /// A handler that takes a `TenantContext` can only run after resolution put one here. On a
    /// route mounted without [`TenancyLayer`] this fails closed (500), never "all tenants".
    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<TenantContext>()
            .cloned()
            .ok_or_else(|| {
                Problem::internal(&"a tenant route is mounted without the tenancy layer")
            })
    }
}

impl From<ResolveError> for Problem {
    fn from(e: ResolveError) -> Self {
        let code = match &e {
            ResolveError::InvalidTenant(_) => ErrorCode::InvalidTenant,
            ResolveError::Unauthenticated => ErrorCode::Unauthenticated,
            ResolveError::InvalidCredentials => ErrorCode::InvalidCredentials,
            ResolveError::Mismatch(_) => ErrorCode::TenantMismatch,
            ResolveError::Suspended => ErrorCode::TenantSuspended,
            ResolveError::Forbidden(_) => ErrorCode::Forbidden,
            ResolveError::BadHeader(_) => ErrorCode::InvalidHeader,
            ResolveError::RateLimited { decision, .. } => {
                return Problem::new(ErrorCode::RateLimited, problem::OVER_LIMIT)
                    .with_retry_after(decision.retry_after_secs);
            }
            ResolveError::TooManyInFlight { .. } => {
                return Problem::new(
                    ErrorCode::RateLimited,
                    "too many requests in flight for this tenant; retry shortly",
                )
                .with_retry_after(1);
            }
            ResolveError::Unavailable => return Problem::unavailable(&e),
            ResolveError::TooManyFailures { retry_after_secs } => {
                return Problem::new(ErrorCode::RateLimited, e.to_string())
                    .with_retry_after(*retry_after_secs);
            }
            ResolveError::UnknownTenant => ErrorCode::NotFound,
        };
        Problem::new(code, e.to_string())
    }
}
