//! Long-running admin operations (fleet migrations, moves) and their progress, kept in the
//! catalog so any node can answer `GET /admin/v1/operations/{id}`.

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use crate::db::fleet::{self, MigrateOptions};
use crate::db::{Database, DbError};

/// An operation as the admin plane shows it.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Operation {
    pub id: Uuid,
    pub kind: String,
    pub tenant: Option<String>,
    pub state: String,
    pub progress: f32,
    pub detail: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

const COLS: &str = "id, kind, tenant_id, state, progress, detail, created_at, updated_at";

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
    let r = async {
        let c = db.control().get().await?;
        c.execute(
            "UPDATE tenantry.operations SET state = $2, progress = $3, detail = $4, updated_at = now()
             WHERE id = $1",
            &[&id, &state, &progress, &detail],
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
