//! `lattice serve`: its flags (each also a `LATTICE_…` variable), the `Config` they make,
//! and the banner a starting server prints.

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use lattice_server::auth::{KeySet, Scope};
use lattice_server::config::{AuthConfig, AuthMode, ClusterConfig, Config};
use tokio::net::TcpListener;

/// How long the tokens printed by a run without a configured secret stay valid. The secret
/// dies with the process anyway.
const GENERATED_TOKEN_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

#[derive(Args, Debug)]
#[command(after_help = "Examples:\n  \
    lattice serve                                   # SQLite in ./lattice.db, a generated secret: prints demo and admin links\n  \
    lattice serve --no-auth --web-dir target/web/demo  # local experiments only: no tokens\n  \
    LATTICE_AUTH_SECRET=\"k1:$(openssl rand -hex 32)\" lattice serve --bind 0.0.0.0:8080 \\\n      \
    --database-url postgres://lattice:…@db/lattice\n\n\
    Every flag is also an environment variable (LATTICE_…); docs/operations.md lists them.")]
pub(crate) struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "LATTICE_BIND", default_value = "127.0.0.1:8080")]
    bind: String,
    /// Also serve the gRPC API (docs/grpc.md) on this address, e.g. `127.0.0.1:50051`.
    #[arg(long, env = "LATTICE_GRPC_BIND")]
    grpc_bind: Option<SocketAddr>,
    /// `sqlite://path.db` (created if missing) or `postgres://user:password@host/db`. Printed
    /// with its password replaced by `***`.
    #[arg(
        long,
        env = "LATTICE_DATABASE_URL",
        default_value = "sqlite://lattice.db",
        hide_env_values = true
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
    /// Bytes queued per connection before it is closed as a slow consumer.
    #[arg(long, env = "LATTICE_OUTBOX_BYTES")]
    outbox_bytes: Option<usize>,
    /// WebSocket connections that have not authenticated yet, at once.
    #[arg(long, env = "LATTICE_MAX_UNAUTHENTICATED")]
    max_unauthenticated: Option<usize>,
    /// TCP connections in their HTTP phase (before a WebSocket upgrade), at once.
    #[arg(long, env = "LATTICE_MAX_HTTP_CONNECTIONS")]
    max_http_connections: Option<usize>,
    /// Seconds a client has to send an HTTP request's headers.
    #[arg(long, env = "LATTICE_HEADER_READ_TIMEOUT_SECS")]
    header_read_timeout_secs: Option<u64>,
    /// Bytes of full-state sync answers one connection may cause per second, sustained.
    #[arg(long, env = "LATTICE_SYNC_BYTES_PER_SECOND")]
    sync_bytes_per_second: Option<u64>,
    /// Bytes of full-state sync answers one connection may cause in a burst.
    #[arg(long, env = "LATTICE_SYNC_BYTE_BURST")]
    sync_byte_burst: Option<u64>,
    /// HTTP reads that rebuild a document (`GET /v1/docs/…`, admin history, content, diff,
    /// export) running at once; further ones wait. Default: the number of CPUs.
    #[arg(long, env = "LATTICE_MAX_CONCURRENT_REBUILDS")]
    max_concurrent_rebuilds: Option<NonZeroUsize>,
    /// Seconds a read waits for a rebuild slot before it is answered 503 `busy`.
    #[arg(long, env = "LATTICE_REBUILD_WAIT_SECS")]
    rebuild_wait_secs: Option<u64>,
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
    /// Relay every delta only once it is committed. By default a delta reaches the
    /// connections of its sender's principal (everyone, without authentication) as soon as
    /// it is applied, and the others once committed; acknowledgements always wait for the
    /// commit.
    #[arg(long, env = "LATTICE_RELAY_AFTER_COMMIT")]
    relay_after_commit: bool,
    /// Seconds a graceful shutdown may take.
    #[arg(long, env = "LATTICE_SHUTDOWN_DEADLINE_SECS")]
    shutdown_deadline_secs: Option<u64>,
    /// Token signing secrets: `kid:secret` (comma-separated or repeated; the first one signs
    /// new tokens, all verify), or one bare secret (key id `default`). At least 32 bytes each.
    /// Without one, a random secret is generated for this run and an admin token and a demo
    /// URL are printed.
    #[arg(
        long,
        env = "LATTICE_AUTH_SECRET",
        value_delimiter = ',',
        hide_env_values = true
    )]
    auth_secret: Vec<String>,
    /// Disable authentication: anyone who can connect may read, write and administer every
    /// document. For local experiments only; logged as a warning.
    #[arg(long, env = "LATTICE_NO_AUTH")]
    no_auth: bool,
    /// Failed authentication attempts allowed per IP address per minute.
    #[arg(long, env = "LATTICE_FAILED_AUTH_PER_MINUTE")]
    failed_auth_per_minute: Option<u32>,
    /// Join a cluster: `redis://host:port`. Every node on the same PostgreSQL database and
    /// Redis serves every document (docs/cluster.md). Needs a `postgres://` database.
    #[arg(long, env = "LATTICE_REDIS_URL", hide_env_values = true)]
    redis_url: Option<String>,
    /// Milliseconds between a cluster node's checks of its live documents' heads against the
    /// database while Redis works.
    #[arg(long, env = "LATTICE_CLUSTER_CHECK_INTERVAL_MS")]
    cluster_check_interval_ms: Option<u64>,
    /// The same while Redis is down, when polling the database is the only cross-node path.
    #[arg(long, env = "LATTICE_CLUSTER_FALLBACK_INTERVAL_MS")]
    cluster_fallback_interval_ms: Option<u64>,
    /// Folder of the demo's web build (`cargo xtask build-web` writes `target/web/demo`),
    /// served at `/` and `/demo/…`.
    #[arg(long, env = "LATTICE_WEB_DIR")]
    web_dir: Option<std::path::PathBuf>,
}

impl ServeArgs {
    /// The configuration, and whether its key was generated for this run.
    fn config(&self) -> Result<(Config, bool)> {
        let mut c = Config {
            database_url: self.database_url.clone(),
            web_dir: self.web_dir.clone(),
            grpc_bind: self.grpc_bind,
            ..Config::default()
        };
        if let Some(dir) = &c.web_dir
            && !dir.join("index.html").is_file()
        {
            bail!(
                "--web-dir {}: no index.html there (build it with `cargo xtask build-web`)",
                dir.display()
            );
        }
        if let Some(redis_url) = &self.redis_url {
            if !c.database_url.starts_with("postgres://")
                && !c.database_url.starts_with("postgresql://")
            {
                bail!(
                    "--redis-url needs a PostgreSQL database (--database-url postgres://…): \
                     the nodes of a cluster share one database, and SQLite lives on one host"
                );
            }
            let mut cluster = ClusterConfig::new(redis_url.clone());
            set(
                &mut cluster.check_interval,
                self.cluster_check_interval_ms.map(Duration::from_millis),
            );
            set(
                &mut cluster.fallback_interval,
                self.cluster_fallback_interval_ms.map(Duration::from_millis),
            );
            c.cluster = Some(cluster);
        }
        let has_secret = self.auth_secret.iter().any(|s| !s.trim().is_empty());
        let generated = !self.no_auth && !has_secret;
        c.auth = if self.no_auth {
            if has_secret {
                bail!("--no-auth and --auth-secret (or LATTICE_AUTH_SECRET) contradict each other");
            }
            AuthConfig::default()
        } else if has_secret {
            AuthConfig::required(KeySet::parse(&self.auth_secret).context("--auth-secret")?)
        } else {
            AuthConfig::required(KeySet::generate())
        };
        set(
            &mut c.auth.failed_attempts_per_minute,
            self.failed_auth_per_minute,
        );
        let l = &mut c.limits;
        set(&mut l.max_frame_bytes, self.max_frame_bytes);
        set(&mut l.max_docs_per_connection, self.max_docs_per_connection);
        set(&mut l.max_connections, self.max_connections);
        set(&mut l.messages_per_second, self.messages_per_second);
        set(&mut l.message_burst, self.message_burst);
        set(&mut l.bytes_per_second, self.bytes_per_second);
        set(&mut l.outbox_frames, self.outbox_frames);
        set(&mut l.outbox_bytes, self.outbox_bytes);
        set(&mut l.max_unauthenticated, self.max_unauthenticated);
        set(&mut l.max_http_connections, self.max_http_connections);
        set(
            &mut l.header_read_timeout,
            secs(self.header_read_timeout_secs),
        );
        set(&mut l.sync_bytes_per_second, self.sync_bytes_per_second);
        set(&mut l.sync_byte_burst, self.sync_byte_burst);
        set(
            &mut l.max_concurrent_rebuilds,
            self.max_concurrent_rebuilds.map(NonZeroUsize::get),
        );
        set(&mut l.rebuild_wait, secs(self.rebuild_wait_secs));
        set(
            &mut c.heartbeat.ping_interval,
            secs(self.ping_interval_secs),
        );
        set(&mut c.heartbeat.idle_timeout, secs(self.idle_timeout_secs));
        set(&mut c.rooms.presence_ttl, secs(self.presence_ttl_secs));
        set(&mut c.rooms.idle_ttl, secs(self.room_idle_ttl_secs));
        if self.relay_after_commit {
            c.rooms.relay = lattice_server::config::RelayOrder::AfterCommit;
        }
        set(&mut c.shutdown_deadline, secs(self.shutdown_deadline_secs));
        Ok((c, generated))
    }
}

/// Runs the server `args` describe until SIGTERM or SIGINT.
pub(crate) async fn run(args: &ServeArgs) -> Result<()> {
    crate::init_logs(args.json_logs);
    let (config, generated) = args.config()?;
    let listener = TcpListener::bind(&args.bind)
        .await
        .with_context(|| format!("cannot listen on {}", args.bind))?;
    let addr = listener.local_addr()?;
    // Bound here rather than by `run`, so the banner names the port even for port 0.
    let grpc = match config.grpc_bind {
        Some(bind) => Some(
            TcpListener::bind(bind)
                .await
                .with_context(|| format!("cannot listen on {bind} for gRPC"))?,
        ),
        None => None,
    };
    let mut banner = format!(
        "lattice {} listening on http://{addr}\n",
        lattice_server::VERSION
    );
    banner += &format!("  sync endpoint: ws://{addr}/v1/sync\n");
    if let Some(grpc) = &grpc {
        banner += &format!(
            "  gRPC:          http://{} (lattice.v1.Documents)\n",
            grpc.local_addr()?
        );
    }
    banner += &format!(
        "  database:      {}\n",
        lattice_server::store::redacted_url(&config.database_url)
    );
    if let Some(cluster) = &config.cluster {
        banner += &format!(
            "  cluster:       fan-out through {} (every node on this database serves every document)\n",
            lattice_server::store::redacted_url(&cluster.redis_url)
        );
    }
    banner += &auth_banner(&config, generated, addr)?;
    // Printed once the database is open: "listening" means requests are answered.
    let ready = move || print!("{banner}");
    let database = lattice_server::store::redacted_url(&config.database_url);
    lattice_server::run_then(config, listener, grpc, crate::shutdown_signal(), ready)
        .await
        .with_context(|| format!("cannot serve with database {database}"))?;
    Ok(())
}

/// What `lattice serve` prints about access control, one line each.
fn auth_banner(config: &Config, generated: bool, addr: SocketAddr) -> Result<String> {
    let mut out = String::new();
    let mut println = |line: String| {
        out += &line;
        out.push('\n');
    };
    match &config.auth.mode {
        AuthMode::Disabled => {
            println(
                "  auth:          DISABLED (--no-auth): anyone can read and write everything"
                    .into(),
            );
        }
        AuthMode::Required(keys) if generated => {
            let admin = keys.mint(
                "admin",
                &["*".into()],
                Scope::Admin,
                GENERATED_TOKEN_TTL,
                None,
            )?;
            let demo = keys.mint(
                "demo",
                &["demo".into(), "demo/*".into()],
                Scope::Write,
                GENERATED_TOKEN_TTL,
                None,
            )?;
            // A wildcard bind address is not something a browser can open.
            let mut host = addr;
            if host.ip().is_unspecified() {
                host.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
            }
            println(
                "  auth:          no --auth-secret: generated a secret for this run; its tokens \
                 stop working when the process exits"
                    .into(),
            );
            println(format!("  admin token:   {admin}"));
            println(format!(
                "  admin:         http://{host}/admin?token={admin}"
            ));
            println(format!(
                "  demo:          http://{host}/?doc=demo&token={demo}"
            ));
        }
        AuthMode::Required(keys) => {
            let kids: Vec<&str> = keys.kids().collect();
            println(format!(
                "  auth:          tokens required; key ids {}, signing with {}",
                kids.join(", "),
                keys.signing_kid()
            ));
        }
    }
    Ok(out)
}

/// Overrides a configured value with a flag's, when the flag was given.
fn set<T>(slot: &mut T, flag: Option<T>) {
    if let Some(v) = flag {
        *slot = v;
    }
}

/// A flag in seconds as a duration.
fn secs(flag: Option<u64>) -> Option<Duration> {
    flag.map(Duration::from_secs)
}
