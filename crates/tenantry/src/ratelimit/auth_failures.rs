//! A limit on failed authentications per client address.
//!
//! Forged API keys are refused from memory by their keyed checksum, but a client can still
//! present well-formed credentials that fail after a lookup or a signature check (a revoked
//! key, a key of a deleted tenant, a JWT signed with the wrong key), and each of those costs
//! work. So each client address may fail `burst` times, refilled at `per_second`; past that its
//! credentialed requests are refused with 429 before anything is verified, until it has earned
//! a failure back. Successful requests cost nothing here.
//!
//! Per node and in memory: it bounds what one address can make a node do, which is what it is
//! for. The address is the TCP peer's, or, from a trusted proxy, the last `X-Forwarded-For`
//! entry (the one the proxy added; see [`crate::resolve::proxy`]). Clients behind one NAT share
//! a budget, so the defaults are generous: a legitimate client fails rarely.

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
// tokio's Instant is std's, except that tests can pause and advance it.
use tokio::time::Instant;

use crate::FastMap;

/// Addresses tracked at most; past this the fullest are kept and the rest forgotten.
const TRACKED: usize = 100_000;

/// The per-address failure budget.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FailureLimit {
    /// Failures an address may make at once.
    pub burst: u32,
    /// Failures it earns back per second.
    pub per_second: f64,
}

impl Default for FailureLimit {
    fn default() -> Self {
        Self {
            burst: 30,
            per_second: 1.0,
        }
    }
}

/// Failed authentications by client address.
pub struct AuthFailures {
    limit: FailureLimit,
    /// Per address: the failures it owes, as of when.
    map: Mutex<FastMap<IpAddr, (f64, Instant)>>,
    /// Addresses tracked: zero on nearly every request, which then skips the lock.
    tracked: AtomicUsize,
}

impl AuthFailures {
    pub fn new(limit: FailureLimit) -> Self {
        Self {
            limit,
            map: Mutex::default(),
            tracked: AtomicUsize::new(0),
        }
    }

    fn owed(&self, debt: f64, since: Instant, now: Instant) -> f64 {
        (debt - now.duration_since(since).as_secs_f64() * self.limit.per_second).max(0.0)
    }

    /// Whether any address owes failures (nearly always false: then a request needs not even
    /// find its client address).
    pub fn any(&self) -> bool {
        self.tracked.load(Ordering::Relaxed) > 0
    }

    /// `Some(seconds to wait)` when `ip` has used its budget.
    pub fn blocked(&self, ip: IpAddr) -> Option<u64> {
        if !self.any() {
            return None;
        }
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let (debt, since) = *map.get(&ip)?;
        let owed = self.owed(debt, since, Instant::now());
        let over = owed + 1.0 - f64::from(self.limit.burst);
        (over > 0.0).then(|| (over / self.limit.per_second.max(1e-9)).ceil().max(1.0) as u64)
    }

    /// Counts one failure of `ip`.
    pub fn record(&self, ip: IpAddr) {
        let now = Instant::now();
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= TRACKED && !map.contains_key(&ip) {
            map.retain(|_, (debt, since)| self.owed(*debt, *since, now) > 0.0);
            if map.len() >= TRACKED {
                map.clear();
            }
        }
        let e = map.entry(ip).or_insert((0.0, now));
        *e = (self.owed(e.0, e.1, now) + 1.0, now);
        self.tracked.store(map.len(), Ordering::Relaxed);
    }

    /// Forgets addresses that owe nothing any more.
    pub fn sweep(&self) {
        let now = Instant::now();
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, (debt, since)| self.owed(*debt, *since, now) > 0.0);
        self.tracked.store(map.len(), Ordering::Relaxed);
    }
}

impl Default for AuthFailures {
    fn default() -> Self {
        Self::new(FailureLimit::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn an_address_is_blocked_after_its_burst_and_others_are_not() {
        let f = AuthFailures::new(FailureLimit {
            burst: 3,
            per_second: 0.001,
        });
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        assert_eq!(f.blocked(a), None);
        for _ in 0..2 {
            f.record(a);
            assert_eq!(f.blocked(a), None);
        }
        f.record(a);
        assert!(f.blocked(a).is_some_and(|s| s >= 1));
        assert_eq!(f.blocked(b), None);
    }

    #[tokio::test(start_paused = true)]
    async fn failures_are_earned_back() {
        let f = AuthFailures::new(FailureLimit {
            burst: 1,
            per_second: 1000.0,
        });
        let a: IpAddr = "::1".parse().unwrap();
        f.record(a);
        tokio::time::advance(Duration::from_millis(5)).await;
        assert_eq!(f.blocked(a), None);
        f.sweep();
        assert_eq!(f.tracked.load(Ordering::Relaxed), 0);
    }
}
