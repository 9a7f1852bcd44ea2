//! The in-process GCRA limiter, keyed by tenant and quota, and per-tenant usage counters.
//!
//! Why hand-written rather than `governor`: the contract's headers need the exact remaining
//! count and the exact time until the quota resets, which GCRA knows (they fall out of the
//! theoretical arrival time) but governor's snapshot does not expose; and the same arithmetic
//! runs as a Redis script ([`super::redis`]), so keeping it in a dozen visible lines pays twice.
//!
//! State is one `u64` (the theoretical arrival time, in nanoseconds since the limiter's epoch)
//! per tenant and quota, plus the tenant's usage counters, in sharded mutexes keyed by the
//! tenant alone: a decision takes one lock and, for a tenant already seen, neither clones nor
//! drops its `TenantId` (whose reference count is shared by every thread serving the tenant,
//! so each clone is an atomic write to a cache line the other cores also write). An entry
//! whose arrival time has passed is the same as no entry, so [`RateLimiter::sweep`] drops
//! those: memory stays bounded by the tenants active within one window (and their usage,
//! for two days), however many come and go.

use std::hash::{BuildHasher, Hash};
use std::sync::Mutex;
// tokio's Instant is std's, except that tests can pause and advance it.
use tokio::time::Instant;

use super::{Decision, Quota, Usage};
use crate::tenant::TenantId;
use crate::FastMap;

const SHARDS: usize = 32;

type Shard = Mutex<FastMap<TenantId, TenantState>>;

/// What one tenant and quota are told apart by: a plan change makes a new bucket, so it
/// starts from a full one.
type QuotaKey = (u32, u64, u32);

/// One tenant's state.
#[derive(Default)]
struct TenantState {
    /// (quota, theoretical arrival time) per quota the tenant was checked under: almost
    /// always one.
    buckets: Vec<(QuotaKey, u64)>,
    /// (window start in unix seconds, allowed, limited).
    usage: (u64, u64, u64),
}

/// An in-process keyed GCRA limiter.
pub struct RateLimiter {
    epoch: Instant,
    shards: Vec<Shard>,
    hasher: foldhash::fast::RandomState,
}

impl Default for RateLimiter {
    fn default() -> Self {
        Self::new()
    }
}

impl RateLimiter {
    pub fn new() -> Self {
        Self {
            epoch: Instant::now(),
            shards: (0..SHARDS)
                .map(|_| Mutex::new(FastMap::default()))
                .collect(),
            hasher: Default::default(),
        }
    }

    /// Decides one request for `tenant` under `quota`, counting it in the tenant's usage.
    pub fn check(&self, tenant: &TenantId, quota: &Quota) -> Decision {
        self.check_in(tenant, quota, self.now(), usage_window(quota).1)
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    #[cfg(test)]
    fn check_at(&self, tenant: &TenantId, quota: &Quota, now: u64) -> Decision {
        self.check_in(tenant, quota, now, 0)
    }

    fn check_in(&self, tenant: &TenantId, quota: &Quota, now: u64, start: u64) -> Decision {
        let mut map = self.shards[self.shard_of(tenant)]
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(state) = map.get_mut(tenant) {
            return state.decide(quota, now, start);
        }
        map.entry(tenant.clone())
            .or_default()
            .decide(quota, now, start)
    }

    /// This node's counts for the current window.
    pub fn usage(&self, tenant: &TenantId, quota: &Quota) -> Usage {
        let (window, start) = usage_window(quota);
        let map = self.shards[self.shard_of(tenant)]
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let (allowed, limited) = match map.get(tenant).map(|s| s.usage) {
            Some((s, a, l)) if s == start => (a, l),
            _ => (0, 0),
        };
        Usage {
            window_start: start as i64,
            window_seconds: window,
            allowed,
            limited,
        }
    }

    /// Forgets everything held for a tenant (its deletion).
    pub fn forget(&self, tenant: &TenantId) {
        self.shards[self.shard_of(tenant)]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(tenant);
    }

    /// Drops buckets whose arrival time has passed (they hold no information), and tenants
    /// left with no bucket and no usage of the last two days (windows are at most a month,
    /// and a tenant that is still active has a newer window anyway).
    pub fn sweep(&self) {
        let now = self.now();
        let cutoff = super::unix_now().0.saturating_sub(2 * 86_400);
        for shard in &self.shards {
            shard
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .retain(|_, state| {
                    state.buckets.retain(|(_, tat)| *tat > now);
                    !state.buckets.is_empty() || state.usage.0 >= cutoff
                });
        }
    }

    /// How many tenant/quota buckets are held (for tests and metrics).
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                let map = s.lock().unwrap_or_else(|p| p.into_inner());
                map.values().map(|state| state.buckets.len()).sum::<usize>()
            })
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn shard_of<K: Hash>(&self, key: &K) -> usize {
        (self.hasher.hash_one(key) as usize) % SHARDS
    }
}

impl TenantState {
    /// GCRA over the quota's bucket, then the usage count for the window starting at `start`.
    fn decide(&mut self, quota: &Quota, now: u64, start: u64) -> Decision {
        let d = self.gcra(quota, now);
        if self.usage.0 != start {
            self.usage = (start, 0, 0);
        }
        if d.allowed {
            self.usage.1 += 1;
        } else {
            self.usage.2 += 1;
        }
        d
    }

    fn gcra(&mut self, quota: &Quota, now: u64) -> Decision {
        let limit = quota.requests.max(1);
        let interval = quota.interval_nanos();
        let tolerance = quota.tolerance_nanos();
        let window_secs = quota.window.as_secs();
        let key = (limit, quota.window.as_nanos() as u64, quota.burst);
        // A missing bucket is a full one (arrival time `now`); such a request is never
        // refused (one interval is within any tolerance), so inserting it first is exact.
        let at = match self.buckets.iter().position(|(k, _)| *k == key) {
            Some(at) => at,
            None => {
                self.buckets.push((key, now));
                self.buckets.len() - 1
            }
        };
        let slot = &mut self.buckets[at].1;
        let tat = (*slot).max(now);
        let new_tat = tat + interval;
        if new_tat - now > tolerance {
            return Decision {
                allowed: false,
                limit,
                window_secs,
                remaining: 0,
                reset_secs: ceil_secs(tat - now),
                retry_after_secs: ceil_secs(new_tat - tolerance - now).max(1),
            };
        }
        *slot = new_tat;
        let used = new_tat - now;
        Decision {
            allowed: true,
            limit,
            window_secs,
            remaining: ((tolerance - used) / interval) as u32,
            reset_secs: ceil_secs(used),
            retry_after_secs: 0,
        }
    }
}

/// The usage window of `quota` now: its length and its start, in unix seconds.
fn usage_window(quota: &Quota) -> (u64, u64) {
    let window = quota.window.as_secs().max(1);
    (window, super::unix_now().0 / window * window)
}

fn ceil_secs(nanos: u64) -> u64 {
    nanos.div_ceil(1_000_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn q(requests: u32, secs: u64) -> Quota {
        Quota {
            name: "t".into(),
            requests,
            window: Duration::from_secs(secs),
            burst: requests,
        }
    }

    #[test]
    fn allows_exactly_the_limit_then_rejects() {
        let l = RateLimiter::new();
        let t = TenantId::parse("acme").unwrap();
        let quota = q(100, 3600);
        for i in 0..100 {
            let d = l.check_at(&t, &quota, 1);
            assert!(d.allowed, "request {i}");
            assert_eq!(d.remaining, 99 - i);
        }
        let d = l.check_at(&t, &quota, 1);
        assert!(!d.allowed);
        assert_eq!(d.retry_after_secs, 36);
        // One emission interval later, exactly one more is allowed.
        let later = 1 + 36_000_000_000;
        assert!(l.check_at(&t, &quota, later).allowed);
        assert!(!l.check_at(&t, &quota, later).allowed);
    }

    #[test]
    fn tenants_are_independent() {
        let l = RateLimiter::new();
        let a = TenantId::parse("aa").unwrap();
        let b = TenantId::parse("bb").unwrap();
        let quota = q(1, 60);
        assert!(l.check_at(&a, &quota, 0).allowed);
        assert!(!l.check_at(&a, &quota, 0).allowed);
        assert!(l.check_at(&b, &quota, 0).allowed);
    }

    #[test]
    fn a_plan_change_starts_from_a_full_bucket() {
        let l = RateLimiter::new();
        let t = TenantId::parse("acme").unwrap();
        assert!(l.check_at(&t, &q(1, 60), 0).allowed);
        assert!(!l.check_at(&t, &q(1, 60), 0).allowed);
        assert!(l.check_at(&t, &q(2, 60), 0).allowed);
        assert_eq!(l.len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn usage_counts_the_windows_decisions_and_outlives_the_bucket() {
        let l = RateLimiter::new();
        let t = TenantId::parse("acme").unwrap();
        let quota = q(2, 3600);
        for _ in 0..3 {
            l.check(&t, &quota);
        }
        let u = l.usage(&t, &quota);
        assert_eq!((u.allowed, u.limited), (2, 1));
        assert_eq!(u.window_start % 3600, 0);
        // An hour's quota whose bucket empties within a nanosecond: swept, but its usage is
        // still this window's.
        let fast = q(u32::MAX, 3600);
        let other = TenantId::parse("other").unwrap();
        l.check(&other, &fast);
        tokio::time::advance(Duration::from_millis(5)).await;
        l.sweep();
        assert_eq!(l.usage(&other, &fast).allowed, 1);
        assert_eq!(l.usage(&t, &quota).allowed, 2);
        assert_eq!(l.len(), 1, "only acme's bucket is still running");
    }

    #[tokio::test(start_paused = true)]
    async fn sweep_bounds_memory() {
        let l = RateLimiter::new();
        let quota = Quota {
            name: "t".into(),
            requests: 10,
            window: Duration::from_millis(1),
            burst: 10,
        };
        for i in 0..1000 {
            l.check(&TenantId::parse(&format!("t{i}")).unwrap(), &quota);
        }
        tokio::time::advance(Duration::from_millis(5)).await;
        l.sweep();
        assert_eq!(l.len(), 0);
    }
}
