//! The control-plane catalog: tenants and API keys, with the resolution cache in front.
//!
//! Reads on the request path (key by prefix, tenant by slug) go through an in-process cache with
//! single-flight loads, so a hot key costs no database work and a stampede on a cold one costs
//! one query. Every write that changes what resolution would decide (a revocation, a suspension,
//! a plan change) commits a `pg_notify` in the same transaction; each node's
//! [`listen`](Catalog::listen) task evicts the entry when it arrives, and the writing node evicts
//! at once. If the listening connection drops, notifications may have been missed, so the
//! whole cache is cleared and the connection re-established.
//!
//! Catalog writes run on the control pool and record their audit entry in the same transaction:
//! an admin action and its audit record commit together or not at all.
//!
//! - this file: the records, the caches and the request path's reads;
//! - `listen`: the invalidation listener;
//! - `tenants`: tenant writes and the admin plane's tenant reads;
//! - `keys`: API key writes and lists;
//! - `front`: the per-thread map in front of the caches.

mod keys;
mod listen;
mod per_thread_front;
mod tenants;

pub(crate) use tenants::record_move;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use moka::future::Cache;
use serde::Serialize;
use tokio_postgres::Row;
use uuid::Uuid;

use crate::auth::Scope;
use crate::db::{Database, DbError};
use crate::placement::Isolation;
use crate::placement::Placement;
use crate::tenant::{RateLimitOverride, Slug, StorageState, Tenant, TenantId, TenantStatus};
use per_thread_front::Front;

/// How long the cache is trusted without a working LISTEN connection.
pub(crate) const STALE_AFTER: Duration = Duration::from_secs(5);

/// The notification channel for cache invalidation.
pub(crate) const CHANNEL: &str = "tenantry_catalog";

/// What the resolution path needs to know about a key.
#[derive(Debug, Clone)]
pub struct KeyRecord {
    pub id: Uuid,
    /// The slug of the key's tenant, to find the tenant by.
    pub tenant: Slug,
    /// The id of the key's tenant: the tenant found by slug must have it, or the key belongs
    /// to a tenant that is gone (whose slug another tenant has since taken).
    pub tenant_id: TenantId,
    pub hash: Vec<u8>,
    pub scopes: Vec<Scope>,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked: bool,
}

impl KeyRecord {
    /// Usable now: not revoked and not expired.
    pub fn is_live(&self, now: DateTime<Utc>) -> bool {
        !self.revoked && self.expires_at.is_none_or(|e| e > now)
    }
}

/// An API key as the admin plane shows it (never the secret).
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ApiKeyInfo {
    pub id: Uuid,
    pub name: String,
    pub prefix: String,
    pub scopes: Vec<Scope>,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// A new tenant.
#[derive(Debug, Clone)]
pub struct NewTenant {
    pub slug: Slug,
    pub name: String,
    pub plan: String,
    pub isolation: Isolation,
    /// For `database` tenants: the server (default: the control plane's own).
    pub server: Option<String>,
}

/// A change to a tenant; `None` leaves a field alone. `rate_limit: Some(None)` clears it.
#[derive(Debug, Clone, Default)]
pub struct TenantPatch {
    pub name: Option<String>,
    pub plan: Option<String>,
    pub status: Option<TenantStatus>,
    pub rate_limit: Option<Option<RateLimitOverride>>,
}

/// Catalog write errors.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("tenant {0} already exists")]
    TenantExists(Slug),
    #[error("no such tenant")]
    TenantNotFound,
    /// The tenant was deleted while its storage was being created.
    #[error("tenant {0} was deleted while it was being created")]
    DeletedWhileProvisioning(Slug),
    #[error(transparent)]
    Db(#[from] DbError),
}

/// The catalog and its cache.
#[derive(Clone)]
pub struct Catalog {
    db: Database,
    tenants: Cache<Slug, Option<Arc<Tenant>>>,
    keys: Cache<String, Option<Arc<KeyRecord>>>,
    /// In front of `tenants` and `keys` for the request path's hits ([`per_thread_front`]).
    hot_tenants: Arc<Front<Slug, Tenant>>,
    hot_keys: Arc<Front<String, KeyRecord>>,
    /// A pause after each cache load has read the catalog and before it returns, for tests
    /// that race an invalidation against a load in flight (milliseconds; 0 in production).
    load_delay_ms: Arc<std::sync::atomic::AtomicU64>,
    /// Keys looked up in the catalog (cache misses), for metrics: what unauthenticated
    /// traffic can make the database do.
    key_lookups: Arc<std::sync::atomic::AtomicU64>,
}

const TENANT_COLS: &str = "slug, name, plan, status, isolation, rate_limit, created_at, \
                           state, server, storage, schema_version, id";
const KEY_COLS: &str = "id, name, prefix, scopes, created_at, expires_at, last_used_at, revoked_at";

impl Catalog {
    pub fn new(db: Database) -> Self {
        // The TTL bounds staleness if a notification is ever lost without the connection
        // dropping; invalidation, not expiry, is what makes changes take effect at once.
        let ttl = Duration::from_secs(300);
        Self {
            db,
            tenants: Cache::builder()
                .max_capacity(100_000)
                .time_to_live(ttl)
                .build(),
            keys: Cache::builder()
                .max_capacity(200_000)
                .time_to_live(ttl)
                .build(),
            // A refill from moka every 30 s per hot entry costs nothing measurable.
            hot_tenants: Arc::new(Front::new(ttl / 10, |t| Tenant {
                id: t.id.unshared(),
                slug: t.slug.unshared(),
                ..t.clone()
            })),
            hot_keys: Arc::new(Front::new(ttl / 10, |k| KeyRecord {
                tenant: k.tenant.unshared(),
                tenant_id: k.tenant_id.unshared(),
                ..k.clone()
            })),
            load_delay_ms: Default::default(),
            key_lookups: Default::default(),
        }
    }

    /// API keys looked up in the catalog since start (cache misses).
    pub fn key_lookups(&self) -> u64 {
        self.key_lookups.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Test hook: every cache load pauses for `delay` after reading the catalog, so a test can
    /// change the catalog while a load is in flight. Not for production use.
    #[doc(hidden)]
    pub fn inject_load_delay(&self, delay: Duration) {
        self.load_delay_ms.store(
            delay.as_millis() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    async fn load_pause(delay: &std::sync::atomic::AtomicU64) {
        let ms = delay.load(std::sync::atomic::Ordering::Relaxed);
        if ms > 0 {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
    }

    pub fn database(&self) -> &Database {
        &self.db
    }

    /// A tenant by slug, from the cache or the catalog.
    ///
    /// A hit (nearly every request) takes the small `get` future; the single-flight load is a
    /// future of several kilobytes, boxed so that it does not grow every request's future
    /// (each layer that boxes a request future copies all of it).
    pub async fn tenant(&self, slug: &Slug) -> Result<Option<Arc<Tenant>>, DbError> {
        self.hot_tenants
            .through(&self.tenants, slug, Slug::clone, || {
                Box::pin(self.load_tenant(slug))
            })
            .await
    }

    /// The single-flight load behind [`tenant`](Self::tenant) ([`load_fresh`](Self::load_fresh)).
    async fn load_tenant(&self, slug: &Slug) -> Result<Option<Arc<Tenant>>, DbError> {
        let load = |db: Database, s: Slug| async move {
            let client = db.runtime().get().await?;
            let stmt = client
                .prepare_cached(&format!(
                    "SELECT {TENANT_COLS} FROM tenantry.tenants WHERE slug = $1"
                ))
                .await?;
            let row = client.query_opt(&stmt, &[&s.as_str()]).await?;
            Ok(row.map(|r| Arc::new(tenant_from_row(&r))))
        };
        self.load_fresh(&self.hot_tenants, &self.tenants, slug.clone(), || {
            load(self.db.clone(), slug.clone())
        })
        .await
    }

    /// One single-flight load into `cache`, kept only if no invalidation arrived while it was
    /// in flight. moka keeps what a load returns even when the entry was invalidated during
    /// the load, so a load that saw the front's generation move (every invalidation moves it)
    /// evicts what it put and loads again: a value read before a change is never kept past
    /// it. (After three tries the last answer is returned uncached.)
    async fn load_fresh<K, Q, V, Fut>(
        &self,
        front: &Front<Q, V>,
        cache: &Cache<K, Option<Arc<V>>>,
        key: K,
        load: impl Fn() -> Fut,
    ) -> Result<Option<Arc<V>>, DbError>
    where
        K: std::hash::Hash + Eq + Clone + Send + Sync + 'static,
        Q: std::hash::Hash + Eq + Send,
        V: Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<Option<Arc<V>>, DbError>> + Send,
    {
        let mut attempts = 0;
        loop {
            attempts += 1;
            let generation = front.generation();
            let delay = self.load_delay_ms.clone();
            let read = load();
            let found = cache
                .try_get_with(key.clone(), async move {
                    let found = read.await;
                    Self::load_pause(&delay).await;
                    found
                })
                .await
                .map_err(flatten)?;
            if front.generation() == generation {
                return Ok(found);
            }
            cache.invalidate(&key).await;
            if attempts == 3 {
                return Ok(found);
            }
        }
    }

    /// A tenant by its id, straight from the catalog (a job's tenant: jobs are keyed by id).
    pub async fn tenant_by_id(&self, id: &TenantId) -> Result<Option<Tenant>, DbError> {
        let client = self.db.runtime().get().await?;
        let stmt = client
            .prepare_cached(&format!(
                "SELECT {TENANT_COLS} FROM tenantry.tenants WHERE id = $1"
            ))
            .await?;
        let row = client.query_opt(&stmt, &[&id.as_str()]).await?;
        Ok(row.as_ref().map(tenant_from_row))
    }

    /// A key by its lookup prefix, from the cache or the catalog. Revoked and expired keys are
    /// cached too, so their repeated use costs nothing either. (A hit allocates nothing; the
    /// load is boxed, as for [`tenant`](Self::tenant).)
    pub async fn key(&self, prefix: &str) -> Result<Option<Arc<KeyRecord>>, DbError> {
        self.key_if(prefix, || true).await
    }

    /// [`key`](Self::key), where the catalog is read only if `may_load` says so when the key
    /// is not cached: resolution passes the presented key's checksum there, so a cached key
    /// costs no checksum (its stored hash decides) and a forged one costs no lookup, nor a
    /// cache entry.
    pub async fn key_if(
        &self,
        prefix: &str,
        may_load: impl FnOnce() -> bool,
    ) -> Result<Option<Arc<KeyRecord>>, DbError> {
        self.hot_keys
            .through(&self.keys, prefix, str::to_owned, || {
                let load = may_load();
                Box::pin(async move {
                    if load {
                        self.load_key(prefix).await
                    } else {
                        Ok(None)
                    }
                })
            })
            .await
    }

    /// The single-flight load behind [`key`](Self::key) ([`load_fresh`](Self::load_fresh)): a
    /// key revoked during its first lookup is never kept as live.
    async fn load_key(&self, prefix: &str) -> Result<Option<Arc<KeyRecord>>, DbError> {
        let load = |db: Database, p: String, lookups: Arc<std::sync::atomic::AtomicU64>| async move {
            lookups.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let client = db.runtime().get().await?;
            let stmt = client
                .prepare_cached(
                    "SELECT k.id, t.slug, k.secret_hash, k.scopes, k.expires_at,
                            k.revoked_at IS NOT NULL, k.tenant_id
                     FROM tenantry.api_keys k JOIN tenantry.tenants t ON t.id = k.tenant_id
                     WHERE k.prefix = $1",
                )
                .await?;
            let row = client.query_opt(&stmt, &[&p]).await?;
            Ok(row.map(|r| {
                let scopes: Vec<String> = r.get(3);
                Arc::new(KeyRecord {
                    id: r.get(0),
                    tenant: Slug::parse(r.get(1)).expect("catalog CHECK keeps slugs valid"),
                    tenant_id: TenantId::parse(r.get(6)).expect("catalog CHECK keeps ids valid"),
                    hash: r.get(2),
                    scopes: scopes.iter().filter_map(|s| Scope::parse(s)).collect(),
                    expires_at: r.get(4),
                    revoked: r.get(5),
                })
            }))
        };
        self.load_fresh(&self.hot_keys, &self.keys, prefix.to_owned(), || {
            load(self.db.clone(), prefix.to_owned(), self.key_lookups.clone())
        })
        .await
    }

    // Each invalidation evicts from the cache first and then stales its front, in that order
    // (see [`per_thread_front`]).

    pub async fn invalidate_tenant(&self, slug: &Slug) {
        self.tenants.invalidate(slug).await;
        self.hot_tenants.invalidate();
    }

    pub async fn invalidate_key(&self, prefix: &str) {
        self.keys.invalidate(prefix).await;
        self.hot_keys.invalidate();
    }

    pub fn invalidate_all(&self) {
        self.tenants.invalidate_all();
        self.keys.invalidate_all();
        self.hot_tenants.invalidate();
        self.hot_keys.invalidate();
    }
}

/// Removes a tenant's jobs and its queue row. A job that is running finds its row gone when it
/// records its outcome, which is then discarded (completion is fenced by the row).
/// What a tenant owns in the control database besides its keys: jobs, its queue row, the
/// archives of its backups.
async fn remove_owned(tx: &tokio_postgres::Transaction<'_>, id: &TenantId) -> Result<(), DbError> {
    tx.execute(
        "DELETE FROM tenantry.operation_archives WHERE tenant_id = $1",
        &[&id.as_str()],
    )
    .await?;
    tx.execute(
        "DELETE FROM tenantry.jobs WHERE tenant_id = $1",
        &[&id.as_str()],
    )
    .await?;
    tx.execute(
        "DELETE FROM tenantry.job_queues WHERE tenant_id = $1",
        &[&id.as_str()],
    )
    .await?;
    Ok(())
}

async fn notify(tx: &tokio_postgres::Transaction<'_>, payload: &str) -> Result<(), DbError> {
    tx.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &payload])
        .await?;
    Ok(())
}

fn flatten(e: Arc<DbError>) -> DbError {
    match &*e {
        DbError::Unavailable(m) => DbError::Unavailable(m.clone()),
        other => DbError::Unavailable(other.to_string()),
    }
}

fn tenant_from_row(r: &Row) -> Tenant {
    let rate: Option<serde_json::Value> = r.get(5);
    let isolation = Isolation::parse(r.get(4)).unwrap_or(Isolation::Shared);
    let server: Option<String> = r.get(8);
    let storage: Option<String> = r.get(9);
    let placement = Placement::from_catalog(isolation, server.clone(), storage);
    // A placement the catalog cannot describe is never served (fail closed).
    let state = match placement {
        Some(_) => StorageState::parse(r.get(7)).unwrap_or(StorageState::Provisioning),
        None => StorageState::Provisioning,
    };
    Tenant {
        id: TenantId::parse(r.get(11)).expect("catalog CHECK keeps ids valid"),
        slug: Slug::parse(r.get(0)).expect("catalog CHECK keeps slugs valid"),
        name: r.get(1),
        plan: r.get(2),
        status: TenantStatus::parse(r.get(3)).unwrap_or(TenantStatus::Suspended),
        isolation,
        rate_limit: rate.and_then(|v| serde_json::from_value(v).ok()),
        created_at: r.get(6),
        server: if isolation == Isolation::Database {
            server
        } else {
            None
        },
        storage_state: state,
        placement: placement.unwrap_or(Placement::Shared),
        schema_version: r.get(10),
    }
}

fn key_from_row(r: &Row) -> ApiKeyInfo {
    let scopes: Vec<String> = r.get(3);
    let prefix: String = r.get(2);
    ApiKeyInfo {
        id: r.get(0),
        name: r.get(1),
        prefix: format!("tk_{prefix}"),
        scopes: scopes.iter().filter_map(|s| Scope::parse(s)).collect(),
        created_at: r.get(4),
        expires_at: r.get(5),
        last_used_at: r.get(6),
        revoked_at: r.get(7),
    }
}
