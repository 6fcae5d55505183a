//! `cargo xtask bench [SCENARIO…] [FLAGS…]`: Lattice against Hocuspocus, the reference
//! y-websocket server and Y-Sweet, side by side (the `lattice-bench` crate, `bench/`).
//!
//! Installs the Node peers with npm (exact versions from `bench/peers/package-lock.json`) into
//! `target/bench/peers` beside their launchers and, when the `y-sweet` target is measured,
//! Y-Sweet with `cargo install y-sweet --version 0.9.1 --locked` into
//! `target/bench/peers/y-sweet` (a few minutes, once: skipped while that binary reports the
//! version; its npm package only downloads a prebuilt binary). Builds the release `lattice` and
//! `lattice-bench`, and the browser package (`build-web`) when the `wasm` scenario runs, then
//! runs the bench from the project root. It writes `target/bench/results.json` and rewrites the
//! generated section of docs/BENCHMARKS.md. Not part of `cargo xtask test`.

use std::path::{Path, PathBuf};

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
/// The Y-Sweet release the bench compares with (`lattice-bench`'s `ysweet::VERSION`).
const YSWEET_VERSION: &str = "0.9.1";
/// The scenarios no peer takes part in.
const LATTICE_ONLY: &[&str] = &["wasm", "http-fanout", "cluster"];

/// What the command line asks of the bench, as far as set-up goes. Every `lattice-bench` flag
/// takes a value (`--flag VALUE` or `--flag=VALUE`), so the other words are scenario names.
struct Selection {
    scenarios: Vec<String>,
    /// `None`: every target.
    targets: Option<Vec<String>>,
    help: bool,
}

impl Selection {
    fn parse(args: &[String]) -> Self {
        let mut out = Self {
            scenarios: Vec::new(),
            targets: None,
            help: false,
        };
        let mut words = args.iter();
        while let Some(word) = words.next() {
            if word == "-h" || word == "--help" {
                out.help = true;
            } else if let Some(flag) = word.strip_prefix("--") {
                let (name, value) = match flag.split_once('=') {
                    Some((n, v)) => (n, Some(v.to_owned())),
                    None => (flag, words.next().cloned()),
                };
                if name == "targets" {
                    let list = out.targets.get_or_insert_with(Vec::new);
                    list.extend(value.unwrap_or_default().split(',').map(str::to_owned));
                }
            } else {
                out.scenarios.push(word.clone());
            }
        }
        out
    }

    fn scenario(&self, name: &str) -> bool {
        self.scenarios.is_empty() || self.scenarios.iter().any(|s| s == name)
    }

    fn target(&self, id: &str) -> bool {
        self.targets
            .as_ref()
            .is_none_or(|t| t.iter().any(|t| t == id))
    }

    /// Whether a scenario that measures the peer `target` runs.
    fn measures(&self, target: &str) -> bool {
        self.target(target)
            && (self.scenarios.is_empty()
                || self
                    .scenarios
                    .iter()
                    .any(|s| !LATTICE_ONLY.contains(&s.as_str())))
    }
}

fn has_flag(args: &[String], name: &str) -> bool {
    args.iter()
        .any(|a| a == name || a.starts_with(&format!("{name}=")))
}

/// `y-sweet` at [`YSWEET_VERSION`] under `root/bin`, installed from crates.io unless it is there.
fn ysweet(root: &Path) -> Result<PathBuf> {
    let bin = root.join("bin").join("y-sweet");
    let installed = std::process::Command::new(&bin)
        .arg("version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    if installed.as_deref() == Some(YSWEET_VERSION) {
        return Ok(bin);
    }
    let root_str = root.to_str().context("non-UTF-8 target directory")?;
    cmd(
        "cargo",
        &[
            "install",
            "y-sweet",
            "--version",
            YSWEET_VERSION,
            "--locked",
            "--root",
            root_str,
        ],
    )
    .context("cannot install Y-Sweet from crates.io")?;
    Ok(bin)
}

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
    let selection = Selection::parse(args);
    let mut full: Vec<String> = args.to_vec();
    if !selection.help && selection.measures("y-sweet") && !has_flag(args, "--y-sweet-bin") {
        let bin = ysweet(&peers.join("y-sweet"))?;
        full.extend(["--y-sweet-bin".into(), bin.to_string_lossy().into_owned()]);
    }
    if !selection.help
        && selection.scenario("wasm")
        && selection.target("lattice")
        && !has_flag(args, "--wasm-file")
    {
        let pkg = web::build().context("building the browser package for the wasm scenario")?;
        full.extend([
            "--wasm-file".into(),
            pkg.join("lattice_client_bg.wasm")
                .to_string_lossy()
                .into_owned(),
        ]);
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn scenarios_and_targets_are_read_past_flag_values() {
        let s = Selection::parse(&words("--runs 1 fanout --targets y-sweet,lattice trace"));
        assert_eq!(s.scenarios, ["fanout", "trace"]);
        assert!(s.target("y-sweet") && s.target("lattice") && !s.target("hocuspocus"));
        assert!(!s.scenario("wasm") && s.measures("y-sweet"));
        let s = Selection::parse(&words("--runs=1 wasm cluster --traces /x"));
        assert!(s.scenario("wasm") && !s.measures("y-sweet") && s.target("y-sweet"));
        let all = Selection::parse(&[]);
        assert!(all.scenario("wasm") && all.measures("y-sweet") && !all.help);
    }
}
