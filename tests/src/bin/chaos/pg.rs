//! PostgreSQL goes away under write load and comes back: nothing may be acknowledged while it
//! is down, nothing acknowledged may be lost, and the same server process must resume on its
//! own (new acknowledgements, `/readyz` 200 again).
//!
//! The database is a private PostgreSQL cluster made for the run (`initdb` of the installed
//! PostgreSQL, on a port of its own), not the machine's shared cluster: stopping that one would
//! fail every other test using it at the time.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use lattice_server::auth::Scope;

use crate::Ctx;
use crate::lattice::{self, Lattice, Spec, reserve_port};
use crate::ledger::{self, Crew, Pace};
use crate::report::{Outcome, ms};
use crate::wire;

/// Acknowledgements arriving this soon after PostgreSQL stopped may be for commits that
/// finished just before it did.
const GRACE: Duration = Duration::from_millis(250);

/// The store's default `busy_timeout`: how long a write waits for a pooled connection.
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// One outage: how PostgreSQL stops and for how long.
#[derive(Clone, Copy, Debug)]
struct Outage {
    /// `pg_ctl stop -m MODE`: `fast` (clean shutdown) or `immediate` (a crash: recovery at the
    /// next start).
    mode: &'static str,
    down: Duration,
}

pub(crate) async fn run(ctx: &Ctx) -> Result<Outcome> {
    let mut out = Outcome::new("pg-restart");
    let pg = PrivateCluster::create(&ctx.dir)?;
    pg.start()?;
    let spec = Spec::new(ctx, pg.url(), "pg-restart.log")?;
    let mut server = Lattice::start(&spec).await?;
    let pid = server.pid()?;
    let crew = Crew::start(
        server.addr,
        &ctx.keys,
        "chaos/pg",
        6,
        3,
        Pace {
            edit_every: Duration::from_millis(5),
            window: 16,
            padding: 0,
        },
    )?;
    // Shorter than the store's `busy_timeout` (30 s, how long a write waits for a
    // connection), a write waits and goes through once PostgreSQL is back; longer, it fails.
    let outages: &[Outage] = if ctx.quick {
        &[Outage {
            mode: "fast",
            down: Duration::from_secs(3),
        }]
    } else {
        &[
            Outage {
                mode: "fast",
                down: Duration::from_secs(5),
            },
            Outage {
                mode: "immediate",
                down: BUSY_TIMEOUT + Duration::from_secs(10),
            },
        ]
    };
    for (i, outage) in outages.iter().enumerate() {
        let label = format!(
            "outage {} (stop -m {}, {} s)",
            i + 1,
            outage.mode,
            outage.down.as_secs()
        );
        if crew
            .ack_after(Instant::now(), Duration::from_secs(30))
            .await
            .is_none()
        {
            out.check(false, || format!("{label}: no acknowledgement before it"));
            break;
        }
        tokio::time::sleep(Duration::from_millis(500 + ctx.below(1_000))).await;
        let ends_before = crew.ledger.summary();
        let log_before = lattice::log_text(&spec.log).len();
        pg.stop(outage.mode)?;
        let down_at = Instant::now();
        // While it is down: /readyz, and what the writers see.
        let mut readyz = std::collections::BTreeMap::<u16, u32>::new();
        while down_at.elapsed() < outage.down {
            let status = wire::http_get(server.addr, "/readyz", None)
                .await
                .map_or(0, |r| r.status);
            *readyz.entry(status).or_default() += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let up_at = Instant::now();
        let lies = crew.ledger.acks_between(down_at + GRACE, up_at);
        let lied: usize = lies.iter().map(|a| a.edits).sum();
        out.check(lies.is_empty(), || {
            format!("{label}: {lied} edits acknowledged while PostgreSQL was down")
        });
        let books = crew.ledger.summary();
        let seen = diff(&ends_before, &books);
        let log = lattice::log_text(&spec.log);
        let new_log = log.get(log_before..).unwrap_or_default();
        let error_line = new_log
            .lines()
            .find(|l| l.contains("ERROR"))
            .map(short_log_line);
        out.figure(
            &format!("{label}: /readyz while down"),
            readyz
                .iter()
                .map(|(s, n)| format!("{s} ×{n}"))
                .collect::<Vec<_>>()
                .join(", "),
        );
        out.check(readyz.contains_key(&503), || {
            format!("{label}: /readyz never answered 503 while PostgreSQL was down")
        });
        if outage.down > BUSY_TIMEOUT {
            out.check(error_line.is_some() && seen.contains("close 4011"), || {
                format!("{label}: writes were not refused (no error logged, or no writer closed with 4011)")
            });
        }
        out.figure(
            &format!("{label}: writers saw"),
            if seen.is_empty() {
                "nothing (their commits waited)".to_owned()
            } else {
                seen
            },
        );
        out.figure(
            &format!("{label}: first error logged"),
            error_line.clone().unwrap_or_else(|| "none".into()),
        );
        pg.start()?;
        let started = Instant::now();
        let resumed = crew.ack_after(started, Duration::from_secs(60)).await;
        let ready = wait_ready(server.addr, Duration::from_secs(60)).await;
        match (resumed, ready) {
            (Some(ack), Some(ready)) => out.figure(
                &format!("{label}: back after"),
                format!(
                    "first ack {} ms, /readyz 200 {} ms after PostgreSQL started",
                    ms(ack.saturating_duration_since(started)),
                    ms(ready.saturating_duration_since(started))
                ),
            ),
            _ => out.check(false, || {
                format!(
                    "{label}: the server did not resume by itself within 60 s (acks: {}, /readyz 200: {})",
                    resumed.is_some(),
                    ready.is_some()
                )
            }),
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (specs, books) = (crew.specs.clone(), crew.ledger.clone());
    let drained = crew.finish(Duration::from_secs(20)).await?;
    let reader = ctx.keys.token("auditor", &["chaos/pg/*"], Scope::Read)?;
    ledger::account(&mut out, server.addr, &reader, &specs, &books, drained).await?;
    let same = server.is_running() && server.pid().ok() == Some(pid);
    out.check(same, || {
        "the server process did not survive the outages".into()
    });
    out.figure("server restarts", 0);
    if server.is_running() {
        server.terminate().await?;
    }
    Ok(out)
}

/// What the writers saw between two copies of the books: connection ends and errors.
fn diff(before: &ledger::Summary, after: &ledger::Summary) -> String {
    let mut seen = Vec::new();
    for (k, n) in &after.ends {
        let d = n - before.ends.get(k).copied().unwrap_or(0);
        if d > 0 {
            seen.push(format!("{k} ×{d}"));
        }
    }
    for (k, n) in &after.errors {
        let d = n - before.errors.get(k).copied().unwrap_or(0);
        if d > 0 {
            seen.push(format!("error {k} ×{d}"));
        }
    }
    seen.join(", ")
}

/// A log line without its timestamp and ANSI colours, cut to a readable length.
pub(crate) fn short_log_line(line: &str) -> String {
    let mut clean = String::new();
    let mut in_escape = false;
    for c in line.chars() {
        match (in_escape, c) {
            (false, '\u{1b}') => in_escape = true,
            (true, 'm') => in_escape = false,
            (true, _) => {}
            (false, c) => clean.push(c),
        }
    }
    let clean = clean
        .split_once("ERROR")
        .map_or(clean.as_str(), |(_, rest)| rest)
        .trim();
    let mut s: String = clean.chars().take(160).collect();
    if clean.chars().count() > 160 {
        s.push('…');
    }
    s
}

async fn wait_ready(addr: std::net::SocketAddr, within: Duration) -> Option<Instant> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Ok(r) = wire::http_get(addr, "/readyz", None).await
            && r.status == 200
        {
            return Some(Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

/// A throwaway PostgreSQL cluster of the installed version, owned by `postgres`, trusting
/// local connections, on a port of its own.
#[derive(Debug)]
struct PrivateCluster {
    bin: PathBuf,
    /// Holds the data directory, the socket and the log; removed on drop.
    root: PathBuf,
    port: u16,
}

impl PrivateCluster {
    fn create(scratch: &Path) -> Result<PrivateCluster> {
        let bin = newest_postgres_bin()?;
        let root = scratch.join("pg");
        std::fs::create_dir_all(&root)?;
        // The scratch directory is root's; PostgreSQL runs as `postgres`.
        for dir in [scratch, root.as_path()] {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
        }
        let uid = id("-u")?;
        let gid = id("-g")?;
        std::os::unix::fs::chown(&root, Some(uid), Some(gid))?;
        let port = reserve_port()?.port();
        let cluster = PrivateCluster { bin, root, port };
        cluster.as_postgres(&[
            "initdb",
            "-D",
            &cluster.data(),
            "-A",
            "trust",
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--no-sync",
        ])?;
        Ok(cluster)
    }

    fn data(&self) -> String {
        self.root.join("data").to_string_lossy().into_owned()
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn start(&self) -> Result<()> {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1",
            self.port,
            self.root.display()
        );
        let log = self
            .root
            .join("postgres.log")
            .to_string_lossy()
            .into_owned();
        self.as_postgres(&[
            "pg_ctl",
            "-D",
            &self.data(),
            "-l",
            &log,
            "-o",
            &options,
            "-w",
            "-t",
            "60",
            "start",
        ])
    }

    fn stop(&self, mode: &str) -> Result<()> {
        self.as_postgres(&[
            "pg_ctl",
            "-D",
            &self.data(),
            "-m",
            mode,
            "-w",
            "-t",
            "60",
            "stop",
        ])
    }

    /// Runs one of PostgreSQL's programs as `postgres`.
    fn as_postgres(&self, args: &[&str]) -> Result<()> {
        let program = self.bin.join(args[0]);
        let mut command = if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&program);
            c
        } else {
            let mut c = Command::new("sudo");
            c.args(["-n", "-u", "postgres"]).arg(&program);
            c
        };
        let output = command
            .args(&args[1..])
            .output()
            .with_context(|| format!("cannot run {}", program.display()))?;
        if !output.status.success() {
            bail!(
                "{} failed ({}): {}",
                args.join(" "),
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(())
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        let _ = self.stop("immediate");
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

fn newest_postgres_bin() -> Result<PathBuf> {
    let mut versions: Vec<u32> = std::fs::read_dir("/usr/lib/postgresql")
        .context("PostgreSQL is not installed (/usr/lib/postgresql is missing; cargo xtask chaos installs it)")?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    versions.sort_unstable();
    let v = versions
        .last()
        .context("no PostgreSQL under /usr/lib/postgresql")?;
    Ok(PathBuf::from(format!("/usr/lib/postgresql/{v}/bin")))
}

pub(crate) fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// `id FLAG postgres` as a number.
fn id(flag: &str) -> Result<u32> {
    let out = Command::new("id").args([flag, "postgres"]).output()?;
    if !out.status.success() {
        bail!("no postgres user (is PostgreSQL installed?)");
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().parse()?)
}
