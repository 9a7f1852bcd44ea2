//! Per-tenant caps on things a noisy tenant could hog: requests in flight, and database
//! connections from the shared runtime pool. One semaphore per tenant, sized by its plan,
//! created on demand and dropped when idle (so memory follows active tenants).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::tenant::TenantId;
use crate::FastMap;

/// Semaphores by tenant.
#[derive(Default)]
pub struct TenantSemaphores {
    map: Mutex<FastMap<TenantId, (Arc<Semaphore>, usize)>>,
}

impl TenantSemaphores {
    pub fn new() -> Self {
        Self::default()
    }

    /// A permit for `tenant` out of `size`, waiting at most `wait`. `None` when the tenant is
    /// at its cap for that long. A changed size (plan change) takes effect at once: the new
    /// semaphore is used from now on, and permits of the old one drain as their holders finish.
    pub async fn acquire(
        &self,
        tenant: &TenantId,
        size: usize,
        wait: Duration,
    ) -> Option<OwnedSemaphorePermit> {
        let size = size.max(1);
        let sem = {
            let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
            let e = map
                .entry(tenant.clone())
                .or_insert_with(|| (Arc::new(Semaphore::new(size)), size));
            if e.1 != size {
                *e = (Arc::new(Semaphore::new(size)), size);
            }
            e.0.clone()
        };
        if let Ok(p) = sem.clone().try_acquire_owned() {
            return Some(p);
        }
        tokio::time::timeout(wait, sem.acquire_owned())
            .await
            .ok()
            .and_then(Result::ok)
    }

    /// Permits in use for a tenant (for tests and metrics).
    pub fn in_use(&self, tenant: &TenantId) -> usize {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.get(tenant)
            .map(|(s, size)| size - s.available_permits())
            .unwrap_or(0)
    }

    /// Forgets a tenant (its deletion); permits still held drain as their holders finish.
    pub fn forget(&self, tenant: &TenantId) {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(tenant);
    }

    /// Forgets tenants with nothing in use.
    pub fn sweep(&self) {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, (s, size)| s.available_permits() < *size || Arc::strong_count(s) > 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn caps_per_tenant() {
        let s = TenantSemaphores::new();
        let a = TenantId::parse("aa").unwrap();
        let b = TenantId::parse("bb").unwrap();
        let p1 = s.acquire(&a, 2, Duration::ZERO).await.unwrap();
        let _p2 = s.acquire(&a, 2, Duration::ZERO).await.unwrap();
        assert!(s.acquire(&a, 2, Duration::from_millis(10)).await.is_none());
        // Another tenant is unaffected.
        assert!(s.acquire(&b, 2, Duration::ZERO).await.is_some());
        drop(p1);
        assert!(s.acquire(&a, 2, Duration::ZERO).await.is_some());
        assert_eq!(s.in_use(&a), 1);
        s.sweep();
    }
}
