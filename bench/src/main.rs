//! `lattice-bench`: Lattice against its peers (Hocuspocus, the reference y-websocket server,
//! Y-Sweet), side by side in one run. Started by `cargo xtask bench [SCENARIO…]`, which builds
//! the release binaries, installs the Node peers with npm into `target/bench/peers` and Y-Sweet
//! with `cargo install` into `target/bench/peers/y-sweet`, and passes their paths.
//!
//! Each (run, scenario, target) gets a fresh server process: Lattice as `lattice serve` on a
//! fresh SQLite file (every update durable before it is acknowledged), Y-Sweet as `y-sweet serve` on
//! a fresh folder (checkpoints every 10 s), the Node peers in memory. The targets are Lattice
//! over its native protocol, Lattice over y-websocket (`/yjs/{doc}`, the peers' protocol),
//! Hocuspocus, the y-websocket server and Y-Sweet; each run rotates their order to cancel
//! drift. Results: medians over runs with ratios to the best peer (and to the in-process
//! floor where a scenario has one), in `target/bench/results.json` and in the generated section
//! of docs/BENCHMARKS.md.
//!
//! **Invariants:** loopback only; every wait has a timeout, and a timeout fails the bench naming
//! the target and what was missing, with two exceptions that are measurements of a peer, not
//! failures of the bench: a peer that drops relays in `fanout` is reported with its missing
//! deliveries, and a peer's `trace` replay past its budget as unfinished (on Lattice both
//! fail); every queue the bench fills is bounded by the server's own backpressure (TCP) or,
//! where the protocol acknowledges, by an in-flight window.
//!
//! # Adding a scenario
//!
//! 1. Write `src/scenarios/NAME.rs` with a unit struct implementing
//!    [`scenarios::Scenario`] (name, flags, `prepare`) whose `prepare` returns a
//!    [`scenarios::Prepared`] (`describe`, optional `baseline`, `run` against one server,
//!    optional `verdicts`). Connect with [`client::connect`] (any protocol), send with
//!    [`client::Codec::update`], decode with [`client::Codec::decode`]; return
//!    [`report::Sample`]s.
//! 2. Add one line `NAME => Type,` to the `scenarios!` list in `src/scenarios/mod.rs`.
//!
//! The driver, the servers, the report and the JSON need no change. A scenario that needs
//! servers the driver does not start (`cluster`: several Lattice nodes on one PostgreSQL
//! database and a Redis, from [`services`]) starts them itself in
//! [`scenarios::Prepared::run_own`]; one that is no comparison with the peers names a section
//! of its own with [`scenarios::Prepared::own_section`], so that running it leaves the peers'
//! figures in docs/BENCHMARKS.md as they are.

mod client;
mod http;
mod report;
mod scenarios;
mod services;
mod target;
mod verdict;
mod wire;
mod ysweet;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::{CommandFactory, FromArgMatches, Parser};

use crate::report::{Environment, FLOOR, Figure, Medians, Results};
use crate::target::{RunningServer, TARGETS, Target, Tools};

#[derive(Parser, Debug)]
#[command(
    name = "lattice-bench",
    about = "Lattice against Hocuspocus, y-websocket and Y-Sweet, side by side"
)]
struct Cli {
    /// Scenarios to run (default: all), in this order.
    scenarios: Vec<String>,
    /// Runs of every scenario on every target; figures are medians over runs.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Targets to measure, comma-separated: lattice, lattice-yjs, lattice-hocuspocus (fanout
    /// only), hocuspocus, y-websocket, y-sweet.
    #[arg(long, value_delimiter = ',')]
    targets: Vec<String>,
    /// The `lattice` release binary.
    #[arg(long, default_value = "target/release/lattice")]
    lattice_bin: PathBuf,
    /// Folder with the peer launchers and their installed `node_modules`.
    #[arg(long, default_value = "target/bench/peers")]
    peers_dir: PathBuf,
    /// The `y-sweet` binary (version 0.9.1; `cargo xtask bench` installs it here).
    #[arg(long, default_value = "target/bench/peers/y-sweet/bin/y-sweet")]
    y_sweet_bin: PathBuf,
    /// Where to write the machine-readable results.
    #[arg(long, default_value = "target/bench/results.json")]
    json: PathBuf,
    /// The Markdown file whose generated section is rewritten; `-` for none.
    #[arg(long, default_value = "docs/BENCHMARKS.md")]
    report: String,
    /// The command line to print in the report.
    #[arg(long)]
    command: Option<String>,
}

fn main() -> Result<()> {
    let all = scenarios::all();
    let mut command = Cli::command();
    for s in &all {
        command = command.args(s.args());
    }
    let names: Vec<&str> = all.iter().map(|s| s.name()).collect();
    command = command.after_help(format!(
        "Scenarios: {}",
        all.iter()
            .map(|s| format!("{} ({})", s.name(), s.about()))
            .collect::<Vec<_>>()
            .join("; ")
    ));
    let matches = command.get_matches();
    let cli = Cli::from_arg_matches(&matches)?;
    if cli.runs == 0 {
        bail!("--runs must be at least 1");
    }
    let selected: Vec<&'static dyn scenarios::Scenario> = if cli.scenarios.is_empty() {
        all.clone()
    } else {
        cli.scenarios
            .iter()
            .map(|n| {
                all.iter()
                    .copied()
                    .find(|s| s.name() == n)
                    .with_context(|| format!("unknown scenario {n:?}; known: {}", names.join(", ")))
            })
            .collect::<Result<_>>()?
    };
    let targets: Vec<&'static Target> = if cli.targets.is_empty() {
        TARGETS.iter().collect()
    } else {
        cli.targets
            .iter()
            .map(|id| {
                TARGETS
                    .iter()
                    .find(|t| t.id == id)
                    .with_context(|| format!("unknown target {id:?}"))
            })
            .collect::<Result<_>>()?
    };
    let tools = Tools {
        lattice_bin: std::path::absolute(&cli.lattice_bin)?,
        peers_dir: std::path::absolute(&cli.peers_dir)?,
        ysweet_bin: std::path::absolute(&cli.y_sweet_bin)?,
    };
    if !tools.lattice_bin.exists() {
        bail!(
            "{} is missing: build it with `cargo build --release -p lattice-server` (cargo xtask bench does)",
            tools.lattice_bin.display()
        );
    }
    if targets
        .iter()
        .any(|t| t.server == target::ServerKind::YSweet)
        && !tools.ysweet_bin.exists()
    {
        bail!(
            "{} is missing: install it with `cargo install y-sweet --version {} --locked --root \
             target/bench/peers/y-sweet` (cargo xtask bench does)",
            tools.ysweet_bin.display(),
            ysweet::VERSION
        );
    }
    raise_fd_limit();

    let mut prepared = Vec::new();
    for s in &selected {
        let started = Instant::now();
        let p = s
            .prepare(&matches)
            .with_context(|| format!("preparing scenario {}", s.name()))?;
        eprintln!(
            "prepared {} in {:.1}s",
            s.name(),
            started.elapsed().as_secs_f64()
        );
        // A scenario none of the selected targets takes part in (`cluster` with `--targets
        // y-sweet`) is left out, so that its section of the report keeps its figures.
        if !targets.iter().any(|t| p.supports(t)) {
            eprintln!(
                "skipping {}: none of the selected targets takes part",
                s.name()
            );
            continue;
        }
        prepared.push((*s, p));
    }

    if prepared.is_empty() {
        bail!("nothing to measure: no selected scenario takes any of the selected targets");
    }

    let command_line = cli.command.clone().unwrap_or_else(|| {
        std::iter::once("lattice-bench".to_owned())
            .chain(std::env::args().skip(1))
            .collect::<Vec<_>>()
            .join(" ")
    });
    let mut env = Environment::probe(command_line, cli.runs);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut figures = Vec::new();
    for run in 0..cli.runs {
        let order: Vec<&'static Target> = (0..targets.len())
            .map(|i| targets[(i + run) % targets.len()])
            .collect();
        env.orders.push(order.iter().map(|t| t.id).collect());
        for (scenario, p) in &prepared {
            for sample in p
                .baseline()
                .with_context(|| format!("{} floor", scenario.name()))?
            {
                record(&mut figures, scenario.name(), FLOOR, run, sample);
            }
            for target in &order {
                if !p.supports(target) {
                    continue;
                }
                let samples = runtime
                    .block_on(async {
                        if let Some(own) = p.run_own(&tools, target) {
                            return own.await;
                        }
                        let mut server = RunningServer::start(target, &tools).await?;
                        env.servers
                            .entry(target.id.to_owned())
                            .or_insert_with(|| server.versions.clone());
                        let out = p.run(&mut server, target).await;
                        let out = match out {
                            Ok(s) => s,
                            Err(e) => {
                                let alive = server
                                    .check_alive()
                                    .err()
                                    .map(|e| format!("\n{e}"))
                                    .unwrap_or_default();
                                return Err(e.context(format!(
                                    "server output:\n{}{alive}",
                                    server.log_tail()
                                )));
                            }
                        };
                        server.stop().await?;
                        Ok::<_, anyhow::Error>(out)
                    })
                    .with_context(|| {
                        format!(
                            "scenario {} against {}, run {}",
                            scenario.name(),
                            target.label,
                            run + 1
                        )
                    })?;
                for sample in samples {
                    record(&mut figures, scenario.name(), target.id, run, sample);
                }
            }
        }
    }
    env.loadavg_after = report::loadavg();
    let medians = Medians::from_figures(&figures);
    let results = Results {
        environment: env,
        scenarios: prepared
            .iter()
            .map(|(s, p)| (s.name(), p.describe()))
            .collect(),
        own_sections: prepared
            .iter()
            .filter_map(|(s, p)| p.own_section().map(|h| (s.name(), h)))
            .collect(),
        verdicts: prepared
            .iter()
            .map(|(s, p)| (s.name(), p.verdicts(&medians)))
            .collect(),
        medians,
        figures,
    };
    report::write_json(&results, &cli.json)?;
    eprintln!("results: {}", cli.json.display());
    for section in report::sections(&results) {
        println!("{}", section.text);
    }
    if cli.report != "-" {
        report::write_markdown(&results, std::path::Path::new(&cli.report))?;
        eprintln!("report: {} (generated sections)", cli.report);
    }
    Ok(())
}

/// Prints one measured value as it comes and keeps it for the report.
fn record(
    figures: &mut Vec<Figure>,
    scenario: &'static str,
    target: &str,
    run: usize,
    sample: report::Sample,
) {
    eprintln!(
        "run {} {scenario} {target}: {} {} = {:.3} {}",
        run + 1,
        sample.case,
        sample.metric,
        sample.value,
        sample.unit
    );
    figures.push(Figure {
        scenario,
        target: target.to_owned(),
        run,
        sample,
    });
}

/// Open files the bench wants: the idle scenario holds 10,000 sockets here, and the servers
/// (children) inherit the limit for their side.
const WANTED_OPEN_FILES: u64 = 65_536;

/// Raises the limit on open files to [`WANTED_OPEN_FILES`]: the hard limit too where the bench
/// may (root, or `CAP_SYS_RESOURCE`), else the soft limit to the hard one. Scenarios check the
/// result against what they open ([`open_files_limit`]).
fn raise_fd_limit() {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let hard = limit.maximum.unwrap_or(u64::MAX);
    let soft = limit.current.unwrap_or(u64::MAX);
    if hard < WANTED_OPEN_FILES {
        let raised = Rlimit {
            current: Some(WANTED_OPEN_FILES),
            maximum: Some(WANTED_OPEN_FILES),
        };
        if setrlimit(Resource::Nofile, raised).is_ok() {
            eprintln!("open files limit: {WANTED_OPEN_FILES} (raised from {soft}, hard {hard})");
            return;
        }
    }
    if soft < hard {
        let raised = Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        if let Err(e) = setrlimit(Resource::Nofile, raised) {
            eprintln!("cannot raise RLIMIT_NOFILE: {e}");
        }
    }
    eprintln!("open files limit: {} (hard {hard})", open_files_limit());
}

/// The soft limit on open files now.
pub(crate) fn open_files_limit() -> u64 {
    rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .unwrap_or(u64::MAX)
}
