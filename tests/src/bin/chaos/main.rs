//! `chaos`: the server under faults and attacks, run by `cargo xtask chaos` (issue 17).
//!
//! Every scenario runs the release `lattice` binary as a child process on loopback, on a real
//! SQLite file or the real PostgreSQL, with real clients over WebSockets and HTTP:
//!
//! - `kill9-sqlite`, `kill9-postgres`: writers that keep books of every acknowledgement
//!   ([`ledger`]) while the server is SIGKILLed at random moments and restarted on the same
//!   database; every acknowledged edit must be in the stored documents afterwards.
//! - `pg-restart`: PostgreSQL stops under write load and starts again; nothing may be
//!   acknowledged while it is down, nothing acknowledged may be lost, and the same server
//!   process must resume on its own.
//! - `disk-full`: the SQLite file on a small tmpfs that fills up; the same three checks.
//! - `attacks`: every attack class of issue 17 against one server while a bystander keeps
//!   editing another document; its p99 acknowledgement latency must stay under 100 ms and the
//!   server's RSS within a documented bound.
//!
//! Usage: `chaos --lattice-bin PATH [--quick] [--rounds N] [--attack-seconds S]
//! [--backend sqlite|postgres|both] [--only SCENARIO,…] [--rss-bound-mib N] [--seed N]
//! [--keep-dir]` (`--keep-dir` keeps the scratch directory with every server's log).
//! It prints a summary table and exits non-zero if any check failed, naming the scenario.
//! Nothing is skipped: a scenario that cannot run (no PostgreSQL, no root for the tmpfs) fails.

mod attacks;
mod disk;
mod kill9;
mod lattice;
mod ledger;
mod pg;
mod report;
mod wire;

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::lattice::Keys;
use crate::report::Outcome;

/// Scenario names, in the order they run.
const SCENARIOS: &[&str] = &[
    "kill9-sqlite",
    "kill9-postgres",
    "pg-restart",
    "disk-full",
    "attacks",
];

/// The peak RSS the attacks may cause, unless `--rss-bound-mib` says otherwise (docs/BENCHMARKS.md,
/// "Chaos suite", says where it comes from).
const DEFAULT_RSS_BOUND_MIB: u64 = 300;

/// Everything a scenario needs.
#[derive(Debug)]
pub struct Ctx {
    pub binary: PathBuf,
    pub keys: Keys,
    /// Scratch space, removed at the end.
    pub dir: PathBuf,
    pub quick: bool,
    pub rounds: usize,
    pub attack_time: Duration,
    pub rss_bound_mib: u64,
    rng: Mutex<u64>,
}

impl Ctx {
    /// A pseudo-random number below `n` (xorshift; the seed is printed, so a run can be
    /// repeated).
    pub fn below(&self, n: u64) -> u64 {
        let mut s = match self.rng.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        *s ^= *s << 13;
        *s ^= *s >> 7;
        *s ^= *s << 17;
        *s % n.max(1)
    }
}

#[derive(Debug)]
struct Args {
    binary: PathBuf,
    quick: bool,
    rounds: Option<usize>,
    attack_seconds: Option<u64>,
    backend: String,
    only: Option<Vec<String>>,
    rss_bound_mib: u64,
    seed: Option<u64>,
    keep_dir: bool,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        binary: PathBuf::new(),
        quick: false,
        rounds: None,
        attack_seconds: None,
        backend: "both".into(),
        only: None,
        rss_bound_mib: DEFAULT_RSS_BOUND_MIB,
        seed: None,
        keep_dir: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().with_context(|| format!("{name} needs a value"));
        match a.as_str() {
            "--lattice-bin" => args.binary = PathBuf::from(value("--lattice-bin")?),
            "--quick" => args.quick = true,
            "--rounds" => args.rounds = Some(value("--rounds")?.parse()?),
            "--attack-seconds" => args.attack_seconds = Some(value("--attack-seconds")?.parse()?),
            "--backend" => args.backend = value("--backend")?,
            "--only" => {
                args.only = Some(
                    value("--only")?
                        .split(',')
                        .map(|s| s.trim().to_owned())
                        .collect(),
                )
            }
            "--rss-bound-mib" => args.rss_bound_mib = value("--rss-bound-mib")?.parse()?,
            "--seed" => args.seed = Some(value("--seed")?.parse()?),
            "--keep-dir" => args.keep_dir = true,
            other => {
                bail!("unknown argument {other:?} (see the top of tests/src/bin/chaos/main.rs)")
            }
        }
    }
    if args.binary.as_os_str().is_empty() {
        bail!("--lattice-bin PATH is required (cargo xtask chaos passes the release binary)");
    }
    if !["sqlite", "postgres", "both"].contains(&args.backend.as_str()) {
        bail!("--backend must be sqlite, postgres or both");
    }
    if let Some(only) = &args.only {
        for s in only {
            if !SCENARIOS.contains(&s.as_str()) {
                bail!(
                    "--only: unknown scenario {s:?}; scenarios: {}",
                    SCENARIOS.join(", ")
                );
            }
        }
    }
    Ok(args)
}

/// Which scenarios a backend choice runs.
fn selected(args: &Args) -> Vec<&'static str> {
    SCENARIOS
        .iter()
        .copied()
        .filter(|s| match args.backend.as_str() {
            "sqlite" => !matches!(*s, "kill9-postgres" | "pg-restart"),
            "postgres" => !matches!(*s, "kill9-sqlite" | "disk-full"),
            _ => true,
        })
        .filter(|s| args.only.as_ref().is_none_or(|o| o.iter().any(|x| x == s)))
        .collect()
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}

async fn run_scenario(ctx: &std::sync::Arc<Ctx>, name: &'static str) -> Outcome {
    let ctx = ctx.clone();
    let task = tokio::spawn(async move {
        match name {
            "kill9-sqlite" => kill9::run(&ctx, kill9::Backend::Sqlite).await,
            "kill9-postgres" => kill9::run(&ctx, kill9::Backend::Postgres).await,
            "pg-restart" => pg::run(&ctx).await,
            "disk-full" => disk::run(&ctx).await,
            "attacks" => attacks::run(&ctx).await,
            other => bail!("no scenario {other}"),
        }
    });
    match task.await {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(e)) => Outcome::failed(name, format!("could not run: {e:#}")),
        Err(e) => Outcome::failed(name, format!("panicked: {e}")),
    }
}

fn main() -> Result<()> {
    let args = parse_args()?;
    let binary = std::fs::canonicalize(&args.binary)
        .with_context(|| format!("no lattice binary at {}", args.binary.display()))?;
    let seed = args.seed.unwrap_or_else(|| rand::random::<u64>() | 1);
    let dir = tempfile::Builder::new()
        .prefix("lattice-chaos-")
        .tempdir()
        .context("scratch directory")?;
    let ctx = std::sync::Arc::new(Ctx {
        binary,
        keys: Keys::generate()?,
        dir: dir.path().to_path_buf(),
        quick: args.quick,
        rounds: args.rounds.unwrap_or(if args.quick { 3 } else { 20 }),
        attack_time: Duration::from_secs(args.attack_seconds.unwrap_or(if args.quick {
            2
        } else {
            10
        })),
        rss_bound_mib: args.rss_bound_mib,
        rng: Mutex::new(seed),
    });
    let scenarios = selected(&args);
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let load_before = load_average();
    eprintln!(
        "chaos: {} ({}), scenarios {}, {} kill rounds, attacks {} s each, seed {seed}; \
         {cores} cores, load average {load_before}",
        ctx.binary.display(),
        if ctx.quick { "quick" } else { "full" },
        scenarios.join(", "),
        ctx.rounds,
        ctx.attack_time.as_secs(),
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let started = Instant::now();
    let mut outcomes = Vec::new();
    for name in &scenarios {
        eprintln!("\n==> {name}");
        let t = Instant::now();
        let mut outcome = rt.block_on(run_scenario(&ctx, name));
        outcome.seconds = t.elapsed().as_secs_f64();
        eprintln!(
            "<== {name}: {} in {:.1}s",
            if outcome.failures.is_empty() {
                "ok"
            } else {
                "FAILED"
            },
            outcome.seconds
        );
        outcomes.push(outcome);
    }
    // Writer threads and servers end with their scenarios; nothing of a scenario outlives it.
    rt.shutdown_timeout(Duration::from_secs(5));
    let load_after = load_average();
    println!(
        "{}",
        report::render(
            &outcomes,
            &format!(
                "{} run, seed {seed}, {:.0} s; {cores} cores, load average {load_before} at the start, {load_after} at the end",
                if ctx.quick { "quick" } else { "full" },
                started.elapsed().as_secs_f64()
            )
        )
    );
    if args.keep_dir {
        let kept = dir.keep();
        eprintln!("scratch directory kept (server logs): {}", kept.display());
    } else {
        drop(dir);
    }
    let failed: Vec<&str> = outcomes
        .iter()
        .filter(|o| !o.failures.is_empty())
        .map(|o| o.scenario.as_str())
        .collect();
    if !failed.is_empty() {
        eprintln!("chaos FAILED: {}", failed.join(", "));
        std::process::exit(1);
    }
    Ok(())
}
