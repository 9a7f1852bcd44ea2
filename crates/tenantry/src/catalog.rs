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

mod front;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use moka::future::Cache;
use serde::Serialize;
use tokio_postgres::Row;
use uuid::Uuid;

use crate::audit::{self, Actor};
use crate::auth::api_key::NewKey;
use crate::auth::Scope;
use crate::db::notify::Subscription;
use crate::db::{Database, DbError};
use crate::placement::Isolation;
use crate::placement::Placement;
use crate::tenant::{RateLimitOverride, Slug, StorageState, Tenant, TenantId, TenantStatus};
use front::Front;

/// How long the cache is trusted without a working LISTEN connection.
pub const STALE_AFTER: Duration = Duration::from_secs(5);

/// The notification channel for cache invalidation.
pub const CHANNEL: &str = "tenantry_catalog";

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
    /// In front of `tenants` and `keys` for the request path's hits ([`front`]).
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
    // (see [`front`]).

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

    async fn apply_notification(&self, payload: &str) {
        match payload.split_once(':') {
            Some(("tenant", slug)) => {
                if let Ok(t) = Slug::parse(slug) {
                    self.invalidate_tenant(&t).await;
                }
            }
            Some(("key", prefix)) => self.invalidate_key(prefix).await,
            _ => self.invalidate_all(),
        }
    }

    /// Runs forever: LISTENs for invalidations on a dedicated control connection.
    ///
    /// When the connection drops, notifications may be missed, so the whole cache is cleared
    /// as soon as LISTEN is re-established, or after [`STALE_AFTER`] without it, whichever
    /// comes first. Not at the moment of the drop: if the database itself is down, the warm
    /// cache keeps answering what needs no database (a 429 for a tenant over its limit) instead
    /// of turning every request into a 503.
    pub async fn listen(self, config: tokio_postgres::Config) {
        let mut backoff = Duration::from_millis(100);
        let mut lost_at: Option<std::time::Instant> = None;
        loop {
            match Subscription::open(&config, CHANNEL).await {
                Ok(mut sub) => {
                    backoff = Duration::from_millis(100);
                    lost_at = None;
                    // Anything cached before LISTEN took effect may be stale.
                    self.invalidate_all();
                    while let Some(payload) = sub.next().await {
                        self.apply_notification(&payload).await;
                    }
                    tracing::warn!("catalog listener lost its connection");
                }
                Err(e) => tracing::warn!(error = %e, "catalog listener cannot connect"),
            }
            let since = *lost_at.get_or_insert_with(std::time::Instant::now);
            if since.elapsed() >= STALE_AFTER {
                self.invalidate_all();
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }

    // ----- writes (control pool, audited in the same transaction) -----

    /// Records a new tenant in state `provisioning` (never served until
    /// [`mark_ready`](Self::mark_ready)) with a fresh id, entered in the registry of ids so it
    /// is never assigned again. Re-creating a tenant whose provisioning did not finish, with
    /// the same placement, resumes it (same id) instead of failing.
    ///
    /// A slug freed by a deleted tenant may be taken again; the new tenant's `created_at` is
    /// then at least a whole second after the old one's deletion, so a token issued (`iat`,
    /// whole seconds) while the old tenant existed is always older than the new tenant.
    pub async fn create_tenant(
        &self,
        t: &NewTenant,
        placement: &Placement,
        actor: &Actor,
    ) -> Result<Tenant, CatalogError> {
        let mut client = self.db.control().get().await.map_err(DbError::from)?;
        let tx = client.transaction().await.map_err(DbError::from)?;
        let (server, storage) = placement.columns();
        let existing = tx
            .query_opt(
                &format!("SELECT {TENANT_COLS} FROM tenantry.tenants WHERE slug = $1 FOR UPDATE"),
                &[&t.slug.as_str()],
            )
            .await
            .map_err(DbError::from)?;
        let row = match existing {
            Some(old) => {
                let old = tenant_from_row(&old);
                let resumable = old.storage_state == StorageState::Provisioning
                    && old.isolation == t.isolation
                    && old.placement.columns().0 == server;
                if !resumable {
                    return Err(CatalogError::TenantExists(t.slug.clone()));
                }
                tx.query_one(
                    &format!(
                        "UPDATE tenantry.tenants SET name = $2, plan = $3, updated_at = now()
                         WHERE id = $1 RETURNING {TENANT_COLS}"
                    ),
                    &[&old.id.as_str(), &t.name, &t.plan],
                )
                .await
                .map_err(DbError::from)?
            }
            None => {
                let id = TenantId::generate();
                let inserted = async {
                    tx.execute(
                        "INSERT INTO tenantry.tenant_ids (id, slug, created_at)
                         SELECT $1, $2, greatest(now(), coalesce(
                             (SELECT date_trunc('second', max(deleted_at)) + interval '1 second'
                              FROM tenantry.tenant_ids WHERE slug = $2), now()))",
                        &[&id.as_str(), &t.slug.as_str()],
                    )
                    .await?;
                    tx.query_one(
                        &format!(
                            "INSERT INTO tenantry.tenants
                                 (id, slug, name, plan, isolation, state, server, storage, created_at)
                             SELECT $1, $2, $3, $4, $5, 'provisioning', $6, $7, created_at
                             FROM tenantry.tenant_ids WHERE id = $1
                             RETURNING {TENANT_COLS}"
                        ),
                        &[
                            &id.as_str(),
                            &t.slug.as_str(),
                            &t.name,
                            &t.plan,
                            &t.isolation.as_str(),
                            &server,
                            &storage,
                        ],
                    )
                    .await
                }
                .await;
                match inserted {
                    Ok(row) => row,
                    // Another node created the same slug first.
                    Err(e)
                        if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) =>
                    {
                        return Err(CatalogError::TenantExists(t.slug.clone()))
                    }
                    Err(e) => return Err(DbError::from(e).into()),
                }
            }
        };
        audit::record_in(&tx, actor, Some(&t.slug), "tenant.create", t.slug.as_str()).await?;
        notify(&tx, &format!("tenant:{}", t.slug)).await?;
        tx.commit().await.map_err(DbError::from)?;
        self.invalidate_tenant(&t.slug).await;
        Ok(tenant_from_row(&row))
    }

    /// Marks a tenant's storage complete: from now on it is served. Only from `provisioning`
    /// and only for the tenant with this id: a tenant deleted while its storage was being made
    /// (or deleted and re-created under its slug) is never marked ready. `None` then.
    pub async fn mark_ready(&self, id: &TenantId, version: i32) -> Result<Option<Tenant>, DbError> {
        let mut client = self.db.control().get().await?;
        let tx = client.transaction().await?;
        let row = tx
            .query_opt(
                &format!(
                    "UPDATE tenantry.tenants SET state = 'ready', schema_version = $2, updated_at = now()
                     WHERE id = $1 AND state = 'provisioning' RETURNING {TENANT_COLS}"
                ),
                &[&id.as_str(), &version],
            )
            .await?;
        let Some(row) = row else { return Ok(None) };
        let tenant = tenant_from_row(&row);
        notify(&tx, &format!("tenant:{}", tenant.slug)).await?;
        tx.commit().await?;
        self.invalidate_tenant(&tenant.slug).await;
        Ok(Some(tenant))
    }

    /// Whether a tenant that is not being deleted names this storage (a schema or a database).
    pub async fn storage_in_use(&self, placement: &Placement) -> Result<bool, DbError> {
        let (server, storage) = placement.columns();
        let Some(storage) = storage else {
            return Ok(false);
        };
        let client = self.db.control().get().await?;
        Ok(client
            .query_opt(
                "SELECT 1 FROM tenantry.tenants
                 WHERE coalesce(server, '') = coalesce($1, '') AND storage = $2
                   AND state <> 'deleting'",
                &[&server, &storage],
            )
            .await?
            .is_some())
    }

    /// First step of deprovisioning: the tenant stops being served on every node, and its
    /// keys, jobs and queue go, in one transaction. Returns the tenant (as it now is), or
    /// `None` if there is no such tenant.
    pub async fn begin_delete(
        &self,
        slug: &Slug,
        actor: &Actor,
    ) -> Result<Option<Tenant>, DbError> {
        let mut client = self.db.control().get().await?;
        let tx = client.transaction().await?;
        let row = tx
            .query_opt(
                &format!(
                    "UPDATE tenantry.tenants SET state = 'deleting', updated_at = now()
                     WHERE slug = $1 RETURNING {TENANT_COLS}"
                ),
                &[&slug.as_str()],
            )
            .await?;
        let Some(row) = row else { return Ok(None) };
        let tenant = tenant_from_row(&row);
        let prefixes: Vec<String> = tx
            .query(
                "DELETE FROM tenantry.api_keys WHERE tenant_id = $1 RETURNING prefix",
                &[&tenant.id.as_str()],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        remove_jobs(&tx, &tenant.id).await?;
        audit::record_in(&tx, actor, Some(slug), "tenant.delete", slug.as_str()).await?;
        notify(&tx, &format!("tenant:{slug}")).await?;
        for p in &prefixes {
            notify(&tx, &format!("key:{p}")).await?;
        }
        tx.commit().await?;
        self.invalidate_tenant(slug).await;
        for p in &prefixes {
            self.invalidate_key(p).await;
        }
        Ok(Some(tenant))
    }

    /// Last step of deprovisioning, once the storage is gone: the catalog row goes, the
    /// registry records the deletion (the id stays there, never to be assigned again), and
    /// any job enqueued by a request that raced the first step goes too.
    pub async fn finish_delete(&self, tenant: &Tenant) -> Result<(), DbError> {
        let mut client = self.db.control().get().await?;
        let tx = client.transaction().await?;
        tx.execute(
            "DELETE FROM tenantry.tenants WHERE id = $1 AND state = 'deleting'",
            &[&tenant.id.as_str()],
        )
        .await?;
        tx.execute(
            "UPDATE tenantry.tenant_ids SET deleted_at = coalesce(deleted_at, now()) WHERE id = $1",
            &[&tenant.id.as_str()],
        )
        .await?;
        remove_jobs(&tx, &tenant.id).await?;
        notify(&tx, &format!("tenant:{}", tenant.slug)).await?;
        tx.commit().await?;
        self.invalidate_tenant(&tenant.slug).await;
        Ok(())
    }

    /// Lists tenants in slug order, after `cursor`.
    pub async fn list_tenants(
        &self,
        limit: i64,
        after: Option<&str>,
    ) -> Result<Vec<Tenant>, DbError> {
        let client = self.db.control().get().await?;
        let rows = client
            .query(
                &format!(
                    "SELECT {TENANT_COLS} FROM tenantry.tenants
                     WHERE ($1::text IS NULL OR slug > $1) ORDER BY slug LIMIT $2"
                ),
                &[&after, &limit],
            )
            .await?;
        Ok(rows.iter().map(tenant_from_row).collect())
    }

    /// Reads a tenant straight from the catalog (the admin plane never trusts the cache).
    pub async fn get_tenant(&self, slug: &Slug) -> Result<Option<Tenant>, DbError> {
        let client = self.db.control().get().await?;
        let row = client
            .query_opt(
                &format!("SELECT {TENANT_COLS} FROM tenantry.tenants WHERE slug = $1"),
                &[&slug.as_str()],
            )
            .await?;
        Ok(row.as_ref().map(tenant_from_row))
    }

    /// Applies a patch, invalidating every node's cached copy in the same commit.
    pub async fn update_tenant(
        &self,
        slug: &Slug,
        patch: &TenantPatch,
        actor: &Actor,
    ) -> Result<Tenant, CatalogError> {
        let mut client = self.db.control().get().await.map_err(DbError::from)?;
        let tx = client.transaction().await.map_err(DbError::from)?;
        let set_rate = patch.rate_limit.is_some();
        let rate: Option<serde_json::Value> = patch
            .rate_limit
            .flatten()
            .map(|r| serde_json::to_value(r).expect("plain struct serialises"));
        let status = patch.status.map(TenantStatus::as_str);
        let row = tx
            .query_opt(
                &format!(
                    "UPDATE tenantry.tenants SET
                        name = COALESCE($2, name),
                        plan = COALESCE($3, plan),
                        status = COALESCE($4, status),
                        rate_limit = CASE WHEN $5 THEN $6 ELSE rate_limit END,
                        updated_at = now()
                     WHERE slug = $1 RETURNING {TENANT_COLS}"
                ),
                &[
                    &slug.as_str(),
                    &patch.name,
                    &patch.plan,
                    &status,
                    &set_rate,
                    &rate,
                ],
            )
            .await
            .map_err(DbError::from)?;
        let Some(row) = row else {
            return Err(CatalogError::TenantNotFound);
        };
        let mut what = Vec::new();
        if patch.name.is_some() {
            what.push("name");
        }
        if patch.plan.is_some() {
            what.push("plan");
        }
        if patch.status.is_some() {
            what.push("status");
        }
        if set_rate {
            what.push("rate_limit");
        }
        let target = format!("{slug} ({})", what.join(","));
        audit::record_in(&tx, actor, Some(slug), "tenant.update", &target).await?;
        notify(&tx, &format!("tenant:{slug}")).await?;
        tx.commit().await.map_err(DbError::from)?;
        self.invalidate_tenant(slug).await;
        Ok(tenant_from_row(&row))
    }

    /// Creates a key and returns it with the only copy of its secret.
    pub async fn create_key(
        &self,
        tenant: &Slug,
        name: &str,
        scopes: &[Scope],
        expires_at: Option<DateTime<Utc>>,
        actor: &Actor,
    ) -> Result<(ApiKeyInfo, String), CatalogError> {
        let new = NewKey::generate(self.db.key_check());
        let mut client = self.db.control().get().await.map_err(DbError::from)?;
        let tx = client.transaction().await.map_err(DbError::from)?;
        let exists = tx
            .query_opt(
                "SELECT id FROM tenantry.tenants WHERE slug = $1 AND state <> 'deleting' FOR SHARE",
                &[&tenant.as_str()],
            )
            .await
            .map_err(DbError::from)?;
        let Some(tenant_id) = exists.map(|r| r.get::<_, String>(0)) else {
            return Err(CatalogError::TenantNotFound);
        };
        let scopes: Vec<&str> = scopes.iter().map(|s| s.as_str()).collect();
        let row = tx
            .query_one(
                &format!(
                    "INSERT INTO tenantry.api_keys (id, tenant_id, name, prefix, secret_hash, scopes, expires_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {KEY_COLS}"
                ),
                &[
                    &Uuid::now_v7(),
                    &tenant_id,
                    &name,
                    &new.prefix,
                    &new.hash.as_slice(),
                    &scopes,
                    &expires_at,
                ],
            )
            .await
            .map_err(DbError::from)?;
        let info = key_from_row(&row);
        audit::record_in(
            &tx,
            actor,
            Some(tenant),
            "api_key.create",
            &info.id.to_string(),
        )
        .await?;
        tx.commit().await.map_err(DbError::from)?;
        Ok((info, new.key))
    }

    /// Rotates a key: a new key with the same name, scopes and expiry is created and the old
    /// one revoked, in one transaction (the old one stops working on every node at once).
    /// `None` when the tenant has no such live key.
    pub async fn rotate_key(
        &self,
        tenant: &Slug,
        id: Uuid,
        actor: &Actor,
    ) -> Result<Option<(ApiKeyInfo, String)>, DbError> {
        let new = NewKey::generate(self.db.key_check());
        let mut client = self.db.control().get().await?;
        let tx = client.transaction().await?;
        let old = tx
            .query_opt(
                "UPDATE tenantry.api_keys SET revoked_at = now()
                 WHERE tenant_id = (SELECT id FROM tenantry.tenants WHERE slug = $1)
                   AND id = $2 AND revoked_at IS NULL
                 RETURNING name, scopes, expires_at, prefix, tenant_id",
                &[&tenant.as_str(), &id],
            )
            .await?;
        let Some(old) = old else { return Ok(None) };
        let (name, scopes, expires_at, old_prefix, tenant_id): (
            String,
            Vec<String>,
            Option<DateTime<Utc>>,
            String,
            String,
        ) = (old.get(0), old.get(1), old.get(2), old.get(3), old.get(4));
        let row = tx
            .query_one(
                &format!(
                    "INSERT INTO tenantry.api_keys (id, tenant_id, name, prefix, secret_hash, scopes, expires_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {KEY_COLS}"
                ),
                &[
                    &Uuid::now_v7(),
                    &tenant_id,
                    &name,
                    &new.prefix,
                    &new.hash.as_slice(),
                    &scopes,
                    &expires_at,
                ],
            )
            .await?;
        let info = key_from_row(&row);
        audit::record_in(
            &tx,
            actor,
            Some(tenant),
            "api_key.rotate",
            &format!("{id} -> {}", info.id),
        )
        .await?;
        notify(&tx, &format!("key:{old_prefix}")).await?;
        tx.commit().await?;
        self.invalidate_key(&old_prefix).await;
        Ok(Some((info, new.key)))
    }

    /// Lists a tenant's keys, oldest first, after `cursor` (a key id).
    pub async fn list_keys(
        &self,
        tenant: &Slug,
        limit: i64,
        after: Option<Uuid>,
    ) -> Result<Vec<ApiKeyInfo>, DbError> {
        let client = self.db.control().get().await?;
        let rows = client
            .query(
                &format!(
                    "SELECT {KEY_COLS} FROM tenantry.api_keys
                     WHERE tenant_id = (SELECT id FROM tenantry.tenants WHERE slug = $1)
                       AND ($2::uuid IS NULL OR id > $2)
                     ORDER BY id LIMIT $3"
                ),
                &[&tenant.as_str(), &after, &limit],
            )
            .await?;
        Ok(rows.iter().map(key_from_row).collect())
    }

    /// Revokes a key of `tenant` (idempotent: revoking twice keeps the first time). `None` when
    /// the tenant has no such key.
    pub async fn revoke_key(
        &self,
        tenant: &Slug,
        id: Uuid,
        actor: &Actor,
    ) -> Result<Option<ApiKeyInfo>, DbError> {
        let mut client = self.db.control().get().await?;
        let tx = client.transaction().await?;
        let row = tx
            .query_opt(
                &format!(
                    "UPDATE tenantry.api_keys SET revoked_at = COALESCE(revoked_at, now())
                     WHERE tenant_id = (SELECT id FROM tenantry.tenants WHERE slug = $1)
                       AND id = $2 RETURNING {KEY_COLS}"
                ),
                &[&tenant.as_str(), &id],
            )
            .await?;
        let Some(row) = row else { return Ok(None) };
        let info = key_from_row(&row);
        let bare = info.prefix.trim_start_matches("tk_").to_owned();
        audit::record_in(&tx, actor, Some(tenant), "api_key.revoke", &id.to_string()).await?;
        notify(&tx, &format!("key:{bare}")).await?;
        tx.commit().await?;
        self.invalidate_key(&bare).await;
        Ok(Some(info))
    }
}

/// Removes a tenant's jobs and its queue row. A job that is running finds its row gone when it
/// records its outcome, which is then discarded (completion is fenced by the row).
async fn remove_jobs(tx: &tokio_postgres::Transaction<'_>, id: &TenantId) -> Result<(), DbError> {
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
