//! The scenarios. Each lives in its own file and is registered by one line in `scenarios!`
//! below; see the crate docs (`main.rs`) for how to add one.

use std::future::Future;
use std::pin::Pin;

use anyhow::{Context, Result};
use clap::builder::{IntoResettable, ValueParser};
use clap::{Arg, ArgMatches};

use crate::report::{Medians, Sample};
use crate::target::{RunningServer, Target, Tools};

/// A future a scenario returns from [`Prepared::run`].
pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A benchmark scenario, as registered: its name, its own command-line flags, and how to prepare
/// it from them.
pub(crate) trait Scenario: Sync {
    /// The name on the command line (`cargo xtask bench NAME`) and in the report.
    fn name(&self) -> &'static str;
    /// One line for `--help`.
    fn about(&self) -> &'static str;
    /// The scenario's own flags; give them long names prefixed by the scenario's name where
    /// they could clash (`--fanout-updates`).
    fn args(&self) -> Vec<clap::Arg> {
        Vec::new()
    }
    /// Reads the flags and does the work shared by all runs (loading inputs, encoding updates).
    /// Called only when the scenario is selected, before any server starts.
    fn prepare(&self, args: &clap::ArgMatches) -> Result<Box<dyn Prepared>>;
}

/// A scenario ready to run.
pub(crate) trait Prepared: Send + Sync {
    /// What is measured and how, for the report (Markdown, one paragraph or a short list).
    fn describe(&self) -> String;
    /// Measured once per run in this process, not against a server (a floor such as raw `yrs`);
    /// reported as the column "floor".
    fn baseline(&self) -> Result<Vec<Sample>> {
        Ok(Vec::new())
    }
    /// Whether the scenario applies to `target` (`http-fanout`: Lattice's native target only).
    /// Lattice's Hocuspocus endpoint is measured only where a scenario says so (`fanout`).
    fn supports(&self, target: &Target) -> bool {
        target.id != "lattice-hocuspocus"
    }
    /// One measurement against a server started fresh for it. Every wait must have a timeout;
    /// an error fails the bench, so say which target and what was missing.
    fn run<'a>(
        &'a self,
        server: &'a mut RunningServer,
        target: &'a Target,
    ) -> BoxFuture<'a, Result<Vec<Sample>>>;
    /// A scenario that starts its own servers (`cluster`: Lattice nodes sharing PostgreSQL and
    /// Redis) returns its measurement against `target` here; the driver then starts no server
    /// for it and does not call [`Prepared::run`]. The same rules hold: every wait has a
    /// timeout, every process it starts is gone when the future ends.
    fn run_own<'a>(
        &'a self,
        _tools: &'a Tools,
        _target: &'a Target,
    ) -> Option<BoxFuture<'a, Result<Vec<Sample>>>> {
        None
    }
    /// A scenario that is no comparison with the peers gets a generated section of its own in
    /// docs/BENCHMARKS.md, under this heading, rewritten only by runs that include it (the
    /// peers' section is then left as it is).
    fn own_section(&self) -> Option<&'static str> {
        None
    }
    /// Lines on the targets (met or not, by how much), from the medians.
    fn verdicts(&self, _medians: &Medians) -> Vec<String> {
        Vec::new()
    }
}

/// A scenario's `--name VALUE` flag: its help line, how the value parses
/// (`clap::value_parser!(u64)`) and its default, if any.
pub(crate) fn flag(
    name: &'static str,
    help: &'static str,
    parser: impl IntoResettable<ValueParser>,
    default: Option<&'static str>,
) -> Arg {
    Arg::new(name)
        .long(name)
        .help(help)
        .value_parser(parser)
        .default_value(default)
}

/// The value of a flag declared with a default by [`flag`], at least 1.
pub(crate) fn positive<T>(args: &ArgMatches, name: &str) -> Result<T>
where
    T: Copy + Ord + From<u8> + Send + Sync + 'static,
{
    let value = *args
        .get_one::<T>(name)
        .with_context(|| format!("--{name} has no value"))?;
    Ok(value.max(T::from(1)))
}

/// Declares the scenario modules and the registry: one `module => Type,` line per scenario.
macro_rules! scenarios {
    ($($module:ident => $ty:ident,)*) => {
        $(mod $module;)*
        /// Every scenario, in the order they run.
        pub(crate) fn all() -> Vec<&'static dyn Scenario> {
            vec![$(&$module::$ty),*]
        }
    };
}

scenarios! {
    fanout => Fanout,
    http_fanout => HttpFanout,
    trace => Trace,
    idle => Idle,
    ingest => Ingest,
    cold => Cold,
    wasm => Wasm,
    cluster => Cluster,
    webhooks => Webhooks,
}
