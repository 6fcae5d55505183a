//! `wasm`: the size of the browser client, Lattice's row alone (the peers ship no wasm). Reads
//! `lattice_client_bg.wasm` as `cargo xtask build-web` leaves it in `target/web/pkg/`
//! (`cargo xtask bench` builds it first when this scenario runs) and gzips it at level 9, what a
//! server would send with `Content-Encoding: gzip`. No server is started.

use std::io::Write as _;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Arg, ArgMatches, value_parser};

use super::{BoxFuture, Prepared, Scenario, flag};
use crate::client::Protocol;
use crate::report::{Better, Medians, Sample};
use crate::target::{ServerKind, Target, Tools};
use crate::verdict;

/// The file measured when `--wasm-file` is not given (from the project root).
const DEFAULT_FILE: &str = "target/web/pkg/lattice_client_bg.wasm";
/// Issue 21's target for the gzipped wasm: 200 KB (as `cargo xtask build-web` reports it).
const TARGET_GZIP_BYTES: f64 = 200.0 * 1024.0;
const CASE: &str = "lattice_client_bg.wasm";

pub(super) struct Wasm;

struct Plan {
    path: PathBuf,
}

impl Scenario for Wasm {
    fn name(&self) -> &'static str {
        "wasm"
    }

    fn about(&self) -> &'static str {
        "size of the browser client's wasm, raw and gzipped (Lattice only)"
    }

    fn args(&self) -> Vec<Arg> {
        vec![flag(
            "wasm-file",
            "wasm: the browser client's wasm (default target/web/pkg/lattice_client_bg.wasm, built by `cargo xtask build-web`)",
            value_parser!(PathBuf),
            None,
        )]
    }

    fn prepare(&self, args: &ArgMatches) -> Result<Box<dyn Prepared>> {
        let path = args
            .get_one::<PathBuf>("wasm-file")
            .cloned()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_FILE));
        Ok(Box::new(Plan { path }))
    }
}

impl Prepared for Plan {
    fn describe(&self) -> String {
        format!(
            "The browser client's wasm, `{}`, as `cargo xtask build-web` ships it (the \
             `web-release` profile and the steps after it, xtask/src/web.rs), raw and gzipped at \
             level 9 (flate2), the figure `build-web` prints. Lattice only: the peers have no \
             browser build of their own (their clients are Yjs, in JavaScript).",
            self.path.display()
        )
    }

    fn supports(&self, target: &Target) -> bool {
        target.server == ServerKind::Lattice && target.protocol == Protocol::Native
    }

    fn run<'a>(
        &'a self,
        _server: &'a mut crate::target::RunningServer,
        _target: &'a Target,
    ) -> BoxFuture<'a, Result<Vec<Sample>>> {
        Box::pin(async move { self.measure() })
    }

    /// Nothing to start: the file is read and compressed here.
    fn run_own<'a>(
        &'a self,
        _tools: &'a Tools,
        _target: &'a Target,
    ) -> Option<BoxFuture<'a, Result<Vec<Sample>>>> {
        Some(Box::pin(async move { self.measure() }))
    }

    fn verdicts(&self, m: &Medians) -> Vec<String> {
        verdict::against_target(
            m,
            ("wasm", CASE, "gzipped (level 9)"),
            "wasm package ≤ 200 KB gzipped",
            TARGET_GZIP_BYTES,
        )
    }
}

impl Plan {
    fn measure(&self) -> Result<Vec<Sample>> {
        let wasm = std::fs::read(&self.path).with_context(|| {
            format!(
                "wasm: cannot read {} (build it with `cargo xtask build-web`; `cargo xtask bench` \
                 does)",
                self.path.display()
            )
        })?;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        gz.write_all(&wasm)?;
        let gzipped = gz.finish()?.len();
        Ok(vec![
            Sample::new(CASE, "size", "B", Better::Lower, wasm.len() as f64),
            Sample::new(
                CASE,
                "gzipped (level 9)",
                "B",
                Better::Lower,
                gzipped as f64,
            ),
        ])
    }
}
