//! Tenant-isolated background jobs in PostgreSQL (no new infrastructure).
//!
//! What must hold:
//! - **Every job has a tenant**: [`enqueue`] takes a [`TenantContext`], so there is no way to
//!   enqueue a job without one, and a job runs inside its tenant's context (the same scoped
//!   transaction as a request, in every placement).
//! - **Fair claiming across tenants**: each tenant has a queue row with a virtual time; a
//!   worker claims from the tenant with the smallest virtual time that is under its concurrency
//!   cap, and each claim advances that tenant's virtual time by `1 / weight` (weight from its
//!   plan). A tenant with 10,000 queued jobs and a tenant with one take turns: the newcomer
//!   waits for at most one claim per other active tenant, whatever the backlog.
//!   `FOR UPDATE SKIP LOCKED` keeps workers from blocking each other.
//! - **Leases**: a claim holds a lease that the running worker extends; a worker that dies
//!   loses it and the job is reclaimed. Completion is fenced by (worker, attempt), so a worker
//!   that lost its lease cannot record an outcome over the new owner's.
//! - **Retries** with exponential backoff and jitter, up to `max_attempts`; then the job is
//!   `dead` (the tenant's dead letters), with its last error kept.
//! - **Idempotency keys**: enqueueing with a key the tenant already used returns that job.
//! - Workers wake on LISTEN/NOTIFY and poll as a fallback; on shutdown they stop claiming,
//!   let running jobs finish for a grace period, and release the rest.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::Semaphore;
use uuid::Uuid;

use crate::context::TenantContext;
use crate::db::DbError;
use crate::tenancy::Tenancy;
use crate::tenant::TenantId;

/// The notification channel that wakes workers.
pub(crate) const CHANNEL: &str = "tenantry_jobs";

/// A job as clients see it.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Job {
    pub id: Uuid,
    /// The tenant's id.
    #[serde(skip)]
    pub tenant: String,
    pub kind: String,
    pub state: String,
    pub attempts: i32,
    pub max_attempts: i32,
    pub last_error: Option<String>,
    #[serde(skip)]
    pub payload: serde_json::Value,
    pub result: Option<serde_json::Value>,
    pub created_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

const COLS: &str = "id, tenant_id, kind, state, attempts, max_attempts, last_error, payload, \
                    result, created_at, finished_at";

fn from_row(r: &tokio_postgres::Row) -> Job {
    Job {
        id: r.get(0),
        tenant: r.get(1),
        kind: r.get(2),
        state: r.get(3),
        attempts: r.get(4),
        max_attempts: r.get(5),
        last_error: r.get(6),
        payload: r.get(7),
        result: r.get(8),
        created_at: r.get(9),
        finished_at: r.get(10),
    }
}

/// A new job.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub kind: String,
    pub payload: serde_json::Value,
    pub max_attempts: i32,
    pub idempotency_key: Option<String>,
}

impl NewJob {
    pub fn new(kind: &str, payload: serde_json::Value) -> Self {
        Self {
            kind: kind.into(),
            payload,
            max_attempts: 5,
            idempotency_key: None,
        }
    }
}

/// Enqueues a job for the context's tenant (or returns the job an idempotency key names).
///
/// Runs on the runtime role under forced RLS keyed by the tenant, like any tenant write: a
/// tenant request never reaches the queue through the control role. The job enters its
/// tenant's queue row through the table's trigger (see the catalog migration), which places
/// it fairly among the other tenants' without letting the runtime role touch their rows.
pub async fn enqueue(ctx: &TenantContext, job: &NewJob) -> Result<Job, DbError> {
    let rows = ctx.control_rows();
    let concurrency = ctx.limits().job_concurrency.max(1) as i32;
    let inserted = rows
        .run_opt(
            "INSERT INTO tenantry.jobs (tenant_id, id, kind, payload, state, max_attempts, idempotency_key, concurrency)
             VALUES ($1, $2, $3, $4, 'queued', $5, $6, $7)
             ON CONFLICT (tenant_id, idempotency_key) DO NOTHING
             RETURNING id, tenant_id, kind, state, attempts, max_attempts, last_error, payload,
                       result, created_at, finished_at",
            &[
                &Uuid::now_v7(),
                &job.kind,
                &job.payload,
                &job.max_attempts.max(1),
                &job.idempotency_key,
                &concurrency,
            ],
        )
        .await?;
    if let Some(row) = inserted {
        return Ok(from_row(&row));
    }
    // The key was used before: that job is the answer.
    let existing = rows
        .run_opt(
            "SELECT id, tenant_id, kind, state, attempts, max_attempts, last_error, payload,
                    result, created_at, finished_at
             FROM tenantry.jobs WHERE tenant_id = $1 AND idempotency_key = $2",
            &[&job.idempotency_key],
        )
        .await?;
    existing
        .map(|r| from_row(&r))
        .ok_or_else(|| DbError::Unavailable("an idempotent job vanished while it was read".into()))
}

/// A job of the context's tenant (`None` for another tenant's id: it looks missing). On the
/// runtime role under forced RLS, like [`enqueue`].
pub async fn get(ctx: &TenantContext, id: Uuid) -> Result<Option<Job>, DbError> {
    let row = ctx
        .control_rows()
        .run_opt(
            "SELECT id, tenant_id, kind, state, attempts, max_attempts, last_error, payload,
                    result, created_at, finished_at
             FROM tenantry.jobs WHERE tenant_id = $1 AND id = $2",
            &[&id],
        )
        .await?;
    Ok(row.as_ref().map(from_row))
}

/// Why a job attempt failed.
#[derive(Debug, Clone)]
pub enum JobError {
    /// Try again later (counts toward `max_attempts`).
    Retry(String),
    /// Never retry: the job is `failed`.
    Permanent(String),
}

impl<E: std::fmt::Display> From<E> for JobError {
    fn from(e: E) -> Self {
        JobError::Retry(e.to_string())
    }
}

/// The future a handler returns.
pub type JobFuture = Pin<Box<dyn Future<Output = Result<serde_json::Value, JobError>> + Send>>;

/// Runs one kind of job, inside the job's tenant context.
pub trait JobHandler: Send + Sync + 'static {
    fn run(&self, ctx: TenantContext, job: Job) -> JobFuture;
}

impl<F> JobHandler for F
where
    F: Fn(TenantContext, Job) -> JobFuture + Send + Sync + 'static,
{
    fn run(&self, ctx: TenantContext, job: Job) -> JobFuture {
        self(ctx, job)
    }
}

/// Worker settings.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Jobs run at once by this worker.
    pub concurrency: usize,
    /// How long a claim is valid without a heartbeat.
    pub lease: Duration,
    /// Poll interval when no notification arrives.
    pub poll: Duration,
    /// Backoff base and cap for retries.
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// How long running jobs may finish after shutdown begins.
    pub grace: Duration,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            concurrency: 4,
            lease: Duration::from_secs(30),
            poll: Duration::from_millis(500),
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(300),
            grace: Duration::from_secs(10),
        }
    }
}

/// A pool of job runners.
#[derive(Clone)]
pub struct Worker {
    tenancy: Tenancy,
    handlers: Arc<HashMap<String, Arc<dyn JobHandler>>>,
    config: WorkerConfig,
    id: String,
}

impl Worker {
    pub fn new(tenancy: Tenancy, config: WorkerConfig) -> Self {
        Self {
            tenancy,
            handlers: Arc::new(HashMap::new()),
            config,
            id: format!("worker-{}", Uuid::new_v4().simple()),
        }
    }

    /// Registers the handler of a job kind.
    pub fn handle(mut self, kind: &str, handler: impl JobHandler) -> Self {
        Arc::get_mut(&mut self.handlers)
            .expect("handlers are registered before the worker runs")
            .insert(kind.to_owned(), Arc::new(handler));
        self
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// Claims and runs jobs until `shutdown` resolves, then drains.
    pub async fn run_until(self, shutdown: impl Future<Output = ()> + Send) {
        let slots = Arc::new(Semaphore::new(self.config.concurrency.max(1)));
        let wake = Arc::new(tokio::sync::Notify::new());
        let listener = tokio::spawn(listen(self.tenancy.clone(), wake.clone()));
        let mut shutdown = std::pin::pin!(shutdown);
        let mut last_reap = std::time::Instant::now() - Duration::from_secs(60);
        loop {
            if last_reap.elapsed() >= self.config.lease / 3 {
                last_reap = std::time::Instant::now();
                if let Err(e) = self.reap_expired().await {
                    tracing::warn!(error = %e, "could not reclaim expired job leases");
                }
            }
            let permit = tokio::select! {
                _ = &mut shutdown => break,
                p = slots.clone().acquire_owned() => p.expect("never closed"),
            };
            match self.claim().await {
                Ok(Some(job)) => {
                    let me = self.clone();
                    tokio::spawn(async move {
                        me.execute(job).await;
                        drop(permit);
                    });
                    continue;
                }
                Ok(None) => drop(permit),
                Err(e) => {
                    drop(permit);
                    tracing::warn!(error = %e, "job claim failed");
                }
            }
            tokio::select! {
                _ = &mut shutdown => break,
                _ = wake.notified() => {},
                _ = tokio::time::sleep(self.config.poll) => {},
            }
        }
        listener.abort();
        // Drain: wait for running jobs up to the grace period, then release what is left.
        let all = self.config.concurrency.max(1) as u32;
        if tokio::time::timeout(self.config.grace, slots.acquire_many(all))
            .await
            .is_err()
        {
            if let Err(e) = self.release_mine().await {
                tracing::warn!(error = %e, "could not release running jobs at shutdown");
            }
        }
    }

    /// Claims the next job fairly, or `None` when nothing is runnable.
    ///
    /// Candidates are read without locks, in virtual-time order; for each, one short
    /// transaction reserves a running slot under the tenant's cap (the row lock makes the cap
    /// check atomic), takes its oldest runnable job with `SKIP LOCKED`, and advances the
    /// tenant's virtual time. No lock is held across candidates, so claimers never deadlock, and
    /// a busy tenant row makes a claimer wait a moment instead of skipping ahead.
    pub async fn claim(&self) -> Result<Option<Job>, DbError> {
        let db = self.tenancy.catalog().database();
        let mut client = db.control().get().await?;
        let candidates: Vec<String> = client
            .query(
                "SELECT tenant_id FROM tenantry.job_queues
                 WHERE queued > 0 AND running < cap
                 ORDER BY vtime, tenant_id LIMIT 16",
                &[],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        for tenant in candidates {
            let tx = client.transaction().await?;
            let reserved = tx
                .execute(
                    "UPDATE tenantry.job_queues SET running = running + 1
                     WHERE tenant_id = $1 AND running < cap AND queued > 0",
                    &[&tenant],
                )
                .await?;
            if reserved == 0 {
                tx.rollback().await?;
                continue;
            }
            let row = tx
                .query_opt(
                    &format!(
                        "UPDATE tenantry.jobs SET state = 'running', attempts = attempts + 1,
                                locked_by = $2, lease_until = now() + $3 * interval '1 millisecond'
                         WHERE id = (SELECT id FROM tenantry.jobs
                                     WHERE tenant_id = $1 AND state = 'queued' AND run_at <= now()
                                     ORDER BY run_at, id LIMIT 1 FOR UPDATE SKIP LOCKED)
                         RETURNING {COLS}"
                    ),
                    &[&tenant, &self.id, &(self.config.lease.as_millis() as f64)],
                )
                .await?;
            let Some(row) = row else {
                // Only future (backed-off) jobs: give the slot back.
                tx.rollback().await?;
                continue;
            };
            tx.execute(
                "UPDATE tenantry.job_queues SET queued = queued - 1,
                        vtime = greatest(vtime, coalesce((SELECT min(vtime) FROM tenantry.job_queues
                                                          WHERE queued > 0), 0)) + 1.0 / weight
                 WHERE tenant_id = $1",
                &[&tenant],
            )
            .await?;
            tx.commit().await?;
            return Ok(Some(from_row(&row)));
        }
        Ok(None)
    }

    async fn execute(&self, job: Job) {
        let attempt = job.attempts;
        let id = job.id;
        let outcome = match (
            self.handlers.get(&job.kind).cloned(),
            TenantId::parse(&job.tenant),
        ) {
            (Some(handler), Ok(tenant)) => match self.tenancy.job_context(&tenant).await {
                Ok(Some(ctx)) => {
                    let heartbeat = tokio::spawn(heartbeat(
                        self.tenancy.clone(),
                        id,
                        self.id.clone(),
                        attempt,
                        self.config.lease,
                    ));
                    let r = handler.run(ctx, job.clone()).await;
                    heartbeat.abort();
                    r
                }
                Ok(None) => Err(JobError::Permanent("tenant is not active".into())),
                Err(e) => Err(JobError::Retry(e.to_string())),
            },
            (None, _) => Err(JobError::Permanent(format!(
                "no handler for job kind {:?}",
                job.kind
            ))),
            (_, Err(_)) => Err(JobError::Permanent("invalid tenant".into())),
        };
        if let Err(e) = self.finish(&job, outcome).await {
            tracing::warn!(job = %id, error = %e, "could not record a job outcome; its lease will expire");
        }
    }

    /// Records an outcome, fenced by (worker, attempt).
    async fn finish(
        &self,
        job: &Job,
        outcome: Result<serde_json::Value, JobError>,
    ) -> Result<(), DbError> {
        let db = self.tenancy.catalog().database();
        let mut client = db.control().get().await?;
        let tx = client.transaction().await?;
        let (state, error, result, delay_ms): (
            &str,
            Option<String>,
            Option<serde_json::Value>,
            f64,
        ) = match outcome {
            Ok(v) => ("succeeded", None, Some(v), 0.0),
            Err(JobError::Permanent(e)) => ("failed", Some(e), None, 0.0),
            Err(JobError::Retry(e)) if job.attempts >= job.max_attempts => {
                ("dead", Some(e), None, 0.0)
            }
            Err(JobError::Retry(e)) => ("queued", Some(e), None, self.backoff_ms(job.attempts)),
        };
        let n = tx
            .execute(
                "UPDATE tenantry.jobs SET state = $4, last_error = coalesce($5, last_error), result = $6,
                        locked_by = NULL, lease_until = NULL,
                        run_at = now() + $7 * interval '1 millisecond',
                        finished_at = CASE WHEN $4 IN ('succeeded', 'failed', 'dead') THEN now() END
                 WHERE id = $1 AND locked_by = $2 AND attempts = $3 AND state = 'running'",
                &[&job.id, &self.id, &job.attempts, &state, &error, &result, &delay_ms],
            )
            .await?;
        if n == 1 {
            let requeued: i32 = if state == "queued" { 1 } else { 0 };
            tx.execute(
                "UPDATE tenantry.job_queues SET running = greatest(running - 1, 0), queued = queued + $2
                 WHERE tenant_id = $1",
                &[&job.tenant, &requeued],
            )
            .await?;
            if state == "dead" {
                tracing::warn!(job = %job.id, tenant = %job.tenant, "job moved to dead letters after {} attempts", job.attempts);
            }
        } else {
            tracing::warn!(job = %job.id, "lost the job's lease before finishing; outcome discarded");
        }
        tx.commit().await?;
        Ok(())
    }

    /// Exponential backoff with ±50% jitter.
    fn backoff_ms(&self, attempts: i32) -> f64 {
        let base = self.config.backoff_base.as_millis() as f64;
        let max = self.config.backoff_max.as_millis() as f64;
        let exp = base * 2f64.powi((attempts - 1).clamp(0, 30));
        let jitter = 0.5 + rand::random::<f64>();
        (exp.min(max) * jitter).min(max)
    }

    /// Returns jobs whose lease expired (a dead worker's) to the queue, or to the dead letters
    /// when they have no attempts left.
    pub async fn reap_expired(&self) -> Result<u64, DbError> {
        let db = self.tenancy.catalog().database();
        let mut client = db.control().get().await?;
        let tx = client.transaction().await?;
        let rows = tx
            .query(
                "UPDATE tenantry.jobs SET
                    state = CASE WHEN attempts >= max_attempts THEN 'dead' ELSE 'queued' END,
                    last_error = coalesce(last_error, 'lease expired (worker lost)'),
                    locked_by = NULL, lease_until = NULL, run_at = now(),
                    finished_at = CASE WHEN attempts >= max_attempts THEN now() END
                 WHERE id IN (SELECT id FROM tenantry.jobs
                              WHERE state = 'running' AND lease_until < now()
                              FOR UPDATE SKIP LOCKED)
                 RETURNING tenant_id, state",
                &[],
            )
            .await?;
        for r in &rows {
            let tenant: String = r.get(0);
            let state: String = r.get(1);
            tx.execute(
                "UPDATE tenantry.job_queues SET running = greatest(running - 1, 0),
                        queued = queued + CASE WHEN $2 = 'queued' THEN 1 ELSE 0 END
                 WHERE tenant_id = $1",
                &[&tenant, &state],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(rows.len() as u64)
    }

    /// Shutdown: jobs this worker still runs go back to the queue at once (not counted as an
    /// attempt), instead of waiting for their leases to expire.
    async fn release_mine(&self) -> Result<(), DbError> {
        let db = self.tenancy.catalog().database();
        let mut client = db.control().get().await?;
        let tx = client.transaction().await?;
        let rows = tx
            .query(
                "UPDATE tenantry.jobs SET state = 'queued', attempts = greatest(attempts - 1, 0),
                        locked_by = NULL, lease_until = NULL, run_at = now()
                 WHERE locked_by = $1 AND state = 'running' RETURNING tenant_id",
                &[&self.id],
            )
            .await?;
        for r in &rows {
            tx.execute(
                "UPDATE tenantry.job_queues SET running = greatest(running - 1, 0), queued = queued + 1
                 WHERE tenant_id = $1",
                &[&r.get::<_, String>(0)],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

/// Extends a running job's lease every third of its length.
async fn heartbeat(tenancy: Tenancy, id: Uuid, worker: String, attempt: i32, lease: Duration) {
    let mut tick = tokio::time::interval(lease / 3);
    tick.tick().await;
    loop {
        tick.tick().await;
        let r = async {
            let client = tenancy.catalog().database().control().get().await?;
            client
                .execute(
                    "UPDATE tenantry.jobs SET lease_until = now() + $4 * interval '1 millisecond'
                     WHERE id = $1 AND locked_by = $2 AND attempts = $3 AND state = 'running'",
                    &[&id, &worker, &attempt, &(lease.as_millis() as f64)],
                )
                .await?;
            Ok::<_, DbError>(())
        }
        .await;
        if let Err(e) = r {
            tracing::warn!(job = %id, error = %e, "could not extend a job lease");
        }
    }
}

/// Wakes the worker on NOTIFY (the poll interval covers a lost connection).
async fn listen(tenancy: Tenancy, wake: Arc<tokio::sync::Notify>) {
    let config = tenancy.catalog().database().control_config().clone();
    loop {
        if let Ok(mut sub) = crate::db::notify::Subscription::open(&config, CHANNEL).await {
            while sub.next().await.is_some() {
                wake.notify_one();
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Jobs queued and running over every tenant, from the per-tenant queue rows (one row per
/// tenant with jobs, never the jobs themselves): what a metrics refresher reads.
pub async fn queue_depth(tenancy: &Tenancy) -> Result<(i64, i64), DbError> {
    let client = tenancy.catalog().database().control().get().await?;
    let row = client
        .query_one(
            "SELECT coalesce(sum(queued), 0)::bigint, coalesce(sum(running), 0)::bigint
             FROM tenantry.job_queues",
            &[],
        )
        .await?;
    Ok((row.get(0), row.get(1)))
}

/// Counts of a tenant's jobs by state (for operators and tests).
pub async fn counts(tenancy: &Tenancy, tenant: &TenantId) -> Result<HashMap<String, i64>, DbError> {
    let client = tenancy.catalog().database().control().get().await?;
    let rows = client
        .query(
            "SELECT state, count(*) FROM tenantry.jobs WHERE tenant_id = $1 GROUP BY state",
            &[&tenant.as_str()],
        )
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}
