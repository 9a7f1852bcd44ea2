//! [`TenancyLayer`]: resolves every request to a [`TenantContext`] before the handler runs, and
//! puts the tenant's rate-limit state on every response.
//!
//! A request that fails resolution never reaches the inner service: it is answered here with
//! problem+json, so a 429 or 401 costs no handler and no tenant database work.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderValue, Request};
use tower::{Layer, Service};

use super::problem::Problem;
use crate::context::TenantContext;
use crate::ratelimit::Decision;

use crate::resolve::ResolveError;
use crate::tenancy::Tenancy;

/// Adds tenant resolution in front of a service.
#[derive(Clone)]
pub struct TenancyLayer {
    tenancy: Tenancy,
    public: bool,
}

impl TenancyLayer {
    /// The default: a credential decides the tenant; hints must agree.
    pub fn new(tenancy: Tenancy) -> Self {
        Self {
            tenancy,
            public: false,
        }
    }

    /// An explicit opt-in for routes that serve anonymous visitors of a tenant's site: the
    /// tenant comes from the subdomain alone, no credential is read, and only GET/HEAD/OPTIONS
    /// are allowed (the context's principal is [`crate::auth::Principal::Public`], read-only).
    /// Mount it on exactly the routes that want it, never as the default.
    pub fn public_by_subdomain(tenancy: Tenancy) -> Self {
        Self {
            tenancy,
            public: true,
        }
    }
}

impl<S> Layer<S> for TenancyLayer {
    type Service = TenancyService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        TenancyService {
            inner,
            tenancy: self.tenancy.clone(),
            public: self.public,
        }
    }
}

#[derive(Clone)]
pub struct TenancyService<S> {
    inner: S,
    tenancy: Tenancy,
    public: bool,
}

impl<S> Service<Request<Body>> for TenancyService<S>
where
    S: Service<Request<Body>, Response = Response> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        // The clone that was driven to readiness is the one we call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let tenancy = self.tenancy.clone();
        let public = self.public;
        Box::pin(async move {
            let (mut parts, body) = req.into_parts();
            let resolved = if public {
                tenancy.resolve_public(&parts).await
            } else {
                tenancy.resolve(&parts).await
            };
            match resolved {
                Ok(ctx) => {
                    tracing::Span::current().record("tenant_id", ctx.tenant_id().as_str());
                    parts.extensions.insert(ctx.clone());
                    let mut res = inner.call(Request::from_parts(parts, body)).await?;
                    if let Some((policy, d)) = ctx.rate_decision() {
                        rate_headers(res.headers_mut(), policy, &d);
                    }
                    res.extensions_mut().insert(ctx);
                    Ok(res)
                }
                Err(e) => {
                    let rate = match &e {
                        ResolveError::RateLimited {
                            decision,
                            policy,
                            tenant,
                        }
                        | ResolveError::TooManyInFlight {
                            decision,
                            policy,
                            tenant,
                        } => Some((policy.clone(), *decision, tenant.clone())),
                        _ => None,
                    };
                    let mut res = Problem::from(e).into_response();
                    if let Some((policy, d, tenant)) = rate {
                        rate_headers(res.headers_mut(), &policy, &d);
                        // Lets outer layers (metrics) count the rejection for its tenant.
                        res.extensions_mut().insert(tenant);
                    }
                    Ok(res)
                }
            }
        })
    }
}

/// The IETF draft headers (`RateLimit-Policy`, `RateLimit`) and the older trio. On every
/// tenant-plane response, so names are static and values are assembled from bytes and `itoa`
/// rather than `format!` (two `format!`s were ~4,000 of a read's instructions).
pub fn rate_headers(h: &mut HeaderMap, policy: &str, d: &Decision) {
    use http::header::HeaderName;
    static POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
    static STATE: HeaderName = HeaderName::from_static("ratelimit");
    static LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
    static REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
    static RESET: HeaderName = HeaderName::from_static("ratelimit-reset");
    // Room for all five at once instead of growing (and rehashing) the map twice.
    h.reserve(5);
    let mut n = itoa::Buffer::new();
    // `"<policy>";q=<limit>;w=<window>` and `"<policy>";r=<remaining>;t=<reset>`.
    let quoted = |a: &str, x: u64, b: &str, y: u64, n: &mut itoa::Buffer| {
        let mut v = Vec::with_capacity(policy.len() + 2 + a.len() + b.len() + 40);
        v.push(b'"');
        v.extend_from_slice(policy.as_bytes());
        v.push(b'"');
        v.extend_from_slice(a.as_bytes());
        v.extend_from_slice(n.format(x).as_bytes());
        v.extend_from_slice(b.as_bytes());
        v.extend_from_slice(n.format(y).as_bytes());
        HeaderValue::try_from(v)
    };
    if let Some(v) = policy_value(policy, d, || {
        quoted(";q=", d.limit.into(), ";w=", d.window_secs, &mut n).ok()
    }) {
        h.insert(POLICY.clone(), v);
    }
    if let Ok(v) = quoted(";r=", d.remaining.into(), ";t=", d.reset_secs, &mut n) {
        h.insert(STATE.clone(), v);
    }
    h.insert(LIMIT.clone(), HeaderValue::from(d.limit));
    h.insert(REMAINING.clone(), HeaderValue::from(d.remaining));
    h.insert(RESET.clone(), HeaderValue::from(d.reset_secs));
}

/// The `RateLimit-Policy` value of `(policy, limit, window)`: the same on every response of a
/// plan, so each thread keeps the last few it built instead of building one per response
/// (allocation, digits and validation were ~550 instructions).
fn policy_value(
    policy: &str,
    d: &Decision,
    build: impl FnOnce() -> Option<HeaderValue>,
) -> Option<HeaderValue> {
    use std::cell::RefCell;
    /// Plans in use on one thread at once, in the common case.
    const KEPT: usize = 8;
    type Kept = Vec<(Box<str>, u32, u64, HeaderValue)>;
    thread_local! {
        static KEPT_VALUES: RefCell<Kept> = const { RefCell::new(Vec::new()) };
    }
    KEPT_VALUES.with_borrow_mut(|kept| {
        let hit = kept
            .iter()
            .find(|(p, l, w, _)| *l == d.limit && *w == d.window_secs && **p == *policy);
        if let Some((.., v)) = hit {
            return Some(v.clone());
        }
        let v = build()?;
        if kept.len() == KEPT {
            kept.remove(0);
        }
        kept.push((policy.into(), d.limit, d.window_secs, v.clone()));
        Some(v)
    })
}

impl TenantContext {
    /// The context a [`TenancyLayer`] attached to a response, for outer layers (logging).
    pub fn from_response(res: &Response) -> Option<&TenantContext> {
        res.extensions().get::<TenantContext>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decision(limit: u32, window_secs: u64) -> Decision {
        Decision {
            allowed: true,
            limit,
            window_secs,
            remaining: limit - 1,
            reset_secs: 7,
            retry_after_secs: 0,
        }
    }

    /// Kept policy values never answer for another plan, limit or window, also once more
    /// plans than are kept have been seen.
    #[test]
    fn policy_values_are_kept_per_plan_limit_and_window() {
        for round in 0..3 {
            for i in 0..20u32 {
                let (plan, limit, window) = (
                    format!("plan{}", i % 12),
                    100 + i % 3,
                    60 + u64::from(i % 5),
                );
                let mut h = HeaderMap::new();
                rate_headers(&mut h, &plan, &decision(limit, window));
                assert_eq!(
                    h["ratelimit-policy"],
                    format!("\"{plan}\";q={limit};w={window}"),
                    "round {round}, call {i}"
                );
                assert_eq!(h["ratelimit"], format!("\"{plan}\";r={};t=7", limit - 1));
                assert_eq!(h["ratelimit-limit"], limit.to_string());
            }
        }
    }
}
