//! Fleet migrations: bring the shared tables, every tenant schema and every tenant database to
//! the newest tenant migration.
//!
//! What must hold:
//! - **Bounded parallelism**: at most `parallelism` tenants migrate at once.
//! - **A ledger per placement**, written in the same transaction as the DDL it records (the
//!   control database's `tenantry.migrations` for shared tables and schemas; each tenant
//!   database's own for itself). A crash loses nothing and repeats nothing: a re-run applies
//!   exactly what the ledgers lack.
//! - **One tenant's failure is reported and does not stop the others.**
//! - **A fast no-op**: the catalog's `schema_version` summarises each tenant, so when every
//!   tenant is current the whole run is two queries, with no per-tenant round trips.

use futures_util::StreamExt;

use super::migrate::{apply_in, grants_sql, steps};
use super::provision::{admin_config_pub, prepare_tenant_database};
use crate::db::{Database, DbError, CONTROL_SCHEMA};
use crate::placement::Isolation;
use crate::tenant::Slug;

/// How to run.
#[derive(Debug, Clone)]
pub struct MigrateOptions {
    /// Tenants migrated at once.
    pub parallelism: usize,
    /// Report what would run, change nothing.
    pub dry_run: bool,
}

impl Default for MigrateOptions {
    fn default() -> Self {
        Self {
            parallelism: 4,
            dry_run: false,
        }
    }
}

/// One tenant's outcome.
#[derive(Debug, Clone)]
pub struct TenantOutcome {
    pub tenant: Slug,
    pub isolation: Isolation,
    /// Versions applied (or, in a dry run, that would be).
    pub applied: Vec<i32>,
    pub error: Option<String>,
}

/// Progress, reported after each tenant.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    pub done: usize,
    pub total: usize,
    pub failed: usize,
}

/// What a run did.
#[derive(Debug, Clone, Default)]
pub struct FleetReport {
    pub latest: i32,
    /// Versions applied to the shared tables.
    pub shared_applied: Vec<i32>,
    /// Tenants that needed work (and what happened to each).
    pub tenants: Vec<TenantOutcome>,
}

impl FleetReport {
    pub fn failed(&self) -> impl Iterator<Item = &TenantOutcome> {
        self.tenants.iter().filter(|t| t.error.is_some())
    }

    pub fn succeeded(&self) -> usize {
        self.tenants.iter().filter(|t| t.error.is_none()).count()
    }
}

struct Pending {
    slug: Slug,
    isolation: Isolation,
    server: Option<String>,
    storage: String,
    version: i32,
}

/// Migrates the fleet. `progress` is called after each tenant.
pub async fn migrate(
    db: &Database,
    opts: &MigrateOptions,
    progress: impl Fn(Progress) + Send + Sync,
) -> Result<FleetReport, DbError> {
    let latest = db.latest_version();
    let mut report = FleetReport {
        latest,
        ..FleetReport::default()
    };
    // Shared tables: one ledger query when current.
    {
        let mut client = db.control().get().await?;
        let tx = client.transaction().await?;
        tx.execute(
            "SELECT pg_advisory_xact_lock($1)",
            &[&super::migrate::LOCK_KEY],
        )
        .await?;
        if opts.dry_run {
            let applied: Vec<i32> = tx
                .query(
                    &format!(
                        "SELECT version FROM {CONTROL_SCHEMA}.migrations WHERE scope = 'shared'"
                    ),
                    &[],
                )
                .await?
                .iter()
                .map(|r| r.get(0))
                .collect();
            report.shared_applied = db
                .migrations()
                .iter()
                .map(|m| m.version)
                .filter(|v| !applied.contains(v))
                .collect();
        } else {
            report.shared_applied = apply_in(
                &tx,
                db.roles(),
                "shared",
                crate::db::SHARED_SCHEMA,
                &steps(db.migrations()),
                true,
            )
            .await?;
            if !report.shared_applied.is_empty() {
                tx.batch_execute(&grants_sql(db.roles(), crate::db::SHARED_SCHEMA))
                    .await?;
            }
            tx.execute(
                &format!(
                    "UPDATE {CONTROL_SCHEMA}.tenants SET schema_version = $1
                     WHERE isolation = 'shared' AND schema_version < $1"
                ),
                &[&latest],
            )
            .await?;
        }
        tx.commit().await?;
    }
    // Everyone else: one query finds who is behind.
    let pending: Vec<Pending> = {
        let client = db.control().get().await?;
        client
            .query(
                &format!(
                    "SELECT slug, isolation, server, storage, schema_version
                     FROM {CONTROL_SCHEMA}.tenants
                     WHERE state = 'ready' AND isolation <> 'shared' AND schema_version < $1
                     ORDER BY slug"
                ),
                &[&latest],
            )
            .await?
            .iter()
            .filter_map(|r| {
                Some(Pending {
                    slug: Slug::parse(r.get(0)).ok()?,
                    isolation: Isolation::parse(r.get(1))?,
                    server: r.get(2),
                    storage: r.get::<_, Option<String>>(3)?,
                    version: r.get(4),
                })
            })
            .collect()
    };
    let total = pending.len();
    let done = std::sync::atomic::AtomicUsize::new(0);
    let failed = std::sync::atomic::AtomicUsize::new(0);
    let progress = &progress;
    let outcomes: Vec<TenantOutcome> = futures_util::stream::iter(pending)
        .map(|p| {
            let done = &done;
            let failed = &failed;
            async move {
                let result = if opts.dry_run {
                    Ok(db
                        .migrations()
                        .iter()
                        .map(|m| m.version)
                        .filter(|v| *v > p.version)
                        .collect())
                } else {
                    migrate_one(db, &p, latest).await
                };
                let outcome = match result {
                    Ok(applied) => TenantOutcome {
                        tenant: p.slug.clone(),
                        isolation: p.isolation,
                        applied,
                        error: None,
                    },
                    Err(e) => {
                        failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        tracing::warn!(tenant = %p.slug, error = %e, "tenant migration failed");
                        TenantOutcome {
                            tenant: p.slug.clone(),
                            isolation: p.isolation,
                            applied: Vec::new(),
                            error: Some(e.to_string()),
                        }
                    }
                };
                let n = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                progress(Progress {
                    done: n,
                    total,
                    failed: failed.load(std::sync::atomic::Ordering::Relaxed),
                });
                outcome
            }
        })
        .buffer_unordered(opts.parallelism.max(1))
        .collect()
        .await;
    report.tenants = outcomes;
    report.tenants.sort_by(|a, b| a.tenant.cmp(&b.tenant));
    Ok(report)
}

async fn migrate_one(db: &Database, p: &Pending, latest: i32) -> Result<Vec<i32>, DbError> {
    match p.isolation {
        Isolation::Schema => {
            // DDL, ledger and catalog summary commit together.
            let mut client = db.control().get().await?;
            let tx = client.transaction().await?;
            let scope = format!("schema:{}", p.storage);
            let applied = apply_in(
                &tx,
                db.roles(),
                &scope,
                &p.storage,
                &steps(db.migrations()),
                true,
            )
            .await?;
            tx.batch_execute(&grants_sql(db.roles(), &p.storage))
                .await?;
            tx.execute(
                &format!("UPDATE {CONTROL_SCHEMA}.tenants SET schema_version = $2 WHERE slug = $1"),
                &[&p.slug.as_str(), &latest],
            )
            .await?;
            tx.commit().await?;
            Ok(applied)
        }
        Isolation::Database => {
            let server = p
                .server
                .as_deref()
                .unwrap_or(crate::placement::DEFAULT_SERVER);
            let mut cfg = admin_config_pub(db, server).await?;
            cfg.dbname(&p.storage);
            let (mut client, conn) = cfg.connect(tokio_postgres::NoTls).await?;
            tokio::spawn(conn);
            // The tenant database's own ledger commits with its DDL; the catalog summary
            // follows. A crash between the two only makes the next run re-check this tenant.
            let applied = prepare_tenant_database(&mut client, db).await?;
            let control = db.control().get().await?;
            control
                .execute(
                    &format!(
                        "UPDATE {CONTROL_SCHEMA}.tenants SET schema_version = $2 WHERE slug = $1"
                    ),
                    &[&p.slug.as_str(), &latest],
                )
                .await?;
            Ok(applied)
        }
        Isolation::Shared => Ok(Vec::new()),
    }
}
