//! A small map in front of each catalog cache, for the entries the request path reads on every
//! request (the presented key, its tenant).
//!
//! A moka hit is ~1,100 instructions: its hash, the concurrent table, the read recorded for
//! the eviction policy, the clock. This front answers the same hit with one uncontended shard
//! lock and a foldhash probe. It never decides anything moka would not:
//! - it holds only what moka returned (never a miss, so client input cannot grow it; it also
//!   holds at most [`SHARD_CAP`] entries per shard);
//! - every invalidation of the cache behind it bumps the front's generation, and an entry read
//!   at an older generation is not served. A reader takes the generation *before* reading
//!   moka and an invalidation bumps it *after* evicting from moka, so a value read before an
//!   eviction is always stamped with a generation the eviction made stale;
//! - entries expire too. They are kept for a tenth of the cache's time to live (see
//!   `Catalog::new`), so if a notification is ever lost, what the front adds to the cache's
//!   staleness bound is that tenth, not a whole second TTL.

use std::borrow::Borrow;
use std::future::Future;
use std::hash::{BuildHasher, Hash};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use moka::future::Cache;

use crate::db::DbError;
use crate::FastMap;

const SHARDS: usize = 16;
/// Past this a shard is cleared rather than grown: the front is a shortcut, moka is the cache.
const SHARD_CAP: usize = 4096;

type Shard<K, V> = Mutex<FastMap<K, Entry<V>>>;

struct Entry<V> {
    generation: u64,
    until: Instant,
    value: Arc<V>,
}

pub(super) struct Front<K, V> {
    generation: AtomicU64,
    ttl: Duration,
    hasher: foldhash::fast::RandomState,
    shards: Box<[Shard<K, V>]>,
}

impl<K: Hash + Eq, V> Front<K, V> {
    pub(super) fn new(ttl: Duration) -> Self {
        Self {
            generation: AtomicU64::new(0),
            ttl,
            hasher: Default::default(),
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
        }
    }

    /// `key` from this front; else from `cache` (and kept here if found there); else `load`'s
    /// answer (which `load` puts in `cache`).
    pub(super) async fn through<Q, Fut>(
        &self,
        cache: &Cache<K, Option<Arc<V>>>,
        key: &Q,
        owned: impl FnOnce(&Q) -> K,
        load: impl FnOnce() -> Fut,
    ) -> Result<Option<Arc<V>>, DbError>
    where
        K: Borrow<Q> + Send + Sync + 'static,
        V: Send + Sync + 'static,
        Q: Hash + Eq + ?Sized,
        Fut: Future<Output = Result<Option<Arc<V>>, DbError>>,
    {
        if let Some(hot) = self.get(key) {
            return Ok(Some(hot));
        }
        let generation = self.generation();
        let found = match cache.get(key).await {
            Some(hit) => hit,
            None => load().await?,
        };
        if let Some(v) = &found {
            self.put(owned(key), v.clone(), generation);
        }
        Ok(found)
    }

    /// The generation to stamp on a value about to be read from the cache behind.
    pub(super) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Makes every entry stale. Call after evicting from the cache behind.
    pub(super) fn invalidate(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    fn shard<Q: Hash + ?Sized>(&self, key: &Q) -> &Shard<K, V> {
        &self.shards[self.hasher.hash_one(key) as usize % SHARDS]
    }

    pub(super) fn get<Q>(&self, key: &Q) -> Option<Arc<V>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let generation = self.generation();
        let shard = self.shard(key).lock().unwrap_or_else(|p| p.into_inner());
        let e = shard.get(key)?;
        (e.generation == generation && Instant::now() < e.until).then(|| e.value.clone())
    }

    /// Keeps `value`, read from the cache behind at `generation`.
    pub(super) fn put(&self, key: K, value: Arc<V>, generation: u64) {
        let until = Instant::now() + self.ttl;
        let mut shard = self.shard(&key).lock().unwrap_or_else(|p| p.into_inner());
        if shard.len() >= SHARD_CAP {
            shard.clear();
        }
        shard.insert(
            key,
            Entry {
                generation,
                until,
                value,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serves_what_it_was_given_until_invalidated() {
        let f: Front<String, u32> = Front::new(Duration::from_secs(60));
        assert!(f.get("a").is_none());
        let g = f.generation();
        f.put("a".into(), Arc::new(1), g);
        assert_eq!(f.get("a").as_deref(), Some(&1));
        f.invalidate();
        assert!(
            f.get("a").is_none(),
            "an invalidation makes every entry stale"
        );
        // A value read from the cache behind before an invalidation carries the old
        // generation, so it is never served after it.
        f.put("b".into(), Arc::new(2), g);
        assert!(f.get("b").is_none());
        let g = f.generation();
        f.put("b".into(), Arc::new(3), g);
        assert_eq!(f.get("b").as_deref(), Some(&3));
    }

    #[test]
    fn entries_expire_with_the_cache_ttl() {
        let f: Front<String, u32> = Front::new(Duration::ZERO);
        f.put("a".into(), Arc::new(1), f.generation());
        assert!(f.get("a").is_none());
    }

    #[test]
    fn a_full_shard_is_cleared_not_grown() {
        let f: Front<u32, u32> = Front::new(Duration::from_secs(60));
        for i in 0..(SHARDS * SHARD_CAP * 2) as u32 {
            f.put(i, Arc::new(i), f.generation());
        }
        for s in f.shards.iter() {
            assert!(s.lock().unwrap().len() <= SHARD_CAP);
        }
    }
}
