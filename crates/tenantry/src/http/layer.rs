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
use futures_util::future::Either;
use http::{HeaderMap, HeaderValue, Request};
use tower::{Layer, Service, ServiceExt};

use super::problem::Problem;
use crate::context::TenantContext;
use crate::ratelimit::Decision;

use crate::resolve::ResolveError;
use crate::tenancy::Tenancy;
use crate::tenant::Slug;

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
        let inner = std::mem::replace(&mut self.inner, clone);
        let tenancy = self.tenancy.clone();
        let public = self.public;
        Box::pin(async move {
            // The readied service takes the first call; a write retried in a moved tenant's
            // new placement goes to a fresh clone, driven to readiness first.
            let spare = inner.clone();
            let mut first = Some(inner);
            let call = move |r| match first.take() {
                Some(mut readied) => Either::Left(readied.call(r)),
                None => Either::Right(spare.clone().oneshot(r)),
            };
            let (mut res, outcome) = scope(&tenancy, public, req, call).await?;
            match outcome {
                Scoped::Served(ctx) => {
                    res.extensions_mut().insert(ctx);
                }
                // Lets outer layers (metrics) count the rejection for its tenant.
                Scoped::Refused(Some(tenant)) => {
                    res.extensions_mut().insert(tenant);
                }
                Scoped::Refused(None) => {}
            }
            Ok(res)
        })
    }
}

/// Whom [`scope`] served a request for, or refused it for.
pub enum Scoped {
    /// Resolution succeeded and the inner service answered in this context.
    Served(TenantContext),
    /// Resolution refused the request (problem+json); the tenant, where a limit refused it.
    Refused(Option<Slug>),
}

/// One request through tenant resolution, as [`TenancyService`] runs it: resolves the tenant,
/// runs `inner` with the [`TenantContext`] in the request's extensions, and puts the tenant's
/// rate-limit state on the response. A request that fails resolution is answered here with
/// problem+json, and `inner` never runs.
///
/// Public for a service that decides per request whether a route is tenant-scoped from a route
/// table of its own (the reference server's edge does, to spare every tenant route a layer of
/// its own); everyone else mounts [`TenancyLayer`]. `public` is
/// [`TenancyLayer::public_by_subdomain`]'s rule.
pub async fn scope<F, Fut, E>(
    tenancy: &Tenancy,
    public: bool,
    req: Request<Body>,
    mut inner: F,
) -> Result<(Response, Scoped), E>
where
    F: FnMut(Request<Body>) -> Fut,
    Fut: Future<Output = Result<Response, E>>,
{
    let (mut parts, body) = req.into_parts();
    let resolved = if public {
        tenancy.resolve_public(&parts).await
    } else {
        tenancy.resolve(&parts).await
    };
    match resolved {
        Ok(ctx) => {
            tracing::Span::current().record("tenant_id", ctx.slug().as_str());
            let mut res = if parts.method.is_safe() {
                parts.extensions.insert(ctx.clone());
                inner(Request::from_parts(parts, body)).await?
            } else {
                super::moved::write(tenancy, &ctx, parts, body, &mut inner).await?
            };
            if let Some((policy, d)) = ctx.rate_decision() {
                rate_headers(res.headers_mut(), policy, &d);
            }
            Ok((res, Scoped::Served(ctx)))
        }
        Err(mut e) => {
            // Taken rather than cloned: the problem is built from the decision alone.
            let rate = match &mut e {
                ResolveError::RateLimited {
                    decision,
                    policy,
                    tenant,
                }
                | ResolveError::TooManyInFlight {
                    decision,
                    policy,
                    tenant,
                } => Some((std::mem::take(policy), *decision, tenant.clone())),
                _ => None,
            };
            let mut res = Problem::from(e).into_response();
            let tenant = rate.map(|(policy, d, tenant)| {
                rate_headers(res.headers_mut(), &policy, &d);
                tenant
            });
            Ok((res, Scoped::Refused(tenant)))
        }
    }
}

/// The IETF draft headers (`RateLimit-Policy`, `RateLimit`) and the older trio. On every
/// tenant-plane response, so names are static, and the values are written with `itoa` (the
/// four that change into one buffer, handed out as slices of it) rather than each through
/// `core::fmt` into an allocation of its own.
pub(crate) fn rate_headers(h: &mut HeaderMap, policy: &str, d: &Decision) {
    use http::header::HeaderName;
    static POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
    static STATE: HeaderName = HeaderName::from_static("ratelimit");
    static LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
    static REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
    static RESET: HeaderName = HeaderName::from_static("ratelimit-reset");
    // Room for all five at once instead of growing (and rehashing) the map twice.
    h.reserve(5);
    let mut v = Vec::with_capacity(policy.len() + 30);
    push_quoted(
        &mut v,
        policy,
        (b";q=", d.limit.into()),
        (b";w=", d.window_secs),
    );
    if let Ok(v) = HeaderValue::from_maybe_shared(bytes::Bytes::from(v)) {
        h.insert(POLICY.clone(), v);
    }
    // `RateLimit`, then the trio's limit, remaining and reset.
    let mut buf = Vec::with_capacity(policy.len() + 80);
    push_quoted(
        &mut buf,
        policy,
        (b";r=", d.remaining.into()),
        (b";t=", d.reset_secs),
    );
    let mut ends = [buf.len(); 4];
    let mut n = itoa::Buffer::new();
    let trio = [u64::from(d.limit), d.remaining.into(), d.reset_secs];
    for (end, x) in ends[1..].iter_mut().zip(trio) {
        buf.extend_from_slice(n.format(x).as_bytes());
        *end = buf.len();
    }
    let buf = bytes::Bytes::from(buf);
    let mut start = 0;
    for (name, end) in [&STATE, &LIMIT, &REMAINING, &RESET].into_iter().zip(ends) {
        // Digits and a plan name that is a valid header value already (the policy value
        // above is built from the same name); checked all the same, never trusted.
        if let Ok(v) = HeaderValue::from_maybe_shared(buf.slice(start..end)) {
            h.insert(name.clone(), v);
        }
        start = end;
    }
}

/// Appends `"<policy>"<a><x><b><y>`, the form of both draft headers:
/// `"<policy>";q=<limit>;w=<window>` and `"<policy>";r=<remaining>;t=<reset>`.
#[inline]
fn push_quoted(buf: &mut Vec<u8>, policy: &str, (a, x): (&[u8], u64), (b, y): (&[u8], u64)) {
    let mut n = itoa::Buffer::new();
    buf.push(b'"');
    buf.extend_from_slice(policy.as_bytes());
    buf.push(b'"');
    buf.extend_from_slice(a);
    buf.extend_from_slice(n.format(x).as_bytes());
    buf.extend_from_slice(b);
    buf.extend_from_slice(n.format(y).as_bytes());
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

    /// Each response's headers are its own plan's, limit's and window's.
    #[test]
    fn rate_headers_carry_the_plan_limit_and_window() {
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
                assert_eq!(h["ratelimit-remaining"], (limit - 1).to_string());
                assert_eq!(h["ratelimit-reset"], "7");
            }
        }
    }
}
