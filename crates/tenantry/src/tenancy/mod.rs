//! [`Tenancy`]: the library's entry point, tying the catalog, the resolution rules, the plans and
//! the rate limiter together. One per process, cheap to clone.
//!
//! A request goes through `resolution` (credential, hints, the tenant that holds the slug) and
//! then `admission` (ready, active, allowed, under its limits) to a [`TenantContext`]; jobs and
//! operators get theirs from `contexts`; `key_usage` writes API keys' last use in batches.

mod admission;
mod contexts;
mod key_usage;
mod resolution;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use http::request::Parts;
use http::Method;
use uuid::Uuid;

use crate::audit::{self, Actor};
use crate::auth::api_key::PresentedKey;
use crate::auth::jwt::JwtVerifier;
use crate::auth::{Principal, Scope};
use crate::catalog::Catalog;
use crate::context::TenantContext;
use crate::db::DbError;
use crate::plan::Plans;
use crate::ratelimit::auth_failures::{AuthFailures, FailureLimit};
use crate::ratelimit::concurrency::TenantSemaphores;
use crate::ratelimit::redis::RedisLimiter;
use crate::ratelimit::{FailMode, Limiter};
use crate::resolve::credential::{self, Credential};
use crate::resolve::{self, CredentialSource, ResolveError, ResolverConfig};
use crate::tenant::{Slug, StorageState, Tenant, TenantId, TenantStatus};

/// Settings for [`Tenancy`].
#[derive(Clone, Default)]
pub struct TenancyConfig {
    pub resolver: ResolverConfig,
    pub plans: Plans,
    /// JWT verification; `None` turns JWT credentials off.
    pub jwt: Option<JwtVerifier>,
    /// Shared rate limits across nodes; `None` keeps them per node.
    pub redis: Option<RedisLimiter>,
    /// What to do when Redis is down.
    pub fail_mode: FailMode,
    /// How long a request over its tenant's concurrency cap waits before 429.
    pub concurrency_wait: Duration,
    /// Failed authentications a client address may make ([`crate::ratelimit::AuthFailures`]).
    pub auth_failures: FailureLimit,
}

/// Why an admin context could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum AdminContextError {
    #[error("no such tenant")]
    TenantNotFound,
    #[error(transparent)]
    Db(#[from] DbError),
}

/// The tenancy machinery for one process.
#[derive(Clone)]
pub struct Tenancy {
    inner: Arc<Inner>,
}

struct Inner {
    catalog: Catalog,
    limiter: Limiter,
    in_flight: TenantSemaphores,
    auth_failures: AuthFailures,
    config: TenancyConfig,
    /// Keys used since the last flush, with when: `last_used_at` is written in batches, never
    /// once per request.
    key_usage: Mutex<crate::FastMap<Uuid, DateTime<Utc>>>,
}

impl Tenancy {
    pub fn new(catalog: Catalog, config: TenancyConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                catalog,
                limiter: Limiter::new(config.redis.clone(), config.fail_mode),
                in_flight: TenantSemaphores::new(),
                auth_failures: AuthFailures::new(config.auth_failures),
                config,
                key_usage: Mutex::default(),
            }),
        }
    }

    pub fn catalog(&self) -> &Catalog {
        &self.inner.catalog
    }

    pub fn plans(&self) -> &Plans {
        &self.inner.config.plans
    }

    pub fn limiter(&self) -> &Limiter {
        &self.inner.limiter
    }

    /// Requests in flight per tenant.
    pub fn in_flight(&self) -> &TenantSemaphores {
        &self.inner.in_flight
    }

    /// Periodic housekeeping: forget idle limiter and semaphore state.
    pub fn sweep(&self) {
        self.inner.limiter.local().sweep();
        self.inner.in_flight.sweep();
        self.inner.auth_failures.sweep();
        self.inner.catalog.database().sweep_shares();
    }

    /// Forgets what this node and Redis hold for a deleted tenant: its limiter buckets and
    /// usage, its in-flight and connection-share state. (Other nodes hold theirs under the
    /// deleted tenant's id, which no tenant is given again, until their sweep drops them.)
    pub async fn forget_tenant(&self, id: &TenantId) {
        self.inner.limiter.forget(id).await;
        self.inner.in_flight.forget(id);
        self.inner.catalog.database().connection_shares().forget(id);
    }

    /// Requests allowed and limited in the tenant's current window.
    pub async fn usage(&self, tenant: &Tenant) -> crate::ratelimit::Usage {
        let quota = self.inner.config.plans.quota_for(tenant);
        self.inner.limiter.usage(&tenant.id, &quota).await
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
