//! Issue #7's headline: the full stack (API-key auth, hint check, rate limit, RLS-scoped
//! transaction) against a hand-written baseline handler, over HTTP, side by side.
//!
//! The baseline is what a team would write by hand: an axum handler that takes the tenant
//! from a header and runs `SELECT … WHERE tenant_id = $1 AND id = $2` on a pool of the same
//! size, with no auth, no RLS and no rate limit. Both servers and the load generator run in
//! this process; runs alternate (baseline, tenantry, baseline, …) so machine noise hits both.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use axum::{Json, Router};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use serde_json::{json, Value};
use tenantry_server::app::Application;
use tenantry_server::config::{ServeArgs, Settings};
use tokio_postgres::NoTls;
use uuid::Uuid;

use crate::report::Table;
use crate::wire::{Conn, Wire};
use crate::workloads::{seed, Op};

/// Read-by-id targets over seeded tenants, through Tenantry and through the baseline.
fn reads(addr: &str, seeded: &[crate::workloads::Seeded]) -> Arc<Vec<Target>> {
    crate::workloads::targets(addr, Op::Read, seeded)
}

fn baseline_reads(base: &str, seeded: &[crate::workloads::Seeded]) -> Arc<Vec<Target>> {
    crate::workloads::baseline_targets(base, Op::Read, seeded)
}
use crate::stats::{ms, Samples};

pub(crate) const ADMIN: &str = "bench-admin-token-0123456789";
/// CPU per request in this process: the servers and the load generator.
pub(crate) const CPU_BENCH: &str = "µs CPU/req, bench process";
/// CPU per request in PostgreSQL.
pub(crate) const CPU_PG: &str = "µs CPU/req, PostgreSQL";
/// The columns of every load table.
pub(crate) const LOAD_COLUMNS: [&str; 9] = [
    "scenario",
    "req/s",
    "p50 ms",
    "p99 ms",
    "p99.9 ms",
    "req/s ratio",
    "p99 ratio",
    CPU_BENCH,
    CPU_PG,
];

/// One load run's outcome.
#[derive(Debug, Clone, Default)]
pub struct Run {
    pub requests: usize,
    pub elapsed: Duration,
    pub latencies: Samples,
    pub statuses: std::collections::BTreeMap<u16, usize>,
    /// CPU seconds used by this process (servers and load generator) during the run.
    pub cpu_bench: f64,
    /// CPU seconds used by every PostgreSQL process during the run.
    pub cpu_pg: f64,
}

/// CPU seconds (user + system) of one process, from `/proc/<pid>/stat`.
fn process_cpu(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// CPU seconds of this process and of all `postgres` processes, now.
pub fn cpu_now() -> (f64, f64) {
    let me = process_cpu("self").unwrap_or(0.0);
    let mut pg = 0.0;
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let name = e.file_name();
            let Some(pid) = name
                .to_str()
                .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
            else {
                continue;
            };
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            if comm.trim() == "postgres" {
                pg += process_cpu(pid).unwrap_or(0.0);
            }
        }
    }
    (me, pg)
}

impl Run {
    pub fn rps(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// A request to fire.
#[derive(Debug, Clone)]
pub struct Target {
    pub method: reqwest::Method,
    pub url: String,
    pub headers: Vec<(String, String)>,
    /// A JSON body.
    pub body: Option<String>,
}

/// GET targets from (url, headers) pairs.
pub fn gets(v: Vec<(String, Vec<(String, String)>)>) -> Arc<Vec<Target>> {
    Arc::new(v.into_iter().map(Target::from).collect())
}

impl From<(String, Vec<(String, String)>)> for Target {
    /// A GET.
    fn from((url, headers): (String, Vec<(String, String)>)) -> Self {
        Target {
            method: reqwest::Method::GET,
            url,
            headers,
            body: None,
        }
    }
}

/// How every comparison is measured: each side warmed for `warmup`, then `rounds` rounds in
/// which the sides run one after another for `duration` each, so that the machine's noise
/// hits them all alike. One merged run per side, in the order given.
pub(crate) async fn alternate(
    sides: &[Arc<Vec<Target>>],
    clients: usize,
    warmup: Duration,
    duration: Duration,
    rounds: usize,
) -> Vec<Run> {
    for side in sides {
        load(side.clone(), clients, warmup).await;
    }
    let mut runs: Vec<Run> = sides.iter().map(|_| Run::default()).collect();
    for _ in 0..rounds {
        for (run, side) in runs.iter_mut().zip(sides) {
            merge(run, load(side.clone(), clients, duration).await);
        }
    }
    runs
}

/// Closed-loop load: `clients` connections, each firing the next target as soon as the last
/// answered, for `duration`.
pub async fn load(targets: Arc<Vec<Target>>, clients: usize, duration: Duration) -> Run {
    let wires: Arc<Vec<Wire>> = Arc::new(targets.iter().map(Wire::render).collect());
    let stop = Arc::new(AtomicBool::new(false));
    let cpu0 = cpu_now();
    let start = Instant::now();
    let mut handles = Vec::new();
    for c in 0..clients {
        let (wires, stop) = (wires.clone(), stop.clone());
        handles.push(tokio::spawn(async move {
            let mut run = Run::default();
            let mut conn = Conn::default();
            let mut i = c * 7919;
            while !stop.load(Ordering::Relaxed) {
                i = (i + 104_729) % wires.len();
                let t0 = Instant::now();
                let status = conn.send(&wires[i]).await;
                run.latencies.push(t0.elapsed());
                *run.statuses.entry(status).or_default() += 1;
                run.requests += 1;
            }
            run
        }));
    }
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Run::default();
    for h in handles {
        let r = h.await.unwrap();
        all.requests += r.requests;
        all.latencies.0.extend(r.latencies.0);
        for (k, v) in r.statuses {
            *all.statuses.entry(k).or_default() += v;
        }
    }
    all.elapsed = start.elapsed();
    let cpu1 = cpu_now();
    all.cpu_bench = cpu1.0 - cpu0.0;
    all.cpu_pg = cpu1.1 - cpu0.1;
    all
}

/// The baseline's read.
const READ_SQL: &str = "SELECT id, user_id, amount_cents, currency, status, created_at, updated_at
         FROM shared.orders WHERE tenant_id = $1 AND id = $2";

/// The floors' read: the baseline's, in the single-statement form the library sends.
static FLOOR_SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    tenantry::db::single_statement_form(READ_SQL).expect("a read has a single-statement form")
});

/// The hand-written baseline: tenant from a header, one SELECT, same pool size.
async fn baseline(
    State(pool): State<Pool>,
    headers: HeaderMap,
    Path(id): Path<Uuid>,
) -> Result<Json<Value>, StatusCode> {
    read_with(&pool, READ_SQL, headers, id).await
}

/// The baseline's handler with the database's safety net added and nothing else: its pool is on
/// the runtime role (forced RLS applies) and it sends the statement the library sends for this
/// read, which sets the tenant for the policy. What separates it from the baseline is the cost
/// of invariant 2 in PostgreSQL, which any design that keeps RLS as a safety net pays; what
/// separates tenantry from it is the library's own work (auth, hint check, limits, context).
async fn rls_floor(
    State(pool): State<Pool>,
    headers: HeaderMap,
    Path(id): Path<Uuid>,
) -> Result<Json<Value>, StatusCode> {
    read_with(&pool, &FLOOR_SQL, headers, id).await
}

/// The floor of the `schema` placement, the same way: on the runtime role, the statements the
/// library sends for a schema tenant's read, pipelined into one round trip as it does: `BEGIN`,
/// the transaction-local settings (tenant, statement timeout, `search_path` to the tenant's
/// schema alone), the read (its text per schema, so each connection keeps one plan per schema)
/// and `COMMIT`. Four statements where the shared floor sends one: `search_path` must be set
/// before the read is planned, so it cannot travel inside the read.
async fn schema_floor(
    State(pool): State<Pool>,
    headers: HeaderMap,
    Path(id): Path<Uuid>,
) -> Result<Json<Value>, StatusCode> {
    let tenant = tenant_header(&headers)?;
    let slug = headers
        .get("x-tenant-slug")
        .and_then(|v| v.to_str().ok())
        .and_then(|s| tenantry::Slug::parse(s).ok())
        .ok_or(StatusCode::BAD_REQUEST)?;
    let path = tenantry::db::quote_ident(&tenantry::db::schema_name(slug.as_str()));
    let client = pool
        .get()
        .await
        .map_err(|_| StatusCode::SERVICE_UNAVAILABLE)?;
    let read = format!("{SCHEMA_READ_SQL}\n/* schema {path} */");
    let (Ok(set), Ok(read)) = tokio::join!(
        client.prepare_cached(tenantry::db::SCOPE_SCHEMA_SQL),
        client.prepare_cached(&read)
    ) else {
        return Err(StatusCode::INTERNAL_SERVER_ERROR);
    };
    let timeout = "5000";
    let settings: [&(dyn tokio_postgres::types::ToSql + Sync); 3] = [&tenant, &timeout, &path];
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&tenant, &id];
    let (b, s, q, c) = tokio::join!(
        client.batch_execute("BEGIN"),
        client.query(&set, &settings),
        client.query_opt(&read, &params),
        client.batch_execute("COMMIT")
    );
    match (b, s, q, c) {
        (Ok(()), Ok(_), Ok(row), Ok(())) => {
            Ok(Json(order_json(&row.ok_or(StatusCode::NOT_FOUND)?)))
        }
        _ => {
            // A failed pipeline can leave the transaction open: never hand the connection on.
            let _ = deadpool_postgres::Object::take(client);
            Err(StatusCode::INTERNAL_SERVER_ERROR)
        }
    }
}

/// The read as a schema tenant's code writes it: unqualified, resolved through `search_path`.
const SCHEMA_READ_SQL: &str =
    "SELECT id, user_id, amount_cents, currency, status, created_at, updated_at
         FROM orders WHERE tenant_id = $1 AND id = $2";

/// One order by tenant (from the header) and id, through `sql`.
async fn read_with(
    pool: &Pool,
    sql: &str,
    headers: HeaderMap,
    id: Uuid,
) -> Result<Json<Value>, StatusCode> {
    let tenant = tenant_header(&headers)?;
    let client = pool
        .get()
        .await
        .map_err(|_| StatusCode::SERVICE_UNAVAILABLE)?;
    read_on(&client, sql, &tenant, id).await
}

/// One order by tenant and id through `sql`, prepared (and kept) on `client`.
async fn read_on(
    client: &deadpool_postgres::ClientWrapper,
    sql: &str,
    tenant: &str,
    id: Uuid,
) -> Result<Json<Value>, StatusCode> {
    let stmt = client
        .prepare_cached(sql)
        .await
        .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?;
    let row = client
        .query_opt(&stmt, &[&tenant, &id])
        .await
        .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?
        .ok_or(StatusCode::NOT_FOUND)?;
    Ok(Json(order_json(&row)))
}

/// A pooled connection and a cached statement on it, as every baseline handler starts.
async fn prepared(
    pool: &Pool,
    sql: &str,
) -> Result<(deadpool_postgres::Object, tokio_postgres::Statement), StatusCode> {
    let client = pool
        .get()
        .await
        .map_err(|_| StatusCode::SERVICE_UNAVAILABLE)?;
    let stmt = client
        .prepare_cached(sql)
        .await
        .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?;
    Ok((client, stmt))
}

fn tenant_header(headers: &HeaderMap) -> Result<String, StatusCode> {
    headers
        .get("x-tenant-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .ok_or(StatusCode::BAD_REQUEST)
}

fn order_json(row: &tokio_postgres::Row) -> Value {
    let created: chrono::DateTime<chrono::Utc> = row.get(5);
    let updated: chrono::DateTime<chrono::Utc> = row.get(6);
    json!({
        "id": row.get::<_, Uuid>(0), "user_id": row.get::<_, Uuid>(1),
        "amount_cents": row.get::<_, i64>(2), "currency": row.get::<_, String>(3),
        "status": row.get::<_, String>(4), "created_at": created, "updated_at": updated,
    })
}

/// The hand-written list: the tenant's first 50 orders by id.
async fn baseline_list(
    State(pool): State<Pool>,
    headers: HeaderMap,
) -> Result<Json<Value>, StatusCode> {
    let tenant = tenant_header(&headers)?;
    let (client, stmt) = prepared(
        &pool,
        "SELECT id, user_id, amount_cents, currency, status, created_at, updated_at
         FROM shared.orders WHERE tenant_id = $1 ORDER BY id LIMIT 51",
    )
    .await?;
    let rows = client
        .query(&stmt, &[&tenant])
        .await
        .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?;
    let items: Vec<Value> = rows.iter().take(50).map(order_json).collect();
    let next = (rows.len() > 50).then(|| items.last().map(|o| o["id"].clone()));
    Ok(Json(json!({"items": items, "next_cursor": next.flatten()})))
}

/// The hand-written create: the same INSERT, the foreign key checks the user's tenant.
async fn baseline_create(
    State(pool): State<Pool>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Result<(StatusCode, Json<Value>), StatusCode> {
    let tenant = tenant_header(&headers)?;
    let user: Uuid = body["user_id"]
        .as_str()
        .and_then(|u| u.parse().ok())
        .ok_or(StatusCode::UNPROCESSABLE_ENTITY)?;
    let amount = body["amount_cents"]
        .as_i64()
        .ok_or(StatusCode::UNPROCESSABLE_ENTITY)?;
    let currency = body["currency"]
        .as_str()
        .ok_or(StatusCode::UNPROCESSABLE_ENTITY)?;
    let (client, stmt) = prepared(
        &pool,
        "INSERT INTO shared.orders (tenant_id, id, user_id, amount_cents, currency, status)
         VALUES ($1, $2, $3, $4, $5, 'pending')
         RETURNING id, user_id, amount_cents, currency, status, created_at, updated_at",
    )
    .await?;
    let row = client
        .query_one(
            &stmt,
            &[&tenant, &Uuid::now_v7(), &user, &amount, &currency],
        )
        .await
        .map_err(|_| StatusCode::UNPROCESSABLE_ENTITY)?;
    Ok((StatusCode::CREATED, Json(order_json(&row))))
}

/// A pool of `size` connections for a hand-written handler.
fn handler_pool(cfg: tokio_postgres::Config, size: usize) -> Pool {
    let mgr = Manager::from_config(
        cfg,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(mgr).max_size(size).build().unwrap()
}

/// The baseline server; it stops (and drops its pool) when the returned guard is dropped.
pub(crate) async fn start_baseline(
    db_url: &str,
    pool_size: usize,
) -> (String, tokio::sync::oneshot::Sender<()>) {
    let pool = handler_pool(db_url.parse().unwrap(), pool_size);
    let app = Router::new()
        .route("/orders/{id}", get(baseline))
        .route("/orders", get(baseline_list).post(baseline_create))
        .with_state(pool);
    serve_router(app).await
}

/// The floors ([`rls_floor`] under `/orders`, [`schema_floor`] under `/schema/orders`): the
/// baseline's read on the server's runtime role `runtime` (the connection logs in as the
/// superuser of `db_url` and takes the role at start-up, so no password is needed), same pool
/// size.
pub(crate) async fn start_rls_floor(
    db_url: &str,
    runtime: &str,
    pool_size: usize,
) -> (String, tokio::sync::oneshot::Sender<()>) {
    let mut cfg: tokio_postgres::Config = db_url.parse().unwrap();
    // As the runtime pool starts: the shared schema alone on the path.
    cfg.options(format!("-c role={runtime} -c search_path=shared"));
    let pool = handler_pool(cfg, pool_size);
    let app = Router::new()
        .route("/orders/{id}", get(rls_floor))
        .route("/schema/orders/{id}", get(schema_floor))
        .with_state(pool);
    serve_router(app).await
}

/// The floor of the `database` placement: [`rls_floor`]'s handler, but each tenant's read goes
/// to that tenant's own database, through the server's own tenant-database pools (so the same
/// connections, sized as the library sizes them: the budget shared between the open tenant
/// databases, 2 each for 20 databases over 40; a second set of pools would also take more
/// connections than PostgreSQL's default 100). What separates it from the shared floor is
/// what placing each tenant in its own database costs any design: more backends than cores,
/// each with its own catalog and plan caches, and requests queueing on their tenant's small
/// share of the connections.
///
/// Returns its reads of the `seeded` tenants, with the guard that stops it when dropped.
pub(crate) async fn start_database_floor(
    server: &Server,
    seeded: &[crate::workloads::Seeded],
) -> (Arc<Vec<Target>>, tokio::sync::oneshot::Sender<()>) {
    let databases: std::collections::HashMap<String, String> = seeded
        .iter()
        .map(|t| {
            let name = tenantry::db::database_name(server.db_name(), &t.slug);
            (t.id.clone(), name)
        })
        .collect();
    let app = Router::new()
        .route("/orders/{id}", get(database_floor))
        .with_state(Arc::new((server.db.clone(), databases)));
    let (addr, stop) = serve_router(app).await;
    (baseline_reads(&addr, seeded), stop)
}

/// [`rls_floor`] on the tenant's own database.
async fn database_floor(
    State(state): State<
        Arc<(
            tenantry::db::Database,
            std::collections::HashMap<String, String>,
        )>,
    >,
    headers: HeaderMap,
    Path(id): Path<Uuid>,
) -> Result<Json<Value>, StatusCode> {
    let (db, databases) = &*state;
    let tenant = tenant_header(&headers)?;
    let database = databases.get(&tenant).ok_or(StatusCode::BAD_REQUEST)?;
    let client = db
        .tenant_pools()
        .get(tenantry::DEFAULT_SERVER, database)
        .await
        .map_err(|_| StatusCode::SERVICE_UNAVAILABLE)?;
    read_on(&client, &FLOOR_SQL, &tenant, id).await
}

/// Serves `app` on a free port until the returned sender is dropped.
async fn serve_router(app: Router) -> (String, tokio::sync::oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await
    });
    (addr, stop)
}

/// Settings for an in-process benchmark server: port 0, no worker, no config file.
pub fn serve_args(db_url: &str, prefix: &str, admin: &str, order_cache: Option<&str>) -> ServeArgs {
    ServeArgs {
        listen: Some("127.0.0.1:0".parse().expect("static address")),
        database_url: Some(db_url.to_owned()),
        runtime_database_url: None,
        admin_token: Some(admin.into()),
        metrics_token: None,
        base_domain: None,
        role_prefix: Some(prefix.to_owned()),
        data_dir: None,
        tenant_db_budget: None,
        tenant_db_per_tenant: None,
        worker_concurrency: Some(0),
        runtime_lanes: None,
        order_cache: order_cache.map(str::to_owned),
        job_lease_ms: None,
        move_grace_ms: None,
        redis_url: None,
        rate_limit_fail_mode: None,
        jwt_hs256_secret: None,
        jwt_public_key_file: None,
        jwt_jwks_file: None,
        jwt_issuer: None,
        jwt_audience: None,
        jwt_tenant_claim: None,
        jwt_leeway_secs: None,
        trusted_proxies: None,
        config: Some("/dev/null".into()),
    }
}

/// Pool settings of a benchmark server that a scenario may change.
#[derive(Debug, Clone)]
pub struct Tuning {
    /// Lanes of the runtime pool (`runtime_lanes`).
    pub lanes: usize,
    /// Connections to tenant databases in total (`tenant_db_budget`); the server's default
    /// when `None`.
    pub tenant_db_budget: Option<usize>,
    /// How long a moved tenant's old storage is kept (`move_grace`); the server's default when
    /// `None`.
    pub move_grace: Option<Duration>,
}

impl Default for Tuning {
    fn default() -> Self {
        Self {
            lanes: 1,
            tenant_db_budget: None,
            move_grace: None,
        }
    }
}

/// A running tenantry server over a fresh database.
pub struct Server {
    pub addr: String,
    pub db_url: String,
    /// The server's database handle (catalog and pools), for the database floor.
    db: tenantry::db::Database,
    http: reqwest::Client,
    /// Dropping the server shuts it down, so scenarios do not pile up connections.
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Server {
    /// `cached`: serve order reads through the tenant cache (the headline runs without it,
    /// so both sides do the same SELECT).
    pub async fn start(cached: bool) -> Self {
        Self::start_tuned(cached, &Tuning::default()).await
    }

    /// [`start`](Self::start) with the server's pools tuned.
    pub async fn start_tuned(cached: bool, tuning: &Tuning) -> Self {
        let name = crate::create_database().await;
        let db_url = format!("{}/{name}", crate::base_url());
        let args = serve_args(
            &db_url,
            &name,
            ADMIN,
            Some(if cached { "on" } else { "off" }),
        );
        let mut settings = Settings::load(&args).expect("settings");
        settings.runtime_lanes = tuning.lanes;
        if let Some(grace) = tuning.move_grace {
            settings.move_grace = grace;
        }
        if let Some(total) = tuning.tenant_db_budget {
            settings.tenant_db_budget.0 = total;
            settings.tenant_db_budget.1 = settings.tenant_db_budget.1.min(total);
        }
        // A plan whose limits never interfere with a throughput measurement.
        let mut bench = tenantry::Plan::per_hour(1_000_000_000);
        bench.max_concurrent = 1024;
        bench.connection_share = 1.0;
        settings.plans.0.insert("bench".into(), bench);
        let app = Application::build(settings).await.expect("server");
        let addr = format!("http://127.0.0.1:{}", app.port());
        let db = app.tenancy().catalog().database().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(app.run_until(async {
            let _ = stopped.await;
        }));
        Self {
            addr,
            db_url,
            db,
            http: reqwest::Client::new(),
            _stop: stop,
        }
    }

    /// Stops the server and drops what it created: its database, its tenants' databases and
    /// its roles (all named after its database), so that benchmark runs do not pile them up.
    pub async fn remove(self) {
        let name = self.db_name().to_owned();
        drop(self);
        crate::drop_database(&name).await;
    }

    /// The server's database: the last segment of its URL, and the prefix of everything the
    /// server creates (tenant databases, roles).
    pub(crate) fn db_name(&self) -> &str {
        self.db_url.rsplit('/').next().unwrap_or_default()
    }

    /// The server's catalog, for scenarios that call the library's control plane directly.
    pub(crate) fn catalog(&self) -> tenantry::Catalog {
        tenantry::Catalog::new(self.db.clone())
    }

    /// The server's runtime role (its role prefix is its database's name).
    pub fn runtime_role(&self) -> String {
        tenantry::db::RoleNames::from_prefix(self.db_name())
            .expect("a valid prefix")
            .runtime
    }

    /// Vacuums and analyses every table the seeding just filled (the server's database and
    /// each tenant database), so that autovacuum does not wake up in the middle of a
    /// measurement: after seeding 1,000 schema tenants it has thousands of fresh tables to
    /// analyse, each analysis invalidates every backend's cached plans on that table, and its
    /// own work would land in the PostgreSQL CPU column of whichever run it overlaps.
    pub(crate) async fn settle(&self) {
        let (c, conn) = tokio_postgres::connect(&self.db_url, NoTls).await.unwrap();
        tokio::spawn(conn);
        c.batch_execute("VACUUM (ANALYZE)").await.unwrap();
        let name = self.db_name();
        let tenant_dbs: Vec<String> = c
            .query(
                "SELECT datname FROM pg_database WHERE starts_with(datname, $1)",
                &[&format!("{name}_")],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        let base = self.db_url.rsplit_once('/').map_or("", |(b, _)| b);
        for db in tenant_dbs {
            let (c, conn) = tokio_postgres::connect(&format!("{base}/{db}"), NoTls)
                .await
                .unwrap();
            tokio::spawn(conn);
            c.batch_execute("VACUUM (ANALYZE)").await.unwrap();
        }
    }

    /// A GET with a bearer token, as text (the metrics).
    pub(crate) async fn get_text(&self, path: &str, auth: &str) -> String {
        self.http
            .get(format!("{}{path}", self.addr))
            .bearer_auth(auth)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    pub(crate) async fn post(&self, path: &str, auth: &str, body: Value) -> Value {
        self.http
            .post(format!("{}{path}", self.addr))
            .bearer_auth(auth)
            .json(&body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// A tenant on the `bench` plan (whose limits never interfere) with a key, a user and
    /// `orders` orders; returns (slug, key, order ids).
    pub async fn tenant(
        &self,
        slug: &str,
        isolation: &str,
        orders: usize,
    ) -> crate::workloads::Seeded {
        crate::workloads::seed_one(self, slug.to_owned(), isolation, orders).await
    }
}

/// A tenant over its limit (one request a day) and reads of its order: every one is a 429.
/// Returns its id (what the baseline keys its rows by), the reads and its order ids.
async fn over_limit(server: &Server) -> (String, Arc<Vec<Target>>, Vec<String>) {
    let t = server.tenant("limited", "shared", 1).await;
    let (slug, key, ids) = (t.slug, t.key, t.orders);
    server
        .http
        .patch(format!("{}/admin/v1/tenants/{slug}", server.addr))
        .bearer_auth(ADMIN)
        .json(&json!({"rate_limit": {"requests": 1, "per_seconds": 86400}}))
        .send()
        .await
        .unwrap();
    let reads = gets(vec![(
        format!("{}/v1/orders/{}", server.addr, ids[0]),
        vec![("authorization".to_owned(), format!("Bearer {key}"))],
    )]);
    (t.id, reads, ids)
}

/// The floor of any route on this setup: unauthenticated, no work.
fn healthz(server: &Server) -> Arc<Vec<Target>> {
    gets(vec![(format!("{}/healthz", server.addr), Vec::new())])
}

/// Read-by-id through the full stack versus the baseline, per placement.
pub async fn read_by_id(
    tenants: usize,
    duration: Duration,
    rounds: usize,
    clients: usize,
    placements: &[String],
    tuning: &Tuning,
) -> Table {
    let server = Server::start_tuned(false, tuning).await;
    let (base, _baseline) = start_baseline(&server.db_url, 16).await;
    let (floor, _floor) = start_rls_floor(&server.db_url, &server.runtime_role(), 16).await;
    let mut t = Table::new(
        &format!("Read one order by id: full stack vs hand-written baseline ({tenants} tenants per placement, {clients} clients)"),
        &LOAD_COLUMNS,
    );
    // The baseline and the shared floor read the shared tenants' rows (seeded even when the
    // shared placement itself is not measured); the schema floor reads the schema tenants'.
    let shared = seed(&server, "sh", tenants, "shared", 2, 4).await;
    let mut sides = vec![
        (
            "baseline (hand-written, no auth, no RLS)".to_owned(),
            baseline_reads(&base, &shared),
            None,
        ),
        (
            "floor: baseline + the database's safety net (runtime role, forced RLS, tenantry's statement)"
                .to_owned(),
            baseline_reads(&floor, &shared),
            None,
        ),
    ];
    let mut database_floors = Vec::new();
    for placement in ["shared", "schema", "database"] {
        if !placements.iter().any(|p| p == placement) {
            continue;
        }
        let seeded = if placement == "shared" {
            shared.clone()
        } else {
            seed(&server, &placement[..2], tenants, placement, 2, 4).await
        };
        // Which floor this placement is compared with: schema and database have their own.
        let floor_side = match placement {
            "schema" => {
                sides.push((
                    "floor, schema: the same for a schema tenant (BEGIN, settings, read, COMMIT pipelined)"
                        .to_owned(),
                    baseline_reads(&format!("{floor}/schema"), &seeded),
                    None,
                ));
                sides.len() - 1
            }
            "database" => {
                let (reads, stop) = start_database_floor(&server, &seeded).await;
                database_floors.push(stop);
                sides.push((
                    format!(
                        "floor, database: the shared floor's read in each tenant's database, on pools sized as the library's ({} databases)",
                        seeded.len()
                    ),
                    reads,
                    None,
                ));
                sides.len() - 1
            }
            _ => 1,
        };
        sides.push((
            format!("tenantry, {placement}"),
            reads(&server.addr, &seeded),
            Some(floor_side),
        ));
    }
    let targets: Vec<Arc<Vec<Target>>> = sides.iter().map(|(_, t, _)| t.clone()).collect();
    let runs = alternate(&targets, clients, duration / 2, duration, rounds).await;
    for ((label, _, floor_side), run) in sides.iter().zip(&runs) {
        row(&mut t, label, run, &runs[0]);
        if run.statuses.keys().any(|s| *s != 200) {
            t.notes
                .push(format!("WARNING: {label} answered {:?}", run.statuses));
        }
        if let Some(f) = floor_side {
            let f = &runs[*f];
            t.notes.push(format!(
                "{label} vs its floor: {:.2}x req/s, {:.2}x p99",
                run.rps() / f.rps().max(1e-9),
                run.latencies.p99().as_secs_f64() / f.latencies.p99().as_secs_f64().max(1e-9)
            ));
        }
    }
    drop(database_floors);
    server.remove().await;
    t
}

/// Requests over the limit: 429s answered from memory, against the baseline's reads.
pub async fn rejected(duration: Duration, rounds: usize, clients: usize) -> Table {
    let server = Server::start(false).await;
    let (base, _baseline) = start_baseline(&server.db_url, 16).await;
    let (tenant_id, tenantry_targets, ids) = over_limit(&server).await;
    let base_targets = gets(vec![(
        format!("{base}/orders/{}", ids[0]),
        vec![("x-tenant-id".to_owned(), tenant_id.clone())],
    )]);
    // The floor of this setup: an unauthenticated route that does nothing, same server, same
    // load generator (both share the machine's two cores).
    let floor_targets = healthz(&server);
    let [b, r, f]: [Run; 3] = alternate(
        &[base_targets, tenantry_targets, floor_targets],
        clients,
        duration / 2,
        duration,
        rounds,
    )
    .await
    .try_into()
    .expect("three sides");
    let mut t = Table::new(
        "Rate-limited requests (429) vs baseline reads",
        &LOAD_COLUMNS,
    );
    row(&mut t, "baseline read", &b, &b);
    row(
        &mut t,
        &format!(
            "tenantry 429 ({} of {} were 429)",
            r.statuses.get(&429).copied().unwrap_or(0),
            r.requests
        ),
        &r,
        &b,
    );
    row(&mut t, "floor: GET /healthz (no auth, no work)", &f, &b);
    server.remove().await;
    t
}

fn merge(into: &mut Run, r: Run) {
    into.cpu_bench += r.cpu_bench;
    into.cpu_pg += r.cpu_pg;
    into.requests += r.requests;
    into.elapsed += r.elapsed;
    into.latencies.0.extend(r.latencies.0);
    for (k, v) in r.statuses {
        *into.statuses.entry(k).or_default() += v;
    }
}

pub(crate) fn row(t: &mut Table, label: &str, r: &Run, base: &Run) {
    t.row(vec![
        label.to_owned(),
        format!("{:.0}", r.rps()),
        ms(r.latencies.p50()),
        ms(r.latencies.p99()),
        ms(r.latencies.quantile(0.999)),
        format!("{:.2}x", r.rps() / base.rps().max(1e-9)),
        format!(
            "{:.2}x",
            r.latencies.p99().as_secs_f64() / base.latencies.p99().as_secs_f64().max(1e-9)
        ),
        format!("{:.1}", r.cpu_bench * 1e6 / r.requests.max(1) as f64),
        format!("{:.1}", r.cpu_pg * 1e6 / r.requests.max(1) as f64),
    ]);
}

/// A bar chart of the req/s ratios, as SVG.
pub fn svg(title: &str, bars: &[(String, f64)]) -> String {
    let w = 720.0;
    let row_h = 28.0;
    let h = 60.0 + row_h * bars.len() as f64;
    let max = bars.iter().map(|b| b.1).fold(1.0f64, f64::max);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n<text x=\"10\" y=\"20\" font-size=\"14\">{}</text>\n",
        esc(title)
    );
    let x0 = 300.0;
    let scale = (w - x0 - 60.0) / max;
    let one = x0 + scale;
    for (i, (label, v)) in bars.iter().enumerate() {
        let y = 40.0 + row_h * i as f64;
        s.push_str(&format!(
            "<text x=\"10\" y=\"{}\">{}</text><rect x=\"{x0}\" y=\"{y}\" width=\"{:.1}\" height=\"18\" fill=\"#4a7bd0\"/><text x=\"{:.1}\" y=\"{}\">{v:.2}x</text>\n",
            y + 13.0,
            esc(label),
            v * scale,
            x0 + v * scale + 5.0,
            y + 13.0
        ));
    }
    s.push_str(&format!(
        "<line x1=\"{one:.1}\" y1=\"32\" x2=\"{one:.1}\" y2=\"{}\" stroke=\"#c33\" stroke-dasharray=\"4\"/>\n</svg>\n",
        h - 10.0
    ));
    s
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The same read through the order cache (what `GET /v1/orders/{id}` costs by default).
pub async fn read_by_id_cached(
    tenants: usize,
    duration: Duration,
    rounds: usize,
    clients: usize,
) -> Table {
    let server = Server::start(true).await;
    let (base, _baseline) = start_baseline(&server.db_url, 16).await;
    let seeded = seed(&server, "c", tenants, "shared", 2, 4).await;
    let (targets, base_targets) = (reads(&server.addr, &seeded), baseline_reads(&base, &seeded));
    let [b, r]: [Run; 2] = alternate(
        &[base_targets, targets],
        clients,
        duration / 2,
        duration,
        rounds,
    )
    .await
    .try_into()
    .expect("two sides");
    let mut t = Table::new(
        "Read one order by id with the tenant cache on (the server's default)",
        &LOAD_COLUMNS,
    );
    row(&mut t, "baseline (every read hits the database)", &b, &b);
    row(&mut t, "tenantry, shared, order cache on", &r, &b);
    server.remove().await;
    t
}

/// Drives one side alone for `duration` (for `perf record`): `baseline`, `floor` (the RLS
/// floor), `database-floor`, a placement, `limited` (429s) or `healthz`.
pub async fn profile(side: &str, tenants: usize, duration: Duration, clients: usize) -> Run {
    let server = Server::start(false).await;
    let (base, _baseline) = start_baseline(&server.db_url, 16).await;
    let (floor, _floor) = start_rls_floor(&server.db_url, &server.runtime_role(), 16).await;
    let isolation = match side {
        "baseline" | "floor" | "limited" | "healthz" => "shared",
        "database-floor" => "database",
        placement => placement,
    };
    let seeded = seed(&server, "p", tenants, isolation, 2, 4).await;
    let mut database_floor = None;
    let targets = match side {
        "baseline" => baseline_reads(&base, &seeded),
        "floor" => baseline_reads(&floor, &seeded),
        "database-floor" => {
            let (reads, stop) = start_database_floor(&server, &seeded).await;
            database_floor = Some(stop);
            reads
        }
        "limited" => over_limit(&server).await.1,
        "healthz" => healthz(&server),
        _ => reads(&server.addr, &seeded),
    };
    load(targets.clone(), clients, Duration::from_secs(1)).await;
    eprintln!("profiling {side} now");
    let run = load(targets, clients, duration).await;
    drop(database_floor);
    server.remove().await;
    run
}
