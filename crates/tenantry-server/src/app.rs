//! Building and running the server: `Application::build(settings)` binds (port 0 works, for
//! tests), connects, migrates, and assembles the router; `run_until` serves until a shutdown
//! signal, then drains in-flight requests and stops the managed PostgreSQL if it started one.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::http::Method;
use axum::response::{IntoResponse, Response};
use axum::Router;
use rand::distr::{Alphanumeric, SampleString};
use tenantry::auth::jwt::JwtVerifier;
use tenantry::cache::TenantCache;
use tenantry::db::{BudgetSettings, Database, PoolSettings, RoleNames};
use tenantry::http::layer::{scope, Scoped};
use tenantry::http::{ErrorCode, Problem, BODY_LIMIT};
use tenantry::jobs::{Worker, WorkerConfig};
use tenantry::metrics::Metrics;
use tenantry::ratelimit::redis::RedisLimiter;
use tenantry::resolve::ResolverConfig;
use tenantry::{Catalog, RequestIdLayer, Tenancy, TenancyConfig};
use tokio::net::TcpListener;
use tower::{Service, ServiceBuilder};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::trace::TraceLayer;

use crate::config::Settings;
use crate::local_pg::{LocalPgError, LocalPostgres};
use crate::migrations::TENANT_MIGRATIONS;
use crate::openapi;
use crate::routes;
pub use crate::state::{AppState, AppStateInner, JobDepth};
use crate::surface::{surface, tenant_plane};

/// Connects to the control plane (starting the managed local PostgreSQL when `DATABASE_URL` is
/// unset), bootstraps roles and migrations, and checks the runtime role.
pub async fn connect(
    settings: &Settings,
) -> Result<(Database, Option<Arc<LocalPostgres>>), StartError> {
    let (control, local_pg) = match &settings.database_url {
        Some(url) => (
            url.parse::<tokio_postgres::Config>()
                .map_err(|e| StartError::DatabaseUrl(e.to_string()))?,
            None,
        ),
        None => {
            let dir = settings.data_dir.clone();
            let pg = tokio::task::spawn_blocking(move || LocalPostgres::start(&dir))
                .await
                .expect("local PostgreSQL start-up does not panic")?;
            (pg.config(), Some(Arc::new(pg)))
        }
    };
    let runtime = match &settings.runtime_database_url {
        Some(url) => Some(
            url.parse::<tokio_postgres::Config>()
                .map_err(|e| StartError::DatabaseUrl(e.to_string()))?,
        ),
        None => None,
    };
    let roles = RoleNames::from_prefix(&settings.role_prefix)?;
    let pool_settings = PoolSettings {
        tenant_databases: BudgetSettings {
            total: settings.tenant_db_budget.0,
            per_tenant: settings.tenant_db_budget.1,
            ..BudgetSettings::default()
        },
        runtime_lanes: settings.runtime_lanes,
        ..PoolSettings::default()
    };
    match Database::connect(control, runtime, &roles, TENANT_MIGRATIONS, &pool_settings).await {
        Ok(db) => Ok((db, local_pg)),
        Err(e) => {
            if let Some(pg) = &local_pg {
                pg.stop();
            }
            Err(e.into())
        }
    }
}

/// The tenancy machinery from the settings (shared by `serve` and `worker`).
pub fn tenancy(
    settings: &Settings,
    catalog: Catalog,
) -> Result<(Tenancy, Option<JwtVerifier>), StartError> {
    let jwt = if settings.jwt.enabled() {
        Some(
            JwtVerifier::new(settings.jwt.clone())
                .map_err(|e| StartError::Config(e.to_string()))?,
        )
    } else {
        None
    };
    let redis = match &settings.redis_url {
        Some(url) => Some(
            RedisLimiter::new(url, &settings.role_prefix)
                .map_err(|e| StartError::Config(format!("REDIS_URL: {e}")))?,
        ),
        None => None,
    };
    let tenancy = Tenancy::new(
        catalog,
        TenancyConfig {
            resolver: ResolverConfig {
                base_domain: Some(settings.base_domain.clone()),
                trusted_proxies: settings.trusted_proxies.clone(),
                ..ResolverConfig::default()
            },
            plans: settings.plans.clone(),
            jwt: jwt.clone(),
            redis,
            fail_mode: settings.fail_mode,
            concurrency_wait: Duration::from_millis(100),
            auth_failures: Default::default(),
        },
    );
    Ok((tenancy, jwt))
}

/// The job worker with the server's job kinds.
pub fn worker(settings: &Settings, tenancy: Tenancy) -> Worker {
    Worker::new(
        tenancy,
        WorkerConfig {
            concurrency: settings.worker_concurrency.max(1),
            lease: settings.job_lease,
            ..WorkerConfig::default()
        },
    )
    .handle(routes::exports::EXPORT, routes::exports::run)
    .handle(routes::exports::SLEEP, routes::exports::sleep)
}

/// `tenantry worker`: runs jobs without serving HTTP, until `shutdown`.
pub async fn run_worker(
    settings: Settings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    let (db, local_pg) = connect(&settings).await?;
    let catalog = Catalog::new(db.clone());
    let listener = tokio::spawn(catalog.clone().listen(db.control_config().clone()));
    let (tenancy, _) = tenancy(&settings, catalog)?;
    tracing::info!("tenantry worker running");
    worker(&settings, tenancy).run_until(shutdown).await;
    listener.abort();
    if let Some(pg) = local_pg {
        let _ = tokio::task::spawn_blocking(move || pg.stop()).await;
    }
    Ok(())
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    LocalPostgres(#[from] LocalPgError),
    #[error("invalid database URL: {0}")]
    DatabaseUrl(String),
    #[error(transparent)]
    Database(#[from] tenantry::db::DbError),
    #[error("configuration: {0}")]
    Config(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}

pub struct Application {
    listener: TcpListener,
    edge: Edge,
    local_pg: Option<Arc<LocalPostgres>>,
    background: Vec<tokio::task::JoinHandle<()>>,
    tenancy: Tenancy,
    /// Background jobs run inside `serve` unless disabled (`tenantry worker` runs them alone).
    worker: Option<Worker>,
}

impl Application {
    pub async fn build(settings: Settings) -> Result<Self, StartError> {
        let (db, local_pg) = connect(&settings).await?;
        let control = db.control_config().clone();
        let catalog = Catalog::new(db);
        let (tenancy, jwt) = tenancy(&settings, catalog.clone())?;
        let worker = (settings.worker_concurrency > 0).then(|| worker(&settings, tenancy.clone()));
        let mut tokens = settings.admin_tokens.clone();
        if let Some(t) = &settings.admin_token {
            tokens.push(("default".into(), t.clone()));
        }
        if tokens.is_empty() {
            let t = Alphanumeric.sample_string(&mut rand::rng(), 40);
            // Printed once, on stderr, not through the log pipeline.
            eprintln!("tenantry: generated admin token (shown once): {t}");
            tokens.push(("default".into(), t));
        }
        let mut cache = TenantCache::new(catalog.database().clone(), 64 * 1024 * 1024);
        if let Some(url) = &settings.redis_url {
            cache = cache
                .with_redis(url, &settings.role_prefix)
                .map_err(|e| StartError::Config(format!("REDIS_URL: {e}")))?;
        }
        let state = AppState(Arc::new(AppStateInner {
            tenancy: tenancy.clone(),
            admin: crate::state::AdminTokens::new(tokens),
            cache: cache.clone(),
            order_cache: settings.order_cache,
            metrics: Metrics::new(),
            metrics_token: settings.metrics_token.clone(),
            job_depth: JobDepth::default(),
            openapi: openapi::document_bytes(),
        }));
        let mut background = vec![tokio::spawn(catalog.listen(control))];
        background.push(tokio::spawn(cache.listen()));
        background.push(tokio::spawn(
            tenancy
                .clone()
                .flush_key_usage_every(settings.key_usage_flush),
        ));
        if let Some(v) = jwt.filter(|v| v.config().jwks_file.is_some()) {
            background.push(tokio::spawn(v.watch_jwks(Duration::from_secs(1))));
        }
        let depth_state = state.clone();
        background.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tick.tick().await;
                match tenantry::jobs::queue_depth(&depth_state.tenancy).await {
                    Ok(depth) => depth_state.job_depth.set(depth),
                    Err(e) => tracing::debug!(error = %e, "could not read the job queue's depth"),
                }
            }
        }));
        let limiter_tenancy = tenancy.clone();
        background.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            loop {
                tick.tick().await;
                limiter_tenancy.sweep();
            }
        }));
        let listener =
            TcpListener::bind(settings.listen)
                .await
                .map_err(|source| StartError::Bind {
                    addr: settings.listen,
                    source,
                })?;
        Ok(Self {
            listener,
            edge: edge(state),
            local_pg,
            background,
            tenancy,
            worker,
        })
    }

    /// The router this server serves (tests compare its routes with the OpenAPI document).
    pub fn router(&self) -> &Router {
        self.edge.router()
    }

    /// The tenancy this server resolves requests with: for code embedding the server that
    /// needs the same catalog and pools (the benchmark's database floor reads through them).
    pub fn tenancy(&self) -> &Tenancy {
        &self.tenancy
    }

    pub fn port(&self) -> u16 {
        self.listener.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    /// Serves until `shutdown` resolves, then stops accepting, lets in-flight requests finish,
    /// and stops the managed PostgreSQL if this process started it.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        tracing::info!(addr = %self.listener.local_addr()?, "tenantry listening");
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let worker = self.worker.map(|w| {
            tokio::spawn(w.run_until(async move {
                let _ = stopped.changed().await;
            }))
        });
        let service =
            axum::ServiceExt::<axum::extract::Request>::into_make_service_with_connect_info::<
                std::net::SocketAddr,
            >(serving(self.edge));
        let r = axum::serve(self.listener, service)
            .with_graceful_shutdown(shutdown)
            .await;
        // HTTP is drained; now the worker finishes or releases its running jobs.
        let _ = stop.send(true);
        if let Some(w) = worker {
            let _ = w.await;
        }
        for t in &self.background {
            t.abort();
        }
        // Usage recorded since the last flush is not lost on a clean shutdown.
        if let Err(e) = self.tenancy.flush_key_usage().await {
            tracing::warn!(error = %e, "could not record the last API key usage");
        }
        if let Some(pg) = self.local_pg {
            let _ = tokio::task::spawn_blocking(move || pg.stop()).await;
        }
        r
    }
}

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
                ),
        )
        .layer(CatchPanicLayer::custom(panic_response))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .service(inner)
}

/// Requests whose headers total more than this are refused with 431 before any work.
const MAX_HEADER_BYTES: usize = 16 * 1024;

/// What every request passes once, just before routing:
/// - the header-size limit (431);
/// - on a tenant-plane route, the tenant context: resolution, limits and rate-limit headers,
///   by the library's [`scope`] (what [`tenantry::TenancyLayer`] runs per route);
/// - the request metrics by route template, method and status, and by tenant where one was
///   resolved (a 429 for its tenant too).
///
/// It knows the route template before routing from its own `RouteTable`, built from the same
/// lists as the router. Per-route layers would each add a level that clones and boxes the route
/// again on every request (three levels were ~12 of a read's ~65 allocations). A route the
/// table did not know would only lose its metrics label, and, if it were a tenant route, fail
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
