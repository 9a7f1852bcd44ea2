//! Operator paths: `tenantry migrate` and `tenantry doctor` through the real binary, fleet
//! migrations as admin operations, and the tenant-database connection budget under load.

use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use reqwest::Method;
use serde_json::json;

use crate::helpers::{fresh_database, settings, spawn_app, spawn_with, TestApp};

fn cli(app: &TestApp, args: &[&str]) -> (i32, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tenantry"))
        .args(args)
        .env("DATABASE_URL", &app.db_url)
        .env("TENANTRY_ROLE_PREFIX", &app.db_name)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test]
async fn migrate_and_doctor_from_the_command_line() {
    let app = spawn_app().await;
    app.tenant_in("sa", "schema").await;
    app.tenant_in("da", "database").await;
    app.tenant_in("xa", "shared").await;
    let (code, out) = cli(&app, &["migrate", "--dry-run"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("nothing to do"), "{out}");
    let (code, out) = cli(&app, &["migrate", "--parallel", "2"]);
    assert_eq!(code, 0, "{out}");
    let (code, out) = cli(&app, &["doctor"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("no findings"), "{out}");
    // Plant a fault: the doctor reports it and exits non-zero.
    app.sql()
        .await
        .batch_execute("ALTER TABLE shared.orders NO FORCE ROW LEVEL SECURITY")
        .await
        .unwrap();
    let (code, out) = cli(&app, &["doctor"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("rls_not_forced") && out.contains("orders"),
        "{out}"
    );
    // Bad usage is exit 2.
    let (code, _) = cli(&app, &["migrate", "--parallel", "0"]);
    assert_eq!(code, 2);
}

/// A write that raced a tenant's deletion (a request or job admitted just before it) can leave
/// rows under the deleted tenant's id, which no later tenant can see; the doctor reports them,
/// in the shared tables, the job queue, and a schema that a later tenant took over.
#[tokio::test]
async fn the_doctor_reports_residue_of_deleted_tenants() {
    let app = spawn_app().await;
    let key = app.tenant("gone").await;
    let u = app.user(&key, "g@g.io").await;
    app.order(&key, &u, 1).await;
    app.tenant_in("reused", "schema").await;
    let sql = app.sql().await;
    let ids: Vec<String> = sql
        .query(
            "SELECT id FROM tenantry.tenants WHERE slug IN ('gone', 'reused') ORDER BY slug",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let (gone, reused) = (ids[0].clone(), ids[1].clone());
    for slug in ["gone", "reused"] {
        app.admin(Method::DELETE, &format!("/admin/v1/tenants/{slug}"), None)
            .await;
    }
    app.tenant_in("reused", "schema").await;
    let (code, out) = cli(&app, &["doctor"]);
    assert_eq!(code, 0, "deletion leaves nothing behind: {out}");
    // What racing writes would leave: a user of `gone` in the shared tables, a job in the
    // queue, and a row of the old `reused` in the new `reused` tenant's schema.
    sql.execute(
        "INSERT INTO shared.users (tenant_id, id, email, name, role)
         VALUES ($1, gen_random_uuid(), 'late@g.io', 'late', 'member')",
        &[&gone],
    )
    .await
    .unwrap();
    app.park_job(&gone).await;
    sql.execute(
        "INSERT INTO t_reused.users (tenant_id, id, email, name, role)
         VALUES ($1, gen_random_uuid(), 'old@r.io', 'old', 'member')",
        &[&reused],
    )
    .await
    .unwrap();
    let (code, out) = cli(&app, &["doctor"]);
    assert_eq!(code, 1, "{out}");
    for place in ["shared.users", "tenantry.jobs", "schema t_reused"] {
        assert!(
            out.lines()
                .any(|l| l.contains("residue_of_deleted_tenant") && l.contains(place)),
            "{place}: {out}"
        );
    }
}

#[tokio::test]
async fn a_fleet_migration_is_an_admin_operation() {
    let app = spawn_app().await;
    app.tenant_in("sa", "schema").await;
    let r = app.admin(Method::POST, "/admin/v1/migrations", None).await;
    let op = r.ok(202).clone();
    assert_eq!(op["kind"], "migrate");
    let id = op["id"].as_str().unwrap().to_owned();
    let body = app.finished(&id).await;
    assert_eq!(body["state"], "succeeded", "{body}");
    assert_eq!(body["progress"], 1.0);
    app.admin(
        Method::GET,
        &format!("/admin/v1/operations/{}", uuid::Uuid::now_v7()),
        None,
    )
    .await
    .problem(404, "not_found");
    app.admin(
        Method::POST,
        "/admin/v1/migrations",
        Some(json!({"parallelism": 0})),
    )
    .await
    .problem(422, "validation_failed");
    let audit = app.admin(Method::GET, "/admin/v1/audit", None).await;
    assert!(audit.ok(200).to_string().contains("fleet.migrate"));
}

/// More tenant databases than the budget allows, under concurrent load: every request is
/// served, the budget is never exceeded, and no tenant holds more than its share.
#[tokio::test]
async fn the_connection_budget_holds_under_load() {
    const BUDGET: usize = 3;
    const PER_TENANT: usize = 2;
    const TENANTS: usize = 8;
    let (name, url) = fresh_database().await;
    let mut s = settings(&name, &url);
    s.tenant_db_budget = (BUDGET, PER_TENANT);
    let app = Arc::new(spawn_with(s).await);
    let mut keys = Vec::new();
    for i in 0..TENANTS {
        keys.push(app.tenant_in(&format!("db{i}"), "database").await);
    }
    // Watch the server's connections to tenant databases while the load runs.
    let max_total = Arc::new(AtomicI64::new(0));
    let max_one = Arc::new(AtomicI64::new(0));
    let stop = Arc::new(AtomicUsize::new(0));
    let watcher = {
        let (max_total, max_one, stop) = (max_total.clone(), max_one.clone(), stop.clone());
        let sql = app.sql().await;
        let pattern = format!("{name}\\_t\\_%");
        let role = format!("{name}_app");
        tokio::spawn(async move {
            let count = || async {
                sql.query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE usename = $1 AND datname LIKE $2",
                    &[&role, &pattern],
                )
                .await
                .map(|r| r.get::<_, i64>(0))
                .unwrap_or(0)
            };
            while stop.load(Ordering::Relaxed) == 0 {
                let mut total = count().await;
                if total as usize > BUDGET {
                    // A backend whose client has just closed its socket stays listed until it
                    // notices and exits; under a loaded machine that takes a moment, while the
                    // replacement is already open. An overshoot that is still there a little
                    // later is a real one.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    total = total.min(count().await);
                }
                let one: i64 = sql
                    .query_one(
                        "SELECT coalesce(max(n), 0) FROM (SELECT count(*) AS n FROM pg_stat_activity
                          WHERE usename = $1 AND datname LIKE $2 GROUP BY datname) s",
                        &[&role, &pattern],
                    )
                    .await
                    .map(|r| r.get(0))
                    .unwrap_or(0);
                max_total.fetch_max(total, Ordering::Relaxed);
                max_one.fetch_max(one, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let ok = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for worker in 0..8 {
        let app = app.clone();
        let keys = keys.clone();
        let ok = ok.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..20 {
                let key = &keys[(worker + i) % TENANTS];
                let r = app.with_key(key, Method::GET, "/v1/orders", None).await;
                assert_eq!(r.status.as_u16(), 200, "{r:?}");
                ok.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    stop.store(1, Ordering::Relaxed);
    watcher.await.unwrap();
    assert_eq!(ok.load(Ordering::Relaxed), 8 * 20);
    let total = max_total.load(Ordering::Relaxed);
    let one = max_one.load(Ordering::Relaxed);
    eprintln!("tenant-database connections: max {total} in total, max {one} for one tenant");
    assert!(
        total as usize <= BUDGET,
        "budget exceeded: {total} > {BUDGET}"
    );
    assert!(total >= 1, "the watcher saw the load");
    assert!(
        one as usize <= PER_TENANT,
        "one tenant held {one} > {PER_TENANT}"
    );
}

/// When the working set fits the budget, connections are not churned: with 4 tenant databases
/// over a budget of 8 (each pool capped at 8 / 4 = 2, below the per-tenant share of 4), heavy
/// concurrent load opens each tenant database's connections once and reuses them. (Before the
/// cap, pools grew to 4 each, the budget ran out, and idle connections of one tenant were
/// closed to open another's, over and over.)
#[tokio::test]
async fn no_connection_churn_while_the_working_set_fits_the_budget() {
    const TENANTS: usize = 4;
    let (name, url) = fresh_database().await;
    let mut s = settings(&name, &url);
    s.tenant_db_budget = (8, 4);
    let app = Arc::new(spawn_with(s).await);
    let mut keys = Vec::new();
    for i in 0..TENANTS {
        keys.push(app.tenant_in(&format!("wf{i}"), "database").await);
    }
    let sql = app.sql().await;
    let pattern = format!("{name}\\_t\\_%");
    let role = format!("{name}_app");
    // Each tenant database is opened once (the pools size themselves as they appear).
    for key in &keys {
        let r = app.with_key(key, Method::GET, "/v1/orders", None).await;
        assert_eq!(r.status.as_u16(), 200, "{r:?}");
    }
    // Every backend the server opens to a tenant database during the load, by pid.
    let stop = Arc::new(AtomicUsize::new(0));
    let watcher = {
        let (stop, pattern, role) = (stop.clone(), pattern.clone(), role.clone());
        let sql = app.sql().await;
        tokio::spawn(async move {
            let mut pids = std::collections::BTreeSet::new();
            while stop.load(Ordering::Relaxed) == 0 {
                for r in sql
                    .query(
                        "SELECT pid FROM pg_stat_activity WHERE usename = $1 AND datname LIKE $2",
                        &[&role, &pattern],
                    )
                    .await
                    .unwrap()
                {
                    pids.insert(r.get::<_, i32>(0));
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            pids
        })
    };
    let mut tasks = Vec::new();
    for worker in 0..12 {
        let (app, keys) = (app.clone(), keys.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..40 {
                let key = &keys[(worker + i) % TENANTS];
                let r = app.with_key(key, Method::GET, "/v1/orders", None).await;
                assert_eq!(r.status.as_u16(), 200, "{r:?}");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // Every backend the server ever opened to a tenant database is still there: none was
    // closed to make room for another (and there are at most 2 per tenant).
    let rows = sql
        .query(
            "SELECT datname, count(*) FROM pg_stat_activity WHERE usename = $1 AND datname LIKE $2
             GROUP BY datname",
            &[&role, &pattern],
        )
        .await
        .unwrap();
    let total: i64 = rows.iter().map(|r| r.get::<_, i64>(1)).sum();
    assert!(rows.iter().all(|r| r.get::<_, i64>(1) <= 2), "{rows:?}");
    assert!(total <= 8);
    let metrics = app.metrics_text().await;
    let opened = metrics
        .lines()
        .find(|l| l.starts_with("tenantry_tenant_db_connections "))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap();
    assert_eq!(
        opened as i64, total,
        "open connections as the server counts them"
    );
    stop.store(1, Ordering::Relaxed);
    let pids = watcher.await.unwrap();
    assert!(
        pids.len() <= 8,
        "{} backends were opened for a working set of at most 8 connections (churn)",
        pids.len()
    );
}
