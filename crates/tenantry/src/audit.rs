//! The audit log: who did what, to which tenant, when, under which request id.
//!
//! Append-only for the runtime role (it has SELECT and INSERT, nothing else). Catalog writes
//! record their entry inside their own transaction; admin access to tenant data records its
//! entry before the data is touched, and is refused if the entry cannot be written.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::db::DbError;
use crate::tenant::TenantId;

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
    pub tenant: Option<String>,
    pub action: String,
    pub target: String,
    pub request_id: String,
}

const INSERT: &str = "INSERT INTO tenantry.audit_log (actor, tenant_id, action, target, request_id)
                      VALUES ($1, $2, $3, $4, $5)";

/// Records an entry inside an open transaction.
pub async fn record_in(
    tx: &tokio_postgres::Transaction<'_>,
    actor: &Actor,
    tenant: Option<&TenantId>,
    action: &str,
    target: &str,
) -> Result<(), DbError> {
    tx.execute(
        INSERT,
        &[
            &actor.name,
            &tenant.map(TenantId::as_str),
            &action,
            &target,
            &actor.request_id,
        ],
    )
    .await?;
    Ok(())
}

/// Records an entry on its own (runtime pool: the role can append, never rewrite).
pub async fn record(
    pool: &deadpool_postgres::Pool,
    actor: &Actor,
    tenant: Option<&TenantId>,
    action: &str,
    target: &str,
) -> Result<(), DbError> {
    let client = pool.get().await?;
    let stmt = client.prepare_cached(INSERT).await?;
    client
        .execute(
            &stmt,
            &[
                &actor.name,
                &tenant.map(TenantId::as_str),
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
    pool: &deadpool_postgres::Pool,
    tenant: Option<&TenantId>,
    before: Option<i64>,
    limit: i64,
) -> Result<Vec<AuditEntry>, DbError> {
    let client = pool.get().await?;
    let rows = client
        .query(
            "SELECT id, at, actor, tenant_id, action, target, request_id FROM tenantry.audit_log
             WHERE ($1::text IS NULL OR tenant_id = $1) AND ($2::bigint IS NULL OR id < $2)
             ORDER BY id DESC LIMIT $3",
            &[&tenant.map(TenantId::as_str), &before, &limit],
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
        })
        .collect())
}
