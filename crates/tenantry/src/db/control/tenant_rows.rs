//! A tenant's rows in a placement, as the control plane reaches them: where its tables are,
//! which tables there are (parents first), copying its rows from one placement to another, and
//! the counts and checksums that show two copies are equal. Backups, restores and moves are
//! built from these.

use bytes::Bytes;
use futures_util::{pin_mut, SinkExt, StreamExt};
use tokio_postgres::{NoTls, Transaction};

use super::provision::admin_config_pub;
use super::roles::quote_ident;
use crate::db::{Database, DbError, SHARED_SCHEMA};
use crate::placement::Placement;
use crate::tenant::TenantId;

/// A connection to where a placement's tenant tables are, as the control plane connects.
pub(crate) enum Conn {
    Pooled(deadpool_postgres::Object),
    Direct(tokio_postgres::Client),
}

impl Conn {
    pub(crate) fn client(&mut self) -> &mut tokio_postgres::Client {
        match self {
            Conn::Pooled(o) => o,
            Conn::Direct(c) => c,
        }
    }
}

/// A connection to `placement`'s database, and the schema its tenant tables are in.
pub(crate) async fn open(db: &Database, placement: &Placement) -> Result<(Conn, String), DbError> {
    match placement {
        Placement::Shared => Ok((
            Conn::Pooled(db.control().get().await?),
            SHARED_SCHEMA.into(),
        )),
        Placement::Schema { schema } => {
            Ok((Conn::Pooled(db.control().get().await?), schema.clone()))
        }
        Placement::Database { .. } => {
            let cfg = admin_config_for(db, placement).await?;
            let (client, conn) = cfg.connect(NoTls).await?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "archive connection ended");
                }
            });
            Ok((Conn::Direct(client), SHARED_SCHEMA.into()))
        }
    }
}

/// The admin connection settings of `placement`'s database (the control plane's own login).
pub(crate) async fn admin_config_for(
    db: &Database,
    placement: &Placement,
) -> Result<tokio_postgres::Config, DbError> {
    match placement {
        Placement::Shared | Placement::Schema { .. } => Ok(db.control_config().clone()),
        Placement::Database { server, database } => {
            let mut cfg = admin_config_pub(db, server).await?;
            cfg.dbname(database);
            Ok(cfg)
        }
    }
}

/// Makes `tx` act for `tenant` as the owner role: forced RLS shows it only the tenant's rows.
pub(crate) async fn act_for(
    tx: &Transaction<'_>,
    db: &Database,
    tenant: &str,
) -> Result<(), DbError> {
    // Rows are compared as text on two connections, possibly to two servers: the settings
    // that shape that text are the same on both.
    tx.batch_execute(&format!(
        "SET LOCAL ROLE {}; SET LOCAL TimeZone = 'UTC'; SET LOCAL DateStyle = 'ISO, YMD';
         SET LOCAL IntervalStyle = 'postgres'; SET LOCAL extra_float_digits = 3",
        quote_ident(&db.roles().owner)
    ))
    .await?;
    tx.execute("SELECT set_config('app.tenant_id', $1, true)", &[&tenant])
        .await?;
    Ok(())
}

/// A table of a schema: its columns in order, and its primary key's.
pub(crate) struct Table {
    pub(crate) name: String,
    pub(crate) columns: Vec<String>,
    pub(crate) key: Vec<String>,
}

/// The tenant tables of `schema`, parents before the tables that reference them.
pub(crate) async fn tables(tx: &Transaction<'_>, schema: &str) -> Result<Vec<Table>, DbError> {
    let rows = tx
        .query(
            "SELECT c.relname::text,
                    ARRAY(SELECT a.attname::text FROM pg_attribute a
                          WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
                            AND a.attgenerated = ''
                          ORDER BY a.attnum),
                    ARRAY(SELECT a.attname::text
                          FROM pg_index i
                          CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, n)
                          JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum
                          WHERE i.indrelid = c.oid AND i.indisprimary
                          ORDER BY k.n),
                    ARRAY(SELECT DISTINCT r.relname::text FROM pg_constraint f
                          JOIN pg_class r ON r.oid = f.confrelid
                          WHERE f.conrelid = c.oid AND f.contype = 'f' AND r.oid <> c.oid
                            AND r.relnamespace = c.relnamespace)
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') AND NOT c.relispartition
             ORDER BY c.relname",
            &[&schema],
        )
        .await?;
    let mut pending: Vec<(Table, Vec<String>)> = rows
        .iter()
        .map(|r| {
            (
                Table {
                    name: r.get(0),
                    columns: r.get(1),
                    key: r.get(2),
                },
                r.get(3),
            )
        })
        .collect();
    let mut ordered: Vec<Table> = Vec::with_capacity(pending.len());
    while !pending.is_empty() {
        let before = pending.len();
        let mut i = 0;
        while i < pending.len() {
            let ready = pending[i]
                .1
                .iter()
                .all(|parent| ordered.iter().any(|t| &t.name == parent));
            if ready {
                ordered.push(pending.remove(i).0);
            } else {
                i += 1;
            }
        }
        if pending.len() == before {
            return Err(DbError::Config(format!(
                "the tenant tables of {schema} reference each other in a cycle"
            )));
        }
    }
    Ok(ordered)
}

pub(crate) fn column_list(columns: &[String]) -> String {
    columns
        .iter()
        .map(|c| quote_ident(c))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A tenant id as an SQL literal. Ids are `[a-z0-9-]` ([`TenantId::parse`]), so this is only
/// the quotes; doubling any quote keeps it a literal whatever it holds.
pub(crate) fn literal(id: &TenantId) -> String {
    format!("'{}'", id.as_str().replace('\'', "''"))
}

/// One side of a copy: a transaction acting for `tenant` ([`act_for`]) and the schema of its
/// tables there.
pub(crate) struct Side<'a> {
    tx: &'a Transaction<'a>,
    schema: &'a str,
    tenant: &'a TenantId,
}

impl<'a> Side<'a> {
    pub(crate) fn new(tx: &'a Transaction<'a>, schema: &'a str, tenant: &'a TenantId) -> Self {
        Self { tx, schema, tenant }
    }

    /// The same side, for another call.
    fn again(&self) -> Side<'a> {
        Side { ..*self }
    }

    fn table(&self, name: &str) -> String {
        format!("{}.{}", quote_ident(self.schema), quote_ident(name))
    }
}

/// Copies `from`'s rows of `table` (these `columns`) into `to`'s table of that name, under
/// `to`'s tenant id. COPY FROM cannot load a table under RLS, so the rows go to a temporary
/// table first and from there into the tenant's table by INSERT, which the policy checks.
pub(crate) async fn copy_rows(
    from: Side<'_>,
    to: Side<'_>,
    table: &str,
    columns: &[String],
) -> Result<(), DbError> {
    copy_some(from, to, table, columns, "", None).await
}

/// [`copy_rows`] of the rows that also meet `filter` (SQL over `from`'s table, `""` for all),
/// and, given the table's key, replacing rows of that key already in `to`.
async fn copy_some(
    from: Side<'_>,
    to: Side<'_>,
    table: &str,
    columns: &[String],
    filter: &str,
    upsert_on: Option<&[String]>,
) -> Result<(), DbError> {
    let select: Vec<String> = columns
        .iter()
        .map(|c| {
            if c == "tenant_id" {
                format!("{} AS tenant_id", literal(to.tenant))
            } else {
                quote_ident(c)
            }
        })
        .collect();
    let out = from
        .tx
        .copy_out(&format!(
            "COPY (SELECT {} FROM {} WHERE tenant_id = {}{filter}) TO STDOUT",
            select.join(", "),
            from.table(table),
            literal(from.tenant),
        ))
        .await?;
    let target = to.table(table);
    let column_names = columns;
    let columns = column_list(columns);
    to.tx
        .batch_execute(&format!(
            "CREATE TEMPORARY TABLE tenantry_copy (LIKE {target} INCLUDING DEFAULTS)
             ON COMMIT DROP"
        ))
        .await?;
    let sink = to
        .tx
        .copy_in::<_, Bytes>(&format!("COPY tenantry_copy ({columns}) FROM STDIN"))
        .await?;
    pin_mut!(out);
    pin_mut!(sink);
    while let Some(chunk) = out.next().await {
        sink.send(chunk?).await?;
    }
    sink.as_mut().finish().await?;
    let conflict = match upsert_on {
        None => String::new(),
        Some(key) => {
            let set: Vec<String> = column_names
                .iter()
                .filter(|c| !key.contains(c))
                .map(|c| format!("{0} = EXCLUDED.{0}", quote_ident(c)))
                .collect();
            if set.is_empty() {
                format!(" ON CONFLICT ({}) DO NOTHING", column_list(key))
            } else {
                format!(
                    " ON CONFLICT ({}) DO UPDATE SET {}",
                    column_list(key),
                    set.join(", ")
                )
            }
        }
    };
    to.tx
        .batch_execute(&format!(
            "INSERT INTO {target} ({columns}) SELECT {columns} FROM tenantry_copy{conflict};
             DROP TABLE tenantry_copy"
        ))
        .await?;
    Ok(())
}

/// Each row of `side`'s tenant in `table`, by its key (as text), with a hash of its values.
async fn keyed_hashes(
    side: &Side<'_>,
    table: &Table,
) -> Result<std::collections::HashMap<String, i64>, DbError> {
    let values: Vec<String> = table
        .columns
        .iter()
        .filter(|c| *c != "tenant_id")
        .map(|c| quote_ident(c))
        .collect();
    let rows = side
        .tx
        .query(
            &format!(
                "SELECT ROW({})::text, hashtextextended(ROW({})::text, 0)
                 FROM {} WHERE tenant_id = $1",
                column_list(&table.key),
                values.join(", "),
                side.table(&table.name)
            ),
            &[&side.tenant.as_str()],
        )
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// Brings `to` up to `from` for the tenant's rows in `tables` (parents first), where `to` holds
/// an earlier copy: rows gone since are deleted (children first), then rows new or changed
/// since are copied again, inserted or replaced by key (parents first). Only the difference is
/// copied; a table without a primary key is copied whole again.
pub(crate) async fn catch_up(
    from: Side<'_>,
    to: Side<'_>,
    tables: &[Table],
) -> Result<(), DbError> {
    let mut diffs: Vec<(&Table, Vec<String>, Vec<String>)> = Vec::new();
    for table in tables.iter().filter(|t| !t.key.is_empty()) {
        // Two connections: both sides are read at once.
        let (now, copied) = tokio::try_join!(keyed_hashes(&from, table), keyed_hashes(&to, table))?;
        let changed: Vec<String> = now
            .iter()
            .filter(|(k, h)| copied.get(*k) != Some(*h))
            .map(|(k, _)| k.clone())
            .collect();
        let vanished: Vec<String> = copied
            .into_keys()
            .filter(|k| !now.contains_key(k))
            .collect();
        diffs.push((table, changed, vanished));
    }
    for table in tables.iter().rev() {
        let condition = match diffs.iter().find(|d| d.0.name == table.name) {
            Some((_, _, vanished)) if !vanished.is_empty() => {
                format!("ROW({})::text = ANY($2::text[])", column_list(&table.key))
            }
            Some(_) => continue,
            // No key: the whole table again.
            None => "$2::text[] IS NOT NULL".to_owned(),
        };
        let vanished: &[String] = diffs
            .iter()
            .find(|d| d.0.name == table.name)
            .map_or(&[], |d| &d.2);
        to.tx
            .execute(
                &format!(
                    "DELETE FROM {} WHERE tenant_id = $1 AND {condition}",
                    to.table(&table.name)
                ),
                &[&to.tenant.as_str(), &vanished],
            )
            .await?;
    }
    for table in tables {
        let Some((_, changed, _)) = diffs.iter().find(|d| d.0.name == table.name) else {
            copy_rows(from.again(), to.again(), &table.name, &table.columns).await?;
            continue;
        };
        if changed.is_empty() {
            continue;
        }
        from.tx
            .batch_execute(
                "CREATE TEMPORARY TABLE IF NOT EXISTS tenantry_keys (k text) ON COMMIT DROP;
                 TRUNCATE tenantry_keys",
            )
            .await?;
        from.tx
            .execute(
                "INSERT INTO tenantry_keys SELECT unnest($1::text[])",
                &[changed],
            )
            .await?;
        let filter = format!(
            " AND ROW({})::text IN (SELECT k FROM tenantry_keys)",
            column_list(&table.key)
        );
        copy_some(
            from.again(),
            to.again(),
            &table.name,
            &table.columns,
            &filter,
            Some(&table.key),
        )
        .await?;
    }
    Ok(())
}

/// How many rows `side`'s tenant has in `table`.
pub(crate) async fn row_count(side: &Side<'_>, table: &str) -> Result<i64, DbError> {
    Ok(side
        .tx
        .query_one(
            &format!(
                "SELECT count(*) FROM {} WHERE tenant_id = $1",
                side.table(table)
            ),
            &[&side.tenant.as_str()],
        )
        .await?
        .get(0))
}

/// The rows of `side`'s tenant in `table`, as a count and an order-independent checksum of
/// their values in `columns` (the tenant id left out, so two tenants' copies compare): equal
/// on both sides of a copy, or the copy is not whole.
pub(crate) async fn fingerprint(
    side: &Side<'_>,
    table: &str,
    columns: &[String],
) -> Result<(i64, String), DbError> {
    let values: Vec<String> = columns
        .iter()
        .filter(|c| *c != "tenant_id")
        .map(|c| quote_ident(c))
        .collect();
    let row = side
        .tx
        .query_one(
            &format!(
                "SELECT count(*), coalesce(sum(hashtextextended(ROW({})::text, 0)::numeric), 0)::text
                 FROM {} WHERE tenant_id = $1",
                values.join(", "),
                side.table(table)
            ),
            &[&side.tenant.as_str()],
        )
        .await?;
    Ok((row.get(0), row.get(1)))
}
