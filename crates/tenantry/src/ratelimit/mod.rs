//! Per-tenant rate limits (GCRA, by plan) on one node or across nodes, plus the noisy-neighbour
//! limits that are not about request rate: concurrent requests and database connections.
//!
//! - [`RateLimiter`]: the in-process keyed GCRA limiter (also the fallback).
//! - [`RedisLimiter`]: the same GCRA as one atomic Redis script on the Redis server's clock, so
//!   the limit holds across nodes.
//! - [`TenantSemaphores`]: per-tenant caps on requests in flight and on database connections.
//! - [`AuthFailures`]: failed authentications per client address, refused before a credential
//!   is verified.
//!
//! When Redis fails the limiter falls back to the local one (with a warning and a metric) or,
//! if configured fail-closed, refuses with 503; it tries Redis again after a short pause and
//! recovers by itself.

pub(crate) mod auth_failures;
pub(crate) mod concurrency;
pub(crate) mod local;
pub(crate) mod redis;

use std::sync::atomic::{AtomicU64, Ordering};

use crate::breaker::Breaker;
use std::time::{Duration, Instant};

pub use auth_failures::{AuthFailures, FailureLimit};
pub use concurrency::TenantSemaphores;
pub use local::RateLimiter;
pub use redis::RedisLimiter;

use crate::tenant::TenantId;

/// A quota: `requests` per `window`, with bursts of up to `burst` at once.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Quota {
    /// The policy name shown in headers (the plan).
    pub name: String,
    pub requests: u32,
    pub window: Duration,
    /// The bucket's capacity; `requests` by default (a whole window's worth at once).
    pub burst: u32,
}

impl Quota {
    /// Nanoseconds between two requests at the sustained rate.
    pub fn interval_nanos(&self) -> u64 {
        (self.window.as_nanos() as u64 / self.requests.max(1) as u64).max(1)
    }

    /// How far ahead of now the theoretical arrival time may run: the burst capacity.
    pub fn tolerance_nanos(&self) -> u64 {
        self.interval_nanos() * self.burst.max(1) as u64
    }
}

/// The outcome of one decision, with everything the response headers need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub limit: u32,
    /// The quota's window in seconds (`w` in `RateLimit-Policy`).
    pub window_secs: u64,
    pub remaining: u32,
    /// Seconds until the quota is whole again (`t`, `RateLimit-Reset`).
    pub reset_secs: u64,
    /// Seconds until a rejected request could succeed (`Retry-After`); 0 when allowed.
    pub retry_after_secs: u64,
}

/// Requests allowed and limited in the current fixed window (aligned to the epoch).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "openapi", schema(as = WindowUsage))]
pub struct Usage {
    pub window_start: i64,
    pub window_seconds: u64,
    pub allowed: u64,
    pub limited: u64,
}

/// What to do when Redis is unreachable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FailMode {
    /// Keep serving, limited per node by the local limiter.
    #[default]
    Local,
    /// Refuse with 503 until Redis is back.
    Closed,
}

/// The limiter could not decide (Redis down and fail-closed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("rate limiter backend unavailable")]
pub struct LimiterUnavailable;

/// The limiter the request path uses: Redis when configured, the local one otherwise or as
/// the fallback.
pub struct Limiter {
    local: RateLimiter,
    redis: Option<redis::RedisLimiter>,
    fail_mode: FailMode,
    /// Redis is skipped for a moment after a failure.
    breaker: Breaker,
    epoch: Instant,
    fallbacks: AtomicU64,
    last_warning: AtomicU64,
}

impl Limiter {
    pub fn local_only() -> Self {
        Self::new(None, FailMode::Local)
    }

    pub fn new(redis: Option<redis::RedisLimiter>, fail_mode: FailMode) -> Self {
        Self {
            local: RateLimiter::new(),
            redis,
            fail_mode,
            breaker: Breaker::new(),
            epoch: Instant::now(),
            fallbacks: AtomicU64::new(0),
            last_warning: AtomicU64::new(0),
        }
    }

    pub fn local(&self) -> &RateLimiter {
        &self.local
    }

    /// Whether the shared backend (Redis) answered last time (always true without Redis).
    pub fn backend_healthy(&self) -> bool {
        self.breaker.healthy()
    }

    /// Decisions made by the local fallback because Redis failed.
    pub fn fallbacks(&self) -> u64 {
        self.fallbacks.load(Ordering::Relaxed)
    }

    pub fn uses_redis(&self) -> bool {
        self.redis.is_some()
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// Decides one request, counting it.
    pub async fn check(
        &self,
        tenant: &TenantId,
        quota: &Quota,
    ) -> Result<Decision, LimiterUnavailable> {
        if let Some(r) = &self.redis {
            if self.breaker.may_try() {
                match r.check(tenant, quota).await {
                    Ok(d) => {
                        if self.breaker.succeeded() {
                            tracing::info!("rate limiter: Redis is back; limits are shared again");
                        }
                        return Ok(d);
                    }
                    Err(e) => {
                        self.breaker.failed();
                        self.warn(&e);
                    }
                }
            }
            if self.fail_mode == FailMode::Closed {
                return Err(LimiterUnavailable);
            }
            self.fallbacks.fetch_add(1, Ordering::Relaxed);
        }
        Ok(self.local.check(tenant, quota))
    }

    /// Usage in the current window (from Redis when shared, else this node's).
    pub async fn usage(&self, tenant: &TenantId, quota: &Quota) -> Usage {
        if let Some(r) = &self.redis {
            if self.backend_healthy() {
                if let Ok(u) = r.usage(tenant, quota).await {
                    return u;
                }
            }
        }
        self.local.usage(tenant, quota)
    }

    /// Forgets a tenant's buckets and usage, here and in Redis (its deletion). A Redis that is
    /// down keeps them until their windows expire; they are keyed by the deleted tenant's id,
    /// which no other tenant is ever given.
    pub async fn forget(&self, tenant: &TenantId) {
        self.local.forget(tenant);
        if let Some(r) = &self.redis {
            if let Err(e) = r.forget(tenant).await {
                tracing::warn!(error = %e, %tenant, "could not remove a deleted tenant's limiter state from Redis");
            }
        }
    }

    /// One warning per five seconds at most: a dead Redis must not flood the log.
    fn warn(&self, e: &dyn std::fmt::Display) {
        let now = self.now();
        let last = self.last_warning.load(Ordering::Relaxed);
        if now.saturating_sub(last) > 5_000_000_000 || last == 0 {
            self.last_warning.store(now.max(1), Ordering::Relaxed);
            match self.fail_mode {
                FailMode::Local => {
                    tracing::warn!(error = %e, "rate limiter: Redis unavailable; falling back to per-node limits")
                }
                FailMode::Closed => {
                    tracing::warn!(error = %e, "rate limiter: Redis unavailable; refusing requests (fail-closed)")
                }
            }
        }
    }
}

/// Wall-clock seconds since the epoch (fixed usage windows are aligned to it).
pub(crate) fn unix_now() -> (u64, u32) {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    (d.as_secs(), d.subsec_nanos())
}
