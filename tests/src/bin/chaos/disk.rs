//! A full disk under write load: the SQLite file on a small tmpfs that fills up. Writes must be
//! refused with a clear error in the log, nothing acknowledged may be lost, and once space
//! returns (the filler file is deleted) the same server process must acknowledge writes again.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use lattice_server::auth::Scope;

use crate::Ctx;
use crate::lattice::{self, Lattice, Spec};
use crate::ledger::{self, Crew, Pace};
use crate::pg::{is_root, short_log_line};
use crate::report::{Outcome, count, ms};

const TMPFS_MIB: u64 = 16;
/// The tmpfs size once recovery is proven.
const AFTER_MIB: u64 = 256;
/// Free space left when the filler is written, for the writers to fill.
const HEADROOM_BYTES: u64 = 3 * 1024 * 1024;

pub(crate) async fn run(ctx: &Ctx) -> Result<Outcome> {
    let mut out = Outcome::new("disk-full");
    let mount = Tmpfs::mount(&ctx.dir.join("tmpfs"), TMPFS_MIB)?;
    let url = format!("sqlite://{}", mount.path.join("lattice.db").display());
    // The log stays off the full disk, or the clear error could not be written.
    let spec = Spec::new(ctx, url, "disk-full.log")?;
    let mut server = Lattice::start(&spec).await?;
    let pid = server.pid()?;
    let filler = mount.path.join("filler");
    let free = mount.available()?;
    write_filler(&filler, free.saturating_sub(HEADROOM_BYTES), false)?;
    out.figure(
        "tmpfs",
        format!(
            "{TMPFS_MIB} MiB, {} KiB left for the writers",
            mount.available()? / 1024
        ),
    );
    let crew = Crew::start(
        server.addr,
        &ctx.keys,
        "chaos/disk",
        4,
        2,
        Pace {
            edit_every: Duration::from_millis(5),
            window: 8,
            padding: 2_000,
        },
    )?;
    let started = Instant::now();
    // Until the first failed commit.
    let full_at = loop {
        let log = lattice::log_text(&spec.log);
        if log
            .lines()
            .any(|l| l.contains("ERROR") && l.contains("full"))
        {
            break Instant::now();
        }
        if started.elapsed() > Duration::from_secs(90) {
            let acked = crew.ledger.summary().acked;
            let _ = crew.finish(Duration::from_secs(1)).await;
            bail!(
                "no commit failed with a full disk within 90 s ({acked} edits acknowledged, {} KiB free)",
                mount.available().unwrap_or(0) / 1024
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let acked_until_full = crew.ledger.summary().acked;
    out.figure("acked before the disk filled", count(acked_until_full));
    out.figure(
        "filled after",
        format!("{:.1} s", (full_at - started).as_secs_f64()),
    );
    // Take the last free byte, so no commit can find room anywhere.
    write_filler(&filler, u64::MAX, true)?;
    let topped = Instant::now();
    let books_before = crew.ledger.summary();
    let hold = if ctx.quick {
        Duration::from_secs(2)
    } else {
        Duration::from_secs(5)
    };
    tokio::time::sleep(hold).await;
    let freed_at = Instant::now();
    let while_full = crew.ledger.acks_between(topped, freed_at);
    let acked_while_full: usize = while_full.iter().map(|a| a.edits).sum();
    let books_after = crew.ledger.summary();
    let log = lattice::log_text(&spec.log);
    let first_error = log
        .lines()
        .find(|l| l.contains("ERROR") && l.contains("full"))
        .map(short_log_line)
        .unwrap_or_default();
    out.figure("first error logged", first_error);
    let failed_commits = log.lines().filter(|l| l.contains("commit failed")).count();
    out.figure("commit failures logged", failed_commits);
    out.figure("acks while full (nothing free)", acked_while_full);
    out.check(acked_while_full == 0, || {
        format!("{acked_while_full} edits acknowledged while the disk had no free byte")
    });
    let refused = books_after.ends.get("close 4011").copied().unwrap_or(0)
        - books_before.ends.get("close 4011").copied().unwrap_or(0);
    out.figure("writers closed with 4011 while full", refused);
    out.check(failed_commits > 0 && refused > 0, || {
        "writes were not refused while the disk was full (no failed commit, or no 4011 close)"
            .into()
    });
    std::fs::remove_file(&filler).context("deleting the filler")?;
    let resumed = crew.ack_after(freed_at, Duration::from_secs(60)).await;
    match resumed {
        Some(at) => out.figure(
            "first ack after space returned",
            format!("{} ms", ms(at - freed_at)),
        ),
        None => out.check(false, || {
            "no acknowledgement within 60 s of space returning (no restart)".into()
        }),
    }
    // The writers would fill the freed megabytes again within seconds (the WAL is checkpointed
    // only every 64 MiB): give the rest of the run room, so that draining, the final checks and
    // the restart are not another full disk.
    mount.grow(AFTER_MIB)?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (specs, books) = (crew.specs.clone(), crew.ledger.clone());
    let drained = crew.finish(Duration::from_secs(20)).await?;
    let reader = ctx.keys.token("auditor", &["chaos/disk/*"], Scope::Read)?;
    let live = ledger::account(&mut out, server.addr, &reader, &specs, &books, drained).await?;
    let same = server.is_running() && server.pid().ok() == Some(pid);
    out.check(same, || {
        "the server process did not survive the full disk".into()
    });
    // Reopen the database: what a restart finds must be the same.
    if server.is_running() {
        server.terminate().await?;
    }
    let server = Lattice::start(&spec).await?;
    let reopened = ledger::verify(server.addr, &reader, &specs, &books).await?;
    out.check(
        reopened.lost.is_empty() && reopened.acked == live.acked,
        || {
            format!(
                "after a restart {} acknowledged edits are missing",
                reopened.lost.len()
            )
        },
    );
    server.terminate().await?;
    drop(mount);
    Ok(out)
}

/// Appends zeros to `path`: `bytes` of them, or until the disk is full when `to_full`.
fn write_filler(path: &Path, bytes: u64, to_full: bool) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    let chunk = vec![0u8; 4096];
    let mut written = 0u64;
    while written < bytes {
        let n = chunk.len().min((bytes - written) as usize);
        match f.write_all(&chunk[..n]) {
            Ok(()) => written += n as u64,
            Err(e) if to_full && e.raw_os_error() == Some(28) => break,
            Err(e) => return Err(e).context("writing the filler"),
        }
    }
    let _ = f.sync_all();
    Ok(())
}

/// A tmpfs mounted for the scenario, unmounted on drop (lazily if something still holds it).
#[derive(Debug)]
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    fn mount(path: &Path, mib: u64) -> Result<Tmpfs> {
        if !is_root() {
            bail!("mounting a tmpfs needs root (run cargo xtask chaos as root)");
        }
        std::fs::create_dir_all(path)?;
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(path)
            .status()
            .context("cannot run mount")?;
        if !status.success() {
            bail!("mount -t tmpfs failed ({status})");
        }
        Ok(Tmpfs {
            path: path.to_path_buf(),
        })
    }

    /// Remounts it with `mib` MiB.
    fn grow(&self, mib: u64) -> Result<()> {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,size={mib}m")])
            .arg(&self.path)
            .status()
            .context("cannot run mount")?;
        if !status.success() {
            bail!("mount -o remount,size={mib}m failed ({status})");
        }
        Ok(())
    }

    /// Free bytes, as `df` reports them.
    fn available(&self) -> Result<u64> {
        let out = Command::new("df")
            .args(["-B1", "--output=avail"])
            .arg(&self.path)
            .output()?;
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .nth(1)
            .and_then(|l| l.trim().parse().ok())
            .context("df printed no free space")
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let unmounted = Command::new("umount")
            .arg(&self.path)
            .status()
            .is_ok_and(|s| s.success());
        if !unmounted {
            let _ = Command::new("umount").arg("-l").arg(&self.path).status();
        }
    }
}
