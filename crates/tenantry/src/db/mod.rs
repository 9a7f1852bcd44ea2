//! PostgreSQL access: the control plane, the runtime pool, and the scoped transaction.
//!
//! Two kinds of connection exist and never mix:
//! - **control**: the operator's `DATABASE_URL` role (allowed to create roles and schemas). It
//!   runs migrations and provisioning (as the owner role, via `SET LOCAL ROLE`) and catalog
//!   writes. It never runs a tenant's request.
//! - **runtime**: the unprivileged role that serves tenant traffic. It is not a superuser, has no
//!   BYPASSRLS, owns nothing and has no TRUNCATE, so forced RLS holds whatever the application
//!   does. [`Database::connect`] refuses to start otherwise.
//!
//! The files here are the request path's side (pools, the scoped transaction, its
//! single-statement form, errors, LISTEN); the `control` folder is the control plane's (roles,
//! migrations, provisioning, fleet migrations, the doctor), of which applications see
//! [`provision`], [`fleet`] and [`doctor`].

pub(crate) mod control;
pub(crate) mod error;
pub(crate) mod notify;
pub(crate) mod pools;
pub(crate) mod scoped;
pub(crate) mod single_statement;

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::NoTls;

use crate::placement::Placement;
#[cfg(feature = "internals")]
pub use crate::placement::{database_name, schema_name};
pub use control::{archive, doctor, fleet, moves, provision};
pub(crate) use control::{migrate, roles};
pub use error::DbError;
pub use migrate::TenantMigration;
#[cfg(feature = "internals")]
pub use pools::RawConn;
pub use pools::{BudgetSettings, TenantPools};
pub use roles::{quote_ident, RoleNames};
#[cfg(feature = "internals")]
pub use scoped::SCOPE_SCHEMA_SQL;
pub use scoped::{Params, ScopedTx, TenantDb};
#[cfg(feature = "internals")]
pub use single_statement::single_statement_form;

/// Serialises start-up bootstrap across nodes.
const BOOTSTRAP_LOCK: i64 = 727263000;

/// The schema that holds the shared-placement tenant tables.
pub(crate) const SHARED_SCHEMA: &str = "shared";
/// The schema that holds the control-plane catalog.
pub(crate) const CONTROL_SCHEMA: &str = "tenantry";

/// Pool sizes and timeouts.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    pub runtime_max: usize,
    pub control_max: usize,
    /// How long a request may wait for a connection before it gets 503 `unavailable`.
    pub wait_timeout: Duration,
    /// Default statement timeout on runtime connections.
    pub statement_timeout: Duration,
    /// The connection budget for tenant databases.
    pub tenant_databases: BudgetSettings,
    /// How long a runtime connection serves before it is closed and replaced (checked when it
    /// is next taken from the pool). PostgreSQL keeps the catalog entries of every schema a
    /// backend has touched for the backend's whole life (about 120 MB for 10,000 tables), so
    /// with many schema tenants an unbounded lifetime means unbounded memory per connection.
    pub connection_lifetime: Duration,
    /// Lanes the runtime pool is split into (its connections divided between them; 1: one
    /// pool). A schema tenant is always served by the lane its schema hashes to, so each
    /// connection meets only its lane's share of the schemas: fewer connection-schema pairs to
    /// warm up (each costs parsing, planning and loading the schema's catalog entries on that
    /// backend) and less memory per backend. Shared tenants take the lane with the most idle
    /// connections. A schema tenant is limited to its lane's connections, so keep a lane at
    /// least as large as the largest plan's connection share.
    pub runtime_lanes: usize,
}

impl Default for PoolSettings {
    fn default() -> Self {
        Self {
            runtime_max: 16,
            control_max: 4,
            wait_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(30),
            tenant_databases: BudgetSettings::default(),
            connection_lifetime: Duration::from_secs(30 * 60),
            runtime_lanes: 1,
        }
    }
}

/// The pools, ready to serve, and what provisioning needs to know.
#[derive(Clone)]
pub struct Database {
    control: Pool,
    runtime: Pool,
    inner: std::sync::Arc<Shared>,
}

struct Shared {
    /// The runtime pool's lanes (`runtime` is the first).
    lanes: Vec<Pool>,
    /// Where the search for a shared tenant's lane starts (rotates, to spread ties).
    next_lane: std::sync::atomic::AtomicUsize,
    runtime_max: usize,
    wait_timeout: Duration,
    /// Each tenant's share of the runtime pool.
    connection_shares: crate::ratelimit::concurrency::TenantSemaphores,
    control_config: tokio_postgres::Config,
    roles: RoleNames,
    runtime_password: String,
    /// API keys' keyed checksum (see [`crate::auth::api_key`]).
    key_check: crate::auth::api_key::KeyCheck,
    migrations: &'static [TenantMigration],
    tenant_pools: TenantPools,
}

impl Database {
    /// Connects the control plane, bootstraps roles, schemas and migrations, opens the runtime
    /// pool and checks that the runtime role cannot bypass RLS.
    ///
    /// `runtime_override` is an operator-supplied runtime connection; without it the runtime role
    /// is created (named by `roles`) and its password kept in the catalog.
    pub async fn connect(
        control: tokio_postgres::Config,
        runtime_override: Option<tokio_postgres::Config>,
        roles: &RoleNames,
        migrations: &'static [TenantMigration],
        settings: &PoolSettings,
    ) -> Result<Self, DbError> {
        let control_pool = pool(
            control.clone(),
            settings.control_max,
            settings.wait_timeout,
            None,
        )?;
        // Nodes starting together would race on GRANTs and the runtime password ("tuple
        // concurrently updated"): the whole bootstrap runs under one session advisory lock.
        let (password, key_check_secret) = {
            let mut client = control_pool.get().await?;
            client
                .execute("SELECT pg_advisory_lock($1)", &[&BOOTSTRAP_LOCK])
                .await?;
            let result = async {
                let password = roles::bootstrap(&client, roles).await?;
                migrate::control_plane(&mut client, roles).await?;
                migrate::shared_tables(&mut client, roles, migrations).await?;
                let secret = key_check_secret(&client).await?;
                Ok::<_, DbError>((password, secret))
            }
            .await;
            let unlocked = client
                .execute("SELECT pg_advisory_unlock($1)", &[&BOOTSTRAP_LOCK])
                .await;
            let r = result?;
            unlocked?;
            r
        };
        let key_check = {
            let client = control_pool.get().await?;
            let legacy = client
                .query(
                    &format!("SELECT prefix FROM {CONTROL_SCHEMA}.api_keys WHERE NOT keyed_check"),
                    &[],
                )
                .await?;
            crate::auth::api_key::KeyCheck::new(&key_check_secret)
                .with_legacy(legacy.iter().map(|r| r.get(0)))
        };
        let runtime_cfg = match runtime_override {
            Some(cfg) => cfg,
            None => {
                let mut cfg = control.clone();
                cfg.user(&roles.runtime);
                cfg.password(password.clone());
                cfg
            }
        };
        let tenant_pools = TenantPools::new(
            settings.tenant_databases.clone(),
            settings.statement_timeout,
        );
        tenant_pools.set_server(crate::placement::DEFAULT_SERVER, runtime_cfg.clone());
        let runtime_cfg = runtime_config(runtime_cfg, settings);
        let lanes = settings.runtime_lanes.clamp(1, settings.runtime_max.max(1));
        let lanes = (0..lanes)
            .map(|i| {
                let size =
                    settings.runtime_max / lanes + usize::from(i < settings.runtime_max % lanes);
                pool(
                    runtime_cfg.clone(),
                    size.max(1),
                    settings.wait_timeout,
                    Some(settings.connection_lifetime),
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        {
            let client = lanes[0].get().await?;
            roles::check_runtime_role(&client, roles).await?;
        }
        let db = Self {
            control: control_pool,
            runtime: lanes[0].clone(),
            inner: std::sync::Arc::new(Shared {
                lanes,
                next_lane: Default::default(),
                runtime_max: settings.runtime_max,
                wait_timeout: settings.wait_timeout,
                connection_shares: Default::default(),
                control_config: control,
                roles: roles.clone(),
                runtime_password: password,
                key_check,
                migrations,
                tenant_pools,
            }),
        };
        provision::load_servers(&db).await?;
        Ok(db)
    }

    /// The control connection settings (for LISTEN and for provisioning on this server).
    pub fn control_config(&self) -> &tokio_postgres::Config {
        &self.inner.control_config
    }

    pub fn roles(&self) -> &RoleNames {
        &self.inner.roles
    }

    pub(crate) fn runtime_password(&self) -> &str {
        &self.inner.runtime_password
    }

    /// API keys' keyed checksum, the same on every node of the deployment.
    pub(crate) fn key_check(&self) -> &crate::auth::api_key::KeyCheck {
        &self.inner.key_check
    }

    /// The tenant-table migrations this deployment runs.
    pub fn migrations(&self) -> &'static [TenantMigration] {
        self.inner.migrations
    }

    /// The newest tenant migration version.
    pub fn latest_version(&self) -> i32 {
        self.inner
            .migrations
            .iter()
            .map(|m| m.version)
            .max()
            .unwrap_or(0)
    }

    /// The runtime pool's size (tenants' connection shares are fractions of it).
    pub fn runtime_max(&self) -> usize {
        self.inner.runtime_max
    }

    /// How long to wait for a connection before answering 503.
    pub fn wait_timeout(&self) -> Duration {
        self.inner.wait_timeout
    }

    /// Per-tenant connection shares of the runtime pool.
    pub fn connection_shares(&self) -> &crate::ratelimit::concurrency::TenantSemaphores {
        &self.inner.connection_shares
    }

    /// Forgets idle tenants' connection-share state.
    pub fn sweep_shares(&self) {
        self.inner.connection_shares.sweep();
    }

    /// Pools of `database` tenants, under the global connection budget.
    pub fn tenant_pools(&self) -> &TenantPools {
        &self.inner.tenant_pools
    }

    /// The privileged pool (the control role): catalog writes, audit entries, provisioning and
    /// the job queue's service. Crate-private: no tenant request, and no code outside the
    /// library, reaches tables through it; the library has a function for each use.
    pub(crate) fn control(&self) -> &Pool {
        &self.control
    }

    /// Open, idle and maximum connections of the control pool (for metrics).
    pub fn control_status(&self) -> deadpool_postgres::Status {
        self.control.status()
    }

    /// The unprivileged pool that serves tenant traffic (with lanes, the first lane: what is
    /// not tenant traffic, such as catalog reads, runs there). A connection taken from it
    /// directly has no tenant context, so forced RLS shows it no tenant row: tenant tables are
    /// reached through [`crate::TenantContext::db`].
    pub(crate) fn runtime(&self) -> &Pool {
        &self.runtime
    }

    /// The runtime pool itself, for tests and benchmarks that must see what a raw
    /// connection of the tenant role can do.
    #[cfg(feature = "internals")]
    pub fn runtime_pool(&self) -> &Pool {
        self.runtime()
    }

    /// Every lane of the runtime pool ([`PoolSettings::runtime_lanes`]).
    #[cfg(feature = "internals")]
    pub fn runtime_lanes(&self) -> &[Pool] {
        &self.inner.lanes
    }

    /// The lane that serves a schema: always the same one, so a connection meets only its
    /// lane's schemas.
    pub(crate) fn lane_for_schema(&self, schema: &str) -> &Pool {
        use std::hash::{Hash, Hasher};
        let lanes = &self.inner.lanes;
        if lanes.len() == 1 {
            return &lanes[0];
        }
        let mut h = std::collections::hash_map::DefaultHasher::new();
        schema.hash(&mut h);
        &lanes[(h.finish() % lanes.len() as u64) as usize]
    }

    /// The lane for a shared tenant (whose statements are the same on every connection): the
    /// one with the most idle connections, searching from a rotating start.
    pub(crate) fn lane_for_shared(&self) -> &Pool {
        let lanes = &self.inner.lanes;
        if lanes.len() == 1 {
            return &lanes[0];
        }
        let start = self
            .inner
            .next_lane
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        (0..lanes.len())
            .map(|k| &lanes[(start + k) % lanes.len()])
            .max_by_key(|p| {
                let s = p.status();
                // Idle connections, or room to open one.
                s.available + s.max_size.saturating_sub(s.size)
            })
            .unwrap_or(&lanes[0])
    }

    /// Open, idle and maximum connections over all lanes of the runtime pool.
    pub fn runtime_status(&self) -> deadpool_postgres::Status {
        let mut total = self.inner.lanes[0].status();
        for lane in &self.inner.lanes[1..] {
            let s = lane.status();
            total.max_size += s.max_size;
            total.size += s.size;
            total.available += s.available;
            total.waiting += s.waiting;
        }
        total
    }

    /// Whether the database answers (for `/readyz`), within [`PING_DEADLINE`]: a frozen server
    /// must make readiness fail, not hang.
    pub async fn ping(&self) -> Result<(), DbError> {
        let deadline = tokio::time::Instant::now() + PING_DEADLINE;
        let client = tokio::time::timeout_at(deadline, self.runtime.get())
            .await
            .map_err(|_| DbError::Timeout)??;
        match tokio::time::timeout_at(deadline, client.simple_query("SELECT 1")).await {
            Ok(answered) => {
                answered?;
                Ok(())
            }
            Err(_) => {
                // Its query may still be running: the connection is not given to anyone else.
                drop(deadpool_postgres::Object::take(client));
                Err(DbError::Timeout)
            }
        }
    }
}

/// How long [`Database::ping`] waits for the database.
pub const PING_DEADLINE: Duration = Duration::from_millis(1500);

/// The deployment's key-checksum secret, made on first start from the operating system's
/// random source and kept in the catalog (readable only by the control role).
async fn key_check_secret(client: &tokio_postgres::Client) -> Result<Vec<u8>, DbError> {
    let fresh: [u8; 32] = rand::random();
    client
        .execute(
            &format!(
                "INSERT INTO {CONTROL_SCHEMA}.key_check_secret (secret) VALUES ($1)
                 ON CONFLICT (singleton) DO NOTHING"
            ),
            &[&fresh.as_slice()],
        )
        .await?;
    Ok(client
        .query_one(
            &format!("SELECT secret FROM {CONTROL_SCHEMA}.key_check_secret"),
            &[],
        )
        .await?
        .get(0))
}

/// Every runtime connection starts with the shared schema alone on its path (never `public`),
/// and a statement timeout so a runaway query cannot hold a connection forever.
fn runtime_config(
    mut cfg: tokio_postgres::Config,
    settings: &PoolSettings,
) -> tokio_postgres::Config {
    cfg.options(format!(
        "-c search_path={SHARED_SCHEMA} -c statement_timeout={}",
        settings.statement_timeout.as_millis()
    ));
    cfg.application_name("tenantry");
    cfg
}

/// A pool; with a `lifetime`, a connection older than it is closed instead of being handed out
/// (the pool then takes another idle one or opens a new one).
fn pool(
    cfg: tokio_postgres::Config,
    max: usize,
    wait: Duration,
    lifetime: Option<Duration>,
) -> Result<Pool, DbError> {
    use deadpool_postgres::{Hook, HookError};
    let mgr = Manager::from_config(
        cfg,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    let mut builder = Pool::builder(mgr)
        .max_size(max)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(wait))
        .create_timeout(Some(wait))
        .recycle_timeout(Some(wait));
    if let Some(lifetime) = lifetime {
        builder = builder.pre_recycle(Hook::sync_fn(move |_, metrics| {
            if metrics.age() >= lifetime {
                Err(HookError::Message("past its lifetime".into()))
            } else {
                Ok(())
            }
        }));
    }
    builder.build().map_err(|e| DbError::Config(e.to_string()))
}
