//! Per-tenant archives: a tenant's rows in every tenant table as one portable file
//! ([`backup`]), and a new tenant made from one, in any placement ([`restore`]).
//!
//! An archive is one gzip stream of lines:
//!
//! ```text
//! TENANTRY-ARCHIVE 1
//! T {"name":"users","columns":["tenant_id","id",…]}
//! <the table's rows in COPY text format, one row per line>
//! \.
//! T {"name":"orders",…}
//! …
//! \.
//! M {"format":1,"tenant":{…},"schema_version":2,"tables":[{"name":…,"rows":…,"sha256":…}],…}
//! ```
//!
//! COPY's text format escapes newlines and backslashes inside values, so a row is one line and
//! the line `\.` never occurs in data. Tables come parents first (foreign keys), so they load in
//! the order they are written. The manifest comes last, so an archive is written in one pass
//! however large the tenant is.
//!
//! - **Backup** reads every table in one `REPEATABLE READ`, read-only transaction: the archive
//!   is one consistent snapshot while the tenant keeps being served. It runs as the owner role
//!   with the tenant's setting, so forced RLS shows it only the tenant's rows, and each
//!   statement says `tenant_id = …` too.
//! - **Restore** first reads the whole archive and checks it (its structure, every table's row
//!   count and SHA-256, the schema version), so a corrupted or newer archive is refused before
//!   anything is created. It then loads the rows into a scratch schema migrated to the
//!   archive's version, migrates that forward to this deployment's, creates the new tenant (a
//!   new id), copies the rows into its placement under that id and checks every table's count
//!   before the tenant becomes `ready`. The scratch schema lives only inside one control-plane
//!   transaction that is always rolled back, so a crash leaves none behind; a failure after the
//!   tenant was created deletes it again.

use std::io::{BufRead, Write};
use std::path::Path;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures_util::{pin_mut, SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio_postgres::{IsolationLevel, Transaction};

use super::migrate::{apply_in, steps};
use super::provision::create_storage;
use super::roles::quote_ident;
use super::tenant_rows::{act_for, column_list, copy_rows, literal, open, row_count, tables, Side};
use crate::audit::Actor;
use crate::catalog::{Catalog, CatalogError, NewTenant};
use crate::db::{Database, DbError};
use crate::tenant::{Slug, StorageState, Tenant, TenantId};

/// The first line of every archive.
const MAGIC: &str = "TENANTRY-ARCHIVE 1";

/// The archive format this version writes and reads.
pub const FORMAT: u32 = 1;

/// Rows are sent to PostgreSQL in pieces of about this many bytes.
const CHUNK: usize = 256 * 1024;

/// What an archive holds, written as its last line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub tenant: ArchivedTenant,
    /// The newest tenant migration the archived rows are at.
    pub schema_version: i32,
    pub created_at: DateTime<Utc>,
    /// Parents first.
    pub tables: Vec<ArchivedTable>,
}

/// The tenant an archive was made from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArchivedTenant {
    pub id: String,
    pub slug: String,
    pub name: String,
    pub plan: String,
    pub isolation: String,
}

/// One table of an archive.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArchivedTable {
    pub name: String,
    pub columns: Vec<String>,
    pub rows: u64,
    /// SHA-256 of the table's COPY text, hex.
    pub sha256: String,
}

/// The header line of a table's rows.
#[derive(Serialize, Deserialize)]
struct TableHeader {
    name: String,
    columns: Vec<String>,
}

/// Why a backup or restore failed.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("no such tenant")]
    TenantNotFound,
    #[error("tenant {0} is not ready (being created or deleted)")]
    NotReady(Slug),
    #[error("not a valid tenant archive: {0}")]
    Corrupt(String),
    #[error("archive format {0} is not supported (this version reads format {FORMAT})")]
    UnsupportedFormat(u32),
    #[error(
        "the archive is at tenant schema version {archive}, newer than this deployment's \
         {deployment}; restore it with a newer Tenantry"
    )]
    NewerSchema { archive: i32, deployment: i32 },
    #[error("the restored rows do not match the archive: {0}")]
    Mismatch(String),
    #[error("archive I/O: {0}")]
    Io(std::io::Error),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<tokio_postgres::Error> for ArchiveError {
    fn from(e: tokio_postgres::Error) -> Self {
        ArchiveError::Db(e.into())
    }
}

fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes an archive of `slug`'s rows to `out` (gzip) and returns its manifest.
pub async fn backup<W: Write>(
    catalog: &Catalog,
    slug: &Slug,
    out: W,
) -> Result<Manifest, ArchiveError> {
    let db = catalog.database();
    let tenant = catalog
        .get_tenant(slug)
        .await?
        .ok_or(ArchiveError::TenantNotFound)?;
    if tenant.storage_state != StorageState::Ready {
        return Err(ArchiveError::NotReady(tenant.slug));
    }
    let mut out = flate2::write::GzEncoder::new(out, flate2::Compression::fast());
    let io = ArchiveError::Io;
    writeln!(out, "{MAGIC}").map_err(io)?;
    let (mut conn, schema) = open(db, &tenant.placement).await?;
    let tx = conn
        .client()
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?;
    act_for(&tx, db, tenant.id.as_str()).await?;
    let mut summaries = Vec::new();
    for table in tables(&tx, &schema).await? {
        let header = TableHeader {
            name: table.name.clone(),
            columns: table.columns.clone(),
        };
        let header =
            serde_json::to_string(&header).map_err(|e| ArchiveError::Corrupt(e.to_string()))?;
        writeln!(out, "T {header}").map_err(io)?;
        let order = if table.key.is_empty() {
            String::new()
        } else {
            format!(" ORDER BY {}", column_list(&table.key))
        };
        let stream = tx
            .copy_out(&format!(
                "COPY (SELECT {} FROM {}.{} WHERE tenant_id = {}{order}) TO STDOUT",
                column_list(&table.columns),
                quote_ident(&schema),
                quote_ident(&table.name),
                literal(&tenant.id),
            ))
            .await?;
        pin_mut!(stream);
        let mut sha = Sha256::new();
        let mut rows = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            sha.update(&chunk);
            rows += chunk.iter().filter(|&&b| b == b'\n').count() as u64;
            out.write_all(&chunk).map_err(io)?;
        }
        out.write_all(b"\\.\n").map_err(io)?;
        summaries.push(ArchivedTable {
            name: table.name,
            columns: table.columns,
            rows,
            sha256: hex(&sha.finalize()),
        });
    }
    tx.commit().await?;
    let manifest = Manifest {
        format: FORMAT,
        tenant: ArchivedTenant {
            id: tenant.id.as_str().to_owned(),
            slug: tenant.slug.as_str().to_owned(),
            name: tenant.name.clone(),
            plan: tenant.plan.clone(),
            isolation: tenant.isolation.as_str().to_owned(),
        },
        schema_version: tenant.schema_version,
        created_at: Utc::now(),
        tables: summaries,
    };
    let line =
        serde_json::to_string(&manifest).map_err(|e| ArchiveError::Corrupt(e.to_string()))?;
    writeln!(out, "M {line}").map_err(io)?;
    out.finish().map_err(io)?.flush().map_err(io)?;
    Ok(manifest)
}

/// One piece of an archive, as [`Reader`] reads it.
enum Piece {
    /// A table's header.
    Table(TableHeader),
    /// Rows of the current table (whole lines).
    Rows(Vec<u8>),
    /// The current table's rows are complete.
    EndOfTable,
    Manifest(Box<Manifest>),
}

type Input = std::io::BufReader<flate2::read::GzDecoder<std::io::BufReader<std::fs::File>>>;

/// Reads an archive piece by piece, checking its structure.
struct Reader {
    input: Input,
    in_table: bool,
    /// The current table's end marker was read with its last rows; report it next.
    end_pending: bool,
    done: bool,
}

impl Reader {
    fn open(path: &Path) -> Result<Self, ArchiveError> {
        let file = std::fs::File::open(path).map_err(ArchiveError::Io)?;
        let mut input = std::io::BufReader::with_capacity(
            CHUNK,
            flate2::read::GzDecoder::new(std::io::BufReader::new(file)),
        );
        let mut first = Vec::new();
        read_line(&mut input, &mut first)?;
        if first != format!("{MAGIC}\n").as_bytes() {
            return Err(ArchiveError::Corrupt(
                "it does not start as a tenant archive".into(),
            ));
        }
        Ok(Self {
            input,
            in_table: false,
            end_pending: false,
            done: false,
        })
    }

    /// The next piece, or `None` after the manifest (which must end the archive).
    fn next(&mut self) -> Result<Option<Piece>, ArchiveError> {
        if self.done {
            return Ok(None);
        }
        if self.end_pending {
            self.end_pending = false;
            self.in_table = false;
            return Ok(Some(Piece::EndOfTable));
        }
        let mut line = Vec::new();
        if self.in_table {
            let mut rows = Vec::new();
            loop {
                line.clear();
                if read_line(&mut self.input, &mut line)? == 0 {
                    return Err(ArchiveError::Corrupt("it ends inside a table".into()));
                }
                if line == b"\\.\n" {
                    if rows.is_empty() {
                        self.in_table = false;
                        return Ok(Some(Piece::EndOfTable));
                    }
                    // Hand out the rows first; the end comes on the next call.
                    self.end_pending = true;
                    return Ok(Some(Piece::Rows(rows)));
                }
                if !line.ends_with(b"\n") {
                    return Err(ArchiveError::Corrupt("it ends inside a row".into()));
                }
                rows.extend_from_slice(&line);
                if rows.len() >= CHUNK {
                    return Ok(Some(Piece::Rows(rows)));
                }
            }
        }
        if read_line(&mut self.input, &mut line)? == 0 {
            return Err(ArchiveError::Corrupt(
                "it has no manifest (truncated?)".into(),
            ));
        }
        let text = std::str::from_utf8(&line)
            .map_err(|_| ArchiveError::Corrupt("a header is not UTF-8".into()))?
            .trim_end_matches('\n');
        if let Some(header) = text.strip_prefix("T ") {
            let header: TableHeader = serde_json::from_str(header)
                .map_err(|e| ArchiveError::Corrupt(format!("a table header: {e}")))?;
            self.in_table = true;
            return Ok(Some(Piece::Table(header)));
        }
        if let Some(manifest) = text.strip_prefix("M ") {
            let manifest: Manifest = serde_json::from_str(manifest)
                .map_err(|e| ArchiveError::Corrupt(format!("the manifest: {e}")))?;
            let mut rest = Vec::new();
            if read_line(&mut self.input, &mut rest)? != 0 {
                return Err(ArchiveError::Corrupt("data follows the manifest".into()));
            }
            self.done = true;
            return Ok(Some(Piece::Manifest(Box::new(manifest))));
        }
        Err(ArchiveError::Corrupt(
            "an unexpected line between tables".into(),
        ))
    }
}

/// One line including its `\n`; gzip errors (a damaged or truncated file) are corruption.
fn read_line(input: &mut impl BufRead, line: &mut Vec<u8>) -> Result<usize, ArchiveError> {
    input
        .read_until(b'\n', line)
        .map_err(|e| ArchiveError::Corrupt(format!("unreadable ({e})")))
}

/// Reads the whole archive at `path` and checks it: structure, every table's row count and
/// SHA-256 against the manifest, and the format. Returns the manifest.
pub fn verify(path: &Path) -> Result<Manifest, ArchiveError> {
    let mut reader = Reader::open(path)?;
    let mut seen: Vec<ArchivedTable> = Vec::new();
    let mut current: Option<(TableHeader, Sha256, u64)> = None;
    loop {
        match reader.next()? {
            Some(Piece::Table(h)) => current = Some((h, Sha256::new(), 0)),
            Some(Piece::Rows(rows)) => {
                let (_, sha, n) = current
                    .as_mut()
                    .ok_or_else(|| ArchiveError::Corrupt("rows outside a table".into()))?;
                sha.update(&rows);
                *n += rows.iter().filter(|&&b| b == b'\n').count() as u64;
            }
            Some(Piece::EndOfTable) => {
                let (h, sha, rows) = current
                    .take()
                    .ok_or_else(|| ArchiveError::Corrupt("a table ends twice".into()))?;
                seen.push(ArchivedTable {
                    name: h.name,
                    columns: h.columns,
                    rows,
                    sha256: hex(&sha.finalize()),
                });
            }
            Some(Piece::Manifest(m)) => {
                if m.format != FORMAT {
                    return Err(ArchiveError::UnsupportedFormat(m.format));
                }
                for (want, got) in m.tables.iter().zip(&seen) {
                    if want.name != got.name || want.columns != got.columns {
                        return Err(ArchiveError::Corrupt(format!(
                            "table {} is not the one the manifest lists",
                            got.name
                        )));
                    }
                    if want.rows != got.rows || want.sha256 != got.sha256 {
                        return Err(ArchiveError::Corrupt(format!(
                            "the rows of table {} do not match their checksum",
                            got.name
                        )));
                    }
                }
                if m.tables.len() != seen.len() {
                    return Err(ArchiveError::Corrupt(
                        "the manifest lists other tables than the archive holds".into(),
                    ));
                }
                return Ok(*m);
            }
            None => return Err(ArchiveError::Corrupt("it has no manifest".into())),
        }
    }
}

/// Creates tenant `new` from the archive at `path`, in `new`'s placement, under a new id.
/// The archive is checked whole first ([`verify`]); nothing is created for a corrupted or
/// newer one, and a failure later removes the tenant again.
pub async fn restore(
    catalog: &Catalog,
    path: &Path,
    new: &NewTenant,
    actor: &Actor,
) -> Result<Tenant, ArchiveError> {
    let db = catalog.database();
    let manifest = verify(path)?;
    if manifest.schema_version > db.latest_version() {
        return Err(ArchiveError::NewerSchema {
            archive: manifest.schema_version,
            deployment: db.latest_version(),
        });
    }
    let placement = crate::lifecycle::placement_for(db, new).await?;
    // The scratch schema: made, filled, migrated and read inside this transaction, which is
    // never committed.
    let mut control = db.control().get().await.map_err(DbError::from)?;
    let scratch_tx = control.transaction().await?;
    let scratch = format!(
        "tenantry_restore_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    let archived_id = TenantId::parse(&manifest.tenant.id)
        .map_err(|_| ArchiveError::Corrupt("the manifest's tenant id is not an id".into()))?;
    load_scratch(db, &scratch_tx, &scratch, path, &manifest, &archived_id).await?;

    let tenant = catalog.create_tenant(new, &placement, actor).await?;
    let filled = async {
        let version = create_storage(db, &new.slug, &tenant.placement).await?;
        fill(db, &scratch_tx, &scratch, &archived_id, &tenant).await?;
        Ok::<_, ArchiveError>(version)
    }
    .await;
    drop(scratch_tx);
    let result = match filled {
        Ok(version) => match catalog.mark_ready(&tenant.id, version).await? {
            Some(ready) => Ok(ready),
            None => Err(CatalogError::DeletedWhileProvisioning(new.slug.clone()).into()),
        },
        Err(e) => Err(e),
    };
    if result.is_err() {
        if let Err(e) = crate::lifecycle::delete(catalog, &new.slug, actor).await {
            tracing::warn!(tenant = %new.slug, error = %e, "could not remove a failed restore");
        }
    }
    result
}

/// Creates `scratch` in the control database inside `tx`, migrated to the archive's version,
/// loads the archive's rows into it (under their archived tenant id), and migrates it forward
/// to this deployment's version.
async fn load_scratch(
    db: &Database,
    tx: &Transaction<'_>,
    scratch: &str,
    path: &Path,
    manifest: &Manifest,
    archived_id: &TenantId,
) -> Result<(), ArchiveError> {
    let roles = db.roles();
    tx.batch_execute(&format!(
        "CREATE SCHEMA {} AUTHORIZATION {}",
        quote_ident(scratch),
        quote_ident(&roles.owner)
    ))
    .await?;
    let all = steps(db.migrations());
    let scope = format!("restore:{scratch}");
    let upto: Vec<_> = all
        .iter()
        .filter(|s| s.0 <= manifest.schema_version)
        .cloned()
        .collect();
    // Without RLS: the scratch tables are seen by no one but this transaction, and COPY FROM
    // cannot load a table under RLS.
    apply_in(tx, roles, &scope, scratch, &upto, false).await?;
    act_for(tx, db, archived_id.as_str()).await?;
    let mut reader = Reader::open(path)?;
    let mut sink = None;
    while let Some(piece) = reader.next()? {
        match piece {
            Piece::Table(h) => {
                let copy = tx
                    .copy_in::<_, Bytes>(&format!(
                        "COPY {}.{} ({}) FROM STDIN",
                        quote_ident(scratch),
                        quote_ident(&h.name),
                        column_list(&h.columns)
                    ))
                    .await
                    .map_err(|e| {
                        ArchiveError::Mismatch(format!(
                            "table {} of the archive does not fit its schema version: {}",
                            h.name,
                            e.as_db_error()
                                .map_or_else(|| e.to_string(), |d| d.message().to_owned())
                        ))
                    })?;
                sink = Some(Box::pin(copy));
            }
            Piece::Rows(rows) => {
                if let Some(s) = sink.as_mut() {
                    s.send(Bytes::from(rows)).await?;
                }
            }
            Piece::EndOfTable => {
                if let Some(mut s) = sink.take() {
                    s.as_mut().finish().await?;
                }
            }
            Piece::Manifest(_) => {}
        }
    }
    tx.batch_execute("RESET ROLE").await?;
    apply_in(tx, roles, &scope, scratch, &all, false).await?;
    Ok(())
}

/// Copies the scratch schema's rows into `tenant`'s storage under its own id, and checks every
/// table's count there before committing.
async fn fill(
    db: &Database,
    scratch_tx: &Transaction<'_>,
    scratch: &str,
    archived_id: &TenantId,
    tenant: &Tenant,
) -> Result<(), ArchiveError> {
    act_for(scratch_tx, db, archived_id.as_str()).await?;
    let (mut conn, schema) = open(db, &tenant.placement).await?;
    let tx = conn.client().transaction().await?;
    act_for(&tx, db, tenant.id.as_str()).await?;
    let sources = tables(scratch_tx, scratch).await?;
    for table in tables(&tx, &schema).await? {
        let Some(source) = sources.iter().find(|t| t.name == table.name) else {
            continue;
        };
        if source.columns.iter().any(|c| !table.columns.contains(c)) {
            return Err(ArchiveError::Mismatch(format!(
                "table {} has columns the deployment's table lacks",
                table.name
            )));
        }
        copy_rows(
            Side::new(scratch_tx, scratch, archived_id),
            Side::new(&tx, &schema, &tenant.id),
            &source.name,
            &source.columns,
        )
        .await?;
        let (want, got) = (
            row_count(&Side::new(scratch_tx, scratch, archived_id), &source.name).await?,
            row_count(&Side::new(&tx, &schema, &tenant.id), &table.name).await?,
        );
        if want != got {
            return Err(ArchiveError::Mismatch(format!(
                "table {}: {want} rows archived, {got} restored",
                table.name
            )));
        }
    }
    tx.commit().await?;
    Ok(())
}
