//! `lattice`: the server binary. `lattice serve` runs the sync server; every flag is also an
//! environment variable (`LATTICE_…`).

use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use lattice_server::config::Config;
use tokio::net::TcpListener;
use tracing::info;

#[derive(Parser, Debug)]
#[command(name = "lattice", version, about = "Lattice: a CRDT sync server")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the sync server.
    Serve(ServeArgs),
}

#[derive(Args, Debug)]
struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "LATTICE_BIND", default_value = "127.0.0.1:8080")]
    bind: String,
    /// `sqlite://path.db` (created if missing) or `postgres://user:password@host/db`.
    #[arg(
        long,
        env = "LATTICE_DATABASE_URL",
        default_value = "sqlite://lattice.db"
    )]
    database_url: String,
    /// Log as JSON lines instead of text.
    #[arg(long, env = "LATTICE_JSON_LOGS")]
    json_logs: bool,
    /// Largest WebSocket frame accepted, in bytes.
    #[arg(long, env = "LATTICE_MAX_FRAME_BYTES")]
    max_frame_bytes: Option<usize>,
    /// Documents one connection may subscribe to.
    #[arg(long, env = "LATTICE_MAX_DOCS_PER_CONNECTION")]
    max_docs_per_connection: Option<usize>,
    /// Concurrent connections.
    #[arg(long, env = "LATTICE_MAX_CONNECTIONS")]
    max_connections: Option<usize>,
    /// Sustained messages per second per connection.
    #[arg(long, env = "LATTICE_MESSAGES_PER_SECOND")]
    messages_per_second: Option<u32>,
    /// Message burst per connection.
    #[arg(long, env = "LATTICE_MESSAGE_BURST")]
    message_burst: Option<u32>,
    /// Sustained bytes per second per connection.
    #[arg(long, env = "LATTICE_BYTES_PER_SECOND")]
    bytes_per_second: Option<u32>,
    /// Frames queued per connection before it is closed as a slow consumer.
    #[arg(long, env = "LATTICE_OUTBOX_FRAMES")]
    outbox_frames: Option<usize>,
    /// Seconds between server WebSocket pings.
    #[arg(long, env = "LATTICE_PING_INTERVAL_SECS")]
    ping_interval_secs: Option<u64>,
    /// Seconds without any frame before a connection is closed.
    #[arg(long, env = "LATTICE_IDLE_TIMEOUT_SECS")]
    idle_timeout_secs: Option<u64>,
    /// Seconds a presence entry lives without renewal.
    #[arg(long, env = "LATTICE_PRESENCE_TTL_SECS")]
    presence_ttl_secs: Option<u64>,
    /// Seconds an idle room stays loaded.
    #[arg(long, env = "LATTICE_ROOM_IDLE_TTL_SECS")]
    room_idle_ttl_secs: Option<u64>,
    /// Seconds a graceful shutdown may take.
    #[arg(long, env = "LATTICE_SHUTDOWN_DEADLINE_SECS")]
    shutdown_deadline_secs: Option<u64>,
}

impl ServeArgs {
    fn config(&self) -> Config {
        let mut c = Config {
            database_url: self.database_url.clone(),
            ..Config::default()
        };
        let l = &mut c.limits;
        if let Some(v) = self.max_frame_bytes {
            l.max_frame_bytes = v;
        }
        if let Some(v) = self.max_docs_per_connection {
            l.max_docs_per_connection = v;
        }
        if let Some(v) = self.max_connections {
            l.max_connections = v;
        }
        if let Some(v) = self.messages_per_second {
            l.messages_per_second = v;
        }
        if let Some(v) = self.message_burst {
            l.message_burst = v;
        }
        if let Some(v) = self.bytes_per_second {
            l.bytes_per_second = v;
        }
        if let Some(v) = self.outbox_frames {
            l.outbox_frames = v;
        }
        if let Some(v) = self.ping_interval_secs {
            c.heartbeat.ping_interval = Duration::from_secs(v);
        }
        if let Some(v) = self.idle_timeout_secs {
            c.heartbeat.idle_timeout = Duration::from_secs(v);
        }
        if let Some(v) = self.presence_ttl_secs {
            c.rooms.presence_ttl = Duration::from_secs(v);
        }
        if let Some(v) = self.room_idle_ttl_secs {
            c.rooms.idle_ttl = Duration::from_secs(v);
        }
        if let Some(v) = self.shutdown_deadline_secs {
            c.shutdown_deadline = Duration::from_secs(v);
        }
        c
    }
}

fn init_logs(json: bool) {
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
async fn shutdown_signal() {
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
        Command::Serve(args) => {
            init_logs(args.json_logs);
            let config = args.config();
            let listener = TcpListener::bind(&args.bind)
                .await
                .with_context(|| format!("cannot listen on {}", args.bind))?;
            let addr = listener.local_addr()?;
            println!(
                "lattice {} listening on http://{addr}",
                lattice_server::VERSION
            );
            println!("  sync endpoint: ws://{addr}/v1/sync");
            println!("  database:      {}", config.database_url);
            lattice_server::run(config, listener, shutdown_signal()).await?;
        }
    }
    Ok(())
}
