//! `cargo xtask chaos [--quick] [--rounds N] [--attack-seconds S] [--backend sqlite|postgres|both]`:
//! the server under faults and attacks (issue 17): SIGKILL under write load on both backends,
//! PostgreSQL stopping under load, a full disk, and every attack class against a server while a
//! bystander keeps editing. The scenarios live in `tests/src/bin/chaos/` (the `chaos` binary of
//! `lattice-tests`); this command provides what they need and runs them against the release
//! `lattice` binary.
//!
//! It starts PostgreSQL (the kill scenario's database) and needs root, as `cargo xtask test`
//! does: the disk-full scenario mounts a tmpfs, and the PostgreSQL restart runs a private
//! cluster as the `postgres` user. A scenario that cannot run fails the command.

use anyhow::{Result, bail};

use crate::{cmd, setup, web};

/// Flags passed through to the chaos program, and whether each takes a value.
const FLAGS: &[(&str, bool)] = &[
    ("--quick", false),
    ("--rounds", true),
    ("--attack-seconds", true),
    ("--backend", true),
    ("--only", true),
    ("--rss-bound-mib", true),
    ("--seed", true),
];

pub(crate) fn run(args: &[String]) -> Result<()> {
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match FLAGS.iter().find(|(f, _)| f == a) {
            Some((_, true)) => {
                if it.next().is_none() {
                    bail!("{a} needs a value");
                }
            }
            Some((_, false)) => {}
            None => bail!(
                "unknown flag {a}; cargo xtask chaos [--quick] [--rounds N] [--attack-seconds S] \
                 [--backend sqlite|postgres|both] [--only SCENARIO,…] [--rss-bound-mib N] [--seed N]"
            ),
        }
    }
    setup::for_chaos()?;
    build()?;
    let target = web::target_dir()?;
    let lattice = target.join("release").join("lattice");
    let chaos = target.join("debug").join("chaos");
    let mut full = vec![
        "--lattice-bin".to_owned(),
        lattice.to_string_lossy().into_owned(),
    ];
    full.extend(args.iter().cloned());
    let refs: Vec<&str> = full.iter().map(String::as_str).collect();
    cmd(&chaos.to_string_lossy(), &refs)
}

/// The release server (what the scenarios measure) and the chaos program (a client: its
/// speed is not measured, so the warm debug build does).
pub(crate) fn build() -> Result<()> {
    build_server()?;
    cmd("cargo", &["build", "-p", "lattice-tests", "--bin", "chaos"])
}

/// The release `lattice` binary, in the workspace's target directory.
pub(crate) fn build_server() -> Result<()> {
    cmd(
        "cargo",
        &[
            "build",
            "--release",
            "-p",
            "lattice-server",
            "--bin",
            "lattice",
        ],
    )
}
