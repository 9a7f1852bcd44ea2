//! A tenant-keyed cache. Every key is built from a [`TenantContext`] (or, to flush, a
//! [`TenantId`]): there is no way to make an unscoped key, so one tenant's entry can never be
//! served to another.
//!
//! - In process: `moka`, bounded by the bytes of the cached values, with a TTL per entry.
//! - With Redis ([`TenantCache::with_redis`]) the values are shared across nodes too: a local
//!   miss reads Redis before loading, a load is written to Redis with its TTL, and
//!   invalidations delete there as well. Redis errors degrade to local-only caching.
//! - Single-flight: concurrent misses on one key make one load; the others wait for it.
//! - Invalidation: on write ([`TenantCache::invalidate`]), and for a whole tenant
//!   ([`TenantCache::flush_tenant`]: suspension, deletion, a move). Both reach every node through
//!   PostgreSQL LISTEN/NOTIFY on the `tenantry_cache` channel.
//! - The TTL bounds staleness where invalidation cannot help (a read that raced a write).

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::future::Cache;
use moka::Expiry;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::breaker::Breaker;
use crate::context::TenantContext;
use crate::db::notify::Subscription;
use crate::db::Database;
use crate::tenant::TenantId;

/// The notification channel for cross-node invalidation.
pub(crate) const CHANNEL: &str = "tenantry_cache";

type Key = (TenantId, String);

#[derive(Clone)]
struct Entry {
    bytes: Arc<Vec<u8>>,
    ttl: Duration,
}

struct PerEntryTtl;

impl Expiry<Key, Entry> for PerEntryTtl {
    fn expire_after_create(&self, _: &Key, v: &Entry, _: Instant) -> Option<Duration> {
        Some(v.ttl)
    }
}

/// The cache. Cheap to clone.
#[derive(Clone)]
pub struct TenantCache {
    local: Cache<Key, Entry>,
    /// Shared second level, and its key namespace.
    redis: Option<(redis::aio::ConnectionManager, String)>,
    /// Redis is skipped for a moment after it fails, so a miss does not wait for its timeout.
    breaker: Arc<Breaker>,
    db: Database,
    hits: Arc<std::sync::atomic::AtomicU64>,
    misses: Arc<std::sync::atomic::AtomicU64>,
}

/// A load failed; nothing was cached.
#[derive(Debug, Clone, thiserror::Error)]
#[error("cache load failed: {0}")]
pub struct LoadError(pub String);

impl TenantCache {
    /// A cache holding at most `max_bytes` of values.
    pub fn new(db: Database, max_bytes: u64) -> Self {
        Self {
            local: Cache::builder()
                .max_capacity(max_bytes)
                .weigher(|k: &Key, v: &Entry| {
                    (k.0.as_str().len() + k.1.len() + v.bytes.len()).min(u32::MAX as usize) as u32
                })
                .expire_after(PerEntryTtl)
                .support_invalidation_closures()
                .build(),
            redis: None,
            breaker: Arc::new(Breaker::new()),
            db,
            hits: Default::default(),
            misses: Default::default(),
        }
    }

    /// Adds Redis as a shared second level (keys under `namespace`).
    pub fn with_redis(mut self, url: &str, namespace: &str) -> Result<Self, redis::RedisError> {
        let client = redis::Client::open(url)?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_response_timeout(Some(Duration::from_millis(100)))
            .set_connection_timeout(Some(Duration::from_millis(200)))
            .set_number_of_retries(1);
        let conn = redis::aio::ConnectionManager::new_lazy_with_config(client, config)?;
        self.redis = Some((conn, namespace.to_owned()));
        Ok(self)
    }

    fn redis_key(ns: &str, tenant: &TenantId, name: &str) -> String {
        format!("{ns}:cache:{tenant}:{name}")
    }

    fn key(tenant: &TenantId, name: &str) -> Key {
        (tenant.clone(), name.to_owned())
    }

    /// The value for `name` in the context's tenant, loading it (once, however many ask at the
    /// same time) on a miss. `None` from the loader is cached too (a missing row stays missing
    /// until invalidated or expired).
    ///
    /// A hit takes the cache's small `get` future; the single-flight load holds the loader's
    /// future and is several kilobytes, so it is boxed rather than carried in every caller's
    /// future (which request layers copy into boxes of their own).
    pub async fn get_or_load<T, F, Fut, E>(
        &self,
        ctx: &TenantContext,
        name: &str,
        ttl: Duration,
        load: F,
    ) -> Result<Option<T>, LoadError>
    where
        T: Serialize + DeserializeOwned,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Option<T>, E>>,
        E: std::fmt::Display,
    {
        let key = Self::key(ctx.tenant_id(), name);
        let entry = match self.local.get(&key).await {
            Some(entry) => {
                self.hits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                entry
            }
            None => Box::pin(self.load(key, ctx, name, ttl, load)).await?,
        };
        serde_json::from_slice::<Option<T>>(&entry.bytes).map_err(|e| LoadError(e.to_string()))
    }

    /// The miss path of [`get_or_load`](Self::get_or_load): Redis, then the loader, once per
    /// key however many callers wait.
    async fn load<T, F, Fut, E>(
        &self,
        key: Key,
        ctx: &TenantContext,
        name: &str,
        ttl: Duration,
        load: F,
    ) -> Result<Entry, LoadError>
    where
        T: Serialize,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Option<T>, E>>,
        E: std::fmt::Display,
    {
        let loaded = std::sync::atomic::AtomicBool::new(false);
        let entry = self
            .local
            .try_get_with(key, async {
                loaded.store(true, std::sync::atomic::Ordering::Relaxed);
                let mut shared = self
                    .redis
                    .as_ref()
                    .filter(|_| self.breaker.may_try())
                    .map(|(c, ns)| (c.clone(), Self::redis_key(ns, ctx.tenant_id(), name)));
                if let Some((conn, rkey)) = &mut shared {
                    let got: Result<Option<Vec<u8>>, _> =
                        redis::cmd("GET").arg(&*rkey).query_async(conn).await;
                    match got {
                        Ok(found) => {
                            self.redis_answered();
                            if let Some(bytes) = found {
                                return Ok(Entry {
                                    bytes: Arc::new(bytes),
                                    ttl,
                                });
                            }
                        }
                        Err(e) => {
                            self.redis_failed(&e);
                            shared = None;
                        }
                    }
                }
                let value = load().await.map_err(|e| LoadError(e.to_string()))?;
                let bytes = serde_json::to_vec(&value).map_err(|e| LoadError(e.to_string()))?;
                if let Some((mut conn, rkey)) = shared {
                    let set: Result<(), _> = redis::cmd("SET")
                        .arg(&rkey)
                        .arg(&bytes)
                        .arg("PX")
                        .arg(ttl.as_millis().max(1) as u64)
                        .query_async(&mut conn)
                        .await;
                    if let Err(e) = set {
                        self.redis_failed(&e);
                    }
                }
                Ok::<_, LoadError>(Entry {
                    bytes: Arc::new(bytes),
                    ttl,
                })
            })
            .await
            .map_err(|e: Arc<LoadError>| (*e).clone())?;
        let counter = if loaded.load(std::sync::atomic::Ordering::Relaxed) {
            &self.misses
        } else {
            &self.hits
        };
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(entry)
    }

    /// Redis failed: skip it for a moment (one log line per outage).
    fn redis_failed(&self, e: &redis::RedisError) {
        if self.breaker.failed() {
            tracing::warn!(error = %e, "cache: Redis unavailable; serving from this node's cache and the database");
        }
    }

    /// Redis answered. After an outage, the shared entries are dropped: invalidations made
    /// while it could not be reached never arrived there.
    fn redis_answered(&self) {
        if self.breaker.succeeded() {
            if let Some((conn, ns)) = &self.redis {
                let (mut conn, pattern) = (conn.clone(), format!("{ns}:cache:*"));
                tracing::info!("cache: Redis is back; dropping its entries, which may have missed invalidations");
                tokio::spawn(async move {
                    if let Err(e) =
                        crate::ratelimit::redis::unlink_matching(&mut conn, &pattern).await
                    {
                        tracing::warn!(error = %e, "cache: could not drop Redis entries after an outage; their TTL bounds them");
                    }
                });
            }
        }
    }

    /// Drops `name` in the context's tenant, here and on every node.
    pub async fn invalidate(&self, ctx: &TenantContext, name: &str) {
        // While Redis is skipped, the delete is not tried: the entries are dropped when it is
        // back (`redis_answered`).
        if let Some((conn, ns)) = self.redis.as_ref().filter(|_| self.breaker.may_try()) {
            let mut conn = conn.clone();
            let r: Result<(), _> = redis::cmd("DEL")
                .arg(Self::redis_key(ns, ctx.tenant_id(), name))
                .query_async(&mut conn)
                .await;
            match r {
                Ok(()) => self.redis_answered(),
                Err(e) => self.redis_failed(&e),
            }
        }
        self.local
            .invalidate(&Self::key(ctx.tenant_id(), name))
            .await;
        self.broadcast(&format!("key:{}:{name}", ctx.tenant_id()))
            .await;
    }

    /// Drops every entry of a tenant, here and on every node.
    pub async fn flush_tenant(&self, tenant: &TenantId) {
        if let Some((conn, ns)) = &self.redis {
            let mut conn = conn.clone();
            let pattern = format!("{ns}:cache:{tenant}:*");
            if let Err(e) = crate::ratelimit::redis::unlink_matching(&mut conn, &pattern).await {
                tracing::warn!(error = %e, "cache: could not flush a tenant in Redis; the TTL bounds it");
            }
        }
        self.flush_local(tenant);
        self.broadcast(&format!("tenant:{tenant}")).await;
    }

    fn flush_local(&self, tenant: &TenantId) {
        let t = tenant.clone();
        if let Err(e) = self.local.invalidate_entries_if(move |k, _| k.0 == t) {
            tracing::warn!(error = %e, "could not flush a tenant's cache entries; clearing all");
            self.local.invalidate_all();
        }
    }

    /// (hits, misses) since start.
    pub fn stats(&self) -> (u64, u64) {
        (
            self.hits.load(std::sync::atomic::Ordering::Relaxed),
            self.misses.load(std::sync::atomic::Ordering::Relaxed),
        )
    }

    async fn broadcast(&self, payload: &str) {
        let r = async {
            // The runtime pool: invalidations are sent from tenant requests, which never run
            // SQL on the control pool.
            let c = self.db.runtime().get().await?;
            c.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &payload])
                .await?;
            Ok::<_, crate::db::DbError>(())
        }
        .await;
        if let Err(e) = r {
            // The other nodes' entries then live until their TTL; say so.
            tracing::warn!(error = %e, "could not broadcast a cache invalidation");
        }
    }

    async fn apply(&self, payload: &str) {
        if let Some(rest) = payload.strip_prefix("tenant:") {
            if let Ok(t) = TenantId::parse(rest) {
                self.flush_local(&t);
            }
        } else if let Some(rest) = payload.strip_prefix("key:") {
            if let Some((t, name)) = rest.split_once(':') {
                if let Ok(t) = TenantId::parse(t) {
                    self.local.invalidate(&Self::key(&t, name)).await;
                }
            }
        }
    }

    /// Runs forever: applies other nodes' invalidations. If the connection drops, everything
    /// cached is cleared once it is back (invalidations may have been missed).
    pub async fn listen(self) {
        let config = self.db.control_config().clone();
        loop {
            if let Ok(mut sub) = Subscription::open(&config, CHANNEL).await {
                self.local.invalidate_all();
                while let Some(payload) = sub.next().await {
                    self.apply(&payload).await;
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}
