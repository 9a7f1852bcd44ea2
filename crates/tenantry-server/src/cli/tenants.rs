//! `tenantry tenants …` and `tenantry keys …`: the admin plane's tenant and key operations for
//! operators who prefer a shell. They work on the database a running server uses (connecting
//! as `serve` does), go through the same library calls as the HTTP admin plane, notify every
//! node (a suspension or revocation is effective on the next request), and write the audit log
//! as `cli:<user>`.

use chrono::{DateTime, Utc};
use clap::Subcommand;
use std::io::IsTerminal;
use tenantry::audit::Actor;
use tenantry::auth::Scope;
use tenantry::cache::TenantCache;
use tenantry::catalog::{ApiKeyInfo, CatalogError, TenantPatch};

use indicatif::{ProgressBar, ProgressStyle};
use tenantry::db::archive::{self, ArchiveError};
use tenantry::db::moves::{self, MoveError, MoveTarget};
use tenantry::db::Database;
use tenantry::http::Problem;
use tenantry::ratelimit::RedisLimiter;
use tenantry::{Catalog, Isolation, Slug, Tenant, TenantId, TenantStatus};
use uuid::Uuid;

use super::exit;
use crate::app::{connect, StartError};
use crate::config::Settings;

#[derive(Subcommand)]
pub enum TenantsCommand {
    /// List every tenant.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one tenant.
    Show {
        /// The tenant's slug.
        slug: String,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Create a tenant and provision its storage (re-running after a crash resumes).
    Create {
        /// The tenant's slug, matching `^[a-z][a-z0-9-]{1,62}$`.
        slug: String,
        /// Display name.
        #[arg(long)]
        name: String,
        /// A plan from the configuration.
        #[arg(long, default_value = "free")]
        plan: String,
        /// Where its data lives.
        #[arg(long, default_value = "shared", value_parser = ["shared", "schema", "database"])]
        isolation: String,
        /// For `database` tenants: a registered server (default: the control plane's own).
        #[arg(long)]
        server: Option<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Suspend a tenant: its requests get 403 tenant_suspended on every node at once.
    Suspend {
        /// The tenant's slug.
        slug: String,
    },
    /// Resume a suspended tenant.
    Resume {
        /// The tenant's slug.
        slug: String,
    },
    /// Move a tenant to another placement while it is served: its rows are copied and
    /// verified, every node switches to the new placement, the old storage goes.
    Move {
        /// The tenant's slug.
        slug: String,
        /// Where its data is to live.
        #[arg(long, value_parser = ["shared", "schema", "database"])]
        isolation: String,
        /// For `database`: a registered server (default: the control plane's own).
        #[arg(long)]
        server: Option<String>,
    },
    /// Write one portable archive of a tenant's rows (every tenant table, one consistent
    /// snapshot, gzip), while the tenant keeps being served.
    Backup {
        /// The tenant's slug.
        slug: String,
        /// The archive file to write (`-` for stdout).
        #[arg(short = 'o', long)]
        output: String,
    },
    /// Create a new tenant from an archive, in any placement, migrated forward if the archive
    /// is older. A corrupted or newer archive is refused before anything is created.
    Restore {
        /// The archive file.
        archive: std::path::PathBuf,
        /// The new tenant's slug.
        #[arg(long)]
        slug: String,
        /// Where its data lives.
        #[arg(long, default_value = "shared", value_parser = ["shared", "schema", "database"])]
        isolation: String,
        /// For `database` tenants: a registered server (default: the control plane's own).
        #[arg(long)]
        server: Option<String>,
        /// Display name (default: the archived tenant's).
        #[arg(long)]
        name: Option<String>,
        /// A plan from the configuration (default: the archived tenant's).
        #[arg(long)]
        plan: Option<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Deprovision a tenant: keys, rows, schema or database, catalog entry. Irreversible.
    Delete {
        /// The tenant's slug.
        slug: String,
        /// Confirm that the tenant's data is to be removed.
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Subcommand)]
pub enum ServersCommand {
    /// Move every database tenant off a server, one at a time and each online.
    Drain {
        /// The server to drain.
        name: String,
        /// The server that takes its tenants.
        #[arg(long, default_value = "default")]
        to: String,
    },
}

#[derive(Subcommand)]
pub enum KeysCommand {
    /// Create an API key. Prints only the key on stdout (shown this once; stored hashed).
    Create {
        /// The tenant's slug.
        tenant: String,
        /// A label for the key.
        #[arg(long, default_value = "default")]
        name: String,
        /// Scopes (repeat for several); default read and write.
        #[arg(long = "scope", value_parser = ["read", "write"])]
        scopes: Vec<String>,
        /// Lifetime, e.g. 90d; default: no expiry.
        #[arg(long)]
        expires_in: Option<String>,
        /// Print the key and its details as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List a tenant's keys (never the secrets).
    List {
        /// The tenant's slug.
        tenant: String,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key: refused on the next request, on every node.
    Revoke {
        /// The tenant's slug.
        tenant: String,
        /// The key's id (from `keys list`).
        id: String,
    },
}

/// Who the audit log names for a CLI action.
fn actor() -> Actor {
    let user = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
    Actor {
        name: format!("cli:{user}"),
        request_id: Uuid::new_v4().to_string(),
    }
}

/// A failure to report: the message, and the exit code (2 for bad input, 1 otherwise).
struct Failure(u8, String);

impl From<Problem> for Failure {
    fn from(p: Problem) -> Self {
        let code = match p.code.status().as_u16() {
            400 | 422 => exit::USAGE,
            _ => exit::FAILED,
        };
        Failure(code, p.detail.into_owned())
    }
}

impl From<CatalogError> for Failure {
    fn from(e: CatalogError) -> Self {
        match e {
            CatalogError::TenantExists(s) => {
                Failure(exit::FAILED, format!("tenant {s} already exists"))
            }
            CatalogError::TenantNotFound => Failure(exit::FAILED, "no such tenant".into()),
            e @ CatalogError::DeletedWhileProvisioning(_) => Failure(exit::FAILED, e.to_string()),
            CatalogError::Db(e) => Failure(exit::FAILED, e.to_string()),
        }
    }
}

impl From<ArchiveError> for Failure {
    fn from(e: ArchiveError) -> Self {
        match e {
            ArchiveError::Catalog(e) => e.into(),
            e @ (ArchiveError::Corrupt(_)
            | ArchiveError::UnsupportedFormat(_)
            | ArchiveError::NewerSchema { .. }) => Failure(exit::USAGE, e.to_string()),
            e => Failure(exit::FAILED, e.to_string()),
        }
    }
}

impl From<tenantry::db::DbError> for Failure {
    fn from(e: tenantry::db::DbError) -> Self {
        Failure(exit::FAILED, e.to_string())
    }
}

fn slug(s: &str) -> Result<Slug, Failure> {
    Slug::parse(s).map_err(|e| Failure(exit::USAGE, format!("{s:?}: {e}")))
}

fn print_json<T: serde::Serialize>(v: &T) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

fn time(t: Option<DateTime<Utc>>) -> String {
    t.map(|t| t.format("%Y-%m-%d %H:%M").to_string())
        .unwrap_or_else(|| "-".into())
}

fn print_tenants(tenants: &[Tenant]) {
    println!(
        "{:<24} {:<24} {:<12} {:<10} {:<9} {:<12} CREATED",
        "SLUG", "NAME", "PLAN", "STATUS", "ISOLATION", "STORAGE"
    );
    for t in tenants {
        println!(
            "{:<24} {:<24} {:<12} {:<10} {:<9} {:<12} {}",
            t.slug.as_str(),
            t.name,
            t.plan,
            t.status.as_str(),
            t.isolation.as_str(),
            t.storage_state.as_str(),
            time(Some(t.created_at))
        );
    }
}

fn print_keys(keys: &[ApiKeyInfo]) {
    println!(
        "{:<36} {:<16} {:<14} {:<11} {:<16} {:<16} {:<16} REVOKED",
        "ID", "NAME", "PREFIX", "SCOPES", "CREATED", "EXPIRES", "LAST USED"
    );
    for k in keys {
        let scopes: Vec<&str> = k.scopes.iter().map(|s| s.as_str()).collect();
        println!(
            "{:<36} {:<16} {:<14} {:<11} {:<16} {:<16} {:<16} {}",
            k.id,
            k.name,
            k.prefix,
            scopes.join(","),
            time(Some(k.created_at)),
            time(k.expires_at),
            time(k.last_used_at),
            time(k.revoked_at)
        );
    }
}

/// Rows fetched per catalog query when listing everything.
const PAGE: i64 = 500;

async fn all_tenants(catalog: &Catalog) -> Result<Vec<Tenant>, Failure> {
    let mut all: Vec<Tenant> = Vec::new();
    loop {
        let after = all.last().map(|t| t.slug.to_string());
        let page = catalog.list_tenants(PAGE, after.as_deref()).await?;
        let done = (page.len() as i64) < PAGE;
        all.extend(page);
        if done {
            return Ok(all);
        }
    }
}

async fn all_keys(catalog: &Catalog, tenant: &Slug) -> Result<Vec<ApiKeyInfo>, Failure> {
    let mut all: Vec<ApiKeyInfo> = Vec::new();
    loop {
        let page = catalog
            .list_keys(tenant, PAGE, all.last().map(|k| k.id))
            .await?;
        let done = (page.len() as i64) < PAGE;
        all.extend(page);
        if done {
            return Ok(all);
        }
    }
}

/// The tenancy the server would build, for the checks `create` shares with the admin API.
fn tenancy(settings: &Settings, db: &Database) -> Result<tenantry::Tenancy, Failure> {
    crate::app::tenancy(settings, Catalog::new(db.clone()))
        .map(|(t, _)| t)
        .map_err(|e| Failure(exit::USAGE, e.to_string()))
}

/// Flushes a tenant's cached data on every node (after a suspension or a deletion).
/// Drops what a deleted or suspended tenant left in the shared stores: its cache entries (here,
/// in Redis and, through NOTIFY, on every node) and, when it is deleted, its limiter state in
/// Redis (nodes keep their own under the tenant's id, which is never given to another tenant).
async fn flush_cache(settings: &Settings, db: &Database, tenant: &TenantId, deleted: bool) {
    let mut cache = TenantCache::new(db.clone(), 1024 * 1024);
    if let Some(url) = &settings.redis_url {
        match cache.clone().with_redis(url, &settings.role_prefix) {
            Ok(c) => cache = c,
            Err(e) => eprintln!("tenantry: REDIS_URL: {e}; the Redis cache expires by TTL"),
        }
    }
    cache.flush_tenant(tenant).await;
    if let (true, Some(url)) = (deleted, &settings.redis_url) {
        match RedisLimiter::new(url, &settings.role_prefix) {
            Ok(limiter) => {
                if let Err(e) = limiter.forget(tenant).await {
                    eprintln!(
                        "tenantry: could not remove the tenant's limiter state from Redis: {e}"
                    );
                }
            }
            Err(e) => eprintln!("tenantry: REDIS_URL: {e}"),
        }
    }
}

async fn tenants(settings: &Settings, db: &Database, cmd: TenantsCommand) -> Result<(), Failure> {
    let catalog = Catalog::new(db.clone());
    match cmd {
        TenantsCommand::List { json } => {
            let all = all_tenants(&catalog).await?;
            if json {
                print_json(&all);
            } else {
                print_tenants(&all);
            }
        }
        TenantsCommand::Show { slug: s, json } => {
            let t = catalog
                .get_tenant(&slug(&s)?)
                .await?
                .ok_or(CatalogError::TenantNotFound)?;
            if json {
                print_json(&t);
            } else {
                print_tenants(std::slice::from_ref(&t));
                if let Some(r) = t.rate_limit {
                    println!(
                        "rate-limit override: {} per {} s",
                        r.requests, r.per_seconds
                    );
                }
                if let Some(server) = &t.server {
                    println!("server: {server}");
                }
            }
        }
        TenantsCommand::Create {
            slug: s,
            name,
            plan,
            isolation,
            server,
            json,
        } => {
            let tenancy = tenancy(settings, db)?;
            let new =
                crate::routes::admin::new_tenant(&tenancy, &s, name, plan, &isolation, server)
                    .await?;
            let t = tenantry::lifecycle::create(&catalog, &new, &actor()).await?;
            if json {
                print_json(&t);
            } else {
                eprintln!("created tenant {} ({})", t.slug, t.isolation.as_str());
            }
        }
        TenantsCommand::Suspend { slug: s } => {
            let s = slug(&s)?;
            let t = set_status(&catalog, &s, TenantStatus::Suspended).await?;
            flush_cache(settings, db, &t.id, false).await;
            eprintln!("suspended tenant {s}");
        }
        TenantsCommand::Resume { slug: s } => {
            let s = slug(&s)?;
            set_status(&catalog, &s, TenantStatus::Active).await?;
            eprintln!("resumed tenant {s}");
        }
        TenantsCommand::Move {
            slug: s,
            isolation,
            server,
        } => {
            let s = slug(&s)?;
            let target = MoveTarget {
                isolation: Isolation::parse(&isolation).ok_or_else(|| {
                    Failure(exit::USAGE, format!("unknown isolation {isolation}"))
                })?,
                server,
            };
            let tty = std::io::stderr().is_terminal();
            let bar = ProgressBar::hidden();
            if tty {
                bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
                bar.set_style(
                    ProgressStyle::with_template("{bar:40} {percent:>3}% {msg} [{elapsed}]")
                        .unwrap_or_else(|_| ProgressStyle::default_bar()),
                );
                bar.set_length(100);
            }
            let result = moves::relocate(
                &catalog,
                &s,
                &target,
                settings.move_grace,
                |phase, done| {
                    if tty {
                        bar.set_message(phase.as_str());
                        bar.set_position((done * 100.0) as u64);
                    } else {
                        eprintln!("{}: {:.0}%", phase.as_str(), done * 100.0);
                    }
                },
                |_| std::future::ready(true),
            )
            .await;
            bar.finish_and_clear();
            let r = result.map_err(|e| match e {
                MoveError::TenantNotFound => Failure::from(CatalogError::TenantNotFound),
                e @ (MoveError::AlreadyThere | MoveError::UnknownServer(_)) => {
                    Failure(exit::USAGE, e.to_string())
                }
                e => Failure(exit::FAILED, e.to_string()),
            })?;
            flush_cache(settings, db, &r.tenant.id, false).await;
            eprintln!("tenant {s} {}", r.summary());
        }
        TenantsCommand::Backup { slug: s, output } => {
            let s = slug(&s)?;
            let manifest = if output == "-" {
                archive::backup(&catalog, &s, std::io::stdout().lock()).await?
            } else {
                let file = std::fs::File::create(&output)
                    .map_err(|e| Failure(exit::FAILED, format!("{output}: {e}")))?;
                archive::backup(&catalog, &s, std::io::BufWriter::new(file)).await?
            };
            let rows: u64 = manifest.tables.iter().map(|t| t.rows).sum();
            eprintln!(
                "backed up tenant {s}: {rows} rows in {} tables, schema version {}",
                manifest.tables.len(),
                manifest.schema_version
            );
        }
        TenantsCommand::Restore {
            archive: path,
            slug: s,
            isolation,
            server,
            name,
            plan,
            json,
        } => {
            let manifest = archive::verify(&path)?;
            let tenancy = tenancy(settings, db)?;
            let new = crate::routes::admin::new_tenant(
                &tenancy,
                &s,
                name.unwrap_or(manifest.tenant.name),
                plan.unwrap_or(manifest.tenant.plan),
                &isolation,
                server,
            )
            .await?;
            let t = archive::restore(&catalog, &path, &new, &actor()).await?;
            if json {
                print_json(&t);
            } else {
                eprintln!(
                    "restored tenant {} ({}) from {}",
                    t.slug,
                    t.isolation.as_str(),
                    path.display()
                );
            }
        }
        TenantsCommand::Delete { slug: s, yes } => {
            let s = slug(&s)?;
            if !yes {
                return Err(Failure(
                    exit::USAGE,
                    format!("deleting {s} removes its data for good; pass --yes to confirm"),
                ));
            }
            let Some(gone) = tenantry::lifecycle::delete(&catalog, &s, &actor()).await? else {
                return Err(CatalogError::TenantNotFound.into());
            };
            flush_cache(settings, db, &gone.id, true).await;
            eprintln!("deleted tenant {s}");
        }
    }
    Ok(())
}

async fn servers(settings: &Settings, db: &Database, cmd: ServersCommand) -> Result<(), Failure> {
    let catalog = Catalog::new(db.clone());
    match cmd {
        ServersCommand::Drain { name, to } => {
            let known = tenantry::db::provision::server_names(db).await?;
            if !known.contains(&name) || !known.contains(&to) || name == to {
                return Err(Failure(
                    exit::USAGE,
                    format!("drain needs two different registered servers (have {known:?})"),
                ));
            }
            let report = moves::drain(
                &catalog,
                &name,
                &to,
                settings.move_grace,
                |done, total| eprintln!("{done}/{total} tenants"),
                |_| std::future::ready(true),
            )
            .await?;
            eprintln!("{}", report.summary());
            if !report.failed.is_empty() {
                return Err(Failure(exit::FAILED, "some tenants were not moved".into()));
            }
        }
    }
    Ok(())
}

async fn set_status(
    catalog: &Catalog,
    slug: &Slug,
    status: TenantStatus,
) -> Result<Tenant, Failure> {
    let patch = TenantPatch {
        status: Some(status),
        ..Default::default()
    };
    Ok(catalog.update_tenant(slug, &patch, &actor()).await?)
}

async fn keys(db: &Database, cmd: KeysCommand) -> Result<(), Failure> {
    let catalog = Catalog::new(db.clone());
    match cmd {
        KeysCommand::Create {
            tenant,
            name,
            scopes,
            expires_in,
            json,
        } => {
            let tenant = slug(&tenant)?;
            let scopes: Vec<Scope> = if scopes.is_empty() {
                vec![Scope::Read, Scope::Write]
            } else {
                scopes
                    .iter()
                    .map(|s| {
                        if s == "read" {
                            Scope::Read
                        } else {
                            Scope::Write
                        }
                    })
                    .collect()
            };
            let expires_at = match expires_in.as_deref() {
                None => None,
                Some(d) => {
                    let d = super::parse_duration(d).ok_or_else(|| {
                        Failure(
                            exit::USAGE,
                            "--expires-in takes a number with s, m, h or d (e.g. 90d)".into(),
                        )
                    })?;
                    Some(Utc::now() + chrono::Duration::from_std(d).unwrap_or_default())
                }
            };
            let scopes = crate::routes::admin::new_key(&name, &scopes, expires_at)?;
            let (info, key) = catalog
                .create_key(&tenant, &name, &scopes, expires_at, &actor())
                .await?;
            if json {
                // The same shape as the admin API's answer.
                print_json(&crate::routes::admin::CreatedKey { info, key });
            } else {
                println!("{key}");
                eprintln!(
                    "created key {} ({}) for {tenant}; it is shown this once",
                    info.id, info.prefix
                );
            }
        }
        KeysCommand::List { tenant, json } => {
            let tenant = slug(&tenant)?;
            if catalog.get_tenant(&tenant).await?.is_none() {
                return Err(CatalogError::TenantNotFound.into());
            }
            let all = all_keys(&catalog, &tenant).await?;
            if json {
                print_json(&all);
            } else {
                print_keys(&all);
            }
        }
        KeysCommand::Revoke { tenant, id } => {
            let tenant = slug(&tenant)?;
            let id = Uuid::try_parse(&id)
                .map_err(|_| Failure(exit::USAGE, format!("{id:?} is not a key id")))?;
            if catalog.revoke_key(&tenant, id, &actor()).await?.is_none() {
                return Err(Failure(
                    exit::FAILED,
                    format!("no such key in tenant {tenant}"),
                ));
            }
            eprintln!("revoked key {id}");
        }
    }
    Ok(())
}

/// What `tenants`, `keys` or `servers` should do.
pub enum Admin {
    Tenants(TenantsCommand),
    Keys(KeysCommand),
    Servers(ServersCommand),
}

/// Runs a `tenants` or `keys` subcommand; returns the exit code.
pub async fn run(settings: &Settings, cmd: Admin) -> Result<u8, StartError> {
    let (db, local) = connect(settings).await?;
    let result = match cmd {
        Admin::Tenants(c) => tenants(settings, &db, c).await,
        Admin::Keys(c) => keys(&db, c).await,
        Admin::Servers(c) => servers(settings, &db, c).await,
    };
    if let Some(pg) = local {
        pg.stop();
    }
    Ok(match result {
        Ok(()) => exit::OK,
        Err(Failure(code, message)) => {
            eprintln!("tenantry: {message}");
            code
        }
    })
}
