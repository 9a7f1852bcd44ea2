//! `cargo run --release -p tenantry-bench -- <scenario>`: prints a table and writes
//! `bench-results/<scenario>.md`.

use clap::{Parser, Subcommand};

/// mimalloc: the request path allocates many small, short-lived objects across threads, where
/// it is measurably cheaper than glibc's allocator (see the commit that chose it).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use tenantry::db::BudgetSettings;
use tenantry::Isolation;
use tenantry_bench::{limits, placements, report};

#[derive(Parser)]
#[command(name = "tenantry-bench", about = "Tenantry benchmarks")]
struct Cli {
    /// Tiny sizes: checks that a scenario runs, not how fast.
    #[arg(long, global = true)]
    smoke: bool,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// Provisioning time per placement (median, p95).
    Provision {
        #[arg(long, default_value_t = 40)]
        n: usize,
    },
    /// Fleet migration adding a column across schema and database tenants.
    Migrate {
        #[arg(long, default_value_t = 1000)]
        schemas: usize,
        #[arg(long, default_value_t = 100)]
        databases: usize,
        #[arg(long, default_value_t = 4)]
        parallel: usize,
    },
    /// Scoped-read p50/p99 at few vs many tenants: 10 vs 1,000 schema tenants and 10 vs 200
    /// database tenants over a 40-connection budget.
    ScopedRead {
        #[arg(long, default_value_t = 8000)]
        reads: usize,
    },
    /// All of the placement benchmarks above.
    Placements,
    /// The database path alone (no HTTP): a bare prepared query vs the scoped transaction.
    DbPath {
        #[arg(long, default_value_t = 20)]
        tenants: usize,
        #[arg(long, default_value_t = 3)]
        seconds: u64,
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
    },
    /// Limiter decision cost, in process and in Redis (REDIS_URL, default 127.0.0.1:6379).
    Limiter,
    /// The headline: read one order by id through the full stack vs a hand-written baseline,
    /// in every placement, plus rate-limited requests; writes a table and an SVG chart.
    Http {
        /// Tenants per placement.
        #[arg(long, default_value_t = 20)]
        tenants: usize,
        /// Seconds per run (runs alternate baseline / tenantry).
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        #[arg(long, default_value_t = 16)]
        clients: usize,
        /// Placements to run (comma-separated), e.g. `shared` to profile one path.
        #[arg(long, default_value = "shared,schema,database", value_delimiter = ',')]
        placements: Vec<String>,
        /// Only the read-by-id table (skip the 429 and cached-read tables).
        #[arg(long)]
        reads_only: bool,
        /// Drive one side alone (`baseline`, `floor`, `database-floor`, `shared`, `schema`,
        /// `database`, `limited` (429s) or `healthz`) for --seconds and print its rate and CPU
        /// per request: for `perf record` or callgrind.
        #[arg(long)]
        profile: Option<String>,
        /// Lanes of the server's runtime pool for the read-by-id table (`runtime_lanes`).
        #[arg(long, default_value_t = 1)]
        lanes: usize,
        /// Connections to tenant databases in total for the read-by-id table
        /// (`tenant_db_budget`; the server's default, 40, when not given).
        #[arg(long)]
        tenant_db_budget: Option<usize>,
    },
    /// List 50, create and a read/write mix in every placement vs the baseline, and read
    /// latency at 10 / 1,000 / 10,000 shared, 10 / 1,000 schema and 10 / 200 database tenants.
    Workloads {
        /// Tenants per placement for the operations table.
        #[arg(long, default_value_t = 20)]
        tenants: usize,
        /// Seconds per run.
        #[arg(long, default_value_t = 4)]
        seconds: u64,
        #[arg(long, default_value_t = 2)]
        rounds: usize,
        #[arg(long, default_value_t = 16)]
        clients: usize,
        /// Skip the tenant-count table (it seeds 11,000+ tenants).
        #[arg(long)]
        operations_only: bool,
        /// Only the tenant-count table, for these placements (comma-separated).
        #[arg(long, value_delimiter = ',')]
        scale_only: Option<Vec<String>>,
        /// Seconds of warm-up load per tenant count before the tenant-count table is measured
        /// (default: half a run). A long warm-up measures the steady state; a short one
        /// includes each connection's first uses of each tenant's tables.
        #[arg(long)]
        warmup: Option<u64>,
        /// Lanes of the server's runtime pool for the tenant-count table (`runtime_lanes`).
        #[arg(long, default_value_t = 1)]
        lanes: usize,
    },
    /// Jobs per second with 1, 100 and 1,000 tenants active.
    Jobs {
        #[arg(long, default_value_t = 20_000)]
        jobs: usize,
    },
    /// A cache hit against the database read it saves.
    Cache,
    /// A legitimate tenant's reads alone and while one client floods forged API keys, and the
    /// catalog lookups the flood costs.
    ForgedKeys {
        /// Seconds per run (runs alternate alone / under the flood).
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        #[arg(long, default_value_t = 8)]
        clients: usize,
    },
    /// A large tenant moved shared -> database -> database on a second server -> schema while
    /// it and four others are under load, then its backup and restore.
    Move {
        /// Orders of the moved tenant.
        #[arg(long, default_value_t = 1_000_000)]
        orders: usize,
        /// Users of the moved tenant.
        #[arg(long, default_value_t = 100_000)]
        users: usize,
        /// Connections: half on the moved tenant, half on the others.
        #[arg(long, default_value_t = 16)]
        clients: usize,
    },
    /// A deployment of its own (PostgreSQL, Redis, two nodes) under load while PostgreSQL is
    /// restarted, backends and Redis are killed and a node dies: failures in and outside each
    /// fault's window, recovery, lost writes, rows returned to the wrong tenant.
    Chaos {
        #[arg(long, default_value_t = 100)]
        tenants: usize,
        #[arg(long, default_value_t = 16)]
        clients: usize,
        /// Seconds a dependency stays down (Redis, a node).
        #[arg(long, default_value_t = 5)]
        outage: u64,
        /// Seconds of load before and after each fault.
        #[arg(long, default_value_t = 10)]
        settle: u64,
    },
    /// A quiet tenant's latency alone and while a noisy tenant floods slow queries.
    NoisyNeighbour {
        /// Seconds per phase.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
}

#[tokio::main]
async fn main() {
    // Logs of the servers a scenario runs, when asked for (`RUST_LOG=warn`, say).
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let cli = Cli::parse();
    let smoke = cli.smoke;
    let scale = |full: usize, tiny: usize| if smoke { tiny } else { full };
    match cli.scenario {
        Scenario::Provision { n } => {
            let t = placements::provision(scale(n, 2)).await;
            report::publish("provision", &format!("n={n} smoke={smoke}"), &[t]);
        }
        Scenario::Migrate {
            schemas,
            databases,
            parallel,
        } => {
            let t = placements::migrate(scale(schemas, 3), scale(databases, 2), parallel).await;
            report::publish(
                "migrate",
                &format!(
                    "schemas={schemas} databases={databases} parallel={parallel} smoke={smoke}"
                ),
                &[t],
            );
        }
        Scenario::ScopedRead { reads } => {
            let tables = scoped(scale(reads, 200), smoke).await;
            report::publish(
                "scoped-read",
                &format!("reads={reads} smoke={smoke}"),
                &tables,
            );
        }
        Scenario::Workloads {
            tenants,
            seconds,
            rounds,
            clients,
            operations_only,
            scale_only,
            warmup,
            lanes,
        } => {
            let d = std::time::Duration::from_millis(if smoke { 200 } else { seconds * 1000 });
            let warmup = match warmup {
                Some(w) if !smoke => std::time::Duration::from_secs(w),
                _ => d / 2,
            };
            let rounds = if smoke { 1 } else { rounds };
            let mut tables = Vec::new();
            if scale_only.is_none() {
                tables.push(
                    tenantry_bench::workloads::operations(scale(tenants, 2), d, rounds, clients)
                        .await,
                );
            }
            if !operations_only {
                let (mut shared, mut schema, mut database) = if smoke {
                    (vec![2, 4], vec![2, 3], vec![2, 3])
                } else {
                    (vec![10, 1_000, 10_000], vec![10, 1_000], vec![10, 200])
                };
                if let Some(only) = &scale_only {
                    for (name, counts) in [
                        ("shared", &mut shared),
                        ("schema", &mut schema),
                        ("database", &mut database),
                    ] {
                        if !only.iter().any(|o| o == name) {
                            counts.clear();
                        }
                    }
                }
                let counts = tenantry_bench::workloads::TenantCounts {
                    shared,
                    schema,
                    database,
                };
                tables.push(
                    tenantry_bench::workloads::tenant_scale(
                        &counts, d, warmup, rounds, clients, lanes,
                    )
                    .await,
                );
            }
            // A partial run does not overwrite the full results.
            let name = if scale_only.is_some() || operations_only {
                "workloads-partial"
            } else {
                "workloads"
            };
            report::publish(
                name,
                &format!("tenants={tenants} seconds={seconds} warmup={}s lanes={lanes} rounds={rounds} clients={clients} smoke={smoke}", warmup.as_secs_f64()),
                &tables,
            );
        }
        Scenario::DbPath {
            tenants,
            seconds,
            rounds,
            concurrency,
        } => {
            let secs = if smoke { 0.2 } else { seconds as f64 };
            let t = tenantry_bench::placements::db_path(
                scale(tenants, 2),
                secs,
                if smoke { 1 } else { rounds },
                concurrency,
            )
            .await;
            report::publish(
                "db-path",
                &format!("tenants={tenants} seconds={seconds} rounds={rounds} concurrency={concurrency} smoke={smoke}"),
                &[t],
            );
        }
        Scenario::Http {
            tenants,
            seconds,
            rounds,
            clients,
            placements,
            reads_only,
            profile,
            lanes,
            tenant_db_budget,
        } => {
            let d = std::time::Duration::from_millis(if smoke { 300 } else { seconds * 1000 });
            if let Some(side) = profile {
                let r = tenantry_bench::http::profile(&side, scale(tenants, 2), d, clients).await;
                println!(
                    "{side}: {} requests, {:.0} req/s, {:.1} µs CPU/req in this process, {:.1} µs in PostgreSQL",
                    r.requests,
                    r.rps(),
                    r.cpu_bench * 1e6 / r.requests.max(1) as f64,
                    r.cpu_pg * 1e6 / r.requests.max(1) as f64
                );
                return;
            }
            let rounds = if smoke { 1 } else { rounds };
            let reads = tenantry_bench::http::read_by_id(
                scale(tenants, 2),
                d,
                rounds,
                clients,
                &placements,
                &tenantry_bench::http::Tuning {
                    lanes,
                    tenant_db_budget,
                    move_grace: None,
                },
            )
            .await;
            if reads_only {
                print!("{}", reads.markdown());
                return;
            }
            let rejected = tenantry_bench::http::rejected(d, rounds, clients).await;
            let cached =
                tenantry_bench::http::read_by_id_cached(scale(tenants, 2), d, rounds, clients)
                    .await;
            let bars: Vec<(String, f64)> = reads
                .rows
                .iter()
                .chain(rejected.rows.iter().skip(1))
                .map(|r| {
                    (
                        r[0].clone(),
                        r[5].trim_end_matches('x').parse().unwrap_or(0.0),
                    )
                })
                .collect();
            let svg =
                tenantry_bench::http::svg("req/s relative to the hand-written baseline", &bars);
            let _ = std::fs::create_dir_all("bench-results");
            let _ = std::fs::write("bench-results/http.svg", svg);
            report::publish(
                "http",
                &format!(
                    "tenants={tenants} seconds={seconds} rounds={rounds} clients={clients} lanes={lanes} tenant_db_budget={} smoke={smoke}",
                    tenant_db_budget.map_or("default (40)".to_owned(), |b| b.to_string())
                ),
                &[reads, rejected, cached],
            );
        }
        Scenario::Jobs { jobs } => {
            let t = tenantry_bench::jobs::throughput(
                scale(jobs, 40),
                &[1, 100, 1000].map(|n| scale(n, 2)),
                8,
            )
            .await;
            report::publish("jobs", &format!("jobs={jobs} smoke={smoke}"), &[t]);
        }
        Scenario::Cache => {
            let t = tenantry_bench::jobs::cache_vs_db(scale(20_000, 50)).await;
            report::publish("cache", &format!("smoke={smoke}"), &[t]);
        }
        Scenario::Limiter => {
            let url =
                std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
            let t = limits::limiter(scale(2_000_000, 1000), scale(20_000, 64), &url).await;
            report::publish("limiter", &format!("smoke={smoke}"), &[t]);
        }
        Scenario::ForgedKeys {
            seconds,
            rounds,
            clients,
        } => {
            let (secs, rounds) = if smoke { (1, 1) } else { (seconds, rounds) };
            let t = tenantry_bench::forged::forged_keys(
                std::time::Duration::from_secs(secs),
                rounds,
                clients,
            )
            .await;
            report::publish(
                "forged-keys",
                &format!("seconds={secs} rounds={rounds} clients={clients} smoke={smoke}"),
                &[t],
            );
        }
        Scenario::Chaos {
            tenants,
            clients,
            outage,
            settle,
        } => {
            let opts = if smoke {
                tenantry_bench::chaos::Options {
                    tenants: 6,
                    clients: 4,
                    outage: std::time::Duration::from_secs(1),
                    settle: std::time::Duration::from_secs(2),
                }
            } else {
                tenantry_bench::chaos::Options {
                    tenants,
                    clients,
                    outage: std::time::Duration::from_secs(outage),
                    settle: std::time::Duration::from_secs(settle),
                }
            };
            let settings = format!(
                "tenants={} clients={} outage={:?} settle={:?} smoke={smoke}",
                opts.tenants, opts.clients, opts.outage, opts.settle
            );
            let tables = tenantry_bench::chaos::chaos(opts).await;
            report::publish("chaos", &settings, &tables);
        }
        Scenario::Move {
            orders,
            users,
            clients,
        } => {
            let (orders, users) = if smoke { (2_000, 200) } else { (orders, users) };
            let tables = tenantry_bench::mobility::moves(users, orders, clients).await;
            report::publish(
                "move",
                &format!("orders={orders} users={users} clients={clients} smoke={smoke}"),
                &tables,
            );
        }
        Scenario::NoisyNeighbour { seconds } => {
            let secs = if smoke { 1 } else { seconds };
            let t = limits::noisy_neighbour(std::time::Duration::from_secs(secs), 50).await;
            report::publish(
                "noisy-neighbour",
                &format!("seconds={secs} smoke={smoke}"),
                &[t],
            );
        }
        Scenario::Placements => {
            let mut tables = vec![
                placements::provision(scale(40, 2)).await,
                placements::migrate(scale(1000, 3), scale(100, 2), 4).await,
            ];
            tables.extend(scoped(scale(8000, 200), smoke).await);
            report::publish("placements", &format!("smoke={smoke}"), &tables);
        }
    }
}

async fn scoped(reads: usize, smoke: bool) -> Vec<report::Table> {
    let (schemas, databases) = if smoke { (4, 4) } else { (1000, 200) };
    vec![
        placements::scoped_read(
            Isolation::Schema,
            10.min(schemas),
            schemas,
            reads,
            8,
            BudgetSettings::default(),
        )
        .await,
        placements::scoped_read(
            Isolation::Database,
            10.min(databases),
            databases,
            reads,
            8,
            BudgetSettings {
                total: 40,
                per_tenant: 2,
                ..BudgetSettings::default()
            },
        )
        .await,
    ]
}
