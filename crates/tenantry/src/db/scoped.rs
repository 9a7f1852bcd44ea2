//! The scoped transaction: the only door from a [`TenantContext`](crate::TenantContext) to tenant
//! tables, in every placement.
//!
//! What must hold:
//! - every transaction that touches tenant tables first sets `app.tenant_id` (and, for a
//!   `schema` tenant, `search_path` to its schema alone) with `set_config(…, true)`: the settings
//!   are transaction-local, so a pooled connection never carries them into the next transaction;
//!   a `database` tenant's transaction runs on that database's own pool;
//! - every statement still says `tenant_id = $1` itself, and `$1` is always the context's tenant:
//!   callers pass only the remaining parameters, so they cannot bind another tenant there;
//! - statements are `&'static str`: SQL is never assembled from input at run time;
//! - a transaction that is dropped unfinished (an error, a panic, a client that hung up and so
//!   cancelled the handler's future) is rolled back before the connection can serve anyone else.
//!
//! Cost: a read or a single-row insert through [`TenantDb::run`] of a `shared` or `database`
//! tenant is one statement that sets the tenant itself: `WITH _tenantry_scope AS MATERIALIZED
//! (SELECT set_config('app.tenant_id', $1, true) …) SELECT … CROSS JOIN LATERAL (the read)`, or
//! `… INSERT … SELECT … FROM _tenantry_scope`: one round trip and one statement for PostgreSQL
//! (why that is safe is on `single_statement`). Otherwise `BEGIN`, the settings and the first
//! statement are pipelined into one round trip, and [`TenantDb::run`] pipelines `COMMIT` too,
//! so any other single-statement write also costs one round trip. Multi-statement transactions
//! pay one round trip per statement plus one for `COMMIT`.
//!
//! Prepared statements are cached per connection; schema tenants get one per schema (the text
//! names the schema in a comment), because PostgreSQL re-analyses a cached statement whenever
//! `search_path` differs from the one it was planned under (up to `PER_SCHEMA_STATEMENTS` per
//! connection, then one statement shared by every schema). While a fleet migration is changing
//! the shape of some schemas, a cached statement can fail with `cached plan must not change
//! result type`; the first statement of a transaction then clears the connection's cache and
//! retries once.

use deadpool_postgres::{ClientWrapper, Object};
use futures_util::FutureExt;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Row, Statement};

use super::pools::TenantConn;
use super::single_statement::{is_scoped, single_statement};
use super::{Database, DbError, Placement};
use crate::plan::TenantLimits;
use crate::tenant::{Tenant, TenantId};

/// The statements that scope a transaction, kept in exactly one place: a Citus deployment needs
/// `SET LOCAL` here instead, because Citus forwards `SET LOCAL` to workers but not `set_config()`.
/// The plan's statement timeout travels in the same statement, so it costs nothing extra.
const SCOPE_SQL: &str =
    "SELECT set_config('app.tenant_id', $1, true), set_config('statement_timeout', $2, true)";
/// The same for a schema tenant ($3: its quoted schema). Reachable with the `internals`
/// feature for the same reason as `single_statement_form`: the benchmark's schema floor sends
/// it.
#[cfg_attr(not(feature = "internals"), allow(unreachable_pub))]
pub const SCOPE_SCHEMA_SQL: &str = "SELECT set_config('app.tenant_id', $1, true), \
     set_config('statement_timeout', $2, true), set_config('search_path', $3, true)";

/// How long a timed-out single statement's outcome is awaited after its cancel request.
const CANCEL_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// Prepared statements a connection keeps before schema tenants share one statement again.
const PER_SCHEMA_STATEMENTS: usize = 512;

/// Parameters of a tenant statement, after the implicit `$1`.
pub type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

/// A handle to one tenant's storage. Obtained only from a tenant context.
pub struct TenantDb<'a> {
    db: &'a Database,
    tenant: &'a Tenant,
    limits: &'a TenantLimits,
    /// Where the transactions run: the tenant's placement, or, for the tenant's rows in the
    /// control plane's tables, the runtime pool of the control database.
    placement: &'a Placement,
}

/// The placement of the control plane's tenant-keyed tables (the runtime pool, no schema).
static CONTROL_ROWS: Placement = Placement::Shared;

/// A pooled connection from whichever pool serves the tenant's placement.
enum Conn {
    Runtime(Object),
    TenantDatabase(TenantConn),
    /// Taken out of its pool and closed (after a timed-out statement): it is never reused, so
    /// the cancel request sent for it cannot reach another user's statement.
    Discarded,
}

impl Conn {
    fn client(&self) -> Result<&ClientWrapper, DbError> {
        match self {
            Conn::Runtime(o) => Ok(o),
            Conn::TenantDatabase(o) => Ok(o),
            Conn::Discarded => Err(DbError::Finished),
        }
    }

    /// Closes the connection instead of returning it to its pool.
    fn discard(&mut self) {
        match std::mem::replace(self, Conn::Discarded) {
            Conn::Runtime(o) => drop(Object::take(o)),
            Conn::TenantDatabase(o) => drop(deadpool::managed::Object::take(o)),
            Conn::Discarded => {}
        }
    }
}

impl<'a> TenantDb<'a> {
    pub(crate) fn new(db: &'a Database, tenant: &'a Tenant, limits: &'a TenantLimits) -> Self {
        Self {
            db,
            tenant,
            limits,
            placement: &tenant.placement,
        }
    }

    /// The tenant's rows in the control database's tenant-keyed tables (see
    /// [`crate::TenantContext`]'s `control_rows`).
    pub(crate) fn control_rows(
        db: &'a Database,
        tenant: &'a Tenant,
        limits: &'a TenantLimits,
    ) -> Self {
        Self {
            db,
            tenant,
            limits,
            placement: &CONTROL_ROWS,
        }
    }

    /// Starts a scoped transaction. Nothing is sent until the first statement, which then
    /// carries `BEGIN` and the tenant settings in the same round trip.
    ///
    /// On the shared runtime pool a tenant holds at most its plan's share of the connections,
    /// so one tenant flooding slow queries cannot starve the others (a `database` tenant is
    /// capped by its own pool's size instead).
    pub async fn begin(&self) -> Result<ScopedTx, DbError> {
        let share = |db: &Database| {
            ((db.runtime_max() as f64 * self.limits.connection_share).ceil() as usize).max(1)
        };
        let (conn, search_path, permit) = match self.placement {
            Placement::Shared | Placement::Schema { .. } => {
                let permit = self
                    .db
                    .connection_shares()
                    .acquire(&self.tenant.id, share(self.db), self.db.wait_timeout())
                    .await
                    .ok_or_else(|| {
                        DbError::Unavailable(
                            "the tenant holds its full share of database connections".into(),
                        )
                    })?;
                let (lane, path) = match self.placement {
                    Placement::Schema { schema } => (
                        self.db.lane_for_schema(schema),
                        Some(super::roles::quote_ident(schema)),
                    ),
                    _ => (self.db.lane_for_shared(), None),
                };
                (Conn::Runtime(lane.get().await?), path, Some(permit))
            }
            Placement::Database { server, database } => (
                Conn::TenantDatabase(self.db.tenant_pools().checkout(server, database).await?),
                None,
                None,
            ),
        };
        Ok(ScopedTx {
            conn,
            tenant: self.tenant.id.clone(),
            search_path,
            timeout: self.limits.statement_timeout,
            state: TxState::Fresh,
            _share: permit,
        })
    }

    /// Runs one statement in its own scoped transaction and commits it, in one round trip.
    ///
    /// A read (`SELECT …`) or a single-row insert of a `shared` or `database` tenant runs as a
    /// single statement that sets the tenant itself (see the module docs): one statement for
    /// PostgreSQL instead of four. Everything else pipelines `BEGIN`, the settings, the
    /// statement and `COMMIT`.
    pub async fn run(&self, sql: &'static str, params: Params<'_>) -> Result<Vec<Row>, DbError> {
        if !matches!(self.placement, Placement::Schema { .. }) {
            let form = single_statement(sql);
            if let Some(single) = form.single {
                if !form.scoped {
                    return Err(DbError::Unscoped(sql));
                }
                let mut tx = self.begin().await?;
                return tx.single(single, params).await;
            }
        }
        let mut tx = self.begin().await?;
        tx.first_or_retry(sql, params, true).await
    }

    /// [`run`](Self::run) for a statement that returns at most one row.
    pub async fn run_opt(
        &self,
        sql: &'static str,
        params: Params<'_>,
    ) -> Result<Option<Row>, DbError> {
        one_or_none(self.run(sql, params).await?)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TxState {
    /// Nothing sent yet.
    Fresh,
    /// `BEGIN` may have been sent; the connection must be rolled back unless committed.
    Open,
    /// Committed or rolled back.
    Done,
}

/// A transaction on one pooled connection with the tenant's settings for its whole life.
pub struct ScopedTx {
    conn: Conn,
    tenant: TenantId,
    /// The quoted schema for a `schema` tenant.
    search_path: Option<String>,
    /// The plan's statement timeout: set in the transaction, or, for the single-statement
    /// form, enforced from the client side.
    timeout: std::time::Duration,
    state: TxState,
    /// The tenant's share of the runtime pool (declared last: released after the connection
    /// went back to the pool).
    _share: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl ScopedTx {
    /// The statement timeout in milliseconds, as `set_config` wants it; formatted only by the
    /// statements that set it (a single-statement read does not).
    fn timeout_setting<'b>(&self, buf: &'b mut itoa::Buffer) -> &'b str {
        buf.format(self.timeout.as_millis())
    }

    /// The tenant this transaction is scoped to (bound as `$1` in every statement).
    pub fn tenant(&self) -> &TenantId {
        &self.tenant
    }

    /// Runs a statement; `$1` is the tenant, `params` are `$2…`.
    pub async fn query(
        &mut self,
        sql: &'static str,
        params: Params<'_>,
    ) -> Result<Vec<Row>, DbError> {
        let deadline = self.answer_deadline();
        let run = async {
            if self.state == TxState::Fresh {
                self.first_or_retry(sql, params, false).await
            } else {
                self.pipeline(sql, params, false).await
            }
        };
        match tokio::time::timeout(deadline, run).await {
            Ok(rows) => rows,
            Err(_) => Err(self.gone()),
        }
    }

    /// How long a statement's answer may take: the statement timeout, which the server
    /// enforces itself, and a grace. Past it the server is not answering at all (frozen, or
    /// the network is gone), which only a deadline of our own can tell.
    fn answer_deadline(&self) -> std::time::Duration {
        self.timeout + CANCEL_GRACE
    }

    /// The server did not answer in time: the connection is closed, never reused (what it
    /// was doing is unknown), and the transaction is over.
    fn gone(&mut self) -> DbError {
        self.state = TxState::Done;
        self.conn.discard();
        DbError::Timeout
    }

    /// Runs a statement that returns at most one row.
    pub async fn query_opt(
        &mut self,
        sql: &'static str,
        params: Params<'_>,
    ) -> Result<Option<Row>, DbError> {
        one_or_none(self.query(sql, params).await?)
    }

    /// Runs a statement and returns the rows it affected (or returned).
    pub async fn execute(&mut self, sql: &'static str, params: Params<'_>) -> Result<u64, DbError> {
        Ok(self.query(sql, params).await?.len() as u64)
    }

    /// Commits. A transaction that was never used commits trivially.
    pub async fn commit(mut self) -> Result<(), DbError> {
        if self.state == TxState::Open {
            // Until COMMIT's answer arrives the outcome is unknown; if this future is dropped
            // the Drop impl sends ROLLBACK after it, which is then a harmless no-op warning.
            // Without an answer in time the outcome stays unknown, and is reported as a
            // failure (never as a success that may not have happened).
            let deadline = self.answer_deadline();
            let client = self.conn.client()?;
            match tokio::time::timeout(deadline, client.batch_execute("COMMIT")).await {
                Ok(done) => done?,
                Err(_) => return Err(self.gone()),
            }
        }
        self.state = TxState::Done;
        Ok(())
    }

    /// Rolls back explicitly (dropping does the same, without waiting).
    pub async fn rollback(mut self) -> Result<(), DbError> {
        if self.state == TxState::Open {
            self.state = TxState::Done;
            self.conn.client()?.batch_execute("ROLLBACK").await?;
        }
        Ok(())
    }

    /// Runs a single-statement form: no transaction block, so the statement is its own implicit
    /// transaction and the transaction-local tenant setting ends with it. The plan's statement
    /// timeout cannot travel inside the statement (PostgreSQL arms the timer before the
    /// statement runs), so it is enforced here: past it, the statement is cancelled, and its
    /// outcome is still awaited (for up to `CANCEL_GRACE`), because for an insert the outcome
    /// is the answer: cancelled means rolled back (a timeout, nothing written), finished means
    /// committed (reported as done, never as a failure that a client would retry into a
    /// duplicate). Either way the connection is closed rather than reused: a cancel request
    /// that arrived late would hit its next user's statement.
    async fn single(
        &mut self,
        single: &'static str,
        params: Params<'_>,
    ) -> Result<Vec<Row>, DbError> {
        let tenant: &str = self.tenant.as_str();
        let mut all: Vec<&(dyn ToSql + Sync)> = Vec::with_capacity(params.len() + 1);
        all.push(&tenant);
        all.extend_from_slice(params);
        self.state = TxState::Done;
        let timeout = self.timeout;
        let outcome = {
            let client = self.conn.client()?;
            let attempt = async {
                let stmt = client.prepare_cached(single).await?;
                match client.query(&stmt, &all).await {
                    // A `database` tenant's tables can change shape under a cached statement
                    // while a fleet migration runs: prepare again and retry once.
                    Err(e) if is_stale_plan(&e) => {
                        client.statement_cache.remove(single, &[]);
                        let stmt = client.prepare_cached(single).await?;
                        client.query(&stmt, &all).await
                    }
                    other => other,
                }
            };
            tokio::pin!(attempt);
            match tokio::time::timeout(timeout, &mut attempt).await {
                Ok(rows) => return Ok(rows?),
                Err(_) => {
                    if let Err(e) = client
                        .cancel_token()
                        .cancel_query(tokio_postgres::NoTls)
                        .await
                    {
                        tracing::warn!(error = %e, "could not cancel a timed-out statement");
                    }
                    tokio::time::timeout(CANCEL_GRACE, &mut attempt).await
                }
            }
        };
        self.conn.discard();
        match outcome {
            Ok(Ok(rows)) => Ok(rows),
            // Cancelled (maps to `Timeout`), or failed on its own.
            Ok(Err(e)) => Err(e.into()),
            // No answer even to the cancel: the server or the network is gone.
            Err(_) => Err(DbError::Timeout),
        }
    }

    /// The first statement of a transaction, retried once with fresh prepared statements if a
    /// schema's shape changed under the connection's statement cache.
    async fn first_or_retry(
        &mut self,
        sql: &'static str,
        params: Params<'_>,
        commit: bool,
    ) -> Result<Vec<Row>, DbError> {
        match self.pipeline(sql, params, commit).await {
            Err(DbError::Other(e)) if is_stale_plan(&e) => {
                tracing::info!(tenant = %self.tenant, "schema changed under a cached statement; retrying with a fresh statement");
                self.retry_fresh(sql, params, commit).await
            }
            other => other,
        }
    }

    /// The retry: the statement is re-prepared *inside* the transaction, after the tenant's
    /// settings, so PostgreSQL describes it with this tenant's table shapes. `BEGIN`, the
    /// settings and the `Parse` are pipelined; the statement then runs (two round trips, on
    /// this rare path only).
    async fn retry_fresh(
        &mut self,
        sql: &'static str,
        params: Params<'_>,
        commit: bool,
    ) -> Result<Vec<Row>, DbError> {
        let scope_sql = if self.search_path.is_some() {
            SCOPE_SCHEMA_SQL
        } else {
            SCOPE_SQL
        };
        let text = self.text(sql)?;
        let client = self.conn.client()?;
        client.batch_execute("ROLLBACK").await?;
        client.statement_cache.remove(&text, &[]);
        let scope = client.prepare_cached(scope_sql).await?;
        let tenant: &str = self.tenant.as_str();
        let path: &str = self.search_path.as_deref().unwrap_or_default();
        let mut millis = itoa::Buffer::new();
        let timeout: &str = self.timeout_setting(&mut millis);
        let scope_params: Vec<&(dyn ToSql + Sync)> = if self.search_path.is_some() {
            vec![&tenant, &timeout, &path]
        } else {
            vec![&tenant, &timeout]
        };
        let mut all: Vec<&(dyn ToSql + Sync)> = Vec::with_capacity(params.len() + 1);
        all.push(&tenant);
        all.extend_from_slice(params);
        self.state = TxState::Open;
        let client = self.conn.client()?;
        let (b, s, p) = tokio::join!(
            client.batch_execute("BEGIN"),
            client.query(&scope, &scope_params),
            client.prepare_cached(&text)
        );
        b?;
        s?;
        let stmt = p?;
        let rows = client.query(&stmt, &all).await?;
        if commit {
            client.batch_execute("COMMIT").await?;
            self.state = TxState::Done;
        }
        Ok(rows)
    }

    async fn pipeline(
        &mut self,
        sql: &'static str,
        params: Params<'_>,
        commit: bool,
    ) -> Result<Vec<Row>, DbError> {
        if !is_scoped(sql) {
            return Err(DbError::Unscoped(sql));
        }
        if self.state == TxState::Done {
            return Err(DbError::Finished);
        }
        let mut all: Vec<&(dyn ToSql + Sync)> = Vec::with_capacity(params.len() + 1);
        let tenant: &str = self.tenant.as_str();
        all.push(&tenant);
        all.extend_from_slice(params);

        let text = self.text(sql)?;
        let rows = if self.state == TxState::Fresh {
            let (scope, stmt) = self.prepare_pair(&text).await?;
            // Mark the transaction open *before* the first poll sends BEGIN, so that a
            // cancellation at any await point below still rolls the connection back.
            self.state = TxState::Open;
            let client = self.conn.client()?;
            let path: &str = self.search_path.as_deref().unwrap_or_default();
            let mut millis = itoa::Buffer::new();
            let timeout: &str = self.timeout_setting(&mut millis);
            let scope_params: Vec<&(dyn ToSql + Sync)> = if self.search_path.is_some() {
                vec![&tenant, &timeout, &path]
            } else {
                vec![&tenant, &timeout]
            };
            let begin = client.batch_execute("BEGIN");
            let set = client.query(&scope, &scope_params);
            let query = client.query(&stmt, &all);
            if commit {
                let end = client.batch_execute("COMMIT");
                let (b, s, q, c) = tokio::join!(begin, set, query, end);
                b?;
                s?;
                let rows = q?;
                c?;
                self.state = TxState::Done;
                rows
            } else {
                let (b, s, q) = tokio::join!(begin, set, query);
                b?;
                s?;
                q?
            }
        } else {
            let client = self.conn.client()?;
            let stmt = client.prepare_cached(&text).await?;
            let rows = client.query(&stmt, &all).await?;
            if commit {
                client.batch_execute("COMMIT").await?;
                self.state = TxState::Done;
            }
            rows
        };
        Ok(rows)
    }

    /// The statement text to prepare. For a `schema` tenant it names the schema in a trailing
    /// comment, so each connection keeps one prepared statement per schema: PostgreSQL re-analyses
    /// a cached statement whenever `search_path` differs from the one it was last planned under,
    /// so one statement shared by every schema is re-planned on nearly every use. Bounded per
    /// connection (beyond it, the shared statement as before), since each costs server memory.
    fn text(&self, sql: &'static str) -> Result<std::borrow::Cow<'static, str>, DbError> {
        Ok(match &self.search_path {
            Some(path) if self.conn.client()?.statement_cache.size() < PER_SCHEMA_STATEMENTS => {
                // `path` is a quoted identifier made from a slug ([a-z0-9-]): it cannot end
                // the comment.
                // Pushed rather than `format!`ed: this runs on every schema tenant's statement.
                const OPEN: &str = "\n/* tenantry schema ";
                let mut text = String::with_capacity(sql.len() + OPEN.len() + path.len() + 3);
                text.push_str(sql);
                text.push_str(OPEN);
                text.push_str(path);
                text.push_str(" */");
                std::borrow::Cow::Owned(text)
            }
            _ => std::borrow::Cow::Borrowed(sql),
        })
    }

    /// Both statements come from the per-connection cache; on a new connection their two
    /// `Parse` messages are pipelined too.
    async fn prepare_pair(&self, sql: &str) -> Result<(Statement, Statement), DbError> {
        let client = self.conn.client()?;
        let scope_sql = if self.search_path.is_some() {
            SCOPE_SCHEMA_SQL
        } else {
            SCOPE_SQL
        };
        // For a schema tenant the statement must be planned against the tenant's schema, so
        // it cannot be prepared before the path is set; it is prepared once per connection
        // and re-planned by PostgreSQL for each schema.
        let (a, b) = tokio::join!(client.prepare_cached(scope_sql), client.prepare_cached(sql));
        Ok((a?, b?))
    }
}

fn is_stale_plan(e: &tokio_postgres::Error) -> bool {
    e.as_db_error().is_some_and(|d| {
        *d.code() == SqlState::FEATURE_NOT_SUPPORTED
            && d.message()
                .contains("cached plan must not change result type")
    })
}

impl Drop for ScopedTx {
    fn drop(&mut self) {
        if self.state == TxState::Open {
            // Polling once enqueues ROLLBACK on the connection's request channel, ahead of any
            // request from the connection's next user; its answer is discarded by the
            // connection task. This is how tokio-postgres's own Transaction cleans up.
            if let Ok(client) = self.conn.client() {
                let _ = client.batch_execute("ROLLBACK").now_or_never();
            }
        }
    }
}

fn one_or_none(rows: Vec<Row>) -> Result<Option<Row>, DbError> {
    let mut it = rows.into_iter();
    let first = it.next();
    if it.next().is_some() {
        return Err(DbError::TooManyRows);
    }
    Ok(first)
}
