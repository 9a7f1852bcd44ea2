//! Issue #3's figures: provisioning time per placement, fleet migration time, and scoped-read
//! latency as the number of schema and database tenants grows.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tenantry::audit::Actor;
use tenantry::catalog::NewTenant;
use tenantry::db::fleet::{self, MigrateOptions};
use tenantry::db::{BudgetSettings, Database, PoolSettings, RoleNames, TenantMigration};
use tenantry::{Catalog, Isolation, Slug, Tenancy, TenancyConfig, TenantContext};
use tenantry_server::migrations::TENANT_MIGRATIONS;
use tokio_postgres::NoTls;
use uuid::Uuid;

use crate::report::Table;
use crate::stats::{ms, Samples};

/// A fresh database with its own roles: one per scenario.
pub struct Fleet {
    pub db: Database,
    pub tenancy: Tenancy,
    pub cfg: tokio_postgres::Config,
    pub name: String,
}

fn actor() -> Actor {
    Actor {
        name: "bench".into(),
        request_id: "bench".into(),
    }
}

impl Fleet {
    pub async fn new(migrations: &'static [TenantMigration], budget: BudgetSettings) -> Self {
        let name = crate::create_database().await;
        let cfg: tokio_postgres::Config = format!("{}/{name}", crate::base_url()).parse().unwrap();
        Self::open(cfg, name, migrations, budget).await
    }

    /// Reopens the same deployment with another set of migrations (new code).
    pub async fn open(
        cfg: tokio_postgres::Config,
        name: String,
        migrations: &'static [TenantMigration],
        budget: BudgetSettings,
    ) -> Self {
        let settings = PoolSettings {
            runtime_max: 16,
            tenant_databases: budget,
            ..PoolSettings::default()
        };
        let db = Database::connect(
            cfg.clone(),
            None,
            &RoleNames::from_prefix(&name).unwrap(),
            migrations,
            &settings,
        )
        .await
        .unwrap();
        let tenancy = Tenancy::new(Catalog::new(db.clone()), TenancyConfig::default());
        Self {
            db,
            tenancy,
            cfg,
            name,
        }
    }

    pub async fn create(&self, slug: &str, isolation: Isolation) -> Duration {
        let new = NewTenant {
            slug: Slug::parse(slug).unwrap(),
            name: slug.into(),
            plan: "pro".into(),
            isolation,
            server: None,
        };
        let start = Instant::now();
        tenantry::lifecycle::create(self.tenancy.catalog(), &new, &actor())
            .await
            .unwrap();
        start.elapsed()
    }

    /// Creates `n` tenants, `parallel` at a time.
    pub async fn create_many(&self, prefix: &str, n: usize, isolation: Isolation, parallel: usize) {
        futures_util::stream::iter(0..n)
            .map(|i| async move {
                self.create(&format!("{prefix}{i}"), isolation).await;
            })
            .buffer_unordered(parallel)
            .collect::<Vec<_>>()
            .await;
    }

    pub async fn context(&self, slug: &str) -> TenantContext {
        self.tenancy
            .admin_context(&Slug::parse(slug).unwrap(), &actor(), "bench", "bench")
            .await
            .unwrap()
    }

    /// Drops the scenario's databases and roles.
    pub async fn cleanup(self) {
        drop(self.tenancy);
        drop(self.db);
        crate::drop_database(&self.name).await;
    }
}

/// Provisioning time per placement, interleaved so noise hits all three alike.
pub async fn provision(n: usize) -> Table {
    let fleet = Fleet::new(TENANT_MIGRATIONS, BudgetSettings::default()).await;
    let placements = [Isolation::Shared, Isolation::Schema, Isolation::Database];
    let mut samples = [Samples::default(), Samples::default(), Samples::default()];
    for i in 0..n {
        for (k, iso) in placements.iter().enumerate() {
            let d = fleet.create(&format!("p{}-{i}", iso.as_str()), *iso).await;
            samples[k].push(d);
        }
    }
    let mut t = Table::new(
        "Provisioning time per placement",
        &["placement", "tenants", "p50 ms", "p95 ms", "max ms"],
    );
    for (k, iso) in placements.iter().enumerate() {
        let s = &samples[k];
        t.row(vec![
            iso.as_str().into(),
            s.len().to_string(),
            ms(s.p50()),
            ms(s.p95()),
            ms(s.quantile(1.0)),
        ]);
    }
    fleet.cleanup().await;
    t
}

/// v2 of the tenant tables for the migration benchmark: adds a column.
static WITH_V2: std::sync::OnceLock<Vec<TenantMigration>> = std::sync::OnceLock::new();

fn with_v2() -> &'static [TenantMigration] {
    WITH_V2.get_or_init(|| {
        let mut v = TENANT_MIGRATIONS.to_vec();
        v.push(TenantMigration {
            version: TENANT_MIGRATIONS
                .iter()
                .map(|m| m.version)
                .max()
                .unwrap_or(0)
                + 1,
            name: "orders_note",
            sql: "ALTER TABLE orders ADD COLUMN note text",
        });
        v
    })
}

/// `tenantry migrate` adding a column across `schemas` schema tenants and `databases`
/// database tenants, then the no-op re-run.
pub async fn migrate(schemas: usize, databases: usize, parallel: usize) -> Table {
    let fleet = Fleet::new(TENANT_MIGRATIONS, BudgetSettings::default()).await;
    let setup = Instant::now();
    fleet.create_many("s", schemas, Isolation::Schema, 4).await;
    fleet
        .create_many("d", databases, Isolation::Database, 4)
        .await;
    eprintln!(
        "created {schemas} schema and {databases} database tenants in {:.1?}",
        setup.elapsed()
    );
    let (cfg, name) = (fleet.cfg.clone(), fleet.name.clone());
    drop(fleet);
    let fleet = Fleet::open(cfg, name, with_v2(), BudgetSettings::default()).await;
    let opts = MigrateOptions {
        parallelism: parallel,
        dry_run: false,
    };
    let start = Instant::now();
    let report = fleet::migrate(&fleet.db, &opts, |_| {}).await.unwrap();
    let full = start.elapsed();
    assert_eq!(
        report.failed().count(),
        0,
        "bench migration failed: {report:?}"
    );
    let start = Instant::now();
    let noop = fleet::migrate(&fleet.db, &opts, |_| {}).await.unwrap();
    let noop_time = start.elapsed();
    assert!(noop.tenants.is_empty());
    let mut t = Table::new(
        "Fleet migration: ADD COLUMN across the fleet",
        &[
            "run",
            "schema tenants",
            "database tenants",
            "parallelism",
            "tenants migrated",
            "time",
            "per tenant ms",
        ],
    );
    let per = if report.tenants.is_empty() {
        Duration::ZERO
    } else {
        full / report.tenants.len() as u32
    };
    t.row(vec![
        "migrate".into(),
        schemas.to_string(),
        databases.to_string(),
        parallel.to_string(),
        report.tenants.len().to_string(),
        format!("{full:.2?}"),
        ms(per),
    ]);
    t.row(vec![
        "no-op re-run".into(),
        schemas.to_string(),
        databases.to_string(),
        parallel.to_string(),
        "0".into(),
        format!("{noop_time:.2?}"),
        "-".into(),
    ]);
    fleet.cleanup().await;
    t
}

/// Gives a tenant a user and one order, through its own scoped context; returns the order id.
pub async fn one_order(ctx: &TenantContext) -> Uuid {
    let (user, order) = (Uuid::now_v7(), Uuid::now_v7());
    ctx.db()
        .run(
            "INSERT INTO users (tenant_id, id, email, name, role) VALUES ($1, $2, 'b@b.io', 'b', 'member')",
            &[&user],
        )
        .await
        .unwrap();
    ctx.db()
        .run(
            "INSERT INTO orders (tenant_id, id, user_id, amount_cents, currency, status)
             VALUES ($1, $2, $3, 100, 'EUR', 'paid')",
            &[&order, &user],
        )
        .await
        .unwrap();
    order
}

/// Scoped-read latency (one order by id, through `ctx.db().run`) spread over the first `small`
/// tenants versus all `large` tenants of one placement, in interleaved rounds.
pub async fn scoped_read(
    isolation: Isolation,
    small: usize,
    large: usize,
    reads: usize,
    concurrency: usize,
    budget: BudgetSettings,
) -> Table {
    let fleet = Fleet::new(TENANT_MIGRATIONS, budget.clone()).await;
    let setup = Instant::now();
    fleet.create_many("t", large, isolation, 4).await;
    let mut targets = Vec::with_capacity(large);
    for i in 0..large {
        let ctx = fleet.context(&format!("t{i}")).await;
        let order = one_order(&ctx).await;
        targets.push((ctx, order));
    }
    eprintln!(
        "seeded {large} {} tenants in {:.1?}",
        isolation.as_str(),
        setup.elapsed()
    );
    let targets = Arc::new(targets);
    let mut few = Samples::default();
    let mut many = Samples::default();
    let rounds = 4;
    // Warm-up over everything, then alternate rounds.
    run_reads(&targets, large, reads / 4, concurrency).await;
    for _ in 0..rounds {
        few.0.extend(
            run_reads(&targets, small, reads / rounds, concurrency)
                .await
                .0,
        );
        many.0.extend(
            run_reads(&targets, large, reads / rounds, concurrency)
                .await
                .0,
        );
    }
    let mut t = Table::new(
        &format!("Scoped read latency, {} placement", isolation.as_str()),
        &["tenants", "reads", "p50 ms", "p99 ms", "p99 ratio"],
    );
    let base = few.p99().as_secs_f64();
    for (n, s) in [(small, &few), (large, &many)] {
        t.row(vec![
            n.to_string(),
            s.len().to_string(),
            ms(s.p50()),
            ms(s.p99()),
            format!("{:.2}x", s.p99().as_secs_f64() / base.max(1e-9)),
        ]);
    }
    fleet.cleanup().await;
    t
}

async fn run_reads(
    targets: &Arc<Vec<(TenantContext, Uuid)>>,
    spread: usize,
    reads: usize,
    concurrency: usize,
) -> Samples {
    let per_worker = reads / concurrency.max(1);
    let mut handles = Vec::new();
    for w in 0..concurrency {
        let targets = targets.clone();
        handles.push(tokio::spawn(async move {
            let mut s = Samples::default();
            // A cheap deterministic spread (no rand dependency): stride by a prime.
            let mut k = w * 7919;
            for _ in 0..per_worker {
                k = (k + 104_729) % spread.max(1);
                let (ctx, order) = &targets[k];
                let start = Instant::now();
                let row = ctx
                    .db()
                    .run_opt(
                        "SELECT id, amount_cents FROM orders WHERE tenant_id = $1 AND id = $2",
                        &[order],
                    )
                    .await
                    .unwrap();
                assert!(row.is_some());
                s.push(start.elapsed());
            }
            s
        }));
    }
    let mut all = Samples::default();
    for h in handles {
        all.0.extend(h.await.unwrap().0);
    }
    all
}

/// The database path alone, without HTTP: the same read by id as a bare prepared query on a
/// pool of the runtime pool's size, through `ctx.db().run` (the single-statement form), and
/// through an explicit transaction, at the same concurrency, in alternating rounds: what
/// scoping costs the client and PostgreSQL together.
pub async fn db_path(tenants: usize, seconds: f64, rounds: usize, concurrency: usize) -> Table {
    use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
    let fleet = Fleet::new(TENANT_MIGRATIONS, BudgetSettings::default()).await;
    fleet.create_many("t", tenants, Isolation::Shared, 4).await;
    let mut targets = Vec::new();
    for i in 0..tenants {
        let ctx = fleet.context(&format!("t{i}")).await;
        let order = one_order(&ctx).await;
        targets.push((ctx, order));
    }
    let targets = Arc::new(targets);
    let mgr = Manager::from_config(
        fleet.cfg.clone(),
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    let pool = Pool::builder(mgr)
        .max_size(fleet.db.runtime_max())
        .build()
        .unwrap();
    const SQL: &str = "SELECT id, user_id, amount_cents, currency, status, created_at, updated_at
                       FROM orders WHERE tenant_id = $1 AND id = $2";
    let run = |mode: u8| {
        let (targets, pool) = (targets.clone(), pool.clone());
        async move {
            let stop = Instant::now() + std::time::Duration::from_secs_f64(seconds);
            let tasks: Vec<_> = (0..concurrency)
                .map(|c| {
                    let (targets, pool) = (targets.clone(), pool.clone());
                    tokio::spawn(async move {
                        let mut n = 0usize;
                        let mut i = c;
                        while Instant::now() < stop {
                            i = (i + 7) % targets.len();
                            let (ctx, id) = &targets[i];
                            let found = if mode == 1 {
                                ctx.db().run_opt(SQL, &[id]).await.unwrap().is_some()
                            } else if mode == 2 {
                                let mut tx = ctx.db().begin().await.unwrap();
                                let row = tx.query_opt(SQL, &[id]).await.unwrap();
                                tx.commit().await.unwrap();
                                row.is_some()
                            } else {
                                let client = pool.get().await.unwrap();
                                let stmt = client
                                    .prepare_cached(
                                        "SELECT id, user_id, amount_cents, currency, status, created_at, updated_at
                                         FROM shared.orders WHERE tenant_id = $1 AND id = $2",
                                    )
                                    .await
                                    .unwrap();
                                let tenant = ctx.tenant_id().as_str();
                                client.query_opt(&stmt, &[&tenant, id]).await.unwrap().is_some()
                            };
                            assert!(found);
                            n += 1;
                        }
                        n
                    })
                })
                .collect();
            let mut total = 0;
            for t in tasks {
                total += t.await.unwrap();
            }
            total as f64 / seconds
        }
    };
    for mode in 0..3 {
        run(mode).await;
    }
    let mut rate = [0.0f64; 3];
    for _ in 0..rounds {
        for (mode, r) in rate.iter_mut().enumerate() {
            *r += run(mode as u8).await / rounds as f64;
        }
    }
    drop(pool);
    fleet.cleanup().await;
    let mut t = Table::new(
        &format!("Database path without HTTP: read one order by id ({tenants} shared tenants, {concurrency} tasks)"),
        &["path", "reads/s", "ratio"],
    );
    for (label, r) in [
        "bare prepared query (superuser, no RLS)",
        "ctx.db().run: one statement that sets the tenant itself (reads, shared/database)",
        "ctx.db().begin(), query, commit: BEGIN + settings + query pipelined, then COMMIT",
    ]
    .iter()
    .zip(rate)
    {
        t.row(vec![
            (*label).into(),
            format!("{r:.0}"),
            format!("{:.2}x", r / rate[0].max(1e-9)),
        ]);
    }
    t
}
