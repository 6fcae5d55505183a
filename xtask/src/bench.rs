//! `cargo xtask bench [SCENARIO…] [FLAGS…]`: Lattice against Hocuspocus and the reference
//! y-websocket server, side by side (the `lattice-bench` crate, `bench/`).
//!
//! Installs the peers with npm (exact versions from `bench/peers/package-lock.json`) into
//! `target/bench/peers` beside their launchers, builds the release `lattice` and
//! `lattice-bench`, then runs the bench from the project root. It writes
//! `target/bench/results.json` and rewrites the generated section of docs/BENCHMARKS.md.
//! Not part of `cargo xtask test`.

use std::path::Path;

use anyhow::{Context, Result};

use crate::{cmd, setup, web};

/// Committed peer set-up: the package manifest, its lock file and the launchers.
const PEERS_SRC: &str = "bench/peers";
const PEER_FILES: &[&str] = &[
    "package.json",
    "package-lock.json",
    "hocuspocus.mjs",
    "y-websocket.mjs",
];
/// Where the traces are looked for when `--traces` is not given.
const DEFAULT_TRACES: &str = "../shared/traces";

pub(crate) fn run(args: &[String]) -> Result<()> {
    if !setup::has_program("node") || !setup::has_program("npm") {
        setup::apt(&["nodejs", "npm"])?;
    }
    let target = web::target_dir()?;
    let peers = target.join("bench").join("peers");
    std::fs::create_dir_all(&peers)?;
    for f in PEER_FILES {
        let from = Path::new(PEERS_SRC).join(f);
        let to = peers.join(f);
        let new =
            std::fs::read(&from).with_context(|| format!("cannot read {}", from.display()))?;
        // Copy only changes, so the lock file's time tells `npm_ci` whether to reinstall.
        if std::fs::read(&to).ok().as_deref() != Some(new.as_slice()) {
            std::fs::write(&to, new)?;
        }
    }
    setup::npm_ci(&peers.to_string_lossy())?;
    // The cluster scenario starts nodes on PostgreSQL and Redis (idempotent when installed).
    setup::for_bench_cluster()?;
    cmd(
        "cargo",
        &[
            "build",
            "--release",
            "-p",
            "lattice-server",
            "-p",
            "lattice-bench",
            "--bin",
            "lattice",
            "--bin",
            "lattice-bench",
        ],
    )?;
    let release = target.join("release");
    let mut full: Vec<String> = args.to_vec();
    let command = format!("cargo xtask bench {}", args.join(" "));
    if !args
        .iter()
        .any(|a| a == "--traces" || a.starts_with("--traces="))
        && Path::new(DEFAULT_TRACES).is_dir()
    {
        full.extend(["--traces".into(), DEFAULT_TRACES.into()]);
    }
    full.extend([
        "--lattice-bin".into(),
        release.join("lattice").to_string_lossy().into_owned(),
        "--peers-dir".into(),
        peers.to_string_lossy().into_owned(),
        "--json".into(),
        target
            .join("bench")
            .join("results.json")
            .to_string_lossy()
            .into_owned(),
        "--command".into(),
        command.trim_end().to_owned(),
    ]);
    let bin = release.join("lattice-bench");
    let refs: Vec<&str> = full.iter().map(String::as_str).collect();
    cmd(&bin.to_string_lossy(), &refs)
}
