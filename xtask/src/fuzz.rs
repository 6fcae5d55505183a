//! `cargo xtask fuzz [--seconds N] [TARGET…]`: every cargo-fuzz target (or the named ones), each
//! run for N seconds on its committed corpus. Any finding fails the command, naming the target
//! and the input libFuzzer wrote.
//!
//! The fuzz crates (`engine/fuzz`, `server/fuzz`) are workspaces of their own (they need nightly
//! and libFuzzer) and build into `target/fuzz`. libFuzzer reads the committed corpus
//! (`<crate>/corpus/<target>`) and the kept crashers (`<crate>/regressions/<target>`) and writes
//! what it discovers to `target/fuzz/corpus/<target>`, so a run never changes the source tree;
//! that folder carries over between runs. The smoke in `cargo xtask test` starts from the
//! committed corpus alone every time (`target/fuzz/smoke-corpus/<target>` is emptied first),
//! as a fresh clone would. See `engine/fuzz/README.md`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::{cmd, setup};

/// A fuzz crate and how it is built.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct FuzzCrate {
    pub dir: &'static str,
    /// Optimised (cargo-fuzz's default) or a dev build. The server crate instruments sqlx,
    /// axum, tokio, rustls and SQLite's C: optimised, that took 22 CPU-minutes to build (more
    /// than the whole smoke may take); a dev build costs a fraction, and its targets (small
    /// decoders, token checks) still run thousands of inputs a second.
    pub optimized: bool,
}

pub(crate) const ENGINE: FuzzCrate = FuzzCrate {
    dir: "engine/fuzz",
    optimized: true,
};
pub(crate) const SERVER: FuzzCrate = FuzzCrate {
    dir: "server/fuzz",
    optimized: false,
};

/// One cargo-fuzz target and the fuzz crate that holds it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Target {
    pub name: &'static str,
    pub krate: &'static FuzzCrate,
}

/// Every fuzz target, in the order they run.
pub(crate) const TARGETS: &[Target] = &[
    Target {
        name: "client_msg",
        krate: &ENGINE,
    },
    Target {
        name: "yws_frame",
        krate: &ENGINE,
    },
    Target {
        name: "hocus_frame",
        krate: &ENGINE,
    },
    Target {
        name: "yjs_apply",
        krate: &ENGINE,
    },
    Target {
        name: "decode",
        krate: &ENGINE,
    },
    Target {
        name: "store_formats",
        krate: &SERVER,
    },
    Target {
        name: "token",
        krate: &SERVER,
    },
];

/// The targets of the smoke in `cargo xtask test`: the engine's, which decode what peers send.
/// The server crate's targets (`store_formats`, `token`) are left to `cargo xtask fuzz`: their
/// instrumented build (sqlx, axum, tonic, SQLite's C) took more than half the smoke, about
/// four minutes, for 30 s of fuzzing. The normal test run still replays their committed corpus
/// and every kept crasher (`server/tests/fuzz_regressions.rs`).
pub(crate) fn smoke_targets() -> Vec<Target> {
    TARGETS
        .iter()
        .copied()
        .filter(|t| *t.krate == ENGINE)
        .collect()
}

/// Seconds per target of `cargo xtask fuzz` without `--seconds`.
pub(crate) const DEFAULT_SECONDS: u64 = 60;
/// Seconds per target of the smoke in `cargo xtask test`. The whole step, the engine fuzz
/// crate's cold build included, stays within about four minutes on two cores; the build takes
/// most of that (engine/fuzz/README.md has the measurements).
pub(crate) const SMOKE_SECONDS: u64 = 15;

/// Where the fuzz builds, the discovered corpus and the logs go (never the source tree).
const WORK_DIR: &str = "target/fuzz";
/// libFuzzer limits. An input that makes one process hold more than `RSS_LIMIT_MB`, ask for
/// more than `MALLOC_LIMIT_MB` in one allocation, or run longer than `TIMEOUT_SECONDS`, is a
/// finding: inputs are at most a few KiB, so each of these means work out of proportion to
/// the input.
const RSS_LIMIT_MB: u64 = 2048;
const MALLOC_LIMIT_MB: u64 = 512;
const TIMEOUT_SECONDS: u64 = 10;
/// Codegen units for the instrumented builds: cargo-fuzz's default of 1 makes a cold build of
/// the server's dependencies take several minutes on two cores; 16 costs a little speed per
/// execution and saves most of that.
const CODEGEN_UNITS: &str = "16";

/// `cargo xtask fuzz [--seconds N] [TARGET…]`.
pub(crate) fn command(args: &[String]) -> Result<()> {
    let mut seconds = DEFAULT_SECONDS;
    let mut names = Vec::new();
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--seconds" => {
                let n = args.next().context("--seconds needs a number")?;
                seconds = n
                    .parse()
                    .with_context(|| format!("--seconds {n:?} is not a number"))?;
            }
            "--help" | "-h" => {
                eprintln!(
                    "usage: cargo xtask fuzz [--seconds N] [TARGET…]\n\nRuns each fuzz target for N seconds (default {DEFAULT_SECONDS}) on its committed corpus.\ntargets: {}",
                    TARGETS
                        .iter()
                        .map(|t| t.name)
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                return Ok(());
            }
            name if name.starts_with('-') => bail!("unknown flag {name}"),
            name => names.push(name.to_owned()),
        }
    }
    let targets = select(&names)?;
    run(&targets, seconds, Discovered::Kept)
}

fn select(names: &[String]) -> Result<Vec<Target>> {
    if names.is_empty() {
        return Ok(TARGETS.to_vec());
    }
    names
        .iter()
        .map(|n| {
            TARGETS
                .iter()
                .find(|t| t.name == n)
                .copied()
                .with_context(|| {
                    format!(
                        "no fuzz target {n:?}; targets: {}",
                        TARGETS
                            .iter()
                            .map(|t| t.name)
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                })
        })
        .collect()
}

/// What one target's run did, from libFuzzer's final statistics.
#[derive(Debug, Default)]
struct Outcome {
    executions: Option<u64>,
    per_second: Option<u64>,
    coverage: Option<u64>,
    features: Option<u64>,
    new_units: Option<u64>,
    peak_rss_mb: Option<u64>,
}

/// What happens to the inputs a run discovers (`target/fuzz/<folder>/<target>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Discovered {
    /// Kept in `target/fuzz/corpus` and read again by the next run: fuzzing as a habit.
    Kept,
    /// Dropped before the run, so it starts from the committed corpus alone, as on a fresh
    /// clone: the smoke in `cargo xtask test`.
    Dropped,
}

/// Builds the fuzz crates of `targets`, then runs each target for `seconds`. Fails after all
/// of them ran if any found something (or could not run).
pub(crate) fn run(targets: &[Target], seconds: u64, discovered: Discovered) -> Result<()> {
    setup::fuzz_tools()?;
    let mut crates: Vec<&FuzzCrate> = Vec::new();
    for t in targets {
        if !crates.contains(&t.krate) {
            crates.push(t.krate);
        }
    }
    for krate in crates {
        let started = Instant::now();
        cmd("cargo", &build_args("build", krate))?;
        eprintln!(
            "built {} in {:.0}s",
            krate.dir,
            started.elapsed().as_secs_f64()
        );
    }
    let mut failures = Vec::new();
    let mut rows = Vec::new();
    for target in targets {
        let started = Instant::now();
        match run_one(target, seconds, discovered) {
            Ok(outcome) => rows.push((target.name, outcome, started.elapsed().as_secs())),
            Err(e) => failures.push(format!("{}: {e:#}", target.name)),
        }
    }
    eprintln!(
        "\n{:<14} {:>12} {:>9} {:>7} {:>8} {:>6} {:>8} {:>6}",
        "target", "executions", "exec/s", "cov", "features", "new", "peak MB", "secs"
    );
    let show = |n: Option<u64>| n.map_or_else(|| "?".to_owned(), |n| n.to_string());
    for (name, o, secs) in &rows {
        eprintln!(
            "{:<14} {:>12} {:>9} {:>7} {:>8} {:>6} {:>8} {:>6}",
            name,
            show(o.executions),
            show(o.per_second),
            show(o.coverage),
            show(o.features),
            show(o.new_units),
            show(o.peak_rss_mb),
            secs
        );
    }
    if !failures.is_empty() {
        bail!(
            "{} of {} fuzz targets found something:\n  {}",
            failures.len(),
            targets.len(),
            failures.join("\n  ")
        );
    }
    eprintln!(
        "{} fuzz targets, {seconds}s each: no finding",
        targets.len()
    );
    Ok(())
}

/// `cargo +nightly fuzz <verb>` with the options every build and run shares (they must match,
/// or `run` rebuilds).
fn build_args<'a>(verb: &'a str, krate: &FuzzCrate) -> Vec<&'a str> {
    let mut args = vec![
        "+nightly",
        "fuzz",
        verb,
        "--fuzz-dir",
        krate.dir,
        "--target-dir",
        WORK_DIR,
        "--codegen-units",
        CODEGEN_UNITS,
    ];
    if !krate.optimized {
        args.push("--dev");
    }
    args
}

fn run_one(target: &Target, seconds: u64, keep: Discovered) -> Result<Outcome> {
    let work = PathBuf::from(WORK_DIR);
    let discovered = match keep {
        Discovered::Kept => work.join("corpus").join(target.name),
        Discovered::Dropped => {
            let dir = work.join("smoke-corpus").join(target.name);
            if dir.exists() {
                std::fs::remove_dir_all(&dir)
                    .with_context(|| format!("cannot empty {}", dir.display()))?;
            }
            dir
        }
    };
    let artifacts = work.join("artifacts").join(target.name);
    let logs = work.join("logs");
    for dir in [&discovered, &artifacts, &logs] {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let log_path = logs.join(format!("{}.log", target.name));
    let mut args: Vec<String> = build_args("run", target.krate)
        .into_iter()
        .map(str::to_owned)
        .collect();
    args.push(target.name.to_owned());
    // libFuzzer writes new inputs to the first folder and only reads the others.
    args.push(path_arg(&discovered));
    for kept in ["corpus", "regressions"] {
        let dir = Path::new(target.krate.dir).join(kept).join(target.name);
        if dir.is_dir() {
            args.push(path_arg(&dir));
        } else if kept == "corpus" {
            bail!("{} has no committed corpus", dir.display());
        }
    }
    args.extend([
        "--".to_owned(),
        format!("-max_total_time={seconds}"),
        format!("-rss_limit_mb={RSS_LIMIT_MB}"),
        format!("-malloc_limit_mb={MALLOC_LIMIT_MB}"),
        format!("-timeout={TIMEOUT_SECONDS}"),
        format!("-artifact_prefix={}/", path_arg(&artifacts)),
        "-print_final_stats=1".to_owned(),
    ]);
    eprintln!(
        "\n==> fuzz {} for {seconds}s (log: {})",
        target.name,
        log_path.display()
    );
    eprintln!("$ cargo {}", args.join(" "));
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("cannot create {}", log_path.display()))?;
    let status = Command::new("cargo")
        .args(&args)
        .envs(setup::exported())
        .stdout(Stdio::from(log.try_clone()?))
        .stderr(Stdio::from(log))
        .status()
        .context("could not start cargo fuzz")?;
    let text = std::fs::read_to_string(&log_path).unwrap_or_default();
    let outcome = parse(&text);
    if status.success() {
        eprintln!(
            "<== {}: {} executions, cov {}, no finding",
            target.name,
            outcome.executions.unwrap_or(0),
            outcome.coverage.unwrap_or(0)
        );
        return Ok(outcome);
    }
    let tail: Vec<&str> = text.lines().rev().take(60).collect();
    eprintln!("--- last lines of {} ---", log_path.display());
    for line in tail.iter().rev() {
        eprintln!("{line}");
    }
    match artifact(&text) {
        Some(path) => bail!(
            "finding written to {path} ({status}); replay it with `cargo +nightly fuzz run --fuzz-dir {} {} {path}`, keep it under {}/regressions/{}/ once fixed (log: {})",
            target.krate.dir,
            target.name,
            target.krate.dir,
            target.name,
            log_path.display()
        ),
        None => bail!(
            "cargo fuzz failed ({status}) without writing an input (log: {})",
            log_path.display()
        ),
    }
}

fn path_arg(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

/// The input libFuzzer saved for a finding (`Test unit written to <path>`).
fn artifact(log: &str) -> Option<String> {
    log.lines()
        .rev()
        .find_map(|l| l.split("Test unit written to ").nth(1))
        .map(|p| p.trim().to_owned())
}

/// libFuzzer's final statistics (`-print_final_stats=1`) and its last coverage line.
fn parse(log: &str) -> Outcome {
    let stat = |key: &str| {
        log.lines()
            .rev()
            .filter_map(|l| l.strip_prefix(key))
            .find_map(|v| v.trim_start_matches(':').trim().parse().ok())
    };
    // `#123456 DONE cov: 1234 ft: 5678 corp: ...` (or the last `pulse`/`NEW` line).
    let field = |name: &str| {
        log.lines()
            .rev()
            .filter(|l| l.starts_with('#'))
            .find_map(|l| {
                let mut words = l.split_whitespace();
                words.find(|w| *w == name)?;
                words.next()?.parse().ok()
            })
    };
    Outcome {
        executions: stat("stat::number_of_executed_units"),
        per_second: stat("stat::average_exec_per_sec"),
        coverage: field("cov:"),
        features: field("ft:"),
        new_units: stat("stat::new_units_added"),
        peak_rss_mb: stat("stat::peak_rss_mb"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_libfuzzer_statistics() {
        let log = "#2\tINITED cov: 10 ft: 11 corp: 1/1b exec/s: 0 rss: 30Mb\n\
                   #4096\tpulse  cov: 90 ft: 200 corp: 5/50b lim: 43 exec/s: 2048 rss: 40Mb\n\
                   #9000\tDONE   cov: 95 ft: 210 corp: 6/60b lim: 43 exec/s: 3000 rss: 41Mb\n\
                   Done 9000 runs in 3 second(s)\n\
                   stat::number_of_executed_units: 9000\n\
                   stat::average_exec_per_sec:     3000\n\
                   stat::new_units_added:          5\n\
                   stat::peak_rss_mb:              41\n";
        let o = parse(log);
        assert_eq!(o.executions, Some(9000));
        assert_eq!(o.per_second, Some(3000));
        assert_eq!(o.coverage, Some(95));
        assert_eq!(o.features, Some(210));
        assert_eq!(o.new_units, Some(5));
        assert_eq!(o.peak_rss_mb, Some(41));
        let crash = "==1== ERROR: libFuzzer: deadly signal\n\
                     artifact_prefix='target/fuzz/artifacts/x/'; Test unit written to target/fuzz/artifacts/x/crash-abc\n";
        assert_eq!(
            artifact(crash).as_deref(),
            Some("target/fuzz/artifacts/x/crash-abc")
        );
    }

    #[test]
    fn every_target_has_a_committed_corpus() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        for t in TARGETS {
            let dir = root.join(t.krate.dir).join("corpus").join(t.name);
            assert!(dir.is_dir(), "{} is missing", dir.display());
        }
        assert!(select(&["nope".to_owned()]).is_err());
        assert_eq!(select(&["token".to_owned()]).map(|t| t.len()).ok(), Some(1));
    }
}
