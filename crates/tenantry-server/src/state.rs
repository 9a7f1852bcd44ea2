//! What every handler can reach: [`AppState`].

use std::sync::Arc;

use tenantry::cache::TenantCache;
use tenantry::metrics::Metrics;
use tenantry::Tenancy;

use subtle::ConstantTimeEq;

/// What every handler can reach. Cloned for every request (by `State` and the middleware), so
/// it is one `Arc`: a clone is one atomic increment rather than one per field (the cache alone
/// holds several).
#[derive(Clone)]
pub struct AppState(pub(crate) Arc<AppStateInner>);

impl std::ops::Deref for AppState {
    type Target = AppStateInner;
    fn deref(&self) -> &AppStateInner {
        &self.0
    }
}

pub struct AppStateInner {
    pub tenancy: Tenancy,
    pub admin: AdminTokens,
    /// Tenant-keyed cache of hot reads (orders by id).
    pub cache: TenantCache,
    /// Whether order reads go through the cache.
    pub order_cache: bool,
    /// How long a moved tenant's old storage is kept after the flip.
    pub move_grace: std::time::Duration,
    pub metrics: Metrics,
    /// The bearer token for `GET /metrics` besides the admin tokens.
    pub metrics_token: Option<String>,
    /// Jobs queued and running, refreshed in the background so a scrape runs no query.
    pub job_depth: JobDepth,
    /// The OpenAPI document served at `/openapi.json`, rendered once at start-up.
    pub openapi: bytes::Bytes,
}

/// The job queue's depth as last read.
#[derive(Default)]
pub struct JobDepth {
    queued: std::sync::atomic::AtomicI64,
    running: std::sync::atomic::AtomicI64,
}

impl JobDepth {
    pub fn get(&self) -> (i64, i64) {
        use std::sync::atomic::Ordering::Relaxed;
        (self.queued.load(Relaxed), self.running.load(Relaxed))
    }

    pub(crate) fn set(&self, (queued, running): (i64, i64)) {
        use std::sync::atomic::Ordering::Relaxed;
        self.queued.store(queued, Relaxed);
        self.running.store(running, Relaxed);
    }
}

/// The admin tokens this server accepts, by name.
#[derive(Clone)]
pub struct AdminTokens {
    tokens: Vec<(String, String)>,
}

impl AdminTokens {
    /// Several named tokens; an audit entry names the one that acted.
    pub fn new(tokens: Vec<(String, String)>) -> Self {
        Self { tokens }
    }

    /// The name of the token presented, compared in constant time against each.
    pub fn identify(&self, presented: &str) -> Option<&str> {
        let mut found = None;
        for (name, token) in &self.tokens {
            if bool::from(presented.as_bytes().ct_eq(token.as_bytes())) {
                found = Some(name.as_str());
            }
        }
        found
    }
}
