//! Long-running admin operations (fleet migrations, backups, restores) and their progress, kept
//! in the catalog so any node can answer `GET /admin/v1/operations/{id}`, and a backup's
//! archive, kept there too so any node can serve it.

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use std::path::PathBuf;

use bytes::Bytes;

use crate::audit::Actor;
use crate::catalog::{Catalog, CatalogError, NewTenant};
use crate::db::archive::{self, ArchiveError};
use crate::db::fleet::{self, MigrateOptions};
use crate::db::moves::{self, MoveTarget};
use crate::db::{Database, DbError};
use crate::tenant::Slug;

/// An operation as the admin plane shows it.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Operation {
    pub id: Uuid,
    pub kind: String,
    pub tenant: Option<String>,
    pub state: String,
    /// What a running operation is doing now (`archiving`, `storing`, `restoring`, ...).
    pub phase: String,
    pub progress: f32,
    pub detail: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

const COLS: &str = "id, kind, tenant_id, state, progress, detail, created_at, updated_at, phase";

fn from_row(r: &tokio_postgres::Row) -> Operation {
    Operation {
        id: r.get(0),
        kind: r.get(1),
        tenant: r.get(2),
        state: r.get(3),
        progress: r.get(4),
        detail: r.get(5),
        created_at: r.get(6),
        updated_at: r.get(7),
        phase: r.get(8),
    }
}

pub async fn get(db: &Database, id: Uuid) -> Result<Option<Operation>, DbError> {
    let c = db.control().get().await?;
    let row = c
        .query_opt(
            &format!("SELECT {COLS} FROM tenantry.operations WHERE id = $1"),
            &[&id],
        )
        .await?;
    Ok(row.as_ref().map(from_row))
}

async fn update(db: &Database, id: Uuid, state: &str, progress: f32, detail: &str) {
    set_phase(db, id, state, "", progress, detail).await
}

async fn set_phase(db: &Database, id: Uuid, state: &str, phase: &str, progress: f32, detail: &str) {
    let r = async {
        let c = db.control().get().await?;
        c.execute(
            "UPDATE tenantry.operations
             SET state = $2, phase = $3, progress = $4, detail = $5, updated_at = now()
             WHERE id = $1",
            &[&id, &state, &phase, &progress, &detail],
        )
        .await?;
        Ok::<_, DbError>(())
    }
    .await;
    if let Err(e) = r {
        tracing::warn!(operation = %id, error = %e, "could not record operation progress");
    }
}

/// Starts a fleet migration in the background and returns its operation at once.
pub async fn start_migration(db: &Database, opts: MigrateOptions) -> Result<Operation, DbError> {
    let id = Uuid::now_v7();
    let c = db.control().get().await?;
    let row = c
        .query_one(
            &format!(
                "INSERT INTO tenantry.operations (id, kind, state) VALUES ($1, 'migrate', 'queued')
                 RETURNING {COLS}"
            ),
            &[&id],
        )
        .await?;
    let op = from_row(&row);
    let db = db.clone();
    tokio::spawn(async move {
        update(&db, id, "running", 0.0, "").await;
        let last = std::sync::Mutex::new(std::time::Instant::now());
        let progress_db = db.clone();
        let result = fleet::migrate(&db, &opts, |p| {
            // Progress rows are throttled: one write per 200 ms at most.
            let mut last = last.lock().unwrap_or_else(|e| e.into_inner());
            if last.elapsed() >= std::time::Duration::from_millis(200) || p.done == p.total {
                *last = std::time::Instant::now();
                let db = progress_db.clone();
                let frac = if p.total == 0 {
                    1.0
                } else {
                    p.done as f32 / p.total as f32
                };
                let detail = format!("{}/{} tenants, {} failed", p.done, p.total, p.failed);
                tokio::spawn(async move { update(&db, id, "running", frac, &detail).await });
            }
        })
        .await;
        match result {
            Ok(report) => {
                let failed: Vec<String> = report
                    .failed()
                    .map(|t| format!("{}: {}", t.tenant, t.error.as_deref().unwrap_or("")))
                    .collect();
                let detail = format!(
                    "{} tenants migrated to version {}, {} failed{}{}",
                    report.succeeded(),
                    report.latest,
                    failed.len(),
                    if failed.is_empty() { "" } else { ": " },
                    failed.join("; ")
                );
                let state = if failed.is_empty() {
                    "succeeded"
                } else {
                    "failed"
                };
                // Let throttled progress writes land before the final state.
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                update(&db, id, state, 1.0, &detail).await;
            }
            Err(e) => update(&db, id, "failed", 0.0, &e.to_string()).await,
        }
    });
    Ok(op)
}

/// Archives are kept in the catalog in pieces of this size.
const ARCHIVE_PIECE: usize = 1024 * 1024;

async fn insert(db: &Database, kind: &str, tenant: Option<&str>) -> Result<Operation, DbError> {
    let c = db.control().get().await?;
    let row = c
        .query_one(
            &format!(
                "INSERT INTO tenantry.operations (id, kind, tenant_id, state) VALUES ($1, $2, $3, 'queued')
                 RETURNING {COLS}"
            ),
            &[&Uuid::now_v7(), &kind, &tenant],
        )
        .await?;
    Ok(from_row(&row))
}

/// A scratch file for an archive, removed when dropped.
pub struct ScratchFile(PathBuf);

impl ScratchFile {
    /// A new, empty scratch file's path (the file is made by whoever writes it).
    pub fn new() -> Self {
        Self(std::env::temp_dir().join(format!(
            "tenantry-archive-{}.tenant",
            Uuid::new_v4().simple()
        )))
    }

    pub fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Default for ScratchFile {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for ScratchFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Starts writing `slug`'s archive in the background ([`archive::backup`]); once the operation
/// succeeded, [`archive_pieces`] reads it back. The archive is kept under the tenant's id, so
/// deleting the tenant removes it.
pub async fn start_backup(catalog: &Catalog, slug: &Slug) -> Result<Operation, CatalogError> {
    let tenant = catalog
        .get_tenant(slug)
        .await?
        .ok_or(CatalogError::TenantNotFound)?;
    let db = catalog.database().clone();
    let op = insert(&db, "backup", Some(slug.as_str())).await?;
    let (id, catalog, slug) = (op.id, catalog.clone(), slug.clone());
    tokio::spawn(async move {
        set_phase(&db, id, "running", "archiving", 0.1, "").await;
        let file = ScratchFile::new();
        let result = async {
            let out = std::fs::File::create(file.path()).map_err(ArchiveError::Io)?;
            let manifest = archive::backup(&catalog, &slug, std::io::BufWriter::new(out)).await?;
            set_phase(&db, id, "running", "storing", 0.8, "").await;
            let bytes = store_archive(&db, id, &tenant.id, file.path()).await?;
            let rows: u64 = manifest.tables.iter().map(|t| t.rows).sum();
            Ok::<_, ArchiveError>(format!(
                "{rows} rows in {} tables, {bytes} bytes, schema version {}",
                manifest.tables.len(),
                manifest.schema_version
            ))
        }
        .await;
        match result {
            Ok(detail) => update(&db, id, "succeeded", 1.0, &detail).await,
            Err(e) => update(&db, id, "failed", 0.0, &e.to_string()).await,
        }
    });
    Ok(op)
}

/// Copies the archive at `path` into the catalog, in one transaction that holds the tenant's
/// row: a tenant deleted meanwhile keeps no archive (its deletion removes what is stored, or
/// this finds it no longer ready). Returns the archive's size.
async fn store_archive(
    db: &Database,
    id: Uuid,
    tenant: &crate::TenantId,
    path: &std::path::Path,
) -> Result<u64, ArchiveError> {
    use std::io::Read;
    let mut client = db.control().get().await.map_err(DbError::from)?;
    let tx = client.transaction().await?;
    let ready = tx
        .query_opt(
            "SELECT 1 FROM tenantry.tenants WHERE id = $1 AND state = 'ready' FOR SHARE",
            &[&tenant.as_str()],
        )
        .await?;
    if ready.is_none() {
        return Err(ArchiveError::TenantNotFound);
    }
    let mut file = std::fs::File::open(path).map_err(ArchiveError::Io)?;
    let mut total = 0u64;
    let mut seq = 0i32;
    loop {
        let mut piece = Vec::with_capacity(ARCHIVE_PIECE);
        (&mut file)
            .take(ARCHIVE_PIECE as u64)
            .read_to_end(&mut piece)
            .map_err(ArchiveError::Io)?;
        if piece.is_empty() {
            break;
        }
        total += piece.len() as u64;
        tx.execute(
            "INSERT INTO tenantry.operation_archives (operation_id, tenant_id, seq, data)
             VALUES ($1, $2, $3, $4)",
            &[&id, &tenant.as_str(), &seq, &piece],
        )
        .await?;
        seq += 1;
    }
    tx.commit().await?;
    Ok(total)
}

/// The archive of a succeeded backup operation, piece by piece (`None` if there is none: no
/// such operation, not a backup, not finished, or its tenant was deleted).
pub async fn archive_pieces(db: &Database, id: Uuid) -> Result<Option<Vec<Bytes>>, DbError> {
    let c = db.control().get().await?;
    let rows = c
        .query(
            "SELECT a.data FROM tenantry.operation_archives a
             JOIN tenantry.operations o ON o.id = a.operation_id
             WHERE a.operation_id = $1 AND o.kind = 'backup' AND o.state = 'succeeded'
             ORDER BY a.seq",
            &[&id],
        )
        .await?;
    if rows.is_empty() {
        return Ok(None);
    }
    Ok(Some(
        rows.iter()
            .map(|r| Bytes::from(r.get::<_, Vec<u8>>(0)))
            .collect(),
    ))
}

/// Starts creating tenant `new` from the archive in `file` in the background
/// ([`archive::restore`]); the file is removed when it is done. Check the archive first
/// ([`archive::verify`]) to answer a damaged one at once.
pub async fn start_restore(
    catalog: &Catalog,
    file: ScratchFile,
    new: NewTenant,
    actor: Actor,
) -> Result<Operation, DbError> {
    let db = catalog.database().clone();
    let op = insert(&db, "restore", Some(new.slug.as_str())).await?;
    let (id, catalog) = (op.id, catalog.clone());
    tokio::spawn(async move {
        set_phase(&db, id, "running", "restoring", 0.1, "").await;
        match archive::restore(&catalog, file.path(), &new, &actor).await {
            Ok(t) => {
                let detail = format!("restored as {} ({})", t.slug, t.isolation.as_str());
                update(&db, id, "succeeded", 1.0, &detail).await
            }
            Err(e) => update(&db, id, "failed", 0.0, &e.to_string()).await,
        }
        drop(file);
    });
    Ok(op)
}

/// Starts moving `slug` to `target` in the background ([`moves::relocate`]), its phases and
/// progress recorded on the operation as they happen.
pub async fn start_move(
    catalog: &Catalog,
    slug: &Slug,
    target: MoveTarget,
    grace: std::time::Duration,
) -> Result<Operation, CatalogError> {
    if catalog.get_tenant(slug).await?.is_none() {
        return Err(CatalogError::TenantNotFound);
    }
    let db = catalog.database().clone();
    let op = insert(&db, "move", Some(slug.as_str())).await?;
    let (id, catalog, slug) = (op.id, catalog.clone(), slug.clone());
    tokio::spawn(async move {
        // Progress goes through a channel so that its writes land in order.
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(moves::Phase, f32)>();
        let writer = {
            let db = db.clone();
            tokio::spawn(async move {
                while let Some((phase, done)) = rx.recv().await {
                    set_phase(&db, id, "running", phase.as_str(), done, "").await;
                }
            })
        };
        let result = moves::relocate(
            &catalog,
            &slug,
            &target,
            grace,
            |phase, done| {
                let _ = tx.send((phase, done));
            },
            |phase| may_proceed(&db, id, phase),
        )
        .await;
        drop(tx);
        let _ = writer.await;
        match result {
            Ok(r) => set_phase(&db, id, "succeeded", "done", 1.0, &r.summary()).await,
            Err(moves::MoveError::Cancelled) => {
                set_phase(&db, id, "cancelled", "", 0.0, "cancelled before the flip").await
            }
            Err(e) => set_phase(&db, id, "failed", "", 0.0, &e.to_string()).await,
        }
    });
    Ok(op)
}

/// Whether operation `id` may go on into `phase`: not if a cancellation was requested. The
/// answer for the flip claims it in the same row update that a cancellation needs
/// ([`cancel`]), so one of the two wins.
async fn may_proceed(db: &Database, id: Uuid, phase: moves::Phase) -> bool {
    let r = async {
        let c = db.control().get().await?;
        let n = c
            .execute(
                "UPDATE tenantry.operations SET phase = $2, updated_at = now()
                 WHERE id = $1 AND NOT cancel_requested",
                &[&id, &phase.as_str()],
            )
            .await?;
        Ok::<_, DbError>(n == 1)
    }
    .await;
    // If the catalog cannot be read, going on is safe: nothing else decides the flip.
    r.unwrap_or(true)
}

/// What became of a request to cancel an operation.
#[derive(Debug, Clone)]
pub enum Cancel {
    /// The operation stops before its flip (or between tenants, for a drain).
    Requested(Operation),
    /// It has flipped or finished, or is not a move or drain: nothing to cancel.
    TooLate(Operation),
    NotFound,
}

/// Asks a move or drain to stop before it flips.
pub async fn cancel(db: &Database, id: Uuid) -> Result<Cancel, DbError> {
    let c = db.control().get().await?;
    let row = c
        .query_opt(
            &format!(
                "UPDATE tenantry.operations SET cancel_requested = true, updated_at = now()
                 WHERE id = $1 AND kind IN ('move', 'drain') AND state IN ('queued', 'running')
                   AND phase NOT IN ('flipping', 'cleaning', 'done')
                 RETURNING {COLS}"
            ),
            &[&id],
        )
        .await?;
    Ok(match row {
        Some(r) => Cancel::Requested(from_row(&r)),
        None => match get(db, id).await? {
            Some(op) => Cancel::TooLate(op),
            None => Cancel::NotFound,
        },
    })
}

/// Starts moving every database tenant off server `from` to server `to` in the background, one
/// tenant at a time ([`moves::relocate`] each), as one operation of kind `drain`. A cancellation
/// stops it between tenants (or before a tenant's flip); one tenant's failure is reported and
/// the others go on.
pub async fn start_drain(
    catalog: &Catalog,
    from: &str,
    to: &str,
    grace: std::time::Duration,
) -> Result<Operation, DbError> {
    let db = catalog.database().clone();
    let op = insert(&db, "drain", None).await?;
    let (id, catalog, from, to) = (op.id, catalog.clone(), from.to_owned(), to.to_owned());
    tokio::spawn(async move {
        let result = moves::drain(
            &catalog,
            &from,
            &to,
            grace,
            |_, _| {},
            |phase| may_proceed(&db, id, phase),
        )
        .await;
        match result {
            Ok(r) => {
                let state = if r.cancelled {
                    "cancelled"
                } else if r.failed.is_empty() {
                    "succeeded"
                } else {
                    "failed"
                };
                set_phase(&db, id, state, "done", 1.0, &r.summary()).await
            }
            Err(e) => set_phase(&db, id, "failed", "", 0.0, &e.to_string()).await,
        }
    });
    Ok(op)
}
