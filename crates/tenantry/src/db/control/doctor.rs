//! `tenantry doctor`: an isolation linter over the whole fleet.
//!
//! It inspects the catalogs of every place tenant rows live (the shared schema, each tenant
//! schema, each tenant database) and reports anything that would let one tenant see another's
//! rows, or let the safety net fail open:
//! - a tenant table whose primary key does not lead with `tenant_id`, or a foreign key without
//!   it;
//! - RLS not enabled or not forced, a missing or altered policy, or any extra policy (an extra
//!   permissive policy is OR-ed in and can open everything);
//! - a runtime role that is a superuser, has BYPASSRLS, owns anything or can become the owner;
//! - a view without `security_invoker`, or a materialized view, where tenant tables live;
//! - a SECURITY DEFINER function the runtime role may execute;
//! - schema grants: CREATE for the runtime role anywhere, or tenant schemas open to PUBLIC;
//! - a catalog tenant without storage, or storage without a catalog tenant;
//! - replication an interrupted move left (a slot keeps the server's WAL forever);
//! - residue of deleted tenants: rows keyed by a tenant id that no catalog tenant has (in the
//!   shared tables, in the job queue, in backup archives) or, in a tenant's own schema or
//!   database, rows keyed by another tenant's id. Everything is keyed by ids that are never reused, so residue is never
//!   visible to a later tenant; it is reported so that it can be removed.

use std::collections::BTreeSet;

use tokio_postgres::NoTls;

use super::provision::admin_config_pub;
use super::replication::link_name;
use super::roles::quote_ident;
use crate::db::{Database, DbError, CONTROL_SCHEMA, SHARED_SCHEMA};
use crate::placement::DEFAULT_SERVER;

/// One problem found.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Finding {
    /// Where: `shared`, `schema t_acme`, `database x on default`, `role x`, `catalog`.
    pub location: String,
    /// Which check, stable (`rls_not_forced`, `pk_without_tenant_id`, …).
    pub check: &'static str,
    pub detail: String,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "[{}] {}: {}", self.check, self.location, self.detail)
    }
}

/// Runs every check; an empty list means clean.
pub async fn check(db: &Database) -> Result<Vec<Finding>, DbError> {
    let mut out = Vec::new();
    let roles = db.roles();
    let control = db.control().get().await?;

    // Placements in the control database: shared, and every schema tenant.
    let tenants = control
        .query(
            &format!(
                "SELECT slug, isolation, server, storage, id FROM {CONTROL_SCHEMA}.tenants
                 WHERE state <> 'deleting'"
            ),
            &[],
        )
        .await?;
    let mut schemas = vec![(SHARED_SCHEMA.to_owned(), "shared".to_owned())];
    let mut schema_ids = Vec::new();
    let mut databases = Vec::new();
    for r in &tenants {
        let slug: String = r.get(0);
        let iso: String = r.get(1);
        let server: Option<String> = r.get(2);
        let storage: Option<String> = r.get(3);
        let id: String = r.get(4);
        match (iso.as_str(), storage) {
            ("schema", Some(s)) => {
                schema_ids.push((s.clone(), id));
                schemas.push((s.clone(), format!("schema {s}")))
            }
            ("database", Some(d)) => {
                databases.push((id, server.unwrap_or_else(|| DEFAULT_SERVER.into()), d))
            }
            ("shared", _) => {}
            (_, None) => out.push(Finding {
                location: "catalog".into(),
                check: "tenant_without_storage",
                detail: format!("tenant {slug} ({iso}) has no storage recorded"),
            }),
            _ => {}
        }
    }
    // Storage of schema tenants, and orphans.
    let existing: BTreeSet<String> = control
        .query(
            "SELECT nspname::text FROM pg_namespace WHERE nspname LIKE 't\\_%'",
            &[],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let known: BTreeSet<String> = schemas.iter().skip(1).map(|(s, _)| s.clone()).collect();
    for s in known.difference(&existing) {
        out.push(Finding {
            location: format!("schema {s}"),
            check: "tenant_without_storage",
            detail: "the catalog names this schema but it does not exist".into(),
        });
    }
    for s in existing.difference(&known) {
        out.push(Finding {
            location: format!("schema {s}"),
            check: "storage_without_tenant",
            detail: "a tenant schema that no catalog tenant owns".into(),
        });
    }
    out.extend(role_checks(&control, roles, "control database").await?);
    for (schema, location) in schemas
        .iter()
        .filter(|(s, _)| existing.contains(s) || s == SHARED_SCHEMA)
    {
        out.extend(schema_checks(&control, schema, location, &roles.runtime).await?);
    }
    out.extend(database_wide(&control, &roles.runtime, "control database").await?);
    out.extend(residue_in_shared(&control).await?);
    for (schema, id) in schema_ids.iter().filter(|(s, _)| existing.contains(s)) {
        out.extend(residue_in_own(&control, schema, &format!("schema {schema}"), id).await?);
    }

    // Database tenants, per server.
    let mut servers: BTreeSet<String> = databases.iter().map(|(_, s, _)| s.clone()).collect();
    servers.insert(DEFAULT_SERVER.into());
    let prefix = roles.owner.trim_end_matches("_owner");
    let links: Vec<(String, String, String)> = tenants
        .iter()
        .filter_map(|r| {
            let id = crate::tenant::TenantId::parse(r.get::<_, &str>(4)).ok()?;
            Some((link_name(db, &id), r.get(0), id.as_str().to_owned()))
        })
        .collect();
    for server in &servers {
        let admin = admin_config_pub(db, server).await?;
        let (c, conn) = admin.connect(NoTls).await?;
        tokio::spawn(conn);
        out.extend(replication_left(&c, &control, db, server, prefix, &links).await?);
        let dbs: BTreeSet<String> = c
            .query(
                "SELECT datname::text FROM pg_database WHERE starts_with(datname, $1)",
                &[&format!("{prefix}_t_")],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let known: BTreeSet<String> = databases
            .iter()
            .filter(|(_, s, _)| s == server)
            .map(|(_, _, d)| d.clone())
            .collect();
        for d in known.difference(&dbs) {
            out.push(Finding {
                location: format!("database {d} on {server}"),
                check: "tenant_without_storage",
                detail: "the catalog names this database but it does not exist".into(),
            });
        }
        for d in dbs.difference(&known) {
            out.push(Finding {
                location: format!("database {d} on {server}"),
                check: "storage_without_tenant",
                detail: "a tenant database that no catalog tenant owns".into(),
            });
        }
        for d in known.intersection(&dbs) {
            let mut cfg = admin.clone();
            cfg.dbname(d);
            let (tc, conn) = cfg.connect(NoTls).await?;
            tokio::spawn(conn);
            let location = format!("database {d} on {server}");
            out.extend(schema_checks(&tc, SHARED_SCHEMA, &location, &roles.runtime).await?);
            out.extend(database_wide(&tc, &roles.runtime, &location).await?);
            out.extend(role_checks(&tc, roles, &location).await?);
            if let Some((id, _, _)) = databases.iter().find(|(_, s, db)| s == server && db == d) {
                out.extend(residue_in_own(&tc, SHARED_SCHEMA, &location, id).await?);
            }
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// Replication a move left on `server` (slots and subscriptions named for a move of this
/// deployment) while no move of that tenant runs: a slot keeps the server's WAL forever. Running
/// the tenant's move again, or deleting the tenant, removes it.
async fn replication_left(
    c: &tokio_postgres::Client,
    control: &tokio_postgres::Client,
    db: &Database,
    server: &str,
    prefix: &str,
    links: &[(String, String, String)],
) -> Result<Vec<Finding>, DbError> {
    let control_db = db.control_config().get_dbname().unwrap_or_default();
    let left = c
        .query(
            "SELECT 'slot', slot_name::text, database::text FROM pg_replication_slots
             WHERE starts_with(slot_name, 'tenantry_move_')
             UNION ALL
             SELECT 'subscription', s.subname::text, d.datname::text FROM pg_subscription s
             JOIN pg_database d ON d.oid = s.subdbid
             WHERE starts_with(s.subname, 'tenantry_move_')",
            &[],
        )
        .await?;
    let mut out = Vec::new();
    for r in &left {
        let (what, name, database): (&str, String, Option<String>) = (r.get(0), r.get(1), r.get(2));
        let database = database.unwrap_or_default();
        if database != control_db && !database.starts_with(&format!("{prefix}_t_")) {
            continue; // another deployment's
        }
        let detail = match links.iter().find(|(link, _, _)| *link == name) {
            None => format!("{what} {name} in {database}, of a tenant that no longer exists"),
            Some((_, slug, id)) => {
                let moving: bool = control
                    .query_one(
                        "SELECT NOT pg_try_advisory_lock($1, hashtext($2))",
                        &[&(super::fence::FENCE_LOCK + 2), id],
                    )
                    .await?
                    .get(0);
                if moving {
                    continue;
                }
                control
                    .execute(
                        "SELECT pg_advisory_unlock($1, hashtext($2))",
                        &[&(super::fence::FENCE_LOCK + 2), id],
                    )
                    .await?;
                format!(
                    "{what} {name} in {database}, left by an interrupted move of tenant {slug} \
                     (run the move again, or delete the tenant)"
                )
            }
        };
        out.push(Finding {
            location: format!("server {server}"),
            check: "replication_left_by_move",
            detail,
        });
    }
    Ok(out)
}

/// The tables of a schema that hold tenant rows.
async fn tenant_tables(c: &tokio_postgres::Client, schema: &str) -> Result<Vec<String>, DbError> {
    Ok(c
        .query(
            "SELECT c.relname::text FROM pg_class c
             JOIN pg_namespace n ON n.oid = c.relnamespace
             JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = 'tenant_id' AND NOT a.attisdropped
             WHERE n.nspname = $1 AND c.relkind IN ('r', 'p')
             ORDER BY 1",
            &[&schema],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

/// Rows of the shared tables and of the job queue keyed by a tenant id that no catalog tenant
/// has: what a write racing a deletion (a request or job admitted just before it) left.
async fn residue_in_shared(c: &tokio_postgres::Client) -> Result<Vec<Finding>, DbError> {
    let mut out = Vec::new();
    let mut places: Vec<(String, String)> = tenant_tables(c, SHARED_SCHEMA)
        .await?
        .into_iter()
        .map(|t| {
            (
                format!("shared.{t}"),
                format!("{}.{}", quote_ident(SHARED_SCHEMA), quote_ident(&t)),
            )
        })
        .collect();
    for t in ["jobs", "job_queues", "operation_archives"] {
        places.push((
            format!("{CONTROL_SCHEMA}.{t}"),
            format!("{CONTROL_SCHEMA}.{t}"),
        ));
    }
    for (name, table) in places {
        let rows = c
            .query(
                &format!(
                    "SELECT x.tenant_id, count(*) FROM {table} x
                     WHERE NOT EXISTS (SELECT 1 FROM {CONTROL_SCHEMA}.tenants t WHERE t.id = x.tenant_id)
                     GROUP BY x.tenant_id ORDER BY 1 LIMIT 20"
                ),
                &[],
            )
            .await?;
        for r in rows {
            let (id, n): (String, i64) = (r.get(0), r.get(1));
            out.push(Finding {
                location: name.clone(),
                check: "residue_of_deleted_tenant",
                detail: format!("{n} row(s) of tenant id {id}, which no catalog tenant has"),
            });
        }
    }
    Ok(out)
}

/// Rows of a tenant's own schema (or database) keyed by another tenant's id.
async fn residue_in_own(
    c: &tokio_postgres::Client,
    schema: &str,
    location: &str,
    id: &str,
) -> Result<Vec<Finding>, DbError> {
    let mut out = Vec::new();
    for t in tenant_tables(c, schema).await? {
        let n: i64 = c
            .query_one(
                &format!(
                    "SELECT count(*) FROM {}.{} WHERE tenant_id <> $1",
                    quote_ident(schema),
                    quote_ident(&t)
                ),
                &[&id],
            )
            .await?
            .get(0);
        if n > 0 {
            out.push(Finding {
                location: location.to_owned(),
                check: "residue_of_deleted_tenant",
                detail: format!("{n} row(s) in {t} keyed by another tenant's id"),
            });
        }
    }
    Ok(out)
}

/// Tables, keys, RLS and policies of one tenant schema.
async fn schema_checks(
    c: &tokio_postgres::Client,
    schema: &str,
    location: &str,
    runtime: &str,
) -> Result<Vec<Finding>, DbError> {
    let mut out = Vec::new();
    let f = |check, detail: String| Finding {
        location: location.to_owned(),
        check,
        detail,
    };
    let tables = c
        .query(
            "SELECT c.oid, c.relname::text, c.relrowsecurity, c.relforcerowsecurity,
                    (SELECT a.attname::text FROM pg_constraint k
                       JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.conkey[1]
                      WHERE k.conrelid = c.oid AND k.contype = 'p')
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = $1 AND c.relkind IN ('r', 'p')",
            &[&schema],
        )
        .await?;
    for t in &tables {
        let oid: u32 = t.get(0);
        let name: String = t.get(1);
        if !t.get::<_, bool>(2) {
            out.push(f(
                "rls_not_enabled",
                format!("table {name}: row-level security is off"),
            ));
        }
        if !t.get::<_, bool>(3) {
            out.push(f(
                "rls_not_forced",
                format!("table {name}: row-level security is not FORCED (the owner bypasses it)"),
            ));
        }
        match t.get::<_, Option<String>>(4).as_deref() {
            Some("tenant_id") => {}
            Some(other) => out.push(f(
                "pk_without_tenant_id",
                format!("table {name}: primary key leads with {other}, not tenant_id"),
            )),
            None => out.push(f(
                "pk_without_tenant_id",
                format!("table {name}: no primary key"),
            )),
        }
        let fks = c
            .query(
                "SELECT k.conname::text,
                        (SELECT a.attname::text FROM pg_attribute a
                          WHERE a.attrelid = k.conrelid AND a.attnum = k.conkey[1]),
                        (SELECT a.attname::text FROM pg_attribute a
                          WHERE a.attrelid = k.confrelid AND a.attnum = k.confkey[1])
                 FROM pg_constraint k WHERE k.conrelid = $1 AND k.contype = 'f'",
                &[&oid],
            )
            .await?;
        for k in fks {
            let (n, from, to): (String, Option<String>, Option<String>) =
                (k.get(0), k.get(1), k.get(2));
            if from.as_deref() != Some("tenant_id") || to.as_deref() != Some("tenant_id") {
                out.push(f(
                    "fk_without_tenant_id",
                    format!(
                        "table {name}: foreign key {n} does not lead with tenant_id on both sides"
                    ),
                ));
            }
        }
        let policies = c
            .query(
                "SELECT polname::text, polpermissive, polcmd::text, polroles = '{0}'::oid[],
                        coalesce(pg_get_expr(polqual, polrelid), ''),
                        coalesce(pg_get_expr(polwithcheck, polrelid), '')
                 FROM pg_policy WHERE polrelid = $1",
                &[&oid],
            )
            .await?;
        let mut ok = false;
        for p in &policies {
            let pname: String = p.get(0);
            let good = pname == super::migrate::POLICY_NAME
                && p.get::<_, bool>(1)
                && p.get::<_, String>(2) == "*"
                && p.get::<_, bool>(3)
                && is_expected_policy(&p.get::<_, String>(4))
                && is_expected_policy(&p.get::<_, String>(5));
            if good {
                ok = true;
            } else {
                out.push(f(
                    "unexpected_policy",
                    format!("table {name}: policy {pname} is not the tenant isolation policy"),
                ));
            }
        }
        if !ok {
            out.push(f(
                "missing_policy",
                format!("table {name}: no tenant isolation policy"),
            ));
        }
        let privs = c
            .query_one(
                "SELECT has_table_privilege($1, $2::oid, 'TRUNCATE'),
                        has_table_privilege($1, $2::oid, 'REFERENCES'),
                        has_table_privilege($1, $2::oid, 'TRIGGER')",
                &[&runtime, &oid],
            )
            .await?;
        if privs.get::<_, bool>(0) || privs.get::<_, bool>(1) || privs.get::<_, bool>(2) {
            out.push(f(
                "excess_table_privilege",
                format!("table {name}: the runtime role has TRUNCATE, REFERENCES or TRIGGER"),
            ));
        }
    }
    // Views and materialized views where tenant tables live.
    let views = c
        .query(
            "SELECT c.relname::text, c.relkind::text,
                    coalesce(c.reloptions::text[] @> '{security_invoker=true}', false)
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = $1 AND c.relkind IN ('v', 'm')",
            &[&schema],
        )
        .await?;
    for v in views {
        let name: String = v.get(0);
        if v.get::<_, String>(1) == "m" {
            out.push(f(
                "materialized_view",
                format!("{name}: materialized views ignore row-level security"),
            ));
        } else if !v.get::<_, bool>(2) {
            out.push(f(
                "view_without_security_invoker",
                format!("view {name} runs as its owner, past row-level security"),
            ));
        }
    }
    // PUBLIC must not use a tenant schema.
    let public_usage: bool = c
        .query_one(
            "SELECT coalesce(bool_or(a.privilege_type = 'USAGE' AND a.grantee = 0), false)
             FROM pg_namespace n, aclexplode(coalesce(n.nspacl, acldefault('n', n.nspowner))) a
             WHERE n.nspname = $1",
            &[&schema],
        )
        .await?
        .get(0);
    if public_usage {
        out.push(f(
            "schema_open_to_public",
            format!("schema {schema}: PUBLIC has USAGE"),
        ));
    }
    Ok(out)
}

/// Checks that concern a whole database: SECURITY DEFINER functions and CREATE on schemas.
async fn database_wide(
    c: &tokio_postgres::Client,
    runtime: &str,
    location: &str,
) -> Result<Vec<Finding>, DbError> {
    let mut out = Vec::new();
    for r in c
        .query(
            "SELECT p.oid::regprocedure::text FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
             WHERE p.prosecdef AND n.nspname NOT IN ('pg_catalog', 'information_schema')
               AND has_function_privilege($1, p.oid, 'EXECUTE')",
            &[&runtime],
        )
        .await?
    {
        out.push(Finding {
            location: location.to_owned(),
            check: "security_definer_callable",
            detail: format!("function {} is SECURITY DEFINER and the runtime role may call it", r.get::<_, String>(0)),
        });
    }
    for r in c
        .query(
            "SELECT nspname::text FROM pg_namespace
             WHERE nspname NOT LIKE 'pg\\_%' AND nspname <> 'information_schema'
               AND has_schema_privilege($1, oid, 'CREATE')",
            &[&runtime],
        )
        .await?
    {
        out.push(Finding {
            location: location.to_owned(),
            check: "schema_create_granted",
            detail: format!(
                "the runtime role may create objects in schema {}",
                r.get::<_, String>(0)
            ),
        });
    }
    Ok(out)
}

/// The runtime role's attributes and ownership, seen from one database.
async fn role_checks(
    c: &tokio_postgres::Client,
    roles: &crate::db::RoleNames,
    location: &str,
) -> Result<Vec<Finding>, DbError> {
    let mut out = Vec::new();
    let Some(r) = c
        .query_opt(
            "SELECT r.rolsuper, r.rolbypassrls,
                    (SELECT count(*) FROM pg_class k WHERE k.relowner = r.oid)
                  + (SELECT count(*) FROM pg_namespace n WHERE n.nspowner = r.oid)
                  + (SELECT count(*) FROM pg_proc p WHERE p.proowner = r.oid),
                    EXISTS (SELECT 1 FROM pg_roles o WHERE o.rolname = $2
                            AND pg_has_role(r.oid, o.oid, 'MEMBER'))
             FROM pg_roles r WHERE r.rolname = $1",
            &[&roles.runtime, &roles.owner],
        )
        .await?
    else {
        return Ok(vec![Finding {
            location: format!("role {}", roles.runtime),
            check: "runtime_role_missing",
            detail: format!("the runtime role does not exist ({location})"),
        }]);
    };
    let loc = format!("role {}", roles.runtime);
    let mut push = |check, detail: &str| {
        out.push(Finding {
            location: loc.clone(),
            check,
            detail: format!("{detail} ({location})"),
        })
    };
    if r.get::<_, bool>(0) {
        push("runtime_role_superuser", "the runtime role is a superuser");
    }
    if r.get::<_, bool>(1) {
        push("runtime_role_bypassrls", "the runtime role has BYPASSRLS");
    }
    if r.get::<_, i64>(2) > 0 {
        push("runtime_role_owns", "the runtime role owns objects");
    }
    if r.get::<_, bool>(3) {
        push(
            "runtime_role_owner_member",
            "the runtime role is a member of the owner role",
        );
    }
    Ok(out)
}

/// Whether a deparsed policy expression is the fail-closed tenant comparison.
fn is_expected_policy(expr: &str) -> bool {
    let e: String = expr.split_whitespace().collect::<Vec<_>>().join(" ");
    let core =
        "(tenant_id = ( SELECT NULLIF(current_setting('app.tenant_id'::text, true), ''::text)";
    e == format!("{core} AS \"nullif\"))") || e == format!("{core}))")
}

#[cfg(test)]
mod tests {
    use super::is_expected_policy;

    #[test]
    fn policy_text() {
        assert!(is_expected_policy(
            "(tenant_id = ( SELECT NULLIF(current_setting('app.tenant_id'::text, true), ''::text) AS \"nullif\"))"
        ));
        assert!(!is_expected_policy("true"));
        assert!(!is_expected_policy(
            "((tenant_id = ( SELECT NULLIF(current_setting('app.tenant_id'::text, true), ''::text) AS \"nullif\")) OR true)"
        ));
    }
}
