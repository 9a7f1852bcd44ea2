//! Creating and removing a tenant's storage, in each placement, and the database servers that
//! `database` tenants are placed on.
//!
//! - **schema**: one transaction creates the schema, runs every tenant migration in it, secures
//!   it (forced RLS on every table) and grants the runtime role its rights. It commits whole or
//!   not at all, so a crash leaves no half-made schema; all of it is one round trip of DDL.
//! - **database**: `CREATE DATABASE … TEMPLATE <prefix>_tmpl`, a file-level copy of a template
//!   that already holds the migrated, secured tables. The template is created and kept at the
//!   newest migration on first use. `CREATE DATABASE` is atomic too.
//! - **shared**: nothing to create; removal deletes the tenant's rows from every shared table
//!   (as the owner role under forced RLS with the tenant's setting, so it cannot touch another
//!   tenant's rows even by mistake).
//!
//! Every step is idempotent, so provisioning and removal can be retried after a crash.

use std::collections::HashMap;

use tokio_postgres::error::SqlState;
use tokio_postgres::NoTls;

use super::migrate::{self, apply_in, grants_sql, steps};
use super::replication;
use super::roles::quote_ident;
use crate::db::{Database, DbError, Placement, CONTROL_SCHEMA, SHARED_SCHEMA};
use crate::placement::DEFAULT_SERVER;
use crate::tenant::{Slug, Tenant, TenantId};

/// Advisory lock serialising template work (per deployment, taken in the control database).
const TEMPLATE_LOCK: i64 = 727263003;

/// Loads the catalog's servers into the pool manager (at start-up and after a change).
pub(crate) async fn load_servers(db: &Database) -> Result<(), DbError> {
    for (name, url) in servers(db).await? {
        let cfg = runtime_config_for(db, &url)?;
        db.tenant_pools().set_server(&name, cfg);
    }
    Ok(())
}

async fn servers(db: &Database) -> Result<HashMap<String, String>, DbError> {
    let client = db.control().get().await?;
    let rows = client
        .query(
            &format!("SELECT name, url FROM {CONTROL_SCHEMA}.db_servers"),
            &[],
        )
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

fn parse_url(url: &str) -> Result<tokio_postgres::Config, DbError> {
    url.parse()
        .map_err(|e| DbError::Config(format!("invalid server URL: {e}")))
}

fn runtime_config_for(db: &Database, url: &str) -> Result<tokio_postgres::Config, DbError> {
    let mut cfg = parse_url(url)?;
    cfg.user(&db.roles().runtime);
    cfg.password(db.runtime_password());
    Ok(cfg)
}

/// The admin connection settings of a server, for fleet operations.
pub(crate) async fn admin_config_pub(
    db: &Database,
    server: &str,
) -> Result<tokio_postgres::Config, DbError> {
    admin_config(db, server).await
}

/// The admin connection settings of a server (for CREATE/DROP DATABASE and templates).
async fn admin_config(db: &Database, server: &str) -> Result<tokio_postgres::Config, DbError> {
    if server == DEFAULT_SERVER {
        return Ok(db.control_config().clone());
    }
    let url = servers(db)
        .await?
        .remove(server)
        .ok_or_else(|| DbError::Config(format!("unknown database server {server:?}")))?;
    parse_url(&url)
}

async fn connect(cfg: &tokio_postgres::Config) -> Result<tokio_postgres::Client, DbError> {
    let (client, conn) = cfg.connect(NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "provisioning connection ended");
        }
    });
    Ok(client)
}

/// Registers a database server: checks the URL's role can create databases, creates the owner
/// and runtime roles there (with the deployment's runtime password), and records it.
pub async fn add_server(db: &Database, name: &str, url: &str) -> Result<(), DbError> {
    let b = name.as_bytes();
    if name == DEFAULT_SERVER
        || b.is_empty()
        || b.len() > 63
        || !b[0].is_ascii_lowercase()
        || !b
            .iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_' || *c == b'-')
    {
        return Err(DbError::Config(format!(
            "server name {name:?} must match ^[a-z][a-z0-9_-]{{0,62}}$ and not be {DEFAULT_SERVER:?}"
        )));
    }
    let cfg = parse_url(url)?;
    let client = connect(&cfg).await?;
    let can: bool = client
        .query_one(
            "SELECT rolsuper OR rolcreatedb FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .await?
        .get(0);
    if !can {
        return Err(DbError::Config(
            "the server URL's role must be allowed to create databases".into(),
        ));
    }
    super::roles::create_roles(&client, db.roles()).await?;
    let app = quote_ident(&db.roles().runtime);
    client
        .batch_execute(&format!(
            "ALTER ROLE {app} PASSWORD '{}'",
            super::roles::scram_verifier(db.runtime_password())
        ))
        .await?;
    let control = db.control().get().await?;
    control
        .execute(
            &format!(
                "INSERT INTO {CONTROL_SCHEMA}.db_servers (name, url) VALUES ($1, $2)
                 ON CONFLICT (name) DO UPDATE SET url = EXCLUDED.url"
            ),
            &[&name, &url],
        )
        .await?;
    db.tenant_pools()
        .set_server(name, runtime_config_for(db, url)?);
    Ok(())
}

/// Lists servers by name (never their URLs, which carry credentials).
pub async fn server_names(db: &Database) -> Result<Vec<String>, DbError> {
    let mut names: Vec<String> = servers(db).await?.into_keys().collect();
    names.push(DEFAULT_SERVER.to_owned());
    names.sort();
    Ok(names)
}

/// Creates a tenant's storage (idempotent). Returns the migration version it is at.
pub(crate) async fn create_storage(
    db: &Database,
    slug: &Slug,
    placement: &Placement,
) -> Result<i32, DbError> {
    match placement {
        Placement::Shared => Ok(db.latest_version()),
        Placement::Schema { schema } => create_schema(db, schema).await,
        Placement::Database { server, database } => create_database(db, server, database).await,
    }
    .inspect(|_| tracing::info!(tenant = %slug, placement = ?placement, "storage ready"))
}

async fn create_schema(db: &Database, schema: &str) -> Result<i32, DbError> {
    let mut client = db.control().get().await?;
    let roles = db.roles().clone();
    let tx = client.transaction().await?;
    let s = quote_ident(schema);
    let owner = quote_ident(&roles.owner);
    tx.batch_execute(&format!(
        "CREATE SCHEMA IF NOT EXISTS {s} AUTHORIZATION {owner}"
    ))
    .await?;
    let scope = format!("schema:{schema}");
    apply_in(&tx, &roles, &scope, schema, &steps(db.migrations()), true).await?;
    tx.batch_execute(&grants_sql(&roles, schema)).await?;
    tx.commit().await?;
    Ok(db.latest_version())
}

fn template_name(db: &Database) -> String {
    // The owner role's name is `<prefix>_owner`: derive the prefix from it.
    let prefix = db.roles().owner.trim_end_matches("_owner");
    format!("{prefix}_tmpl")
}

async fn create_database(db: &Database, server: &str, database: &str) -> Result<i32, DbError> {
    let admin = admin_config(db, server).await?;
    // Serialise template work and cloning: CREATE DATABASE … TEMPLATE needs the template idle.
    let lock = connect(db.control_config()).await?;
    lock.execute("SELECT pg_advisory_lock($1)", &[&TEMPLATE_LOCK])
        .await?;
    let result = async {
        let template = ensure_template(db, &admin).await?;
        let client = connect(&admin).await?;
        let d = quote_ident(database);
        let owner = quote_ident(&db.roles().owner);
        let app = quote_ident(&db.roles().runtime);
        match client
            .batch_execute(&format!(
                "CREATE DATABASE {d} TEMPLATE {} OWNER {owner}",
                quote_ident(&template)
            ))
            .await
        {
            Ok(()) => {}
            // Already made by an earlier attempt: CREATE DATABASE is atomic, so it is whole.
            Err(e) if e.code() == Some(&SqlState::DUPLICATE_DATABASE) => {}
            Err(e) => return Err(e.into()),
        }
        client
            .batch_execute(&format!(
                "REVOKE ALL ON DATABASE {d} FROM PUBLIC;
                 GRANT CONNECT, TEMPORARY ON DATABASE {d} TO {app};"
            ))
            .await?;
        Ok(db.latest_version())
    }
    .await;
    let _ = lock
        .execute("SELECT pg_advisory_unlock($1)", &[&TEMPLATE_LOCK])
        .await;
    result
}

/// Makes sure the server has the template database at the newest migration, and returns its
/// name. Runs under the template lock.
async fn ensure_template(db: &Database, admin: &tokio_postgres::Config) -> Result<String, DbError> {
    let name = template_name(db);
    let client = connect(admin).await?;
    let exists = client
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
        .await?
        .is_some();
    let owner = quote_ident(&db.roles().owner);
    if !exists {
        client
            .batch_execute(&format!(
                "CREATE DATABASE {} OWNER {owner}",
                quote_ident(&name)
            ))
            .await?;
    }
    drop(client);
    let mut cfg = admin.clone();
    cfg.dbname(&name);
    let mut tmpl = connect(&cfg).await?;
    prepare_tenant_database(&mut tmpl, db).await?;
    // The connection must be gone before the template can be cloned.
    drop(tmpl);
    Ok(name)
}

/// Brings a tenant database (or the template) to the newest migration: schemas, ledger, tables,
/// forced RLS, grants. Idempotent. Returns the versions applied.
pub(crate) async fn prepare_tenant_database(
    client: &mut tokio_postgres::Client,
    db: &Database,
) -> Result<Vec<i32>, DbError> {
    let roles = db.roles().clone();
    let owner = quote_ident(&roles.owner);
    let app = quote_ident(&roles.runtime);
    let tx = client.transaction().await?;
    tx.batch_execute(&format!(
        "SELECT pg_advisory_xact_lock({});
         CREATE SCHEMA IF NOT EXISTS {CONTROL_SCHEMA} AUTHORIZATION {owner};
         CREATE SCHEMA IF NOT EXISTS {SHARED_SCHEMA} AUTHORIZATION {owner};
         REVOKE ALL ON SCHEMA {CONTROL_SCHEMA} FROM PUBLIC;
         REVOKE CREATE ON SCHEMA public FROM PUBLIC;
         {}",
        migrate::LOCK_KEY,
        migrate::ledger_ddl(&roles)
    ))
    .await?;
    let applied = apply_in(
        &tx,
        &roles,
        "tenant",
        SHARED_SCHEMA,
        &steps(db.migrations()),
        true,
    )
    .await?;
    tx.batch_execute(&grants_sql(&roles, SHARED_SCHEMA)).await?;
    let _ = app;
    tx.commit().await?;
    Ok(applied)
}

/// Removes a tenant's storage (idempotent: removing what is already gone succeeds).
pub(crate) async fn drop_storage(db: &Database, tenant: &Tenant) -> Result<(), DbError> {
    match &tenant.placement {
        Placement::Shared => {
            replication::forget(db, db.control_config(), &tenant.id).await?;
            delete_shared_rows(db, &tenant.id).await
        }
        Placement::Schema { schema } => {
            // The schema and its ledger go together, so a tenant re-created under the same
            // slug gets its tables again.
            let mut client = db.control().get().await?;
            let tx = client.transaction().await?;
            tx.batch_execute(&format!(
                "DROP SCHEMA IF EXISTS {} CASCADE",
                quote_ident(schema)
            ))
            .await?;
            tx.execute(
                &format!("DELETE FROM {CONTROL_SCHEMA}.migrations WHERE scope = $1"),
                &[&format!("schema:{schema}")],
            )
            .await?;
            tx.commit().await?;
            Ok(())
        }
        Placement::Database { server, database } => {
            db.tenant_pools().close(server, database);
            let admin = admin_config(db, server).await?;
            let client = connect(&admin).await?;
            // A database holding a subscription or a replication slot cannot be dropped: a
            // move into or out of it may have left them.
            let mut inside = admin.clone();
            inside.dbname(database);
            if let Ok(there) = connect(&inside).await {
                replication::drop_subscriptions_here(&there).await?;
                replication::forget(db, &inside, &tenant.id).await?;
            }
            client
                .batch_execute(&format!(
                    "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                    quote_ident(database)
                ))
                .await?;
            Ok(())
        }
    }
}

/// Deletes a tenant's rows from every shared table, children before parents.
async fn delete_shared_rows(db: &Database, tenant: &TenantId) -> Result<(), DbError> {
    let mut client = db.control().get().await?;
    let tx = client.transaction().await?;
    // Which tables reference which (within the schema).
    let rows = tx
        .query(
            "SELECT c.relname::text,
                    coalesce(array_agg(DISTINCT r.relname::text)
                             FILTER (WHERE r.relname IS NOT NULL AND r.oid <> c.oid), '{}')
             FROM pg_class c
             JOIN pg_namespace n ON n.oid = c.relnamespace
             LEFT JOIN pg_constraint k ON k.confrelid = c.oid AND k.contype = 'f'
             LEFT JOIN pg_class r ON r.oid = k.conrelid
             WHERE n.nspname = $1 AND c.relkind IN ('r', 'p')
             GROUP BY c.relname",
            &[&SHARED_SCHEMA],
        )
        .await?;
    let mut referenced_by: HashMap<String, Vec<String>> =
        rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    tx.batch_execute(&format!(
        "SET LOCAL ROLE {}",
        quote_ident(&db.roles().owner)
    ))
    .await?;
    tx.execute(
        "SELECT set_config('app.tenant_id', $1, true)",
        &[&tenant.as_str()],
    )
    .await?;
    while !referenced_by.is_empty() {
        let ready: Vec<String> = referenced_by
            .iter()
            .filter(|(_, refs)| refs.iter().all(|r| !referenced_by.contains_key(r)))
            .map(|(t, _)| t.clone())
            .collect();
        if ready.is_empty() {
            return Err(DbError::Config(
                "shared tables reference each other in a cycle".into(),
            ));
        }
        for table in ready {
            tx.execute(
                &format!(
                    "DELETE FROM {}.{} WHERE tenant_id = $1",
                    quote_ident(SHARED_SCHEMA),
                    quote_ident(&table)
                ),
                &[&tenant.as_str()],
            )
            .await?;
            referenced_by.remove(&table);
        }
    }
    tx.commit().await?;
    Ok(())
}
