//! `application/problem+json` (RFC 9457) errors with stable machine-readable codes.
//!
//! Every error any layer produces is mapped here, once. 5xx details are logged, never sent.

use std::borrow::Cow;

use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{header, HeaderValue, StatusCode};
use serde::Serialize;

/// The stable error codes of the HTTP contract. Clients branch on these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum ErrorCode {
    Unauthenticated,
    InvalidCredentials,
    InvalidTenant,
    TenantMismatch,
    TenantSuspended,
    TenantNotFound,
    Forbidden,
    NotFound,
    Conflict,
    ValidationFailed,
    RateLimited,
    PayloadTooLarge,
    Unavailable,
    /// The body is not well-formed JSON (400).
    MalformedBody,
    /// The body is not declared as JSON (415).
    UnsupportedMediaType,
    /// A header is malformed or contradicts another (400).
    InvalidHeader,
    /// The route exists but not with this method (405).
    MethodNotAllowed,
    /// The request's headers are too large (431).
    HeadersTooLarge,
    /// Something broke on our side (500); details are in the log under the request id.
    Internal,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Unauthenticated => "unauthenticated",
            ErrorCode::InvalidCredentials => "invalid_credentials",
            ErrorCode::InvalidTenant => "invalid_tenant",
            ErrorCode::TenantMismatch => "tenant_mismatch",
            ErrorCode::TenantSuspended => "tenant_suspended",
            ErrorCode::TenantNotFound => "tenant_not_found",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::Conflict => "conflict",
            ErrorCode::ValidationFailed => "validation_failed",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::MalformedBody => "malformed_body",
            ErrorCode::UnsupportedMediaType => "unsupported_media_type",
            ErrorCode::InvalidHeader => "invalid_header",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::HeadersTooLarge => "headers_too_large",
            ErrorCode::Internal => "internal",
        }
    }

    pub fn status(self) -> StatusCode {
        match self {
            ErrorCode::Unauthenticated | ErrorCode::InvalidCredentials => StatusCode::UNAUTHORIZED,
            ErrorCode::InvalidTenant | ErrorCode::MalformedBody | ErrorCode::InvalidHeader => {
                StatusCode::BAD_REQUEST
            }
            ErrorCode::TenantMismatch | ErrorCode::TenantSuspended | ErrorCode::Forbidden => {
                StatusCode::FORBIDDEN
            }
            ErrorCode::TenantNotFound | ErrorCode::NotFound => StatusCode::NOT_FOUND,
            ErrorCode::Conflict => StatusCode::CONFLICT,
            ErrorCode::ValidationFailed => StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorCode::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn title(self) -> &'static str {
        match self {
            ErrorCode::Unauthenticated => "Authentication required",
            ErrorCode::InvalidCredentials => "Invalid credentials",
            ErrorCode::InvalidTenant => "Invalid tenant identifier",
            ErrorCode::TenantMismatch => "Tenant does not match the credential",
            ErrorCode::TenantSuspended => "Tenant suspended",
            ErrorCode::TenantNotFound => "Tenant not found",
            ErrorCode::Forbidden => "Forbidden",
            ErrorCode::NotFound => "Not found",
            ErrorCode::Conflict => "Conflict",
            ErrorCode::ValidationFailed => "Validation failed",
            ErrorCode::RateLimited => "Rate limit exceeded",
            ErrorCode::PayloadTooLarge => "Payload too large",
            ErrorCode::Unavailable => "Service unavailable",
            ErrorCode::MalformedBody => "Malformed request body",
            ErrorCode::UnsupportedMediaType => "Unsupported media type",
            ErrorCode::InvalidHeader => "Invalid header",
            ErrorCode::MethodNotAllowed => "Method not allowed",
            ErrorCode::HeadersTooLarge => "Request headers too large",
            ErrorCode::Internal => "Internal error",
        }
    }
}

/// Lets one log line a second through, and counts the ones it held back: an outage refuses
/// every request, and is worth a line a second, not one per request.
struct LogThrottle {
    second: std::sync::atomic::AtomicU64,
    held: std::sync::atomic::AtomicU64,
}

impl LogThrottle {
    const fn new() -> Self {
        Self {
            second: std::sync::atomic::AtomicU64::new(u64::MAX),
            held: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// At `now` (seconds): `Some(lines held back since the last one let through)` if a line
    /// may be logged, `None` if it is held back.
    fn admit(&self, now: u64) -> Option<u64> {
        use std::sync::atomic::Ordering::Relaxed;
        if self.second.swap(now, Relaxed) == now {
            self.held.fetch_add(1, Relaxed);
            None
        } else {
            Some(self.held.swap(0, Relaxed))
        }
    }
}

/// One field that failed validation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// An error response.
#[derive(Debug, Clone)]
pub struct Problem {
    pub code: ErrorCode,
    /// Borrowed when it is a literal: the body of such a problem is rendered once per process
    /// (see `into_response`).
    pub detail: Cow<'static, str>,
    pub errors: Vec<FieldError>,
    /// Seconds, sent as `Retry-After` (429 and 503).
    pub retry_after: Option<u64>,
    /// A write refused because the tenant moved to another placement: the tenancy layer
    /// retries the request there ([`super::moved`]).
    pub(crate) moved: bool,
}

/// The `type` of every problem is this followed by its code.
const PROBLEM_TYPE: &str = "urn:tenantry:problem:";

#[derive(Serialize)]
struct Body<'a> {
    #[serde(rename = "type")]
    kind: String,
    title: &'static str,
    status: u16,
    detail: &'a str,
    code: &'static str,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    errors: &'a [FieldError],
}

impl Problem {
    pub fn new(code: ErrorCode, detail: impl Into<Cow<'static, str>>) -> Self {
        Self {
            code,
            detail: detail.into(),
            errors: Vec::new(),
            retry_after: None,
            moved: false,
        }
    }

    /// 422 with the failing fields.
    pub fn validation(errors: Vec<FieldError>) -> Self {
        let detail = errors
            .iter()
            .map(|e| format!("{}: {}", e.field, e.message))
            .collect::<Vec<_>>()
            .join("; ");
        Self {
            errors,
            ..Self::new(ErrorCode::ValidationFailed, detail)
        }
    }

    pub fn not_found() -> Self {
        Self::new(ErrorCode::NotFound, "no such resource in this tenant")
    }

    /// A 500 whose cause is logged here and not sent to the client.
    pub fn internal(cause: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error");
        Self::new(
            ErrorCode::Internal,
            "internal error; see the server log for this request id",
        )
    }

    pub fn unavailable(cause: &dyn std::fmt::Display) -> Self {
        static OUTAGES: LogThrottle = LogThrottle::new();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if let Some(refused) = OUTAGES.admit(now) {
            tracing::warn!(error = %cause, refused_since_last_line = refused, "dependency unavailable");
        }
        Self {
            retry_after: Some(1),
            ..Self::new(
                ErrorCode::Unavailable,
                "a dependency is unavailable; retry shortly",
            )
        }
    }

    pub fn with_retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }
}

/// The detail of a tenant over its rate limit.
pub(crate) const OVER_LIMIT: &str = "over the tenant's rate limit";

impl Problem {
    fn render(&self) -> Vec<u8> {
        let code = self.code.as_str();
        let mut kind = String::with_capacity(PROBLEM_TYPE.len() + code.len());
        kind.push_str(PROBLEM_TYPE);
        kind.push_str(code);
        let body = Body {
            kind,
            title: self.code.title(),
            status: self.code.status().as_u16(),
            detail: &self.detail,
            code,
            errors: &self.errors,
        };
        let mut out = Vec::with_capacity(256);
        // Serialising these plain structs into memory cannot fail.
        let _ = serde_json::to_writer(&mut out, &body);
        out
    }
}

/// The body of a problem whose detail is a literal and which names no fields: it never
/// changes, so it is rendered once and shared. That makes the responses that come in floods
/// (a tenant over its limit, an unknown route, a bad key) cost no rendering. Keyed by the
/// literal's address; at most `KEPT` bodies, so details leaked at run time cannot grow it.
fn kept_body(code: ErrorCode, detail: &'static str, render: impl FnOnce() -> Vec<u8>) -> Bytes {
    static BODIES: std::sync::LazyLock<crate::memo::Memo<(ErrorCode, usize, usize), Bytes>> =
        std::sync::LazyLock::new(|| crate::memo::Memo::new(KEPT));
    const KEPT: usize = 256;
    BODIES.get_or_keep((code, detail.as_ptr() as usize, detail.len()), || {
        Bytes::from(render())
    })
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = self.code.status();
        let bytes = match &self.detail {
            Cow::Borrowed(detail) if self.errors.is_empty() => {
                kept_body(self.code, detail, || self.render())
            }
            _ => self.render().into(),
        };
        let mut res = super::json::typed_body(bytes, "application/problem+json");
        *res.status_mut() = status;
        if let Some(secs) = self.retry_after {
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        // Lets outer layers (metrics, logs) see the code without parsing the body.
        res.extensions_mut().insert(self.code);
        if self.moved {
            res.extensions_mut().insert(super::moved::Moved);
        }
        res
    }
}

impl From<crate::db::DbError> for Problem {
    fn from(e: crate::db::DbError) -> Self {
        use crate::db::DbError;
        match e {
            DbError::Unavailable(_) | DbError::Timeout => Problem::unavailable(&e),
            DbError::TenantMoved => Problem {
                moved: true,
                ..Problem::new(
                    ErrorCode::Unavailable,
                    "the tenant is moving to another placement; retry shortly",
                )
                .with_retry_after(1)
            },
            DbError::Unique { .. } => Problem::new(ErrorCode::Conflict, "already exists"),
            DbError::ForeignKey { .. } | DbError::Check { .. } => {
                Problem::validation(vec![FieldError::new("body", "violates a constraint")])
            }
            other => Problem::internal(&other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outage_is_logged_once_a_second_with_what_it_held_back() {
        let throttle = LogThrottle::new();
        assert_eq!(throttle.admit(100), Some(0));
        for _ in 0..5_000 {
            assert_eq!(throttle.admit(100), None);
        }
        assert_eq!(throttle.admit(101), Some(5_000));
        assert_eq!(throttle.admit(101), None);
        assert_eq!(throttle.admit(105), Some(1));
    }

    async fn body(p: Problem) -> (StatusCode, Option<HeaderValue>, serde_json::Value) {
        let res = p.into_response();
        let status = res.status();
        let retry = res.headers().get(header::RETRY_AFTER).cloned();
        let bytes = axum::body::to_bytes(res.into_body(), 1 << 16)
            .await
            .unwrap();
        (status, retry, serde_json::from_slice(&bytes).unwrap())
    }

    #[tokio::test]
    async fn the_prerendered_429_is_the_rendered_one() {
        let p = Problem::new(ErrorCode::RateLimited, OVER_LIMIT).with_retry_after(7);
        let rendered: serde_json::Value = serde_json::from_slice(&p.render()).unwrap();
        // Twice: the first renders and keeps the body, the second reuses it.
        for _ in 0..2 {
            let (status, retry, json) = body(p.clone()).await;
            assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
            assert_eq!(retry.unwrap(), "7");
            assert_eq!(json, rendered);
            assert_eq!(json["type"], "urn:tenantry:problem:rate_limited");
            assert_eq!(json["detail"], OVER_LIMIT);
        }
        // Another 429 detail gets its own body, not the over-limit one.
        let (_, _, other) = body(Problem::new(ErrorCode::RateLimited, "too many in flight")).await;
        assert_eq!(other["detail"], "too many in flight");
    }
}
