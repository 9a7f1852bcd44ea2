//! Moving a tenant between placements (any pair, and between database servers) while it is
//! served.
//!
//! This is the copy path, which every server supports ("copy and catch-up"): the tenant's rows
//! are copied as of one snapshot while it is served, then, under its write fence (a trigger on
//! the source's tables, `db/control/fence.rs`), only what changed since is copied again, so its
//! writes wait for the catch-up, not for the whole copy. Its reads go on throughout. The
//! phases:
//!
//! 1. **preparing**: the target storage is made (idempotently) and the fence installed on the
//!    source's tables.
//! 2. **copying**: the tenant's rows in the target are cleared (what an earlier, interrupted
//!    attempt left) and every table is copied, parents first, from one `REPEATABLE READ`
//!    snapshot, into one target transaction; the tenant's writes go on.
//! 3. **catching-up**: with the fence held in the source (running writes finish first, new ones
//!    wait), each table's rows are compared by key and a hash of their values: rows gone since
//!    the snapshot are deleted in the target, rows new or changed are copied again.
//! 4. **verifying**: per table, the row count and an order-independent checksum of the rows
//!    must be equal on both sides; otherwise the move fails and nothing changed.
//! 5. **flipping**: the target commits; the source marks the tenant moved out (from then on the
//!    fence refuses its writes there, and the server retries them) and the catalog records the
//!    new placement, telling every node. Where the source is in the control database, both
//!    happen in one commit.
//! 6. **cleaning**: after a grace period in which every node sees the flip, the old storage is
//!    removed.
//!
//! A crash before the flip leaves the tenant where it was (the target's uncommitted rows are
//! gone, the fence lock with the session); running the move again finishes it. A crash between
//! the source's marker and the catalog (a database source only) leaves the tenant's writes
//! refused until the move is run again, which then completes the flip.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::fence;
use super::provision::{create_storage, drop_storage};
use super::roles::quote_ident;
use super::tenant_rows::{act_for, catch_up, copy_rows, fingerprint, open, tables, Side};
use crate::catalog::{record_move, Catalog, CatalogError};
use crate::db::DbError;
use crate::placement::{Isolation, Placement};
use crate::tenant::{Slug, StorageState, Tenant};
use tokio_postgres::IsolationLevel;

/// Where a tenant is to go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MoveTarget {
    pub isolation: Isolation,
    /// For `database`: a registered server (default: the control plane's own).
    pub server: Option<String>,
}

/// A phase of a move, for progress reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Preparing,
    Copying,
    CatchingUp,
    Verifying,
    Flipping,
    Cleaning,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Preparing => "preparing",
            Phase::Copying => "copying",
            Phase::CatchingUp => "catching-up",
            Phase::Verifying => "verifying",
            Phase::Flipping => "flipping",
            Phase::Cleaning => "cleaning",
        }
    }
}

/// What a finished move did.
#[derive(Debug, Clone)]
pub struct MoveReport {
    /// The tenant in its new placement.
    pub tenant: Tenant,
    pub from: Placement,
    /// Rows copied, over every table.
    pub rows: u64,
    /// How long the tenant's writes were held (the fence, from taken to released).
    pub write_hold: Duration,
    /// How it copied: `copy and catch-up` (a snapshot copy, then the difference under the
    /// write fence).
    pub method: &'static str,
}

impl MoveReport {
    /// One line for an operator: from where to where, how many rows, how, and the write hold.
    pub fn summary(&self) -> String {
        format!(
            "moved from {} to {}: {} rows by {}, writes held {} ms",
            self.from.isolation().as_str(),
            self.tenant.isolation.as_str(),
            self.rows,
            self.method,
            self.write_hold.as_millis()
        )
    }
}

/// Why a move failed. Unless it says otherwise, the tenant is where it was.
#[derive(Debug, thiserror::Error)]
pub enum MoveError {
    #[error("no such tenant")]
    TenantNotFound,
    #[error("tenant {0} is not ready (being created or deleted)")]
    NotReady(Slug),
    #[error("the tenant is already in that placement")]
    AlreadyThere,
    #[error("the target server is the source's own database under another name")]
    SameStorage,
    #[error("cancelled before the flip; the tenant stays where it was")]
    Cancelled,
    #[error("unknown database server {0:?}")]
    UnknownServer(String),
    #[error(
        "the tenant's storage is at schema version {tenant}, behind the deployment's {latest}; \
         run the fleet migration first"
    )]
    Behind { tenant: i32, latest: i32 },
    #[error("the move cannot go on: {0}; the tenant stays where it was")]
    Mismatch(String),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<tokio_postgres::Error> for MoveError {
    fn from(e: tokio_postgres::Error) -> Self {
        MoveError::Db(e.into())
    }
}

/// How long the old storage is kept after the flip, so that every node has seen the new
/// placement (the catalog cache's bound on a missed notification) before it goes.
pub const GRACE: Duration = Duration::from_secs(10);

/// Moves `slug` to `target`, reporting each phase and the fraction done. `grace` is how long
/// the old storage is kept after the flip ([`GRACE`] by default). `proceed` is asked before
/// the copy, after each table and before the flip whether the move may go on: `false` cancels
/// it (the tenant stays where it was); its answer for [`Phase::Flipping`] is final, so a
/// cancellation is either seen there or too late.
pub async fn relocate<Go: std::future::Future<Output = bool>>(
    catalog: &Catalog,
    slug: &Slug,
    target: &MoveTarget,
    grace: Duration,
    progress: impl Fn(Phase, f32),
    proceed: impl Fn(Phase) -> Go,
) -> Result<MoveReport, MoveError> {
    let db = catalog.database();
    progress(Phase::Preparing, 0.0);
    let tenant = catalog
        .get_tenant(slug)
        .await?
        .ok_or(MoveError::TenantNotFound)?;
    if tenant.storage_state != StorageState::Ready {
        return Err(MoveError::NotReady(tenant.slug));
    }
    if tenant.schema_version < db.latest_version() {
        return Err(MoveError::Behind {
            tenant: tenant.schema_version,
            latest: db.latest_version(),
        });
    }
    let new = crate::lifecycle::placement_for(
        db,
        &crate::catalog::NewTenant {
            slug: tenant.slug.clone(),
            name: tenant.name.clone(),
            plan: tenant.plan.clone(),
            isolation: target.isolation,
            server: target.server.clone(),
        },
    )
    .await
    .map_err(|e| match e {
        CatalogError::Db(DbError::Config(_)) => {
            MoveError::UnknownServer(target.server.clone().unwrap_or_default())
        }
        e => e.into(),
    })?;
    if new == tenant.placement {
        return Err(MoveError::AlreadyThere);
    }
    let version = create_storage(db, &tenant.slug, &new).await?;

    // Set once the target is known to be apart from the source, and once its copy commits:
    // a move that fails in between removes the target storage it made.
    let apart = AtomicBool::new(false);
    let committing = AtomicBool::new(false);
    let outcome = async {
        let source_in_control = !matches!(tenant.placement, Placement::Database { .. });
        // The fence on the source's tables, in a commit of its own (it locks each table briefly).
        let (mut source_conn, source_schema) = open(db, &tenant.placement).await?;
        {
            let tx = source_conn.client().transaction().await?;
            fence::install(&tx, db.roles(), &source_schema).await?;
            tx.commit().await?;
        }

        progress(Phase::Copying, 0.05);
        let (mut target_conn, target_schema) = open(db, &new).await?;
        // The snapshot copy: every row as of one snapshot, while the tenant's writes go on.
        let snapshot = source_conn
            .client()
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await?;
        act_for(&snapshot, db, tenant.id.as_str()).await?;
        let target_tx = target_conn.client().transaction().await?;
        act_for(&target_tx, db, tenant.id.as_str()).await?;
        if matches!(new, Placement::Database { .. }) && !source_in_control {
            // Two server names for one PostgreSQL would make the target the source itself. A
            // lock the source holds is visible in the target only if it is the same database
            // (advisory locks are per database).
            snapshot
                .execute(
                    "SELECT pg_advisory_xact_lock($1, hashtext($2))",
                    &[&(fence::FENCE_LOCK + 1), &tenant.id.as_str()],
                )
                .await?;
            let separate: bool = target_tx
                .query_one(
                    "SELECT pg_try_advisory_xact_lock_shared($1, hashtext($2))",
                    &[&(fence::FENCE_LOCK + 1), &tenant.id.as_str()],
                )
                .await?
                .get(0);
            if !separate {
                return Err(MoveError::SameStorage);
            }
        }
        apart.store(true, Ordering::Relaxed);
        let source_tables = tables(&snapshot, &source_schema).await?;
        let target_tables = tables(&target_tx, &target_schema).await?;
        // What an interrupted attempt left in the target, children first.
        for table in target_tables.iter().rev() {
            target_tx
                .execute(
                    &format!(
                        "DELETE FROM {}.{} WHERE tenant_id = $1",
                        quote_ident(&target_schema),
                        quote_ident(&table.name)
                    ),
                    &[&tenant.id.as_str()],
                )
                .await?;
        }
        fence::clear_moved(&target_tx, tenant.id.as_str(), &target_schema).await?;
        for (i, table) in source_tables.iter().enumerate() {
            if !proceed(Phase::Copying).await {
                return Err(MoveError::Cancelled);
            }
            let Some(to) = target_tables.iter().find(|t| t.name == table.name) else {
                return Err(MoveError::Mismatch(format!(
                    "table {} has no counterpart in the target",
                    table.name
                )));
            };
            if table.columns != to.columns {
                return Err(MoveError::Mismatch(format!(
                    "table {} has other columns in the target",
                    table.name
                )));
            }
            copy_rows(
                Side::new(&snapshot, &source_schema, &tenant.id),
                Side::new(&target_tx, &target_schema, &tenant.id),
                &table.name,
                &table.columns,
            )
            .await?;
            progress(
                Phase::Copying,
                0.05 + 0.7 * (i + 1) as f32 / source_tables.len().max(1) as f32,
            );
        }
        snapshot.commit().await?;

        // The catch-up, under the fence: what changed since the snapshot.
        progress(Phase::CatchingUp, 0.75);
        let source_tx = source_conn.client().transaction().await?;
        act_for(&source_tx, db, tenant.id.as_str()).await?;
        fence::hold(&source_tx, tenant.id.as_str()).await?;
        let held = std::time::Instant::now();
        catch_up(
            Side::new(&source_tx, &source_schema, &tenant.id),
            Side::new(&target_tx, &target_schema, &tenant.id),
            &source_tables,
        )
        .await?;

        progress(Phase::Verifying, 0.8);
        let mut rows = 0u64;
        let source = Side::new(&source_tx, &source_schema, &tenant.id);
        let dest = Side::new(&target_tx, &target_schema, &tenant.id);
        for table in &source_tables {
            let (want, got) = tokio::try_join!(
                fingerprint(&source, &table.name, &table.columns),
                fingerprint(&dest, &table.name, &table.columns)
            )?;
            if want != got {
                return Err(MoveError::Mismatch(format!(
                    "table {}: {} rows in the source, {} in the target, or their checksums differ",
                    table.name, want.0, got.0
                )));
            }
            rows += want.0 as u64;
        }

        if !proceed(Phase::Flipping).await {
            return Err(MoveError::Cancelled);
        }
        progress(Phase::Flipping, 0.9);
        // The catalog is changed (uncommitted) before the target commits: a tenant that another
        // move has moved meanwhile fails here, with nothing committed. Then the target, then
        // the source's marker, then the catalog; where the source is in the control database,
        // the marker and the catalog are one commit.
        fence::mark_moved(&source_tx, tenant.id.as_str(), &source_schema).await?;
        if source_in_control {
            source_tx.batch_execute("RESET ROLE").await?;
            record_move(&source_tx, &tenant, &new, version).await?;
            committing.store(true, Ordering::Relaxed);
            target_tx.commit().await?;
            source_tx.commit().await?;
        } else {
            let mut control = db.control().get().await.map_err(DbError::from)?;
            let tx = control.transaction().await?;
            record_move(&tx, &tenant, &new, version).await?;
            committing.store(true, Ordering::Relaxed);
            target_tx.commit().await?;
            source_tx.commit().await?;
            tx.commit().await?;
        }
        let write_hold = held.elapsed();
        drop(source_conn);
        drop(target_conn);
        Ok::<_, MoveError>((rows, write_hold))
    }
    .await;
    let (rows, write_hold) = match outcome {
        Ok(done) => done,
        Err(e) => {
            if apart.load(Ordering::Relaxed)
                && !committing.load(Ordering::Relaxed)
                && new != Placement::Shared
            {
                let mut made = tenant.clone();
                made.placement = new.clone();
                if let Err(c) = drop_storage(db, &made).await {
                    tracing::warn!(tenant = %tenant.slug, error = %c, "could not remove a failed move's target");
                }
            }
            return Err(e);
        }
    };
    catalog.invalidate_tenant(&tenant.slug).await;

    progress(Phase::Cleaning, 0.95);
    tokio::time::sleep(grace).await;
    drop_storage(db, &tenant).await?;
    let moved = catalog
        .get_tenant(slug)
        .await?
        .ok_or(MoveError::TenantNotFound)?;
    progress(Phase::Cleaning, 1.0);
    Ok(MoveReport {
        tenant: moved,
        from: tenant.placement,
        rows,
        write_hold,
        method: "copy and catch-up",
    })
}

/// What a drain did.
#[derive(Debug, Clone, Default)]
pub struct DrainReport {
    pub from: String,
    pub to: String,
    /// Database tenants that were on the server.
    pub total: usize,
    pub moved: usize,
    /// Tenants that could not be moved, and why (they stay where they were).
    pub failed: Vec<(Slug, String)>,
    /// Whether a cancellation stopped it.
    pub cancelled: bool,
}

impl DrainReport {
    /// One line for an operator.
    pub fn summary(&self) -> String {
        let failed: Vec<String> = self
            .failed
            .iter()
            .map(|(slug, e)| format!("{slug}: {e}"))
            .collect();
        format!(
            "{} of {} database tenants moved from {} to {}, {} failed{}{}{}",
            self.moved,
            self.total,
            self.from,
            self.to,
            failed.len(),
            if failed.is_empty() { "" } else { ": " },
            failed.join("; "),
            if self.cancelled { " (cancelled)" } else { "" }
        )
    }
}

/// Moves every database tenant on server `from` to server `to`, one at a time, each as
/// [`relocate`] does. `progress` hears (tenants done, tenants in all) before each; `proceed`
/// steers each move as in [`relocate`], and a cancellation stops the drain. One tenant's
/// failure is reported and the others go on.
pub async fn drain<Go: std::future::Future<Output = bool>>(
    catalog: &Catalog,
    from: &str,
    to: &str,
    grace: Duration,
    progress: impl Fn(usize, usize),
    proceed: impl Fn(Phase) -> Go,
) -> Result<DrainReport, DbError> {
    let mut on_server = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = catalog.list_tenants(500, after.as_deref()).await?;
        let Some(last) = page.last() else { break };
        after = Some(last.slug.as_str().to_owned());
        on_server.extend(page.into_iter().filter(
            |t| matches!(&t.placement, Placement::Database { server, .. } if server == from),
        ));
    }
    let mut report = DrainReport {
        from: from.to_owned(),
        to: to.to_owned(),
        total: on_server.len(),
        ..Default::default()
    };
    let target = MoveTarget {
        isolation: Isolation::Database,
        server: Some(to.to_owned()),
    };
    for (i, tenant) in on_server.iter().enumerate() {
        progress(i, report.total);
        match relocate(catalog, &tenant.slug, &target, grace, |_, _| {}, &proceed).await {
            Ok(_) => report.moved += 1,
            Err(MoveError::Cancelled) => {
                report.cancelled = true;
                break;
            }
            Err(e) => report.failed.push((tenant.slug.clone(), e.to_string())),
        }
    }
    progress(report.moved + report.failed.len(), report.total);
    Ok(report)
}
