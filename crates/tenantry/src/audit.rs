//! The audit log: who did what, to which tenant, when, under which request id.
//!
//! What it promises:
//! - every admin action is in it: catalog writes record their entry inside their own
//!   transaction (the action and its entry commit together or not at all); reads of the
//!   catalog and admin access to tenant data record theirs before anything is read, and are
//!   refused if the entry cannot be written;
//! - entries are written only through the control role. The runtime role, which serves tenant
//!   traffic, has no right on the table at all, so a leaked runtime credential (or an injection
//!   on the tenant plane) can neither write an entry under another actor's name nor read or
//!   change the log;
//! - an entry names its tenant by slug (what operators search by) and by id, so the history of
//!   a deleted tenant stays apart from that of a later tenant with the same slug. Entries
//!   outlive their tenant.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::db::{Database, DbError};
use crate::tenant::Slug;

/// Who is acting, and the request that carries the action.
#[derive(Debug, Clone)]
pub struct Actor {
    /// E.g. `admin:default` (the admin token's name).
    pub name: String,
    pub request_id: String,
}

/// One audit entry as the admin plane shows it.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AuditEntry {
    pub id: String,
    pub at: DateTime<Utc>,
    pub actor: String,
    /// The tenant's slug when the action was taken.
    pub tenant: Option<String>,
    /// The tenant's immutable id (absent for actions on no tenant, or on a slug that named no
    /// tenant).
    pub tenant_id: Option<String>,
    pub action: String,
    pub target: String,
    pub request_id: String,
}

const INSERT: &str = "INSERT INTO tenantry.audit_log (actor, tenant_slug, tenant_id, action, target, request_id)
                      VALUES ($1, $2::text, (SELECT id FROM tenantry.tenants WHERE slug = $2::text), $3, $4, $5)";

/// Records an entry inside an open transaction.
pub(crate) async fn record_in(
    tx: &tokio_postgres::Transaction<'_>,
    actor: &Actor,
    tenant: Option<&Slug>,
    action: &str,
    target: &str,
) -> Result<(), DbError> {
    tx.execute(
        INSERT,
        &[
            &actor.name,
            &tenant.map(Slug::as_str),
            &action,
            &target,
            &actor.request_id,
        ],
    )
    .await?;
    Ok(())
}

/// Records an entry on its own, through the control role.
pub async fn record(
    db: &Database,
    actor: &Actor,
    tenant: Option<&Slug>,
    action: &str,
    target: &str,
) -> Result<(), DbError> {
    let client = db.control().get().await?;
    let stmt = client.prepare_cached(INSERT).await?;
    client
        .execute(
            &stmt,
            &[
                &actor.name,
                &tenant.map(Slug::as_str),
                &action,
                &target,
                &actor.request_id,
            ],
        )
        .await?;
    Ok(())
}

/// Lists entries newest first, optionally for one tenant, before `cursor` (an entry id).
pub async fn list(
    db: &Database,
    tenant: Option<&Slug>,
    before: Option<i64>,
    limit: i64,
) -> Result<Vec<AuditEntry>, DbError> {
    let client = db.control().get().await?;
    let rows = client
        .query(
            "SELECT id, at, actor, tenant_slug, action, target, request_id, tenant_id
             FROM tenantry.audit_log
             WHERE ($1::text IS NULL OR tenant_slug = $1) AND ($2::bigint IS NULL OR id < $2)
             ORDER BY id DESC LIMIT $3",
            &[&tenant.map(Slug::as_str), &before, &limit],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| AuditEntry {
            id: r.get::<_, i64>(0).to_string(),
            at: r.get(1),
            actor: r.get(2),
            tenant: r.get(3),
            action: r.get(4),
            target: r.get(5),
            request_id: r.get(6),
            tenant_id: r.get(7),
        })
        .collect())
}
