//! `lattice`: the server binary. `lattice serve` runs the sync server ([`serve`]: every flag
//! is also an environment variable, `LATTICE_…`); `lattice token` mints access tokens
//! ([`token`]); `lattice admin` reads document history ([`admin`]) and manages webhook
//! endpoints ([`webhooks`]).

use anyhow::Result;
use clap::{Parser, Subcommand};
use tracing::info;

mod admin;
mod serve;
mod token;
mod webhooks;

#[derive(Parser, Debug)]
#[command(name = "lattice", version, about = "Lattice: a CRDT sync server")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the sync server.
    Serve(Box<serve::ServeArgs>),
    /// Mint an access token; it is printed alone on the last line (stdout), details go to
    /// stderr.
    Token(token::TokenArgs),
    /// Document history for admins: `docs`, `history DOC`, `show DOC --at SEQ`, `diff DOC`,
    /// `restore DOC --to SEQ`, against `--url` with `--token`, or `--database-url` (read-only).
    Admin(admin::AdminArgs),
}

pub(crate) fn init_logs(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Resolves on SIGTERM or SIGINT.
pub(crate) async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
    info!("signal received");
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Token(args) => token::mint(&args)?,
        Command::Admin(args) => admin::run(args).await?,
        Command::Serve(args) => serve::run(&args).await?,
    }
    Ok(())
}
