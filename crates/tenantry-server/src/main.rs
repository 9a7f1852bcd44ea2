//! The `tenantry` binary: parses the command line and hands over to the library.
//!
//! Exit codes: 0 success; 1 runtime failure; 2 bad usage or configuration.

use clap::{Parser, Subcommand};

/// mimalloc: the request path allocates many small, short-lived objects across threads, where
/// it is measurably cheaper than glibc's allocator (see the commit that chose it).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use tenantry_server::app::Application;
use tenantry_server::cli;
use tenantry_server::config::{ServeArgs, Settings};

#[derive(Parser)]
#[command(
    name = "tenantry",
    version,
    about = "Multi-tenant API server and operator CLI",
    after_help = "\
Settings come from flags, then environment variables, then tenantry.toml.

Examples:
  tenantry serve                                   (a local PostgreSQL when DATABASE_URL is unset)
  tenantry tenants create acme --name Acme --plan pro --isolation schema
  KEY=$(tenantry keys create acme --name ci)       (the key is printed once)
  tenantry migrate --parallel 8
  tenantry doctor

Exit codes: 0 success; 1 failure, or findings reported; 2 bad usage or configuration."
)]
struct Cli {
    /// Log format: `auto` (human-readable on a terminal, JSON otherwise), `text` or `json`.
    #[arg(long, global = true, default_value = "auto", value_parser = ["auto", "text", "json"])]
    log_format: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate the configuration (file, environment, flags) and print the effective settings
    /// with secrets redacted. Exit 2 on an invalid file, naming the line.
    Check {
        #[command(
            flatten,
            next_help_heading = "Settings (flags > environment > tenantry.toml)"
        )]
        db: ServeArgs,
    },
}

#[derive(Subcommand)]
enum Command {
    /// Run the API server (starts a local PostgreSQL when DATABASE_URL is unset).
    Serve(ServeArgs),
    /// Apply pending tenant migrations to the shared tables, every tenant schema and every
    /// tenant database. Resumable; a re-run finishes only what is left.
    Migrate {
        #[command(
            flatten,
            next_help_heading = "Settings (flags > environment > tenantry.toml)"
        )]
        db: ServeArgs,
        /// Tenants migrated at once.
        #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
        parallel: u16,
        /// Show what would be applied; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Check the whole fleet for anything that weakens tenant isolation (exit 0 when clean).
    Doctor {
        #[command(
            flatten,
            next_help_heading = "Settings (flags > environment > tenantry.toml)"
        )]
        db: ServeArgs,
    },
    /// Configuration tools.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Run background jobs (exports) without serving HTTP.
    Worker {
        #[command(
            flatten,
            next_help_heading = "Settings (flags > environment > tenantry.toml)"
        )]
        db: ServeArgs,
    },
    /// Create, list, show, suspend, resume or delete tenants in the database a server uses.
    Tenants {
        #[command(
            flatten,
            next_help_heading = "Settings (flags > environment > tenantry.toml)"
        )]
        db: ServeArgs,
        #[command(subcommand)]
        command: cli::tenants::TenantsCommand,
    },
    /// Create, list or revoke a tenant's API keys in the database a server uses.
    Keys {
        #[command(
            flatten,
            next_help_heading = "Settings (flags > environment > tenantry.toml)"
        )]
        db: ServeArgs,
        #[command(subcommand)]
        command: cli::tenants::KeysCommand,
    },
    /// Drain a database server: move its tenants to another, online.
    Servers {
        #[command(
            flatten,
            next_help_heading = "Settings (flags > environment > tenantry.toml)"
        )]
        db: ServeArgs,
        #[command(subcommand)]
        command: cli::tenants::ServersCommand,
    },
    /// Print the OpenAPI 3.1 document (the same as GET /openapi.json) and exit.
    Openapi,
    /// Mint a development JWT for a tenant with the configured HS256 secret.
    Token {
        #[command(
            flatten,
            next_help_heading = "Settings (flags > environment > tenantry.toml)"
        )]
        db: ServeArgs,
        /// The tenant slug.
        #[arg(long)]
        tenant: String,
        /// Lifetime, e.g. 30m, 1h, 2d.
        #[arg(long, default_value = "1h")]
        ttl: String,
        /// Optional OAuth-style scope (e.g. "read" for a read-only token).
        #[arg(long)]
        scope: Option<String>,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // tokio-postgres logs statement parameters at debug level; those can hold tenant data and
    // secrets, so that level is never enabled for it, whatever RUST_LOG says (its info level is
    // only server NOTICEs such as "already exists, skipping").
    // One-shot commands print their results; their log shows only what went wrong.
    let default_level = match cli.command {
        Command::Serve(_) | Command::Worker { .. } | Command::Migrate { .. } => "info",
        _ => "warn",
    };
    let directives = std::env::var("RUST_LOG").unwrap_or_else(|_| default_level.into());
    let filter =
        tracing_subscriber::EnvFilter::try_new(format!("{directives},tokio_postgres=warn"))
            .unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new(format!("{default_level},tokio_postgres=warn"))
            });
    let json = match cli.log_format.as_str() {
        "json" => true,
        "text" => false,
        _ => !std::io::IsTerminal::is_terminal(&std::io::stderr()),
    };
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        logs.json().init();
    } else {
        logs.init();
    }
    if let Command::Openapi = cli.command {
        println!(
            "{}",
            serde_json::to_string_pretty(tenantry_server::openapi::document()).unwrap_or_default()
        );
        return std::process::ExitCode::from(cli::exit::OK);
    }
    let args = match &cli.command {
        Command::Serve(a)
        | Command::Migrate { db: a, .. }
        | Command::Doctor { db: a }
        | Command::Worker { db: a }
        | Command::Config {
            command: ConfigCommand::Check { db: a },
        }
        | Command::Token { db: a, .. }
        | Command::Tenants { db: a, .. }
        | Command::Keys { db: a, .. }
        | Command::Servers { db: a, .. } => a,
        Command::Openapi => unreachable!("handled above"),
    };
    let settings = match Settings::load(args) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("tenantry: {e}");
            return std::process::ExitCode::from(cli::exit::USAGE);
        }
    };
    if let Command::Config { .. } = cli.command {
        println!("configuration is valid; effective settings (secrets redacted):");
        println!("{settings:#?}");
        return std::process::ExitCode::from(cli::exit::OK);
    }
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    let one_shot = |r: Result<u8, tenantry_server::app::StartError>| match r {
        Ok(code) => std::process::ExitCode::from(code),
        Err(e) => {
            eprintln!("tenantry: {e}");
            std::process::ExitCode::from(cli::exit::FAILED)
        }
    };
    match cli.command {
        Command::Migrate {
            parallel, dry_run, ..
        } => one_shot(rt.block_on(cli::migrate(&settings, parallel as usize, dry_run))),
        Command::Doctor { .. } => one_shot(rt.block_on(cli::doctor(&settings))),
        Command::Tenants { command, .. } => one_shot(rt.block_on(cli::tenants::run(
            &settings,
            cli::tenants::Admin::Tenants(command),
        ))),
        Command::Keys { command, .. } => one_shot(rt.block_on(cli::tenants::run(
            &settings,
            cli::tenants::Admin::Keys(command),
        ))),
        Command::Servers { command, .. } => one_shot(rt.block_on(cli::tenants::run(
            &settings,
            cli::tenants::Admin::Servers(command),
        ))),
        Command::Config { .. } | Command::Openapi => std::process::ExitCode::from(cli::exit::OK),
        Command::Worker { .. } => one_shot(rt.block_on(async move {
            tenantry_server::app::run_worker(settings, shutdown_signal())
                .await
                .map(|()| cli::exit::OK)
        })),
        Command::Token {
            tenant, ttl, scope, ..
        } => std::process::ExitCode::from(cli::token(&settings, &tenant, &ttl, scope.as_deref())),
        Command::Serve(_) => rt.block_on(async move {
            let app = match Application::build(settings).await {
                Ok(a) => a,
                Err(e) => {
                    eprintln!("tenantry: cannot start: {e}");
                    return std::process::ExitCode::from(1);
                }
            };
            match app.run_until(shutdown_signal()).await {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("tenantry: {e}");
                    std::process::ExitCode::from(1)
                }
            }
        }),
    }
}

/// Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = ctrl_c => {},
        _ = term.recv() => {},
    }
    tracing::info!("shutting down: draining in-flight requests");
}
