//! Building and running the server: `Application::build(settings)` binds (port 0 works, for
//! tests), connects, migrates, and assembles the router; `run_until` serves until a shutdown
//! signal, then drains in-flight requests and stops the managed PostgreSQL if it started one.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use rand::distr::{Alphanumeric, SampleString};
use tenantry::auth::JwtVerifier;
use tenantry::cache::TenantCache;
use tenantry::db::{BudgetSettings, Database, PoolSettings, RoleNames};
use tenantry::jobs::{Worker, WorkerConfig};
use tenantry::metrics::Metrics;
use tenantry::ratelimit::RedisLimiter;
use tenantry::resolve::ResolverConfig;
use tenantry::{Catalog, Tenancy, TenancyConfig};
use tokio::net::TcpListener;

use crate::config::Settings;
use crate::edge::{edge, serving, Edge};
use crate::local_pg::{LocalPgError, LocalPostgres};
use crate::migrations::TENANT_MIGRATIONS;
use crate::openapi;
use crate::routes;
pub use crate::state::{AppState, AppStateInner, JobDepth};

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
            move_grace: settings.move_grace,
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
        let r = crate::connections::serve(self.listener, serving(self.edge), shutdown).await;
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
