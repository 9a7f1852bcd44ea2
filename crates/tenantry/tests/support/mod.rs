//! What the library's integration tests share: a fresh database per test.

#![allow(dead_code)] // Each test binary uses its own part of this module.

use tenantry::audit::Actor;
use tenantry::catalog::NewTenant;
use tenantry::db::{Database, PoolSettings, RoleNames, TenantMigration};
use tenantry::{Catalog, Isolation, Placement, Slug, Tenant, TenantContext};
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

/// Who the tests act as.
pub fn actor() -> Actor {
    Actor {
        name: "test".into(),
        request_id: "t".into(),
    }
}

/// Users and their notes (a child table), for tests that copy a tenant's rows around.
pub const USERS_AND_NOTES: TenantMigration = TenantMigration {
    version: 1,
    name: "users_and_notes",
    sql: "CREATE TABLE users (
              tenant_id text NOT NULL CHECK (tenant_id <> ''),
              id int NOT NULL,
              name text NOT NULL,
              PRIMARY KEY (tenant_id, id));
          CREATE TABLE notes (
              tenant_id text NOT NULL CHECK (tenant_id <> ''),
              id int NOT NULL,
              user_id int NOT NULL,
              body text,
              PRIMARY KEY (tenant_id, id),
              FOREIGN KEY (tenant_id, user_id) REFERENCES users (tenant_id, id))",
};

/// A superuser connection to the database that holds `placement`'s tables (of the deployment
/// at `cfg`), and their schema, quoted.
pub async fn storage(
    cfg: &tokio_postgres::Config,
    placement: &Placement,
) -> (tokio_postgres::Client, String) {
    let mut cfg = cfg.clone();
    let schema = match placement {
        Placement::Shared => "shared".to_owned(),
        Placement::Schema { schema } => schema.clone(),
        Placement::Database { database, .. } => {
            cfg.dbname(database);
            "shared".to_owned()
        }
    };
    let (client, conn) = cfg.connect(NoTls).await.unwrap();
    tokio::spawn(conn);
    (client, format!("\"{schema}\""))
}

/// Runs one write statement in `ctx` and commits it.
pub async fn write(ctx: &TenantContext, sql: &'static str) -> Result<(), tenantry::db::DbError> {
    let mut tx = ctx.db().begin().await?;
    tx.execute(sql, &[]).await?;
    tx.commit().await
}

/// Creates tenant `slug` (plan `free`) in `isolation`.
pub async fn create(catalog: &Catalog, slug: &str, isolation: Isolation) -> Tenant {
    let new = NewTenant {
        slug: Slug::parse(slug).unwrap(),
        name: slug.into(),
        plan: "free".into(),
        isolation,
        server: None,
    };
    tenantry::lifecycle::create(catalog, &new, &actor())
        .await
        .unwrap()
}
