//! The scoped transaction against real PostgreSQL: isolation at the SQL level, no leakage
//! through pooled connections (including after a cancelled transaction), and the round-trip
//! cost, counted by a TCP proxy between the pool and the server.

mod support;

use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;

use tenantry::audit::Actor;
use tenantry::catalog::NewTenant;
use tenantry::db::{Database, DbError, PoolSettings, RoleNames, TenantMigration};
use tenantry::{Catalog, Slug, Tenancy, TenancyConfig, TenantContext};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_postgres::NoTls;

const MIGRATIONS: &[TenantMigration] = &[TenantMigration {
    version: 1,
    name: "notes",
    sql: "CREATE TABLE notes (
              tenant_id text NOT NULL CHECK (tenant_id <> ''),
              id int NOT NULL,
              body text NOT NULL,
              PRIMARY KEY (tenant_id, id))",
}];

/// A fresh database and a unique role prefix for one test.
async fn fresh_db() -> (tokio_postgres::Config, String) {
    let (url, name) = support::fresh_database().await;
    (url.parse().unwrap(), name)
}

/// A superuser client on the test's database, for the test's own setup and checks.
async fn superuser(cfg: &tokio_postgres::Config) -> tokio_postgres::Client {
    let (c, conn) = cfg.connect(NoTls).await.unwrap();
    tokio::spawn(conn);
    c
}

/// A runtime pool of `n` connections, everything else as by default.
fn pool_of(n: usize) -> PoolSettings {
    PoolSettings {
        runtime_max: n,
        ..PoolSettings::default()
    }
}

/// A fresh database with the library bootstrapped on it.
async fn fresh(settings: &PoolSettings) -> (tokio_postgres::Config, Database) {
    let (cfg, name) = fresh_db().await;
    let db = connect(cfg.clone(), &name, settings).await;
    (cfg, db)
}

async fn connect(cfg: tokio_postgres::Config, prefix: &str, settings: &PoolSettings) -> Database {
    Database::connect(
        cfg,
        None,
        &RoleNames::from_prefix(prefix).unwrap(),
        MIGRATIONS,
        settings,
    )
    .await
    .unwrap()
}

fn db_msg(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map(|d| d.message().to_owned())
        .unwrap_or_default()
}

fn t(s: &str) -> Slug {
    Slug::parse(s).unwrap()
}

/// The SQL for the id of the tenant with this slug (rows are keyed by tenant id).
fn id_of(slug: &str) -> String {
    format!("(SELECT id FROM tenantry.tenants WHERE slug = '{slug}')")
}

/// Seeds rows for two tenants through the control connection (as the superuser, bypassing RLS
/// on purpose: this is the test's setup, not the system under test).
async fn seed(cfg: &tokio_postgres::Config) {
    let c = superuser(cfg).await;
    c.batch_execute(
        "INSERT INTO shared.notes VALUES ('aa', 1, 'a1'), ('aa', 2, 'a2'), ('bb', 1, 'b1')",
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn runtime_role_without_context_sees_nothing_and_cannot_insert() {
    let (cfg, db) = fresh(&PoolSettings::default()).await;
    seed(&cfg).await;
    let client = db.runtime_pool().get().await.unwrap();
    // Plain queries, no scoped transaction: no app.tenant_id at all.
    let n: i64 = client
        .query_one("SELECT count(*) FROM notes", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0, "no tenant context must mean no rows");
    let err = client
        .execute("INSERT INTO notes VALUES ('aa', 9, 'x')", &[])
        .await
        .unwrap_err();
    assert!(db_msg(&err).contains("row-level security"), "{err:?}");
    // A setting reset to '' (what a pooled connection carries after a local set_config) is
    // also nothing.
    client
        .batch_execute("BEGIN; SELECT set_config('app.tenant_id', 'aa', true); COMMIT;")
        .await
        .unwrap();
    let n: i64 = client
        .query_one("SELECT count(*) FROM notes", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
    // And the runtime role cannot bypass: no TRUNCATE, no policy changes.
    assert!(client.batch_execute("TRUNCATE notes").await.is_err());
    assert!(client
        .batch_execute("ALTER TABLE notes DISABLE ROW LEVEL SECURITY")
        .await
        .is_err());
}

#[tokio::test]
async fn scoped_transaction_sees_only_its_tenant() {
    let (cfg, db) = fresh(&PoolSettings::default()).await;
    seed(&cfg).await;
    let a = ctx_for(&db, &t("aa")).await;
    let tdb = a.db();
    // Even a statement whose own filter would match everything sees one tenant: RLS holds
    // although the statement says `tenant_id = $1 OR true`.
    let rows = tdb
        .run(
            "SELECT id FROM notes WHERE tenant_id = $1 OR true ORDER BY id",
            &[],
        )
        .await
        .unwrap();
    let ids: Vec<i32> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(ids, vec![1, 2]);
    // Writing a row for another tenant is refused by WITH CHECK.
    let mut tx = tdb.begin().await.unwrap();
    let err = tx
        .query(
            "INSERT INTO notes (tenant_id, id, body) VALUES ($1, 5, 'ok')",
            &[],
        )
        .await;
    assert!(err.is_ok());
    tx.commit().await.unwrap();
    let c = superuser(&cfg).await;
    let rt = db.runtime_pool().get().await.unwrap();
    let e = rt
        .batch_execute(
            "BEGIN; SELECT set_config('app.tenant_id', 'aa', true);
             INSERT INTO notes VALUES ('bb', 7, 'smuggled'); COMMIT;",
        )
        .await
        .unwrap_err();
    assert!(db_msg(&e).contains("row-level security"), "{e:?}");
    let n: i64 = c
        .query_one(
            "SELECT count(*) FROM shared.notes WHERE tenant_id = 'bb'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1, "nothing was smuggled into bb");
}

#[tokio::test]
async fn statements_without_the_tenant_filter_are_refused() {
    let (_, db) = fresh(&PoolSettings::default()).await;
    let a = ctx_for(&db, &t("aa")).await;
    let e = a.db().run("SELECT id FROM notes", &[]).await.unwrap_err();
    assert!(matches!(e, DbError::Unscoped(_)));
}

#[tokio::test]
async fn pooled_connection_never_carries_a_tenant_even_after_cancellation() {
    let (cfg, db) = fresh(&pool_of(1)).await;
    seed(&cfg).await;
    let a = ctx_for(&db, &t("aa")).await;
    // 1. An open transaction dropped without commit (an error path or a panic).
    {
        let mut tx = a.db().begin().await.unwrap();
        tx.query("SELECT id FROM notes WHERE tenant_id = $1", &[])
            .await
            .unwrap();
        drop(tx);
    }
    assert_clean(&db).await;
    // 2. A handler future cancelled mid-statement (a client that hung up).
    {
        let fut = async {
            let mut tx = a.db().begin().await.unwrap();
            tx.query(
                "SELECT id FROM notes, pg_sleep(2) WHERE tenant_id = $1",
                &[],
            )
            .await
        };
        let r = tokio::time::timeout(std::time::Duration::from_millis(200), fut).await;
        assert!(
            r.is_err(),
            "the statement must have been cancelled by the timeout"
        );
    }
    assert_clean(&db).await;
    // 3. A read in its single-statement form (no transaction block): the tenant setting ends
    //    with the statement.
    let rows = a
        .db()
        .run("SELECT id FROM notes WHERE tenant_id = $1 ORDER BY id", &[])
        .await
        .unwrap();
    assert_eq!(rows.len(), 2);
    assert_clean(&db).await;
}

/// A read in its single-statement form still runs under the plan's statement timeout: past
/// it the statement is cancelled, its connection is closed rather than reused, and the next
/// read works on a fresh connection.
#[tokio::test]
async fn single_statement_reads_keep_the_statement_timeout() {
    let (cfg, db) = fresh(&pool_of(1)).await;
    seed(&cfg).await;
    let a = ctx_with(&db, "aa", tenantry::Isolation::Shared, short_timeouts()).await;
    let started = std::time::Instant::now();
    let e = a
        .db()
        .run(
            "SELECT id FROM notes, pg_sleep(5) WHERE tenant_id = $1",
            &[],
        )
        .await
        .unwrap_err();
    assert!(matches!(e, DbError::Timeout), "{e:?}");
    let took = started.elapsed();
    assert!(took < std::time::Duration::from_secs(3), "{took:?}");
    // The backend stopped sleeping: the cancel reached it.
    let c = superuser(&cfg).await;
    let mut sleeping = 1;
    for _ in 0..50 {
        sleeping = c
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%pg_sleep(5)%'
                 AND pid <> pg_backend_pid()",
                &[],
            )
            .await
            .unwrap()
            .get::<_, i64>(0);
        if sleeping == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(sleeping, 0, "the timed-out statement was cancelled");
    let rows = a
        .db()
        .run("SELECT id FROM notes WHERE tenant_id = $1", &[])
        .await
        .unwrap();
    assert_eq!(rows.len(), 2);
    assert_clean(&db).await;
}

/// The only runtime connection is idle, outside any transaction, with no tenant setting.
/// A single-row insert runs as one statement that carries its own setting: the row lands in
/// the tenant, the setting ends with the statement, a failing insert writes nothing, and an
/// insert past the plan's statement timeout is cancelled and rolled back.
#[tokio::test]
async fn single_row_inserts_set_their_own_tenant() {
    let (cfg, db) = fresh(&pool_of(1)).await;
    seed(&cfg).await;
    let c = superuser(&cfg).await;
    let count = |tenant: &'static str| {
        let c = &c;
        async move {
            c.query_one(
                "SELECT count(*) FROM shared.notes
                 WHERE tenant_id = coalesce((SELECT id FROM tenantry.tenants WHERE slug = $1), $1)",
                &[&tenant],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
        }
    };
    let a = ctx_with(&db, "aa", tenantry::Isolation::Shared, short_timeouts()).await;
    let row = a
        .db()
        .run_opt(
            "INSERT INTO notes (tenant_id, id, body) VALUES ($1, $2, $3) RETURNING tenant_id, id",
            &[&10i32, &"ten"],
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.get::<_, String>(0), a.tenant_id().as_str());
    assert_eq!(row.get::<_, i32>(1), 10);
    assert_eq!((count("aa").await, count("bb").await), (3, 1));
    let insert = |id: i32, body: &'static str| {
        let a = &a;
        async move {
            a.db()
                .run(
                    "INSERT INTO notes (tenant_id, id, body) VALUES ($1, $2, $3)",
                    &[&id, &body],
                )
                .await
        }
    };
    assert_clean(&db).await;
    // A duplicate key fails as itself and writes nothing; the connection is clean after it.
    let e = insert(10, "again").await.unwrap_err();
    assert!(!matches!(e, DbError::Timeout), "{e:?}");
    assert_eq!(count("aa").await, 3);
    assert_clean(&db).await;
    // Past the plan's statement timeout an insert is cancelled and rolled back.
    c.batch_execute(
        "CREATE FUNCTION shared.slow_note() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN IF NEW.body = 'slow' THEN PERFORM pg_sleep(5); END IF; RETURN NEW; END $$;
         CREATE TRIGGER slow_note BEFORE INSERT ON shared.notes
             FOR EACH ROW EXECUTE FUNCTION shared.slow_note();",
    )
    .await
    .unwrap();
    let started = std::time::Instant::now();
    let e = insert(12, "slow").await.unwrap_err();
    assert!(matches!(e, DbError::Timeout), "{e:?}");
    assert!(started.elapsed() < std::time::Duration::from_secs(3));
    assert_eq!(count("aa").await, 3, "the timed-out insert was rolled back");
    // The next insert works, on a fresh connection.
    insert(13, "fast").await.unwrap();
    assert_eq!(count("aa").await, 4);
    assert_clean(&db).await;
}

/// Every plan with a 300 ms statement timeout.
fn short_timeouts() -> TenancyConfig {
    let mut config = TenancyConfig::default();
    for plan in config.plans.0.values_mut() {
        plan.statement_timeout = std::time::Duration::from_millis(300);
    }
    config
}

async fn assert_clean(db: &Database) {
    let c = db.runtime_pool().get().await.unwrap();
    // SAVEPOINT fails outside a transaction block: if it succeeds, the connection came back
    // from the pool inside someone's transaction.
    let e = c.batch_execute("SAVEPOINT probe").await.unwrap_err();
    assert!(
        db_msg(&e).contains("transaction blocks"),
        "connection was returned inside a transaction: {e:?}"
    );
    let row = c
        .query_one(
            "SELECT coalesce(current_setting('app.tenant_id', true), ''),
                    (SELECT count(*) FROM notes)",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "");
    assert_eq!(row.get::<_, i64>(1), 0);
}

/// Counts "turns": each time traffic flows client→server after the server last spoke is one
/// round trip begun by the client.
struct TurnCounter {
    turns: AtomicUsize,
    last: AtomicU8,
}

async fn proxy(target: String) -> (u16, Arc<TurnCounter>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let counter = Arc::new(TurnCounter {
        turns: AtomicUsize::new(0),
        last: AtomicU8::new(1),
    });
    let c = counter.clone();
    tokio::spawn(async move {
        loop {
            let (client, _) = listener.accept().await.unwrap();
            let server = TcpStream::connect(&target).await.unwrap();
            let (mut cr, mut cw) = client.into_split();
            let (mut sr, mut sw) = server.into_split();
            let c1 = c.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                while let Ok(n) = cr.read(&mut buf).await {
                    if n == 0 || sw.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                    if c1.last.swap(0, Ordering::SeqCst) != 0 {
                        c1.turns.fetch_add(1, Ordering::SeqCst);
                    }
                }
            });
            let c2 = c.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                while let Ok(n) = sr.read(&mut buf).await {
                    if n == 0 || cw.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                    c2.last.store(1, Ordering::SeqCst);
                }
            });
        }
    });
    (port, counter)
}

#[tokio::test]
async fn a_scoped_read_costs_one_round_trip() {
    let (cfg, name) = fresh_db().await;
    // Bootstrap directly, then route the runtime pool through the counting proxy.
    let _ = connect(cfg.clone(), &name, &PoolSettings::default()).await;
    seed(&cfg).await;
    let (port, counter) = proxy("127.0.0.1:5432".into()).await;
    let via_proxy: tokio_postgres::Config = format!("postgres://postgres@127.0.0.1:{port}/{name}")
        .parse()
        .unwrap();
    let db = connect(via_proxy, &name, &pool_of(1)).await;
    let a = ctx_for(&db, &t("aa")).await;
    let sql = "SELECT body FROM notes WHERE tenant_id = $1 AND id = $2";
    // Warm the connection's statement cache.
    a.db().run(sql, &[&1i32]).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;

    let mut scoped = Vec::new();
    for _ in 0..20 {
        let before = counter.turns.load(Ordering::SeqCst);
        let rows = a.db().run(sql, &[&1i32]).await.unwrap();
        assert_eq!(rows.len(), 1);
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        scoped.push(counter.turns.load(Ordering::SeqCst) - before);
    }
    // A bare prepared query on the same connection, for comparison.
    let client = db.runtime_pool().get().await.unwrap();
    let stmt = client
        .prepare("SELECT body FROM notes WHERE tenant_id = $1 AND id = $2")
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let before = counter.turns.load(Ordering::SeqCst);
    client.query(&stmt, &[&"aa", &1i32]).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let bare = counter.turns.load(Ordering::SeqCst) - before;
    eprintln!("round trips: scoped read {scoped:?}, bare query {bare}");
    assert_eq!(bare, 1);
    // BEGIN + set_config + query + COMMIT travel together: the same single round trip.
    assert!(
        scoped.iter().all(|&n| n == 1),
        "scoped reads took {scoped:?} round trips"
    );
}

/// A tenant context through the public, audited admin path (the only way in from outside the
/// crate besides request resolution), creating the tenant in the catalog if needed.
/// A new shared tenant and an admin context for it.
async fn ctx_for(db: &Database, slug: &Slug) -> TenantContext {
    ctx_in(db, slug.as_str(), tenantry::Isolation::Shared).await
}

async fn ctx_in(db: &Database, slug: &str, isolation: tenantry::Isolation) -> TenantContext {
    ctx_with(db, slug, isolation, TenancyConfig::default()).await
}

/// A new tenant in `isolation` and an admin context for it, under `config`'s plans.
async fn ctx_with(
    db: &Database,
    slug: &str,
    isolation: tenantry::Isolation,
    config: TenancyConfig,
) -> TenantContext {
    let tenancy = Tenancy::new(Catalog::new(db.clone()), config);
    let actor = Actor {
        name: "test".into(),
        request_id: "test".into(),
    };
    let new = NewTenant {
        slug: t(slug),
        name: slug.into(),
        plan: "free".into(),
        isolation,
        server: None,
    };
    let created = tenantry::lifecycle::create(tenancy.catalog(), &new, &actor)
        .await
        .unwrap();
    // Rows the test seeded under the slug (before the tenant existed) become the tenant's:
    // rows are keyed by its id.
    superuser(db.control_config())
        .await
        .execute(
            "UPDATE shared.notes SET tenant_id = $1 WHERE tenant_id = $2",
            &[&created.id.as_str(), &slug],
        )
        .await
        .unwrap();
    tenancy
        .admin_context(&t(slug), &actor, "test", "test")
        .await
        .unwrap()
}

/// Two schema tenants on a runtime pool of one connection, each with one note (`a`, `b`), and
/// a superuser client for the test's own setup.
async fn two_schema_tenants(
    a: &str,
    b: &str,
) -> (
    Database,
    TenantContext,
    TenantContext,
    tokio_postgres::Client,
) {
    let (cfg, db) = fresh(&pool_of(1)).await;
    let ca = ctx_in(&db, a, tenantry::Isolation::Schema).await;
    let cb = ctx_in(&db, b, tenantry::Isolation::Schema).await;
    let c = superuser(&cfg).await;
    c.batch_execute(&format!(
        "INSERT INTO t_{a}.notes VALUES ({ia}, 1, 'a'); INSERT INTO t_{b}.notes VALUES ({ib}, 1, 'b');",
        ia = id_of(a),
        ib = id_of(b),
    ))
    .await
    .unwrap();
    (db, ca, cb, c)
}

/// While a fleet migration has changed one tenant schema but not another, a statement cached
/// for one shape fails on the other with "cached plan must not change result type"; the scoped
/// transaction clears the connection's cache and retries once.
#[tokio::test]
async fn a_schema_changed_under_a_cached_statement_is_retried_with_fresh_statements() {
    let (_db, a, b, c) = two_schema_tenants("aa", "bb").await;
    let sql = "SELECT * FROM notes WHERE tenant_id = $1";
    // Cache the statement with bb's shape on the only connection.
    let rows = b.db().run(sql, &[]).await.unwrap();
    assert_eq!(rows[0].len(), 3);
    // Migrate aa only: its rows now have a fourth column.
    c.batch_execute("ALTER TABLE t_aa.notes ADD COLUMN extra int DEFAULT 7")
        .await
        .unwrap();
    let rows = a.db().run(sql, &[]).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].len(), 4);
    assert_eq!(rows[0].get::<_, Option<i32>>(3), Some(7));
    // And back to bb's shape on the same connection.
    let rows = b.db().run(sql, &[]).await.unwrap();
    assert_eq!(rows[0].len(), 3);
    assert_eq!(rows[0].get::<_, String>(2), "b");
}

/// A schema tenant's path is its schema alone: a name missing there does not fall through to
/// the shared tables (or `public`).
#[tokio::test]
async fn schema_tenants_never_fall_through_to_other_schemas() {
    let (cfg, db) = fresh(&PoolSettings::default()).await;
    let a = ctx_in(&db, "aa", tenantry::Isolation::Schema).await;
    let c = superuser(&cfg).await;
    c.batch_execute(&format!(
        "INSERT INTO shared.notes VALUES ({}, 1, 'in shared')",
        id_of("aa")
    ))
    .await
    .unwrap();
    let rows = a
        .db()
        .run("SELECT body FROM notes WHERE tenant_id = $1", &[])
        .await
        .unwrap();
    assert!(
        rows.is_empty(),
        "the schema tenant must not see shared rows"
    );
    let row = a
        .db()
        .run("SELECT current_setting('search_path') WHERE 'x' <> $1", &[])
        .await;
    // (No tenant filter: refused before it is sent.)
    assert!(row.is_err());
}

/// Schema tenants get one prepared statement per schema on a connection (PostgreSQL would
/// otherwise re-analyse a shared statement each time `search_path` changes), and each still
/// reads only its own schema.
#[tokio::test]
async fn schema_tenants_keep_a_prepared_statement_each() {
    let (db, a, b, _c) = two_schema_tenants("sa", "sb").await;
    for _ in 0..3 {
        for (ctx, body) in [(&a, "a"), (&b, "b")] {
            let rows = ctx
                .db()
                .run("SELECT body FROM notes WHERE tenant_id = $1", &[])
                .await
                .unwrap();
            let bodies: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
            assert_eq!(bodies, vec![body.to_owned()]);
        }
    }
    // The one runtime connection holds a statement per schema.
    let rt = db.runtime_pool().get().await.unwrap();
    let rows = rt
        .query(
            "SELECT statement FROM pg_prepared_statements WHERE statement LIKE 'SELECT body%'",
            &[],
        )
        .await
        .unwrap();
    let texts: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(texts.len(), 2, "{texts:?}");
    assert!(texts.iter().any(|t| t.contains("t_sa")) && texts.iter().any(|t| t.contains("t_sb")));
}

/// A runtime connection past its lifetime is closed and replaced when it is next taken from
/// the pool (a backend keeps the catalog entries of every schema it touched for its whole
/// life); before that it is reused.
#[tokio::test]
async fn runtime_connections_are_replaced_after_their_lifetime() {
    let (cfg, db) = fresh(&PoolSettings {
        connection_lifetime: std::time::Duration::from_millis(1000),
        ..pool_of(1)
    })
    .await;
    let ctx = ctx_in(&db, "la", tenantry::Isolation::Schema).await;
    let c = superuser(&cfg).await;
    c.batch_execute(&format!(
        "INSERT INTO t_la.notes VALUES ({}, 1, 'la')",
        id_of("la")
    ))
    .await
    .unwrap();
    let backend = || async {
        let rt = db.runtime_pool().get().await.unwrap();
        let pid: i32 = rt
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .unwrap()
            .get(0);
        pid
    };
    let read = || async {
        let rows = ctx
            .db()
            .run("SELECT body FROM notes WHERE tenant_id = $1", &[])
            .await
            .unwrap();
        rows.iter().map(|r| r.get(0)).collect::<Vec<String>>()
    };
    // A fresh connection, reused while it is young.
    tokio::time::sleep(std::time::Duration::from_millis(1050)).await;
    let first = backend().await;
    assert_eq!(read().await, vec!["la"]);
    assert_eq!(backend().await, first);
    // Past its lifetime: the next use gets a new backend, and the old one has exited.
    tokio::time::sleep(std::time::Duration::from_millis(1050)).await;
    assert_eq!(read().await, vec!["la"]);
    let second = backend().await;
    assert_ne!(second, first);
    let mut gone = false;
    for _ in 0..50 {
        let n: i64 = c
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = $1",
                &[&first],
            )
            .await
            .unwrap()
            .get(0);
        if n == 0 {
            gone = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(gone, "the replaced backend has exited");
}

/// With the runtime pool split into lanes, each schema is always served by the same lane, so a
/// connection holds statements (and catalog entries) for its lane's schemas only; shared
/// tenants use any lane; the lanes together never exceed the pool's size.
#[tokio::test]
async fn schema_tenants_stay_on_their_lane() {
    let (cfg, db) = fresh(&PoolSettings {
        runtime_lanes: 2,
        ..pool_of(3)
    })
    .await;
    let status = db.runtime_status();
    assert_eq!((db.runtime_lanes().len(), status.max_size), (2, 3));
    let slugs = ["la", "lb", "lc", "ld", "le", "lf"];
    let c = superuser(&cfg).await;
    let mut tenants = Vec::new();
    for slug in slugs {
        tenants.push(ctx_in(&db, slug, tenantry::Isolation::Schema).await);
        c.batch_execute(&format!(
            "INSERT INTO t_{slug}.notes VALUES ({id}, 1, '{slug}')",
            id = id_of(slug)
        ))
        .await
        .unwrap();
    }
    let shared = ctx_in(&db, "ls", tenantry::Isolation::Shared).await;
    c.batch_execute(&format!(
        "INSERT INTO shared.notes VALUES ({}, 1, 'ls')",
        id_of("ls")
    ))
    .await
    .unwrap();
    let sql = "SELECT body FROM notes WHERE tenant_id = $1";
    // Concurrent reads, so that lanes hold several connections at once.
    for _ in 0..3 {
        let reads = tenants.iter().chain([&shared]).map(|ctx| async move {
            let rows = ctx.db().run(sql, &[]).await.unwrap();
            let bodies: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
            assert_eq!(bodies, vec![ctx.slug().as_str().to_owned()]);
        });
        futures_util::future::join_all(reads).await;
    }
    // Which schemas each lane's connections prepared statements for.
    let mut seen: Vec<std::collections::BTreeSet<String>> = Vec::new();
    for lane in db.runtime_lanes() {
        let mut schemas = std::collections::BTreeSet::new();
        let mut held = Vec::new();
        while let Ok(conn) = lane
            .timeout_get(&deadpool_postgres::Timeouts {
                wait: Some(std::time::Duration::ZERO),
                ..Default::default()
            })
            .await
        {
            let rows = conn
                .query(
                    "SELECT statement FROM pg_prepared_statements WHERE statement LIKE 'SELECT body%'",
                    &[],
                )
                .await
                .unwrap();
            for r in rows {
                let text: String = r.get(0);
                if let Some(s) = text.split("schema \"").nth(1) {
                    schemas.insert(s.split('"').next().unwrap().to_owned());
                }
            }
            held.push(conn);
        }
        seen.push(schemas);
    }
    let all: std::collections::BTreeSet<String> = slugs.iter().map(|s| format!("t_{s}")).collect();
    assert_eq!(seen.len(), 2);
    assert!(
        seen[0].is_disjoint(&seen[1]),
        "a schema was served by two lanes: {seen:?}"
    );
    assert_eq!(&seen[0] | &seen[1], all, "{seen:?}");
    assert!(!seen[0].is_empty() && !seen[1].is_empty(), "{seen:?}");
}
