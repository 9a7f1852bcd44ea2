//! Operator subcommands that work on the database directly: `migrate`, `doctor`, and the
//! tenant and key commands in [`tenants`].
//!
//! They connect exactly as `serve` does (DATABASE_URL, or the managed local cluster), so they
//! act on the same fleet a running server serves.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};
use tenantry::db::doctor;
use tenantry::db::fleet::{self, MigrateOptions};

pub mod tenants;

use crate::app::{connect, StartError};
use crate::config::Settings;

/// Exit codes shared by the subcommands (also in the README).
pub mod exit {
    pub const OK: u8 = 0;
    /// A runtime failure, or findings/failures reported.
    pub const FAILED: u8 = 1;
    /// Bad usage or configuration.
    pub const USAGE: u8 = 2;
}

/// `tenantry migrate`: applies pending tenant migrations to the whole fleet.
pub async fn migrate(
    settings: &Settings,
    parallelism: usize,
    dry_run: bool,
) -> Result<u8, StartError> {
    let (db, local) = connect(settings).await?;
    let tty = std::io::stderr().is_terminal();
    let bar = ProgressBar::hidden();
    if tty {
        bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template("{bar:40} {pos}/{len} tenants {msg} [{elapsed}]")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
    }
    let opts = MigrateOptions {
        parallelism,
        dry_run,
    };
    let started = std::time::Instant::now();
    let result = fleet::migrate(&db, &opts, |p| {
        if tty {
            bar.set_length(p.total as u64);
            bar.set_position(p.done as u64);
            if p.failed > 0 {
                bar.set_message(format!("({} failed)", p.failed));
            }
        } else {
            tracing::info!(
                done = p.done,
                total = p.total,
                failed = p.failed,
                "migrating tenants"
            );
        }
    })
    .await;
    bar.finish_and_clear();
    if let Some(pg) = local {
        pg.stop();
    }
    let report = result?;
    let verb = if dry_run { "would apply" } else { "applied" };
    if !report.shared_applied.is_empty() {
        println!("shared tables: {verb} versions {:?}", report.shared_applied);
    }
    for t in &report.tenants {
        match &t.error {
            None => println!(
                "{} ({}): {verb} {:?}",
                t.tenant,
                t.isolation.as_str(),
                t.applied
            ),
            Some(e) => println!("{} ({}): FAILED: {e}", t.tenant, t.isolation.as_str()),
        }
    }
    let failed = report.failed().count();
    println!(
        "{} tenant(s) {}, {failed} failed; fleet at version {} ({:.1?})",
        report.succeeded(),
        if dry_run { "pending" } else { "migrated" },
        report.latest,
        started.elapsed()
    );
    if report.tenants.is_empty() && report.shared_applied.is_empty() {
        println!("nothing to do: every tenant is current");
    }
    Ok(if failed > 0 { exit::FAILED } else { exit::OK })
}

/// `tenantry doctor`: the isolation linter. Exit 0 when clean.
pub async fn doctor(settings: &Settings) -> Result<u8, StartError> {
    let (db, local) = connect(settings).await?;
    let result = doctor::check(&db).await;
    if let Some(pg) = local {
        pg.stop();
    }
    let findings = result?;
    if findings.is_empty() {
        println!("isolation doctor: no findings");
        return Ok(exit::OK);
    }
    println!("isolation doctor: {} finding(s)", findings.len());
    for f in &findings {
        println!("  {f}");
    }
    Ok(exit::FAILED)
}

/// `tenantry token`: prints a development JWT. Needs no database.
pub fn token(settings: &Settings, tenant: &str, ttl: &str, scope: Option<&str>) -> u8 {
    let Ok(tenant) = tenantry::Slug::parse(tenant) else {
        eprintln!("tenantry: {tenant:?} is not a tenant slug");
        return exit::USAGE;
    };
    let Some(ttl) = parse_duration(ttl) else {
        eprintln!("tenantry: --ttl takes a number with s, m, h or d (e.g. 30m, 1h)");
        return exit::USAGE;
    };
    if settings.jwt.hs256_secret.is_none() {
        eprintln!("tenantry: set TENANTRY_JWT_HS256_SECRET (or [jwt] hs256_secret) to mint tokens");
        return exit::USAGE;
    }
    match tenantry::auth::JwtVerifier::new(settings.jwt.clone())
        .and_then(|v| v.mint_hs256(&tenant, ttl, scope))
    {
        Ok(t) => {
            println!("{t}");
            exit::OK
        }
        Err(e) => {
            eprintln!("tenantry: {e}");
            exit::USAGE
        }
    }
}

/// `90s`, `30m`, `1h`, `2d`.
pub fn parse_duration(s: &str) -> Option<std::time::Duration> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit())?);
    let n: u64 = num.parse().ok()?;
    let secs = match unit {
        "s" => n,
        "m" => n.checked_mul(60)?,
        "h" => n.checked_mul(3600)?,
        "d" => n.checked_mul(86_400)?,
        _ => return None,
    };
    (secs > 0).then(|| std::time::Duration::from_secs(secs))
}
