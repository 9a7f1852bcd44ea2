//! Benchmark scenarios. Each prints a table and writes `bench-results/<scenario>.md` with the
//! machine, the commit and the settings, so a figure can always be traced to how it was made.
//!
//! Figures that compare configurations are measured in the same run, interleaved, because this
//! machine is shared and noisy: a ratio from one run means more than two absolute numbers.

pub mod chaos;
pub mod forged;
pub mod http;
pub mod jobs;
pub mod limits;
pub mod mobility;
pub mod placements;
pub mod report;
pub mod stats;
pub mod wire;
pub mod workloads;

/// PostgreSQL to run against (a superuser; each scenario creates its own database).
pub fn base_url() -> String {
    std::env::var("BENCH_DATABASE_URL")
        .or_else(|_| std::env::var("TEST_DATABASE_URL"))
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

/// A superuser connection to the `postgres` database, for creating and dropping scenarios'.
async fn admin() -> tokio_postgres::Client {
    let (c, conn) =
        tokio_postgres::connect(&format!("{}/postgres", base_url()), tokio_postgres::NoTls)
            .await
            .expect("PostgreSQL reachable (BENCH_DATABASE_URL)");
    tokio::spawn(conn);
    c
}

/// A fresh database for one scenario, `tb_<12 hex digits>`. The name also prefixes the tenant
/// databases and roles that the scenario's server creates, so [`drop_database`] finds them.
pub async fn create_database() -> String {
    let name = format!("tb_{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    admin()
        .await
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap();
    name
}

/// Drops what a scenario created: its database, the databases and roles named after it.
pub async fn drop_database(name: &str) {
    let c = admin().await;
    // Databases first: a role that owns objects in one cannot be dropped.
    for (list, drop) in [
        (
            "SELECT datname::text FROM pg_database
             WHERE datname = $1 OR starts_with(datname, $1 || '_')",
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
        ),
        (
            "SELECT rolname::text FROM pg_roles WHERE starts_with(rolname, $1 || '_')",
            "DROP ROLE IF EXISTS {}",
        ),
    ] {
        for row in c.query(list, &[&name]).await.unwrap() {
            let object = tenantry::db::quote_ident(row.get(0));
            // Best effort: a leftover is reported, and `.ci/run` sweeps `tb_*` before tests.
            if let Err(e) = c.batch_execute(&drop.replace("{}", &object)).await {
                eprintln!("could not drop {object}: {e}");
            }
        }
    }
}
