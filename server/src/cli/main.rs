//! `lattice`: the server binary. `lattice serve` runs the sync server ([`serve`]: every flag
//! is also an environment variable, `LATTICE_…`); `lattice token` mints access tokens
//! ([`token`]); `lattice admin` reads document history ([`admin`]).

use clap::{Parser, Subcommand};
use tracing::info;

mod admin;
mod serve;
mod token;

#[derive(Parser, Debug)]
#[command(
    name = "lattice",
    version,
    about = "Lattice: a CRDT sync server",
    after_help = "Examples:\n  \
    lattice serve                                   # SQLite in ./lattice.db; prints a demo and an admin link\n  \
    lattice serve --web-dir target/web/demo         # with the demo editor at / (cargo xtask run does this)\n  \
    LATTICE_AUTH_SECRET=… lattice token --sub ada --doc 'notes/*' --scope write\n  \
    lattice admin --url http://127.0.0.1:8080 --token … history notes/today\n\n\
    Every command has its own --help with examples."
)]
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
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Token(args) => token::mint(&args),
        Command::Admin(args) => admin::run(args).await,
        Command::Serve(args) => serve::run(&args).await,
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            if backtrace_asked() {
                // The whole chain, and the backtrace captured with the error.
                eprintln!("Error: {e:?}");
            } else {
                eprintln!("error: {}", one_line(&e));
            }
            std::process::ExitCode::FAILURE
        }
    }
}

/// Whether `RUST_BACKTRACE` asks for backtraces (set and not `0`).
fn backtrace_asked() -> bool {
    std::env::var_os("RUST_BACKTRACE").is_some_and(|v| v != "0")
}

/// An error and its causes on one line, each cause once: most of our errors already include
/// their source's words, which a plain `{:#}` would repeat.
fn one_line(e: &anyhow::Error) -> String {
    let mut out = e.to_string();
    for cause in e.chain().skip(1) {
        let cause = cause.to_string();
        if !out.contains(&cause) {
            out.push_str(": ");
            out.push_str(&cause);
        }
    }
    out
}
