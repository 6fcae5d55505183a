//! `trace`: replay real editing traces (`--traces DIR`, the folder holding
//! `sequential_traces/*.json.gz`) from one client, and time until a second client holds the
//! trace's `endContent`; the floor is raw yrs applying the same updates in-process.
//!
//! Each patch `[position, deleted, inserted]` (positions in Unicode code points) becomes one Yjs
//! update, encoded beforehand by one yrs client with UTF-16 offsets (what `engine::Document`
//! and Yjs use); code points are mapped to UTF-16 through the positions of the astral
//! characters in the text, so non-ASCII traces replay exactly. The writer pipelines the updates
//! (no wait per patch); on the native protocol at most [`WINDOW`] are unacknowledged, on Y-Sweet
//! at most [`YSWEET_WINDOW`] (by its sync status, which it echoes), elsewhere
//! TCP backpressure bounds it (and Lattice's bounded room inbox behind it). The observer applies
//! what it receives into a yrs document and is done when its text equals `endContent` (checked
//! in full once its state vector and length match).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Arg, ArgMatches, value_parser};
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use yrs::updates::decoder::Decode;
use yrs::{GetString as _, ReadTxn as _, Text as _, Transact as _};

use super::{BoxFuture, Prepared, Scenario, flag, positive};
use crate::client::{self, ConnectOptions, Event, Protocol};
use crate::report::{Better, FLOOR, Medians, Sample};
use crate::target::{RunningServer, Target};
use crate::verdict;

/// The replaying writer's Yjs client id.
const WRITER: u64 = 0x5452_4331;
/// Updates in flight at most, on protocols that acknowledge.
const WINDOW: u64 = 4096;
/// Updates in flight at most on Y-Sweet: its queue per connection holds 1,024 messages, and
/// the writer's gets two per update (the echo and the sync status).
const YSWEET_WINDOW: u64 = 256;
/// The name of the text in the Yjs document (`ydoc.getText('text')`).
const TEXT: &str = "text";
/// The case that sums all traces.
const ALL: &str = "all traces";
/// The metrics of a peer's replay stopped for its budget.
const UNFINISHED: &str = "unfinished: updates integrated when stopped";
const UNFINISHED_RATE: &str = "unfinished: updates/s when stopped";
/// How long a replay with a budget runs before its rate is used to tell whether it can finish.
const HOPELESS_AFTER: Duration = Duration::from_secs(20);

pub(super) struct Trace;

#[derive(Deserialize)]
struct TraceFile {
    #[serde(rename = "startContent")]
    start_content: String,
    #[serde(rename = "endContent")]
    end_content: String,
    txns: Vec<Txn>,
}

#[derive(Deserialize)]
struct Txn {
    patches: Vec<(usize, usize, String)>,
}

/// One trace, encoded.
pub(super) struct Encoded {
    pub(super) name: String,
    pub(super) updates: Vec<Vec<u8>>,
    end: String,
    end_len_utf16: u32,
    /// The writer's clock after the last update.
    final_clock: u32,
    /// The writer's clock after each update: how many updates a replica's clock covers.
    clocks: Vec<u32>,
    /// The final document as one Yjs update (what a server that keeps no history stores).
    pub(super) state: Vec<u8>,
}

impl Encoded {
    /// How many of the updates a replica whose writer clock is `clock` has integrated.
    fn updates_at(&self, clock: u32) -> usize {
        self.clocks.partition_point(|c| *c <= clock)
    }
}

struct Plan {
    dir: PathBuf,
    traces: Vec<Arc<Encoded>>,
    timeout: Duration,
    /// How long a peer's replay of one trace may take before it is stopped and reported as
    /// unfinished.
    peer_budget: Duration,
}

impl Scenario for Trace {
    fn name(&self) -> &'static str {
        "trace"
    }

    fn about(&self) -> &'static str {
        "replay editing traces through the server; a second client must hold endContent"
    }

    fn args(&self) -> Vec<Arg> {
        vec![
            flag("traces", "trace: the folder holding sequential_traces/*.json.gz (default ../shared/traces from the project root, if present)", value_parser!(PathBuf), None),
            flag("trace-filter", "trace: only the traces whose file name contains this", value_parser!(String), None),
            flag("trace-timeout-secs", "trace: time allowed per trace on Lattice before the bench fails", value_parser!(u64), Some("300")),
            flag("trace-peer-budget-secs", "trace: time a peer may take per trace before its replay is stopped and reported as unfinished", value_parser!(u64), Some("60")),
        ]
    }

    fn prepare(&self, args: &ArgMatches) -> Result<Box<dyn Prepared>> {
        let dir = match args.get_one::<PathBuf>("traces") {
            Some(d) => d.clone(),
            None => PathBuf::from("../shared/traces"),
        };
        let seq = dir.join("sequential_traces");
        if !seq.is_dir() {
            bail!(
                "no traces: {} does not exist. Pass --traces DIR, the folder holding \
                 sequential_traces/*.json.gz (e.g. --traces /work/shared/traces)",
                seq.display()
            );
        }
        let mut files: Vec<PathBuf> = std::fs::read_dir(&seq)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.to_string_lossy().ends_with(".json.gz"))
            .collect();
        files.sort();
        if let Some(filter) = args.get_one::<String>("trace-filter") {
            files.retain(|f| f.file_name().is_some_and(|n| n.to_string_lossy().contains(filter.as_str())));
        }
        if files.is_empty() {
            bail!("no *.json.gz in {} (--traces)", seq.display());
        }
        let traces = files.iter().map(|f| encode_shared(f)).collect::<Result<Vec<_>>>()?;
        Ok(Box::new(Plan {
            dir,
            traces,
            timeout: Duration::from_secs(positive(args, "trace-timeout-secs")?),
            peer_budget: Duration::from_secs(positive(args, "trace-peer-budget-secs")?),
        }))
    }
}

/// Code-point → UTF-16 offsets: the code-point positions of the astral characters (two UTF-16
/// units each) of the current text, kept sorted. Real traces have few or none.
#[derive(Default)]
struct Utf16Map {
    astral: Vec<usize>,
}

impl Utf16Map {
    fn utf16(&self, pos: usize) -> usize {
        pos + self.astral.partition_point(|&a| a < pos)
    }

    fn delete(&mut self, pos: usize, len: usize) {
        self.astral.retain(|&a| a < pos || a >= pos + len);
        for a in &mut self.astral {
            if *a >= pos + len {
                *a -= len;
            }
        }
    }

    fn insert(&mut self, pos: usize, s: &str) {
        let n = s.chars().count();
        for a in &mut self.astral {
            if *a >= pos {
                *a += n;
            }
        }
        let at = self.astral.partition_point(|&a| a < pos);
        let new: Vec<usize> = s
            .chars()
            .enumerate()
            .filter(|(_, c)| c.len_utf16() == 2)
            .map(|(i, _)| pos + i)
            .collect();
        self.astral.splice(at..at, new);
    }
}

/// [`encode`], once per file for the whole bench: `cold` replays a trace `trace` also replays,
/// and encoding the longest takes a while.
pub(super) fn encode_shared(path: &Path) -> Result<Arc<Encoded>> {
    static ENCODED: OnceLock<Mutex<HashMap<PathBuf, Arc<Encoded>>>> = OnceLock::new();
    let key = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let cache = ENCODED.get_or_init(Default::default);
    if let Some(t) = cache.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.get(&key) {
        return Ok(t.clone());
    }
    let t = Arc::new(encode(path)?);
    cache
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .insert(key, t.clone());
    Ok(t)
}

pub(super) fn encode(path: &Path) -> Result<Encoded> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .map(|n| n.trim_end_matches(".json.gz").to_owned())
        .context("trace file name")?;
    let file = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let trace: TraceFile = serde_json::from_reader(std::io::BufReader::new(flate2::read::GzDecoder::new(file)))
        .with_context(|| format!("{} is not a trace ({{startContent, endContent, txns}})", path.display()))?;
    let doc = new_doc(WRITER);
    let text = doc.get_or_insert_text(TEXT);
    let mut map = Utf16Map::default();
    let mut updates = Vec::new();
    let mut clocks = Vec::new();
    let mut len_chars = 0usize;
    if !trace.start_content.is_empty() {
        let mut txn = doc.transact_mut();
        text.insert(&mut txn, 0, &trace.start_content);
        map.insert(0, &trace.start_content);
        len_chars = trace.start_content.chars().count();
        updates.push(txn.encode_update_v1());
        clocks.push(txn.state_vector().get(&yrs::block::ClientID::new(WRITER)));
    }
    for (t, txn_patches) in trace.txns.iter().enumerate() {
        for &(pos, del, ref ins) in &txn_patches.patches {
            if pos + del > len_chars {
                bail!("{name}: txn {t}: patch [{pos}, {del}] beyond the text ({len_chars} characters)");
            }
            let from = map.utf16(pos) as u32;
            let del16 = (map.utf16(pos + del) - map.utf16(pos)) as u32;
            let mut txn = doc.transact_mut();
            if del > 0 {
                text.remove_range(&mut txn, from, del16);
                map.delete(pos, del);
            }
            if !ins.is_empty() {
                text.insert(&mut txn, from, ins);
                map.insert(pos, ins);
            }
            len_chars = len_chars - del + ins.chars().count();
            updates.push(txn.encode_update_v1());
            clocks.push(txn.state_vector().get(&yrs::block::ClientID::new(WRITER)));
        }
    }
    let txn = doc.transact();
    let got = text.get_string(&txn);
    if got != trace.end_content {
        bail!("{name}: replaying the patches locally does not give endContent (encoding bug)");
    }
    Ok(Encoded {
        name,
        updates,
        end_len_utf16: text.len(&txn),
        final_clock: txn.state_vector().get(&yrs::block::ClientID::new(WRITER)),
        clocks,
        state: txn.encode_state_as_update_v1(&yrs::StateVector::default()),
        end: trace.end_content,
    })
}

fn new_doc(client: u64) -> yrs::Doc {
    yrs::Doc::with_options(yrs::Options {
        client_id: yrs::block::ClientID::new(client),
        offset_kind: yrs::OffsetKind::Utf16,
        ..yrs::Options::default()
    })
}

/// An observer's copy of the document: applies updates, and says when it holds the final text.
pub(super) struct Replica {
    doc: yrs::Doc,
    text: yrs::TextRef,
}

impl Replica {
    pub(super) fn new() -> Self {
        let doc = new_doc(0x4f42_5331);
        let text = doc.get_or_insert_text(TEXT);
        Self { doc, text }
    }

    pub(super) fn apply(&mut self, update: &[u8]) -> Result<()> {
        let update = yrs::Update::decode_v1(update).context("undecodable update")?;
        self.doc
            .transact_mut()
            .apply_update(update)
            .context("yrs refused an update")
    }

    /// Cheap checks first (clock, length), the full text only when they match.
    pub(super) fn holds(&self, t: &Encoded) -> bool {
        let txn = self.doc.transact();
        txn.state_vector().get(&yrs::block::ClientID::new(WRITER)) >= t.final_clock
            && self.text.len(&txn) == t.end_len_utf16
            && self.text.get_string(&txn) == t.end
    }

    fn writer_clock(&self) -> u32 {
        self.doc
            .transact()
            .state_vector()
            .get(&yrs::block::ClientID::new(WRITER))
    }

    pub(super) fn explain(&self, t: &Encoded) -> String {
        let txn = self.doc.transact();
        let got = self.text.get_string(&txn);
        let clock = txn.state_vector().get(&yrs::block::ClientID::new(WRITER));
        let first_diff = got.chars().zip(t.end.chars()).position(|(a, b)| a != b);
        format!(
            "writer clock {clock} of {}, {} of {} characters, first difference at character {}",
            t.final_clock,
            got.chars().count(),
            t.end.chars().count(),
            first_diff.map_or("—".into(), |d| d.to_string())
        )
    }
}

impl Prepared for Plan {
    fn describe(&self) -> String {
        let list: Vec<String> = self
            .traces
            .iter()
            .map(|t| format!("{} ({} patches)", t.name, t.updates.len()))
            .collect();
        format!(
            "Traces from `{}/sequential_traces` ({}). One client sends one Yjs update per patch \
             (pipelined; native: at most {WINDOW} unacknowledged; Y-Sweet: each update followed by \
             its sync status, as its client does, and at most {YSWEET_WINDOW} not yet echoed, \
             because it drops relays to a connection whose queue of 1,024 messages is full; \
             y-websocket and Hocuspocus: TCP backpressure only — windowing Hocuspocus by its sync-status messages made it about \
             6× slower, so it gets its faster mode); a second client, \
             subscribed first, applies what it receives into a yrs document. Time = first send → \
             the second client's text equals `endContent` (checked in full: the correctness \
             check). Floor = raw yrs applying the same pre-encoded updates into a fresh document \
             in this process, one transaction per update (decoding included, encoding not). \
             \"{ALL}\" is the sum over the traces. A peer's replay of one trace is stopped \
             once it cannot finish within {budget} s (`--trace-peer-budget-secs`): after {after} s, \
             as soon as its rate so far says it would take longer, and at {budget} s in any case. \
             Its rows \"{UNFINISHED}\" and \"{UNFINISHED_RATE}\" then say how far its observer \
             got (the early updates of a trace are the cheap ones), and it gets no \"{ALL}\" \
             figures.",
            self.dir.display(),
            list.join(", "),
            budget = self.peer_budget.as_secs(),
            after = HOPELESS_AFTER.as_secs()
        )
    }

    fn baseline(&self) -> Result<Vec<Sample>> {
        let mut out = Vec::new();
        let mut total = 0.0;
        let mut total_updates = 0usize;
        for t in &self.traces {
            let mut r = Replica::new();
            let start = Instant::now();
            for u in &t.updates {
                r.apply(u)?;
            }
            let secs = start.elapsed().as_secs_f64();
            if !r.holds(t) {
                bail!("{}: raw yrs does not reach endContent: {}", t.name, r.explain(t));
            }
            total += secs;
            total_updates += t.updates.len();
            out.extend(samples(&t.name, secs, t.updates.len()));
        }
        out.extend(samples(ALL, total, total_updates));
        Ok(out)
    }

    fn run<'a>(&'a self, server: &'a mut RunningServer, target: &'a Target) -> BoxFuture<'a, Result<Vec<Sample>>> {
        Box::pin(async move {
            let mut out = Vec::new();
            let mut total = 0.0;
            let mut total_updates = 0usize;
            let budget = target.is_peer().then_some(self.peer_budget);
            let mut finished = true;
            for t in &self.traces {
                let replayed = replay(server, target, t, self.timeout, budget)
                    .await
                    .with_context(|| format!("trace {} against {}", t.name, target.label))?;
                match replayed {
                    Replayed::Done(secs) => {
                        total += secs;
                        total_updates += t.updates.len();
                        out.extend(samples(&t.name, secs, t.updates.len()));
                    }
                    Replayed::Unfinished { secs, updates } => {
                        eprintln!(
                            "trace {} {}: stopped for its budget, {updates} of {} updates \
                             integrated by the observer in {secs:.1} s",
                            target.id,
                            t.name,
                            t.updates.len()
                        );
                        finished = false;
                        out.push(Sample::new(&t.name, UNFINISHED, "updates", Better::Higher, updates as f64));
                        out.push(Sample::new(
                            &t.name,
                            UNFINISHED_RATE,
                            "updates/s",
                            Better::Higher,
                            updates as f64 / secs,
                        ));
                    }
                }
            }
            if finished {
                out.extend(samples(ALL, total, total_updates));
            }
            Ok(out)
        })
    }

    fn verdicts(&self, m: &Medians) -> Vec<String> {
        let mut out = Vec::new();
        let floor = m.get("trace", ALL, "time to final text", FLOOR);
        for target in verdict::LATTICE {
            if let (Some(l), Some(f)) = (m.get("trace", ALL, "time to final text", target), floor) {
                let worst = self
                    .traces
                    .iter()
                    .filter_map(|t| {
                        Some((
                            t.name.as_str(),
                            m.get("trace", &t.name, "time to final text", target)?
                                / m.get("trace", &t.name, "time to final text", FLOOR)?,
                        ))
                    })
                    .max_by(|a, b| a.1.total_cmp(&b.1));
                out.push(format!(
                    "`{target}` trace replay through the server ≤ 3× raw yrs: {} ({:.2}× over all traces{}{})",
                    verdict::met(l <= 3.0 * f),
                    l / f,
                    worst.map_or(String::new(), |(n, r)| format!("; worst {n} {r:.2}×")),
                    verdict::vs_best_peer(m, "trace", ALL, "time to final text", l)
                ));
            }
        }
        out.push("Correctness: every trace's final text equalled `endContent` on every target (the bench fails otherwise).".into());
        out
    }
}

fn samples(case: &str, secs: f64, updates: usize) -> Vec<Sample> {
    vec![
        Sample::new(case, "time to final text", "ms", Better::Lower, secs * 1e3),
        Sample::new(case, "updates/s", "updates/s", Better::Higher, updates as f64 / secs),
    ]
}

/// How a replay ended.
pub(super) enum Replayed {
    /// Seconds from the first send until the observer held `endContent`.
    Done(f64),
    /// Stopped for its budget, the observer holding the first `updates` of the trace.
    Unfinished { secs: f64, updates: usize },
}

/// Replays one trace against one server until the observer holds `endContent`. Past `timeout`
/// the replay fails; with a `budget`, it stops once it cannot finish within it and says how far
/// the observer got.
pub(super) async fn replay(
    server: &mut RunningServer,
    target: &Target,
    t: &Encoded,
    timeout: Duration,
    budget: Option<Duration>,
) -> Result<Replayed> {
    let doc = format!("bench/trace-{}", t.name);
    let endpoint = server.endpoint.clone();
    let (mut observer, ocodec) = client::connect(&endpoint, &doc, ConnectOptions::default())
        .await
        .context("connecting the observer")?;
    let (writer, wcodec) = client::connect(&endpoint, &doc, ConnectOptions::default())
        .await
        .context("connecting the writer")?;
    let (mut sink, mut source) = writer.split();
    let acked = Arc::new(AtomicU64::new(0));
    let notify = Arc::new(tokio::sync::Notify::new());
    // Native acks and Y-Sweet's sync status bound the window. Y-Sweet needs it: it drops a
    // relay when a connection's queue (1,024 messages) is full, so with TCP backpressure alone
    // the observer misses updates. Bounding Hocuspocus by its sync-status messages made it about
    // six times slower (clownschool: 24 s instead of 3.9 s), so it gets TCP backpressure like
    // the other y-websocket targets, its faster mode.
    let window = match target.protocol {
        Protocol::Native => WINDOW,
        _ => YSWEET_WINDOW,
    };
    let windowed = wcodec.acknowledges();
    let drain = {
        let (acked, notify, codec) = (acked.clone(), notify.clone(), wcodec.clone());
        tokio::spawn(async move {
            while let Some(msg) = source.next().await {
                for ev in codec.decode(&msg?)? {
                    match ev {
                        Event::Acked(seq) => acked.store(seq, Ordering::Release),
                        _ => continue,
                    }
                    notify.notify_one();
                }
            }
            Ok::<_, anyhow::Error>(())
        })
    };
    let began = tokio::time::Instant::now();
    let deadline = began + budget.map_or(timeout, |b| b.min(timeout));
    let start = Instant::now();
    // The observer's clock of the writer, for a replay stopped at its budget.
    let observed = Arc::new(AtomicU32::new(0));
    let updates = &t.updates;
    let send = async {
        for (i, u) in updates.iter().enumerate() {
            let seq = i as u64 + 1;
            if windowed && seq > window && acked.load(Ordering::Acquire) + window < seq {
                sink.flush().await?;
                while acked.load(Ordering::Acquire) + window < seq {
                    notify.notified().await;
                }
            }
            sink.feed(wcodec.update(seq, u)).await?;
            if let Some(status) = wcodec.after_update(seq) {
                sink.feed(status).await?;
            }
            if i % 64 == 63 {
                sink.flush().await?;
            }
        }
        sink.flush().await?;
        Ok::<_, anyhow::Error>(())
    };
    let observe = async {
        let mut replica = Replica::new();
        let observed = observed.clone();
        let mut keepalive = tokio::time::interval(client::KEEPALIVE_INTERVAL);
        loop {
            let msg = tokio::select! {
                msg = observer.next() => msg.context("the observer's connection ended")??,
                _ = keepalive.tick() => {
                    if let Some(frame) = ocodec.keepalive() {
                        observer.send(frame).await?;
                    }
                    continue;
                }
            };
            let mut changed = false;
            for ev in ocodec.decode(&msg)? {
                if let Event::Update(u) = ev {
                    replica.apply(&u)?;
                    changed = true;
                }
            }
            if changed {
                if replica.holds(t) {
                    return Ok::<_, anyhow::Error>((start.elapsed().as_secs_f64(), replica));
                }
                observed.store(replica.writer_clock(), Ordering::Release);
            }
        }
    };
    // A replay with a budget stops as soon as it cannot finish within it at its rate so far:
    // every server's rate stays or falls as the document grows, so waiting out the budget would
    // only confirm it.
    let hopeless = async {
        let Some(budget) = budget else {
            return std::future::pending().await;
        };
        tokio::time::sleep(HOPELESS_AFTER.min(budget)).await;
        loop {
            let done = t.updates_at(observed.load(Ordering::Acquire)).max(1);
            let projected = start.elapsed().as_secs_f64() * t.updates.len() as f64 / done as f64;
            if projected > budget.as_secs_f64() {
                return;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    };
    // Both halves run together; the first error ends the replay.
    let result = tokio::time::timeout_at(deadline, async {
        tokio::select! {
            r = async { tokio::try_join!(send, observe) } => r.map(Some),
            () = hopeless => Ok(None),
        }
    })
    .await;
    drain.abort();
    let unfinished = || Replayed::Unfinished {
        secs: start.elapsed().as_secs_f64(),
        updates: t.updates_at(observed.load(Ordering::Acquire)),
    };
    match result {
        Ok(Ok(Some(((), (secs, _))))) => Ok(Replayed::Done(secs)),
        Ok(Ok(None)) => Ok(unfinished()),
        Ok(Err(e)) => Err(e),
        Err(_) if budget.is_some_and(|b| b < timeout) => Ok(unfinished()),
        Err(_) => {
            bail!(
                "the observer did not hold endContent within {timeout:?} ({} updates sent, {} acknowledged)",
                t.updates.len(),
                acked.load(Ordering::Acquire)
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_points_map_to_utf16_around_astral_characters() {
        let mut m = Utf16Map::default();
        m.insert(0, "a😀b😀c");
        // a=0 😀=1 b=2 😀=3 c=4 (code points); UTF-16: a0 😀1-2 b3 😀4-5 c6
        assert_eq!(m.utf16(0), 0);
        assert_eq!(m.utf16(2), 3);
        assert_eq!(m.utf16(4), 6);
        m.delete(1, 2); // "a😀c"
        assert_eq!(m.utf16(2), 3);
        m.insert(0, "😀"); // "😀a😀c"
        assert_eq!(m.utf16(1), 2);
        assert_eq!(m.utf16(3), 5);
    }

    #[test]
    fn a_small_trace_with_emoji_encodes_to_its_end_content() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("tiny.json.gz");
        let json = serde_json::json!({
            "startContent": "",
            "endContent": "h😀llo wörld",
            "txns": [
                {"patches": [[0, 0, "hello"]]},
                {"patches": [[1, 1, "😀"], [5, 0, " world"]]},
                {"patches": [[7, 1, "ö"]]}
            ]
        });
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, json.to_string().as_bytes()).expect("gzip");
        std::fs::write(&path, gz.finish().expect("gzip")).expect("write");
        let t = encode(&path).expect("encode");
        assert_eq!(t.updates.len(), 4);
        let mut r = Replica::new();
        for u in &t.updates {
            r.apply(u).expect("apply");
        }
        assert!(r.holds(&t), "{}", r.explain(&t));
    }
}
