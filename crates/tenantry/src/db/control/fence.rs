//! The write fence: the database's own guard that no tenant write lands in a placement the
//! tenant is leaving.
//!
//! Every tenant table of a placement a tenant moves out of carries a row trigger that, for the
//! runtime role's writes, takes the row's tenant's fence lock in shared mode and refuses the
//! write (SQLSTATE `TM001`, [`DbError::TenantMoved`]) once that tenant has moved out of the
//! schema. It keys on the row's `tenant_id`, not on the session's setting: a single-statement
//! write sets the setting inside the statement, after a statement trigger would have run. A move holds the lock exclusively while it copies: writes already running finish
//! first, new ones wait (reads never take it), and when the move commits its marker, the
//! writes that waited are refused rather than written where nobody will read them; the server
//! retries them in the new placement. The control plane (the owner role, through the control
//! login) is not fenced: it is what copies and cleans up.
//!
//! The trigger costs one function call per written row on the tables that have it (the lock is
//! already held after the first), and is installed on a placement's tables the first time a
//! tenant moves out of it.

use tokio_postgres::Transaction;

use super::roles::{quote_ident, RoleNames};
use crate::db::DbError;

/// The first key of the fence's advisory locks (the second is the tenant id's hash).
pub(crate) const FENCE_LOCK: i32 = 727_263;

/// The SQLSTATE of a write refused by the fence.
pub(crate) const MOVED_SQLSTATE: &str = "TM001";

/// Installs the fence in the database of `tx` (the marker table and the trigger function, once)
/// and on every tenant table of `schema`. Idempotent. Runs as the session's role, which must be
/// able to act as the owner.
pub(crate) async fn install(
    tx: &Transaction<'_>,
    roles: &RoleNames,
    schema: &str,
) -> Result<(), DbError> {
    let owner = quote_ident(&roles.owner);
    // The function is compared with the runtime role's name as text, so it is a literal here.
    let runtime = roles.runtime.replace('\'', "''");
    tx.batch_execute(&format!(
        "SET LOCAL ROLE {owner};
         CREATE TABLE IF NOT EXISTS tenantry.moved_out (
             tenant_id    text NOT NULL,
             schema_name  text NOT NULL,
             at           timestamptz NOT NULL DEFAULT now(),
             PRIMARY KEY (tenant_id, schema_name)
         );
         CREATE OR REPLACE FUNCTION tenantry.write_fence() RETURNS trigger
         LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fence$
         DECLARE
             t text;
         BEGIN
             IF TG_OP = 'DELETE' THEN
                 t := OLD.tenant_id;
             ELSE
                 t := NEW.tenant_id;
             END IF;
             IF session_user = '{runtime}' THEN
                 PERFORM pg_advisory_xact_lock_shared({FENCE_LOCK}, hashtext(t));
                 IF EXISTS (SELECT 1 FROM tenantry.moved_out
                            WHERE tenant_id = t AND schema_name = TG_TABLE_SCHEMA) THEN
                     RAISE EXCEPTION 'tenant % has moved out of %', t, TG_TABLE_SCHEMA
                         USING ERRCODE = '{MOVED_SQLSTATE}';
                 END IF;
             END IF;
             IF TG_OP = 'DELETE' THEN
                 RETURN OLD;
             END IF;
             RETURN NEW;
         END $fence$;
         REVOKE ALL ON FUNCTION tenantry.write_fence() FROM PUBLIC;"
    ))
    .await?;
    let tables: Vec<String> = tx
        .query(
            "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') AND NOT c.relispartition",
            &[&schema],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    for table in tables {
        tx.batch_execute(&format!(
            "CREATE OR REPLACE TRIGGER tenantry_write_fence
                 BEFORE INSERT OR UPDATE OR DELETE ON {}.{}
                 FOR EACH ROW EXECUTE FUNCTION tenantry.write_fence()",
            quote_ident(schema),
            quote_ident(&table)
        ))
        .await?;
    }
    tx.batch_execute("RESET ROLE").await?;
    Ok(())
}

/// Takes `tenant`'s fence lock exclusively in the database of `tx`, until `tx` ends: running
/// writes finish first, new ones wait.
pub(crate) async fn hold(tx: &Transaction<'_>, tenant: &str) -> Result<(), DbError> {
    tx.execute(
        "SELECT pg_advisory_xact_lock($1, hashtext($2))",
        &[&FENCE_LOCK, &tenant],
    )
    .await?;
    Ok(())
}

/// Marks `tenant` as moved out of `schema` in the database of `tx`: from the commit on, its
/// writes there are refused.
pub(crate) async fn mark_moved(
    tx: &Transaction<'_>,
    tenant: &str,
    schema: &str,
) -> Result<(), DbError> {
    tx.execute(
        "INSERT INTO tenantry.moved_out (tenant_id, schema_name) VALUES ($1, $2)
         ON CONFLICT DO NOTHING",
        &[&tenant, &schema],
    )
    .await?;
    Ok(())
}

/// Clears a marker left by an earlier move out of `schema` in the database of `tx`, for a
/// tenant that moves (back) into it. Nothing to clear where the fence was never installed.
pub(crate) async fn clear_moved(
    tx: &Transaction<'_>,
    tenant: &str,
    schema: &str,
) -> Result<(), DbError> {
    let installed: bool = tx
        .query_one("SELECT to_regclass('tenantry.moved_out') IS NOT NULL", &[])
        .await?
        .get(0);
    if installed {
        tx.execute(
            "DELETE FROM tenantry.moved_out WHERE tenant_id = $1 AND schema_name = $2",
            &[&tenant, &schema],
        )
        .await?;
    }
    Ok(())
}
