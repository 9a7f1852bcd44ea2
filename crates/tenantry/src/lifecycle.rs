//! Tenant lifecycle: create and delete, crash-safe in every placement.
//!
//! Creation: the catalog row is written first in state `provisioning` (never served), then the
//! storage is created (atomically, idempotently), then the row becomes `ready`. A crash at any
//! point leaves either nothing served or a complete tenant; re-running the create resumes.
//!
//! Deletion: the row becomes `deleting` and the keys, jobs and queue go in one transaction
//! (traffic stops on every node), then the storage is dropped, then the row. Each step is
//! idempotent, so a retry after a crash half-way finishes the job.
//!
//! Every transition is guarded: only a `provisioning` tenant becomes `ready`, and only the
//! tenant with the id that was provisioned, so a tenant deleted during its creation is never
//! served without storage.

use crate::audit::Actor;
use crate::catalog::{Catalog, CatalogError, NewTenant};
use crate::db::{provision, Database, DbError};
use crate::placement::Placement;
use crate::tenant::{Slug, Tenant};

/// Creates (or resumes creating) a tenant and its storage.
pub async fn create(
    catalog: &Catalog,
    new: &NewTenant,
    actor: &Actor,
) -> Result<Tenant, CatalogError> {
    let db = catalog.database();
    let placement = placement_for(db, new).await?;
    let tenant = catalog.create_tenant(new, &placement, actor).await?;
    let version = provision::create_storage(db, &new.slug, &tenant.placement).await?;
    match catalog.mark_ready(&tenant.id, version).await? {
        Some(ready) => Ok(ready),
        None => {
            // Deleted while its storage was being made: the deletion may have run before the
            // storage existed, so remove what was just made, unless a tenant that took the slug
            // meanwhile owns storage of that name now.
            if !catalog.storage_in_use(&tenant.placement).await? {
                provision::drop_storage(db, &tenant).await?;
            }
            Err(CatalogError::DeletedWhileProvisioning(new.slug.clone()))
        }
    }
}

/// Where a new tenant's storage goes; a `database` tenant's server must be registered.
pub(crate) async fn placement_for(
    db: &Database,
    new: &NewTenant,
) -> Result<Placement, CatalogError> {
    let prefix = db.roles().owner.trim_end_matches("_owner").to_owned();
    let placement = Placement::for_new(
        new.isolation,
        new.slug.as_str(),
        &prefix,
        new.server.as_deref(),
    );
    if let Placement::Database { server, .. } = &placement {
        if !provision::server_names(db).await?.contains(server) {
            return Err(CatalogError::Db(DbError::Config(format!(
                "unknown database server {server:?}"
            ))));
        }
    }
    Ok(placement)
}

/// Deletes a tenant: its keys, jobs and queue, its storage, its catalog row (its id stays in
/// the registry, never to be assigned again). Returns the deleted tenant, so the caller can
/// drop what it keeps for it elsewhere (cache entries, limiter state:
/// [`crate::Tenancy::forget_tenant`]), or `None` if there was no such tenant (deleting twice is
/// harmless).
pub async fn delete(
    catalog: &Catalog,
    slug: &Slug,
    actor: &Actor,
) -> Result<Option<Tenant>, DbError> {
    let Some(tenant) = catalog.begin_delete(slug, actor).await? else {
        return Ok(None);
    };
    provision::drop_storage(catalog.database(), &tenant).await?;
    catalog.finish_delete(&tenant).await?;
    Ok(Some(tenant))
}
