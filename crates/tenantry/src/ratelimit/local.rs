//! The in-process GCRA limiter, keyed by tenant and quota, and per-tenant usage counters.
//!
//! Why hand-written rather than `governor`: the contract's headers need the exact remaining
//! count and the exact time until the quota resets, which GCRA knows (they fall out of the
//! theoretical arrival time) but governor's snapshot does not expose; and the same arithmetic
//! runs as a Redis script ([`super::redis`]), so keeping it in a dozen visible lines pays twice.
//!
//! State is one `u64` (the theoretical arrival time, in nanoseconds since the limiter's epoch)
//! per tenant and quota, in sharded mutexes. An entry whose arrival time has passed is the same
//! as no entry, so [`RateLimiter::sweep`] drops those: memory stays bounded by the tenants
//! active within one window, however many come and go.

use std::hash::{BuildHasher, Hash};
use std::sync::Mutex;
use std::time::Instant;

use super::{Decision, Quota, Usage};
use crate::tenant::TenantId;
use crate::FastMap;

const SHARDS: usize = 32;

type Shard = Mutex<FastMap<(TenantId, u32, u64, u32), u64>>;
/// Per tenant: (window start in unix seconds, allowed, limited).
type UsageShard = Mutex<FastMap<TenantId, (u64, u64, u64)>>;

/// An in-process keyed GCRA limiter.
pub struct RateLimiter {
    epoch: Instant,
    shards: Vec<Shard>,
    usage: Vec<UsageShard>,
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
            usage: (0..SHARDS)
                .map(|_| Mutex::new(FastMap::default()))
                .collect(),
            hasher: Default::default(),
        }
    }

    /// Decides one request for `tenant` under `quota`, counting it if allowed.
    pub fn check(&self, tenant: &TenantId, quota: &Quota) -> Decision {
        // One shard choice for both maps: hashing is most of a decision's cost.
        let shard = self.shard_of(tenant);
        let d = self.check_in(shard, tenant, quota, self.now());
        self.count_in(shard, tenant, quota, d.allowed);
        d
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    #[cfg(test)]
    fn check_at(&self, tenant: &TenantId, quota: &Quota, now: u64) -> Decision {
        self.check_in(self.shard_of(tenant), tenant, quota, now)
    }

    fn check_in(&self, shard: usize, tenant: &TenantId, quota: &Quota, now: u64) -> Decision {
        let limit = quota.requests.max(1);
        let interval = quota.interval_nanos();
        let tolerance = quota.tolerance_nanos();
        let window_secs = quota.window.as_secs();
        // The quota is part of the key, so a plan change starts from a full bucket.
        let key = (
            tenant.clone(),
            limit,
            quota.window.as_nanos() as u64,
            quota.burst,
        );
        let mut map = self.shards[shard].lock().unwrap_or_else(|p| p.into_inner());
        // A missing entry is a full bucket (arrival time `now`); such a request is never
        // refused (one interval is within any tolerance), so inserting it first is exact.
        let slot = map.entry(key).or_insert(now);
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

    fn count_in(&self, shard: usize, tenant: &TenantId, quota: &Quota, allowed: bool) {
        let window = quota.window.as_secs().max(1);
        let start = super::unix_now().0 / window * window;
        let mut map = self.usage[shard].lock().unwrap_or_else(|p| p.into_inner());
        let e = map.entry(tenant.clone()).or_insert((start, 0, 0));
        if e.0 != start {
            *e = (start, 0, 0);
        }
        if allowed {
            e.1 += 1;
        } else {
            e.2 += 1;
        }
    }

    /// This node's counts for the current window.
    pub fn usage(&self, tenant: &TenantId, quota: &Quota) -> Usage {
        let window = quota.window.as_secs().max(1);
        let start = super::unix_now().0 / window * window;
        let shard = &self.usage[self.shard_of(tenant)];
        let map = shard.lock().unwrap_or_else(|p| p.into_inner());
        let (allowed, limited) = match map.get(tenant) {
            Some((s, a, l)) if *s == start => (*a, *l),
            _ => (0, 0),
        };
        Usage {
            window_start: start as i64,
            window_seconds: window,
            allowed,
            limited,
        }
    }

    /// Drops entries whose arrival time has passed (they hold no information).
    pub fn sweep(&self) {
        let now = self.now();
        for shard in &self.shards {
            shard
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .retain(|_, tat| *tat > now);
        }
        // Usage of windows that began over two days ago is of no interest either (windows are
        // at most a month, and a tenant that is still active has a newer entry anyway).
        let cutoff = super::unix_now().0.saturating_sub(2 * 86_400);
        for shard in &self.usage {
            shard
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .retain(|_, (start, _, _)| *start >= cutoff);
        }
    }

    /// How many tenant/quota entries are held (for tests and metrics).
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).len())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn shard_of<K: Hash>(&self, key: &K) -> usize {
        (self.hasher.hash_one(key) as usize) % SHARDS
    }
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
    fn sweep_bounds_memory() {
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
        std::thread::sleep(Duration::from_millis(5));
        l.sweep();
        assert_eq!(l.len(), 0);
    }
}
