//! What the workspace's integration tests share, in one dev-only place: a fresh PostgreSQL
//! database per test, on `TEST_DATABASE_URL` (default: the local superuser, trust auth).
//!
//! A test's database is named `<kind>_<12 hex digits>`, and the name doubles as the test's role
//! prefix, so the roles and tenant databases it makes are named after it too. `.ci/run` drops
//! whatever a killed run left behind by that pattern (`t[tlb]_…`): library tests use `tl`,
//! server tests `tt`.

use tokio_postgres::NoTls;

/// The PostgreSQL server the tests use (a superuser connection, without a database).
pub fn base_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

/// Creates a fresh database `<kind>_<random>`; returns (its URL, its name).
pub async fn fresh_database(kind: &str) -> (String, String) {
    let name = format!(
        "{kind}_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    let (client, conn) = tokio_postgres::connect(&format!("{}/postgres", base_url()), NoTls)
        .await
        .expect("PostgreSQL reachable at TEST_DATABASE_URL (default 127.0.0.1:5432)");
    tokio::spawn(conn);
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .expect("a fresh test database");
    (format!("{}/{name}", base_url()), name)
}
