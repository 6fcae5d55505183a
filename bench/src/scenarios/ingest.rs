//! `ingest`: many documents written at once. D documents (default 1,000) × W writers each
//! (default 10), every writer typing keystrokes as fast as its window of unconfirmed updates
//! allows, for a fixed time; the figure is confirmed updates per second over all writers.
//!
//! What confirms an update depends on what the protocol offers:
//! - native Lattice: the server's `ack`, sent only after the update's transaction committed
//!   (durable);
//! - y-websocket and Hocuspocus (no acknowledgement in the protocol): one extra observer
//!   connection per document sees the update relayed back by the server. On Lattice's
//!   y-websocket endpoint relays leave only after the commit, so this too counts durable
//!   updates; the peers relay from memory (Y-Sweet writes its checkpoint later, every 10 s).
//!
//! All connections are opened and synced before the clock starts. A writer sends what its
//! window allows in one write and waits when the window is full. Keystrokes are not encoded by
//! yrs while the clock runs: [`keystroke`] writes the few bytes of a one-character Yjs update directly
//! (checked byte for byte against yrs in the tests), so the load generator spends its CPU on the
//! sockets, not on building updates.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Arg, ArgMatches, value_parser};
use futures_util::{SinkExt, StreamExt, stream};
use tokio::sync::Notify;
use yrs::updates::decoder::Decode;

use super::{BoxFuture, Prepared, Scenario, flag, positive};
use crate::client::{self, ConnectOptions, Event, Protocol};
use crate::report::{Better, Medians, Sample};
use crate::target::{RunningServer, Target};
use crate::verdict;

/// Connections opened at once while setting up.
const CONNECT_CONCURRENCY: usize = 64;
/// Yjs client ids of the writers start here (writer `i` is `FIRST_CLIENT + i`).
const FIRST_CLIENT: u64 = 0x4e00_0000;
/// Issue 21's target: durable updates per second over 1,000 documents × 10 writers.
const INGEST_TARGET_PER_SEC: f64 = 150_000.0;
/// How long after the end a writer may take to notice it and stop.
const STOP_GRACE: Duration = Duration::from_secs(30);

pub(super) struct Ingest;

struct Plan {
    docs: usize,
    writers: usize,
    secs: u64,
    window: u64,
}

impl Scenario for Ingest {
    fn name(&self) -> &'static str {
        "ingest"
    }

    fn about(&self) -> &'static str {
        "many documents × writers, confirmed (on Lattice: durable) updates per second"
    }

    fn args(&self) -> Vec<Arg> {
        vec![
            flag("ingest-docs", "ingest: documents", value_parser!(usize), Some("1000")),
            flag("ingest-writers", "ingest: writers per document", value_parser!(usize), Some("10")),
            flag("ingest-secs", "ingest: seconds of writing measured", value_parser!(u64), Some("10")),
            flag("ingest-window", "ingest: unconfirmed updates a writer may have in flight", value_parser!(u64), Some("16")),
        ]
    }

    fn prepare(&self, args: &ArgMatches) -> Result<Box<dyn Prepared>> {
        Ok(Box::new(Plan {
            docs: positive(args, "ingest-docs")?,
            writers: positive(args, "ingest-writers")?,
            secs: positive(args, "ingest-secs")?,
            window: positive(args, "ingest-window")?,
        }))
    }
}

/// Unsigned LEB128, as lib0 and yrs write it.
fn var(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// The Yjs v1 update of client `client` typing one ASCII character `ch` after its own previous
/// one (clock `clock - 1`), or as the first item of the root text `"text"` when `clock` is 0:
/// exactly what yrs encodes for that transaction (see the test).
pub(super) fn keystroke(client: u64, clock: u64, ch: u8) -> Vec<u8> {
    let mut b = Vec::with_capacity(24);
    var(&mut b, 1); // clients
    var(&mut b, 1); // structs of this client
    var(&mut b, client);
    var(&mut b, clock);
    if clock == 0 {
        b.push(0x04); // string content, no origins: the parent follows
        var(&mut b, 1); // parent named by a root key
        var(&mut b, 4);
        b.extend_from_slice(b"text");
    } else {
        b.push(0x84); // string content, left origin
        var(&mut b, client);
        var(&mut b, clock - 1);
    }
    var(&mut b, 1);
    b.push(ch);
    var(&mut b, 0); // empty delete set
    b
}

/// The highest clock (exclusive) of each writer of one document seen in `update`, recorded into
/// `confirmed` (indexed by writer within the document).
fn record_clocks(update: &[u8], first_client: u64, confirmed: &[AtomicU64]) -> Result<()> {
    let update = yrs::Update::decode_v1(update).context("undecodable Yjs update")?;
    for (client, ranges) in update.insertions(true).iter() {
        let Some(w) = client
            .get()
            .checked_sub(first_client)
            .map(|w| w as usize)
            .filter(|w| *w < confirmed.len())
        else {
            continue;
        };
        if let Some(end) = ranges.iter().map(|r| r.end).max() {
            confirmed[w].fetch_max(u64::from(end), Ordering::AcqRel);
        }
    }
    Ok(())
}

/// Wakes one writer when more of its updates are confirmed.
struct WriterState {
    notify: Notify,
}

impl Prepared for Plan {
    fn describe(&self) -> String {
        format!(
            "{} documents × {} writers ({} writer connections), each writer typing one-character \
             Yjs updates as fast as a window of {} unconfirmed updates allows, for {} s after \
             every connection is open and synced. Native Lattice: confirmed = acknowledged, i.e. \
             committed to SQLite (`synchronous=FULL`). y-websocket and Hocuspocus protocols have \
             no acknowledgement: one more connection per document observes the server's relays, \
             and an update is confirmed when it is relayed (on Lattice's y-websocket endpoint \
             that is once applied, before its commit, so that figure is not a durable rate; the \
             peers relay from memory, Y-Sweet before its next checkpoint). Every writer also receives \
             the other writers' updates of its document, as an editor would.",
            self.docs,
            self.writers,
            self.docs * self.writers,
            self.window,
            self.secs
        )
    }

    fn run<'a>(
        &'a self,
        server: &'a mut RunningServer,
        target: &'a Target,
    ) -> BoxFuture<'a, Result<Vec<Sample>>> {
        Box::pin(async move {
            let endpoint = server.endpoint.clone();
            let native = target.protocol == Protocol::Native;
            let total = self.docs * self.writers;
            // confirmed[d][w]: updates of writer w of document d confirmed so far.
            let confirmed: Arc<Vec<Vec<AtomicU64>>> = Arc::new(
                (0..self.docs)
                    .map(|_| (0..self.writers).map(|_| AtomicU64::new(0)).collect())
                    .collect(),
            );
            let states: Arc<Vec<WriterState>> = Arc::new(
                (0..total)
                    .map(|_| WriterState {
                        notify: Notify::new(),
                    })
                    .collect(),
            );
            let doc_name = |d: usize| format!("bench/ingest-{d}");
            let opts = ConnectOptions { small_buffers: true };

            // Observers first (y-websocket and Hocuspocus only), so they see every update.
            let mut tasks = tokio::task::JoinSet::new();
            let stop = Arc::new(AtomicBool::new(false));
            if !native {
                let mut observers = stream::iter(0..self.docs)
                    .map(|d| {
                        let endpoint = endpoint.clone();
                        let doc = doc_name(d);
                        async move {
                            client::connect(&endpoint, &doc, opts)
                                .await
                                .map(|c| (d, c))
                        }
                    })
                    .buffer_unordered(CONNECT_CONCURRENCY);
                while let Some(conn) = observers.next().await {
                    let (d, (mut ws, codec)) = conn.with_context(|| {
                        format!("ingest against {}: an observer", target.label)
                    })?;
                    let (confirmed, states, stop) =
                        (confirmed.clone(), states.clone(), stop.clone());
                    let first = FIRST_CLIENT + (d * self.writers) as u64;
                    let writers = self.writers;
                    tasks.spawn(async move {
                        while let Some(msg) = ws.next().await {
                            let msg = msg?;
                            for ev in codec.decode(&msg)? {
                                if let Event::Update(u) = ev {
                                    record_clocks(&u, first, &confirmed[d])?;
                                    for w in 0..writers {
                                        states[d * writers + w].notify.notify_one();
                                    }
                                }
                            }
                            if stop.load(Ordering::Acquire) {
                                break;
                            }
                        }
                        Ok::<_, anyhow::Error>(0u64)
                    });
                }
            }

            let mut writers = stream::iter(0..total)
                .map(|i| {
                    let endpoint = endpoint.clone();
                    let doc = doc_name(i / self.writers);
                    async move { client::connect(&endpoint, &doc, opts).await.map(|c| (i, c)) }
                })
                .buffer_unordered(CONNECT_CONCURRENCY);
            let mut conns = Vec::with_capacity(total);
            while let Some(conn) = writers.next().await {
                conns.push(conn.with_context(|| {
                    format!(
                        "ingest against {}: writer {} of {total}",
                        target.label,
                        conns.len() + 1
                    )
                })?);
            }
            drop(writers);

            let start = Arc::new(Notify::new());
            let window = self.window;
            for (i, (ws, codec)) in conns {
                let (d, w) = (i / self.writers, i % self.writers);
                let (confirmed, states, stop, start) = (
                    confirmed.clone(),
                    states.clone(),
                    stop.clone(),
                    start.clone(),
                );
                let client_id = FIRST_CLIENT + i as u64;
                tasks.spawn(async move {
                    let (mut sink, mut source) = ws.split();
                    let reader = {
                        let (confirmed, states, codec) =
                            (confirmed.clone(), states.clone(), codec.clone());
                        async move {
                            while let Some(msg) = source.next().await {
                                let msg = msg?;
                                if !native {
                                    continue; // the observer confirms
                                }
                                for ev in codec.decode(&msg)? {
                                    if let Event::Acked(seq) = ev {
                                        confirmed[d][w].fetch_max(seq, Ordering::AcqRel);
                                        states[i].notify.notify_one();
                                    }
                                }
                            }
                            Ok::<_, anyhow::Error>(())
                        }
                    };
                    let writer = async {
                        start.notified().await;
                        let mut sent = 0u64;
                        while !stop.load(Ordering::Acquire) {
                            if sent >= confirmed[d][w].load(Ordering::Acquire) + window {
                                // The window is full: send what is queued, then wait (waking
                                // up now and then to notice the end).
                                sink.flush().await?;
                                let _ = tokio::time::timeout(
                                    Duration::from_millis(100),
                                    states[i].notify.notified(),
                                )
                                .await;
                                continue;
                            }
                            let update = keystroke(client_id, sent, b'a' + (sent % 26) as u8);
                            sent += 1;
                            sink.feed(codec.update(sent, &update)).await?;
                            if let Some(status) = codec.after_update(sent) {
                                sink.feed(status).await?;
                            }
                        }
                        sink.flush().await?;
                        Ok::<_, anyhow::Error>(sent)
                    };
                    tokio::select! {
                        r = reader => { r?; bail!("the server closed writer {i}'s connection") }
                        sent = writer => sent,
                    }
                });
            }

            // Everything is connected: go.
            tokio::time::sleep(Duration::from_millis(500)).await;
            let t0 = Instant::now();
            start.notify_waiters();
            let measured = Duration::from_secs(self.secs);
            tokio::time::sleep(measured).await;
            let done: u64 = confirmed
                .iter()
                .flat_map(|d| d.iter())
                .map(|c| c.load(Ordering::Acquire))
                .sum();
            let elapsed = t0.elapsed().as_secs_f64();
            stop.store(true, Ordering::Release);
            for s in states.iter() {
                s.notify.notify_one();
            }
            server.check_alive()?;
            let mut sent_total = 0u64;
            let drain = async {
                // Writers end at the stop flag; observers and readers end with the tasks.
                let mut writers_left = total;
                while writers_left > 0 {
                    match tasks.join_next().await {
                        Some(Ok(Ok(sent))) => {
                            sent_total += sent;
                            writers_left = writers_left.saturating_sub(1);
                        }
                        Some(Ok(Err(e))) => return Err(e),
                        Some(Err(e)) => bail!("a bench task failed: {e}"),
                        None => break,
                    }
                }
                Ok(())
            };
            match tokio::time::timeout(STOP_GRACE, drain).await {
                Ok(r) => r.with_context(|| format!("ingest against {}", target.label))?,
                Err(_) => bail!(
                    "ingest against {}: writers did not stop within {STOP_GRACE:?}",
                    target.label
                ),
            }
            tasks.shutdown().await;
            if done == 0 {
                bail!(
                    "ingest against {}: no update was confirmed in {elapsed:.1} s ({sent_total} sent)",
                    target.label
                );
            }
            eprintln!(
                "ingest {}: {done} updates confirmed of {sent_total} sent in {elapsed:.1} s",
                target.id
            );
            let case = format!("{} docs × {} writers", self.docs, self.writers);
            Ok(vec![Sample::new(
                &case,
                "confirmed updates/s",
                "updates/s",
                Better::Higher,
                done as f64 / elapsed,
            )])
        })
    }

    fn verdicts(&self, m: &Medians) -> Vec<String> {
        let case = format!("{} docs × {} writers", self.docs, self.writers);
        let what = if (self.docs, self.writers) == (1000, 10) {
            "ingest ≥ 150,000 durable updates/s (1,000 docs × 10 writers)".to_owned()
        } else {
            format!(
                "ingest ≥ 150,000 durable updates/s (the target is for 1,000 docs × 10 writers; \
                 this run: {case})"
            )
        };
        let mut out = verdict::against_target(
            m,
            ("ingest", &case, "confirmed updates/s"),
            &what,
            INGEST_TARGET_PER_SEC,
        );
        if !out.is_empty() {
            out.push(
                "Only the native figure is a durable rate (acks follow the commit); \
                 `lattice-yjs` counts relays, which go out once an update is applied."
                    .to_owned(),
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_written_keystrokes_are_what_yrs_encodes() {
        for client in [1u64, 200, FIRST_CLIENT + 12_345] {
            let from_yrs = client::keystrokes(300, client);
            for (clock, expected) in from_yrs.iter().enumerate() {
                let ch = b'a' + (clock % 26) as u8;
                assert_eq!(
                    &keystroke(client, clock as u64, ch),
                    expected,
                    "client {client} clock {clock}"
                );
            }
        }
    }

    #[test]
    fn relayed_clocks_are_recorded_per_writer_even_when_merged() {
        let confirmed: Vec<AtomicU64> = (0..3).map(|_| AtomicU64::new(0)).collect();
        let a: Vec<Vec<u8>> = (0..5).map(|c| keystroke(FIRST_CLIENT, c, b'x')).collect();
        let b: Vec<Vec<u8>> = (0..2)
            .map(|c| keystroke(FIRST_CLIENT + 2, c, b'y'))
            .collect();
        let merged = yrs::merge_updates_v1(a.iter().chain(b.iter())).expect("merge");
        record_clocks(&merged, FIRST_CLIENT, &confirmed).expect("record");
        assert_eq!(confirmed[0].load(Ordering::Acquire), 5);
        assert_eq!(confirmed[1].load(Ordering::Acquire), 0);
        assert_eq!(confirmed[2].load(Ordering::Acquire), 2);
        // A client outside this document's range is ignored.
        record_clocks(&keystroke(7, 0, b'z'), FIRST_CLIENT, &confirmed).expect("record");
    }
}
