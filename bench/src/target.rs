//! The servers under test: Lattice (release binary, fresh SQLite file per start), the Node peers
//! (launchers in `bench/peers/`, installed by xtask into `target/bench/peers`) and Y-Sweet (the
//! `y-sweet` binary xtask installs from crates.io into `target/bench/peers/y-sweet`, on a fresh
//! folder per start; see [`crate::ysweet`]). Each start is a fresh process, so no scenario sees
//! another's documents or memory. The `cluster` scenario's nodes are Lattice on a database it
//! creates ([`RunningServer::start_lattice_on`]).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::client::{Endpoint, Protocol, YjsPath};

/// Per-connection rate limits Lattice is started with: its defaults (500 messages/s, burst
/// 2,000; 4 MiB/s) are for untrusted clients and would throttle a bench writer.
pub(crate) const LATTICE_RATE_FLAGS: &[&str] = &[
    "--messages-per-second",
    "1000000000",
    "--message-burst",
    "1000000000",
    "--bytes-per-second",
    "4000000000",
];

/// Y-Sweet's checkpoint interval (its default): a changed document is written to its folder at
/// most this often, and on SIGINT.
pub(crate) const YSWEET_CHECKPOINT_SECS: &str = "10";

/// How long a server may take to print its ready line.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Lines of a server's output kept for error messages.
const LOG_LINES: usize = 40;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ServerKind {
    Lattice,
    Hocuspocus,
    YWebsocket,
    YSweet,
}

/// One column of the results: a server and the protocol the bench speaks to it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Target {
    /// Stable id used in JSON and on the command line (`--targets`).
    pub id: &'static str,
    pub label: &'static str,
    pub server: ServerKind,
    pub protocol: Protocol,
}

impl Target {
    /// Whether this is a peer (a server Lattice is compared with).
    pub(crate) fn is_peer(&self) -> bool {
        self.server != ServerKind::Lattice
    }
}

pub(crate) const TARGETS: &[Target] = &[
    Target {
        id: "lattice",
        label: "Lattice (native)",
        server: ServerKind::Lattice,
        protocol: Protocol::Native,
    },
    Target {
        id: "lattice-yjs",
        label: "Lattice (y-websocket)",
        server: ServerKind::Lattice,
        protocol: Protocol::YWebsocket,
    },
    // Lattice's `/hocuspocus` endpoint with the Hocuspocus protocol: measured in `fanout`
    // only (`Prepared::supports`), next to Hocuspocus itself.
    Target {
        id: "lattice-hocuspocus",
        label: "Lattice (Hocuspocus)",
        server: ServerKind::Lattice,
        protocol: Protocol::Hocuspocus,
    },
    Target {
        id: "hocuspocus",
        label: "Hocuspocus",
        server: ServerKind::Hocuspocus,
        protocol: Protocol::Hocuspocus,
    },
    Target {
        id: "y-websocket",
        label: "y-websocket server",
        server: ServerKind::YWebsocket,
        protocol: Protocol::YWebsocket,
    },
    Target {
        id: "y-sweet",
        label: "Y-Sweet",
        server: ServerKind::YSweet,
        protocol: Protocol::YWebsocket,
    },
];

/// Where the programs under test are.
#[derive(Clone, Debug)]
pub(crate) struct Tools {
    pub lattice_bin: PathBuf,
    /// Holds the launchers and their `node_modules`.
    pub peers_dir: PathBuf,
    /// The `y-sweet` binary ([`crate::ysweet::VERSION`]).
    pub ysweet_bin: PathBuf,
}

/// A server process started for one scenario on one target; killed when dropped.
#[derive(Debug)]
pub(crate) struct RunningServer {
    child: Child,
    pub target: Target,
    tools: Tools,
    pub pid: u32,
    pub endpoint: Endpoint,
    /// What the server reported about itself (package versions for peers, the version line for
    /// Lattice).
    pub versions: serde_json::Value,
    log: Arc<Mutex<VecDeque<String>>>,
    _dir: Option<tempfile::TempDir>,
}

impl RunningServer {
    /// A fresh server: Lattice on a new SQLite file, Y-Sweet on a new folder, the Node peers in
    /// memory.
    pub(crate) async fn start(target: &Target, tools: &Tools) -> Result<Self> {
        Self::start_with(target, tools, None).await
    }

    /// Another server of the same target, keeping its documents in `storage` (a folder that
    /// outlives the process): Lattice's SQLite file, Y-Sweet's folder, Hocuspocus with its
    /// SQLite extension, the y-websocket server with its LevelDB persistence (`YPERSISTENCE`).
    /// The scenarios that restart a server (`cold`) use this; the others measure the Node peers
    /// in memory.
    pub(crate) async fn start_persistent(&self, storage: &Path) -> Result<Self> {
        Self::start_with(&self.target, &self.tools, Some(storage)).await
    }

    async fn start_with(target: &Target, tools: &Tools, storage: Option<&Path>) -> Result<Self> {
        let mut dir = None;
        // Lattice and Y-Sweet always persist: to `storage`, else to a folder of their own.
        let mut own_storage = |storage: Option<&Path>| -> Result<PathBuf> {
            if let Some(s) = storage {
                return Ok(s.to_path_buf());
            }
            let d = tempfile::Builder::new()
                .prefix("lattice-bench-")
                .tempdir()?;
            let path = d.path().to_path_buf();
            dir = Some(d);
            Ok(path)
        };
        let mut versions = None;
        let cmd = match target.server {
            ServerKind::Lattice => {
                let db_dir = own_storage(storage)?;
                let db = format!("sqlite://{}", db_dir.join("bench.db").display());
                let mut c = Command::new(&tools.lattice_bin);
                // gRPC on a port of its own (`http-fanout`'s gRPC readers; idle otherwise).
                c.args([
                    "serve",
                    "--bind",
                    "127.0.0.1:0",
                    "--grpc-bind",
                    "127.0.0.1:0",
                    "--database-url",
                    &db,
                    "--no-auth",
                ])
                .args(LATTICE_RATE_FLAGS)
                .env("RUST_LOG", "warn");
                c
            }
            ServerKind::YSweet => {
                let store = own_storage(storage)?.join("y-sweet");
                versions = Some(ysweet_version(&tools.ysweet_bin).await?);
                let mut c = Command::new(&tools.ysweet_bin);
                // No `--auth`: no server token, every document open to every client (the other
                // servers run without authentication too). The checkpoint interval is its
                // default, 10 s, named so the report's description stays true.
                c.arg("serve")
                    .arg(&store)
                    .args(["--host", "127.0.0.1", "--port", "0"])
                    .args(["--checkpoint-freq-seconds", YSWEET_CHECKPOINT_SECS])
                    .env("RUST_LOG", "warn")
                    .env("NO_COLOR", "1")
                    .env_remove("Y_SWEET_AUTH")
                    .env_remove("Y_SWEET_STORE")
                    .env_remove("Y_SWEET_URL_PREFIX");
                c
            }
            ServerKind::Hocuspocus | ServerKind::YWebsocket => {
                let script = if target.server == ServerKind::Hocuspocus {
                    "hocuspocus.mjs"
                } else {
                    "y-websocket.mjs"
                };
                let mut c = Command::new("node");
                c.arg(tools.peers_dir.join(script))
                    .arg("0")
                    .current_dir(&tools.peers_dir);
                if let Some(s) = storage {
                    c.env("LATTICE_BENCH_STORAGE", s);
                }
                c
            }
        };
        let mut server = Self::spawn(cmd, target, tools, dir).await?;
        if let Some(v) = versions {
            server.versions = v;
        }
        Ok(server)
    }

    /// A Lattice node (the native target) on `database_url` with `extra` flags after the
    /// usual ones: the `cluster` scenario's nodes, sharing one PostgreSQL database and Redis.
    pub(crate) async fn start_lattice_on(
        tools: &Tools,
        database_url: &str,
        extra: &[String],
    ) -> Result<Self> {
        let target = TARGETS
            .iter()
            .find(|t| t.server == ServerKind::Lattice && t.protocol == Protocol::Native)
            .context("no native Lattice target")?;
        let mut cmd = Command::new(&tools.lattice_bin);
        cmd.args([
            "serve",
            "--bind",
            "127.0.0.1:0",
            "--database-url",
            database_url,
            "--no-auth",
        ])
        .args(LATTICE_RATE_FLAGS)
        .args(extra)
        .env("RUST_LOG", "warn");
        Self::spawn(cmd, target, tools, None).await
    }

    /// Starts `cmd` and waits for its ready line.
    async fn spawn(
        mut cmd: Command,
        target: &Target,
        tools: &Tools,
        dir: Option<tempfile::TempDir>,
    ) -> Result<Self> {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", target.label))?;
        let pid = child.id().context("the server exited at once")?;
        let log = Arc::new(Mutex::new(VecDeque::new()));
        let stdout = child.stdout.take().context("no stdout")?;
        let stderr = child.stderr.take().context("no stderr")?;
        let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<String>(4);
        for (stream, ready) in [
            (
                Box::new(stdout) as Box<dyn tokio::io::AsyncRead + Unpin + Send>,
                Some(ready_tx),
            ),
            (Box::new(stderr), None),
        ] {
            let log = log.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(stream).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if let Some(tx) = &ready
                        && (line.contains("listening on http://")
                            || line.starts_with("ready ")
                            || crate::ysweet::parse_ready(&line).is_some())
                    {
                        let _ = tx.send(line.clone()).await;
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
        let line = tokio::time::timeout(START_TIMEOUT, ready_rx.recv())
            .await
            .ok()
            .flatten();
        let Some(line) = line else {
            let tail = tail(&log);
            bail!(
                "{} exited or did not print its ready line within {START_TIMEOUT:?}:\n{tail}",
                target.label
            );
        };
        let (addr, versions) = parse_ready(&line)
            .with_context(|| format!("{}: cannot parse its ready line {line:?}", target.label))?;
        let endpoint = Endpoint::new(
            target.protocol,
            addr,
            match target.server {
                ServerKind::Lattice if target.protocol == Protocol::Hocuspocus => {
                    YjsPath::Prefix("/hocuspocus")
                }
                ServerKind::Lattice => YjsPath::Prefix("/yjs"),
                ServerKind::YSweet => YjsPath::YSweet(Default::default()),
                ServerKind::Hocuspocus | ServerKind::YWebsocket => YjsPath::Prefix(""),
            },
        );
        Ok(Self {
            child,
            target: *target,
            tools: tools.clone(),
            pid,
            endpoint,
            versions,
            log,
            _dir: dir,
        })
    }

    /// Where a Lattice server serves gRPC: the address on its banner's `gRPC:` line (printed
    /// with the ready line).
    pub(crate) async fn grpc_addr(&self) -> Result<std::net::SocketAddr> {
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        loop {
            let found = self.log.lock().ok().and_then(|log| {
                log.iter().find_map(|l| {
                    let rest = l.trim_start().strip_prefix("gRPC:")?.trim();
                    let addr = rest.strip_prefix("http://")?.split_whitespace().next()?;
                    addr.parse().ok()
                })
            });
            if let Some(addr) = found {
                return Ok(addr);
            }
            if tokio::time::Instant::now() > deadline {
                bail!("{} printed no gRPC address", self.target.label);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The server's resident memory (`VmRSS` of /proc/PID/status), in bytes.
    pub(crate) fn rss_bytes(&self) -> Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))
            .context("cannot read the server's /proc status")?;
        let kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .context("no VmRSS in /proc/PID/status")?;
        Ok(kb * 1024)
    }

    /// Fails if the server exited (crashed) since it started, with its last output.
    pub(crate) fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("the server exited with {status}:\n{}", tail(&self.log));
        }
        Ok(())
    }

    /// The last lines the server printed.
    pub(crate) fn log_tail(&self) -> String {
        tail(&self.log)
    }

    /// Stops the server the way an operator would (SIGTERM; Y-Sweet's `serve` stops cleanly
    /// only on Ctrl-C, SIGINT, and dies on SIGTERM without its last checkpoint) and waits until
    /// it has exited, so that what it persists on shutdown is on disk. Fails if it does not exit
    /// cleanly.
    pub(crate) async fn terminate(mut self, timeout: Duration) -> Result<()> {
        self.check_alive()?;
        let pid = rustix::process::Pid::from_raw(self.pid as i32).context("bad pid")?;
        let signal = match self.target.server {
            ServerKind::YSweet => rustix::process::Signal::INT,
            _ => rustix::process::Signal::TERM,
        };
        rustix::process::kill_process(pid, signal).context("cannot signal the server")?;
        let status = tokio::time::timeout(timeout, self.child.wait())
            .await
            .with_context(|| {
                format!(
                    "{} did not exit within {timeout:?} of {signal:?}",
                    self.target.label
                )
            })??;
        if !status.success() {
            bail!(
                "{} exited with {status} on {signal:?}:\n{}",
                self.target.label,
                tail(&self.log)
            );
        }
        Ok(())
    }

    pub(crate) async fn stop(mut self) -> Result<()> {
        self.check_alive()?;
        self.child.kill().await?;
        Ok(())
    }
}

/// `{"y-sweet": VERSION}` from `y-sweet version`; a binary of another version fails the bench
/// (it would not be the server the report names).
async fn ysweet_version(bin: &Path) -> Result<serde_json::Value> {
    let out = tokio::time::timeout(START_TIMEOUT, Command::new(bin).arg("version").output())
        .await
        .context("`y-sweet version` hung")?
        .with_context(|| {
            format!(
                "cannot run {} (`cargo xtask bench` installs it)",
                bin.display()
            )
        })?;
    let version = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if version != crate::ysweet::VERSION {
        bail!(
            "{} is version {version:?}, the bench wants {}",
            bin.display(),
            crate::ysweet::VERSION
        );
    }
    Ok(serde_json::json!({ "y-sweet": version }))
}

fn tail(log: &Mutex<VecDeque<String>>) -> String {
    log.lock()
        .map(|l| l.iter().cloned().collect::<Vec<_>>().join("\n"))
        .unwrap_or_default()
}

/// `lattice 0.1.0 listening on http://127.0.0.1:PORT`, `ready PORT {json}` (Node peers) or
/// Y-Sweet's connection string (its versions come from `y-sweet version`).
fn parse_ready(line: &str) -> Option<(SocketAddr, serde_json::Value)> {
    if let Some(addr) = crate::ysweet::parse_ready(line) {
        return Some((addr, serde_json::Value::Null));
    }
    if let Some(rest) = line.strip_prefix("ready ") {
        let (port, json) = rest.split_once(' ')?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port.parse().ok()?));
        return Some((addr, serde_json::from_str(json).ok()?));
    }
    let at = line.find("listening on http://")?;
    let addr = line[at + "listening on http://".len()..]
        .split_whitespace()
        .next()?
        .trim_end_matches('/')
        .parse()
        .ok()?;
    let version = line[..at].trim();
    let version = version[version.find("lattice")?..].trim().to_owned();
    Some((addr, serde_json::json!({ "lattice": version })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_lines() {
        let (addr, v) = parse_ready(r#"ready 4242 {"yjs":"13.6.33"}"#).expect("peer line");
        assert_eq!(addr.port(), 4242);
        assert_eq!(v["yjs"], "13.6.33");
        let (addr, v) = parse_ready("2026 INFO lattice 0.1.0 listening on http://127.0.0.1:9000")
            .expect("lattice");
        assert_eq!(addr.port(), 9000);
        assert_eq!(v["lattice"], "lattice 0.1.0");
        let (addr, _) = parse_ready("   ys://127.0.0.1:9100").expect("y-sweet");
        assert_eq!(addr.port(), 9100);
    }
}
