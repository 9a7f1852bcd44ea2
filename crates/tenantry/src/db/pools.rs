//! The pool manager for tenant databases: one small pool per tenant database, opened lazily,
//! kept in an LRU, closed when evicted, all under one global connection budget.
//!
//! What must hold:
//! - **The budget is never exceeded.** Every connection to a tenant database holds a permit of
//!   one global semaphore for as long as it is *open* (not just while checked out): the permit
//!   lives inside the pooled object and is released when the connection is dropped.
//! - **One tenant cannot take more than its share.** Each tenant pool's size is the per-tenant
//!   share, so a tenant flooding requests waits on its own pool, not on everyone's budget.
//! - **Idle connections yield to demand.** When the budget is exhausted, idle connections of
//!   other pools are closed, least recently used pools first, before a new one waits.
//! - **No churn while the working set fits.** Each pool's size is the per-tenant share capped
//!   at `total / open pools` (at least one): with 20 tenant databases over a budget of 40, each
//!   pool holds at most 2, so the pools never need more than the budget and a busy tenant waits
//!   a moment for one of its own connections instead of closing another tenant's (opening a
//!   connection costs PostgreSQL far more than a short wait).
//!
//! Written here rather than taken from a crate because no pooling crate offers a budget shared
//! across many pools; each pool is still a plain `deadpool` pool.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use deadpool::managed::{self, Metrics, RecycleError, RecycleResult};
use deadpool_postgres::{ClientWrapper, ManagerConfig, RecyclingMethod};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_postgres::NoTls;

use super::DbError;

/// Budget settings.
#[derive(Debug, Clone)]
pub struct BudgetSettings {
    /// Connections to tenant databases, in total, across every pool.
    pub total: usize,
    /// Connections one tenant database may hold.
    pub per_tenant: usize,
    /// Pools kept open at once (LRU beyond that).
    pub max_pools: usize,
    /// How long a request waits for a connection before 503.
    pub wait: Duration,
}

impl Default for BudgetSettings {
    fn default() -> Self {
        Self {
            total: 40,
            per_tenant: 4,
            max_pools: 1000,
            wait: Duration::from_secs(5),
        }
    }
}

/// A connection plus the budget permit it holds while open.
pub(crate) struct Budgeted {
    client: ClientWrapper,
    _permit: OwnedSemaphorePermit,
}

impl std::ops::Deref for Budgeted {
    type Target = ClientWrapper;
    fn deref(&self) -> &ClientWrapper {
        &self.client
    }
}

/// A raw tenant-database connection ([`TenantPools::get`]); it holds its budget permit.
#[cfg(feature = "internals")]
pub struct RawConn(TenantConn);

#[cfg(feature = "internals")]
impl std::ops::Deref for RawConn {
    type Target = ClientWrapper;
    fn deref(&self) -> &ClientWrapper {
        &self.0.client
    }
}

/// Why a budgeted connection could not be had.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BudgetError {
    #[error("connection budget exhausted")]
    Exhausted,
    #[error(transparent)]
    Pg(#[from] tokio_postgres::Error),
}

pub(crate) struct BudgetedManager {
    inner: deadpool_postgres::Manager,
    budget: Arc<Semaphore>,
    wait: Duration,
    owner: Weak<Inner>,
    key: PoolKey,
}

impl managed::Manager for BudgetedManager {
    type Type = Budgeted;
    type Error = BudgetError;

    async fn create(&self) -> Result<Budgeted, BudgetError> {
        // Permits held by idle connections of other pools are reclaimed by closing those
        // connections; connections become idle all the time under load, so the waiter trims
        // again every few milliseconds until its deadline.
        let deadline = tokio::time::Instant::now() + self.wait;
        let permit = loop {
            if let Ok(p) = self.budget.clone().try_acquire_owned() {
                break p;
            }
            if let Some(owner) = self.owner.upgrade() {
                owner.trim_idle(&self.key);
            }
            let slice = Duration::from_millis(10)
                .min(deadline.saturating_duration_since(tokio::time::Instant::now()));
            if slice.is_zero() {
                return Err(BudgetError::Exhausted);
            }
            if let Ok(Ok(p)) =
                tokio::time::timeout(slice, self.budget.clone().acquire_owned()).await
            {
                break p;
            }
        };
        let client = managed::Manager::create(&self.inner).await?;
        Ok(Budgeted {
            client,
            _permit: permit,
        })
    }

    async fn recycle(&self, obj: &mut Budgeted, metrics: &Metrics) -> RecycleResult<BudgetError> {
        managed::Manager::recycle(&self.inner, &mut obj.client, metrics)
            .await
            .map_err(|e| match e {
                RecycleError::Message(m) => RecycleError::Message(m),
                RecycleError::Backend(e) => RecycleError::Backend(BudgetError::Pg(e)),
            })
    }
}

pub(crate) type TenantPool = managed::Pool<BudgetedManager>;
pub(crate) type TenantConn = managed::Object<BudgetedManager>;

/// (server, database)
pub(crate) type PoolKey = (String, String);

/// All tenant-database pools.
#[derive(Clone)]
pub struct TenantPools {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    settings: BudgetSettings,
    budget: Arc<Semaphore>,
    /// Base runtime connection settings per server (user and password of the runtime role).
    servers: Mutex<HashMap<String, tokio_postgres::Config>>,
    /// Pools with their last-use tick, for LRU eviction.
    pools: Mutex<Lru>,
    statement_timeout_ms: u128,
    /// The size every pool has now: the per-tenant share, capped at `total / open pools`.
    share: std::sync::atomic::AtomicUsize,
}

#[derive(Default)]
struct Lru {
    tick: u64,
    map: HashMap<PoolKey, (TenantPool, u64)>,
}

impl TenantPools {
    pub(crate) fn new(settings: BudgetSettings, statement_timeout: Duration) -> Self {
        let per_tenant = settings.per_tenant;
        Self {
            inner: Arc::new(Inner {
                budget: Arc::new(Semaphore::new(settings.total)),
                settings,
                servers: Mutex::new(HashMap::new()),
                pools: Mutex::new(Lru::default()),
                statement_timeout_ms: statement_timeout.as_millis(),
                share: std::sync::atomic::AtomicUsize::new(per_tenant),
            }),
        }
    }

    /// Registers (or replaces) a server's runtime connection settings.
    pub(crate) fn set_server(&self, name: &str, runtime: tokio_postgres::Config) {
        lock(&self.inner.servers).insert(name.to_owned(), runtime);
    }

    /// A connection to a tenant database, opening its pool if needed.
    /// A raw connection of the tenant role to `database` on `server`, under the budget, with
    /// no tenant context: for a benchmark's floor, never for tenant data.
    #[cfg(feature = "internals")]
    pub async fn get(&self, server: &str, database: &str) -> Result<RawConn, DbError> {
        self.checkout(server, database).await.map(RawConn)
    }

    pub(crate) async fn checkout(
        &self,
        server: &str,
        database: &str,
    ) -> Result<TenantConn, DbError> {
        let pool = self.pool(server, database)?;
        pool.get().await.map_err(|e| match e {
            managed::PoolError::Backend(BudgetError::Pg(e)) => DbError::from(e),
            managed::PoolError::Backend(BudgetError::Exhausted) => {
                DbError::Unavailable("tenant database connection budget exhausted".into())
            }
            other => DbError::Unavailable(other.to_string()),
        })
    }

    fn pool(&self, server: &str, database: &str) -> Result<TenantPool, DbError> {
        let key = (server.to_owned(), database.to_owned());
        let mut lru = lock(&self.inner.pools);
        lru.tick += 1;
        let tick = lru.tick;
        if let Some((pool, used)) = lru.map.get_mut(&key) {
            *used = tick;
            return Ok(pool.clone());
        }
        if lru.map.len() >= self.inner.settings.max_pools {
            if let Some(oldest) = lru
                .map
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(k, _)| k.clone())
            {
                if let Some((evicted, _)) = lru.map.remove(&oldest) {
                    // Idle connections close now; checked-out ones close when returned.
                    evicted.close();
                }
            }
        }
        // The share with this pool counted, so it is built once at its final size.
        let pools = lru.map.len() + 1;
        let share = self.reshare(&mut lru, pools);
        let pool = self.build(&key, share)?;
        lru.map.insert(key, (pool.clone(), tick));
        Ok(pool)
    }

    /// The pool size for `pools` open pools. When that moves the share across a whole number,
    /// every open pool is replaced by one of the new size (the old one closes: idle connections
    /// now, busy ones when they come back). Replacing rather than resizing keeps each pool's own
    /// limit exact.
    fn reshare(&self, lru: &mut Lru, pools: usize) -> usize {
        use std::sync::atomic::Ordering;
        let settings = &self.inner.settings;
        let share = (settings.total / pools.max(1)).clamp(1, settings.per_tenant.max(1));
        if self.inner.share.swap(share, Ordering::Relaxed) != share {
            for (key, (pool, _)) in lru.map.iter_mut() {
                match self.build(key, share) {
                    Ok(new) => std::mem::replace(pool, new).close(),
                    Err(e) => tracing::warn!(error = %e, "could not resize a tenant database pool"),
                }
            }
        }
        share
    }

    /// A pool for one tenant database, of `size` connections at most.
    fn build(&self, key: &PoolKey, size: usize) -> Result<TenantPool, DbError> {
        let mut cfg = lock(&self.inner.servers)
            .get(&key.0)
            .cloned()
            .ok_or_else(|| DbError::Config(format!("unknown database server {:?}", key.0)))?;
        cfg.dbname(&key.1);
        cfg.options(format!(
            "-c search_path={} -c statement_timeout={}",
            super::SHARED_SCHEMA,
            self.inner.statement_timeout_ms
        ));
        cfg.application_name("tenantry");
        let mgr = BudgetedManager {
            inner: deadpool_postgres::Manager::from_config(
                cfg,
                NoTls,
                ManagerConfig {
                    recycling_method: RecyclingMethod::Fast,
                },
            ),
            budget: self.inner.budget.clone(),
            wait: self.inner.settings.wait,
            owner: Arc::downgrade(&self.inner),
            key: key.clone(),
        };
        managed::Pool::builder(mgr)
            .max_size(size)
            .runtime(deadpool::Runtime::Tokio1)
            .wait_timeout(Some(self.inner.settings.wait))
            // A server that accepts the TCP connection and then answers nothing (frozen, or
            // overloaded) must not hold a request forever.
            .create_timeout(Some(self.inner.settings.wait))
            .recycle_timeout(Some(self.inner.settings.wait))
            .build()
            .map_err(|e| DbError::Config(e.to_string()))
    }

    /// Closes a tenant database's pool (before dropping the database, or after a move).
    pub(crate) fn close(&self, server: &str, database: &str) {
        let key = (server.to_owned(), database.to_owned());
        let mut lru = lock(&self.inner.pools);
        if let Some((pool, _)) = lru.map.remove(&key) {
            pool.close();
            let open = lru.map.len();
            self.reshare(&mut lru, open);
        }
    }

    /// Connections open right now, across all tenant databases (never above the budget).
    pub fn open_connections(&self) -> usize {
        self.inner.settings.total - self.inner.budget.available_permits()
    }

    /// Pools open right now.
    pub fn open_pools(&self) -> usize {
        lock(&self.inner.pools).map.len()
    }

    pub fn settings(&self) -> &BudgetSettings {
        &self.inner.settings
    }
}

impl Inner {
    /// Closes idle connections of other pools, least recently used first, until a permit is
    /// free (or every pool has been trimmed).
    fn trim_idle(&self, except: &PoolKey) {
        let mut pools: Vec<(u64, TenantPool)> = lock(&self.pools)
            .map
            .iter()
            .filter(|(k, _)| *k != except)
            .map(|(_, (p, used))| (*used, p.clone()))
            .collect();
        pools.sort_by_key(|(used, _)| *used);
        for (_, pool) in pools {
            if self.budget.available_permits() > 0 {
                break;
            }
            // Dropping the removed objects releases their permits.
            drop(pool.retain(|_, _| false));
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
