//! `cold`: time to first sync of a document with a long history, on a server that has just
//! started and has not loaded it.
//!
//! The history is a real trace (default: automerge-paper, 259,778 patches), typed into the
//! server one update per patch by [`super::trace::replay`], on a server that keeps its documents
//! on disk (Lattice's SQLite file; Hocuspocus's SQLite extension; the y-websocket server's
//! LevelDB persistence). That server is stopped with SIGTERM, so it stores what it holds. Then,
//! every run, a new server process starts on the same storage and one client connects: the time
//! is from the start of the connection until the client holds the whole document (it applies
//! what it receives into a yrs document and its text equals the trace's `endContent`, which is
//! also the correctness check).
//!
//! Filling takes a while (it is the `trace` scenario's replay), so it happens once per target,
//! in the first run, and the storage is reused by the later runs: each run measures a fresh
//! process on it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Arg, ArgMatches, value_parser};
use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::Message;

use super::trace::{Encoded, Replica, encode, replay};
use super::{BoxFuture, Prepared, Scenario, flag, positive};
use crate::client::{self, ConnectOptions, Event};
use crate::report::{Better, Medians, Sample};
use crate::target::{RunningServer, Target};

/// The trace typed in when `--cold-trace` is not given, under the traces folder.
const DEFAULT_TRACE: &str = "sequential_traces/automerge-paper.json.gz";
/// How long a server may take to store what it holds and exit after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(180);
/// How long the first client may wait for the whole document after a restart.
const SYNC_TIMEOUT: Duration = Duration::from_secs(120);

pub(super) struct Cold;

struct Plan {
    path: PathBuf,
    trace: Encoded,
    fill_timeout: Duration,
    /// Per target id: the folder its persistent servers keep the document in, once filled.
    storage: Mutex<HashMap<&'static str, Arc<tempfile::TempDir>>>,
}

impl Scenario for Cold {
    fn name(&self) -> &'static str {
        "cold"
    }

    fn about(&self) -> &'static str {
        "time to first sync of a ~260,000-update document on a freshly started server"
    }

    fn args(&self) -> Vec<Arg> {
        vec![
            flag("cold-trace", "cold: the trace whose patches make the history (default: TRACES/sequential_traces/automerge-paper.json.gz, TRACES from --traces)", value_parser!(PathBuf), None),
            flag("cold-fill-timeout-secs", "cold: time allowed to type the history into one server", value_parser!(u64), Some("900")),
        ]
    }

    fn prepare(&self, args: &ArgMatches) -> Result<Box<dyn Prepared>> {
        let path = match args.get_one::<PathBuf>("cold-trace") {
            Some(p) => p.clone(),
            None => args
                .get_one::<PathBuf>("traces")
                .cloned()
                .unwrap_or_else(|| PathBuf::from("../shared/traces"))
                .join(DEFAULT_TRACE),
        };
        if !path.is_file() {
            bail!(
                "cold: no trace at {}. Pass --traces DIR (the folder holding \
                 sequential_traces/) or --cold-trace FILE.json.gz",
                path.display()
            );
        }
        let trace = encode(&path)?;
        Ok(Box::new(Plan {
            path,
            trace,
            fill_timeout: Duration::from_secs(positive(args, "cold-fill-timeout-secs")?),
            storage: Mutex::new(HashMap::new()),
        }))
    }
}

impl Plan {
    /// The target's filled storage, typing the history in first if this is its first run.
    async fn storage(&self, server: &RunningServer, target: &Target) -> Result<Arc<tempfile::TempDir>> {
        let known = self
            .storage
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?
            .get(target.id)
            .cloned();
        if let Some(dir) = known {
            return Ok(dir);
        }
        let dir = Arc::new(
            tempfile::Builder::new()
                .prefix("lattice-bench-cold-")
                .tempdir()?,
        );
        let mut filler = server.start_persistent(dir.path()).await?;
        let secs = replay(&mut filler, target, &self.trace, self.fill_timeout)
            .await
            .context("typing the history in")?;
        eprintln!(
            "cold {}: typed {} updates in {secs:.1}s; stopping the server",
            target.id,
            self.trace.updates.len()
        );
        filler.terminate(STOP_TIMEOUT).await?;
        self.storage
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?
            .insert(target.id, dir.clone());
        Ok(dir)
    }
}

fn apply_frame(replica: &mut Replica, codec: &client::Codec, frame: &Message) -> Result<()> {
    for event in codec.decode(frame)? {
        if let Event::Update(u) = event {
            replica.apply(&u)?;
        }
    }
    Ok(())
}

/// Bytes under `dir`, recursively.
fn disk_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => disk_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

impl Prepared for Plan {
    fn describe(&self) -> String {
        format!(
            "History: `{}` ({} updates, one per patch), typed in once per target through the \
             `trace` replay on a server that persists (Lattice: its SQLite file, every update in \
             the log plus checkpoints; Hocuspocus: `@hocuspocus/extension-sqlite`, the whole \
             document as one row; y-websocket server: y-leveldb, `YPERSISTENCE`), which is then \
             stopped with SIGTERM. Each run starts a new server process on that storage and \
             times one client from the start of its connection until its own yrs document, \
             built from what it received, has the text `endContent` (the correctness check; \
             applying is included and costs every target the same). Storage is the size of the server's \
             files after the history was typed in.",
            self.path.display(),
            self.trace.updates.len()
        )
    }

    fn run<'a>(
        &'a self,
        server: &'a mut RunningServer,
        target: &'a Target,
    ) -> BoxFuture<'a, Result<Vec<Sample>>> {
        Box::pin(async move {
            let dir = self.storage(server, target).await?;
            let on_disk = disk_bytes(dir.path());
            let fresh = server.start_persistent(dir.path()).await?;
            let doc = format!("bench/trace-{}", self.trace.name);
            let start = Instant::now();
            let (mut ws, codec, frames) =
                client::connect_keeping(&fresh.endpoint, &doc, ConnectOptions::default())
                    .await
                    .context("the first client of the restarted server")?;
            let mut replica = Replica::new();
            for frame in &frames {
                apply_frame(&mut replica, &codec, frame)?;
            }
            // A server may answer the handshake before it has loaded the document and send it
            // afterwards (the y-websocket server loads from LevelDB in the background).
            let wait = async {
                while !replica.holds(&self.trace) {
                    let frame = ws
                        .next()
                        .await
                        .context("the connection ended before the document arrived")??;
                    apply_frame(&mut replica, &codec, &frame)?;
                }
                Ok::<_, anyhow::Error>(())
            };
            match tokio::time::timeout(SYNC_TIMEOUT, wait).await {
                Ok(r) => r?,
                Err(_) => bail!(
                    "after a restart, the first client did not hold the document within \
                     {SYNC_TIMEOUT:?}: {}",
                    replica.explain(&self.trace)
                ),
            }
            let secs = start.elapsed().as_secs_f64();
            fresh.stop().await?;
            let case = format!("{} ({} updates)", self.trace.name, self.trace.updates.len());
            Ok(vec![
                Sample::new(&case, "time to first sync", "ms", Better::Lower, secs * 1e3),
                Sample::new(
                    &case,
                    "storage",
                    "MiB",
                    Better::Lower,
                    on_disk as f64 / 1_048_576.0,
                ),
            ])
        })
    }

    fn verdicts(&self, m: &Medians) -> Vec<String> {
        let case = format!("{} ({} updates)", self.trace.name, self.trace.updates.len());
        let mut out = Vec::new();
        if let Some(l) = m.get("cold", &case, "time to first sync", "lattice") {
            out.push(format!(
                "`lattice` cold first sync: {l:.1} ms (the storage issue's cold-load target, \
                 ≤ 20 ms for loading alone, is measured by the store bench)"
            ));
        }
        out.push(
            "Correctness: after every restart the first client's document equalled `endContent` \
             (the bench fails otherwise)."
                .into(),
        );
        out
    }
}
