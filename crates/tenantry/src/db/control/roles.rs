//! The owner and runtime roles, and the start-up check that the runtime role cannot bypass RLS.
//!
//! Roles are cluster-wide, so their names carry a configurable prefix: two deployments (or two
//! test databases) on one PostgreSQL server each get their own pair.

use deadpool_postgres::Object;
use rand::distr::{Alphanumeric, SampleString};

use crate::db::{DbError, CONTROL_SCHEMA, SHARED_SCHEMA};

/// Names of the two roles, derived from a validated prefix.
#[derive(Debug, Clone)]
pub struct RoleNames {
    /// Owns every table, schema and database; runs DDL. Never logs in.
    pub owner: String,
    /// Serves tenant traffic. Owns nothing.
    pub runtime: String,
}

impl RoleNames {
    /// `prefix` must match `^[a-z_][a-z0-9_]{0,40}$` so the names need no escaping anywhere.
    pub fn from_prefix(prefix: &str) -> Result<Self, DbError> {
        let b = prefix.as_bytes();
        let ok = !b.is_empty()
            && b.len() <= 41
            && (b[0].is_ascii_lowercase() || b[0] == b'_')
            && b.iter()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_');
        if !ok {
            return Err(DbError::Config(format!(
                "role prefix {prefix:?} must match ^[a-z_][a-z0-9_]{{0,40}}$"
            )));
        }
        Ok(Self {
            owner: format!("{prefix}_owner"),
            runtime: format!("{prefix}_app"),
        })
    }
}

impl Default for RoleNames {
    fn default() -> Self {
        Self::from_prefix("tenantry").expect("static prefix is valid")
    }
}

/// Quotes an identifier for PostgreSQL (doubling embedded quotes).
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Creates the roles and base schemas if missing and returns the runtime role's password.
///
/// Runs as the control role. Creating a role races with other nodes (or other databases of the
/// same cluster) doing the same, so each creation swallows `duplicate_object`.
pub(crate) async fn bootstrap(client: &Object, roles: &RoleNames) -> Result<String, DbError> {
    let owner = quote_ident(&roles.owner);
    let app = quote_ident(&roles.runtime);
    create_roles(client, roles).await?;
    bootstrap_schemas(client, roles, &owner, &app).await
}

/// Creates the owner and runtime roles on a server if missing.
pub(crate) async fn create_roles(
    client: &tokio_postgres::Client,
    roles: &RoleNames,
) -> Result<(), DbError> {
    let owner = quote_ident(&roles.owner);
    let app = quote_ident(&roles.runtime);
    let create = format!(
        r#"
        DO $$ BEGIN CREATE ROLE {owner} NOLOGIN;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$;
        DO $$ BEGIN
          CREATE ROLE {app} LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE NOINHERIT;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$;
        DO $$ BEGIN EXECUTE format('GRANT %I TO %I', '{owner_raw}', current_user);
        EXCEPTION WHEN others THEN NULL; END $$;
        "#,
        owner_raw = roles.owner,
    );
    client.batch_execute(&create).await?;
    Ok(())
}

async fn bootstrap_schemas(
    client: &Object,
    roles: &RoleNames,
    owner: &str,
    app: &str,
) -> Result<String, DbError> {
    let schemas = format!(
        r#"
        BEGIN;
        SELECT pg_advisory_xact_lock(727263001);
        CREATE SCHEMA IF NOT EXISTS {CONTROL_SCHEMA} AUTHORIZATION {owner};
        CREATE SCHEMA IF NOT EXISTS {SHARED_SCHEMA} AUTHORIZATION {owner};
        REVOKE ALL ON SCHEMA {CONTROL_SCHEMA}, {SHARED_SCHEMA} FROM PUBLIC;
        GRANT USAGE ON SCHEMA {CONTROL_SCHEMA}, {SHARED_SCHEMA} TO {app};
        REVOKE CREATE ON SCHEMA public FROM PUBLIC;
        CREATE TABLE IF NOT EXISTS {CONTROL_SCHEMA}.runtime_secret (
            role_name text PRIMARY KEY,
            password text NOT NULL
        );
        ALTER TABLE {CONTROL_SCHEMA}.runtime_secret OWNER TO {owner};
        REVOKE ALL ON {CONTROL_SCHEMA}.runtime_secret FROM PUBLIC;
        COMMIT;
        "#
    );
    client.batch_execute(&schemas).await?;

    let existing = client
        .query_opt(
            &format!("SELECT password FROM {CONTROL_SCHEMA}.runtime_secret WHERE role_name = $1"),
            &[&roles.runtime],
        )
        .await?;
    if let Some(row) = existing {
        return Ok(row.get(0));
    }
    let password = Alphanumeric.sample_string(&mut rand::rng(), 40);
    // ALTER ROLE takes no parameters, so the statement text carries the password: send the
    // SCRAM verifier instead, never the password itself (statement text can reach logs).
    let verifier = scram_verifier(&password);
    client.batch_execute("BEGIN").await?;
    let stored = async {
        client
            .batch_execute(&format!("ALTER ROLE {app} PASSWORD '{verifier}'"))
            .await?;
        client
            .execute(
                &format!(
                    "INSERT INTO {CONTROL_SCHEMA}.runtime_secret (role_name, password) VALUES ($1, $2)
                     ON CONFLICT (role_name) DO UPDATE SET password = EXCLUDED.password"
                ),
                &[&roles.runtime, &password],
            )
            .await?;
        Ok::<_, DbError>(())
    }
    .await;
    match stored {
        Ok(()) => client.batch_execute("COMMIT").await?,
        Err(e) => {
            let _ = client.batch_execute("ROLLBACK").await;
            return Err(e);
        }
    }
    Ok(password)
}

/// The SCRAM-SHA-256 verifier of a password, as `ALTER ROLE … PASSWORD` accepts it. Only
/// base64 and `$:` characters, so it can be quoted without escaping.
pub(crate) fn scram_verifier(password: &str) -> String {
    postgres_protocol::password::scram_sha_256(password.as_bytes())
}

/// Refuses a runtime role that could see past RLS: a superuser, a BYPASSRLS role, a role that
/// owns (or can become the owner of) anything, or one that may create objects in our schemas.
pub(crate) async fn check_runtime_role(client: &Object, roles: &RoleNames) -> Result<(), DbError> {
    let row = client
        .query_one(
            "SELECT current_user::text, r.rolsuper, r.rolbypassrls,
                    (SELECT count(*) FROM pg_class c WHERE c.relowner = r.oid)
                  + (SELECT count(*) FROM pg_namespace n WHERE n.nspowner = r.oid) AS owned,
                    EXISTS (SELECT 1 FROM pg_roles o
                            WHERE o.rolname = $1 AND pg_has_role(r.oid, o.oid, 'MEMBER')) AS owner_member,
                    has_schema_privilege(r.oid, $2, 'CREATE')
                      OR has_schema_privilege(r.oid, $3, 'CREATE') AS can_create
             FROM pg_roles r WHERE r.rolname = current_user",
            &[&roles.owner, &SHARED_SCHEMA, &CONTROL_SCHEMA],
        )
        .await?;
    let user: String = row.get(0);
    let mut problems = Vec::new();
    if row.get::<_, bool>(1) {
        problems.push("is a superuser");
    }
    if row.get::<_, bool>(2) {
        problems.push("has BYPASSRLS");
    }
    if row.get::<_, i64>(3) > 0 {
        problems.push("owns tables or schemas");
    }
    if row.get::<_, bool>(4) {
        problems.push("is a member of the owner role");
    }
    if row.get::<_, bool>(5) {
        problems.push("may create objects in the tenantry schemas");
    }
    let truncate: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = $1 AND c.relkind IN ('r', 'p')
               AND has_table_privilege(c.oid, 'TRUNCATE')",
            &[&SHARED_SCHEMA],
        )
        .await?
        .get(0);
    if truncate > 0 {
        problems.push("has TRUNCATE on tenant tables");
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(DbError::UnsafeRole(format!(
            "runtime role {user:?} {}; refusing to serve tenant traffic with it",
            problems.join(", ")
        )))
    }
}
