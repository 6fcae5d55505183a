//! Writers that keep books: native clients on `/v1/sync` that write checkable edits and record
//! every acknowledgement, and the check that the stored documents hold every acknowledged edit.
//!
//! Each writer owns one text in one document and appends tokens `n;` to it, `n` counting its
//! edits from 1 (optionally padded, `n:xxxx;`, to fill a disk faster). It keeps its own replica
//! and follows docs/protocol.md to the letter, but unlike the library client it remembers which
//! edit each `seq` carried, so an `ack{seq}` names exactly the edits it promises are durable
//! and visible: every unrefused delta with a `seq` up to it. After a disconnect it resubscribes
//! with its state and sends what the server lacks as one new delta, which then covers every
//! edit not acknowledged yet. An edit the server turns out to hold although it never
//! acknowledged it (the ack was lost in a crash) is counted apart, never as acknowledged.
//!
//! At the end, [`verify`] reads each document over HTTP (`GET /v1/docs/{doc}`, which loads it
//! from the store, not from a live room) and looks for every acknowledged token.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use lattice_engine::protocol::{ClientMsg, ServerMsg};
use lattice_engine::{DocId, Document, ReplicaId};
use tokio::sync::watch;

use crate::wire::{self, Frame};

/// A writer with unacknowledged edits that hears nothing for this long drops its connection
/// and resyncs (counted as a stall: on a healthy server it never happens).
const STALL: Duration = Duration::from_secs(10);
/// Reconnect backoff: from this, doubled per failure, with jitter.
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_millis(1_000);

/// What a writer does.
#[derive(Clone, Debug)]
pub(crate) struct WriterSpec {
    /// Index, for reports; also names its text (`w{index}`).
    pub index: u32,
    pub doc: DocId,
    pub token: String,
    pub replica: ReplicaId,
    /// Time between edits while synced.
    pub edit_every: Duration,
    /// Edits sent and not yet acknowledged, at most.
    pub window: usize,
    /// Bytes of padding in each token.
    pub padding: usize,
}

impl WriterSpec {
    pub(crate) fn text(&self) -> String {
        format!("w{}", self.index)
    }
}

/// What the writers are told to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    Write,
    /// No new edits; stay connected until every edit is acknowledged.
    Drain,
    Stop,
}

/// One acknowledgement, as the writer saw it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct AckEvent {
    pub at: Instant,
    pub edits: usize,
}

/// The books of a group of writers.
#[derive(Debug, Default)]
pub(crate) struct Ledger {
    inner: Mutex<Books>,
}

#[derive(Debug, Default)]
struct Books {
    acked: BTreeMap<u32, BTreeSet<u64>>,
    /// Per edit: made → acknowledged, with the time it was made.
    latencies: Vec<(Instant, Duration)>,
    acks: Vec<AckEvent>,
    /// How connections ended or failed: close codes, resets, refused connections.
    ends: BTreeMap<String, u64>,
    errors: BTreeMap<String, u64>,
    /// The first message of each error code.
    error_examples: BTreeMap<String, String>,
    made: BTreeMap<u32, u64>,
    /// Edits the server held without having acknowledged them (a lost ack).
    held_unacked: u64,
    stalls: u64,
    sessions: u64,
}

/// A copy of the books.
#[derive(Clone, Debug, Default)]
pub(crate) struct Summary {
    pub made: u64,
    pub acked: u64,
    pub held_unacked: u64,
    pub stalls: u64,
    pub sessions: u64,
    pub ends: BTreeMap<String, u64>,
    pub errors: BTreeMap<String, u64>,
    pub error_examples: BTreeMap<String, String>,
}

impl Ledger {
    fn books(&self) -> std::sync::MutexGuard<'_, Books> {
        match self.inner.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    fn acked(&self, writer: u32, edits: &[Edit], at: Instant) {
        let mut b = self.books();
        let set = b.acked.entry(writer).or_default();
        for e in edits {
            set.insert(e.n);
        }
        for e in edits {
            b.latencies.push((e.made, at - e.made));
        }
        b.acks.push(AckEvent {
            at,
            edits: edits.len(),
        });
    }

    fn ended(&self, how: String) {
        *self.books().ends.entry(how).or_default() += 1;
    }

    fn error(&self, code: &str, message: &str) {
        let mut b = self.books();
        *b.errors.entry(code.to_owned()).or_default() += 1;
        b.error_examples
            .entry(code.to_owned())
            .or_insert_with(|| message.chars().take(200).collect());
    }

    fn made(&self, writer: u32) {
        *self.books().made.entry(writer).or_default() += 1;
    }

    pub(crate) fn summary(&self) -> Summary {
        let b = self.books();
        Summary {
            made: b.made.values().sum(),
            acked: b.acked.values().map(|s| s.len() as u64).sum(),
            held_unacked: b.held_unacked,
            stalls: b.stalls,
            sessions: b.sessions,
            ends: b.ends.clone(),
            errors: b.errors.clone(),
            error_examples: b.error_examples.clone(),
        }
    }

    /// Acknowledgements received in `[from, to)`.
    pub(crate) fn acks_between(&self, from: Instant, to: Instant) -> Vec<AckEvent> {
        self.books()
            .acks
            .iter()
            .filter(|a| a.at >= from && a.at < to)
            .copied()
            .collect()
    }

    /// The first acknowledgement at or after `from`.
    pub(crate) fn first_ack_after(&self, from: Instant) -> Option<Instant> {
        self.books()
            .acks
            .iter()
            .map(|a| a.at)
            .filter(|at| *at >= from)
            .min()
    }

    /// Latencies of the acknowledged edits made in `[from, to)`.
    pub(crate) fn latencies_of_edits_made(&self, from: Instant, to: Instant) -> Vec<Duration> {
        self.books()
            .latencies
            .iter()
            .filter(|(made, _)| *made >= from && *made < to)
            .map(|(_, l)| *l)
            .collect()
    }

    fn acked_of(&self, writer: u32) -> BTreeSet<u64> {
        self.books().acked.get(&writer).cloned().unwrap_or_default()
    }
}

#[derive(Clone, Copy, Debug)]
struct Edit {
    n: u64,
    made: Instant,
    /// The `seq` of the delta that carries it on this connection.
    covered_by: Option<u64>,
}

/// A running writer.
#[derive(Debug)]
pub(crate) struct Writer {
    thread: std::thread::JoinHandle<Result<()>>,
}

impl Writer {
    /// Starts `spec` against `addr` on a thread of its own (its own runtime, so the timing of
    /// its edits does not depend on what else the chaos program is doing).
    pub(crate) fn start(
        addr: SocketAddr,
        spec: WriterSpec,
        ledger: Arc<Ledger>,
        phase: watch::Receiver<Phase>,
    ) -> Writer {
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(run(addr, spec, ledger, phase));
            Ok(())
        });
        Writer { thread }
    }

    pub(crate) fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }

    pub(crate) fn join(self) -> Result<()> {
        match self.thread.join() {
            Ok(r) => r,
            Err(_) => bail!("a writer thread panicked"),
        }
    }
}

struct State {
    spec: WriterSpec,
    ledger: Arc<Ledger>,
    doc: Document,
    next_edit: u64,
    next_seq: u64,
    unacked: VecDeque<Edit>,
}

async fn run(
    addr: SocketAddr,
    spec: WriterSpec,
    ledger: Arc<Ledger>,
    phase: watch::Receiver<Phase>,
) {
    let mut state = State {
        doc: Document::new(spec.replica),
        spec,
        ledger,
        next_edit: 1,
        next_seq: 0,
        unacked: VecDeque::new(),
    };
    let mut backoff = BACKOFF_MIN;
    loop {
        let now = *phase.borrow();
        if now == Phase::Stop || (now == Phase::Drain && state.unacked.is_empty()) {
            return;
        }
        match wire::native_session(addr, &state.spec.token, Some(state.spec.replica.get())).await {
            Ok(mut ws) => {
                state.ledger.books().sessions += 1;
                let (how, synced) = state.session(&mut ws, phase.clone()).await;
                for e in &mut state.unacked {
                    e.covered_by = None;
                }
                if synced {
                    backoff = BACKOFF_MIN;
                }
                match how {
                    End::Told => return,
                    End::Stall => {
                        state.ledger.books().stalls += 1;
                        state.ledger.ended("stall".into());
                    }
                    End::Closed(code) => state.ledger.ended(match code {
                        Some(c) => format!("close {c}"),
                        None => "reset".into(),
                    }),
                    End::Error(what) => state.ledger.ended(if what.starts_with("send failed") {
                        "reset".into()
                    } else {
                        what
                    }),
                }
            }
            Err(e) => state.ledger.ended(connect_failure(&e)),
        }
        let jitter = 0.5 + rand::random::<f64>();
        tokio::time::sleep(backoff.mul_f64(jitter)).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

fn connect_failure(e: &anyhow::Error) -> String {
    let text = format!("{e:#}");
    if text.contains("Connection refused") {
        "connect refused".into()
    } else if text.contains("503") {
        "upgrade 503".into()
    } else if text.contains("expected welcome") {
        "hello refused".into()
    } else {
        "connect failed".into()
    }
}

enum End {
    Told,
    Stall,
    Closed(Option<u16>),
    Error(String),
}

impl State {
    /// One connection, until it ends; whether it got as far as a sync.
    async fn session(
        &mut self,
        ws: &mut wire::Ws,
        mut phase: watch::Receiver<Phase>,
    ) -> (End, bool) {
        let doc_id = self.spec.doc.clone();
        let subscribe = ClientMsg::Subscribe {
            doc: doc_id.clone(),
            state: self.doc.state(),
        };
        if let Err(e) = wire::send(ws, &subscribe).await {
            return (End::Error(format!("send failed: {e}")), false);
        }
        let mut synced = false;
        let mut tick = tokio::time::interval(self.spec.edit_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut last_progress = tokio::time::Instant::now();
        loop {
            let writing = *phase.borrow() == Phase::Write;
            if *phase.borrow() == Phase::Drain && self.unacked.is_empty() {
                return (End::Told, synced);
            }
            let can_edit = synced && writing && self.unacked.len() < self.spec.window;
            let stall_at = last_progress + STALL;
            tokio::select! {
                frame = wire::read_native(ws) => match frame {
                    Frame::Native(msg) => {
                        if let ServerMsg::Ack { .. } | ServerMsg::Sync { .. } = msg {
                            last_progress = tokio::time::Instant::now();
                        }
                        match self.handle(ws, msg).await {
                            Ok(true) => synced = true,
                            Ok(false) => {}
                            Err(e) => return (End::Error(e), synced),
                        }
                    }
                    Frame::Closed(code) => return (End::Closed(code), synced),
                    Frame::Yjs(_) => return (End::Error("y-websocket frame".into()), synced),
                },
                _ = tick.tick(), if can_edit => {
                    if let Err(e) = self.edit(ws).await {
                        return (End::Error(format!("send failed: {e}")), synced);
                    }
                }
                changed = phase.changed() => {
                    if changed.is_err() || *phase.borrow() == Phase::Stop {
                        let _ = ws.close(None).await;
                        return (End::Told, synced);
                    }
                }
                _ = tokio::time::sleep_until(stall_at), if !self.unacked.is_empty() => {
                    let _ = ws.close(None).await;
                    return (End::Stall, synced);
                }
            }
        }
    }

    async fn edit(&mut self, ws: &mut wire::Ws) -> Result<()> {
        let n = self.next_edit;
        self.next_edit += 1;
        let token = if self.spec.padding == 0 {
            format!("{n};")
        } else {
            format!("{n}:{};", "x".repeat(self.spec.padding))
        };
        let text = self.spec.text();
        let at = self.doc.text_len(&text);
        let delta = self.doc.text_insert(&text, at, &token)?;
        self.next_seq += 1;
        let seq = self.next_seq;
        self.unacked.push_back(Edit {
            n,
            made: Instant::now(),
            covered_by: Some(seq),
        });
        self.ledger.made(self.spec.index);
        wire::send(
            ws,
            &ClientMsg::Delta {
                doc: self.spec.doc.clone(),
                seq,
                delta,
            },
        )
        .await
    }

    /// Handles one server message; `Ok(true)` when it was the document's sync. `Err` ends the
    /// connection (the writer reconnects).
    async fn handle(&mut self, ws: &mut wire::Ws, msg: ServerMsg) -> Result<bool, String> {
        match msg {
            ServerMsg::Sync { doc, delta, state } if doc == self.spec.doc => {
                self.doc
                    .apply(&delta)
                    .map_err(|e| format!("sync delta refused: {e}"))?;
                let missing = self
                    .doc
                    .diff_since(&state)
                    .map_err(|e| format!("server state unreadable: {e}"))?;
                if missing.is_empty() {
                    // The server holds every edit already: those not acknowledged were
                    // committed before a crash took their ack, or sit in a room's memory.
                    // Either way they are not acknowledged, and not counted as such.
                    let held = self.unacked.len() as u64;
                    self.unacked.clear();
                    self.ledger.books().held_unacked += held;
                } else {
                    self.next_seq += 1;
                    let seq = self.next_seq;
                    for e in &mut self.unacked {
                        e.covered_by = Some(seq);
                    }
                    wire::send(
                        ws,
                        &ClientMsg::Delta {
                            doc,
                            seq,
                            delta: missing,
                        },
                    )
                    .await
                    .map_err(|e| format!("send failed: {e}"))?;
                }
                Ok(true)
            }
            ServerMsg::Ack { doc, seq } if doc == self.spec.doc => {
                let at = Instant::now();
                let mut released = Vec::new();
                self.unacked.retain(|e| match e.covered_by {
                    Some(c) if c <= seq => {
                        released.push(*e);
                        false
                    }
                    _ => true,
                });
                if !released.is_empty() {
                    self.ledger.acked(self.spec.index, &released, at);
                }
                Ok(false)
            }
            ServerMsg::Delta { doc, delta } if doc == self.spec.doc => {
                self.doc
                    .apply(&delta)
                    .map_err(|e| format!("relayed delta refused: {e}"))?;
                Ok(false)
            }
            ServerMsg::Error {
                code, seq, message, ..
            } => {
                self.ledger.error(code.as_str(), &message);
                if let Some(seq) = seq {
                    for e in &mut self.unacked {
                        if e.covered_by == Some(seq) {
                            e.covered_by = None;
                        }
                    }
                }
                match code {
                    // The document could not be loaded (its store is down): try again later.
                    lattice_engine::protocol::ErrorCode::Internal => {
                        Err(format!("error internal: {message}"))
                    }
                    _ => Ok(false),
                }
            }
            _ => Ok(false),
        }
    }
}

/// What [`verify`] found.
#[derive(Clone, Debug, Default)]
pub(crate) struct Verified {
    pub acked: u64,
    /// Acknowledged edits missing from the stored documents: `(writer, edit)`.
    pub lost: Vec<(u32, u64)>,
    /// Tokens found twice, or that do not parse: the store or the merge is broken.
    pub malformed: Vec<String>,
    /// Edits stored though never acknowledged (in flight at a crash, or their ack lost).
    pub stored_unacked: u64,
}

/// Reads every writer's document from the store over HTTP and checks that it holds every
/// acknowledged edit, each once.
pub(crate) async fn verify(
    addr: SocketAddr,
    read_token: &str,
    writers: &[WriterSpec],
    ledger: &Ledger,
) -> Result<Verified> {
    let mut out = Verified::default();
    let mut docs: BTreeMap<DocId, serde_json::Value> = BTreeMap::new();
    for w in writers {
        if !docs.contains_key(&w.doc) {
            let r = wire::http_get(addr, &format!("/v1/docs/{}", w.doc), Some(read_token)).await?;
            let json = match r.status {
                200 => r.json()?,
                404 => serde_json::Value::Null,
                other => bail!("GET /v1/docs/{}: {other} {}", w.doc, r.body),
            };
            docs.insert(w.doc.clone(), json);
        }
        let text = docs
            .get(&w.doc)
            .and_then(|j| j["texts"][w.text()].as_str())
            .unwrap_or_default();
        let mut stored = BTreeSet::new();
        for token in text.split(';').filter(|t| !t.is_empty()) {
            let n = token.split(':').next().and_then(|n| n.parse::<u64>().ok());
            match n {
                Some(n) if stored.insert(n) => {}
                _ => out
                    .malformed
                    .push(format!("{}/{}: {token:.24}", w.doc, w.text())),
            }
        }
        let acked = ledger.acked_of(w.index);
        out.acked += acked.len() as u64;
        out.lost
            .extend(acked.difference(&stored).map(|n| (w.index, *n)));
        out.stored_unacked += stored.difference(&acked).count() as u64;
    }
    Ok(out)
}

/// Waits until every writer is done (they stop once drained or told to stop).
pub(crate) fn join_all(writers: Vec<Writer>) -> Result<()> {
    for w in writers {
        w.join().context("writer")?;
    }
    Ok(())
}

/// A group of writers against one server address, with their books.
#[derive(Debug)]
pub(crate) struct Crew {
    pub specs: Vec<WriterSpec>,
    pub ledger: Arc<Ledger>,
    phase: watch::Sender<Phase>,
    writers: Vec<Writer>,
}

impl Crew {
    /// `count` writers spread over `docs` documents named `{prefix}/d{i}`, each with a write
    /// token of its own subject.
    pub(crate) fn start(
        addr: SocketAddr,
        keys: &crate::lattice::Keys,
        prefix: &str,
        count: u32,
        docs: u32,
        pace: Pace,
    ) -> Result<Crew> {
        let mut specs = Vec::new();
        for i in 0..count {
            let doc = DocId::new(format!("{prefix}/d{}", i % docs.max(1)))?;
            let token = keys.token(
                &format!("writer-{i}"),
                &[&format!("{prefix}/*")],
                lattice_server::auth::Scope::Write,
            )?;
            specs.push(WriterSpec {
                index: i,
                doc,
                token,
                replica: random_replica(),
                edit_every: pace.edit_every,
                window: pace.window,
                padding: pace.padding,
            });
        }
        Ok(Crew::start_specs(addr, specs))
    }

    pub(crate) fn start_specs(addr: SocketAddr, specs: Vec<WriterSpec>) -> Crew {
        let ledger = Arc::new(Ledger::default());
        let (phase, rx) = watch::channel(Phase::Write);
        let writers = specs
            .iter()
            .map(|s| Writer::start(addr, s.clone(), ledger.clone(), rx.clone()))
            .collect();
        Crew {
            specs,
            ledger,
            phase,
            writers,
        }
    }

    /// Waits for an acknowledgement received at or after `since`; its time, or `None` after
    /// `within`.
    pub(crate) async fn ack_after(&self, since: Instant, within: Duration) -> Option<Instant> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(at) = self.ledger.first_ack_after(since) {
                return Some(at);
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops new edits, gives the writers `within` to get their last edits acknowledged, then
    /// stops them. Whether every writer drained in time.
    pub(crate) async fn finish(self, within: Duration) -> Result<bool> {
        let _ = self.phase.send(Phase::Drain);
        let deadline = Instant::now() + within;
        while !self.writers.iter().all(Writer::is_finished) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let drained = self.writers.iter().all(Writer::is_finished);
        let _ = self.phase.send(Phase::Stop);
        let writers = self.writers;
        tokio::task::spawn_blocking(move || join_all(writers)).await??;
        Ok(drained)
    }
}

/// How fast writers write.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Pace {
    pub edit_every: Duration,
    pub window: usize,
    pub padding: usize,
}

/// A random replica id (non-zero, 32-bit).
pub(crate) fn random_replica() -> ReplicaId {
    loop {
        if let Some(r) = ReplicaId::new(rand::random::<u32>()) {
            return r;
        }
    }
}

/// Checks the stored documents against the books and reports both: acknowledged, lost (a
/// failure), stored without an ack, how connections ended.
pub(crate) async fn account(
    out: &mut crate::report::Outcome,
    addr: SocketAddr,
    read_token: &str,
    specs: &[WriterSpec],
    ledger: &Ledger,
    drained: bool,
) -> Result<Verified> {
    use crate::report::count;
    let books = ledger.summary();
    let v = verify(addr, read_token, specs, ledger).await?;
    out.figure("edits acked", count(v.acked));
    out.figure("acked lost", v.lost.len());
    out.figure(
        "stored without ack",
        format!(
            "{} ({} found by a resync)",
            count(v.stored_unacked),
            count(books.held_unacked)
        ),
    );
    let ends: Vec<String> = books
        .ends
        .iter()
        .map(|(k, n)| format!("{k} ×{n}"))
        .collect();
    out.figure(
        "writer sessions",
        format!("{} ({})", books.sessions, ends.join(", ")),
    );
    if !books.errors.is_empty() {
        let errors: Vec<String> = books
            .errors
            .iter()
            .map(|(k, n)| {
                let example = books.error_examples.get(k).cloned().unwrap_or_default();
                format!("{k} ×{n} (\"{example}\")")
            })
            .collect();
        out.figure("errors seen", errors.join(", "));
    }
    out.check(v.acked > 0, || "no edit was ever acknowledged".into());
    // A writer's edits are legitimate: the server may fail to take them (internal, a resync
    // asked for), never call them invalid.
    for code in [
        "invalid_delta",
        "invalid_seq",
        "forbidden",
        "not_subscribed",
    ] {
        if let Some(n) = books.errors.get(code) {
            let example = books.error_examples.get(code).cloned().unwrap_or_default();
            out.check(false, || {
                format!("a writer's own edits were refused {n} times with {code} (\"{example}\")")
            });
        }
    }
    out.check(v.lost.is_empty(), || {
        let first: Vec<String> = v
            .lost
            .iter()
            .take(5)
            .map(|(w, n)| format!("writer {w} edit {n}"))
            .collect();
        format!(
            "{} acknowledged edits are not in the stored documents (first: {})",
            v.lost.len(),
            first.join(", ")
        )
    });
    out.check(v.malformed.is_empty(), || {
        format!(
            "stored tokens doubled or garbled: {}",
            v.malformed
                .iter()
                .take(5)
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        )
    });
    out.check(drained, || {
        "writers still had unacknowledged edits 20 s after they stopped editing".into()
    });
    Ok(v)
}
