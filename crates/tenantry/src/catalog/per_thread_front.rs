//! A small map in front of each catalog cache, for the entries the request path reads on every
//! request (the presented key, its tenant).
//!
//! A moka hit does real work: its hash, the concurrent table, the read recorded for the
//! eviction policy, the clock. This front answers the same hit from a map of the calling
//! thread's own, holding the thread's own copy of the value: no lock, and no write to a cache
//! line that another core writes too. (A map shared by every thread, even under sharded
//! mutexes, moves its lock words and the values' reference counts between the cores on every
//! request.) It never decides anything moka would not:
//! - it holds only what moka returned (never a miss, so client input cannot grow it; it also
//!   holds at most [`THREAD_CAP`] entries per thread);
//! - every invalidation of the cache behind it bumps the front's generation, and an entry read
//!   at an older generation is not served on any thread. A reader takes the generation
//!   *before* reading moka and an invalidation bumps it *after* evicting from moka, so a value
//!   read before an eviction is always stamped with a generation the eviction made stale;
//! - entries expire too. They are kept for a tenth of the cache's time to live (see
//!   `Catalog::new`), so if a notification is ever lost, what the front adds to the cache's
//!   staleness bound is that tenth, not a whole second TTL.

use std::borrow::Borrow;
use std::cell::RefCell;
use std::future::Future;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::future::Cache;
use thread_local::ThreadLocal;

use crate::db::DbError;
use crate::FastMap;

/// Past this a thread's map is cleared rather than grown: the front is a shortcut, moka is
/// the cache.
const THREAD_CAP: usize = 16_384;

type Local<K, V> = RefCell<FastMap<K, Entry<V>>>;

struct Entry<V> {
    generation: u64,
    until: Instant,
    value: Arc<V>,
}

pub(super) struct Front<K: Send, V: Send + Sync> {
    generation: AtomicU64,
    ttl: Duration,
    local: ThreadLocal<Local<K, V>>,
    /// Makes a thread's own copy of a value (a deep one where the value holds shared
    /// reference counts of its own, such as a [`crate::Slug`]).
    copy: fn(&V) -> V,
}

impl<K: Hash + Eq + Send, V: Send + Sync> Front<K, V> {
    pub(super) fn new(ttl: Duration, copy: fn(&V) -> V) -> Self {
        Self {
            generation: AtomicU64::new(0),
            ttl,
            local: ThreadLocal::new(),
            copy,
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
        K: Borrow<Q> + Sync + 'static,
        V: 'static,
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
            self.put(owned(key), v, generation);
        }
        Ok(found)
    }

    /// The generation to stamp on a value about to be read from the cache behind.
    pub(super) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Makes every entry stale, on every thread. Call after evicting from the cache behind.
    pub(super) fn invalidate(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    pub(super) fn get<Q>(&self, key: &Q) -> Option<Arc<V>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let generation = self.generation();
        let map = self.local.get()?.try_borrow().ok()?;
        let e = map.get(key)?;
        (e.generation == generation && Instant::now() < e.until).then(|| e.value.clone())
    }

    /// Keeps this thread's copy of `value`, read from the cache behind at `generation`.
    pub(super) fn put(&self, key: K, value: &V, generation: u64) {
        let until = Instant::now() + self.ttl;
        // Only this thread touches its map, and nothing here calls out while it is borrowed;
        // were it ever borrowed already, skipping the shortcut is always correct.
        let Ok(mut map) = self.local.get_or_default().try_borrow_mut() else {
            return;
        };
        if map.len() >= THREAD_CAP {
            map.clear();
        }
        map.insert(
            key,
            Entry {
                generation,
                until,
                value: Arc::new((self.copy)(value)),
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serves_what_it_was_given_until_invalidated() {
        let f: Front<String, u32> = Front::new(Duration::from_secs(60), u32::clone);
        assert!(f.get("a").is_none());
        let g = f.generation();
        f.put("a".into(), &1, g);
        assert_eq!(f.get("a").as_deref(), Some(&1));
        f.invalidate();
        assert!(
            f.get("a").is_none(),
            "an invalidation makes every entry stale"
        );
        // A value read from the cache behind before an invalidation carries the old
        // generation, so it is never served after it.
        f.put("b".into(), &2, g);
        assert!(f.get("b").is_none());
        let g = f.generation();
        f.put("b".into(), &3, g);
        assert_eq!(f.get("b").as_deref(), Some(&3));
    }

    #[test]
    fn entries_expire_with_the_cache_ttl() {
        let f: Front<String, u32> = Front::new(Duration::ZERO, u32::clone);
        f.put("a".into(), &1, f.generation());
        assert!(f.get("a").is_none());
    }

    #[test]
    fn a_full_thread_map_is_cleared_not_grown() {
        let f: Front<u32, u32> = Front::new(Duration::from_secs(60), u32::clone);
        for i in 0..(THREAD_CAP * 2 + 7) as u32 {
            f.put(i, &i, f.generation());
        }
        let map = f.local.get().unwrap().borrow();
        assert!(map.len() <= THREAD_CAP);
        assert_eq!(map.len(), 7);
    }

    #[test]
    fn each_thread_keeps_its_own_copy_and_every_thread_sees_an_invalidation() {
        let f: Arc<Front<String, String>> = Arc::new(Front::new(Duration::from_secs(60), |v| {
            format!("{v} (copy)")
        }));
        f.put("a".into(), &"v".to_owned(), f.generation());
        assert_eq!(f.get("a").as_deref().map(String::as_str), Some("v (copy)"));
        // Another thread has nothing until it puts its own, then it serves that.
        let other = f.clone();
        std::thread::spawn(move || {
            assert!(other.get("a").is_none());
            other.put("a".into(), &"w".to_owned(), other.generation());
            assert_eq!(
                other.get("a").as_deref().map(String::as_str),
                Some("w (copy)")
            );
            // An invalidation on this thread makes the first thread's entry stale too.
            other.invalidate();
        })
        .join()
        .unwrap();
        assert!(f.get("a").is_none());
    }
}
