//! What the library's integration tests share: a fresh database per test.

#![allow(dead_code)] // Each test binary uses its own part of this module.

use tenantry::db::{Database, PoolSettings, RoleNames, TenantMigration};

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

/// A fresh database whose name, `tl_…`, also serves as the test's unique role prefix
/// ([`tenantry_testing`]). Returns (its URL, its name).
pub async fn fresh_database() -> (String, String) {
    tenantry_testing::fresh_database("tl").await
}

/// The library on the database `name` at `cfg` with these tenant migrations (opening it again
/// with more of them migrates it forward).
pub async fn open(
    cfg: &tokio_postgres::Config,
    name: &str,
    migrations: &'static [TenantMigration],
) -> Database {
    Database::connect(
        cfg.clone(),
        None,
        &RoleNames::from_prefix(name).unwrap(),
        migrations,
        &PoolSettings::default(),
    )
    .await
    .unwrap()
}
