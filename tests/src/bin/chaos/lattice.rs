//! The server under test: the release `lattice` binary as a child process on loopback, its log
//! in a file (the chaos checks read it), its memory sampled from `/proc`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use lattice_server::auth::{KeySet, Scope};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

use crate::{Ctx, wire};

/// How long a server may take to print its address and answer `/healthz`.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The signing key of one chaos run, and tokens from it.
#[derive(Clone, Debug)]
pub struct Keys {
    /// `kid:secret`, as `--auth-secret` takes it.
    pub secret: String,
    keys: KeySet,
}

impl Keys {
    pub fn generate() -> Result<Keys> {
        let bytes: [u8; 32] = rand::random();
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let secret = format!("chaos:{hex}");
        let keys = KeySet::parse(std::slice::from_ref(&secret)).context("chaos key")?;
        Ok(Keys { secret, keys })
    }

    /// A token for `sub` on `docs` (patterns), valid for two hours.
    pub fn token(&self, sub: &str, docs: &[&str], scope: Scope) -> Result<String> {
        let docs: Vec<String> = docs.iter().map(|d| (*d).to_owned()).collect();
        Ok(self
            .keys
            .mint(sub, &docs, scope, Duration::from_secs(7_200), None)?)
    }
}

/// How to start a server; kept so it can be started again on the same database and port.
#[derive(Clone, Debug)]
pub(crate) struct Spec {
    pub binary: PathBuf,
    pub database_url: String,
    /// `127.0.0.1:PORT`; the same port on every restart, so clients reconnect on their own.
    pub bind: SocketAddr,
    pub secret: String,
    /// What every start of this server printed (its log), appended.
    pub log: PathBuf,
}

impl Spec {
    /// A server of this run's binary and secret on `database_url`, on a free port, logging to
    /// `log_name` in the run's scratch folder.
    pub(crate) fn new(ctx: &Ctx, database_url: String, log_name: &str) -> Result<Self> {
        Ok(Self {
            binary: ctx.binary.clone(),
            database_url,
            bind: reserve_port()?,
            secret: ctx.keys.secret.clone(),
            log: ctx.dir.join(log_name),
        })
    }
}

/// A running `lattice serve`.
#[derive(Debug)]
pub(crate) struct Lattice {
    pub addr: SocketAddr,
    child: Child,
}

impl Lattice {
    pub(crate) async fn start(spec: &Spec) -> Result<Lattice> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&spec.log)
            .with_context(|| format!("cannot open {}", spec.log.display()))?;
        let mut child = Command::new(&spec.binary)
            .arg("serve")
            .arg("--bind")
            .arg(spec.bind.to_string())
            .arg("--database-url")
            .arg(&spec.database_url)
            .env("LATTICE_AUTH_SECRET", &spec.secret)
            .env_remove("LATTICE_NO_AUTH")
            .env(
                "RUST_LOG",
                std::env::var("LATTICE_CHAOS_SERVER_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", spec.binary.display()))?;
        // The server logs to standard output: every line goes to the log file, after the
        // address has been read off the banner.
        let stdout = child.stdout.take().context("no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let mut copy = tokio::fs::OpenOptions::new()
            .append(true)
            .open(&spec.log)
            .await?;
        let addr = tokio::time::timeout(START_TIMEOUT, async {
            while let Some(line) = lines.next_line().await? {
                copy.write_all(format!("{line}\n").as_bytes()).await?;
                if let Some(rest) = line.split("listening on http://").nth(1) {
                    return Ok(rest.trim().parse::<SocketAddr>()?);
                }
            }
            bail!(
                "lattice exited before listening (log: {})",
                spec.log.display()
            )
        })
        .await
        .context("lattice did not start in time")??;
        // Keep draining stdout so the child never blocks on a full pipe.
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                let _ = copy.write_all(format!("{line}\n").as_bytes()).await;
            }
        });
        wire::wait_healthy(addr, START_TIMEOUT).await?;
        Ok(Lattice { addr, child })
    }

    pub(crate) fn pid(&self) -> Result<u32> {
        self.child.id().context("the server has exited")
    }

    /// Whether the process is still running (it did not exit, crash or abort).
    pub(crate) fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGKILL: no flush, no goodbye.
    pub(crate) async fn kill9(mut self) -> Result<()> {
        self.child.start_kill()?;
        self.child.wait().await?;
        Ok(())
    }

    /// SIGTERM and wait for a clean exit.
    pub(crate) async fn terminate(mut self) -> Result<()> {
        let pid = self.pid()?;
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()?;
        if !status.success() {
            bail!("kill -TERM {pid} failed");
        }
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .context("the server did not exit within 30 s of SIGTERM")??;
        if !status.success() {
            bail!("the server exited with {status} after SIGTERM");
        }
        Ok(())
    }
}

/// A port outside the ephemeral range (so no outgoing connection takes it while the server is
/// down between a kill and its restart) that is free now.
pub(crate) fn reserve_port() -> Result<SocketAddr> {
    for _ in 0..200 {
        let port = 20_000 + rand::random::<u16>() % 10_000;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        if std::net::TcpListener::bind(addr).is_ok() {
            return Ok(addr);
        }
    }
    bail!("no free port between 20000 and 30000")
}

/// `VmRSS` of `pid` in KiB.
pub(crate) fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("no VmRSS")
}

/// Samples a process's RSS every few milliseconds on its own thread and keeps the peak since
/// the last [`RssSampler::take_peak`].
#[derive(Debug)]
pub(crate) struct RssSampler {
    peak_kib: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RssSampler {
    pub(crate) const INTERVAL: Duration = Duration::from_millis(10);

    pub(crate) fn start(pid: u32) -> RssSampler {
        let peak_kib = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (peak_kib, stop) = (peak_kib.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(kib) = rss_kib(pid) {
                        peak_kib.fetch_max(kib, Ordering::Relaxed);
                    }
                    std::thread::sleep(Self::INTERVAL);
                }
            })
        };
        RssSampler {
            peak_kib,
            stop,
            thread: Some(thread),
        }
    }

    /// The highest RSS seen since the last call (or the start), and starts over.
    pub(crate) fn take_peak(&self) -> u64 {
        self.peak_kib.swap(0, Ordering::Relaxed)
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The server log, for the checks that the right error was logged.
pub(crate) fn log_text(path: &Path) -> String {
    std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}
