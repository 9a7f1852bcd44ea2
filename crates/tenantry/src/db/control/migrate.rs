//! Migrations: the control-plane catalog, and the tenant tables.
//!
//! Tenant tables are defined once (a list of [`TenantMigration`]s, written with unqualified
//! names) and applied to a placement by running them with `search_path` set to its schema and
//! the owner role as the current role. After every migration the runner *secures* the schema:
//! every table must have a `tenant_id` column, and gets RLS enabled and forced with the one
//! fail-closed policy. A migration cannot forget the safety net, because the runner adds it.
//!
//! Each placement keeps a ledger of applied versions (`tenantry.migrations`, keyed by scope),
//! and each run holds an advisory lock so concurrent starts apply a version once.

use deadpool_postgres::Object;

use super::roles::{quote_ident, RoleNames};
use crate::db::{DbError, CONTROL_SCHEMA, SHARED_SCHEMA};

/// One step of the tenant-table schema. Versions increase; applied versions never change.
#[derive(Debug, Clone, Copy)]
pub struct TenantMigration {
    pub version: i32,
    pub name: &'static str,
    pub sql: &'static str,
}

/// The RLS expression every tenant table carries, for both USING and WITH CHECK. With no
/// setting (NULL) or a reset one (`''`) it compares to NULL: no row is visible or writable.
pub(crate) const POLICY_EXPR: &str =
    "(tenant_id = (SELECT NULLIF(current_setting('app.tenant_id', true), '')))";

/// The name of that policy on every tenant table.
pub(crate) const POLICY_NAME: &str = "tenant_isolation";

pub(crate) const LOCK_KEY: i64 = 727263002;

/// Control-plane catalog migrations. `{app}` and `{owner}` are replaced by the quoted runtime
/// and owner roles.
const CONTROL: &[(i32, &str, &str)] = &[
    (
        1,
        "catalog",
        r#"
    CREATE TABLE tenants (
        slug        text PRIMARY KEY CHECK (slug ~ '^[a-z][a-z0-9-]{1,62}$'),
        name        text NOT NULL,
        plan        text NOT NULL,
        status      text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'suspended')),
        isolation   text NOT NULL CHECK (isolation IN ('shared', 'schema', 'database')),
        rate_limit  jsonb,
        created_at  timestamptz NOT NULL DEFAULT now(),
        updated_at  timestamptz NOT NULL DEFAULT now()
    );
    CREATE TABLE api_keys (
        id           uuid PRIMARY KEY,
        tenant_id    text NOT NULL REFERENCES tenants (slug) ON DELETE CASCADE,
        name         text NOT NULL,
        prefix       text NOT NULL,
        secret_hash  bytea NOT NULL,
        scopes       text[] NOT NULL,
        created_at   timestamptz NOT NULL DEFAULT now(),
        expires_at   timestamptz,
        last_used_at timestamptz,
        revoked_at   timestamptz,
        CONSTRAINT api_keys_prefix_key UNIQUE (prefix)
    );
    CREATE INDEX api_keys_tenant_idx ON api_keys (tenant_id, created_at, id);
    -- No foreign key to tenants: the audit trail outlives a deleted tenant.
    CREATE TABLE audit_log (
        id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        at          timestamptz NOT NULL DEFAULT now(),
        actor       text NOT NULL,
        tenant_id   text,
        action      text NOT NULL,
        target      text NOT NULL,
        request_id  text NOT NULL
    );
    CREATE INDEX audit_log_tenant_idx ON audit_log (tenant_id, id);
    GRANT SELECT ON tenants, api_keys TO {app};
    -- Append-only for the runtime role: no UPDATE, no DELETE, no TRUNCATE.
    GRANT SELECT, INSERT ON audit_log TO {app};
    "#,
    ),
    (
        2,
        "placements",
        r#"
    -- Where each tenant lives, and whether its storage is complete (only 'ready' is served).
    ALTER TABLE tenants
        ADD COLUMN state text NOT NULL DEFAULT 'ready'
            CHECK (state IN ('provisioning', 'ready', 'deleting')),
        ADD COLUMN server text,
        ADD COLUMN storage text,
        ADD COLUMN schema_version integer NOT NULL DEFAULT 0;
    CREATE UNIQUE INDEX tenants_storage_key ON tenants (coalesce(server, ''), storage)
        WHERE storage IS NOT NULL;
    CREATE INDEX tenants_pending_idx ON tenants (schema_version);
    -- Servers for database tenants. The URLs carry credentials: no grant to the runtime role.
    CREATE TABLE db_servers (
        name        text PRIMARY KEY CHECK (name ~ '^[a-z][a-z0-9_-]{0,62}$'),
        url         text NOT NULL,
        created_at  timestamptz NOT NULL DEFAULT now()
    );
    CREATE TABLE operations (
        id          uuid PRIMARY KEY,
        kind        text NOT NULL CHECK (kind IN ('move', 'migrate')),
        tenant_id   text,
        state       text NOT NULL CHECK (state IN ('queued', 'running', 'succeeded', 'failed')),
        progress    real NOT NULL DEFAULT 0,
        detail      text NOT NULL DEFAULT '',
        created_at  timestamptz NOT NULL DEFAULT now(),
        updated_at  timestamptz NOT NULL DEFAULT now()
    );
    "#,
    ),
    (
        3,
        "jobs",
        r#"
    CREATE TABLE jobs (
        id              uuid PRIMARY KEY,
        tenant_id       text NOT NULL CHECK (tenant_id <> ''),
        kind            text NOT NULL,
        payload         jsonb NOT NULL DEFAULT '{}',
        state           text NOT NULL
                        CHECK (state IN ('queued', 'running', 'succeeded', 'failed', 'dead')),
        attempts        integer NOT NULL DEFAULT 0,
        max_attempts    integer NOT NULL DEFAULT 5,
        run_at          timestamptz NOT NULL DEFAULT now(),
        lease_until     timestamptz,
        locked_by       text,
        last_error      text,
        idempotency_key text,
        result          jsonb,
        created_at      timestamptz NOT NULL DEFAULT now(),
        finished_at     timestamptz,
        CONSTRAINT jobs_idempotency_key UNIQUE (tenant_id, idempotency_key)
    );
    CREATE INDEX jobs_runnable_idx ON jobs (tenant_id, run_at, id) WHERE state = 'queued';
    CREATE INDEX jobs_lease_idx ON jobs (lease_until) WHERE state = 'running';
    CREATE INDEX jobs_tenant_idx ON jobs (tenant_id, id);
    -- One row per tenant with jobs: counts, its cap and weight, and its virtual time for
    -- fair claiming.
    CREATE TABLE job_queues (
        tenant_id text PRIMARY KEY,
        queued    integer NOT NULL DEFAULT 0,
        running   integer NOT NULL DEFAULT 0,
        cap       integer NOT NULL DEFAULT 1,
        weight    double precision NOT NULL DEFAULT 1,
        vtime     double precision NOT NULL DEFAULT 0
    );
    CREATE INDEX job_queues_ready_idx ON job_queues (vtime) WHERE queued > 0;
    "#,
    ),
    (
        4,
        "identity",
        r#"
    -- Every tenant id ever assigned. Rows are never deleted (a deleted tenant's keeps its
    -- deleted_at), so the primary key makes an id impossible to assign twice.
    CREATE TABLE tenant_ids (
        id          text PRIMARY KEY CHECK (id ~ '^[a-z0-9][a-z0-9-]{1,63}$'),
        slug        text NOT NULL,
        created_at  timestamptz NOT NULL DEFAULT now(),
        deleted_at  timestamptz
    );
    CREATE INDEX tenant_ids_slug_idx ON tenant_ids (slug, deleted_at);
    -- Tenants created before ids existed keep their slug as their id: everything they own is
    -- already keyed by it, so nothing else is rewritten.
    ALTER TABLE tenants ADD COLUMN id text;
    UPDATE tenants SET id = slug;
    INSERT INTO tenant_ids (id, slug, created_at) SELECT id, slug, created_at FROM tenants;
    ALTER TABLE tenants ALTER COLUMN id SET NOT NULL,
        ADD CONSTRAINT tenants_id_key UNIQUE (id),
        ADD CONSTRAINT tenants_id_fkey FOREIGN KEY (id) REFERENCES tenant_ids (id);
    -- Keys belong to the tenant's id, not to its slug.
    ALTER TABLE api_keys DROP CONSTRAINT api_keys_tenant_id_fkey,
        ADD CONSTRAINT api_keys_tenant_id_fkey
            FOREIGN KEY (tenant_id) REFERENCES tenants (id) ON DELETE CASCADE;
    -- The audit log names the tenant by slug (what operators search by) and by id. Only the
    -- control role writes or reads it.
    ALTER TABLE audit_log ADD COLUMN tenant_slug text;
    UPDATE audit_log SET tenant_slug = tenant_id;
    CREATE INDEX audit_log_slug_idx ON audit_log (tenant_slug, id);
    REVOKE ALL ON audit_log FROM {app};
    -- Jobs are tenant rows read and written by tenant requests (enqueue, status, download) on
    -- the runtime role: forced RLS keyed by the tenant, exactly the tenant tables' policy. The
    -- queue service (claiming, leases, outcomes) runs as the control role, a member of the
    -- owner, which a policy of its own lets see every tenant's jobs.
    ALTER TABLE jobs ADD COLUMN concurrency integer NOT NULL DEFAULT 1;
    ALTER TABLE jobs ENABLE ROW LEVEL SECURITY;
    ALTER TABLE jobs FORCE ROW LEVEL SECURITY;
    CREATE POLICY tenant_isolation ON jobs TO {app}
        USING (tenant_id = (SELECT NULLIF(current_setting('app.tenant_id', true), '')))
        WITH CHECK (tenant_id = (SELECT NULLIF(current_setting('app.tenant_id', true), '')));
    CREATE POLICY queue_service ON jobs TO {owner} USING (true) WITH CHECK (true);
    GRANT SELECT, INSERT ON jobs TO {app};
    -- A job enqueued by the runtime role enters its tenant's queue row, which the runtime role
    -- cannot touch (the row's virtual time is placed among the other tenants'): this trigger
    -- does it as the owner, for the inserted job's own tenant only.
    CREATE FUNCTION job_enqueued() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    BEGIN
        INSERT INTO tenantry.job_queues AS q (tenant_id, queued, cap, weight, vtime)
        VALUES (NEW.tenant_id, 1, NEW.concurrency, NEW.concurrency,
                coalesce((SELECT min(vtime) FROM tenantry.job_queues WHERE queued > 0), 0))
        ON CONFLICT (tenant_id) DO UPDATE SET queued = q.queued + 1, cap = EXCLUDED.cap,
            weight = EXCLUDED.weight,
            vtime = CASE WHEN q.queued = 0 AND q.running = 0
                         THEN greatest(q.vtime, coalesce((SELECT min(vtime) FROM tenantry.job_queues
                                                          WHERE queued > 0), 0))
                         ELSE q.vtime END;
        PERFORM pg_notify('tenantry_jobs', '');
        RETURN NULL;
    END $$;
    REVOKE ALL ON FUNCTION job_enqueued() FROM PUBLIC;
    CREATE TRIGGER jobs_enqueued AFTER INSERT ON jobs
        FOR EACH ROW WHEN (NEW.state = 'queued') EXECUTE FUNCTION job_enqueued();
    -- Forged or stale API keys are refused by a keyed checksum before any lookup: its secret.
    -- (Made at start-up from the operating system's random source; no grant to the runtime
    -- role.)
    CREATE TABLE key_check_secret (
        singleton  boolean PRIMARY KEY DEFAULT true CHECK (singleton),
        secret     bytea NOT NULL CHECK (length(secret) >= 32)
    );
    -- Keys issued before the keyed checksum carry a CRC-32 one; they stay valid, known by
    -- their prefix.
    ALTER TABLE api_keys ADD COLUMN keyed_check boolean NOT NULL DEFAULT true;
    UPDATE api_keys SET keyed_check = false;
    "#,
    ),
    (
        5,
        "archives",
        r#"
    -- Operations on one tenant (backups, restores, moves) and their phase.
    ALTER TABLE operations DROP CONSTRAINT operations_kind_check,
        ADD CONSTRAINT operations_kind_check
            CHECK (kind IN ('move', 'migrate', 'backup', 'restore', 'drain'));
    ALTER TABLE operations DROP CONSTRAINT operations_state_check,
        ADD CONSTRAINT operations_state_check
            CHECK (state IN ('queued', 'running', 'succeeded', 'failed', 'cancelled'));
    ALTER TABLE operations ADD COLUMN phase text NOT NULL DEFAULT '',
        ADD COLUMN cancel_requested boolean NOT NULL DEFAULT false;
    -- A backup operation's archive, for any node to serve. It holds the tenant's data, so it
    -- is keyed by the tenant's id and goes when the tenant goes.
    CREATE TABLE operation_archives (
        operation_id  uuid NOT NULL REFERENCES operations (id) ON DELETE CASCADE,
        tenant_id     text NOT NULL,
        seq           integer NOT NULL,
        data          bytea NOT NULL,
        PRIMARY KEY (operation_id, seq)
    );
    CREATE INDEX operation_archives_tenant_idx ON operation_archives (tenant_id);
    REVOKE ALL ON operation_archives FROM {app};
    "#,
    ),
];

/// The ledger of applied versions, one per database (keyed by scope inside it).
pub(crate) fn ledger_ddl(roles: &RoleNames) -> String {
    let owner = quote_ident(&roles.owner);
    format!(
        "CREATE TABLE IF NOT EXISTS {CONTROL_SCHEMA}.migrations (
             scope      text NOT NULL,
             version    integer NOT NULL,
             name       text NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now(),
             PRIMARY KEY (scope, version)
         );
         ALTER TABLE {CONTROL_SCHEMA}.migrations OWNER TO {owner};"
    )
}

/// Applies pending control-plane migrations.
pub(crate) async fn control_plane(client: &mut Object, roles: &RoleNames) -> Result<(), DbError> {
    client
        .batch_execute(&format!(
            "BEGIN; SELECT pg_advisory_xact_lock({LOCK_KEY}); {} COMMIT;",
            ledger_ddl(roles)
        ))
        .await?;
    let app = quote_ident(&roles.runtime);
    let owner = quote_ident(&roles.owner);
    let steps: Vec<(i32, &'static str, String)> = CONTROL
        .iter()
        .map(|(v, n, sql)| {
            (
                *v,
                *n,
                sql.replace("{app}", &app).replace("{owner}", &owner),
            )
        })
        .collect();
    apply(client, roles, "control", CONTROL_SCHEMA, &steps, false).await
}

/// Applies pending tenant migrations to the shared-placement schema.
pub(crate) async fn shared_tables(
    client: &mut Object,
    roles: &RoleNames,
    migrations: &[TenantMigration],
) -> Result<(), DbError> {
    apply(
        client,
        roles,
        "shared",
        SHARED_SCHEMA,
        &steps(migrations),
        true,
    )
    .await?;
    grant_tenant_tables(client, roles, SHARED_SCHEMA).await
}

async fn apply(
    client: &mut Object,
    roles: &RoleNames,
    scope: &str,
    schema: &str,
    steps: &[(i32, &'static str, String)],
    tenant_tables: bool,
) -> Result<(), DbError> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_KEY])
        .await?;
    apply_in(&tx, roles, scope, schema, steps, tenant_tables).await?;
    tx.commit().await?;
    Ok(())
}

/// Tenant migrations as (version, name, sql) steps.
pub(crate) fn steps(migrations: &[TenantMigration]) -> Vec<(i32, &'static str, String)> {
    migrations
        .iter()
        .map(|m| (m.version, m.name, m.sql.to_owned()))
        .collect()
}

/// Applies, inside the caller's transaction, the steps the ledger (of this database, under
/// `scope`) does not list yet. Returns the versions applied.
pub(crate) async fn apply_in(
    tx: &tokio_postgres::Transaction<'_>,
    roles: &RoleNames,
    scope: &str,
    schema: &str,
    steps: &[(i32, &'static str, String)],
    tenant_tables: bool,
) -> Result<Vec<i32>, DbError> {
    let applied: Vec<i32> = tx
        .query(
            &format!("SELECT version FROM {CONTROL_SCHEMA}.migrations WHERE scope = $1"),
            &[&scope],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let schema_q = quote_ident(schema);
    let owner = quote_ident(&roles.owner);
    let mut done = Vec::new();
    for (version, name, sql) in steps.iter().filter(|s| !applied.contains(&s.0)) {
        let run = async {
            tx.batch_execute(&format!(
                "SET LOCAL search_path = {schema_q}; SET LOCAL ROLE {owner};"
            ))
            .await?;
            tx.batch_execute(sql).await?;
            if tenant_tables {
                secure_schema(tx, schema).await?;
            }
            tx.batch_execute("RESET ROLE; RESET search_path;").await?;
            tx.execute(
                &format!(
                    "INSERT INTO {CONTROL_SCHEMA}.migrations (scope, version, name) VALUES ($1, $2, $3)"
                ),
                &[&scope, version, name],
            )
            .await?;
            Ok::<_, DbError>(())
        };
        run.await.map_err(|e| DbError::Migration {
            version: *version,
            name,
            source: Box::new(e),
        })?;
        done.push(*version);
    }
    Ok(done)
}

/// Makes every table in `schema` a proper tenant table: it must have `tenant_id`, and gets RLS
/// enabled and forced with the standard policy (created if missing).
pub(crate) async fn secure_schema(
    tx: &tokio_postgres::Transaction<'_>,
    schema: &str,
) -> Result<(), DbError> {
    let rows = tx
        .query(
            "SELECT c.relname::text,
                    EXISTS (SELECT 1 FROM pg_attribute a
                            WHERE a.attrelid = c.oid AND a.attname = 'tenant_id'
                              AND NOT a.attisdropped),
                    EXISTS (SELECT 1 FROM pg_policy p
                            WHERE p.polrelid = c.oid AND p.polname = $2)
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = $1 AND c.relkind IN ('r', 'p')",
            &[&schema, &POLICY_NAME],
        )
        .await?;
    let schema_q = quote_ident(schema);
    for row in rows {
        let table: String = row.get(0);
        let has_tenant: bool = row.get(1);
        let has_policy: bool = row.get(2);
        if !has_tenant {
            return Err(DbError::Config(format!(
                "table {schema}.{table} has no tenant_id column; every tenant table needs one"
            )));
        }
        let t = format!("{schema_q}.{}", quote_ident(&table));
        let mut sql = format!(
            "ALTER TABLE {t} ENABLE ROW LEVEL SECURITY; ALTER TABLE {t} FORCE ROW LEVEL SECURITY;"
        );
        if !has_policy {
            sql.push_str(&format!(
                "CREATE POLICY {POLICY_NAME} ON {t} USING {POLICY_EXPR} WITH CHECK {POLICY_EXPR};"
            ));
        }
        tx.batch_execute(&sql).await?;
    }
    Ok(())
}

/// The runtime role may use the schema and read and write rows in its tables, and nothing
/// else: no CREATE, no TRUNCATE, no REFERENCES, no TRIGGER.
pub(crate) fn grants_sql(roles: &RoleNames, schema: &str) -> String {
    let s = quote_ident(schema);
    let app = quote_ident(&roles.runtime);
    format!(
        "REVOKE ALL ON SCHEMA {s} FROM PUBLIC;
         GRANT USAGE ON SCHEMA {s} TO {app};
         REVOKE ALL ON ALL TABLES IN SCHEMA {s} FROM {app};
         GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {s} TO {app};
         GRANT USAGE ON ALL SEQUENCES IN SCHEMA {s} TO {app};"
    )
}

async fn grant_tenant_tables(
    client: &mut Object,
    roles: &RoleNames,
    schema: &str,
) -> Result<(), DbError> {
    client.batch_execute(&grants_sql(roles, schema)).await?;
    Ok(())
}
