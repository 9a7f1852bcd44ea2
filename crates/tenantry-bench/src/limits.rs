//! Issue #5's figures: the cost of one limiter decision (in process and in Redis), and a quiet
//! tenant's latency alone versus while a noisy tenant floods slow queries at 20x its limit.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tenantry::ratelimit::RedisLimiter;
use tenantry::ratelimit::{Quota, RateLimiter};
use tenantry::{Plan, Plans, TenantId};
use tenantry_server::app::Application;
use tenantry_server::config::Settings;
use tokio_postgres::NoTls;
use uuid::Uuid;

use crate::report::Table;
use crate::stats::{ms, Samples};

fn quota() -> Quota {
    Quota {
        name: "bench".into(),
        requests: 1_000_000,
        window: Duration::from_secs(1),
        burst: 1_000_000,
    }
}

/// Decisions per second and cost per decision, local and Redis.
pub async fn limiter(local_n: usize, redis_n: usize, redis_url: &str) -> Table {
    let tenants: Vec<TenantId> = (0..1000)
        .map(|i| TenantId::parse(&format!("t{i}")).unwrap())
        .collect();
    let q = quota();
    let mut t = Table::new(
        "Limiter decision cost",
        &[
            "backend",
            "clients",
            "decisions",
            "per decision",
            "decisions/s",
        ],
    );
    // Local, one thread.
    let l = RateLimiter::new();
    let start = Instant::now();
    for i in 0..local_n {
        std::hint::black_box(l.check(&tenants[i % tenants.len()], &q));
    }
    let el = start.elapsed();
    t.row(vec![
        "in-process".into(),
        "1".into(),
        local_n.to_string(),
        format!("{:.0} ns", el.as_nanos() as f64 / local_n as f64),
        format!("{:.0}", local_n as f64 / el.as_secs_f64()),
    ]);
    // Local, two threads (the machine's cores).
    let l = Arc::new(RateLimiter::new());
    let tenants = Arc::new(tenants);
    let start = Instant::now();
    let hs: Vec<_> = (0..2)
        .map(|w| {
            let (l, tenants, q) = (l.clone(), tenants.clone(), q.clone());
            std::thread::spawn(move || {
                for i in 0..local_n / 2 {
                    std::hint::black_box(l.check(&tenants[(i * 7 + w) % tenants.len()], &q));
                }
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
    let el = start.elapsed();
    t.row(vec![
        "in-process".into(),
        "2".into(),
        local_n.to_string(),
        format!("{:.0} ns", el.as_nanos() as f64 / local_n as f64),
        format!("{:.0}", local_n as f64 / el.as_secs_f64()),
    ]);
    // Redis, sequential and 32 concurrent clients.
    let ns = format!("bench{}", &Uuid::new_v4().simple().to_string()[..8]);
    let r = RedisLimiter::new(redis_url, &ns).expect("REDIS_URL");
    for clients in [1usize, 32] {
        let start = Instant::now();
        let per = redis_n / clients;
        let hs: Vec<_> = (0..clients)
            .map(|w| {
                let (r, tenants, q) = (r.clone(), tenants.clone(), q.clone());
                tokio::spawn(async move {
                    for i in 0..per {
                        r.check(&tenants[(i * 31 + w) % tenants.len()], &q)
                            .await
                            .expect("Redis answers");
                    }
                })
            })
            .collect();
        for h in hs {
            h.await.unwrap();
        }
        let el = start.elapsed();
        let n = per * clients;
        t.row(vec![
            "redis".into(),
            clients.to_string(),
            n.to_string(),
            format!("{:.1} µs", el.as_secs_f64() * 1e6 / n as f64),
            format!("{:.0}", n as f64 / el.as_secs_f64()),
        ]);
    }
    t
}

/// Tenant B's GET-by-id latency at a steady modest rate, alone and while tenant A floods
/// PATCHes that block on a locked row (slow queries) at 20x its rate limit.
pub async fn noisy_neighbour(phase: Duration, b_rate: u32) -> Table {
    let name = crate::create_database().await;
    let url = format!("{}/{name}", crate::base_url());
    let admin = "bench-admin-token-0123456789";
    let a_limit_per_s: u32 = 10;
    let mut plans = Plans::default();
    plans.0.insert(
        "noisy".into(),
        Plan {
            requests: a_limit_per_s * 60,
            window: Duration::from_secs(60),
            burst: Some(a_limit_per_s),
            max_concurrent: 4,
            statement_timeout: Duration::from_millis(1000),
            connection_share: 0.25,
            ..Plan::per_hour(1)
        },
    );
    let args = crate::http::serve_args(&url, &name, admin, None);
    let mut settings = Settings::load(&args).expect("settings");
    settings.plans = plans;
    let app = Application::build(settings).await.expect("server");
    let addr = format!("http://127.0.0.1:{}", app.port());
    tokio::spawn(app.run_until(std::future::pending()));
    let http = reqwest::Client::new();
    let post = |path: &str, body: serde_json::Value, auth: &str| {
        http.post(format!("{addr}{path}"))
            .bearer_auth(auth)
            .json(&body)
            .send()
    };
    let mut keys = Vec::new();
    for (slug, plan) in [("noisy", "noisy"), ("quiet", "pro")] {
        post(
            "/admin/v1/tenants",
            serde_json::json!({"slug": slug, "name": slug, "plan": plan}),
            admin,
        )
        .await
        .unwrap();
        let k: serde_json::Value = post(
            &format!("/admin/v1/tenants/{slug}/api-keys"),
            serde_json::json!({"name": "k"}),
            admin,
        )
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
        keys.push(k["key"].as_str().unwrap().to_owned());
    }
    let mut orders = Vec::new();
    for key in &keys {
        let u: serde_json::Value = post(
            "/v1/users",
            serde_json::json!({"email": "a@b.io", "name": "a"}),
            key,
        )
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
        let o: serde_json::Value = post(
            "/v1/orders",
            serde_json::json!({"user_id": u["id"], "amount_cents": 1, "currency": "EUR"}),
            key,
        )
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
        orders.push(o["id"].as_str().unwrap().to_owned());
    }
    let (noisy_key, quiet_key) = (keys[0].clone(), keys[1].clone());
    let measure = |http: reqwest::Client| {
        let (addr, key, order) = (addr.clone(), quiet_key.clone(), orders[1].clone());
        async move {
            let mut s = Samples::default();
            let gap = Duration::from_secs_f64(1.0 / b_rate as f64);
            let end = Instant::now() + phase;
            while Instant::now() < end {
                let start = Instant::now();
                let r = http
                    .get(format!("{addr}/v1/orders/{order}"))
                    .bearer_auth(&key)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200);
                s.push(start.elapsed());
                tokio::time::sleep(gap.saturating_sub(start.elapsed())).await;
            }
            s
        }
    };
    let alone = measure(http.clone()).await;
    // Lock the noisy tenant's order so its PATCHes are slow queries.
    let (locker, conn) = tokio_postgres::connect(&url, NoTls).await.unwrap();
    tokio::spawn(conn);
    locker
        .batch_execute(&format!(
            "BEGIN; SELECT 1 FROM shared.orders WHERE tenant_id = (SELECT id FROM tenantry.tenants WHERE slug = 'noisy') AND id = '{}' FOR UPDATE",
            orders[0]
        ))
        .await
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let flood_rate = a_limit_per_s * 20;
    let mut flooders = Vec::new();
    for _ in 0..8 {
        let (http, addr, key, order, stop) = (
            http.clone(),
            addr.clone(),
            noisy_key.clone(),
            orders[0].clone(),
            stop.clone(),
        );
        flooders.push(tokio::spawn(async move {
            let gap = Duration::from_secs_f64(8.0 / flood_rate as f64);
            while !stop.load(Ordering::Relaxed) {
                let http = http.clone();
                let url = format!("{addr}/v1/orders/{order}");
                let key = key.clone();
                tokio::spawn(async move {
                    let _ = http
                        .patch(url)
                        .bearer_auth(key)
                        .json(&serde_json::json!({"status": "paid"}))
                        .send()
                        .await;
                });
                tokio::time::sleep(gap).await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let during = measure(http.clone()).await;
    stop.store(true, Ordering::Relaxed);
    for f in flooders {
        let _ = f.await;
    }
    let _ = locker.batch_execute("ROLLBACK").await;
    let mut t = Table::new(
        &format!(
            "Noisy neighbour: quiet tenant at {b_rate} req/s, noisy tenant flooding slow queries at {flood_rate} req/s (20x its {a_limit_per_s} req/s limit)"
        ),
        &["quiet tenant", "requests", "p50 ms", "p99 ms", "p99 vs alone"],
    );
    for (label, s) in [("alone", &alone), ("during the flood", &during)] {
        t.row(vec![
            label.into(),
            s.len().to_string(),
            ms(s.p50()),
            ms(s.p99()),
            format!(
                "{:.2}x",
                s.p99().as_secs_f64() / alone.p99().as_secs_f64().max(1e-9)
            ),
        ]);
    }
    crate::drop_database(&name).await;
    t
}
