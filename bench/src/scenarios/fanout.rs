//! `fanout`: one writer, N readers on one document, keystroke-sized updates, in a burst and
//! paced.
//!
//! The writer's updates are encoded beforehand with yrs (one character appended per update, one
//! Yjs client), and are the same bytes for every target (native: the delta's `yjs`). A reader
//! learns which updates a frame brings from the writer's clock ranges in it
//! (`client::clock_ranges`: the update is decoded, never integrated), so merged relays count as
//! the updates they hold and the reader stays cheap; an update counts once it and every earlier
//! one arrived, as a Yjs client would integrate it, so a dropped update is a missing delivery. Latency is from an update's send to its arrival at a reader, over
//! every (update, reader) pair; deliveries/s is updates × readers ÷ (last arrival − first send).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Arg, ArgMatches, value_parser};
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt, stream};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

use super::{BoxFuture, Prepared, Scenario, flag, positive};
use crate::client::{self, Codec, ConnectOptions, Endpoint, Event, Ws};
use crate::report::{Better, Medians, Sample, quantile};
use crate::target::{RunningServer, Target};
use crate::verdict;

/// The writer's Yjs client id (32-bit, as Lattice requires).
pub(super) const WRITER: u64 = 0x4641_4e31;
/// Readers connecting at once.
pub(super) const CONNECT_CONCURRENCY: usize = 20;
/// Time allowed after the last send for every delivery to arrive.
pub(super) const DRAIN_TIMEOUT: Duration = Duration::from_secs(120);
/// Time a WebSocket reader still missing updates waits for a frame once the writer is done.
pub(super) const QUIET_TIMEOUT: Duration = Duration::from_secs(10);

pub(super) struct Fanout;

struct Plan {
    readers: usize,
    burst: Vec<Vec<u8>>,
    paced: Vec<Vec<u8>>,
    rate: u32,
}

impl Scenario for Fanout {
    fn name(&self) -> &'static str {
        "fanout"
    }

    fn about(&self) -> &'static str {
        "1 writer → N readers, keystroke updates, burst and paced"
    }

    fn args(&self) -> Vec<Arg> {
        vec![
            flag("fanout-readers", "fanout: readers on the document", value_parser!(usize), Some("100")),
            flag("fanout-updates", "fanout: updates sent in the burst", value_parser!(usize), Some("5000")),
            flag("paced-updates", "fanout: updates sent paced (0 skips the paced case)", value_parser!(usize), Some("1000")),
            flag("paced-rate", "fanout: paced updates per second", value_parser!(u32), Some("100")),
        ]
    }

    fn prepare(&self, args: &ArgMatches) -> Result<Box<dyn Prepared>> {
        let rate = args.get_one::<u32>("paced-rate").copied().unwrap_or(100);
        if rate == 0 {
            bail!("--paced-rate must be positive");
        }
        let paced = args.get_one::<usize>("paced-updates").copied().unwrap_or_default();
        Ok(Box::new(Plan {
            readers: positive(args, "fanout-readers")?,
            burst: client::keystrokes(positive(args, "fanout-updates")?, WRITER),
            paced: client::keystrokes(paced, WRITER),
            rate,
        }))
    }
}

impl Plan {
    fn paced_case(&self) -> String {
        format!("paced {}/s", self.rate)
    }
}

impl Prepared for Plan {
    fn describe(&self) -> String {
        let paced = if self.paced.is_empty() {
            "**paced**: skipped (`--paced-updates 0`)".to_owned()
        } else {
            format!(
                "**paced** = {p} updates at {rate}/s (shortened from 5,000 so a case stays ≈ \
                 {secs:.0} s; `--paced-updates`)",
                p = self.paced.len(),
                rate = self.rate,
                secs = self.paced.len() as f64 / f64::from(self.rate),
            )
        };
        format!(
            "One writer sends keystroke-sized updates (one character appended, ≈ 25–30 bytes of \
             Yjs; the same bytes to every target) to one document with {r} readers: **burst** = \
             {b} updates as fast as the connection takes them; {paced}. Readers count the \
             updates a frame holds from the writer's clock ranges in it (the update is decoded \
             with yrs, not applied), so merged relays count as the updates they carry; an update \
             counts once it and every earlier one have arrived (a Yjs client integrates nothing \
             past a gap), so one a server drops is a missing delivery: it fails the run on Lattice, \
             and a peer that loses any is reported with its missing deliveries (those behind a \
             gap included) and the relays it dropped, without latency or rate for that case. A \
             reader still missing updates gives up {quiet} s after its last frame once the writer \
             is done. Latency: an \
             update's send → its arrival at a reader, over all (update, reader) pairs; \
             deliveries/s = updates × readers ÷ (last arrival − first send). \
             \"Lattice (Hocuspocus)\" is Lattice's `/hocuspocus` endpoint spoken to as \
             Hocuspocus is (its protocol, the document's name in every message).",
            r = self.readers,
            b = self.burst.len(),
            quiet = QUIET_TIMEOUT.as_secs(),
        )
    }

    /// Every target, Lattice's Hocuspocus endpoint included.
    fn supports(&self, _target: &Target) -> bool {
        true
    }

    fn run<'a>(&'a self, server: &'a mut RunningServer, target: &'a Target) -> BoxFuture<'a, Result<Vec<Sample>>> {
        Box::pin(async move {
            let mut out = Vec::new();
            let mut cases = vec![("burst".to_owned(), &self.burst, None)];
            if !self.paced.is_empty() {
                let period = Duration::from_secs_f64(1.0 / f64::from(self.rate));
                cases.push((self.paced_case(), &self.paced, Some(period)));
            }
            for (i, (case, updates, pace)) in cases.into_iter().enumerate() {
                let doc = format!("bench/fanout-{i}");
                let measured = one_case(server, target, &doc, self.readers, updates, pace)
                    .await
                    .with_context(|| format!("fanout {case} against {}", target.label))?;
                let r = match measured {
                    Measured::Complete(r) => r,
                    Measured::Lost(lost) => {
                        out.push(Sample::new(&case, "missing deliveries", "deliveries", Better::Lower, lost.missing as f64));
                        out.push(Sample::new(&case, "relays dropped", "deliveries", Better::Lower, lost.dropped as f64));
                        continue;
                    }
                };
                out.push(Sample::new(&case, "deliveries/s", "deliveries/s", Better::Higher, r.deliveries_per_s));
                out.push(Sample::new(&case, "p50 latency", "ms", Better::Lower, r.p50_ms));
                out.push(Sample::new(&case, "p99 latency", "ms", Better::Lower, r.p99_ms));
                out.push(Sample::new(&case, "max latency", "ms", Better::Lower, r.max_ms));
                out.push(Sample::new(&case, "frames per reader", "frames", Better::Lower, r.frames_per_reader));
                out.push(Sample::new(&case, "missing deliveries", "deliveries", Better::Lower, 0.0));
                out.push(Sample::new(&case, "relays dropped", "deliveries", Better::Lower, 0.0));
            }
            Ok(out)
        })
    }

    fn verdicts(&self, m: &Medians) -> Vec<String> {
        // Issue 9's targets (then against Hocuspocus) and issue 21's (paced p50), all against
        // the best peer on the row.
        let mut out = verdict::against_best_peer(
            m,
            ("fanout", "burst", "deliveries/s"),
            "burst deliveries/s ≥ 2× the best peer's",
            2.0,
        );
        for case in ["burst".to_owned(), self.paced_case()] {
            out.extend(verdict::against_best_peer(
                m,
                ("fanout", &case, "p50 latency"),
                &format!("{case} p50 ≤ ½ the best peer's"),
                0.5,
            ));
        }
        out
    }
}

/// The figures of one case for one kind of reader.
pub(super) struct CaseResult {
    pub(super) deliveries_per_s: f64,
    pub(super) p50_ms: f64,
    pub(super) p99_ms: f64,
    pub(super) max_ms: f64,
    pub(super) frames_per_reader: f64,
}

/// What one reader received: when each of the writer's updates arrived (index = update number
/// − 1), in how many frames, and why it stopped early, if it did. An update counts as arrived
/// once it and every earlier one have: a Yjs client integrates nothing past a gap, so an update
/// a server dropped shows as missing, and so do all after it.
pub(super) struct ReaderOutcome {
    pub(super) arrivals: Vec<Instant>,
    /// Which updates came, by number − 1, including those past a gap.
    seen: Vec<bool>,
    pub(super) frames: u64,
    pub(super) error: Option<anyhow::Error>,
}

impl ReaderOutcome {
    pub(super) fn new(n: usize) -> Self {
        Self {
            arrivals: Vec::with_capacity(n),
            seen: vec![false; n],
            frames: 0,
            error: None,
        }
    }

    /// Counts the writer's updates that `update`, arrived at `now`, brings: the writer's clock
    /// ranges in it say which of the `n` updates it holds, merged or not.
    pub(super) fn record(&mut self, update: &[u8], now: Instant, n: usize) {
        match client::clock_ranges(update, WRITER) {
            Ok(ranges) => {
                let n = n.min(self.seen.len());
                for r in ranges {
                    let (from, to) = ((r.start as usize).min(n), (r.end as usize).min(n));
                    self.seen[from..to].fill(true);
                }
                while self.arrivals.len() < n && self.seen[self.arrivals.len()] {
                    self.arrivals.push(now);
                }
            }
            Err(e) => self.error = Some(e),
        }
    }
}

/// When the readers give up waiting: generous while the writer sends, then [`DRAIN_TIMEOUT`]
/// after its last send, or (WebSocket readers) [`QUIET_TIMEOUT`] after their last frame once
/// the writer is done.
#[derive(Clone)]
pub(super) struct Deadline(Arc<Mutex<(tokio::time::Instant, Option<tokio::time::Instant>)>>);

impl Deadline {
    /// A deadline for a case that sends `n` updates, paced or not.
    pub(super) fn for_case(n: usize, pace: Option<Duration>) -> Self {
        let wait = DRAIN_TIMEOUT + pace.map_or(Duration::ZERO, |p| p * n as u32);
        Self(Arc::new(Mutex::new((tokio::time::Instant::now() + wait, None))))
    }

    pub(super) fn get(&self) -> tokio::time::Instant {
        self.0
            .lock()
            .map(|d| d.0)
            .unwrap_or_else(|_| tokio::time::Instant::now())
    }

    /// [`Deadline::get`], or sooner for a reader whose last frame came at `last_frame` once
    /// the writer is done: a server still delivering keeps sending, so a reader that heard
    /// nothing for [`QUIET_TIMEOUT`] after the last send waits for updates that were dropped.
    pub(super) fn until_quiet(&self, last_frame: tokio::time::Instant) -> tokio::time::Instant {
        match self.0.lock() {
            Ok(d) => match d.1 {
                Some(done) => d.0.min(last_frame.max(done) + QUIET_TIMEOUT),
                None => d.0,
            },
            Err(_) => tokio::time::Instant::now(),
        }
    }

    /// The writer is done: every delivery must arrive within [`DRAIN_TIMEOUT`].
    pub(super) fn writer_done(&self) {
        if let Ok(mut d) = self.0.lock() {
            let now = tokio::time::Instant::now();
            *d = (now + DRAIN_TIMEOUT, Some(now));
        }
    }
}

/// The one writer of a case, over a WebSocket.
pub(super) struct Writer {
    sink: SplitSink<Ws, Message>,
    codec: Codec,
    drain: JoinHandle<Result<()>>,
}

/// When the writer sent: the first send and each update's.
pub(super) struct Sent {
    pub(super) first: Instant,
    pub(super) at: Vec<Instant>,
}

impl Writer {
    pub(super) async fn connect(endpoint: &Endpoint, doc: &str) -> Result<Self> {
        let (writer, codec) = client::connect(endpoint, doc, ConnectOptions::default())
            .await
            .context("connecting the writer")?;
        let (sink, mut source) = writer.split();
        // The writer's own inbound frames (acks, echoes, sync status) are drained meanwhile so
        // that its outbox on the server never fills; a refusal there fails the case.
        let drain_codec = codec.clone();
        let drain = tokio::spawn(async move {
            while let Some(msg) = source.next().await {
                drain_codec.decode(&msg?)?;
            }
            Ok::<_, anyhow::Error>(())
        });
        Ok(Self { sink, codec, drain })
    }

    /// Sends `updates`, one per `pace` or as fast as the connection takes them.
    pub(super) async fn send(&mut self, updates: &[Vec<u8>], pace: Option<Duration>) -> Result<Sent> {
        let sink = &mut self.sink;
        let mut sent_at = Vec::with_capacity(updates.len());
        let first = Instant::now();
        let start = tokio::time::Instant::now();
        for (i, u) in updates.iter().enumerate() {
            let seq = i as u64 + 1;
            let frame = self.codec.update(seq, u);
            // Y-Sweet's client follows every update with its sync status.
            let status = self.codec.after_update(seq);
            match pace {
                Some(period) => {
                    tokio::time::sleep_until(start + period * i as u32).await;
                    sent_at.push(Instant::now());
                    sink.feed(frame).await.context("sending")?;
                    if let Some(status) = status {
                        sink.feed(status).await.context("sending")?;
                    }
                    sink.flush().await.context("sending")?;
                }
                None => {
                    sent_at.push(Instant::now());
                    sink.feed(frame).await.context("sending")?;
                    if let Some(status) = status {
                        sink.feed(status).await.context("sending")?;
                    }
                    if i % 64 == 63 {
                        sink.flush().await.context("sending")?;
                    }
                }
            }
        }
        sink.flush().await.context("sending")?;
        Ok(Sent { first, at: sent_at })
    }

    /// Once the readers are done: fails if the writer's connection failed meanwhile.
    pub(super) async fn finish(self) -> Result<()> {
        if self.drain.is_finished() {
            self.drain.await?.context("the writer's connection")?;
        } else {
            self.drain.abort();
        }
        Ok(())
    }
}

/// `readers` WebSocket readers of `doc`, connected and synced.
pub(super) async fn connect_websocket_readers(
    endpoint: &Endpoint,
    doc: &str,
    readers: usize,
) -> Result<Vec<(Ws, Codec)>> {
    stream::iter(0..readers)
        .map(|_| client::connect(endpoint, doc, ConnectOptions::default()))
        .buffer_unordered(CONNECT_CONCURRENCY)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_>>()
        .context("connecting the readers")
}

/// A WebSocket reader: counts the writer's updates in every frame until it has `n` of them,
/// the connection fails or `deadline` passes.
pub(super) fn spawn_websocket_reader(
    mut ws: Ws,
    codec: Codec,
    n: usize,
    deadline: Deadline,
) -> JoinHandle<ReaderOutcome> {
    tokio::spawn(async move {
        let mut out = ReaderOutcome::new(n);
        let mut last_frame = tokio::time::Instant::now();
        while out.arrivals.len() < n {
            let msg = match tokio::time::timeout_at(deadline.until_quiet(last_frame), ws.next()).await {
                Err(_) => break,
                Ok(None) => {
                    out.error = Some(anyhow::anyhow!("the connection ended"));
                    break;
                }
                Ok(Some(Err(e))) => {
                    out.error = Some(e.into());
                    break;
                }
                Ok(Some(Ok(msg))) => msg,
            };
            let now = Instant::now();
            last_frame = tokio::time::Instant::now();
            let events = match codec.decode(&msg) {
                Ok(ev) => ev,
                Err(e) => {
                    out.error = Some(e);
                    break;
                }
            };
            for ev in events {
                if let Event::Update(u) = ev {
                    out.frames += 1;
                    out.record(&u, now, n);
                }
            }
        }
        out
    })
}

/// Waits for the reader tasks.
pub(super) async fn join_readers(tasks: Vec<JoinHandle<ReaderOutcome>>) -> Result<Vec<ReaderOutcome>> {
    let mut outcomes = Vec::with_capacity(tasks.len());
    for t in tasks {
        outcomes.push(t.await.context("a reader task panicked")?);
    }
    Ok(outcomes)
}

/// Latency over every (update, reader) pair and deliveries/s; fails if a delivery is missing,
/// saying how many and why.
pub(super) fn summarize(outcomes: &[ReaderOutcome], sent: &Sent) -> Result<CaseResult> {
    let n = sent.at.len();
    let readers = outcomes.len();
    let missing: usize = outcomes.iter().map(|o| n - o.arrivals.len()).sum();
    if missing > 0 {
        let incomplete = outcomes.iter().filter(|o| o.arrivals.len() < n).count();
        let why = outcomes
            .iter()
            .find_map(|o| o.error.as_ref())
            .map_or_else(
                || {
                    format!(
                        "timed out: nothing within {DRAIN_TIMEOUT:?} of the last send (WebSocket \
                         readers: {QUIET_TIMEOUT:?} of their last frame)"
                    )
                },
                |e| format!("{e:#}"),
            );
        bail!(
            "{missing} of {} deliveries missing ({incomplete} of {readers} readers incomplete): {why}",
            n * readers
        );
    }
    let mut latencies = Vec::with_capacity(n * readers);
    let mut last = sent.first;
    let mut frames = 0;
    for o in outcomes {
        frames += o.frames;
        for (i, at) in o.arrivals.iter().enumerate() {
            last = last.max(*at);
            latencies.push(at.saturating_duration_since(sent.at[i]).as_secs_f64() * 1e3);
        }
    }
    latencies.sort_by(f64::total_cmp);
    Ok(CaseResult {
        deliveries_per_s: (n * readers) as f64 / last.duration_since(sent.first).as_secs_f64(),
        p50_ms: quantile(&latencies, 0.5),
        p99_ms: quantile(&latencies, 0.99),
        max_ms: latencies.last().copied().unwrap_or(f64::NAN),
        frames_per_reader: frames as f64 / readers as f64,
    })
}

/// Deliveries that did not come, over every reader: `missing` are those a Yjs client could not
/// integrate (never received, or behind one that never came), `dropped` those never received.
pub(super) struct Losses {
    pub(super) missing: usize,
    pub(super) dropped: usize,
}

pub(super) fn losses(outcomes: &[ReaderOutcome], n: usize) -> Losses {
    Losses {
        missing: outcomes.iter().map(|o| n - o.arrivals.len()).sum(),
        dropped: outcomes.iter().map(|o| o.seen.iter().filter(|s| !**s).count()).sum(),
    }
}

/// What one case measured: its figures, or (a peer only) the deliveries it lost.
enum Measured {
    Complete(CaseResult),
    Lost(Losses),
}

async fn one_case(
    server: &mut RunningServer,
    target: &Target,
    doc: &str,
    readers: usize,
    updates: &[Vec<u8>],
    pace: Option<Duration>,
) -> Result<Measured> {
    let n = updates.len();
    let endpoint = server.endpoint.clone();
    let conns = connect_websocket_readers(&endpoint, doc, readers).await?;
    let deadline = Deadline::for_case(n, pace);
    let tasks = conns
        .into_iter()
        .map(|(ws, codec)| spawn_websocket_reader(ws, codec, n, deadline.clone()))
        .collect();
    let mut writer = Writer::connect(&endpoint, doc).await?;
    let sent = writer.send(updates, pace).await?;
    deadline.writer_done();
    let outcomes = join_readers(tasks).await?;
    writer.finish().await?;
    server.check_alive()?;
    // A peer that dropped relays (Y-Sweet does when a connection's queue of 1,024 messages is
    // full) is reported as such; on Lattice, or with a failed connection, it fails the bench.
    let lost = losses(&outcomes, n);
    if lost.missing > 0 && target.is_peer() && outcomes.iter().all(|o| o.error.is_none()) {
        eprintln!(
            "fanout {}: {} of {} deliveries missing ({} relays never received); its latency and \
             rate are not reported for this case",
            target.id,
            lost.missing,
            n * readers,
            lost.dropped
        );
        return Ok(Measured::Lost(lost));
    }
    Ok(Measured::Complete(summarize(&outcomes, &sent)?))
}
