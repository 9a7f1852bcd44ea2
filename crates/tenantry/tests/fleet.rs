//! Fleet migrations and the doctor, against real PostgreSQL.

mod support;

use tenantry::db::fleet::{self, MigrateOptions};
use tenantry::db::{doctor, Database, TenantMigration};
use tenantry::{Catalog, Isolation};
use tokio_postgres::NoTls;

const V1: TenantMigration = TenantMigration {
    version: 1,
    name: "notes",
    sql: "CREATE TABLE notes (
              tenant_id text NOT NULL CHECK (tenant_id <> ''),
              id int NOT NULL,
              body text NOT NULL,
              PRIMARY KEY (tenant_id, id))",
};
const V2: TenantMigration = TenantMigration {
    version: 2,
    name: "notes_pinned",
    sql: "ALTER TABLE notes ADD COLUMN pinned boolean NOT NULL DEFAULT false",
};
static ONLY_V1: &[TenantMigration] = &[V1];
static BOTH: &[TenantMigration] = &[V1, V2];

async fn fresh() -> (tokio_postgres::Config, String) {
    let (url, name) = support::fresh_database().await;
    (url.parse().unwrap(), name)
}

async fn open(cfg: &tokio_postgres::Config, name: &str, m: &'static [TenantMigration]) -> Database {
    support::open(cfg, name, m).await
}

async fn tenant(db: &Database, slug: &str, isolation: Isolation) {
    support::create(&Catalog::new(db.clone()), slug, isolation).await;
}

async fn sql(cfg: &tokio_postgres::Config) -> tokio_postgres::Client {
    let (c, conn) = cfg.connect(NoTls).await.unwrap();
    tokio::spawn(conn);
    c
}

async fn has_pinned(c: &tokio_postgres::Client, schema: &str) -> bool {
    c.query_one(
        "SELECT count(*) FROM information_schema.columns
         WHERE table_schema = $1 AND table_name = 'notes' AND column_name = 'pinned'",
        &[&schema],
    )
    .await
    .unwrap()
    .get::<_, i64>(0)
        == 1
}

#[tokio::test]
async fn fleet_migration_with_a_failing_tenant_a_resumed_run_and_a_no_op() {
    let (cfg, name) = fresh().await;
    let db = open(&cfg, &name, ONLY_V1).await;
    for s in ["sa", "sb", "sc"] {
        tenant(&db, s, Isolation::Schema).await;
    }
    for s in ["da", "db"] {
        tenant(&db, s, Isolation::Database).await;
    }
    tenant(&db, "shx", Isolation::Shared).await;
    drop(db);
    // Plant a fault: sb already has the column v2 adds, so v2 fails there.
    let c = sql(&cfg).await;
    c.batch_execute("ALTER TABLE t_sb.notes ADD COLUMN pinned int")
        .await
        .unwrap();

    // Same deployment, new code with v2. (Connecting migrates the shared tables.)
    let db = open(&cfg, &name, BOTH).await;
    let dry = fleet::migrate(
        &db,
        &MigrateOptions {
            dry_run: true,
            ..Default::default()
        },
        |_| {},
    )
    .await
    .unwrap();
    assert_eq!(dry.tenants.len(), 5, "5 non-shared tenants are behind");
    assert!(dry.tenants.iter().all(|t| t.applied == vec![2]));
    assert!(!has_pinned(&c, "t_sa").await, "a dry run changes nothing");

    let seen = std::sync::Mutex::new(Vec::new());
    let report = fleet::migrate(
        &db,
        &MigrateOptions {
            parallelism: 2,
            dry_run: false,
        },
        |p| seen.lock().unwrap().push(p.done),
    )
    .await
    .unwrap();
    assert_eq!(report.tenants.len(), 5);
    let failed: Vec<String> = report.failed().map(|t| t.tenant.to_string()).collect();
    assert_eq!(failed, vec!["sb"], "{report:?}");
    assert_eq!(report.succeeded(), 4);
    assert_eq!(seen.lock().unwrap().len(), 5, "progress after every tenant");
    assert!(has_pinned(&c, "t_sa").await);
    assert!(has_pinned(&c, "t_sc").await);
    assert!(has_pinned(&c, "shared").await);
    // The tenant databases got it too, and their own ledgers say so.
    let mut dcfg = cfg.clone();
    dcfg.dbname(format!("{name}_t_da"));
    let dc = sql(&dcfg).await;
    assert!(has_pinned(&dc, "shared").await);
    let v: i64 = dc
        .query_one(
            "SELECT count(*) FROM tenantry.migrations WHERE version = 2",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(v, 1);

    // Fix the fault; a re-run finishes only what is left.
    c.batch_execute("ALTER TABLE t_sb.notes DROP COLUMN pinned")
        .await
        .unwrap();
    let report = fleet::migrate(&db, &MigrateOptions::default(), |_| {})
        .await
        .unwrap();
    let visited: Vec<String> = report
        .tenants
        .iter()
        .map(|t| t.tenant.to_string())
        .collect();
    assert_eq!(visited, vec!["sb"]);
    assert!(report.failed().next().is_none());
    assert!(has_pinned(&c, "t_sb").await);

    // Nothing pending: no tenant is visited at all.
    let report = fleet::migrate(&db, &MigrateOptions::default(), |_| {})
        .await
        .unwrap();
    assert!(report.tenants.is_empty());
    assert!(report.shared_applied.is_empty());
    // And every tenant's summary is current.
    let behind: i64 = c
        .query_one(
            "SELECT count(*) FROM tenantry.tenants WHERE schema_version < 2",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(behind, 0);
    // New tenants are provisioned at v2 (the template was migrated too).
    tenant(&db, "dnew", Isolation::Database).await;
    tenant(&db, "snew", Isolation::Schema).await;
    assert!(has_pinned(&c, "t_snew").await);
    let mut ncfg = cfg.clone();
    ncfg.dbname(format!("{name}_t_dnew"));
    assert!(has_pinned(&sql(&ncfg).await, "shared").await);
}

#[tokio::test]
async fn the_doctor_reports_every_planted_fault() {
    let (cfg, name) = fresh().await;
    let db = open(&cfg, &name, ONLY_V1).await;
    tenant(&db, "sa", Isolation::Schema).await;
    tenant(&db, "da", Isolation::Database).await;
    tenant(&db, "dgone", Isolation::Database).await;
    tenant(&db, "shx", Isolation::Shared).await;
    let clean = doctor::check(&db).await.unwrap();
    assert!(clean.is_empty(), "a fresh fleet is clean: {clean:#?}");

    let app = format!("{name}_app");
    let c = sql(&cfg).await;
    c.batch_execute(&format!(
        "ALTER TABLE shared.notes NO FORCE ROW LEVEL SECURITY;
         CREATE POLICY open_door ON t_sa.notes USING (true);
         CREATE VIEW shared.all_notes AS SELECT * FROM shared.notes;
         CREATE FUNCTION public.peek() RETURNS bigint LANGUAGE sql SECURITY DEFINER
             AS 'SELECT count(*) FROM shared.notes';
         GRANT CREATE ON SCHEMA shared TO {app};
         CREATE TABLE shared.bad_keys (id int, tenant_id text NOT NULL, PRIMARY KEY (id, tenant_id));
         ALTER TABLE shared.bad_keys ENABLE ROW LEVEL SECURITY;
         ALTER TABLE shared.bad_keys FORCE ROW LEVEL SECURITY;
         CREATE SCHEMA t_ghost;
         ALTER ROLE {app} BYPASSRLS;"
    ))
    .await
    .unwrap();
    c.batch_execute(&format!("DROP DATABASE {name}_t_dgone WITH (FORCE)"))
        .await
        .unwrap();
    let mut dcfg = cfg.clone();
    dcfg.dbname(format!("{name}_t_da"));
    let dc = sql(&dcfg).await;
    dc.batch_execute("ALTER TABLE shared.notes DISABLE ROW LEVEL SECURITY")
        .await
        .unwrap();
    drop(dc);

    let findings = doctor::check(&db).await.unwrap();
    let text: Vec<String> = findings.iter().map(|f| f.to_string()).collect();
    let has = |check: &str, location: &str| {
        findings
            .iter()
            .any(|f| f.check == check && f.location.contains(location))
    };
    for (check, location) in [
        ("rls_not_forced", "shared"),
        ("unexpected_policy", "schema t_sa"),
        ("view_without_security_invoker", "shared"),
        ("security_definer_callable", "control database"),
        ("schema_create_granted", "control database"),
        ("pk_without_tenant_id", "shared"),
        ("storage_without_tenant", "schema t_ghost"),
        ("tenant_without_storage", "_t_dgone"),
        ("runtime_role_bypassrls", "role"),
        ("rls_not_enabled", "_t_da"),
        ("missing_policy", "shared"),
    ] {
        assert!(
            has(check, location),
            "{check} at {location} not reported in {text:#?}"
        );
    }
    // Clean the role so the next tests on this cluster are not affected.
    c.batch_execute(&format!("ALTER ROLE {app} NOBYPASSRLS"))
        .await
        .unwrap();
}
