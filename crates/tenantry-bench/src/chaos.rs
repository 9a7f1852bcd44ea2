//! `tenantry-bench chaos`: a small deployment under mixed load while its dependencies fail on a
//! schedule, and what the clients saw: failures inside and outside each fault's window, the
//! time from a fault's end to the first success on each node, acknowledged writes that were
//! lost, rows returned to the wrong tenant.
//!
//! The deployment is its own: a PostgreSQL cluster of its own (the managed local PostgreSQL,
//! on a unix socket, so restarting it disturbs nothing else on the machine), a Redis server of
//! its own, and two server nodes sharing both, each on a runtime of its own, so that killing a
//! node drops everything it was doing at once, as SIGKILL does to a process. Tenants are spread
//! over the three placements. Each client writes (creates orders, keeping every id that was
//! acknowledged), reads its own orders back, and probes another tenant's orders with its own
//! key, which must be 404. A client whose node does not answer at all moves to the other node,
//! as a load balancer would.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tenantry_server::app::Application;
use tenantry_server::config::Settings;
use tenantry_server::local_pg::LocalPostgres;

use crate::http::{serve_args, ADMIN};
use crate::report::Table;

/// How long after a fault's end failures still count as the fault's (the recovery goal).
const RECOVERY_GRACE: Duration = Duration::from_secs(2);

/// The rig's settings.
#[derive(Debug, Clone)]
pub struct Options {
    pub tenants: usize,
    pub clients: usize,
    /// How long a dependency stays down, where the fault has a duration.
    pub outage: Duration,
    /// Load before and after each fault.
    pub settle: Duration,
}

/// One server node: a runtime of its own running the server.
struct Node {
    port: u16,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Node {
    fn start(settings: Settings) -> Self {
        let port = settings.listen.port();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a node runtime");
        runtime.spawn(async move {
            let app = Application::build(settings).await.expect("a node starts");
            let _ = app.run_until(std::future::pending()).await;
        });
        Self {
            port,
            runtime: Some(runtime),
        }
    }

    fn addr(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Drops everything the node was doing at once: its connections, its requests, its pools.
    fn kill(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What a client saw of one request.
#[derive(Debug, Clone)]
struct Outcome {
    /// When the answer came, since the run began.
    at: Duration,
    node: usize,
    /// 0: no answer (connection refused, reset or timed out).
    status: u16,
    retry_after: bool,
}

struct Tenant {
    key: String,
    user: String,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn start_redis(dir: &std::path::Path, port: u16) -> Child {
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
        ])
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server on PATH");
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

async fn wait_healthy(http: &reqwest::Client, addr: &str) {
    for _ in 0..600 {
        if let Ok(r) = http.get(format!("{addr}/healthz")).send().await {
            if r.status().is_success() {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("node {addr} did not come up");
}

/// The rig's run: one table per fault, and a summary.
pub async fn chaos(opts: Options) -> Vec<Table> {
    let dir: PathBuf = std::env::temp_dir().join(format!("tenantry-chaos-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("rig directory");
    let pg = Arc::new({
        let dir = dir.clone();
        tokio::task::spawn_blocking(move || {
            LocalPostgres::start(&dir).expect("the rig's PostgreSQL")
        })
        .await
        .unwrap()
    });
    let mut admin_cfg = pg.config();
    let (admin, conn) = admin_cfg.connect(tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    admin.batch_execute("CREATE DATABASE chaos").await.unwrap();
    drop(admin);
    admin_cfg.dbname("chaos");
    let socket = match &admin_cfg.get_hosts()[0] {
        tokio_postgres::config::Host::Unix(p) => p.to_string_lossy().replace('/', "%2F"),
        tokio_postgres::config::Host::Tcp(h) => h.clone(),
    };
    let db_url = format!(
        "postgresql://postgres@{socket}:{}/chaos",
        admin_cfg.get_ports()[0]
    );
    let redis_port = free_port();
    let redis = Arc::new(Mutex::new(start_redis(&dir, redis_port)));
    let settings = |port: u16| {
        let mut args = serve_args(&db_url, "chaos", ADMIN, Some("on"));
        args.listen = Some(format!("127.0.0.1:{port}").parse().unwrap());
        args.redis_url = Some(format!("redis://127.0.0.1:{redis_port}"));
        args.worker_concurrency = Some(1);
        let mut settings = Settings::load(&args).expect("settings");
        // Two nodes' pools must fit the cluster's max_connections (100): each node's runtime
        // (16) and control (4) pools, its tenant-database budget, and its listener and worker.
        settings.tenant_db_budget = (24, 4);
        // A plan whose rate limits never refuse the rig's load (429s are not what it measures).
        let mut plan = tenantry::Plan::per_hour(1_000_000_000);
        plan.max_concurrent = 1024;
        settings.plans.0.insert("chaos".into(), plan);
        settings
    };
    let ports = [free_port(), free_port()];
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    // The first node makes the catalog; the second joins it.
    let mut first = Node::start(settings(ports[0]));
    wait_healthy(&http, &first.addr()).await;
    let second = Node::start(settings(ports[1]));
    wait_healthy(&http, &second.addr()).await;
    let addrs: Vec<String> = vec![first.addr(), second.addr()];

    // Tenants over the three placements, each with a key and a user.
    let mut tenants = Vec::new();
    for i in 0..opts.tenants {
        let slug = format!("chaos-{i}");
        let isolation = ["shared", "schema", "database"][i % 3];
        let admin_call = |method: reqwest::Method, path: String, body: Value| {
            http.request(method, format!("{}{path}", addrs[0]))
                .bearer_auth(ADMIN)
                .json(&body)
                .send()
        };
        let r = admin_call(
            reqwest::Method::POST,
            "/admin/v1/tenants".into(),
            json!({"slug": slug, "name": slug, "plan": "chaos", "isolation": isolation}),
        )
        .await
        .unwrap();
        assert_eq!(r.status(), 201, "{}", r.text().await.unwrap_or_default());
        let key: Value = admin_call(
            reqwest::Method::POST,
            format!("/admin/v1/tenants/{slug}/api-keys"),
            json!({"name": "chaos"}),
        )
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
        let key = key["key"].as_str().expect("a key").to_owned();
        let user: Value = http
            .post(format!("{}/v1/users", addrs[0]))
            .bearer_auth(&key)
            .json(&json!({"email": format!("u@{slug}.test"), "name": "u"}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        tenants.push(Tenant {
            key,
            user: user["id"].as_str().expect("a user").to_owned(),
        });
    }
    let tenants = Arc::new(tenants);

    // The load.
    let begun = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let outcomes: Arc<Mutex<Vec<Outcome>>> = Arc::default();
    // Acknowledged orders: (tenant index, order id).
    let acked: Arc<Mutex<Vec<(usize, String)>>> = Arc::default();
    let wrong_tenant = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut clients = Vec::new();
    for c in 0..opts.clients {
        let (http, addrs, tenants, stop, outcomes, acked, wrong) = (
            http.clone(),
            addrs.clone(),
            tenants.clone(),
            stop.clone(),
            outcomes.clone(),
            acked.clone(),
            wrong_tenant.clone(),
        );
        clients.push(tokio::spawn(async move {
            let mut n = c;
            let mut node = c % 2;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let t = n % tenants.len();
                let tenant = &tenants[t];
                let (own, other) = {
                    let acked = acked.lock().unwrap();
                    let own = acked
                        .iter()
                        .rev()
                        .find(|(i, _)| *i == t)
                        .map(|x| x.1.clone());
                    let other = acked
                        .iter()
                        .rev()
                        .find(|(i, _)| *i != t)
                        .map(|x| x.1.clone());
                    (own, other)
                };
                // Half creates; the rest reads of its own, and probes of another tenant's.
                let kind = n % 10;
                let (method, path, body, probe) = match (own, other) {
                    (Some(id), _) if (5..9).contains(&kind) => (
                        reqwest::Method::GET,
                        format!("/v1/orders/{id}"),
                        None,
                        false,
                    ),
                    (Some(_), Some(id)) if kind == 9 => {
                        (reqwest::Method::GET, format!("/v1/orders/{id}"), None, true)
                    }
                    _ => (
                        reqwest::Method::POST,
                        "/v1/orders".to_owned(),
                        Some(json!({"user_id": tenant.user, "amount_cents": n, "currency": "EUR"})),
                        false,
                    ),
                };
                let mut answer = None;
                // No answer at all: the other node, once (as a load balancer would).
                for attempt in 0..2 {
                    let mut req = http
                        .request(method.clone(), format!("{}{path}", addrs[node]))
                        .bearer_auth(&tenant.key);
                    if let Some(b) = &body {
                        req = req.json(b);
                    }
                    match req.send().await {
                        Ok(r) => {
                            answer = Some(r);
                            break;
                        }
                        Err(_) if attempt == 0 => node = 1 - node,
                        Err(_) => {}
                    }
                }
                let at = begun.elapsed();
                let Some(r) = answer else {
                    outcomes.lock().unwrap().push(Outcome {
                        at,
                        node,
                        status: 0,
                        retry_after: false,
                    });
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                };
                let status = r.status().as_u16();
                let retry_after = r.headers().contains_key("retry-after");
                let value: Value = r.json().await.unwrap_or(Value::Null);
                // Another tenant's order must be 404; one's own must be the order asked for.
                let asked = path.rsplit('/').next().unwrap_or_default();
                if status == 200
                    && method == reqwest::Method::GET
                    && (probe || value["id"].as_str() != Some(asked))
                {
                    wrong.fetch_add(1, Ordering::Relaxed);
                }
                if method == reqwest::Method::POST && status == 201 {
                    if let Some(id) = value["id"].as_str() {
                        acked.lock().unwrap().push((t, id.to_owned()));
                    }
                }
                let ok = matches!(status, 200 | 201) || (probe && status == 404);
                outcomes.lock().unwrap().push(Outcome {
                    at,
                    node,
                    status: if ok { 200 } else { status },
                    retry_after,
                });
                if !ok {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                node = 1 - node;
            }
        }));
    }

    // What must answer without the database: `/healthz`, and a refusal of a malformed key
    // (401, or 429 once the address has failed too often), on each node, every 100 ms (the
    // refusal once a second: the per-address budget of failures refills at one a second).
    let dbless: Arc<Mutex<Vec<Outcome>>> = Arc::default();
    let prober = {
        let (http, addrs, stop, dbless) =
            (http.clone(), addrs.clone(), stop.clone(), dbless.clone());
        tokio::spawn(async move {
            let mut round = 0u64;
            while !stop.load(Ordering::Relaxed) {
                round += 1;
                for (node, addr) in addrs.iter().enumerate() {
                    let mut probes = vec![http.get(format!("{addr}/healthz"))];
                    if round % 10 == 0 {
                        probes.push(
                            http.get(format!("{addr}/v1/orders"))
                                .bearer_auth("tk_malformed"),
                        );
                    }
                    for probe in probes {
                        let status = probe
                            .timeout(Duration::from_secs(2))
                            .send()
                            .await
                            .map_or(0, |r| r.status().as_u16());
                        let ok = matches!(status, 200 | 401 | 429);
                        dbless.lock().unwrap().push(Outcome {
                            at: begun.elapsed(),
                            node,
                            status: if ok { 200 } else { status },
                            retry_after: false,
                        });
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };

    // The faults, one after another, each with load before and after.
    let mut windows: Vec<(String, Duration, Duration)> = Vec::new();
    let faults = [
        "PostgreSQL restarted (fast)",
        "PostgreSQL restarted (immediate)",
        "every backend killed",
        "Redis killed",
        "node a killed",
    ];
    for fault in faults {
        tokio::time::sleep(opts.settle).await;
        let start = begun.elapsed();
        match fault {
            "PostgreSQL restarted (fast)" | "PostgreSQL restarted (immediate)" => {
                let mode = if fault.contains("fast") {
                    "fast"
                } else {
                    "immediate"
                };
                let pg = pg.clone();
                tokio::task::spawn_blocking(move || pg.restart(mode).expect("restart"))
                    .await
                    .unwrap();
            }
            "every backend killed" => {
                let (c, conn) = admin_cfg.connect(tokio_postgres::NoTls).await.unwrap();
                tokio::spawn(conn);
                c.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                     WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()",
                    &[],
                )
                .await
                .unwrap();
            }
            "Redis killed" => {
                // Process calls block: off the runtime that runs the load and the probes.
                let r = redis.clone();
                tokio::task::spawn_blocking(move || {
                    let mut child = r.lock().unwrap();
                    let _ = child.kill();
                    let _ = child.wait();
                })
                .await
                .unwrap();
                tokio::time::sleep(opts.outage).await;
                let (r, dir) = (redis.clone(), dir.clone());
                tokio::task::spawn_blocking(move || {
                    *r.lock().unwrap() = start_redis(&dir, redis_port);
                })
                .await
                .unwrap();
            }
            _ => {
                first.kill();
                tokio::time::sleep(opts.outage).await;
                first = Node::start(settings(ports[0]));
                wait_healthy(&http, &first.addr()).await;
            }
        }
        windows.push((fault.to_owned(), start, begun.elapsed()));
    }
    tokio::time::sleep(opts.settle).await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        let _ = c.await;
    }
    let _ = prober.await;

    // Every acknowledged write, read back on both nodes.
    let acked = acked.lock().unwrap().clone();
    // (missing: answered 404, unverified: no 200 or 404 after retries, with the last status).
    let (lost, unverified): (usize, BTreeMap<u16, usize>) = {
        use futures_util::StreamExt;
        let tenants: &[Tenant] = &tenants;
        let reads: Vec<(String, &str)> = acked
            .iter()
            .flat_map(|(t, id)| {
                addrs
                    .iter()
                    .map(move |addr| (format!("{addr}/v1/orders/{id}"), tenants[*t].key.as_str()))
            })
            .collect();
        let answers: Vec<Option<u16>> = futures_util::stream::iter(reads)
            .map(|(url, key)| {
                let http = &http;
                async move {
                    let mut last = 0;
                    for attempt in 0..10u64 {
                        match http.get(&url).bearer_auth(key).send().await {
                            Ok(r) if r.status() == 200 => return None,
                            Ok(r) if r.status() == 404 => return Some(404),
                            Ok(r) => {
                                last = r.status().as_u16();
                                if attempt == 9 {
                                    eprintln!(
                                        "unverified {url}: {last} {}",
                                        r.text().await.unwrap_or_default()
                                    );
                                }
                            }
                            Err(_) => last = 0,
                        }
                        tokio::time::sleep(Duration::from_millis(100 * (attempt + 1))).await;
                    }
                    Some(last)
                }
            })
            .buffer_unordered(8)
            .collect()
            .await;
        let mut unverified = BTreeMap::new();
        let mut lost = 0;
        for answer in answers.into_iter().flatten() {
            if answer == 404 {
                lost += 1;
            } else {
                *unverified.entry(answer).or_insert(0) += 1;
            }
        }
        (lost, unverified)
    };

    let outcomes = outcomes.lock().unwrap().clone();
    let in_window = |o: &Outcome| {
        windows
            .iter()
            .position(|(_, s, e)| o.at >= *s && o.at <= *e + RECOVERY_GRACE)
    };
    let mut per_fault = Table::new(
        "Faults under load: failures inside each fault's window, and recovery",
        &[
            "fault",
            "window s",
            "requests in it",
            "failed: 503 with Retry-After",
            "failed otherwise",
            "recovery ms (node a / node b)",
            "/healthz and 401 failed",
        ],
    );
    let dbless = dbless.lock().unwrap().clone();
    for (i, (fault, s, e)) in windows.iter().enumerate() {
        let inside: Vec<&Outcome> = outcomes
            .iter()
            .filter(|o| in_window(o) == Some(i))
            .collect();
        let polite = inside
            .iter()
            .filter(|o| o.status == 503 && o.retry_after)
            .count();
        let mut other = BTreeMap::new();
        for o in inside
            .iter()
            .filter(|o| o.status != 200 && !(o.status == 503 && o.retry_after))
        {
            *other.entry(o.status).or_insert(0) += 1;
        }
        let recovery: Vec<String> = (0..2)
            .map(|node| {
                outcomes
                    .iter()
                    .filter(|o| o.node == node && o.at >= *e && o.status == 200)
                    .map(|o| o.at - *e)
                    .min()
                    .map_or("none".into(), |d| format!("{:.0}", d.as_secs_f64() * 1e3))
            })
            .collect();
        per_fault.row(vec![
            fault.clone(),
            format!("{:.1}", (*e - *s).as_secs_f64()),
            inside.len().to_string(),
            polite.to_string(),
            counts(&other),
            recovery.join(" / "),
            {
                // The killed node answers nothing while it is down: only the other counts.
                let killed = fault.starts_with("node a").then_some(0);
                let mut failed = BTreeMap::new();
                for o in dbless
                    .iter()
                    .filter(|o| o.at >= *s && o.at <= *e + RECOVERY_GRACE)
                    .filter(|o| Some(o.node) != killed && o.status != 200)
                {
                    *failed.entry(o.status).or_insert(0) += 1;
                }
                counts(&failed)
            },
        ]);
    }
    per_fault.notes.push(format!(
        "{} tenants over shared, schema and database placements; {} clients over two nodes \
         sharing PostgreSQL and Redis; half creates, the rest reads of the tenant's own orders \
         and probes of another tenant's. A fault's window runs from its start to {} s after \
         its end (the dependency back, or the node up again); recovery is from its end to the \
         first success on each node. A client whose node does not answer moves to the other.",
        opts.tenants,
        opts.clients,
        RECOVERY_GRACE.as_secs()
    ));
    let outside_failed: Vec<&Outcome> = outcomes
        .iter()
        .filter(|o| o.status != 200 && in_window(o).is_none())
        .collect();
    let mut summary = Table::new(
        "What the clients lost",
        &[
            "requests",
            "failed outside the windows",
            "acknowledged writes",
            "lost (reads on both nodes)",
            "reads that never answered 200 or 404",
            "rows returned to the wrong tenant",
        ],
    );
    summary.row(vec![
        outcomes.len().to_string(),
        outside_failed.len().to_string(),
        acked.len().to_string(),
        lost.to_string(),
        counts(&unverified),
        wrong_tenant.load(Ordering::Relaxed).to_string(),
    ]);

    drop(second);
    first.kill();
    {
        let mut child = redis.lock().unwrap();
        let _ = child.kill();
        let _ = child.wait();
    }
    let pg2 = pg.clone();
    let _ = tokio::task::spawn_blocking(move || pg2.stop()).await;
    let _ = std::fs::remove_dir_all(&dir);
    vec![per_fault, summary]
}

/// Counts by status, `0` when there are none (status 0: no answer).
fn counts(by_status: &BTreeMap<u16, usize>) -> String {
    if by_status.is_empty() {
        return "0".into();
    }
    by_status
        .iter()
        .map(|(s, n)| match s {
            0 => format!("{n}x no answer"),
            s => format!("{n}x {s}"),
        })
        .collect::<Vec<_>>()
        .join(", ")
}
