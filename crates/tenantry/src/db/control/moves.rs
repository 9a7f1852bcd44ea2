//! Moving a tenant between placements (any pair, and between database servers) while it is
//! served.
//!
//! Two paths. Between two databases whose tenant tables are named alike (shared tables and
//! database tenants), PostgreSQL's logical replication copies the rows and streams the
//! tenant's changes (`db/control/replication.rs`), so writes are held only for moments. Within
//! one database, to or from a schema, or where replication is not available, the rows are
//! copied as of one snapshot and then, under the tenant's write fence (a trigger on the
//! source's tables, `db/control/fence.rs`), only what changed since is copied again ("copy and
//! catch-up"). The report says which path a move took, and why it copied when it did. The
//! phases:
//!
//! 1. **preparing**: only one move of a tenant at a time (a session lock); the target storage
//!    is made (idempotently) and the fence installed on the source's tables.
//! 2. **copying**: what an earlier, interrupted attempt left in the target is removed; then
//!    the subscription copies the tenant's rows, or every table is copied, parents first, from
//!    one `REPEATABLE READ` snapshot into one target transaction. The tenant's writes go on.
//! 3. **catching-up**: replication: the changes made meanwhile arrive (a barrier row shows
//!    when). Copy: with the fence held (running writes finish first, new ones wait), each
//!    table's rows are compared by key and a hash of their values, rows gone since the
//!    snapshot are deleted in the target, rows new or changed are copied again.
//! 4. **verifying**: per table, the row count and an order-independent checksum of the rows
//!    must be equal on both sides, or the move fails and nothing changed. Replication compares
//!    one snapshot of each side taken at one moment (writes held only to take them); copy
//!    compares under the fence.
//! 5. **flipping**: replication: with the fence held, the last changes arrive and the counts
//!    agree, then the subscription stops. Copy: the target commits. Then the source marks the
//!    tenant moved out (from then on the fence refuses its writes there, and the server
//!    retries them) and the catalog records the new placement, telling every node; where the
//!    source is in the control database, both happen in one commit.
//! 6. **cleaning**: after a grace period in which every node sees the flip, the old storage is
//!    removed.
//!
//! A crash before the flip leaves the tenant where it was (the target's rows uncommitted, or
//! replicated into storage nobody reads; the locks gone with the session); running the move
//! again removes what the attempt left and finishes it. A crash between the source's marker
//! and the catalog (a database source only) leaves the tenant's writes refused until the move
//! is run again, which then completes the flip.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::fence;
use super::provision::{create_storage, drop_storage};
use super::replication::Link;
use super::roles::quote_ident;
use super::tenant_rows::{
    act_for, admin_config_for, catch_up, copy_rows, fingerprint, open, tables, Side, Table,
};
use crate::catalog::{record_move, Catalog, CatalogError};
use crate::db::{Database, DbError};
use crate::placement::{Isolation, Placement};
use crate::tenant::{Slug, StorageState, Tenant};
use tokio_postgres::{IsolationLevel, Transaction};

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
    /// How the rows went: [`REPLICATION`] or [`COPY`].
    pub method: &'static str,
    /// Why the move copied rather than replicated, when it did.
    pub why_copied: Option<String>,
}

/// The replication path: PostgreSQL's logical replication copies the rows and streams the
/// tenant's changes; writes wait only for the last changes to arrive.
pub const REPLICATION: &str = "logical replication";
/// The copy path: a snapshot copy, then the difference under the write fence.
pub const COPY: &str = "copy and catch-up";

impl MoveReport {
    /// One line for an operator: from where to where, how many rows, how, and the write hold.
    pub fn summary(&self) -> String {
        format!(
            "moved from {} to {}: {} rows by {}{}, writes held {} ms",
            self.from.isolation().as_str(),
            self.tenant.isolation.as_str(),
            self.rows,
            self.method,
            self.why_copied
                .as_ref()
                .map(|why| format!(" ({why})"))
                .unwrap_or_default(),
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
    #[error("another move of tenant {0} is under way")]
    Busy(Slug),
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
/// the copy, while it runs and before the flip whether the move may go on: `false` cancels it
/// (the tenant stays where it was); its answer for [`Phase::Flipping`] is final, so a
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
    let found = catalog
        .get_tenant(slug)
        .await?
        .ok_or(MoveError::TenantNotFound)?;
    // One move of a tenant at a time (they would share its replication objects): a session
    // lock on a connection of the move's own, released when the move ends or its process dies.
    let _lock = move_lock(db, &found).await?;
    // Read again under the lock: a move that held it may have moved the tenant.
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
    if tenant.placement != Placement::Shared {
        // Rows an interrupted move into the shared tables left there (nobody reads them: the
        // tenant is elsewhere).
        let mut left = tenant.clone();
        left.placement = Placement::Shared;
        drop_storage(db, &left).await?;
    }
    let version = create_storage(db, &tenant.slug, &new).await?;

    let mv = Move {
        db,
        tenant: &tenant,
        new: &new,
        version,
        apart: AtomicBool::new(false),
        committing: AtomicBool::new(false),
    };
    let outcome = async {
        // The fence on the source's tables, in a commit of its own (it locks each table briefly).
        let (mut source_conn, source_schema) = open(db, &tenant.placement).await?;
        let source_tables = {
            let tx = source_conn.client().transaction().await?;
            fence::install(&tx, db.roles(), &source_schema).await?;
            let found = tables(&tx, &source_schema).await?;
            tx.commit().await?;
            found
        };
        let (mut target_conn, target_schema) = open(db, &new).await?;
        {
            let tx = target_conn.client().transaction().await?;
            let target_tables = tables(&tx, &target_schema).await?;
            tx.commit().await?;
            for table in &source_tables {
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
            }
        }
        progress(Phase::Copying, 0.05);
        let opened = Link::open(
            db,
            &tenant.id,
            (&tenant.placement, admin_config_for(db, &tenant.placement).await?),
            (&new, admin_config_for(db, &new).await?),
            &source_schema,
            &source_tables,
        )
        .await;
        let why_copied = match opened {
            Ok(link) => {
                mv.apart.store(true, Ordering::Relaxed);
                let replicated = mv
                    .by_replication(&link, &mut source_conn, &source_tables, &progress, &proceed)
                    .await;
                match replicated {
                    Ok(done) => {
                        if let Err(e) = link.forget().await {
                            tracing::warn!(tenant = %tenant.slug, error = %e, "could not remove a finished move's replication");
                        }
                        return Ok((done.0, done.1, None));
                    }
                    Err(e) => {
                        link.forget().await?;
                        match e {
                            Stopped::Fallback(reason) => {
                                tracing::info!(tenant = %tenant.slug, %reason, "logical replication failed; copying instead");
                                format!("logical replication failed: {reason}")
                            }
                            Stopped::Failed(e) => return Err(e),
                        }
                    }
                }
            }
            Err(reason) => reason,
        };
        let (rows, hold) = mv
            .by_copy(
                &mut source_conn,
                &source_schema,
                &mut target_conn,
                &target_schema,
                &source_tables,
                &progress,
                &proceed,
            )
            .await?;
        Ok::<_, MoveError>((rows, hold, Some(why_copied)))
    }
    .await;
    let (rows, write_hold, why_copied) = match outcome {
        Ok(done) => done,
        Err(e) => {
            if mv.apart.load(Ordering::Relaxed) && !mv.committing.load(Ordering::Relaxed) {
                // What the move made: its storage, or its rows in the shared tables (which
                // replication commits as it goes).
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
        method: if why_copied.is_some() {
            COPY
        } else {
            REPLICATION
        },
        why_copied,
    })
}

/// The lock that keeps a tenant to one move at a time, on a connection of its own: `Busy` if
/// another move holds it.
async fn move_lock(db: &Database, tenant: &Tenant) -> Result<tokio_postgres::Client, MoveError> {
    let (client, conn) = db.control_config().connect(tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "move lock connection ended");
        }
    });
    let mine: bool = client
        .query_one(
            "SELECT pg_try_advisory_lock($1, hashtext($2))",
            &[&(fence::FENCE_LOCK + 2), &tenant.id.as_str()],
        )
        .await?
        .get(0);
    if !mine {
        return Err(MoveError::Busy(tenant.slug.clone()));
    }
    Ok(client)
}

/// Why the replication path stopped: the move either copies instead or fails.
enum Stopped {
    Fallback(String),
    Failed(MoveError),
}

impl<E: Into<MoveError>> From<E> for Stopped {
    fn from(e: E) -> Self {
        Stopped::Failed(e.into())
    }
}

/// One move under way: the tenant, where it goes, and what the failure path must know.
struct Move<'a> {
    db: &'a Database,
    tenant: &'a Tenant,
    new: &'a Placement,
    version: i32,
    /// Set once the target is known to be apart from the source: a move that fails after
    /// this and before `committing` removes what it made in the target.
    apart: AtomicBool,
    committing: AtomicBool,
}

impl Move<'_> {
    /// The replication path: the subscription copies and streams while the tenant is served,
    /// the rows are verified at one moment of both sides (writes held only to take it), and
    /// the flip holds writes only until the last changes have arrived.
    async fn by_replication<Go: std::future::Future<Output = bool>>(
        &self,
        link: &Link,
        source_conn: &mut super::tenant_rows::Conn,
        tables: &[Table],
        progress: &impl Fn(Phase, f32),
        proceed: &impl Fn(Phase) -> Go,
    ) -> Result<(u64, Duration), Stopped> {
        let (db, id) = (self.db, self.tenant.id.as_str());
        link.forget().await?;
        link.clear_target(tables).await?;
        let totals: Vec<(String, i64)> = link
            .counts(tables)
            .await?
            .into_iter()
            .zip(tables)
            .map(|((source, _), t)| (t.name.clone(), source))
            .collect();
        let total: i64 = totals.iter().map(|t| t.1).sum();
        link.start(tables)
            .await
            .map_err(|e| Stopped::Fallback(e.to_string()))?;
        loop {
            if !proceed(Phase::Copying).await {
                return Err(Stopped::Failed(MoveError::Cancelled));
            }
            let (done, rows) = link.copied(&totals).await.map_err(Stopped::Fallback)?;
            progress(
                Phase::Copying,
                0.05 + 0.7 * rows as f32 / total.max(1) as f32,
            );
            if done {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        progress(Phase::CatchingUp, 0.75);
        link.barrier(Duration::from_secs(60))
            .await
            .map_err(Stopped::Fallback)?;

        // Verification, at one moment of both sides: with the tenant's writes held, the last
        // changes arrive and a snapshot is taken on each side; then writes go on while the
        // two snapshots are compared.
        progress(Phase::Verifying, 0.8);
        let (mut source_snap, mut target_snap) = link.snapshot_connections().await?;
        let fence_tx = source_conn.client().transaction().await?;
        act_for(&fence_tx, db, id).await?;
        fence::hold(&fence_tx, id).await?;
        let held = Instant::now();
        let caught_up = link.barrier(HOLD_BOUND).await;
        let snapshots = async {
            let a = begin_snapshot(&mut source_snap, db, id).await?;
            let b = begin_snapshot(&mut target_snap, db, id).await?;
            Ok::<_, DbError>((a, b))
        };
        let snapshots = match caught_up {
            Ok(_) => snapshots.await,
            Err(e) => {
                fence_tx.rollback().await?;
                return Err(Stopped::Fallback(e));
            }
        };
        fence_tx.rollback().await?;
        let first_hold = held.elapsed();
        let (source_view, target_view) = snapshots?;
        let schema = link.schema();
        let rows = {
            let mut rows = 0u64;
            let source = Side::new(&source_view, &schema, &self.tenant.id);
            let target = Side::new(&target_view, &schema, &self.tenant.id);
            for table in tables {
                let (want, got) = tokio::try_join!(
                    fingerprint(&source, &table.name, &table.columns),
                    fingerprint(&target, &table.name, &table.columns)
                )?;
                if want != got {
                    return Err(Stopped::Failed(MoveError::Mismatch(format!(
                    "table {}: {} rows in the source, {} in the target, or their checksums differ",
                    table.name, want.0, got.0
                ))));
                }
                rows += want.0 as u64;
            }
            rows
        };
        drop((source_view, target_view));

        if !proceed(Phase::Flipping).await {
            return Err(Stopped::Failed(MoveError::Cancelled));
        }
        progress(Phase::Flipping, 0.9);
        let fence_tx = source_conn.client().transaction().await?;
        act_for(&fence_tx, db, id).await?;
        fence::hold(&fence_tx, id).await?;
        let held = Instant::now();
        // Everything committed since the verified moment has arrived, and no row is missing or
        // extra in any table.
        link.barrier(HOLD_BOUND)
            .await
            .map_err(|e| Stopped::Failed(MoveError::Mismatch(e)))?;
        for (table, (source, target)) in tables.iter().zip(link.counts(tables).await?) {
            if source != target {
                return Err(Stopped::Failed(MoveError::Mismatch(format!(
                    "table {}: {source} rows in the source, {target} in the target at the flip",
                    table.name
                ))));
            }
        }
        link.pause().await?;
        self.flip(fence_tx, None, &link.schema()).await?;
        Ok((rows, first_hold.max(held.elapsed())))
    }

    /// The copy path: a snapshot copy while the tenant is served, then the difference under
    /// the write fence, verified before the flip.
    #[allow(clippy::too_many_arguments)]
    async fn by_copy<Go: std::future::Future<Output = bool>>(
        &self,
        source_conn: &mut super::tenant_rows::Conn,
        source_schema: &str,
        target_conn: &mut super::tenant_rows::Conn,
        target_schema: &str,
        source_tables: &[Table],
        progress: &impl Fn(Phase, f32),
        proceed: &impl Fn(Phase) -> Go,
    ) -> Result<(u64, Duration), MoveError> {
        let (db, tenant, new) = (self.db, self.tenant, self.new);
        let source_in_control = !matches!(tenant.placement, Placement::Database { .. });
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
        self.apart.store(true, Ordering::Relaxed);
        // What an interrupted attempt left in the target, children first.
        for table in source_tables.iter().rev() {
            target_tx
                .execute(
                    &format!(
                        "DELETE FROM {}.{} WHERE tenant_id = $1",
                        quote_ident(target_schema),
                        quote_ident(&table.name)
                    ),
                    &[&tenant.id.as_str()],
                )
                .await?;
        }
        fence::clear_moved(&target_tx, tenant.id.as_str(), target_schema).await?;
        for (i, table) in source_tables.iter().enumerate() {
            if !proceed(Phase::Copying).await {
                return Err(MoveError::Cancelled);
            }
            copy_rows(
                Side::new(&snapshot, source_schema, &tenant.id),
                Side::new(&target_tx, target_schema, &tenant.id),
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
        let held = Instant::now();
        catch_up(
            Side::new(&source_tx, source_schema, &tenant.id),
            Side::new(&target_tx, target_schema, &tenant.id),
            source_tables,
        )
        .await?;

        progress(Phase::Verifying, 0.8);
        let mut rows = 0u64;
        let source = Side::new(&source_tx, source_schema, &tenant.id);
        let dest = Side::new(&target_tx, target_schema, &tenant.id);
        for table in source_tables {
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
        self.flip(source_tx, Some(target_tx), source_schema).await?;
        Ok((rows, held.elapsed()))
    }

    /// The flip, with the fence held in `source_tx`. The catalog is changed (uncommitted)
    /// before the target commits: a tenant that moved or went meanwhile fails here, with
    /// nothing committed. Then the target (where its rows are still uncommitted), then the
    /// source's marker, then the catalog; where the source is in the control database, the
    /// marker and the catalog are one commit.
    async fn flip(
        &self,
        source_tx: Transaction<'_>,
        target_tx: Option<Transaction<'_>>,
        source_schema: &str,
    ) -> Result<(), MoveError> {
        let (tenant, new) = (self.tenant, self.new);
        fence::mark_moved(&source_tx, tenant.id.as_str(), source_schema).await?;
        let commit_target = async {
            if let Some(tx) = target_tx {
                tx.commit().await?;
            }
            Ok::<_, tokio_postgres::Error>(())
        };
        if !matches!(tenant.placement, Placement::Database { .. }) {
            source_tx.batch_execute("RESET ROLE").await?;
            record_move(&source_tx, tenant, new, self.version).await?;
            self.committing.store(true, Ordering::Relaxed);
            commit_target.await?;
            source_tx.commit().await?;
        } else {
            let mut control = self.db.control().get().await.map_err(DbError::from)?;
            let tx = control.transaction().await?;
            record_move(&tx, tenant, new, self.version).await?;
            self.committing.store(true, Ordering::Relaxed);
            commit_target.await?;
            source_tx.commit().await?;
            tx.commit().await?;
        }
        Ok(())
    }
}

/// The longest the flip holds the tenant's writes waiting for the last changes to arrive;
/// past it the move gives up and the writes go on where they were.
const HOLD_BOUND: Duration = Duration::from_secs(5);

/// A read-only `REPEATABLE READ` transaction on `client` acting for the tenant, its snapshot
/// taken now.
async fn begin_snapshot<'c>(
    client: &'c mut tokio_postgres::Client,
    db: &Database,
    tenant: &str,
) -> Result<Transaction<'c>, DbError> {
    let tx = client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?;
    act_for(&tx, db, tenant).await?;
    tx.batch_execute("SELECT 1").await?;
    Ok(tx)
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
