//! [`TenantContext`]: proof that a request (or job) was resolved to one tenant.
//!
//! The constructor is crate-private. Outside this crate a context comes only from the
//! resolution layer (credential checked, hints agreed, tenant active, rate limit passed) or from
//! [`Tenancy::admin_context`](crate::Tenancy::admin_context), which writes an audit entry first.
//! Tenant storage is reachable only through [`TenantContext::db`], so a handler without a
//! context has no way to touch tenant rows.

use std::sync::Arc;

use crate::auth::Principal;
use crate::db::{Database, TenantDb};
use tokio::sync::OwnedSemaphorePermit;

use crate::plan::TenantLimits;
use crate::ratelimit::Decision;
use crate::tenant::{Slug, Tenant, TenantId};

/// A resolved tenant, the principal acting in it, and the door to its storage.
#[derive(Clone)]
pub struct TenantContext {
    inner: Arc<Inner>,
}

struct Inner {
    tenant: Arc<Tenant>,
    principal: Principal,
    db: Database,
    rate: Option<Decision>,
    limits: TenantLimits,
    /// The tenant's in-flight slot, held for as long as any clone of this context lives (the
    /// request and its response).
    _in_flight: Option<OwnedSemaphorePermit>,
}

impl TenantContext {
    pub(crate) fn new(
        tenant: Arc<Tenant>,
        principal: Principal,
        db: Database,
        rate: Option<Decision>,
        limits: TenantLimits,
        in_flight: Option<OwnedSemaphorePermit>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                tenant,
                principal,
                db,
                rate,
                limits,
                _in_flight: in_flight,
            }),
        }
    }

    /// The same request's context for the tenant as the catalog now records it (after a move
    /// to another placement). The in-flight slot stays with `self`, which the caller keeps.
    pub(crate) fn moved(&self, tenant: Arc<Tenant>) -> TenantContext {
        let i = &self.inner;
        Self::new(
            tenant,
            i.principal.clone(),
            i.db.clone(),
            i.rate,
            i.limits.clone(),
            None,
        )
    }

    /// The tenant's rows in the control plane's own tables (its jobs), on the runtime role
    /// under forced RLS keyed by the tenant, with the tenant's share of connections: the same
    /// guarantees as [`Self::db`], in the control database whatever the tenant's placement.
    pub(crate) fn control_rows(&self) -> TenantDb<'_> {
        TenantDb::control_rows(&self.inner.db, &self.inner.tenant, &self.inner.limits)
    }

    /// The limits in force for this tenant (plan and override).
    pub fn limits(&self) -> &TenantLimits {
        &self.inner.limits
    }

    /// The tenant's immutable id: what its rows, jobs, cache entries and limits are keyed by.
    pub fn tenant_id(&self) -> &TenantId {
        &self.inner.tenant.id
    }

    /// The tenant's slug (its name in URLs, hints and tokens).
    pub fn slug(&self) -> &Slug {
        &self.inner.tenant.slug
    }

    /// The catalog record as of resolution.
    pub fn tenant(&self) -> &Tenant {
        &self.inner.tenant
    }

    pub fn principal(&self) -> &Principal {
        &self.inner.principal
    }

    /// The tenant's storage: every transaction from here is scoped to this tenant.
    pub fn db(&self) -> TenantDb<'_> {
        TenantDb::new(&self.inner.db, &self.inner.tenant, &self.inner.limits)
    }

    /// The rate-limit decision that admitted this request (none for admin contexts).
    pub fn rate_decision(&self) -> Option<(&str, Decision)> {
        self.inner
            .rate
            .map(|d| (self.inner.limits.quota.name.as_str(), d))
    }
}

impl std::fmt::Debug for TenantContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantContext")
            .field("tenant", &self.inner.tenant.slug)
            .field("principal", &self.inner.principal)
            .finish()
    }
}
