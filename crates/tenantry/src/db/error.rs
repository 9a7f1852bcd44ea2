//! Storage errors, classified so the HTTP layer can map them once.

use tokio_postgres::error::SqlState;

/// What went wrong in the storage layer.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// No connection could be had (database down, pool exhausted past its wait time).
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// A uniqueness constraint; the constraint name says which.
    #[error("unique constraint {constraint} violated")]
    Unique { constraint: String },
    /// A foreign key; the constraint name says which.
    #[error("foreign key {constraint} violated")]
    ForeignKey { constraint: String },
    /// A CHECK or NOT NULL constraint, or a row-level security WITH CHECK refusal.
    #[error("constraint {constraint} violated")]
    Check { constraint: String },
    /// The statement ran past its timeout.
    #[error("statement timed out")]
    Timeout,
    /// A write reached a placement the tenant has moved out of (the write fence refused it);
    /// it belongs in the tenant's new placement.
    #[error("the tenant has moved to another placement")]
    TenantMoved,
    /// A statement without the tenant filter reached the scoped transaction: a programming
    /// error, caught before anything is sent.
    #[error("statement lacks `tenant_id = $1`: {0}")]
    Unscoped(&'static str),
    /// A statement on a transaction that already ended.
    #[error("transaction already finished")]
    Finished,
    /// A single-row statement returned several rows.
    #[error("statement returned more than one row")]
    TooManyRows,
    /// The runtime role could bypass isolation; the server must not start.
    #[error("unsafe runtime role: {0}")]
    UnsafeRole(String),
    /// Bad settings.
    #[error("configuration: {0}")]
    Config(String),
    /// A migration failed.
    #[error("migration {version} ({name}) failed: {source}")]
    Migration {
        version: i32,
        name: &'static str,
        #[source]
        source: Box<DbError>,
    },
    /// Anything else from PostgreSQL.
    #[error("database error: {}", describe(.0))]
    Other(tokio_postgres::Error),
}

/// tokio-postgres's Display says only "db error"; operators need the server's message.
fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => e.to_string(),
    }
}

impl From<tokio_postgres::Error> for DbError {
    fn from(e: tokio_postgres::Error) -> Self {
        if e.is_closed() {
            return DbError::Unavailable(e.to_string());
        }
        let Some(db) = e.as_db_error() else {
            // I/O errors and the like: the connection is gone.
            return DbError::Unavailable(e.to_string());
        };
        if db.code().code() == crate::db::control::fence::MOVED_SQLSTATE {
            return DbError::TenantMoved;
        }
        let constraint = || db.constraint().unwrap_or_default().to_owned();
        match *db.code() {
            SqlState::UNIQUE_VIOLATION => DbError::Unique {
                constraint: constraint(),
            },
            SqlState::FOREIGN_KEY_VIOLATION => DbError::ForeignKey {
                constraint: constraint(),
            },
            SqlState::CHECK_VIOLATION | SqlState::NOT_NULL_VIOLATION => DbError::Check {
                constraint: constraint(),
            },
            // "new row violates row-level security policy": a write outside the tenant.
            SqlState::INSUFFICIENT_PRIVILEGE if db.message().contains("row-level security") => {
                DbError::Check {
                    constraint: "row_level_security".into(),
                }
            }
            SqlState::QUERY_CANCELED => DbError::Timeout,
            SqlState::ADMIN_SHUTDOWN
            | SqlState::CRASH_SHUTDOWN
            | SqlState::CANNOT_CONNECT_NOW
            | SqlState::TOO_MANY_CONNECTIONS => DbError::Unavailable(e.to_string()),
            _ => DbError::Other(e),
        }
    }
}

impl From<deadpool_postgres::PoolError> for DbError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        match e {
            deadpool_postgres::PoolError::Backend(e) => e.into(),
            other => DbError::Unavailable(other.to_string()),
        }
    }
}

impl DbError {
    /// Whether the cause is outside the request (retry later) rather than in it.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            DbError::Unavailable(_) | DbError::Timeout | DbError::TenantMoved
        )
    }
}
