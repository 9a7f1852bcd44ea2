//! Every benchmark scenario runs end to end at tiny sizes (CI checks they work, not how fast).

use tenantry::db::BudgetSettings;
use tenantry::Isolation;
use tenantry_bench::placements;

#[tokio::test]
async fn placement_scenarios_run() {
    let t = placements::provision(2).await;
    assert_eq!(t.rows.len(), 3);
    let t = placements::migrate(3, 2, 2).await;
    assert_eq!(t.rows[0][4], "5", "all five tenants migrated: {:?}", t.rows);
    for iso in [Isolation::Schema, Isolation::Database] {
        let t = placements::scoped_read(
            iso,
            2,
            4,
            80,
            4,
            BudgetSettings {
                total: 3,
                per_tenant: 1,
                ..BudgetSettings::default()
            },
        )
        .await;
        assert_eq!(t.rows.len(), 2);
    }
}

#[tokio::test]
async fn limit_scenarios_run() {
    let t = tenantry_bench::limits::limiter(1000, 64, "redis://127.0.0.1:6379").await;
    assert_eq!(t.rows.len(), 4);
    let t =
        tenantry_bench::limits::noisy_neighbour(std::time::Duration::from_millis(500), 20).await;
    assert_eq!(t.rows.len(), 2);
}

#[tokio::test]
async fn forged_key_scenario_runs() {
    let t = tenantry_bench::forged::forged_keys(std::time::Duration::from_millis(300), 1, 2).await;
    assert_eq!(t.rows.len(), 3);
    for flooded in &t.rows[1..] {
        assert_eq!(
            flooded[6], "0.0000",
            "forged keys cost no lookup: {:?}",
            t.rows
        );
    }
}

#[tokio::test]
async fn job_and_cache_scenarios_run() {
    let t = tenantry_bench::jobs::throughput(20, &[1, 3], 2).await;
    assert_eq!(t.rows.len(), 2);
    let t = tenantry_bench::jobs::cache_vs_db(20).await;
    assert_eq!(t.rows.len(), 2);
}

#[tokio::test]
async fn http_scenarios_run() {
    let d = std::time::Duration::from_millis(200);
    let all = ["shared", "schema", "database"].map(String::from);
    let tuning = tenantry_bench::http::Tuning {
        lanes: 2,
        tenant_db_budget: Some(2),
        move_grace: None,
    };
    let t = tenantry_bench::http::read_by_id(1, d, 1, 2, &all, &tuning).await;
    // baseline, shared floor, shared, schema floor, schema, database floor, database.
    assert_eq!(t.rows.len(), 7);
    // Every side answered 200 (a floor that fails fast would otherwise look fast), and each
    // placement is compared with its floor.
    assert!(
        !t.notes.iter().any(|n| n.starts_with("WARNING")),
        "{:?}",
        t.notes
    );
    assert_eq!(t.notes.len(), 3, "{:?}", t.notes);
    let t = tenantry_bench::http::rejected(d, 1, 2).await;
    assert_eq!(t.rows.len(), 3);
    let t = tenantry_bench::http::read_by_id_cached(1, d, 1, 2).await;
    assert_eq!(t.rows.len(), 2);
    assert!(tenantry_bench::http::svg("t", &[("a".into(), 1.0)]).starts_with("<svg"));
}

#[tokio::test]
async fn workload_scenarios_run() {
    let d = std::time::Duration::from_millis(150);
    let t = tenantry_bench::workloads::operations(2, d, 1, 2).await;
    // list, create: baseline + 3 placements; mixed: baseline + shared.
    assert_eq!(t.rows.len(), 4 + 4 + 2);
    let t = tenantry_bench::workloads::tenant_scale(
        &tenantry_bench::workloads::TenantCounts {
            shared: vec![1, 3],
            schema: vec![1, 2],
            database: vec![1, 2],
        },
        d,
        d / 2,
        1,
        2,
        2,
    )
    .await;
    assert_eq!(t.rows.len(), 6);
}

#[tokio::test]
async fn move_scenario_runs() {
    let tables = tenantry_bench::mobility::moves(200, 2_000, 4).await;
    assert_eq!(tables.len(), 2);
    let moves = &tables[0];
    assert_eq!(moves.rows.len(), 3, "{:?}", moves.rows);
    // Between databases by replication (`.ci/run` sets wal_level = logical), to a schema by copy.
    let paths = &moves.notes[0];
    assert!(
        paths.contains("shared -> database: logical replication;")
            && paths.contains("database -> database (second server): logical replication;")
            && paths.contains("database -> schema: copy and catch-up"),
        "{paths}"
    );
    for row in &moves.rows {
        assert_eq!(row.len(), 8, "every move succeeded: {row:?}");
        assert_eq!(row[6], "0", "no order lost or doubled: {row:?}");
        assert_eq!(row[5], "0 / 0", "no request failed: {row:?}");
    }
}

// Like the bench binary: the load and the probes on more than one thread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_rig_loses_nothing() {
    let tables = tenantry_bench::chaos::chaos(tenantry_bench::chaos::Options {
        tenants: 6,
        clients: 4,
        outage: std::time::Duration::from_secs(1),
        settle: std::time::Duration::from_secs(1),
    })
    .await;
    assert_eq!(tables.len(), 2);
    assert_eq!(
        tables[0].rows.len(),
        5,
        "every fault ran: {:?}",
        tables[0].rows
    );
    for row in &tables[0].rows {
        assert_eq!(
            row[4], "0",
            "inside a window, only 503 with Retry-After: {row:?}"
        );
        assert!(!row[5].contains("none"), "every node recovered: {row:?}");
    }
    let summary = &tables[1].rows[0];
    assert_eq!(
        summary[1], "0",
        "no failure outside the fault windows: {summary:?}"
    );
    assert_ne!(summary[2], "0", "writes were acknowledged: {summary:?}");
    assert_eq!(summary[3], "0", "no acknowledged write lost: {summary:?}");
    assert_eq!(
        summary[4], "0",
        "every acknowledged write was read back: {summary:?}"
    );
    assert_eq!(
        summary[5], "0",
        "no row returned to the wrong tenant: {summary:?}"
    );
}
