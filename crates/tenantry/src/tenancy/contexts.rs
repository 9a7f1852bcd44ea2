//! The two ways into a tenant's context other than a request: a background job's, and an
//! operator's (audited before anything is read).

use super::*;

impl Tenancy {
    /// The context a background job of tenant `id` runs in: the same scoped storage as a
    /// request. `None` when the tenant is gone, not ready or suspended. Jobs are keyed by id,
    /// so a job of a deleted tenant never runs in a later tenant that took its slug.
    pub(crate) async fn job_context(
        &self,
        id: &TenantId,
    ) -> Result<Option<TenantContext>, DbError> {
        let Some(tenant) = self.inner.catalog.tenant_by_id(id).await?.map(Arc::new) else {
            return Ok(None);
        };
        if tenant.storage_state != StorageState::Ready || tenant.status != TenantStatus::Active {
            return Ok(None);
        }
        let limits = self.inner.config.plans.limits_for(&tenant);
        Ok(Some(TenantContext::new(
            tenant,
            Principal::Job,
            self.inner.catalog.database().clone(),
            None,
            limits,
            None,
        )))
    }

    /// Opens a context for an operator acting inside `slug`, after writing the audit entry.
    /// There is no other way for an admin to reach tenant data, and no way without naming the
    /// tenant. The catalog is read directly (not the cache): admins see the truth.
    pub async fn admin_context(
        &self,
        slug: &Slug,
        actor: &Actor,
        action: &str,
        target: &str,
    ) -> Result<TenantContext, AdminContextError> {
        let tenant = self
            .inner
            .catalog
            .get_tenant(slug)
            .await?
            .filter(|t| t.storage_state == StorageState::Ready)
            .ok_or(AdminContextError::TenantNotFound)?;
        audit::record(
            self.inner.catalog.database(),
            actor,
            Some(slug),
            action,
            target,
        )
        .await?;
        let limits = self.inner.config.plans.limits_for(&tenant);
        Ok(TenantContext::new(
            Arc::new(tenant),
            Principal::Admin {
                token: actor.name.clone(),
            },
            self.inner.catalog.database().clone(),
            None,
            limits,
            None,
        ))
    }
}
