//! What the library's integration tests share: a fresh database per test.

#![allow(dead_code)] // Each test binary uses its own part of this module.

use tenantry::db::{Database, PoolSettings, RoleNames};
use tokio_postgres::NoTls;

/// The library bootstrapped on a fresh database (no tenant tables), with default pools.
pub async fn fresh_library() -> Database {
    let (url, name) = fresh_database().await;
    Database::connect(
        url.parse().unwrap(),
        None,
        &RoleNames::from_prefix(&name).unwrap(),
        &[],
        &PoolSettings::default(),
    )
    .await
    .unwrap()
}

/// A fresh database on `TEST_DATABASE_URL` (default: the local superuser) whose name, `tl_…`,
/// also serves as the test's unique role prefix. Returns (its URL, its name).
pub async fn fresh_database() -> (String, String) {
    let base = std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into());
    let name = format!("tl_{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let (client, conn) = tokio_postgres::connect(&format!("{base}/postgres"), NoTls)
        .await
        .expect("PostgreSQL at TEST_DATABASE_URL (default 127.0.0.1:5432)");
    tokio::spawn(conn);
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap();
    (format!("{base}/{name}"), name)
}
