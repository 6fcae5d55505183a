//! What a cluster of Lattice nodes shares, started by the bench for the `cluster` scenario: a
//! fresh PostgreSQL database on the server the environment names, and a Redis server as a child
//! process on a free loopback port.
//!
//! **Invariants:** every database the bench creates is dropped again ([`PostgresDb::drop_now`],
//! or on a best-effort basis by the caller's clean-up); Redis keeps nothing on disk (no RDB, no
//! AOF) and dies with the bench (`kill_on_drop`).

use std::collections::VecDeque;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use sqlx::Connection as _;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Environment variables naming the PostgreSQL server, in the order they are read: the bench's
/// own, then the one `cargo xtask setup` exports for the tests.
pub(crate) const POSTGRES_URL_VARS: [&str; 2] =
    ["LATTICE_BENCH_POSTGRES_URL", "LATTICE_TEST_POSTGRES_URL"];
/// The environment variable naming the `redis-server` binary (else it is looked up on `PATH`).
pub(crate) const REDIS_SERVER_VAR: &str = "LATTICE_TEST_REDIS_SERVER";

/// How long Redis may take to accept connections.
const REDIS_START_TIMEOUT: Duration = Duration::from_secs(15);
/// Lines of Redis's output kept for error messages.
const LOG_LINES: usize = 20;

/// The PostgreSQL server URL from the environment ([`POSTGRES_URL_VARS`]); a missing one fails
/// naming both variables.
pub(crate) fn postgres_url() -> Result<String> {
    POSTGRES_URL_VARS
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|s| !s.is_empty()))
        .with_context(|| {
            format!(
                "no PostgreSQL server: set {} or {} to postgres://user:password@host:port/db \
                 (the role needs CREATEDB; `cargo xtask setup` exports the second)",
                POSTGRES_URL_VARS[0], POSTGRES_URL_VARS[1]
            )
        })
}

/// The `redis-server` binary: [`REDIS_SERVER_VAR`] if set, else the first on `PATH`; a
/// missing one fails naming both.
pub(crate) fn redis_server_bin() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os(REDIS_SERVER_VAR).filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        if !path.is_file() {
            bail!(
                "{REDIS_SERVER_VAR}={} is not a file (it should name a redis-server binary)",
                path.display()
            );
        }
        return Ok(path);
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("redis-server"))
        .find(|p| p.is_file())
        .with_context(|| {
            format!(
                "redis-server not found: set {REDIS_SERVER_VAR} to its path or put it on PATH \
                 (Debian: `apt-get install redis-server`)"
            )
        })
}

/// `url` with its database replaced by `db` (the query string kept).
pub(crate) fn with_database(url: &str, db: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let host = base[scheme_end..].split('/').next().unwrap_or_default();
    let mut out = format!("{}{host}/{db}", &base[..scheme_end]);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

/// `url` with the password replaced by `***`, for messages and the report.
pub(crate) fn redacted(url: &str) -> String {
    let scheme_end = url.find("://").map_or(0, |i| i + 3);
    let rest = &url[scheme_end..];
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => {
            let userinfo = &rest[..at];
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{}{user}:***{}", &url[..scheme_end], &rest[at..])
        }
        None => url.to_owned(),
    }
}

/// The server's version (`SHOW server_version`), which also proves that `url` connects.
pub(crate) async fn postgres_version(url: &str) -> Result<String> {
    let mut conn = sqlx::PgConnection::connect(url)
        .await
        .with_context(|| format!("cannot connect to PostgreSQL at {}", redacted(url)))?;
    let (version,): (String,) = sqlx::query_as("SHOW server_version")
        .fetch_one(&mut conn)
        .await
        .context("SHOW server_version")?;
    let _ = conn.close().await;
    Ok(version)
}

/// A database created for one measurement.
#[derive(Debug)]
pub(crate) struct PostgresDb {
    admin_url: String,
    name: String,
    /// The URL of the new database, for `lattice serve --database-url`.
    pub url: String,
}

impl PostgresDb {
    /// Creates an empty database with a name no other run uses.
    pub(crate) async fn create(admin_url: &str) -> Result<Self> {
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let name = format!(
            "lattice_bench_{}_{}_{nanos}",
            std::process::id(),
            COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let mut conn = sqlx::PgConnection::connect(admin_url)
            .await
            .with_context(|| format!("cannot connect to PostgreSQL at {}", redacted(admin_url)))?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .with_context(|| format!("CREATE DATABASE {name} (the role needs CREATEDB)"))?;
        let _ = conn.close().await;
        Ok(Self {
            admin_url: admin_url.to_owned(),
            url: with_database(admin_url, &name),
            name,
        })
    }

    /// Drops the database, closing what is still connected to it.
    pub(crate) async fn drop_now(self) -> Result<()> {
        let mut conn = sqlx::PgConnection::connect(&self.admin_url).await?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        )))
        .execute(&mut conn)
        .await
        .with_context(|| format!("DROP DATABASE {}", self.name))?;
        let _ = conn.close().await;
        Ok(())
    }
}

/// A `redis-server` child process on a free loopback port, with persistence off; killed when
/// dropped.
#[derive(Debug)]
pub(crate) struct RedisServer {
    child: Child,
    /// `redis://127.0.0.1:PORT`.
    pub url: String,
    log: Arc<Mutex<VecDeque<String>>>,
    _dir: tempfile::TempDir,
}

impl RedisServer {
    /// Starts `bin` and waits until it accepts connections.
    pub(crate) async fn start(bin: &std::path::Path) -> Result<Self> {
        // Redis has no "any port" setting, so a port is taken from the kernel and given back
        // just before Redis binds it; on loopback nothing else races for it in practice.
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let dir = tempfile::Builder::new()
            .prefix("lattice-bench-redis-")
            .tempdir()?;
        let mut child = Command::new(bin)
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let log = Arc::new(Mutex::new(VecDeque::new()));
        let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(1);
        let stdout = child.stdout.take().context("no stdout")?;
        let stderr = child.stderr.take().context("no stderr")?;
        for stream in [
            Box::new(stdout) as Box<dyn tokio::io::AsyncRead + Unpin + Send>,
            Box::new(stderr),
        ] {
            let log = log.clone();
            let ready = ready_tx.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(stream).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if line.contains("Ready to accept connections") {
                        let _ = ready.try_send(());
                    }
                    if let Ok(mut log) = log.lock() {
                        if log.len() == LOG_LINES {
                            log.pop_front();
                        }
                        log.push_back(line);
                    }
                }
            });
        }
        drop(ready_tx);
        let ready = tokio::time::timeout(REDIS_START_TIMEOUT, ready_rx.recv()).await;
        let server = Self {
            child,
            url: format!("redis://127.0.0.1:{port}"),
            log,
            _dir: dir,
        };
        if !matches!(ready, Ok(Some(()))) {
            bail!(
                "{} did not accept connections within {REDIS_START_TIMEOUT:?}:\n{}",
                bin.display(),
                server.log_tail()
            );
        }
        Ok(server)
    }

    /// Fails if Redis exited since it started.
    pub(crate) fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("redis-server exited with {status}:\n{}", self.log_tail());
        }
        Ok(())
    }

    /// The last lines Redis printed.
    pub(crate) fn log_tail(&self) -> String {
        self.log
            .lock()
            .map(|l| l.iter().cloned().collect::<Vec<_>>().join("\n"))
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let url = "postgres://lattice:secret@127.0.0.1:5432/lattice_test?sslmode=disable";
        assert_eq!(
            with_database(url, "b"),
            "postgres://lattice:secret@127.0.0.1:5432/b?sslmode=disable"
        );
        assert_eq!(
            redacted(url),
            "postgres://lattice:***@127.0.0.1:5432/lattice_test?sslmode=disable"
        );
        assert_eq!(redacted("postgres://h/db"), "postgres://h/db");
    }
}
