//! Jobs and exports: the CSV holds exactly the tenant's orders in every placement; fairness
//! against a 10,000-job backlog; poison jobs reach dead letters without delaying others; a
//! worker killed mid-job loses its lease and the job runs again, once; per-tenant caps hold.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::{fresh_database, settings, spawn_app, spawn_with, TestApp};

async fn wait_job(app: &TestApp, key: &str, id: &str, bound: Duration) -> Value {
    let start = Instant::now();
    loop {
        let r = app
            .with_key(key, Method::GET, &format!("/v1/jobs/{id}"), None)
            .await;
        let body = r.ok(200).clone();
        if ["succeeded", "failed", "dead"].contains(&body["state"].as_str().unwrap_or("")) {
            return body;
        }
        assert!(
            start.elapsed() < bound,
            "job {id} not done after {bound:?}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn the_export_csv_holds_exactly_the_tenants_orders_in_every_placement() {
    let app = spawn_app().await;
    for (i, placement) in ["shared", "schema", "database"].iter().enumerate() {
        let a = app.tenant_in(&format!("exp-a{i}"), placement).await;
        let b = app.tenant_in(&format!("exp-b{i}"), placement).await;
        let ua = app.user(&a, "a@a.io").await;
        let ub = app.user(&b, "b@b.io").await;
        let mut mine = Vec::new();
        for n in 0..3 {
            mine.push(app.order(&a, &ua, 100 + n).await);
        }
        app.order(&b, &ub, 7).await;
        let r = app.with_key(&a, Method::POST, "/v1/exports", None).await;
        let job = r.ok(202)["job_id"].as_str().unwrap().to_owned();
        // Another tenant cannot see the job or its file.
        app.with_key(&b, Method::GET, &format!("/v1/jobs/{job}"), None)
            .await
            .problem(404, "not_found");
        let done = wait_job(&app, &a, &job, Duration::from_secs(20)).await;
        assert_eq!(done["state"], "succeeded", "{placement}: {done}");
        app.with_key(
            &b,
            Method::GET,
            &format!("/v1/exports/{job}/download"),
            None,
        )
        .await
        .problem(404, "not_found");
        let csv = app
            .client
            .get(app.url(&format!("/v1/exports/{job}/download")))
            .bearer_auth(&a)
            .send()
            .await
            .unwrap();
        assert_eq!(csv.status(), 200);
        assert!(csv.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/csv"));
        let text = csv.text().await.unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "id,user_id,amount_cents,currency,status,created_at,updated_at"
        );
        let ids: Vec<&str> = lines[1..]
            .iter()
            .map(|l| l.split(',').next().unwrap())
            .collect();
        assert_eq!(
            ids,
            mine.iter().map(String::as_str).collect::<Vec<_>>(),
            "{placement}"
        );
        assert!(lines[1..].iter().all(|l| l.contains(&ua)), "{placement}");
    }
}

/// Inserts `n` sleep jobs for a tenant straight into the queue (10,000 through the API would
/// take the test longer than the fairness it checks).
async fn backlog(app: &TestApp, tenant: &str, n: i64, ms: u64, max_attempts: i32, fail: bool) {
    let sql = app.sql().await;
    let payload = if fail {
        json!({"ms": ms, "fail": "poison"})
    } else {
        json!({"ms": ms})
    };
    // The table's trigger enters each job in its tenant's queue row, as for an enqueue.
    sql.execute(
        "INSERT INTO tenantry.jobs (id, tenant_id, kind, payload, state, max_attempts, concurrency)
         SELECT gen_random_uuid(), t.id, 'sleep', $2, 'queued', $4, 4
         FROM tenantry.tenants t, generate_series(1, $3::bigint) WHERE t.slug = $1",
        &[&tenant, &payload, &n, &max_attempts],
    )
    .await
    .unwrap();
}

async fn count(app: &TestApp, tenant: &str, state: &str) -> i64 {
    app.sql()
        .await
        .query_one(
            "SELECT count(*) FROM tenantry.jobs
             WHERE tenant_id = (SELECT id FROM tenantry.tenants WHERE slug = $1) AND state = $2",
            &[&tenant, &state],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn a_single_job_is_not_stuck_behind_another_tenants_backlog() {
    let app = spawn_app().await;
    app.tenant("flood").await;
    let b = app.tenant("single").await;
    backlog(&app, "flood", 10_000, 50, 5, false).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let start = Instant::now();
    let r = app.with_key(&b, Method::POST, "/v1/exports", None).await;
    let job = r.ok(202)["job_id"].as_str().unwrap().to_owned();
    let done = wait_job(&app, &b, &job, Duration::from_secs(10)).await;
    let took = start.elapsed();
    assert_eq!(done["state"], "succeeded");
    let left = count(&app, "flood", "queued").await;
    eprintln!("the single job finished in {took:?} with {left} jobs of the other tenant queued");
    assert!(
        left > 9_500,
        "the bound must not depend on working through the backlog"
    );
    assert!(took < Duration::from_secs(3), "single job waited {took:?}");
}

#[tokio::test]
async fn poison_jobs_reach_dead_letters_without_delaying_others() {
    let app = spawn_app().await;
    app.tenant("poison").await;
    let good = app.tenant("good").await;
    backlog(&app, "poison", 6, 0, 2, true).await;
    let r = app.with_key(&good, Method::POST, "/v1/exports", None).await;
    let job = r.ok(202)["job_id"].as_str().unwrap().to_owned();
    let start = Instant::now();
    assert_eq!(
        wait_job(&app, &good, &job, Duration::from_secs(10)).await["state"],
        "succeeded"
    );
    assert!(start.elapsed() < Duration::from_secs(3));
    let deadline = Instant::now() + Duration::from_secs(20);
    while count(&app, "poison", "dead").await < 6 {
        assert!(
            Instant::now() < deadline,
            "poison jobs never reached dead letters"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let row = app
        .sql()
        .await
        .query_one(
            "SELECT min(attempts), max(attempts), min(last_error) FROM tenantry.jobs WHERE tenant_id = (SELECT id FROM tenantry.tenants WHERE slug = 'poison')",
            &[],
        )
        .await
        .unwrap();
    assert_eq!((row.get::<_, i32>(0), row.get::<_, i32>(1)), (2, 2));
    assert_eq!(row.get::<_, String>(2), "poison");
}

#[tokio::test]
async fn the_per_tenant_cap_holds_under_load() {
    let app = spawn_app().await;
    // The free plan runs one job at a time per tenant.
    app.admin(
        Method::POST,
        "/admin/v1/tenants",
        Some(json!({"slug": "capped", "name": "C", "plan": "free"})),
    )
    .await
    .ok(201);
    let key = app.key("capped", json!({"name": "k"})).await;
    let mut ids = Vec::new();
    for _ in 0..6 {
        let r = app.with_key(&key, Method::POST, "/v1/exports", None).await;
        ids.push(r.ok(202)["job_id"].as_str().unwrap().to_owned());
    }
    let sql = app.sql().await;
    let mut max_running = 0i64;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let running: i64 = sql
            .query_one(
                "SELECT count(*) FROM tenantry.jobs WHERE tenant_id = (SELECT id FROM tenantry.tenants WHERE slug = 'capped') AND state = 'running'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        max_running = max_running.max(running);
        if count(&app, "capped", "succeeded").await == 6 {
            break;
        }
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(max_running <= 1, "cap 1, saw {max_running} running");
}

/// A real worker process is SIGKILLed mid-job; after its lease expires another worker runs the
/// job to completion, exactly once more.
#[tokio::test]
async fn a_killed_worker_loses_its_lease_and_the_job_runs_again() {
    let (name, url) = fresh_database().await;
    let mut s = settings(&name, &url);
    s.worker_concurrency = 0;
    let app = spawn_with(s.clone()).await;
    app.tenant("crash").await;
    let mut worker = tokio::process::Command::new(env!("CARGO_BIN_EXE_tenantry"))
        .arg("worker")
        .env("DATABASE_URL", &url)
        .env("TENANTRY_ROLE_PREFIX", &name)
        .env("TENANTRY_JOB_LEASE_MS", "1500")
        .env("TENANTRY_WORKER_CONCURRENCY", "1")
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    backlog(&app, "crash", 1, 4000, 5, false).await;
    let sql = app.sql().await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let first_owner: String = loop {
        let row = sql
            .query_opt("SELECT locked_by FROM tenantry.jobs WHERE tenant_id = (SELECT id FROM tenantry.tenants WHERE slug = 'crash') AND state = 'running'", &[])
            .await
            .unwrap();
        if let Some(r) = row {
            break r.get(0);
        }
        assert!(
            Instant::now() < deadline,
            "the worker process never claimed the job"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    worker.kill().await.unwrap(); // SIGKILL
                                  // A new worker (in this process) takes over once the lease has expired.
    let mut s2 = s;
    s2.worker_concurrency = 1;
    s2.job_lease = Duration::from_millis(1500);
    let _app2 = spawn_with(s2).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = sql
            .query_one(
                "SELECT state, attempts, locked_by FROM tenantry.jobs WHERE tenant_id = (SELECT id FROM tenantry.tenants WHERE slug = 'crash')",
                &[],
            )
            .await
            .unwrap();
        let (state, attempts): (String, i32) = (r.get(0), r.get(1));
        if state == "succeeded" {
            assert_eq!(
                attempts, 2,
                "run once by the dead worker, once more by the new one"
            );
            break;
        }
        if state == "running" {
            let owner: Option<String> = r.get(2);
            if attempts == 2 {
                assert_ne!(owner.as_deref(), Some(first_owner.as_str()));
            }
        }
        assert!(
            Instant::now() < deadline,
            "the job was never recovered ({state}, {attempts})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
