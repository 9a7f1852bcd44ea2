//! The `tenantry` binary: parses the command line and hands over to the library.
//!
//! Exit codes: 0 success; 1 runtime failure; 2 bad usage or configuration.

use clap::{Parser, Subcommand};
use tenantry_server::app::Application;
use tenantry_server::config::{ServeArgs, Settings};

#[derive(Parser)]
#[command(
    name = "tenantry",
    version,
    about = "Multi-tenant API server and operator CLI"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the API server (starts a local PostgreSQL when DATABASE_URL is unset).
    Serve(ServeArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,tokio_postgres=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::Serve(args) => {
            let settings = match Settings::load(&args) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("tenantry: {e}");
                    return std::process::ExitCode::from(2);
                }
            };
            let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
            rt.block_on(async move {
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
            })
        }
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
