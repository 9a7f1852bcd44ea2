//! Moving a tenant between placements, against real PostgreSQL: every pair of placements, the
//! rows equal after the move and the old storage gone, neighbours untouched, writes during the
//! move neither lost nor duplicated, and a write that reaches the old placement refused.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tenantry::db::moves::{self, MoveError, MoveTarget};
use tenantry::db::{DbError, TenantMigration};
use tenantry::{Catalog, Isolation, Placement, Slug, Tenancy, TenancyConfig, Tenant};

static MIGRATIONS: &[TenantMigration] = &[support::USERS_AND_NOTES];

const ALL: [Isolation; 3] = [Isolation::Shared, Isolation::Schema, Isolation::Database];

async fn setup() -> (tokio_postgres::Config, Tenancy) {
    let (url, name) = support::fresh_database().await;
    let cfg: tokio_postgres::Config = url.parse().unwrap();
    let db = support::open(&cfg, &name, MIGRATIONS).await;
    (
        cfg,
        Tenancy::new(Catalog::new(db), TenancyConfig::default()),
    )
}

/// An operator's context in `slug`, read from the catalog (as each request resolves its own).
async fn ctx(tenancy: &Tenancy, slug: &Slug) -> tenantry::TenantContext {
    tenancy
        .admin_context(slug, &support::actor(), "test", "act")
        .await
        .unwrap()
}

async fn create(tenancy: &Tenancy, slug: &str, isolation: Isolation) -> Tenant {
    support::create(tenancy.catalog(), slug, isolation).await
}

async fn fill(cfg: &tokio_postgres::Config, tenant: &Tenant, users: i32, notes: i32) {
    let (c, s) = support::storage(cfg, &tenant.placement).await;
    c.batch_execute(&format!(
        "INSERT INTO {s}.users SELECT '{id}', g, 'user ' || g FROM generate_series(1, {users}) g;
         INSERT INTO {s}.notes SELECT '{id}', g, 1 + g % {users},
             CASE WHEN g % 5 = 0 THEN NULL ELSE E'line\\none ' || g END
         FROM generate_series(1, {notes}) g;",
        id = tenant.id.as_str(),
    ))
    .await
    .unwrap();
}

/// The tenant's rows in `placement` (without the tenant id), in order.
async fn rows(cfg: &tokio_postgres::Config, tenant: &Tenant, placement: &Placement) -> Vec<String> {
    let (c, s) = support::storage(cfg, placement).await;
    let mut out = Vec::new();
    for table in ["users", "notes"] {
        let exists: bool = c
            .query_one(
                &format!("SELECT to_regclass('{s}.{table}') IS NOT NULL"),
                &[],
            )
            .await
            .map(|r| r.get(0))
            .unwrap_or(false);
        if !exists {
            continue;
        }
        for r in c
            .query(
                &format!(
                    "SELECT '{table}' || (x)::text FROM (SELECT * FROM {s}.{table}
                     WHERE tenant_id = $1 ORDER BY id) x"
                ),
                &[&tenant.id.as_str()],
            )
            .await
            .unwrap()
        {
            out.push(r.get(0));
        }
    }
    out
}

async fn relocate(
    tenancy: &Tenancy,
    slug: &str,
    to: Isolation,
) -> Result<moves::MoveReport, MoveError> {
    relocate_after(tenancy, slug, to, Duration::ZERO).await
}

/// A move whose old storage goes `grace` after the flip.
async fn relocate_after(
    tenancy: &Tenancy,
    slug: &str,
    to: Isolation,
    grace: Duration,
) -> Result<moves::MoveReport, MoveError> {
    moves::relocate(
        tenancy.catalog(),
        &Slug::parse(slug).unwrap(),
        &MoveTarget {
            isolation: to,
            server: None,
        },
        grace,
        |_, _| {},
        |_| std::future::ready(true),
    )
    .await
}

/// Whether `placement`'s storage still exists (shared tables always do).
async fn storage_exists(cfg: &tokio_postgres::Config, placement: &Placement) -> bool {
    let (c, _) = support::storage(cfg, &Placement::Shared).await;
    match placement {
        Placement::Shared => true,
        Placement::Schema { schema } => c
            .query_one(
                "SELECT count(*) > 0 FROM pg_namespace WHERE nspname = $1",
                &[schema],
            )
            .await
            .unwrap()
            .get(0),
        Placement::Database { database, .. } => c
            .query_one(
                "SELECT count(*) > 0 FROM pg_database WHERE datname = $1",
                &[database],
            )
            .await
            .unwrap()
            .get(0),
    }
}

/// The tenant as the catalog has it now.
async fn current(tenancy: &Tenancy, slug: &Slug) -> Tenant {
    tenancy.catalog().get_tenant(slug).await.unwrap().unwrap()
}

/// Runs a move of `slug` to `to` until it asks, for the `nth` time (from 0), whether it may go
/// on at `stop_at`, and drops it there: what a killed server leaves.
async fn kill_move_at(
    tenancy: &Tenancy,
    slug: &Slug,
    to: Isolation,
    stop_at: moves::Phase,
    nth: usize,
) {
    let asked = std::sync::atomic::AtomicUsize::new(0);
    let hung = tokio::sync::Notify::new();
    let target = MoveTarget {
        isolation: to,
        server: None,
    };
    let mover = moves::relocate(
        tenancy.catalog(),
        slug,
        &target,
        Duration::ZERO,
        |_, _| {},
        |phase| {
            let hang = phase == stop_at && asked.fetch_add(1, Ordering::SeqCst) == nth;
            let hung = &hung;
            async move {
                if hang {
                    hung.notify_one();
                    std::future::pending::<()>().await;
                }
                true
            }
        },
    );
    tokio::select! {
        r = mover => panic!("-> {to:?} did not stop at {stop_at:?}: {r:?}"),
        () = hung.notified() => {}
    }
}

/// Replication slots, publications and subscriptions of this test's databases: none once no
/// move runs (a forgotten slot keeps WAL forever).
async fn replication_left(cfg: &tokio_postgres::Config) -> i64 {
    let (c, _) = support::storage(cfg, &Placement::Shared).await;
    let ours = format!("{}%", cfg.get_dbname().unwrap());
    c.query_one(
        "SELECT (SELECT count(*) FROM pg_replication_slots WHERE database LIKE $1)
              + (SELECT count(*) FROM pg_subscription s JOIN pg_database d ON d.oid = s.subdbid
                 WHERE d.datname LIKE $1)
              + (SELECT count(*) FROM pg_publication)",
        &[&ours],
    )
    .await
    .unwrap()
    .get(0)
}

/// Whether the test server can replicate logically (`.ci/run` sets it so).
async fn wal_level_is_logical(cfg: &tokio_postgres::Config) -> bool {
    let (c, _) = support::storage(cfg, &Placement::Shared).await;
    let level: String = c.query_one("SHOW wal_level", &[]).await.unwrap().get(0);
    level == "logical"
}

#[tokio::test]
async fn every_pair_of_placements_moves_with_its_rows_and_leaves_nothing_behind() {
    let (cfg, tenancy) = setup().await;
    let catalog = tenancy.catalog();
    let logical = wal_level_is_logical(&cfg).await;
    // Neighbours in every placement, which no move may touch.
    let mut neighbours = Vec::new();
    for (i, isolation) in ALL.into_iter().enumerate() {
        let n = create(&tenancy, &format!("neighbour-{i}"), isolation).await;
        fill(&cfg, &n, 2, 7).await;
        neighbours.push((n.clone(), rows(&cfg, &n, &n.placement).await));
    }
    for (i, from) in ALL.into_iter().enumerate() {
        for (j, to) in ALL.into_iter().enumerate() {
            if i == j {
                continue;
            }
            let slug = format!("mover-{i}-{j}");
            let tenant = create(&tenancy, &slug, from).await;
            fill(&cfg, &tenant, 10, 200).await;
            let before = rows(&cfg, &tenant, &tenant.placement).await;
            assert_eq!(before.len(), 210);
            // Reads that resolved the old placement just before the flip finish within the grace.
            let report = relocate_after(&tenancy, &slug, to, Duration::from_millis(500))
                .await
                .unwrap();
            assert_eq!(report.rows, 210, "{from:?} -> {to:?}");
            // Logical replication carries the moves between databases whose tables are named
            // alike; the rest copy, and say why.
            if (from, to) == (Isolation::Shared, Isolation::Database)
                || (from, to) == (Isolation::Database, Isolation::Shared)
            {
                if logical {
                    assert_eq!(
                        report.method,
                        moves::REPLICATION,
                        "{from:?} -> {to:?}: {:?}",
                        report.why_copied
                    );
                } else {
                    assert!(report.why_copied.as_ref().unwrap().contains("wal_level"));
                }
            } else {
                assert_eq!(report.method, moves::COPY, "{from:?} -> {to:?}");
                assert!(report.why_copied.is_some());
            }
            let moved = current(&tenancy, &tenant.slug).await;
            assert_eq!(moved.isolation, to);
            assert_eq!(moved.id, tenant.id, "a move keeps the tenant's id");
            assert_eq!(
                rows(&cfg, &moved, &moved.placement).await,
                before,
                "{from:?} -> {to:?}"
            );
            if from == Isolation::Shared {
                assert!(
                    rows(&cfg, &tenant, &tenant.placement).await.is_empty(),
                    "{from:?} -> {to:?}: nothing left in the shared tables"
                );
            } else {
                assert!(
                    !storage_exists(&cfg, &tenant.placement).await,
                    "{from:?} -> {to:?}: the old storage is dropped"
                );
            }
            // The tenant is served from its new placement on the runtime role.
            let ctx = ctx(&tenancy, &tenant.slug).await;
            let n: i64 = ctx
                .db()
                .run_opt("SELECT count(*) FROM notes WHERE tenant_id = $1", &[])
                .await
                .unwrap()
                .unwrap()
                .get(0);
            assert_eq!(n, 200);
        }
    }
    for (n, before) in neighbours {
        assert_eq!(
            rows(&cfg, &n, &n.placement).await,
            before,
            "{} untouched",
            n.slug
        );
    }
    // And back: a tenant that left a placement can come back to it.
    relocate(&tenancy, "mover-0-1", Isolation::Shared)
        .await
        .unwrap();
    let back = current(&tenancy, &Slug::parse("mover-0-1").unwrap()).await;
    assert_eq!(rows(&cfg, &back, &back.placement).await.len(), 210);
    let ctx = ctx(&tenancy, &back.slug).await;
    support::write(
        &ctx,
        "INSERT INTO notes (tenant_id, id, user_id, body) VALUES ($1, 9999, 1, 'back')",
    )
    .await
    .unwrap();
    assert!(matches!(
        relocate(&tenancy, "mover-0-1", Isolation::Shared).await,
        Err(MoveError::AlreadyThere)
    ));
    assert_eq!(
        replication_left(&cfg).await,
        0,
        "no replication left behind"
    );
    // Every invariant holds in every new placement.
    let findings = tenantry::db::doctor::check(catalog.database())
        .await
        .unwrap();
    assert!(findings.is_empty(), "{findings:#?}");
}

/// Writes keep coming while the tenant moves: each either succeeds (in the placement the
/// tenant was in when it ran, and then it is in the new placement after the move) or is
/// refused as moved and retried, so none is lost or written twice; reads never fail.
#[tokio::test]
async fn writes_during_a_move_wait_or_are_refused_and_none_is_lost() {
    let (cfg, tenancy) = setup().await;
    for (i, (from, to)) in [
        (Isolation::Shared, Isolation::Database),
        (Isolation::Database, Isolation::Schema),
        (Isolation::Schema, Isolation::Shared),
    ]
    .into_iter()
    .enumerate()
    {
        let slug = format!("busy-{i}");
        let tenant = create(&tenancy, &slug, from).await;
        fill(&cfg, &tenant, 5, 2_000).await;
        let stop = Arc::new(AtomicBool::new(false));
        let writer = {
            let (tenancy, stop, slug) = (tenancy.clone(), stop.clone(), tenant.slug.clone());
            tokio::spawn(async move {
                // Each transaction inserts a note, changes one and deletes one, so the move's
                // catch-up meets new, changed and vanished rows.
                let (mut written, mut refused) = (Vec::new(), 0);
                let mut changed = std::collections::BTreeMap::new();
                let mut deleted = std::collections::BTreeSet::new();
                let mut next = 100_000;
                while !stop.load(Ordering::Relaxed) {
                    // A fresh context per write, as each request resolves its own.
                    let ctx = ctx(&tenancy, &slug).await;
                    let (change, delete) = (1 + next % 1_000, 1_001 + next % 1_000);
                    let body = format!("v{next}");
                    let mut tx = ctx.db().begin().await.unwrap();
                    let r = async {
                        tx.execute(
                            "INSERT INTO notes (tenant_id, id, user_id, body)
                             VALUES ($1, $2, 1, 'during')",
                            &[&next],
                        )
                        .await?;
                        tx.execute(
                            "UPDATE notes SET body = $3 WHERE tenant_id = $1 AND id = $2",
                            &[&change, &body],
                        )
                        .await?;
                        tx.execute(
                            "DELETE FROM notes WHERE tenant_id = $1 AND id = $2",
                            &[&delete],
                        )
                        .await
                    }
                    .await;
                    match r {
                        Ok(_) => match tx.commit().await {
                            Ok(()) => {
                                written.push(next);
                                changed.insert(change, body);
                                deleted.insert(delete);
                                next += 1;
                            }
                            Err(e) => panic!("commit failed: {e}"),
                        },
                        Err(DbError::TenantMoved) => refused += 1,
                        Err(e) => panic!("write failed: {e}"),
                    }
                }
                (written, changed, deleted, refused)
            })
        };
        let reader = {
            let (tenancy, stop, slug) = (tenancy.clone(), stop.clone(), tenant.slug.clone());
            tokio::spawn(async move {
                let mut reads = 0;
                while !stop.load(Ordering::Relaxed) {
                    let ctx = ctx(&tenancy, &slug).await;
                    let n: i64 = ctx
                        .db()
                        .run_opt("SELECT count(*) FROM notes WHERE tenant_id = $1", &[])
                        .await
                        .expect("reads never fail")
                        .unwrap()
                        .get(0);
                    assert!(n > 0);
                    reads += 1;
                }
                reads
            })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        // Reads that resolved the old placement just before the flip finish within the grace.
        let report = relocate_after(&tenancy, &slug, to, Duration::from_millis(500))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        stop.store(true, Ordering::Relaxed);
        let (written, changed, deleted, _refused) = writer.await.unwrap();
        let reads = reader.await.unwrap();
        assert!(
            reads > 0 && written.len() > 2,
            "{from:?} -> {to:?}: the tenant was busy"
        );
        let moved = current(&tenancy, &tenant.slug).await;
        let (c, s) = support::storage(&cfg, &moved.placement).await;
        let ids: Vec<i32> = c
            .query(
                &format!(
                    "SELECT id FROM {s}.notes WHERE tenant_id = $1 AND id >= 100000 ORDER BY id"
                ),
                &[&moved.id.as_str()],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(
            ids, written,
            "{from:?} -> {to:?}: every acknowledged write, once"
        );
        for (id, body) in &changed {
            let now: Option<String> = c
                .query_opt(
                    &format!("SELECT body FROM {s}.notes WHERE tenant_id = $1 AND id = $2"),
                    &[&moved.id.as_str(), id],
                )
                .await
                .unwrap()
                .map(|r| r.get(0));
            assert_eq!(
                now.as_ref(),
                Some(body),
                "{from:?} -> {to:?}: note {id} as last changed"
            );
        }
        let gone: Vec<i32> = deleted.iter().copied().collect();
        let left: i64 = c
            .query_one(
                &format!("SELECT count(*) FROM {s}.notes WHERE tenant_id = $1 AND id = ANY($2)"),
                &[&moved.id.as_str(), &gone],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(left, 0, "{from:?} -> {to:?}: every acknowledged delete");
        assert!(report.write_hold < Duration::from_secs(5));
    }
}

/// A node that has not seen the flip yet writes to the old placement: the fence refuses it.
#[tokio::test]
async fn a_write_to_the_placement_a_tenant_left_is_refused() {
    let (_cfg, tenancy) = setup().await;
    create(&tenancy, "stale", Isolation::Shared).await;
    let slug = Slug::parse("stale").unwrap();
    let old = ctx(&tenancy, &slug).await;
    relocate(&tenancy, "stale", Isolation::Schema)
        .await
        .unwrap();
    let mut tx = old.db().begin().await.unwrap();
    let r = tx
        .execute(
            "INSERT INTO users (tenant_id, id, name) VALUES ($1, 1, 'lost?')",
            &[],
        )
        .await;
    assert!(matches!(r, Err(DbError::TenantMoved)), "{r:?}");
    drop(tx);
    // Its reads there find nothing (the rows left with it), and its new context writes.
    let new = ctx(&tenancy, &slug).await;
    support::write(
        &new,
        "INSERT INTO users (tenant_id, id, name) VALUES ($1, 1, 'here')",
    )
    .await
    .unwrap();
}

/// A move cancelled at its last chance, the flip, leaves the tenant where it was, whole, and
/// removes the storage it made.
#[tokio::test]
async fn a_move_cancelled_before_the_flip_changes_nothing() {
    let (cfg, tenancy) = setup().await;
    let tenant = create(&tenancy, "undecided", Isolation::Shared).await;
    fill(&cfg, &tenant, 3, 40).await;
    let before = rows(&cfg, &tenant, &tenant.placement).await;
    let r = moves::relocate(
        tenancy.catalog(),
        &tenant.slug,
        &MoveTarget {
            isolation: Isolation::Schema,
            server: None,
        },
        Duration::ZERO,
        |_, _| {},
        |phase| std::future::ready(phase != moves::Phase::Flipping),
    )
    .await;
    assert!(matches!(r, Err(MoveError::Cancelled)), "{r:?}");
    let still = current(&tenancy, &tenant.slug).await;
    assert_eq!(still.placement, tenant.placement);
    assert_eq!(rows(&cfg, &still, &still.placement).await, before);
    let target = Placement::Schema {
        schema: "t_undecided".into(),
    };
    assert!(
        !storage_exists(&cfg, &target).await,
        "the target schema is removed"
    );
    // Its writes were never fenced out: it writes where it is.
    let ctx = ctx(&tenancy, &tenant.slug).await;
    support::write(
        &ctx,
        "INSERT INTO users (tenant_id, id, name) VALUES ($1, 100, 'still here')",
    )
    .await
    .unwrap();
}

/// A move that stops dead at a phase (its future dropped, its connections gone: what a killed
/// server leaves) leaves the tenant served where it was, and running it again finishes it with
/// every row once.
#[tokio::test]
async fn a_move_killed_at_any_phase_before_the_flip_is_finished_by_running_it_again() {
    let (cfg, tenancy) = setup().await;
    for (i, (from, to)) in [
        (Isolation::Shared, Isolation::Database),
        (Isolation::Database, Isolation::Schema),
        (Isolation::Schema, Isolation::Shared),
    ]
    .into_iter()
    .enumerate()
    {
        for (j, stop_at) in [moves::Phase::Copying, moves::Phase::Flipping]
            .into_iter()
            .enumerate()
        {
            let slug = format!("killed-{i}-{j}");
            let tenant = create(&tenancy, &slug, from).await;
            fill(&cfg, &tenant, 4, 120).await;
            let before = rows(&cfg, &tenant, &tenant.placement).await;
            // The mover hangs where it asks at `stop_at` (at Copying: after the first table),
            // and is dropped there.
            let nth = usize::from(stop_at == moves::Phase::Copying);
            kill_move_at(&tenancy, &tenant.slug, to, stop_at, nth).await;
            if (from, to) == (Isolation::Shared, Isolation::Database)
                && wal_level_is_logical(&cfg).await
            {
                // The doctor sees the replication the dead move left (once its session is
                // gone).
                let mut found = false;
                for _ in 0..50 {
                    let findings = tenantry::db::doctor::check(tenancy.catalog().database())
                        .await
                        .unwrap();
                    found = findings
                        .iter()
                        .any(|f| f.check == "replication_left_by_move");
                    if found {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                assert!(
                    found,
                    "at {stop_at:?}: the doctor reports what the move left"
                );
            }
            // Served where it was, whole, and writable there.
            let still = current(&tenancy, &tenant.slug).await;
            assert_eq!(still.placement, tenant.placement, "{from:?} at {stop_at:?}");
            assert_eq!(rows(&cfg, &still, &still.placement).await, before);
            let ctx = ctx(&tenancy, &tenant.slug).await;
            support::write(
                &ctx,
                "INSERT INTO notes (tenant_id, id, user_id, body) VALUES ($1, 5000, 1, 'after')",
            )
            .await
            .unwrap();
            let before = rows(&cfg, &still, &still.placement).await;
            // Again, to the end.
            let report = relocate(&tenancy, &slug, to).await.unwrap();
            assert_eq!(report.rows, 125);
            let moved = current(&tenancy, &tenant.slug).await;
            assert_eq!(moved.isolation, to);
            assert_eq!(
                rows(&cfg, &moved, &moved.placement).await,
                before,
                "{from:?} -> {to:?}"
            );
            assert_eq!(
                replication_left(&cfg).await,
                0,
                "{from:?} -> {to:?} at {stop_at:?}: what the killed move left is gone"
            );
        }
    }
}

/// Two moves of one tenant at once: one flips, the other is refused as busy and changes
/// nothing (no target storage made); the rows are whole where the winner put them.
#[tokio::test]
async fn of_two_moves_at_once_one_wins_and_the_other_changes_nothing() {
    let (cfg, tenancy) = setup().await;
    let tenant = create(&tenancy, "contested", Isolation::Shared).await;
    fill(&cfg, &tenant, 5, 500).await;
    let before = rows(&cfg, &tenant, &tenant.placement).await;
    let (a, b) = tokio::join!(
        relocate(&tenancy, "contested", Isolation::Schema),
        relocate(&tenancy, "contested", Isolation::Database),
    );
    assert!(a.is_ok() != b.is_ok(), "exactly one wins: {a:?} {b:?}");
    assert!(
        matches!(a, Err(MoveError::Busy(_))) || matches!(b, Err(MoveError::Busy(_))),
        "{a:?} {b:?}"
    );
    let now = current(&tenancy, &tenant.slug).await;
    let (winner, loser) = if a.is_ok() {
        (Isolation::Schema, Isolation::Database)
    } else {
        (Isolation::Database, Isolation::Schema)
    };
    assert_eq!(now.isolation, winner);
    assert_eq!(rows(&cfg, &now, &now.placement).await, before);
    let lost = match loser {
        Isolation::Schema => Placement::Schema {
            schema: "t_contested".into(),
        },
        _ => Placement::Database {
            server: "default".into(),
            database: format!("{}_t_contested", cfg.get_dbname().unwrap()),
        },
    };
    assert!(
        !storage_exists(&cfg, &lost).await,
        "the loser's target is removed"
    );
}

/// A move from a database tenant that dies between the source's marker and the catalog (two
/// databases, two commits) leaves the tenant in its old placement with its writes refused
/// there; running the move again completes the flip with every row, and the tenant writes in
/// its new placement.
#[tokio::test]
async fn a_move_killed_between_the_sources_marker_and_the_catalog_is_completed_by_running_it_again()
{
    let (cfg, tenancy) = setup().await;
    for (i, to) in [Isolation::Shared, Isolation::Schema]
        .into_iter()
        .enumerate()
    {
        let slug = format!("half-flipped-{i}");
        let tenant = create(&tenancy, &slug, Isolation::Database).await;
        fill(&cfg, &tenant, 3, 60).await;
        // The state that crash leaves: the fence installed and the tenant marked moved out of
        // its database, the catalog unchanged (a move stopped at the flip installs the fence).
        kill_move_at(&tenancy, &tenant.slug, to, moves::Phase::Flipping, 0).await;
        let (c, s) = support::storage(&cfg, &tenant.placement).await;
        c.execute(
            "INSERT INTO tenantry.moved_out (tenant_id, schema_name) VALUES ($1, $2)",
            &[&tenant.id.as_str(), &s.trim_matches('"')],
        )
        .await
        .unwrap();
        let before = rows(&cfg, &tenant, &tenant.placement).await;
        let still = current(&tenancy, &tenant.slug).await;
        assert_eq!(
            still.placement, tenant.placement,
            "served from one placement"
        );
        let stuck = ctx(&tenancy, &tenant.slug).await;
        let r = support::write(
            &stuck,
            "INSERT INTO users (tenant_id, id, name) VALUES ($1, 77, 'refused')",
        )
        .await;
        assert!(matches!(r, Err(DbError::TenantMoved)), "{to:?}: {r:?}");

        let report = relocate(&tenancy, &slug, to).await.unwrap();
        assert_eq!(report.rows, 63, "{to:?}");
        let moved = current(&tenancy, &tenant.slug).await;
        assert_eq!(moved.isolation, to);
        assert_eq!(rows(&cfg, &moved, &moved.placement).await, before, "{to:?}");
        assert!(!storage_exists(&cfg, &tenant.placement).await, "{to:?}");
        support::write(
            &ctx(&tenancy, &tenant.slug).await,
            "INSERT INTO users (tenant_id, id, name) VALUES ($1, 77, 'written')",
        )
        .await
        .unwrap();
    }
}
