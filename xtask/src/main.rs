//! `cargo xtask`: the project's own set-up, test orchestration and run commands.
//!
//! - `cargo xtask run`  — set up what is missing, then run the product.
//! - `cargo xtask test` — set up what is missing, then run every check and test.
//! - `cargo xtask setup` — only the set-up (idempotent).
//! - `cargo xtask build-web` — build the browser client package into `target/web/pkg`.
//! - `cargo xtask bench [SCENARIO…]` — Lattice against Hocuspocus and y-websocket (`bench/`).
//! - `cargo xtask chaos [--quick] […]` — the server under faults and attacks (`chaos.rs`).
//! - `cargo xtask cluster [--nodes N] [--port P]` — a local cluster: N nodes on one PostgreSQL
//!   database and one Redis, until Ctrl-C (`cluster.rs`).
//! - `cargo xtask fuzz [--seconds N] [TARGET…]` — run the cargo-fuzz targets (`fuzz.rs`).
//!
//! Set-up installs what a fresh machine lacks (apt packages, the wasm32 target) and starts the
//! services tests need (PostgreSQL). A service that cannot be provided fails the command; nothing
//! is skipped.

mod bench;
mod chaos;
mod cluster;
mod fuzz;
mod setup;
mod web;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};

/// Crates that must never appear among the engine's normal dependencies: the engine does no IO.
const ENGINE_FORBIDDEN_DEPS: &[&str] = &["tokio", "sqlx", "axum", "hyper", "web-sys", "mio"];

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = project_root();
    std::env::set_current_dir(&root)?;
    match args.first().map(String::as_str) {
        Some("test") => test(&root),
        Some("run") => run(&args[1..]),
        Some("setup") => setup::all().map(|_| ()),
        Some("check-engine-deps") => check_engine_deps(),
        Some("build-web") => web::build().map(|pkg| eprintln!("package: {}", pkg.display())),
        Some("bench") => bench::run(&args[1..]),
        Some("chaos") => chaos::run(&args[1..]),
        Some("cluster") => cluster::run(&args[1..]),
        Some(cluster::SUPERVISE_COMMAND) => cluster::supervise(&args[1..]),
        Some("fuzz") => fuzz::command(&args[1..]),
        _ => {
            eprintln!(
                "usage: cargo xtask <command>\n\n  run      set up, then run the server with its demo\n  test     set up, then run every check and test\n  setup    install and start what tests need\n  build-web  build the browser client package into target/web/pkg\n  bench [SCENARIO…]  Lattice against Hocuspocus and y-websocket (fanout, http-fanout, trace, idle, ingest, cold, cluster; --help for flags)\n  chaos [--quick] [--rounds N] [--attack-seconds S] [--backend sqlite|postgres|both]  kill -9, PostgreSQL restarts, a full disk and every attack class, with checks\n  fuzz [--seconds N] [TARGET…]  run the fuzz targets, N seconds each (default 60)\n  cluster [--nodes N] [--port P]  N nodes (default 3) on 127.0.0.1:P… (default 8081) sharing one PostgreSQL database and a Redis on port 6380, each with the demo, until Ctrl-C\n  check-engine-deps  fail if the engine depends on IO crates"
            );
            bail!("unknown or missing command")
        }
    }
}

fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Runs a command, echoing it, and fails if it fails.
pub(crate) fn cmd(program: &str, args: &[&str]) -> Result<()> {
    eprintln!("$ {program} {}", args.join(" "));
    let status = Command::new(program)
        .args(args)
        .envs(setup::exported())
        .status()
        .with_context(|| format!("could not start {program}"))?;
    if !status.success() {
        bail!("`{program} {}` failed with {status}", args.join(" "));
    }
    Ok(())
}

/// Runs a command and returns its standard output.
pub(crate) fn output(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .envs(setup::exported())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("could not start {program}"))?;
    if !out.status.success() {
        bail!("`{program} {}` failed with {}", args.join(" "), out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub(crate) fn step<T>(name: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    eprintln!("\n==> {name}");
    let start = Instant::now();
    let out = f().with_context(|| format!("step failed: {name}"))?;
    eprintln!("<== {name}: ok in {:.1}s", start.elapsed().as_secs_f64());
    Ok(out)
}

fn test(_root: &Path) -> Result<()> {
    let started = Instant::now();
    step("set-up", setup::all)?;
    step("cargo fmt --check", || {
        cmd("cargo", &["fmt", "--all", "--", "--check"])
    })?;
    step("cargo clippy", || {
        cmd(
            "cargo",
            &[
                "clippy",
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ],
        )?;
        cmd(
            "cargo",
            &[
                "clippy",
                "-p",
                "lattice-client",
                "--target",
                "wasm32-unknown-unknown",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ],
        )
    })?;
    // The wasm32 build, early: the client package (its release wasm, which compiles the engine
    // for wasm32) and the demo, which the Node and browser tests below load.
    step(
        "browser client package and demo for wasm32 (cargo xtask build-web)",
        web::build,
    )?;
    step("engine dependency check", check_engine_deps)?;
    step(
        &format!(
            "fuzz smoke (cargo +nightly fuzz, the engine's targets, {}s each, committed corpus)",
            fuzz::SMOKE_SECONDS
        ),
        || {
            fuzz::run(
                &fuzz::smoke_targets(),
                fuzz::SMOKE_SECONDS,
                fuzz::Discovered::Dropped,
            )
        },
    )?;
    // Built once, before the tests: tests/tests/hardening.rs runs it (deep nesting overflows
    // the stack at a depth that depends on the release build's frames), and so does the chaos
    // step below.
    step(
        "release server (cargo build --release --bin lattice)",
        chaos::build_server,
    )?;
    step("tests (cargo nextest)", || {
        // Tests that run the `lattice` binary ask cargo for it; build it first so that their
        // time limits never include compiling it.
        cmd(
            "cargo",
            &["build", "-p", "lattice-server", "--bin", "lattice"],
        )?;
        cmd(
            "cargo",
            &[
                "nextest",
                "run",
                "--workspace",
                "--no-fail-fast",
                "--final-status-level",
                "fail",
            ],
        )
    })?;
    step("doc tests", || {
        cmd("cargo", &["test", "--workspace", "--doc"])
    })?;
    step(
        "Node tests (real yjs + y-websocket clients; the demo in headless Chromium)",
        node_tests,
    )?;
    step(
        "browser tests (wasm-bindgen-test, headless Chromium)",
        web::browser_tests,
    )?;
    step("chaos suite, quick (cargo xtask chaos --quick)", || {
        chaos::run(&["--quick".to_owned()])
    })?;
    eprintln!(
        "\nall checks passed in {:.0}s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Builds the server and the native test client, then runs `tests/node` with Node's test runner.
fn node_tests() -> Result<()> {
    cmd(
        "cargo",
        &[
            "build",
            "-p",
            "lattice-server",
            "--bin",
            "lattice",
            "-p",
            "lattice-tests",
            "--bin",
            "native_editor",
        ],
    )?;
    let bin_dir = web::target_dir()?.join("debug");
    eprintln!("$ (cd {} && node --test)", setup::NODE_TESTS_DIR);
    let status = Command::new("node")
        // `--test-force-exit`: a failed test can leave a client reconnecting to a server that
        // is gone, which would keep its file's process (and this step) alive until CI's limit.
        .args([
            "--test",
            "--test-concurrency=1",
            "--test-force-exit",
            "--test-reporter=spec",
        ])
        .current_dir(setup::NODE_TESTS_DIR)
        .env("LATTICE_BIN_DIR", &bin_dir)
        .env("LATTICE_WEB_DIR", web::demo_dir()?)
        .env(
            "LATTICE_ARTIFACTS_DIR",
            web::target_dir()?.join("test-artifacts"),
        )
        .envs(setup::exported())
        .status()
        .context("could not start node")?;
    if !status.success() {
        bail!("the Node interop tests failed ({status})");
    }
    Ok(())
}

fn check_engine_deps() -> Result<()> {
    let tree = output(
        "cargo",
        &[
            "tree",
            "-p",
            "lattice-engine",
            "-e",
            "normal",
            "--target",
            "all",
            "--prefix",
            "none",
            "--format",
            "{p}",
        ],
    )?;
    let found: Vec<&str> = tree
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| ENGINE_FORBIDDEN_DEPS.contains(name))
        .collect();
    if !found.is_empty() {
        let mut found = found;
        found.sort_unstable();
        found.dedup();
        bail!(
            "lattice-engine must do no IO, but its dependency tree contains: {}",
            found.join(", ")
        );
    }
    eprintln!(
        "lattice-engine's normal dependencies contain none of: {}",
        ENGINE_FORBIDDEN_DEPS.join(", ")
    );
    Ok(())
}

fn run(extra: &[String]) -> Result<()> {
    step("set-up", setup::for_run)?;
    let mut args = vec![
        "run",
        "--release",
        "-p",
        "lattice-server",
        "--bin",
        "lattice",
        "--",
    ];
    let web_dir;
    if extra.is_empty() {
        // The product: a secure server that prints an admin token and a demo URL, serving the
        // demo page built from the browser client.
        step("browser client and demo (build-web)", web::build)?;
        web_dir = web::demo_dir()?.to_string_lossy().into_owned();
        args.extend(["serve", "--web-dir", web_dir.as_str()]);
    }
    args.extend(extra.iter().map(String::as_str));
    cmd("cargo", &args)
}
