//! The rest of issue #7's matrix over HTTP: list 50, create and a read/write mix in every
//! placement against the hand-written baseline doing the same SQL, and how read latency moves
//! with the number of tenants (shared 10 / 1,000 / 10,000, schema 10 / 1,000, database 10 /
//! 200 over a connection budget of 40). Runs alternate within each round.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use reqwest::Method;
use serde_json::json;

use crate::http::{
    alternate, row, start_baseline, Server, Target, ADMIN, CPU_BENCH, CPU_PG, LOAD_COLUMNS,
};
use crate::report::Table;

/// One seeded tenant.
#[derive(Debug, Clone)]
pub struct Seeded {
    pub slug: String,
    /// The tenant's immutable id: what its rows are keyed by.
    pub id: String,
    pub key: String,
    pub user: String,
    pub orders: Vec<String>,
}

/// Creates `n` tenants named `<prefix><i>` on the `bench` plan, `parallel` at a time, each with
/// a key, a user and `orders` orders.
pub async fn seed(
    server: &Server,
    prefix: &str,
    n: usize,
    isolation: &str,
    orders: usize,
    parallel: usize,
) -> Vec<Seeded> {
    let mut out: Vec<Seeded> = futures_util::stream::iter(0..n)
        .map(|i| seed_one(server, format!("{prefix}{i}"), isolation, orders))
        .buffer_unordered(parallel)
        .collect()
        .await;
    out.sort_by(|a, b| a.slug.cmp(&b.slug));
    server.settle().await;
    out
}

/// One tenant on the `bench` plan with a key, a user and `orders` orders.
pub async fn seed_one(server: &Server, slug: String, isolation: &str, orders: usize) -> Seeded {
    let id = server
        .post(
            "/admin/v1/tenants",
            ADMIN,
            json!({"slug": slug, "name": slug, "plan": "bench", "isolation": isolation}),
        )
        .await["id"]
        .as_str()
        .expect("a tenant id")
        .to_owned();
    let key = server
        .post(
            &format!("/admin/v1/tenants/{slug}/api-keys"),
            ADMIN,
            json!({"name": "k"}),
        )
        .await["key"]
        .as_str()
        .expect("a key")
        .to_owned();
    let user = server
        .post("/v1/users", &key, json!({"email": "b@b.io", "name": "b"}))
        .await["id"]
        .as_str()
        .expect("a user")
        .to_owned();
    let mut ids = Vec::with_capacity(orders);
    for a in 0..orders {
        let o = server
            .post(
                "/v1/orders",
                &key,
                json!({"user_id": user, "amount_cents": a, "currency": "EUR"}),
            )
            .await;
        ids.push(o["id"].as_str().expect("an order").to_owned());
    }
    Seeded {
        slug,
        id,
        key,
        user,
        orders: ids,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Read,
    List,
    Create,
    /// 80% reads by id, 10% lists, 10% creates.
    Mixed,
}

impl Op {
    fn label(self) -> &'static str {
        match self {
            Op::Read => "read one order by id",
            Op::List => "list 50 orders",
            Op::Create => "create an order",
            Op::Mixed => "mixed: 80% read, 10% list, 10% create",
        }
    }
}

fn auth(key: &str) -> Vec<(String, String)> {
    vec![("authorization".to_owned(), format!("Bearer {key}"))]
}

fn create_body(t: &Seeded) -> Option<String> {
    Some(json!({"user_id": t.user, "amount_cents": 1234, "currency": "EUR"}).to_string())
}

/// Where an operation's requests go: the URL of an order, of the list, and the headers that
/// name the tenant (a key for Tenantry, `X-Tenant-Id` for the baseline).
struct Side<'a> {
    order: &'a dyn Fn(&str) -> String,
    list: String,
    create: String,
    headers: Vec<(String, String)>,
}

fn side_targets(op: Op, t: &Seeded, side: Side<'_>, v: &mut Vec<Target>) {
    let target = |method, url: String, body| Target {
        method,
        url,
        headers: side.headers.clone(),
        body,
    };
    let reads = |n| {
        t.orders
            .iter()
            .take(n)
            .map(|id| target(Method::GET, (side.order)(id), None))
    };
    let list = || target(Method::GET, side.list.clone(), None);
    let create = || target(Method::POST, side.create.clone(), create_body(t));
    match op {
        Op::Read => v.extend(reads(4)),
        Op::List => v.push(list()),
        Op::Create => v.push(create()),
        Op::Mixed => {
            v.extend(reads(8));
            v.push(list());
            v.push(create());
        }
    }
}

/// Tenantry targets for an operation over some tenants.
pub fn targets(addr: &str, op: Op, tenants: &[Seeded]) -> Arc<Vec<Target>> {
    let mut v = Vec::new();
    let order = |id: &str| format!("{addr}/v1/orders/{id}");
    for t in tenants {
        let side = Side {
            order: &order,
            list: format!("{addr}/v1/orders?limit=50"),
            create: format!("{addr}/v1/orders"),
            headers: auth(&t.key),
        };
        side_targets(op, t, side, &mut v);
    }
    Arc::new(v)
}

/// The baseline's targets for the same operation over the same (shared) tenants.
pub fn baseline_targets(base: &str, op: Op, tenants: &[Seeded]) -> Arc<Vec<Target>> {
    let mut v = Vec::new();
    let order = |id: &str| format!("{base}/orders/{id}");
    for t in tenants {
        let side = Side {
            order: &order,
            list: format!("{base}/orders"),
            create: format!("{base}/orders"),
            // The baseline keys rows by what the header says: the tenant's id, as the library
            // does (the schema floor also needs the slug, for the schema's name).
            headers: vec![
                ("x-tenant-id".to_owned(), t.id.clone()),
                ("x-tenant-slug".to_owned(), t.slug.clone()),
            ],
        };
        side_targets(op, t, side, &mut v);
    }
    Arc::new(v)
}

/// List, create and mixed in every placement (read by id is the `http` scenario's table),
/// each against the baseline doing the same operation, alternating.
pub async fn operations(
    tenants: usize,
    duration: Duration,
    rounds: usize,
    clients: usize,
) -> Table {
    let server = Server::start(false).await;
    let (base, _baseline) = start_baseline(&server.db_url, 16).await;
    let mut by_placement = Vec::new();
    for placement in ["shared", "schema", "database"] {
        let seeded = seed(&server, &placement[..2], tenants, placement, 55, 4).await;
        by_placement.push((placement, seeded));
    }
    let shared = &by_placement[0].1;
    let mut t = Table::new(
        &format!("Operations by placement vs the hand-written baseline ({tenants} tenants per placement, {clients} clients)"),
        &LOAD_COLUMNS,
    );
    for op in [Op::List, Op::Create, Op::Mixed] {
        // The create runs add tens of thousands of rows: fresh statistics (which also make
        // both sides re-plan their cached statements) keep a plan chosen for the small tables
        // from deciding the next comparison.
        server.settle().await;
        let base_targets = baseline_targets(&base, op, shared);
        let sides: Vec<(&str, Arc<Vec<Target>>)> = by_placement
            .iter()
            .filter(|(p, _)| op != Op::Mixed || *p == "shared")
            .map(|(p, s)| (*p, targets(&server.addr, op, s)))
            .collect();
        let all: Vec<Arc<Vec<Target>>> = std::iter::once(base_targets)
            .chain(sides.iter().map(|(_, s)| s.clone()))
            .collect();
        let mut runs = alternate(&all, clients, duration / 3, duration, rounds).await;
        let b = runs.remove(0);
        row(&mut t, &format!("{}: baseline", op.label()), &b, &b);
        for (k, (p, _)) in sides.iter().enumerate() {
            row(
                &mut t,
                &format!("{}: tenantry, {p}", op.label()),
                &runs[k],
                &b,
            );
            let bad: usize = runs[k]
                .statuses
                .iter()
                .filter(|(s, _)| **s >= 300)
                .map(|(_, n)| n)
                .sum();
            assert_eq!(bad, 0, "{} {p}: {:?}", op.label(), runs[k].statuses);
        }
    }
    server.remove().await;
    t
}

/// The tenant counts per placement for [`tenant_scale`], each (small, large...).
pub struct TenantCounts {
    pub shared: Vec<usize>,
    pub schema: Vec<usize>,
    pub database: Vec<usize>,
}

/// Read-by-id latency as the number of tenants grows, each row against the small fleet of the
/// same placement in the same rounds; database tenants run over a 40-connection budget.
pub async fn tenant_scale(
    counts: &TenantCounts,
    duration: Duration,
    warmup: Duration,
    rounds: usize,
    clients: usize,
    lanes: usize,
) -> Table {
    let tuning = crate::http::Tuning {
        lanes,
        ..Default::default()
    };
    let server = Server::start_tuned(false, &tuning).await;
    let mut t = Table::new(
        &format!("Read one order by id as the tenant count grows (requests spread evenly over the tenants, {clients} clients)"),
        &[
            "placement, tenants",
            "req/s",
            "p50 ms",
            "p99 ms",
            "p99.9 ms",
            "req/s vs fewest",
            "p99 vs fewest",
            CPU_BENCH,
            CPU_PG,
        ],
    );
    for (placement, counts) in [
        ("shared", &counts.shared),
        ("schema", &counts.schema),
        ("database", &counts.database),
    ] {
        let Some(&most) = counts.iter().max() else {
            continue;
        };
        let started = std::time::Instant::now();
        let seeded = seed(
            &server,
            &format!("s{}", &placement[..2]),
            most,
            placement,
            1,
            8,
        )
        .await;
        eprintln!(
            "seeded {most} {placement} tenants in {:.1?}",
            started.elapsed()
        );
        let sets: Vec<(usize, Arc<Vec<Target>>)> = counts
            .iter()
            .map(|&n| (n, targets(&server.addr, Op::Read, &seeded[..n])))
            .collect();
        let all: Vec<Arc<Vec<Target>>> = sets.iter().map(|(_, s)| s.clone()).collect();
        let runs = alternate(&all, clients, warmup, duration, rounds).await;
        for (k, (n, _)) in sets.iter().enumerate() {
            row(&mut t, &format!("{placement}, {n}"), &runs[k], &runs[0]);
        }
    }
    server.remove().await;
    t
}
