//! Catalog writes of tenants, and the admin plane's reads of them. Writes run on the control
//! pool and record their audit entry in the same transaction, and each commits a NOTIFY that
//! every node's listener applies.

use super::{
    notify, remove_owned, tenant_from_row, Catalog, CatalogError, NewTenant, TenantPatch,
    TENANT_COLS,
};
use crate::audit::{self, Actor};
use crate::db::DbError;
use crate::placement::Placement;
use crate::tenant::{Slug, StorageState, Tenant, TenantId, TenantStatus};

impl Catalog {
    /// Records a new tenant in state `provisioning` (never served until
    /// [`mark_ready`](Self::mark_ready)) with a fresh id, entered in the registry of ids so it
    /// is never assigned again. Re-creating a tenant whose provisioning did not finish, with
    /// the same placement, resumes it (same id) instead of failing.
    ///
    /// A slug freed by a deleted tenant may be taken again; the new tenant's `created_at` is
    /// then at least a whole second after the old one's deletion, so a token issued (`iat`,
    /// whole seconds) while the old tenant existed is always older than the new tenant.
    pub async fn create_tenant(
        &self,
        t: &NewTenant,
        placement: &Placement,
        actor: &Actor,
    ) -> Result<Tenant, CatalogError> {
        let mut client = self.db.control().get().await.map_err(DbError::from)?;
        let tx = client.transaction().await.map_err(DbError::from)?;
        let (server, storage) = placement.columns();
        let existing = tx
            .query_opt(
                &format!("SELECT {TENANT_COLS} FROM tenantry.tenants WHERE slug = $1 FOR UPDATE"),
                &[&t.slug.as_str()],
            )
            .await
            .map_err(DbError::from)?;
        let row = match existing {
            Some(old) => {
                let old = tenant_from_row(&old);
                let resumable = old.storage_state == StorageState::Provisioning
                    && old.isolation == t.isolation
                    && old.placement.columns().0 == server;
                if !resumable {
                    return Err(CatalogError::TenantExists(t.slug.clone()));
                }
                tx.query_one(
                    &format!(
                        "UPDATE tenantry.tenants SET name = $2, plan = $3, updated_at = now()
                         WHERE id = $1 RETURNING {TENANT_COLS}"
                    ),
                    &[&old.id.as_str(), &t.name, &t.plan],
                )
                .await
                .map_err(DbError::from)?
            }
            None => {
                let id = TenantId::generate();
                let inserted = async {
                    tx.execute(
                        "INSERT INTO tenantry.tenant_ids (id, slug, created_at)
                         SELECT $1, $2, greatest(now(), coalesce(
                             (SELECT date_trunc('second', max(deleted_at)) + interval '1 second'
                              FROM tenantry.tenant_ids WHERE slug = $2), now()))",
                        &[&id.as_str(), &t.slug.as_str()],
                    )
                    .await?;
                    tx.query_one(
                        &format!(
                            "INSERT INTO tenantry.tenants
                                 (id, slug, name, plan, isolation, state, server, storage, created_at)
                             SELECT $1, $2, $3, $4, $5, 'provisioning', $6, $7, created_at
                             FROM tenantry.tenant_ids WHERE id = $1
                             RETURNING {TENANT_COLS}"
                        ),
                        &[
                            &id.as_str(),
                            &t.slug.as_str(),
                            &t.name,
                            &t.plan,
                            &t.isolation.as_str(),
                            &server,
                            &storage,
                        ],
                    )
                    .await
                }
                .await;
                match inserted {
                    Ok(row) => row,
                    // Another node created the same slug first.
                    Err(e)
                        if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) =>
                    {
                        return Err(CatalogError::TenantExists(t.slug.clone()))
                    }
                    Err(e) => return Err(DbError::from(e).into()),
                }
            }
        };
        audit::record_in(&tx, actor, Some(&t.slug), "tenant.create", t.slug.as_str()).await?;
        notify(&tx, &format!("tenant:{}", t.slug)).await?;
        tx.commit().await.map_err(DbError::from)?;
        self.invalidate_tenant(&t.slug).await;
        Ok(tenant_from_row(&row))
    }

    /// Marks a tenant's storage complete: from now on it is served. Only from `provisioning`
    /// and only for the tenant with this id: a tenant deleted while its storage was being made
    /// (or deleted and re-created under its slug) is never marked ready. `None` then.
    pub async fn mark_ready(&self, id: &TenantId, version: i32) -> Result<Option<Tenant>, DbError> {
        let mut client = self.db.control().get().await?;
        let tx = client.transaction().await?;
        let row = tx
            .query_opt(
                &format!(
                    "UPDATE tenantry.tenants SET state = 'ready', schema_version = $2, updated_at = now()
                     WHERE id = $1 AND state = 'provisioning' RETURNING {TENANT_COLS}"
                ),
                &[&id.as_str(), &version],
            )
            .await?;
        let Some(row) = row else { return Ok(None) };
        let tenant = tenant_from_row(&row);
        notify(&tx, &format!("tenant:{}", tenant.slug)).await?;
        tx.commit().await?;
        self.invalidate_tenant(&tenant.slug).await;
        Ok(Some(tenant))
    }

    /// Whether a tenant that is not being deleted names this storage (a schema or a database).
    pub async fn storage_in_use(&self, placement: &Placement) -> Result<bool, DbError> {
        let (server, storage) = placement.columns();
        let Some(storage) = storage else {
            return Ok(false);
        };
        let client = self.db.control().get().await?;
        Ok(client
            .query_opt(
                "SELECT 1 FROM tenantry.tenants
                 WHERE coalesce(server, '') = coalesce($1, '') AND storage = $2
                   AND state <> 'deleting'",
                &[&server, &storage],
            )
            .await?
            .is_some())
    }

    /// First step of deprovisioning: the tenant stops being served on every node, and its
    /// keys, jobs and queue go, in one transaction. Returns the tenant (as it now is), or
    /// `None` if there is no such tenant.
    pub async fn begin_delete(
        &self,
        slug: &Slug,
        actor: &Actor,
    ) -> Result<Option<Tenant>, DbError> {
        let mut client = self.db.control().get().await?;
        let tx = client.transaction().await?;
        let row = tx
            .query_opt(
                &format!(
                    "UPDATE tenantry.tenants SET state = 'deleting', updated_at = now()
                     WHERE slug = $1 RETURNING {TENANT_COLS}"
                ),
                &[&slug.as_str()],
            )
            .await?;
        let Some(row) = row else { return Ok(None) };
        let tenant = tenant_from_row(&row);
        let prefixes: Vec<String> = tx
            .query(
                "DELETE FROM tenantry.api_keys WHERE tenant_id = $1 RETURNING prefix",
                &[&tenant.id.as_str()],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        remove_owned(&tx, &tenant.id).await?;
        audit::record_in(&tx, actor, Some(slug), "tenant.delete", slug.as_str()).await?;
        notify(&tx, &format!("tenant:{slug}")).await?;
        for p in &prefixes {
            notify(&tx, &format!("key:{p}")).await?;
        }
        tx.commit().await?;
        self.invalidate_tenant(slug).await;
        for p in &prefixes {
            self.invalidate_key(p).await;
        }
        Ok(Some(tenant))
    }

    /// Last step of deprovisioning, once the storage is gone: the catalog row goes, the
    /// registry records the deletion (the id stays there, never to be assigned again), and
    /// any job enqueued by a request that raced the first step goes too.
    pub async fn finish_delete(&self, tenant: &Tenant) -> Result<(), DbError> {
        let mut client = self.db.control().get().await?;
        let tx = client.transaction().await?;
        tx.execute(
            "DELETE FROM tenantry.tenants WHERE id = $1 AND state = 'deleting'",
            &[&tenant.id.as_str()],
        )
        .await?;
        tx.execute(
            "UPDATE tenantry.tenant_ids SET deleted_at = coalesce(deleted_at, now()) WHERE id = $1",
            &[&tenant.id.as_str()],
        )
        .await?;
        remove_owned(&tx, &tenant.id).await?;
        notify(&tx, &format!("tenant:{}", tenant.slug)).await?;
        tx.commit().await?;
        self.invalidate_tenant(&tenant.slug).await;
        Ok(())
    }

    /// Lists tenants in slug order, after `cursor`.
    pub async fn list_tenants(
        &self,
        limit: i64,
        after: Option<&str>,
    ) -> Result<Vec<Tenant>, DbError> {
        let client = self.db.control().get().await?;
        let rows = client
            .query(
                &format!(
                    "SELECT {TENANT_COLS} FROM tenantry.tenants
                     WHERE ($1::text IS NULL OR slug > $1) ORDER BY slug LIMIT $2"
                ),
                &[&after, &limit],
            )
            .await?;
        Ok(rows.iter().map(tenant_from_row).collect())
    }

    /// Reads a tenant straight from the catalog (the admin plane never trusts the cache).
    pub async fn get_tenant(&self, slug: &Slug) -> Result<Option<Tenant>, DbError> {
        let client = self.db.control().get().await?;
        let row = client
            .query_opt(
                &format!("SELECT {TENANT_COLS} FROM tenantry.tenants WHERE slug = $1"),
                &[&slug.as_str()],
            )
            .await?;
        Ok(row.as_ref().map(tenant_from_row))
    }

    /// Applies a patch, invalidating every node's cached copy in the same commit.
    pub async fn update_tenant(
        &self,
        slug: &Slug,
        patch: &TenantPatch,
        actor: &Actor,
    ) -> Result<Tenant, CatalogError> {
        let mut client = self.db.control().get().await.map_err(DbError::from)?;
        let tx = client.transaction().await.map_err(DbError::from)?;
        let set_rate = patch.rate_limit.is_some();
        let rate: Option<serde_json::Value> = patch
            .rate_limit
            .flatten()
            .map(|r| serde_json::to_value(r).expect("plain struct serialises"));
        let status = patch.status.map(TenantStatus::as_str);
        let row = tx
            .query_opt(
                &format!(
                    "UPDATE tenantry.tenants SET
                        name = COALESCE($2, name),
                        plan = COALESCE($3, plan),
                        status = COALESCE($4, status),
                        rate_limit = CASE WHEN $5 THEN $6 ELSE rate_limit END,
                        updated_at = now()
                     WHERE slug = $1 RETURNING {TENANT_COLS}"
                ),
                &[
                    &slug.as_str(),
                    &patch.name,
                    &patch.plan,
                    &status,
                    &set_rate,
                    &rate,
                ],
            )
            .await
            .map_err(DbError::from)?;
        let Some(row) = row else {
            return Err(CatalogError::TenantNotFound);
        };
        let mut what = Vec::new();
        if patch.name.is_some() {
            what.push("name");
        }
        if patch.plan.is_some() {
            what.push("plan");
        }
        if patch.status.is_some() {
            what.push("status");
        }
        if set_rate {
            what.push("rate_limit");
        }
        let target = format!("{slug} ({})", what.join(","));
        audit::record_in(&tx, actor, Some(slug), "tenant.update", &target).await?;
        notify(&tx, &format!("tenant:{slug}")).await?;
        tx.commit().await.map_err(DbError::from)?;
        self.invalidate_tenant(slug).await;
        Ok(tenant_from_row(&row))
    }
}

/// Records, in `tx` on the control database, that `tenant` now lives in `placement` (at tenant
/// schema `version`), and tells every node in the same commit (the invalidation path of a
/// suspension). Only a ready tenant with that id, still where `tenant` says it is, moves: a
/// move that another move or a deletion overtook changes nothing.
pub(crate) async fn record_move(
    tx: &tokio_postgres::Transaction<'_>,
    tenant: &Tenant,
    placement: &Placement,
    version: i32,
) -> Result<(), DbError> {
    let (server, storage) = placement.columns();
    let (was_server, was_storage) = tenant.placement.columns();
    let moved = tx
        .execute(
            "UPDATE tenantry.tenants
             SET isolation = $2, server = $3, storage = $4, schema_version = $5, updated_at = now()
             WHERE id = $1 AND state = 'ready' AND isolation = $6
               AND coalesce(server, $9) = coalesce($7, $9)
               AND storage IS NOT DISTINCT FROM $8",
            &[
                &tenant.id.as_str(),
                &placement.isolation().as_str(),
                &server,
                &storage,
                &version,
                &tenant.placement.isolation().as_str(),
                &was_server,
                &was_storage,
                &crate::placement::DEFAULT_SERVER,
            ],
        )
        .await?;
    if moved != 1 {
        return Err(DbError::Config(format!(
            "tenant {} is no longer where the move found it (moved or deleted meanwhile)",
            tenant.slug
        )));
    }
    super::notify(tx, &format!("tenant:{}", tenant.slug)).await
}
