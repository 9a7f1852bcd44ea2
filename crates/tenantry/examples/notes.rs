//! A notes service: an ordinary axum app with its own table, made multi-tenant by Tenantry.
//!
//! ```sh
//! DATABASE_URL=postgres://postgres@127.0.0.1/notes cargo run -p tenantry --example notes
//! curl -H "Authorization: Bearer <key printed at start>" localhost:3000/notes \
//!      -H 'content-type: application/json' -d '{"body": "hello"}'
//! ```
//!
//! What Tenantry adds: the credential decides the tenant (hints must agree), every query runs
//! in a transaction scoped to that tenant under forced row-level security on an unprivileged
//! role, per-plan rate limits with RateLimit headers, and problem+json errors.

use axum::extract::Path;
use axum::routing::get;
use axum::Router;
use serde::{Deserialize, Serialize};
use tenantry::audit::Actor;
use tenantry::auth::Scope;
use tenantry::catalog::NewTenant;
use tenantry::db::{Database, PoolSettings, RoleNames, TenantMigration};
use tenantry::http::{FieldError, Problem};
use tenantry::Slug;
use tenantry::{Catalog, Isolation, Json, Tenancy, TenancyConfig, TenancyLayer, TenantContext};
use uuid::Uuid;

/// The app's own tables. Each has `tenant_id` first in its key; the migration runner adds the
/// forced RLS policy, in every placement.
pub static MIGRATIONS: &[TenantMigration] = &[TenantMigration {
    version: 1,
    name: "notes",
    sql: "CREATE TABLE notes (
              tenant_id text NOT NULL CHECK (tenant_id <> ''),
              id uuid NOT NULL,
              body text NOT NULL,
              PRIMARY KEY (tenant_id, id))",
}];

#[derive(Serialize)]
pub struct Note {
    id: Uuid,
    body: String,
}

fn note(r: &tokio_postgres::Row) -> Note {
    Note {
        id: r.get(0),
        body: r.get(1),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewNote {
    body: String,
}

/// Handlers take a `TenantContext`: there is no way to reach `notes` without one, and `$1` is
/// always its tenant.
async fn list(ctx: TenantContext) -> Result<Json<Vec<Note>>, Problem> {
    let rows = ctx
        .db()
        .run(
            "SELECT id, body FROM notes WHERE tenant_id = $1 ORDER BY id",
            &[],
        )
        .await?;
    Ok(Json(rows.iter().map(note).collect()))
}

async fn create(ctx: TenantContext, Json(new): Json<NewNote>) -> Result<Json<Note>, Problem> {
    if new.body.is_empty() || new.body.len() > 10_000 {
        return Err(Problem::validation(vec![FieldError::new(
            "body",
            "1 to 10000 bytes",
        )]));
    }
    let id = Uuid::now_v7();
    ctx.db()
        .run(
            "INSERT INTO notes (tenant_id, id, body) VALUES ($1, $2, $3)",
            &[&id, &new.body],
        )
        .await?;
    Ok(Json(Note { id, body: new.body }))
}

async fn one(ctx: TenantContext, Path(id): Path<Uuid>) -> Result<Json<Note>, Problem> {
    let sql = "SELECT id, body FROM notes WHERE tenant_id = $1 AND id = $2";
    let row = ctx.db().run_opt(sql, &[&id]).await?;
    Ok(Json(note(&row.ok_or_else(Problem::not_found)?)))
}

/// The app's routes behind Tenantry's layer.
pub fn app(tenancy: Tenancy) -> Router {
    Router::new()
        .route("/notes", get(list).post(create))
        .route("/notes/{id}", get(one))
        .layer(TenancyLayer::new(tenancy))
}

/// Connects (creating the roles and running the migrations) and returns the tenancy.
pub async fn connect(url: &str, role_prefix: &str) -> Result<Tenancy, Box<dyn std::error::Error>> {
    let roles = RoleNames::from_prefix(role_prefix)?;
    let db = Database::connect(
        url.parse()?,
        None,
        &roles,
        MIGRATIONS,
        &PoolSettings::default(),
    )
    .await?;
    Ok(Tenancy::new(Catalog::new(db), TenancyConfig::default()))
}

/// Creates a tenant (if needed) and a fresh API key for it; returns the key.
pub async fn tenant_with_key(
    tenancy: &Tenancy,
    slug: &str,
) -> Result<String, Box<dyn std::error::Error>> {
    let actor = Actor {
        name: "notes-example".into(),
        request_id: String::new(),
    };
    let slug = Slug::parse(slug)?;
    let new = NewTenant {
        slug: slug.clone(),
        name: slug.to_string(),
        plan: "free".into(),
        isolation: Isolation::Shared,
        server: None,
    };
    if tenancy.catalog().get_tenant(&slug).await?.is_none() {
        tenantry::lifecycle::create(tenancy.catalog(), &new, &actor).await?;
    }
    let scopes = [Scope::Read, Scope::Write];
    let (_, key) = tenancy
        .catalog()
        .create_key(&slug, "example", &scopes, None, &actor)
        .await?;
    Ok(key)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("DATABASE_URL").map_err(|_| "set DATABASE_URL")?;
    let tenancy = connect(&url, "notes").await?;
    for slug in ["acme", "globex"] {
        println!("{slug}: {}", tenant_with_key(&tenancy, slug).await?);
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    println!("listening on http://127.0.0.1:3000");
    axum::serve(listener, app(tenancy)).await?;
    Ok(())
}
