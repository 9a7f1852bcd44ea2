//! Tenant lifecycle: create and delete, crash-safe in every placement.
//!
//! Creation: the catalog row is written first in state `provisioning` (never served), then the
//! storage is created (atomically, idempotently), then the row becomes `ready`. A crash at any
//! point leaves either nothing served or a complete tenant; re-running the create resumes.
//!
//! Deletion: the row becomes `deleting` and the keys go in one transaction (traffic stops on
//! every node), then the storage is dropped, then the row. Each step is idempotent, so a retry
//! after a crash half-way finishes the job.

use crate::audit::Actor;
use crate::catalog::{Catalog, CatalogError, NewTenant};
use crate::db::{provision, DbError, Placement};
use crate::tenant::{Tenant, TenantId};

/// Creates (or resumes creating) a tenant and its storage.
pub async fn create(
    catalog: &Catalog,
    new: &NewTenant,
    actor: &Actor,
) -> Result<Tenant, CatalogError> {
    let db = catalog.database();
    let prefix = db.roles().owner.trim_end_matches("_owner").to_owned();
    let placement = Placement::for_new(new.isolation, &new.slug, &prefix, new.server.as_deref());
    if let Placement::Database { server, .. } = &placement {
        if !provision::server_names(db).await?.contains(server) {
            return Err(CatalogError::Db(DbError::Config(format!(
                "unknown database server {server:?}"
            ))));
        }
    }
    let tenant = catalog.create_tenant(new, &placement, actor).await?;
    let version = provision::create_storage(db, &new.slug, &tenant.placement).await?;
    Ok(catalog.mark_ready(&new.slug, version).await?)
}

/// Deletes a tenant: its keys, its storage, its catalog row. `Ok(false)` if there was no such
/// tenant (deleting twice is harmless).
pub async fn delete(catalog: &Catalog, slug: &TenantId, actor: &Actor) -> Result<bool, DbError> {
    let Some(tenant) = catalog.begin_delete(slug, actor).await? else {
        return Ok(false);
    };
    provision::drop_storage(catalog.database(), slug, &tenant.placement).await?;
    catalog.finish_delete(slug).await?;
    Ok(true)
}
