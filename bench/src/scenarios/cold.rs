//! `cold`: time to first sync of a document with a long history, on a server that has just
//! started and has not loaded it.
//!
//! The history is a real trace (default: automerge-paper, 259,778 patches), typed into the
//! server one update per patch by [`super::trace::replay`], on a server that keeps its documents
//! on disk (Lattice's SQLite file; Y-Sweet's folder; Hocuspocus's SQLite extension; the
//! y-websocket server's LevelDB persistence). That server is stopped with SIGTERM (Y-Sweet:
//! SIGINT, the only signal on which it writes its last checkpoint), so it stores what it holds. Then,
//! every run, a new server process starts on the same storage and one client connects: the time
//! is from the start of the connection until the client holds the whole document (it applies
//! what it receives into a yrs document and its text equals the trace's `endContent`, which is
//! also the correctness check).
//!
//! Filling takes a while (it is the `trace` scenario's replay), so it happens once per target,
//! in the first run, and the storage is reused by the later runs: each run measures a fresh
//! process on it. Y-Sweet, which stores only a document's state and re-encodes all of it per
//! update, is sent the final state as one update instead of the history.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Arg, ArgMatches, value_parser};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

use super::trace::{Encoded, Replayed, Replica, encode_shared, replay};
use super::{BoxFuture, Prepared, Scenario, flag, positive};
use crate::client::{self, ConnectOptions, Event};
use crate::report::{Better, Medians, Sample};
use crate::target::{RunningServer, ServerKind, Target};
use crate::verdict;

/// The trace typed in when `--cold-trace` is not given, under the traces folder.
const DEFAULT_TRACE: &str = "sequential_traces/automerge-paper.json.gz";
/// Issue 21's target for the storage of one document: the automerge-paper trace's, ≤ 8 MiB.
const STORAGE_TARGET_TRACE: &str = "automerge-paper";
const STORAGE_TARGET_MIB: f64 = 8.0;
/// How long a server may take to store what it holds and exit after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(180);
/// How long the first client may wait for the whole document after a restart.
const SYNC_TIMEOUT: Duration = Duration::from_secs(120);

pub(super) struct Cold;

struct Plan {
    path: PathBuf,
    trace: Arc<Encoded>,
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
        let trace = encode_shared(&path)?;
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
        if target.server == ServerKind::YSweet {
            let secs = tokio::time::timeout(self.fill_timeout, send_state(&filler, &self.trace))
                .await
                .context("sending the document timed out")?
                .context("sending the document")?;
            eprintln!(
                "cold {}: sent the document ({} bytes) as one update in {secs:.1}s; stopping the server",
                target.id,
                self.trace.state.len()
            );
        } else {
            let replayed = replay(&mut filler, target, &self.trace, self.fill_timeout, None)
                .await
                .context("typing the history in")?;
            let Replayed::Done(secs) = replayed else {
                bail!("typing the history in did not finish");
            };
            eprintln!(
                "cold {}: typed {} updates in {secs:.1}s; stopping the server",
                target.id,
                self.trace.updates.len()
            );
        }
        filler.terminate(STOP_TIMEOUT).await?;
        self.storage
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?
            .insert(target.id, dir.clone());
        Ok(dir)
    }
}

/// Sends the trace's final document as one update and waits until the server has applied it
/// (Y-Sweet echoes the sync status that follows it); returns the seconds it took.
async fn send_state(server: &RunningServer, trace: &Encoded) -> Result<f64> {
    let doc = format!("bench/trace-{}", trace.name);
    let start = Instant::now();
    let (mut ws, codec) =
        client::connect(&server.endpoint, &doc, ConnectOptions::default()).await?;
    let status = codec
        .after_update(1)
        .context("the server does not acknowledge updates")?;
    ws.feed(codec.update(1, &trace.state)).await?;
    ws.feed(status).await?;
    ws.flush().await?;
    while let Some(frame) = ws.next().await {
        if codec.decode(&frame?)?.contains(&Event::Acked(1)) {
            return Ok(start.elapsed().as_secs_f64());
        }
    }
    bail!("the connection ended before the server acknowledged the document")
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
             the log plus checkpoints; Y-Sweet: its folder, the whole document as one \
             `data.ysweet` file per checkpoint; Hocuspocus: `@hocuspocus/extension-sqlite`, the \
             whole document as one row; y-websocket server: y-leveldb, `YPERSISTENCE`), which is \
             then stopped with SIGTERM (Y-Sweet: SIGINT, on which it writes its last checkpoint; \
             SIGTERM kills it without). Y-Sweet keeps no history, only each document's \
             state, and re-encodes the whole document on every update (about 1,000 updates/s \
             on a small trace, slower as the document grows), so typing the history in would \
             take most of an hour: it gets the final document as one update instead, which \
             leaves it storing what typing would (the state is the same). On Y-Sweet the client \
             first creates the document (`POST /doc/new`, which loads it), inside the timed \
             connection. Each run starts a new server process on that storage and \
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
        for t in verdict::LATTICE {
            if let Some(l) = m.get("cold", &case, "time to first sync", t) {
                out.push(format!(
                    "`{t}` cold first sync: {l:.1} ms{} (the storage issue's cold-load target, \
                     ≤ 20 ms for loading alone, is measured by the store bench)",
                    verdict::vs_best_peer(m, "cold", &case, "time to first sync", l)
                ));
            }
        }
        if self.trace.name == STORAGE_TARGET_TRACE {
            out.extend(verdict::against_target(
                m,
                ("cold", &case, "storage"),
                "storage of the automerge-paper document ≤ 8 MiB on disk",
                STORAGE_TARGET_MIB,
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
