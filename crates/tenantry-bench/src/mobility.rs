//! `tenantry-bench move`: a large tenant moved between placements while it and other tenants
//! are under load, and the same tenant's backup and restore.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio_postgres::NoTls;

use crate::http::{load, Run, Server, Tuning};
use crate::report::Table;
use crate::stats::ms;
use crate::workloads::{seed, seed_one, targets, Op, Seeded};

const ADMIN: &str = crate::http::ADMIN;

/// A superuser connection to where tenant `slug`'s tables are, and their schema.
async fn storage_of(server: &Server, slug: &str) -> (tokio_postgres::Client, String) {
    let (c, conn) = tokio_postgres::connect(&server.db_url, NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let row = c
        .query_one(
            "SELECT t.isolation, t.storage, s.url FROM tenantry.tenants t
             LEFT JOIN tenantry.db_servers s ON s.name = t.server
             WHERE t.slug = $1",
            &[&slug],
        )
        .await
        .unwrap();
    let (isolation, storage, url): (String, Option<String>, Option<String>) =
        (row.get(0), row.get(1), row.get(2));
    match isolation.as_str() {
        "shared" => (c, "shared".into()),
        "schema" => (c, format!("\"{}\"", storage.unwrap())),
        _ => {
            let mut cfg: tokio_postgres::Config = match url {
                Some(url) => url.parse().unwrap(),
                None => crate::base_url().parse().unwrap(),
            };
            cfg.dbname(storage.unwrap());
            let (t, conn) = cfg.connect(NoTls).await.unwrap();
            tokio::spawn(conn);
            (t, "shared".into())
        }
    }
}

/// The tenant's rows in `table`.
async fn count(server: &Server, slug: &str, id: &str, table: &str) -> i64 {
    let (c, s) = storage_of(server, slug).await;
    c.query_one(
        &format!("SELECT count(*) FROM {s}.{table} WHERE tenant_id = $1"),
        &[&id],
    )
    .await
    .unwrap()
    .get(0)
}

/// Requests answered other than 200 or 201, and their statuses.
fn failed(run: &Run) -> String {
    let bad: Vec<(u16, usize)> = run
        .statuses
        .iter()
        .filter(|(s, _)| !matches!(**s, 200 | 201))
        .map(|(s, n)| (*s, *n))
        .collect();
    let total: usize = bad.iter().map(|(_, n)| n).sum();
    if bad.is_empty() {
        return "0".into();
    }
    let each: Vec<String> = bad.iter().map(|(s, n)| format!("{n}x {s}")).collect();
    format!("{total} ({})", each.join(", "))
}

/// Starts a move over HTTP and polls it until it has flipped (or failed): (seconds to the
/// flip, the finished operation).
async fn move_tenant(server: &Server, slug: &str, body: Value) -> (f64, Value) {
    let op = server
        .post(&format!("/admin/v1/tenants/{slug}/move"), ADMIN, body)
        .await;
    let id = op["id"].as_str().expect("an operation").to_owned();
    let start = Instant::now();
    let http = reqwest::Client::new();
    let mut flipped = None;
    loop {
        let op: Value = http
            .get(format!("{}/admin/v1/operations/{id}", server.addr))
            .bearer_auth(ADMIN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if flipped.is_none() && (op["phase"] == "cleaning" || op["phase"] == "done") {
            flipped = Some(start.elapsed().as_secs_f64());
        }
        if op["state"] == "succeeded" || op["state"] == "failed" {
            return (flipped.unwrap_or(start.elapsed().as_secs_f64()), op);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The scenario. `users` and `orders`: the size of the moved tenant; `clients`: connections
/// on it and, as many again, on four other tenants (80% reads, 10% lists, 10% creates each).
pub async fn moves(users: usize, orders: usize, clients: usize) -> Vec<Table> {
    let server = Server::start_tuned(
        false,
        &Tuning {
            move_grace: Some(Duration::from_secs(1)),
            ..Tuning::default()
        },
    )
    .await;
    // A second PostgreSQL server for the move between servers: a cluster of its own, on a
    // unix socket.
    let second_dir =
        std::env::temp_dir().join(format!("tenantry-bench-second-{}", std::process::id()));
    let second = tenantry_server::local_pg::LocalPostgres::start(&second_dir)
        .expect("a second PostgreSQL cluster");
    let second_cfg = second.config();
    let second_url = match &second_cfg.get_hosts()[0] {
        tokio_postgres::config::Host::Unix(path) => format!(
            "postgresql://postgres@{}:{}/postgres",
            path.to_string_lossy().replace('/', "%2F"),
            second_cfg.get_ports()[0]
        ),
        tokio_postgres::config::Host::Tcp(host) => format!(
            "postgresql://postgres@{host}:{}/postgres",
            second_cfg.get_ports()[0]
        ),
    };
    server
        .post(
            "/admin/v1/servers",
            ADMIN,
            json!({"name": "second", "url": second_url}),
        )
        .await;
    let mut big = seed_one(&server, "big".into(), "shared", 10).await;
    {
        let (c, s) = storage_of(&server, "big").await;
        c.execute(
            &format!(
                "INSERT INTO {s}.users (tenant_id, id, email, name, role)
                 SELECT $1, gen_random_uuid(), 'u' || g || '@example.com', 'user ' || g, 'member'
                 FROM generate_series(1, $2::int) g"
            ),
            &[&big.id, &(users as i32)],
        )
        .await
        .unwrap();
        c.execute(
            &format!(
                "INSERT INTO {s}.orders (tenant_id, id, user_id, amount_cents, currency, status)
                 SELECT $1, gen_random_uuid(), $2::text::uuid, g, 'EUR', 'paid'
                 FROM generate_series(1, $3::int) g"
            ),
            &[&big.id, &big.user, &(orders as i32)],
        )
        .await
        .unwrap();
        big.orders = c
            .query(
                &format!("SELECT id::text FROM {s}.orders WHERE tenant_id = $1 LIMIT 2000"),
                &[&big.id],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
    }
    let others: Vec<Seeded> = seed(&server, "other", 4, "shared", 50, 4).await;
    let big_load = targets(&server.addr, Op::Mixed, std::slice::from_ref(&big));
    let others_load = targets(&server.addr, Op::Mixed, &others);
    let half = (clients / 2).max(1);
    load(big_load.clone(), half, Duration::from_secs(1)).await;
    // The baseline: the same traffic on the tenant and on the others, without a move.
    let (_, before) = tokio::join!(
        load(big_load.clone(), half, Duration::from_secs(8)),
        load(others_load.clone(), half, Duration::from_secs(8))
    );

    let mut t = Table::new(
        &format!(
            "Moving a tenant of {orders} orders and {users} users while it and four others are \
             under load"
        ),
        &[
            "move",
            "to the flip s",
            "rows",
            "rows/s",
            "writes held ms",
            "failed requests (tenant / others)",
            "orders lost or doubled",
            "others' p99 before -> during",
        ],
    );
    let mut methods = Vec::new();
    for (label, to) in [
        ("shared -> database", json!({"isolation": "database"})),
        (
            "database -> database (second server)",
            json!({"isolation": "database", "server": "second"}),
        ),
        ("database -> schema", json!({"isolation": "schema"})),
    ] {
        let orders_before = count(&server, "big", &big.id, "orders").await;
        let window = Duration::from_secs(4 + (orders / 15_000) as u64);
        let on_big = tokio::spawn(load(big_load.clone(), half, window));
        let on_others = tokio::spawn(load(others_load.clone(), half, window));
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (flip, op) = move_tenant(&server, "big", to).await;
        let (on_big, on_others) = (on_big.await.unwrap(), on_others.await.unwrap());
        let detail = op["detail"].as_str().unwrap_or_default().to_owned();
        if op["state"] != "succeeded" {
            t.row(vec![label.into(), format!("failed: {detail}")]);
            continue;
        }
        let rows: f64 = detail
            .split(": ")
            .nth(1)
            .and_then(|r| r.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0.0);
        let held = detail
            .rsplit("writes held ")
            .next()
            .unwrap_or_default()
            .trim_end_matches(" ms")
            .to_owned();
        let method = detail
            .split(" by ")
            .nth(1)
            .and_then(|m| m.split(", writes held").next())
            .unwrap_or_default()
            .to_owned();
        methods.push(format!("{label}: {method}"));
        let created = *on_big.statuses.get(&201).unwrap_or(&0) as i64;
        let orders_after = count(&server, "big", &big.id, "orders").await;
        t.row(vec![
            label.into(),
            format!("{flip:.2}"),
            format!("{rows:.0}"),
            format!("{:.0}", rows / flip.max(1e-9)),
            held,
            format!("{} / {}", failed(&on_big), failed(&on_others)),
            format!("{}", orders_after - orders_before - created),
            format!(
                "{} -> {} ({:.2}x)",
                ms(before.latencies.p99()),
                ms(on_others.latencies.p99()),
                on_others.latencies.p99().as_secs_f64()
                    / before.latencies.p99().as_secs_f64().max(1e-9)
            ),
        ]);
    }
    t.notes.push(format!(
        "How each move went: {}. Logical replication copies while the tenant is served and \
         holds its writes twice, briefly: to take one snapshot of each side for the \
         verification, and at the flip until the last changes have arrived. Copy and catch-up \
         (within one database, or to or from a schema) holds writes while every row's key and \
         hash are compared on both sides. Reads go on. Loads: {half} connections on the moved \
         tenant and {half} on four others, 80% reads by id, 10% lists, 10% creates, for a \
         window around the move; the others' p99 before is of the same traffic without a \
         move. \"Orders lost or doubled\" is the tenant's order count \
         after, minus before, minus its 201s (0: none). A write that waits for the fence longer \
         than its plan's statement timeout is answered 503.",
        methods.join("; ")
    ));

    // Backup and restore of the same tenant, through the library.
    let catalog = server.catalog();
    let slug = tenantry::Slug::parse("big").unwrap();
    let path = std::env::temp_dir().join(format!("tenantry-bench-{}.tenant", std::process::id()));
    let started = Instant::now();
    let manifest = tenantry::db::archive::backup(
        &catalog,
        &slug,
        std::io::BufWriter::new(std::fs::File::create(&path).unwrap()),
    )
    .await
    .unwrap();
    let backup_s = started.elapsed().as_secs_f64();
    let bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0) as f64;
    let rows: u64 = manifest.tables.iter().map(|t| t.rows).sum();
    let started = Instant::now();
    let new = tenantry::catalog::NewTenant {
        slug: tenantry::Slug::parse("big-copy").unwrap(),
        name: "big copy".into(),
        plan: "bench".into(),
        isolation: tenantry::Isolation::Shared,
        server: None,
    };
    let actor = tenantry::audit::Actor {
        name: "bench".into(),
        request_id: "bench".into(),
    };
    tenantry::db::archive::restore(&catalog, &path, &new, &actor)
        .await
        .unwrap();
    let restore_s = started.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(&path);
    let mut b = Table::new(
        &format!("Backup and restore of the same tenant ({rows} rows)"),
        &[
            "operation",
            "seconds",
            "archive MB",
            "MB/s of archive",
            "rows/s",
        ],
    );
    for (label, secs) in [
        ("backup (schema tenant)", backup_s),
        ("restore into shared", restore_s),
    ] {
        b.row(vec![
            label.into(),
            format!("{secs:.2}"),
            format!("{:.1}", bytes / 1e6),
            format!("{:.1}", bytes / 1e6 / secs.max(1e-9)),
            format!("{:.0}", rows as f64 / secs.max(1e-9)),
        ]);
    }
    b.notes.push(
        "The archive is gzip (fast level) of COPY text; a restore reads it twice (checked \
         whole first) and loads through a scratch schema."
            .into(),
    );
    server.remove().await;
    second.stop();
    let _ = std::fs::remove_dir_all(&second_dir);
    vec![t, b]
}
