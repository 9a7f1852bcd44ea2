//! The edge: what every request passes once in front of the router (header limit, tenant
//! context on tenant-plane routes, metrics), from a route table of its own built from the same
//! list as the router ([`crate::surface`]); and [`serving`], the layers outside it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::http::Method;
use axum::response::{IntoResponse, Response};
use axum::Router;
use tenantry::http::{scope, Scoped};
use tenantry::http::{ErrorCode, Problem, BODY_LIMIT};
use tenantry::RequestIdLayer;
use tower::{Service, ServiceBuilder};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::trace::TraceLayer;

use crate::state::AppState;
use crate::surface::{surface, tenant_plane};

/// The whole HTTP surface: the router behind the [`Edge`]. [`serving`] adds what runs before
/// the edge.
pub fn edge(state: AppState) -> Edge {
    let (routes, _) = surface(Some(&state)).split_for_parts();
    let router = routes
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state.clone());
    Edge {
        router,
        routes: Arc::new(RouteTable::new()),
        state,
    }
}

/// The edge (or, in tests, any router) with the layers every request passes once, before
/// routing: request id, trace span, panic guard, body limit. Outside the router they are built
/// once, not once per route, and a request does not clone and box them per route.
pub fn serving<S>(
    inner: S,
) -> impl Service<
    axum::extract::Request,
    Response = Response,
    Error = std::convert::Infallible,
    Future: Send,
> + Clone
       + Send
       + 'static
where
    S: Service<axum::extract::Request, Response = Response, Error = std::convert::Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    ServiceBuilder::new()
        .map_response(|res: axum::http::Response<_>| res.map(axum::body::Body::new))
        .layer(RequestIdLayer)
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|req: &axum::http::Request<_>| {
                    // Set by the request id layer just outside: no header lookup by name.
                    let rid = req
                        .extensions()
                        .get::<tenantry::http::RequestId>()
                        .map(|r| r.as_str())
                        .unwrap_or_default();
                    tracing::info_span!(
                        "request",
                        method = %req.method(),
                        path = %req.uri().path(),
                        request_id = %rid,
                        tenant_id = tracing::field::Empty,
                        principal = tracing::field::Empty,
                    )
                })
                .on_response(
                    |res: &axum::http::Response<_>, latency: Duration, _span: &tracing::Span| {
                        tracing::info!(
                            status = res.status().as_u16(),
                            latency_ms = latency.as_secs_f64() * 1e3,
                            "response"
                        );
                    },
                )
                // Not one ERROR line per 5xx: a 500 is logged with its cause where it is made,
                // and an outage's 503s are logged as the outage (`Problem::unavailable`).
                .on_failure(()),
        )
        .layer(CatchPanicLayer::custom(panic_response))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .service(inner)
}

/// Requests whose headers total more than this are refused with 431 before any work.
const MAX_HEADER_BYTES: usize = 16 * 1024;

/// What every request passes once, just before routing:
/// - the header-size limit (431), and one `Host` header at most (400);
/// - on a tenant-plane route, the tenant context: resolution, limits and rate-limit headers,
///   by the library's [`scope`] (what [`tenantry::TenancyLayer`] runs per route);
/// - the request metrics by route template, method and status, and by tenant where one was
///   resolved (a 429 for its tenant too).
///
/// It knows the route template before routing from its own `RouteTable`, built from the same
/// lists as the router. Per-route layers would each add a level that clones and boxes the route
/// again on every request (each level allocates per request). A route the table did not know
/// would only lose its metrics label, and, if it were a tenant route, fail
/// closed: its handlers cannot run without a context.
#[derive(Clone)]
pub struct Edge {
    router: Router,
    routes: Arc<RouteTable>,
    state: AppState,
}

impl Edge {
    /// The router behind the edge (tests compare its routes with the OpenAPI document).
    pub fn router(&self) -> &Router {
        &self.router
    }
}

/// The route templates the router serves, and for which methods each is a tenant-plane route.
struct RouteTable {
    matcher: matchit::Router<RouteEntry>,
}

#[derive(Clone, Copy)]
struct RouteEntry {
    template: &'static str,
    /// [`method_bit`]s of the methods served in a tenant context.
    tenant_methods: u8,
}

impl RouteTable {
    fn new() -> Self {
        let tenant = tenant_plane().split_for_parts().1.paths.paths;
        let (_, all) = surface(None).split_for_parts();
        let mut matcher = matchit::Router::new();
        for path in all.paths.paths.into_keys() {
            let tenant_methods = tenant.get(&path).map_or(0, |item| {
                [
                    (&item.get, Method::GET),
                    (&item.post, Method::POST),
                    (&item.put, Method::PUT),
                    (&item.patch, Method::PATCH),
                    (&item.delete, Method::DELETE),
                ]
                .into_iter()
                .filter(|(op, _)| op.is_some())
                .fold(0, |bits, (_, m)| bits | method_bit(&m))
            });
            // Templates live as long as the process (one table per server).
            let template: &'static str = Box::leak(path.into_boxed_str());
            matcher
                .insert(
                    template,
                    RouteEntry {
                        template,
                        tenant_methods,
                    },
                )
                .expect("the router accepted the same templates");
        }
        Self { matcher }
    }

    fn at(&self, path: &str) -> Option<RouteEntry> {
        self.matcher.at(path).ok().map(|m| *m.value)
    }
}

/// One bit per method a route can serve; `HEAD` is served by `GET` routes, as axum does.
fn method_bit(m: &Method) -> u8 {
    match *m {
        Method::GET | Method::HEAD => 1,
        Method::POST => 2,
        Method::PUT => 4,
        Method::PATCH => 8,
        Method::DELETE => 16,
        _ => 0,
    }
}

impl Service<axum::extract::Request> for Edge {
    type Response = Response;
    type Error = std::convert::Infallible;
    type Future = EdgeFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // The router is always ready.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: axum::extract::Request) -> Self::Future {
        let total: usize = req
            .headers()
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 4)
            .sum();
        if total > MAX_HEADER_BYTES {
            let res = Problem::new(
                ErrorCode::HeadersTooLarge,
                format!("request headers are limited to {MAX_HEADER_BYTES} bytes"),
            )
            .into_response();
            return EdgeFuture::Refused { res: Some(res) };
        }
        // RFC 9112: a request with more than one Host header is answered 400, on every route
        // (the tenant plane's resolution refuses it too, as a hint that cannot be read).
        if req
            .headers()
            .get_all(axum::http::header::HOST)
            .iter()
            .nth(1)
            .is_some()
        {
            let res =
                Problem::new(ErrorCode::InvalidHeader, "more than one Host header").into_response();
            return EdgeFuture::Refused { res: Some(res) };
        }
        let route = self.routes.at(req.uri().path());
        let meter = Meter {
            route: route.map_or("unmatched", |r| r.template),
            method: req.method().clone(),
            start: std::time::Instant::now(),
            state: self.state.clone(),
        };
        if route.is_some_and(|r| r.tenant_methods & method_bit(req.method()) != 0) {
            let tenancy = self.state.tenancy.clone();
            let mut router = self.router.clone();
            let scoped = async move {
                match scope(&tenancy, false, req, |r| router.call(r)).await {
                    Ok(done) => done,
                    Err(never) => match never {},
                }
            };
            EdgeFuture::Scoped {
                inner: Box::pin(scoped),
                meter,
            }
        } else {
            EdgeFuture::Routed {
                inner: self.router.call(req),
                meter,
            }
        }
    }
}

/// What the edge records of a request when its response is ready.
struct Meter {
    route: &'static str,
    method: Method,
    start: std::time::Instant,
    state: AppState,
}

impl Meter {
    fn record(&self, res: &Response, tenant: Option<&tenantry::Slug>) {
        self.state.metrics.record(
            self.route,
            self.method.as_str(),
            res.status().as_u16(),
            self.start.elapsed(),
            tenant,
        );
    }
}

type ScopedFuture = Pin<Box<dyn Future<Output = (Response, Scoped)> + Send>>;

pin_project_lite::pin_project! {
    /// [`Edge`]'s response future: named rather than boxed for the routes that need no tenant
    /// context; a tenant-plane request boxes the one future that resolves and then routes.
    #[project = EdgeProj]
    pub enum EdgeFuture {
        Refused { res: Option<Response> },
        Routed {
            #[pin]
            inner: axum::routing::future::RouteFuture<std::convert::Infallible>,
            meter: Meter,
        },
        Scoped {
            inner: ScopedFuture,
            meter: Meter,
        },
    }
}

impl Future for EdgeFuture {
    type Output = Result<Response, std::convert::Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            EdgeProj::Refused { res } => match res.take() {
                Some(res) => Poll::Ready(Ok(res)),
                None => Poll::Pending,
            },
            EdgeProj::Routed { inner, meter } => {
                let res = std::task::ready!(inner.poll(cx))?;
                // Not a tenant-plane request: counted for no tenant (the admin plane's
                // audited contexts are counted in the audit log, not in per-tenant traffic).
                meter.record(&res, None);
                Poll::Ready(Ok(res))
            }
            EdgeProj::Scoped { inner, meter } => {
                let (res, scoped) = std::task::ready!(inner.as_mut().poll(cx));
                let tenant = match &scoped {
                    Scoped::Served(ctx) => Some(ctx.slug()),
                    Scoped::Refused(tenant) => tenant.as_ref(),
                };
                meter.record(&res, tenant);
                Poll::Ready(Ok(res))
            }
        }
    }
}

async fn not_found() -> Problem {
    Problem::new(ErrorCode::NotFound, "no such route")
}

async fn method_not_allowed() -> Problem {
    Problem::new(
        ErrorCode::MethodNotAllowed,
        "method not allowed on this route",
    )
}

fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    Problem::internal(&"handler panicked").into_response()
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::routing::{get, post};
    use tower::ServiceExt;

    use super::*;

    /// The layers `serving` puts around a router still see what happens inside it.
    #[tokio::test]
    async fn outer_layers_cover_what_the_router_does() {
        let router = Router::new()
            .route(
                "/boom",
                get(|| async {
                    if true {
                        panic!("a handler bug");
                    }
                }),
            )
            .route(
                "/echo",
                post(|body: axum::body::Bytes| async move { body.len().to_string() }),
            );
        let service = serving(router);

        // A panic deep in a handler: 500 problem+json, with the request id.
        let req = axum::http::Request::get("/boom")
            .header("x-request-id", "req-77")
            .body(Body::empty())
            .unwrap();
        let res = service.clone().oneshot(req).await.unwrap();
        assert_eq!(res.status(), 500);
        assert_eq!(res.headers()["content-type"], "application/problem+json");
        assert_eq!(res.headers()["x-request-id"], "req-77");

        // The body limit set outside the router reaches the extractor inside it.
        let big = vec![b'x'; BODY_LIMIT + 1];
        let req = axum::http::Request::post("/echo")
            .body(Body::from(big))
            .unwrap();
        let res = service.clone().oneshot(req).await.unwrap();
        assert_eq!(res.status(), 413);
        // A generated request id when the client sent none.
        assert_eq!(res.headers()["x-request-id"].len(), 36);

        let req = axum::http::Request::post("/echo")
            .body(Body::from("abc"))
            .unwrap();
        let res = service.oneshot(req).await.unwrap();
        assert_eq!(res.status(), 200);
    }

    /// The edge's table opens a tenant context for exactly the tenant plane's routes and
    /// methods, and labels every served route with its template.
    #[test]
    fn route_table_marks_the_tenant_plane() {
        let table = RouteTable::new();
        let tenant = |path: &str, m: Method| {
            let r = table.at(path).expect("a served route");
            r.tenant_methods & method_bit(&m) != 0
        };
        let id = "/v1/orders/0b7e4f0e-0000-4000-8000-000000000000";
        assert_eq!(table.at(id).unwrap().template, "/v1/orders/{id}");
        assert!(tenant(id, Method::GET));
        assert!(tenant(id, Method::HEAD));
        assert!(tenant(id, Method::PATCH));
        assert!(tenant(id, Method::DELETE));
        // Not served there: the router answers 405 without resolving anyone.
        assert!(!tenant(id, Method::PUT));
        assert!(!tenant(id, Method::POST));
        assert!(tenant("/v1/tenants/acme/orders", Method::POST));
        assert!(tenant("/v1/tenant", Method::GET));
        // The admin plane opens its own (audited) context; operations need none.
        assert!(!tenant("/admin/v1/tenants/acme/orders", Method::GET));
        assert!(!tenant("/admin/v1/tenants", Method::GET));
        assert!(!tenant("/healthz", Method::GET));
        assert!(table.at("/v1/nothing").is_none());

        // Every tenant-plane route and method is in the table, marked.
        let plane = tenant_plane().split_for_parts().1.paths.paths;
        assert!(plane.len() >= 10);
        for (path, item) in plane {
            let r = table.at(&path).expect("every tenant route is in the table");
            assert_eq!(r.template, path);
            let documented = [&item.get, &item.post, &item.put, &item.patch, &item.delete]
                .iter()
                .filter(|op| op.is_some())
                .count();
            assert_eq!(r.tenant_methods.count_ones() as usize, documented, "{path}");
        }
    }
}
