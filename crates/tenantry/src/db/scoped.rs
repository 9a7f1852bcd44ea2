//! The scoped transaction: the only door from a [`TenantContext`](crate::TenantContext) to tenant
//! tables.
//!
//! What must hold:
//! - every transaction that touches tenant tables first runs
//!   `set_config('app.tenant_id', <tenant>, true)`; the setting is transaction-local, so a pooled
//!   connection never carries it into the next transaction;
//! - every statement still says `tenant_id = $1` itself, and `$1` is always the context's tenant:
//!   callers pass only the remaining parameters, so they cannot bind another tenant there;
//! - statements are `&'static str`: SQL is never assembled from input at run time;
//! - a transaction that is dropped unfinished (an error, a panic, a client that hung up and so
//!   cancelled the handler's future) is rolled back before the connection can serve anyone else.
//!
//! Cost: `BEGIN`, the setting and the first statement are pipelined into one round trip, and
//! [`TenantDb::run`] pipelines `COMMIT` too, so a single-statement read or write costs exactly
//! one round trip, the same as a bare query. Multi-statement transactions pay one round trip per
//! statement plus one for `COMMIT`.

use deadpool_postgres::{Object, Pool};
use futures_util::FutureExt;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Row, Statement};

use super::DbError;
use crate::tenant::TenantId;

/// The statement that scopes a transaction. Kept in exactly one place: a Citus deployment needs
/// `SET LOCAL` here instead, because Citus forwards `SET LOCAL` to workers but not `set_config()`.
const SCOPE_SQL: &str = "SELECT set_config('app.tenant_id', $1, true)";

/// The marker every tenant statement must contain. Checked on every call; it is cheap (a
/// substring search over a short static string) and turns a forgotten tenant filter into an
/// error in the first test that runs the statement.
const TENANT_FILTER: &str = "tenant_id = $1";

/// Whether a statement names its tenant: `tenant_id = $1` in its filter, or, for an INSERT, a
/// column list that starts with `tenant_id` and values that start with `$1`. A guard against
/// forgetting, not against malice: forced RLS is what holds against the latter.
fn is_scoped(sql: &str) -> bool {
    let head = sql.trim_start();
    if head
        .get(..6)
        .is_some_and(|h| h.eq_ignore_ascii_case("insert"))
    {
        let compact: String = sql.split_whitespace().collect::<Vec<_>>().join(" ");
        return compact.contains("(tenant_id,") && compact.contains("($1,");
    }
    sql.contains(TENANT_FILTER)
}

/// Parameters of a tenant statement, after the implicit `$1`.
pub type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

/// A handle to one tenant's storage. Obtained only from a tenant context.
pub struct TenantDb<'a> {
    pool: &'a Pool,
    tenant: &'a TenantId,
}

impl<'a> TenantDb<'a> {
    pub(crate) fn new(pool: &'a Pool, tenant: &'a TenantId) -> Self {
        Self { pool, tenant }
    }

    /// Starts a scoped transaction. Nothing is sent until the first statement, which then
    /// carries `BEGIN` and the tenant setting in the same round trip.
    pub async fn begin(&self) -> Result<ScopedTx, DbError> {
        let client = self.pool.get().await?;
        Ok(ScopedTx {
            client,
            tenant: self.tenant.clone(),
            state: TxState::Fresh,
        })
    }

    /// Runs one statement in its own scoped transaction and commits it: `BEGIN`, the setting, the
    /// statement and `COMMIT` travel together, one round trip in all.
    pub async fn run(&self, sql: &'static str, params: Params<'_>) -> Result<Vec<Row>, DbError> {
        let mut tx = self.begin().await?;
        let rows = tx.pipeline(sql, params, true).await?;
        Ok(rows)
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

/// A transaction on one pooled connection with `app.tenant_id` set for its whole life.
pub struct ScopedTx {
    client: Object,
    tenant: TenantId,
    state: TxState,
}

impl ScopedTx {
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
        self.pipeline(sql, params, false).await
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
            self.client.batch_execute("COMMIT").await?;
        }
        self.state = TxState::Done;
        Ok(())
    }

    /// Rolls back explicitly (dropping does the same, without waiting).
    pub async fn rollback(mut self) -> Result<(), DbError> {
        if self.state == TxState::Open {
            self.state = TxState::Done;
            self.client.batch_execute("ROLLBACK").await?;
        }
        Ok(())
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

        let rows = if self.state == TxState::Fresh {
            let (scope, stmt) = self.prepare_pair(sql).await?;
            // Mark the transaction open *before* the first poll sends BEGIN, so that a
            // cancellation at any await point below still rolls the connection back.
            self.state = TxState::Open;
            let client = &self.client;
            let begin = client.batch_execute("BEGIN");
            let scope_params: [&(dyn ToSql + Sync); 1] = [&tenant];
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
            let stmt = self.client.prepare_cached(sql).await?;
            let rows = self.client.query(&stmt, &all).await?;
            if commit {
                self.client.batch_execute("COMMIT").await?;
                self.state = TxState::Done;
            }
            rows
        };
        Ok(rows)
    }

    /// Both statements come from the per-connection cache; on a new connection their two
    /// `Parse` messages are pipelined too.
    async fn prepare_pair(&self, sql: &str) -> Result<(Statement, Statement), DbError> {
        let (a, b) = tokio::join!(
            self.client.prepare_cached(SCOPE_SQL),
            self.client.prepare_cached(sql)
        );
        Ok((a?, b?))
    }
}

impl Drop for ScopedTx {
    fn drop(&mut self) {
        if self.state == TxState::Open {
            // Polling once enqueues ROLLBACK on the connection's request channel, ahead of any
            // request from the connection's next user; its answer is discarded by the
            // connection task. This is how tokio-postgres's own Transaction cleans up.
            let _ = self.client.batch_execute("ROLLBACK").now_or_never();
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

#[cfg(test)]
mod tests {
    use super::is_scoped;

    #[test]
    fn scoped_statements() {
        assert!(is_scoped(
            "SELECT * FROM t WHERE tenant_id = $1 AND id = $2"
        ));
        assert!(is_scoped("INSERT INTO t (tenant_id, id) VALUES ($1, $2)"));
        assert!(is_scoped(
            "insert into t\n  (tenant_id, id)\n  values ($1, $2)"
        ));
        assert!(!is_scoped("SELECT * FROM t WHERE id = $2"));
        assert!(!is_scoped("INSERT INTO t (id, tenant_id) VALUES ($2, $1)"));
        assert!(!is_scoped("DELETE FROM t"));
    }
}
