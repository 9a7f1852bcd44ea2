//! Exports: `POST /v1/exports` queues a job that writes the tenant's orders as CSV;
//! `GET /v1/jobs/{id}` reports it; `GET /v1/exports/{id}/download` streams the file.
//!
//! The CSV is produced page by page and stored in 64 KiB chunks in the tenant's own
//! `export_chunks` table (so it lives in the tenant's placement and is removed with it), and it
//! is streamed back chunk by chunk: neither side holds the whole file in memory.

use std::fmt::Write as _;

use axum::body::Body;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use serde_json::json;
use tenantry::http::{ErrorCode, Problem};
use tenantry::jobs::{self, Job, JobError, JobFuture, NewJob};
use tenantry::{Json, TenantContext};
use uuid::Uuid;

use super::users::ResourceId;

/// The job kind.
pub const EXPORT: &str = "export";
const CHUNK: usize = 64 * 1024;
const PAGE: i64 = 1000;

/// The answer to `POST /exports`: the job to poll.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct JobAccepted {
    pub job_id: Uuid,
    /// `queued`.
    pub state: String,
}

#[utoipa::path(post, path = "/exports", tag = "exports", operation_id = "create_export",
    summary = "Export the tenant's orders as CSV",
    description = "Queues a background job; poll `GET /jobs/{id}`, then download the file.",
    responses((status = 202, description = "Queued.", body = JobAccepted)))]
pub async fn create(ctx: TenantContext) -> Result<(StatusCode, Json<JobAccepted>), Problem> {
    let job = jobs::enqueue(&ctx, &NewJob::new(EXPORT, json!({}))).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(JobAccepted {
            job_id: job.id,
            state: job.state,
        }),
    ))
}

#[utoipa::path(get, path = "/jobs/{id}", tag = "exports", operation_id = "get_job",
    summary = "A background job's state",
    params(("id" = uuid::Uuid, Path, description = "The job id from `POST /exports`.")),
    responses(
        (status = 200, description = "The job.", body = Job),
        (status = 404, description = "`not_found`: no such job in this tenant."),
    ))]
pub async fn job(ctx: TenantContext, ResourceId(id): ResourceId) -> Result<Json<Job>, Problem> {
    jobs::get(&ctx, id)
        .await?
        .map(Json)
        .ok_or_else(Problem::not_found)
}

#[utoipa::path(get, path = "/exports/{id}/download", tag = "exports", operation_id = "download_export",
    summary = "Download a finished export",
    params(("id" = uuid::Uuid, Path, description = "The export's job id.")),
    responses(
        (status = 200, description = "The CSV, streamed.", content_type = "text/csv", body = String),
        (status = 404, description = "`not_found`: no such export in this tenant."),
        (status = 409, description = "`conflict`: the export has not succeeded (yet)."),
    ))]
pub async fn download(ctx: TenantContext, ResourceId(id): ResourceId) -> Result<Response, Problem> {
    let job = jobs::get(&ctx, id)
        .await?
        .filter(|j| j.kind == EXPORT)
        .ok_or_else(Problem::not_found)?;
    if job.state != "succeeded" {
        return Err(Problem::new(
            ErrorCode::Conflict,
            format!(
                "the export is {}; download it once it has succeeded",
                job.state
            ),
        ));
    }
    let chunks = job
        .result
        .as_ref()
        .and_then(|r| r["chunks"].as_i64())
        .unwrap_or(0) as i32;
    let stream = futures_util::stream::iter(0..chunks).then(move |seq| {
        let ctx = ctx.clone();
        async move {
            let row = ctx
                .db()
                .run_opt(
                    "SELECT data FROM export_chunks WHERE tenant_id = $1 AND export_id = $2 AND seq = $3",
                    &[&id, &seq],
                )
                .await
                .map_err(std::io::Error::other)?
                .ok_or_else(|| std::io::Error::other("export chunk missing"))?;
            Ok::<_, std::io::Error>(bytes::Bytes::from(row.get::<_, Vec<u8>>(0)))
        }
    });
    Ok((
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"orders-{id}.csv\""),
            ),
        ],
        Body::from_stream(stream),
    )
        .into_response())
}

/// The job: the tenant's orders, page by page, into chunks.
pub fn run(ctx: TenantContext, job: Job) -> JobFuture {
    Box::pin(async move {
        let export = job.id;
        // A retry starts over.
        ctx.db()
            .run(
                "DELETE FROM export_chunks WHERE tenant_id = $1 AND export_id = $2",
                &[&export],
            )
            .await?;
        let mut buf =
            String::from("id,user_id,amount_cents,currency,status,created_at,updated_at\n");
        let (mut rows, mut bytes, mut seq) = (0i64, 0usize, 0i32);
        let mut after: Option<Uuid> = None;
        loop {
            let page = ctx
                .db()
                .run(
                    "SELECT id, user_id, amount_cents, currency, status, created_at, updated_at
                     FROM orders WHERE tenant_id = $1 AND ($2::uuid IS NULL OR id > $2)
                     ORDER BY id LIMIT $3",
                    &[&after, &PAGE],
                )
                .await?;
            for r in &page {
                let (id, user, amount, currency, status): (Uuid, Uuid, i64, String, String) =
                    (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4));
                let created: chrono::DateTime<chrono::Utc> = r.get(5);
                let updated: chrono::DateTime<chrono::Utc> = r.get(6);
                let _ = writeln!(
                    buf,
                    "{id},{user},{amount},{currency},{status},{},{}",
                    created.to_rfc3339(),
                    updated.to_rfc3339()
                );
                rows += 1;
                after = Some(id);
                if buf.len() >= CHUNK {
                    bytes += buf.len();
                    write_chunk(&ctx, export, seq, std::mem::take(&mut buf)).await?;
                    seq += 1;
                }
            }
            if (page.len() as i64) < PAGE {
                break;
            }
        }
        if !buf.is_empty() {
            bytes += buf.len();
            write_chunk(&ctx, export, seq, buf).await?;
            seq += 1;
        }
        Ok(json!({"rows": rows, "bytes": bytes, "chunks": seq}))
    })
}

async fn write_chunk(
    ctx: &TenantContext,
    export: Uuid,
    seq: i32,
    data: String,
) -> Result<(), JobError> {
    ctx.db()
        .run(
            "INSERT INTO export_chunks (tenant_id, export_id, seq, data) VALUES ($1, $2, $3, $4)",
            &[&export, &seq, &data.into_bytes()],
        )
        .await?;
    Ok(())
}

/// A diagnostic job kind: sleeps `ms` milliseconds (or fails when `fail` is set). Used by the
/// crash-recovery and fairness tests and by operators to check that workers run.
pub const SLEEP: &str = "sleep";

pub fn sleep(_ctx: TenantContext, job: Job) -> JobFuture {
    Box::pin(async move {
        let ms = job.payload["ms"].as_u64().unwrap_or(0).min(600_000);
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
        if let Some(msg) = job.payload["fail"].as_str() {
            return Err(JobError::Retry(msg.to_owned()));
        }
        Ok(json!({"slept_ms": ms}))
    })
}
