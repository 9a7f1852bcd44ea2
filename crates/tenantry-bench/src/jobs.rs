//! Issue #6's figures: jobs claimed and completed per second with 1, 100 and 1,000 tenants
//! active, and a cache hit against a database read.

use std::time::{Duration, Instant};

use serde_json::json;
use tenantry::cache::TenantCache;
use tenantry::db::BudgetSettings;
use tenantry::jobs::{JobFuture, Worker, WorkerConfig};
use tenantry::Isolation;
use tenantry_server::migrations::TENANT_MIGRATIONS;

use crate::placements::Fleet;
use crate::report::Table;

fn done(_ctx: tenantry::TenantContext, _job: tenantry::jobs::Job) -> JobFuture {
    Box::pin(async { Ok(json!({})) })
}

/// Jobs/s through the real claim/finish path with a worker of `concurrency`.
pub async fn throughput(jobs: usize, tenant_counts: &[usize], concurrency: usize) -> Table {
    let mut t = Table::new(
        "Job throughput (claim, run an empty job in the tenant's context, finish)",
        &[
            "active tenants",
            "jobs",
            "worker concurrency",
            "time",
            "jobs/s",
        ],
    );
    for &tenants in tenant_counts {
        let fleet = Fleet::new(TENANT_MIGRATIONS, BudgetSettings::default()).await;
        fleet.create_many("j", tenants, Isolation::Shared, 4).await;
        let (c, conn) = fleet.cfg.connect(tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(conn);
        // Keyed by each tenant's id; the table's trigger enters each job in its queue row.
        c.execute(
            "INSERT INTO tenantry.jobs (id, tenant_id, kind, payload, state, concurrency)
             SELECT gen_random_uuid(), t.id, 'done', '{}', 'queued', 4
             FROM generate_series(0, $1::bigint - 1) g
             JOIN tenantry.tenants t ON t.slug = 'j' || (g % $2::bigint)",
            &[&(jobs as i64), &(tenants as i64)],
        )
        .await
        .unwrap();
        let worker = Worker::new(
            fleet.tenancy.clone(),
            WorkerConfig {
                concurrency,
                poll: Duration::from_millis(20),
                ..WorkerConfig::default()
            },
        )
        .handle("done", done);
        let (stop, rx) = tokio::sync::oneshot::channel::<()>();
        let start = Instant::now();
        let handle = tokio::spawn(worker.run_until(async {
            let _ = rx.await;
        }));
        loop {
            let left: i64 = c
                .query_one(
                    "SELECT count(*) FROM tenantry.jobs WHERE state <> 'succeeded'",
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            if left == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let el = start.elapsed();
        let _ = stop.send(());
        let _ = handle.await;
        drop(c);
        t.row(vec![
            tenants.to_string(),
            jobs.to_string(),
            concurrency.to_string(),
            format!("{el:.2?}"),
            format!("{:.0}", jobs as f64 / el.as_secs_f64()),
        ]);
        fleet.cleanup().await;
    }
    t
}

/// A cache hit against the scoped database read it saves.
pub async fn cache_vs_db(n: usize) -> Table {
    let fleet = Fleet::new(TENANT_MIGRATIONS, BudgetSettings::default()).await;
    fleet.create("c0", Isolation::Shared).await;
    let ctx = fleet.context("c0").await;
    let order = crate::placements::one_order(&ctx).await;
    let read = || async {
        ctx.db()
            .run_opt(
                "SELECT id, amount_cents FROM orders WHERE tenant_id = $1 AND id = $2",
                &[&order],
            )
            .await
            .map(|r| r.map(|r| r.get::<_, i64>(1)))
    };
    let cache = TenantCache::new(fleet.db.clone(), 1 << 24);
    let mut t = Table::new(
        "Cache hit vs database read (one order by id, sequential)",
        &["path", "operations", "per operation", "ratio"],
    );
    let start = Instant::now();
    for _ in 0..n {
        std::hint::black_box(read().await.unwrap());
    }
    let db = start.elapsed() / n as u32;
    let start = Instant::now();
    for _ in 0..n {
        let v: Option<i64> = cache
            .get_or_load(&ctx, "order", Duration::from_secs(60), read)
            .await
            .unwrap();
        std::hint::black_box(v);
    }
    let hit = start.elapsed() / n as u32;
    t.row(vec![
        "database read (scoped transaction)".into(),
        n.to_string(),
        format!("{db:.2?}"),
        "1.00x".into(),
    ]);
    t.row(vec![
        "cache hit (in process)".into(),
        n.to_string(),
        format!("{hit:.2?}"),
        format!("{:.3}x", hit.as_secs_f64() / db.as_secs_f64()),
    ]);
    fleet.cleanup().await;
    t
}
