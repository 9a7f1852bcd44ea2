//! Admission: whether a resolved tenant may be served now (ready, active, the method allowed,
//! under its rate limit and its in-flight cap), decided before any tenant database work.

use super::*;

impl Tenancy {
    pub(super) async fn admit(
        &self,
        tenant: Arc<Tenant>,
        principal: Principal,
        method: &Method,
    ) -> Result<TenantContext, ResolveError> {
        match tenant.storage_state {
            StorageState::Ready => {}
            // Still being created (or its creation crashed): never served.
            StorageState::Provisioning => return Err(ResolveError::Unavailable),
            // Being removed: its keys are already gone; anything left is refused.
            StorageState::Deleting => return Err(ResolveError::InvalidCredentials),
        }
        if tenant.status != TenantStatus::Active {
            return Err(ResolveError::Suspended);
        }
        if !is_safe(method) && !principal.can_write() {
            return Err(ResolveError::Forbidden("write"));
        }
        let limits = self.inner.config.plans.limits_for(&tenant);
        let decision = self
            .inner
            .limiter
            .check(&tenant.id, &limits.quota)
            .await
            .map_err(|_| ResolveError::Unavailable)?;
        if !decision.allowed {
            return Err(ResolveError::RateLimited {
                decision,
                policy: limits.quota.name,
                tenant: tenant.slug.clone(),
            });
        }
        let permit = self
            .inner
            .in_flight
            .acquire(
                &tenant.id,
                limits.max_concurrent as usize,
                self.inner.config.concurrency_wait,
            )
            .await
            .ok_or_else(|| ResolveError::TooManyInFlight {
                decision,
                policy: limits.quota.name.clone(),
                tenant: tenant.slug.clone(),
            })?;
        Ok(TenantContext::new(
            tenant,
            principal,
            self.inner.catalog.database().clone(),
            Some(decision),
            limits,
            Some(permit),
        ))
    }
}

/// Methods that only read.
pub(super) fn is_safe(m: &Method) -> bool {
    matches!(*m, Method::GET | Method::HEAD | Method::OPTIONS)
}
