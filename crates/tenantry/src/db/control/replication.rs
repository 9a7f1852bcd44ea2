//! Moving a tenant's rows between two databases by PostgreSQL's own logical replication.
//!
//! The source publishes the tenant's rows (a publication over its tenant tables with the row
//! filter `tenant_id = '<id>'`), a slot for it is made apart from the subscription (a
//! subscription to a database of the same cluster must not make its own slot, or `CREATE
//! SUBSCRIPTION` waits on itself), and a subscription in the target copies the rows and then
//! applies every change the tenant makes meanwhile, in commit order. The move never holds
//! writes for the copy: only for the moment the last changes arrive.
//!
//! To know that every change made before a moment has arrived, the source writes a *barrier*:
//! a row of its own (`tenantry.move_barrier`, published with the tenant's rows) set to a fresh
//! value; once the target shows that value, everything committed before it has been applied.
//!
//! Logical replication needs both databases to name their tables alike (a schema placement's
//! tables are in the tenant's own schema), the source at `wal_level = logical`, a superuser on
//! both sides (PostgreSQL 15 lets only superusers subscribe), every tenant table keyed by a
//! primary key that holds `tenant_id` (the row filter must be part of the replica identity),
//! and free slots. Where any of that is missing, [`Link::open`] says why and the move copies
//! instead.
//!
//! Every object is named after the tenant ([`link_name`]), so what an interrupted move left is
//! found and removed by the next attempt ([`Link::forget`]) or by the tenant's deletion
//! ([`forget`]).

use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio_postgres::{Client, Config, NoTls};

use super::roles::quote_ident;
use super::tenant_rows::{literal, Table};
use crate::db::{Database, DbError};
use crate::placement::Placement;
use crate::tenant::TenantId;

/// The publication, slot and subscription of `tenant`'s move (one name for all three): the
/// same on every attempt, different for every deployment sharing a server.
pub(crate) fn link_name(db: &Database, tenant: &TenantId) -> String {
    let mut hash = Sha256::new();
    hash.update(db.control_config().get_dbname().unwrap_or_default());
    hash.update([0]);
    hash.update(tenant.as_str());
    let digest = hash.finalize();
    let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("tenantry_move_{hex}")
}

/// Both ends of one tenant's replication: admin connections to the source and target
/// databases, and what the subscription needs to reach the source.
pub(crate) struct Link {
    name: String,
    tenant: TenantId,
    /// The schema of the tenant tables, the same on both sides.
    schema: String,
    source: Client,
    target: Client,
    source_cfg: Config,
    target_cfg: Config,
}

async fn connect(cfg: &Config) -> Result<Client, DbError> {
    let (client, conn) = cfg.connect(NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "replication admin connection ended");
        }
    });
    Ok(client)
}

/// A libpq connection string for `cfg` (what a subscription stores to reach its publisher).
fn conninfo(cfg: &Config) -> String {
    fn quoted(v: &str) -> String {
        format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"))
    }
    let mut parts = Vec::new();
    if let Some(host) = cfg.get_hosts().first() {
        let host = match host {
            tokio_postgres::config::Host::Tcp(h) => h.clone(),
            tokio_postgres::config::Host::Unix(p) => p.to_string_lossy().into_owned(),
        };
        parts.push(format!("host={}", quoted(&host)));
    }
    if let Some(port) = cfg.get_ports().first() {
        parts.push(format!("port={port}"));
    }
    if let Some(user) = cfg.get_user() {
        parts.push(format!("user={}", quoted(user)));
    }
    if let Some(password) = cfg.get_password() {
        parts.push(format!(
            "password={}",
            quoted(&String::from_utf8_lossy(password))
        ));
    }
    if let Some(db) = cfg.get_dbname() {
        parts.push(format!("dbname={}", quoted(db)));
    }
    parts.join(" ")
}

/// Drops what a move named `name` left on the cluster `client` is connected to: its
/// subscription (in whichever database holds it), its slot, and, in this database, its
/// publication and its barrier rows. Idempotent.
async fn forget_on(
    client: &Client,
    cfg: &Config,
    name: &str,
    tenant: &TenantId,
) -> Result<(), DbError> {
    let here: String = client
        .query_one("SELECT current_database()::text", &[])
        .await?
        .get(0);
    let holders: Vec<String> = client
        .query(
            "SELECT d.datname::text FROM pg_subscription s
             JOIN pg_database d ON d.oid = s.subdbid WHERE s.subname = $1",
            &[&name],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    for database in holders {
        if database == here {
            drop_subscription(client, name).await?;
        } else {
            let mut there = cfg.clone();
            there.dbname(&database);
            drop_subscription(&connect(&there).await?, name).await?;
        }
    }
    // A slot still in use (its subscriber on another server) is freed by ending its sender.
    for _ in 0..50 {
        let row = client
            .query_opt(
                "SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1",
                &[&name],
            )
            .await?;
        let Some(row) = row else { break };
        match row.get::<_, Option<i32>>(0) {
            Some(pid) => {
                client
                    .execute("SELECT pg_terminate_backend($1)", &[&pid])
                    .await?;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            None => {
                let dropped = client
                    .execute("SELECT pg_drop_replication_slot($1)", &[&name])
                    .await;
                match dropped {
                    Ok(_) => break,
                    // Taken again between the look and the drop: look again.
                    Err(e) if e.code().is_some() => {
                        tokio::time::sleep(Duration::from_millis(20)).await
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }
    client
        .batch_execute(&format!("DROP PUBLICATION IF EXISTS {}", quote_ident(name)))
        .await?;
    let barrier: bool = client
        .query_one(
            "SELECT to_regclass('tenantry.move_barrier') IS NOT NULL",
            &[],
        )
        .await?
        .get(0);
    if barrier {
        client
            .execute(
                "DELETE FROM tenantry.move_barrier WHERE tenant_id = $1",
                &[&tenant.as_str()],
            )
            .await?;
    }
    Ok(())
}

/// Removes whatever replication a move of `tenant` left in the database `cfg` leads to (and its
/// cluster): part of removing a tenant's storage, since a database holding a subscription or a
/// slot cannot be dropped, and a forgotten slot keeps WAL forever.
pub(crate) async fn forget(db: &Database, cfg: &Config, tenant: &TenantId) -> Result<(), DbError> {
    let client = connect(cfg).await?;
    let name = link_name(db, tenant);
    forget_on(&client, cfg, &name, tenant).await
}

/// Drops the move subscriptions held in the database `client` is connected to (before that
/// database is dropped).
pub(crate) async fn drop_subscriptions_here(client: &Client) -> Result<(), DbError> {
    let names: Vec<String> = client
        .query(
            "SELECT s.subname::text FROM pg_subscription s
             WHERE s.subdbid = (SELECT oid FROM pg_database WHERE datname = current_database())
               AND s.subname LIKE 'tenantry\\_move\\_%'",
            &[],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    for name in names {
        drop_subscription(client, &name).await?;
    }
    Ok(())
}

/// Drops subscription `name` of the database `client` is connected to, with its slots on the
/// publisher (the move's slot and those of tables still being copied); where the publisher
/// cannot be reached, without them (the move's own slot is then dropped by name on the
/// publisher's side, [`forget_on`]).
async fn drop_subscription(client: &Client, name: &str) -> Result<(), DbError> {
    let name = quote_ident(name);
    // Each alone: dropping a subscription with its slot cannot run in a transaction block.
    client
        .batch_execute(&format!("ALTER SUBSCRIPTION {name} DISABLE"))
        .await?;
    if client
        .batch_execute(&format!("DROP SUBSCRIPTION {name}"))
        .await
        .is_err()
    {
        client
            .batch_execute(&format!("ALTER SUBSCRIPTION {name} SET (slot_name = NONE)"))
            .await?;
        client
            .batch_execute(&format!("DROP SUBSCRIPTION {name}"))
            .await?;
    }
    Ok(())
}

/// Why a link cannot be made: the move copies instead, and says why.
pub(crate) type Unavailable = String;

impl Link {
    /// Connects both ends of `tenant`'s move from `from` to `to` (given the admin settings of
    /// each database) and checks that logical replication can carry it; otherwise, why not.
    pub(crate) async fn open(
        db: &Database,
        tenant: &TenantId,
        (from, source_cfg): (&Placement, Config),
        (to, target_cfg): (&Placement, Config),
        schema: &str,
        tables: &[Table],
    ) -> Result<Link, Unavailable> {
        if !matches!(from, Placement::Database { .. }) && !matches!(to, Placement::Database { .. })
        {
            return Err("both placements are in one database".into());
        }
        if matches!(from, Placement::Schema { .. }) || matches!(to, Placement::Schema { .. }) {
            return Err("a schema placement names its tables apart from the other side".into());
        }
        if let Some(t) = tables
            .iter()
            .find(|t| !t.key.iter().any(|c| c == "tenant_id"))
        {
            return Err(format!(
                "table {} has no primary key holding tenant_id",
                t.name
            ));
        }
        let why = |e: DbError| format!("cannot connect for replication: {e}");
        let source = connect(&source_cfg).await.map_err(why)?;
        let target = connect(&target_cfg).await.map_err(why)?;
        let check = async {
            let s = source
                .query_one(
                    "SELECT current_setting('wal_level'),
                            (SELECT rolsuper FROM pg_roles WHERE rolname = session_user),
                            current_setting('max_replication_slots')::int
                              - (SELECT count(*) FROM pg_replication_slots)::int,
                            (SELECT system_identifier FROM pg_control_system())::text,
                            current_database()::text",
                    &[],
                )
                .await?;
            let t = target
                .query_one(
                    "SELECT (SELECT rolsuper FROM pg_roles WHERE rolname = session_user),
                            (SELECT system_identifier FROM pg_control_system())::text,
                            current_database()::text",
                    &[],
                )
                .await?;
            Ok::<_, tokio_postgres::Error>((s, t))
        };
        let (s, t) = check
            .await
            .map_err(|e| format!("cannot inspect the servers: {e}"))?;
        let wal_level: String = s.get(0);
        if wal_level != "logical" {
            return Err(format!(
                "the source server runs with wal_level = {wal_level}, not logical"
            ));
        }
        if !s.get::<_, bool>(1) || !t.get::<_, bool>(0) {
            return Err("the control plane's login is not a superuser on both servers".into());
        }
        // The move's own slot and, while it copies, one per table being copied.
        if s.get::<_, i32>(2) < 3 {
            return Err("the source server has no free replication slots".into());
        }
        if (s.get::<_, String>(3), s.get::<_, String>(4)) == (t.get(1), t.get(2)) {
            return Err("the target is the source's own database".into());
        }
        Ok(Link {
            name: link_name(db, tenant),
            tenant: tenant.clone(),
            schema: schema.to_owned(),
            source,
            target,
            source_cfg,
            target_cfg,
        })
    }

    /// Removes what an earlier attempt of this move left, on both servers.
    pub(crate) async fn forget(&self) -> Result<(), DbError> {
        // The subscription first (it holds the slot), wherever it is.
        forget_on(&self.target, &self.target_cfg, &self.name, &self.tenant).await?;
        forget_on(&self.source, &self.source_cfg, &self.name, &self.tenant).await?;
        Ok(())
    }

    /// The schema of the tenant tables on both sides.
    pub(crate) fn schema(&self) -> String {
        self.schema.clone()
    }

    /// Removes the tenant's rows from the target's `tables` (children first) and its marker
    /// of having moved out of there once: what an earlier attempt, or an earlier stay, left.
    pub(crate) async fn clear_target(&self, tables: &[Table]) -> Result<(), DbError> {
        let mut sql = String::from("BEGIN;");
        for table in tables.iter().rev() {
            sql.push_str(&format!(
                "DELETE FROM {}.{} WHERE tenant_id = {};",
                quote_ident(&self.schema),
                quote_ident(&table.name),
                literal(&self.tenant)
            ));
        }
        let marker: bool = self
            .target
            .query_one("SELECT to_regclass('tenantry.moved_out') IS NOT NULL", &[])
            .await?
            .get(0);
        if marker {
            sql.push_str(&format!(
                "DELETE FROM tenantry.moved_out WHERE tenant_id = {} AND schema_name = {};",
                literal(&self.tenant),
                literal_text(&self.schema)
            ));
        }
        sql.push_str("COMMIT");
        self.target.batch_execute(&sql).await?;
        Ok(())
    }

    /// Starts replicating `tables` (the target's tenant rows already cleared): the barrier
    /// table on both sides, the publication, the slot, the subscription, which begins with a
    /// copy of the tenant's rows.
    pub(crate) async fn start(&self, tables: &[Table]) -> Result<(), DbError> {
        for side in [&self.source, &self.target] {
            side.batch_execute(&format!(
                "BEGIN;
                 SELECT pg_advisory_xact_lock({}, 2);
                 CREATE TABLE IF NOT EXISTS tenantry.move_barrier (
                     tenant_id text PRIMARY KEY,
                     n         bigint NOT NULL
                 );
                 REVOKE ALL ON tenantry.move_barrier FROM PUBLIC;
                 COMMIT",
                super::fence::FENCE_LOCK
            ))
            .await?;
        }
        let id = self.tenant.as_str();
        self.target
            .execute(
                "DELETE FROM tenantry.move_barrier WHERE tenant_id = $1",
                &[&id],
            )
            .await?;
        self.source
            .execute(
                "INSERT INTO tenantry.move_barrier VALUES ($1, 0)
                 ON CONFLICT (tenant_id) DO UPDATE SET n = 0",
                &[&id],
            )
            .await?;
        let filter = format!("WHERE (tenant_id = {})", literal(&self.tenant));
        let mut published: Vec<String> = tables
            .iter()
            .map(|t| {
                format!(
                    "{}.{} {filter}",
                    quote_ident(&self.schema),
                    quote_ident(&t.name)
                )
            })
            .collect();
        published.push(format!("tenantry.move_barrier {filter}"));
        let name = quote_ident(&self.name);
        self.source
            .batch_execute(&format!(
                "CREATE PUBLICATION {name} FOR TABLE {}
                 WITH (publish = 'insert, update, delete')",
                published.join(", ")
            ))
            .await?;
        self.source
            .execute(
                "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
                &[&self.name],
            )
            .await?;
        let connection = conninfo(&self.source_cfg).replace('\'', "''");
        self.target
            .batch_execute(&format!(
                "CREATE SUBSCRIPTION {name} CONNECTION '{connection}' PUBLICATION {name}
                 WITH (create_slot = false, slot_name = {}, copy_data = true)",
                literal_text(&self.name)
            ))
            .await?;
        Ok(())
    }

    /// How far the first copy is: whether every table is copied and the subscription streams,
    /// and the rows copied so far (`counts`: each table's rows in the source). An error the
    /// subscription reported ends the move.
    pub(crate) async fn copied(&self, counts: &[(String, i64)]) -> Result<(bool, u64), String> {
        let states = self
            .target
            .query(
                "SELECT c.relname::text, r.srsubstate::text
                 FROM pg_subscription_rel r
                 JOIN pg_subscription s ON s.oid = r.srsubid
                 JOIN pg_class c ON c.oid = r.srrelid
                 WHERE s.subname = $1",
                &[&self.name],
            )
            .await
            .map_err(|e| e.to_string())?;
        let copying = self
            .target
            .query(
                "SELECT c.relname::text, p.tuples_processed
                 FROM pg_stat_progress_copy p JOIN pg_class c ON c.oid = p.relid
                 WHERE p.datname = current_database()",
                &[],
            )
            .await
            .map_err(|e| e.to_string())?;
        let errors: i64 = self
            .target
            .query_opt(
                "SELECT apply_error_count + sync_error_count FROM pg_stat_subscription_stats
                 WHERE subname = $1",
                &[&self.name],
            )
            .await
            .map_err(|e| e.to_string())?
            .map_or(0, |r| r.get(0));
        if errors > 0 {
            return Err(format!(
                "the subscription reported {errors} error(s); the target server's log says why"
            ));
        }
        let mut done = !states.is_empty();
        let mut rows = 0u64;
        for state in &states {
            let (table, state): (String, String) = (state.get(0), state.get(1));
            let total = counts.iter().find(|(t, _)| *t == table).map_or(0, |c| c.1);
            if state == "r" || state == "s" {
                rows += total as u64;
            } else if let Some(c) = copying.iter().find(|c| c.get::<_, String>(0) == table) {
                rows += (c.get::<_, i64>(1).max(0) as u64).min(total as u64);
            }
            done &= state == "r";
        }
        Ok((done, rows))
    }

    /// Writes a fresh barrier in the source and waits until the target has applied it, so
    /// every change the tenant committed before has arrived; gives up after `within`.
    pub(crate) async fn barrier(&self, within: Duration) -> Result<Duration, String> {
        let started = Instant::now();
        let n: i64 = rand::random::<i64>() & i64::MAX;
        self.source
            .execute(
                "UPDATE tenantry.move_barrier SET n = $2 WHERE tenant_id = $1",
                &[&self.tenant.as_str(), &n],
            )
            .await
            .map_err(|e| e.to_string())?;
        loop {
            let seen: Option<i64> = self
                .target
                .query_opt(
                    "SELECT n FROM tenantry.move_barrier WHERE tenant_id = $1",
                    &[&self.tenant.as_str()],
                )
                .await
                .map_err(|e| e.to_string())?
                .map(|r| r.get(0));
            if seen == Some(n) {
                return Ok(started.elapsed());
            }
            if started.elapsed() > within {
                return Err(format!(
                    "the target did not apply the source's changes within {} ms",
                    within.as_millis()
                ));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Each table's rows of the tenant on both sides, read at once.
    pub(crate) async fn counts(&self, tables: &[Table]) -> Result<Vec<(i64, i64)>, DbError> {
        let mut out = Vec::with_capacity(tables.len());
        for table in tables {
            let sql = format!(
                "SELECT count(*) FROM {}.{} WHERE tenant_id = $1",
                quote_ident(&self.schema),
                quote_ident(&table.name)
            );
            let id = self.tenant.as_str();
            let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&id];
            let (a, b) = tokio::try_join!(
                self.source.query_one(&sql, &params),
                self.target.query_one(&sql, &params)
            )?;
            out.push((a.get(0), b.get(0)));
        }
        Ok(out)
    }

    /// New connections to the source and the target, for reading both at one moment.
    pub(crate) async fn snapshot_connections(&self) -> Result<(Client, Client), DbError> {
        Ok(tokio::try_join!(
            connect(&self.source_cfg),
            connect(&self.target_cfg)
        )?)
    }

    /// Stops applying changes (before the flip, when none are left to apply).
    pub(crate) async fn pause(&self) -> Result<(), DbError> {
        self.target
            .batch_execute(&format!(
                "ALTER SUBSCRIPTION {} DISABLE",
                quote_ident(&self.name)
            ))
            .await?;
        Ok(())
    }
}

/// `v` as an SQL string literal.
fn literal_text(v: &str) -> String {
    format!("'{}'", v.replace('\'', "''"))
}
