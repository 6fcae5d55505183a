//! `fanout`: one writer, N readers on one document, keystroke-sized updates, in a burst and
//! paced.
//!
//! The writer's updates are encoded beforehand with yrs (one character appended per update, one
//! Yjs client), and are the same bytes for every target (native: the delta's `yjs`). A reader
//! learns how many updates a frame brings from the writer's clock in it (`client::clock_of`:
//! the update is decoded, never integrated), so merged relays count as the updates they hold and
//! the reader stays cheap. Latency is from an update's send to its arrival at a reader, over
//! every (update, reader) pair; deliveries/s is updates × readers ÷ (last arrival − first send).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Arg, ArgMatches, value_parser};
use futures_util::{SinkExt, StreamExt, stream};

use super::{BoxFuture, Prepared, Scenario, flag, positive};
use crate::client::{self, ConnectOptions, Event};
use crate::report::{Better, Medians, Sample, quantile};
use crate::target::{RunningServer, Target};

/// The writer's Yjs client id (32-bit, as Lattice requires).
const WRITER: u64 = 0x4641_4e31;
/// Readers connecting at once.
const CONNECT_CONCURRENCY: usize = 20;
/// Time allowed after the last send for every delivery to arrive.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(120);

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
             updates a frame holds from the writer's clock in it (the update is decoded with \
             yrs, not applied), so merged relays count as the updates they carry. Latency: an \
             update's send → its arrival at a reader, over all (update, reader) pairs; \
             deliveries/s = updates × readers ÷ (last arrival − first send).",
            r = self.readers,
            b = self.burst.len(),
        )
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
                let r = one_case(server, &doc, self.readers, updates, pace)
                    .await
                    .with_context(|| format!("fanout {case} against {}", target.label))?;
                out.push(Sample::new(&case, "deliveries/s", "deliveries/s", Better::Higher, r.deliveries_per_s));
                out.push(Sample::new(&case, "p50 latency", "ms", Better::Lower, r.p50_ms));
                out.push(Sample::new(&case, "p99 latency", "ms", Better::Lower, r.p99_ms));
                out.push(Sample::new(&case, "max latency", "ms", Better::Lower, r.max_ms));
                out.push(Sample::new(&case, "frames per reader", "frames", Better::Lower, r.frames_per_reader));
            }
            Ok(out)
        })
    }

    fn verdicts(&self, m: &Medians) -> Vec<String> {
        let mut out = Vec::new();
        for target in ["lattice", "lattice-yjs"] {
            let get = |metric: &str, t: &str| m.get("fanout", "burst", metric, t);
            if let (Some(l), Some(h)) = (get("deliveries/s", target), get("deliveries/s", "hocuspocus")) {
                let ok = l >= 2.0 * h;
                out.push(format!(
                    "`{target}` burst deliveries/s ≥ 2× Hocuspocus: {} ({:.2}×)",
                    if ok { "**met**" } else { "**not met**" },
                    l / h
                ));
            }
            for case in ["burst".to_owned(), self.paced_case()] {
                if let (Some(l), Some(h)) = (m.get("fanout", &case, "p50 latency", target), m.get("fanout", &case, "p50 latency", "hocuspocus")) {
                    let ok = l <= h / 2.0;
                    out.push(format!(
                        "`{target}` {case} p50 ≤ ½ Hocuspocus's: {} ({:.2} ms vs {:.2} ms, {:.2}×)",
                        if ok { "**met**" } else { "**not met**" },
                        l,
                        h,
                        l / h
                    ));
                }
            }
        }
        out
    }
}

struct CaseResult {
    deliveries_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    frames_per_reader: f64,
}

struct ReaderOutcome {
    arrivals: Vec<Instant>,
    have: usize,
    frames: u64,
    error: Option<anyhow::Error>,
}

async fn one_case(
    server: &mut RunningServer,
    doc: &str,
    readers: usize,
    updates: &[Vec<u8>],
    pace: Option<Duration>,
) -> Result<CaseResult> {
    let n = updates.len();
    let endpoint = server.endpoint.clone();
    let conns: Vec<_> = stream::iter(0..readers)
        .map(|_| client::connect(&endpoint, doc, ConnectOptions::default()))
        .buffer_unordered(CONNECT_CONCURRENCY)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_>>()
        .context("connecting the readers")?;
    // Deadline for readers: set once the writer is done; until then, generous.
    let deadline = Arc::new(std::sync::Mutex::new(
        tokio::time::Instant::now() + DRAIN_TIMEOUT + pace.map_or(Duration::ZERO, |p| p * n as u32),
    ));
    let progress: Arc<Vec<AtomicUsize>> = Arc::new((0..readers).map(|_| AtomicUsize::new(0)).collect());
    let mut tasks = Vec::with_capacity(readers);
    for (i, (mut ws, codec)) in conns.into_iter().enumerate() {
        let progress = progress.clone();
        let deadline = deadline.clone();
        tasks.push(tokio::spawn(async move {
            let mut arrivals = Vec::with_capacity(n);
            let mut frames = 0u64;
            let mut error = None;
            while arrivals.len() < n {
                let until = deadline.lock().map(|d| *d).unwrap_or_else(|_| tokio::time::Instant::now());
                let msg = match tokio::time::timeout_at(until, ws.next()).await {
                    Err(_) => break,
                    Ok(None) => {
                        error = Some(anyhow::anyhow!("the connection ended"));
                        break;
                    }
                    Ok(Some(Err(e))) => {
                        error = Some(e.into());
                        break;
                    }
                    Ok(Some(Ok(msg))) => msg,
                };
                let now = Instant::now();
                let events = match codec.decode(&msg) {
                    Ok(ev) => ev,
                    Err(e) => {
                        error = Some(e);
                        break;
                    }
                };
                for ev in events {
                    if let Event::Update(u) = ev {
                        frames += 1;
                        match client::clock_of(&u, WRITER) {
                            Ok(clock) => {
                                let upto = (clock as usize).min(n);
                                while arrivals.len() < upto {
                                    arrivals.push(now);
                                }
                            }
                            Err(e) => error = Some(e),
                        }
                    }
                }
                progress[i].store(arrivals.len(), Ordering::Relaxed);
            }
            let have = arrivals.len();
            ReaderOutcome { arrivals, have, frames, error }
        }));
    }

    let (writer, wcodec) = client::connect(&endpoint, doc, ConnectOptions::default())
        .await
        .context("connecting the writer")?;
    let (mut sink, mut source) = writer.split();
    // The writer's own inbound frames (acks, echoes, sync status) are drained meanwhile so that
    // its outbox on the server never fills; a refusal there fails the case.
    let drain_codec = wcodec.clone();
    let drain = tokio::spawn(async move {
        while let Some(msg) = source.next().await {
            drain_codec.decode(&msg?)?;
        }
        Ok::<_, anyhow::Error>(())
    });
    let mut sent_at = Vec::with_capacity(n);
    let first = Instant::now();
    let start = tokio::time::Instant::now();
    for (i, u) in updates.iter().enumerate() {
        let frame = wcodec.update(i as u64 + 1, u);
        match pace {
            Some(period) => {
                tokio::time::sleep_until(start + period * i as u32).await;
                sent_at.push(Instant::now());
                sink.send(frame).await.context("sending")?;
            }
            None => {
                sent_at.push(Instant::now());
                sink.feed(frame).await.context("sending")?;
                if i % 64 == 63 {
                    sink.flush().await.context("sending")?;
                }
            }
        }
    }
    sink.flush().await.context("sending")?;
    if let Ok(mut d) = deadline.lock() {
        *d = tokio::time::Instant::now() + DRAIN_TIMEOUT;
    }
    let mut outcomes = Vec::with_capacity(readers);
    for t in tasks {
        outcomes.push(t.await.context("a reader task panicked")?);
    }
    if drain.is_finished() {
        drain.await?.context("the writer's connection")?;
    } else {
        drain.abort();
    }
    drop(sink);
    let missing: usize = outcomes.iter().map(|o| n - o.have).sum();
    if missing > 0 {
        let incomplete = outcomes.iter().filter(|o| o.have < n).count();
        let why = outcomes
            .iter()
            .find_map(|o| o.error.as_ref())
            .map_or_else(|| format!("timed out {DRAIN_TIMEOUT:?} after the last send"), |e| format!("{e:#}"));
        bail!(
            "{missing} of {} deliveries missing ({incomplete} of {readers} readers incomplete): {why}",
            n * readers
        );
    }
    let mut latencies = Vec::with_capacity(n * readers);
    let mut last = first;
    let mut frames = 0;
    for o in &outcomes {
        frames += o.frames;
        for (i, at) in o.arrivals.iter().enumerate() {
            last = last.max(*at);
            latencies.push(at.saturating_duration_since(sent_at[i]).as_secs_f64() * 1e3);
        }
    }
    latencies.sort_by(f64::total_cmp);
    server.check_alive()?;
    Ok(CaseResult {
        deliveries_per_s: (n * readers) as f64 / last.duration_since(first).as_secs_f64(),
        p50_ms: quantile(&latencies, 0.5),
        p99_ms: quantile(&latencies, 0.99),
        max_ms: latencies.last().copied().unwrap_or(f64::NAN),
        frames_per_reader: frames as f64 / readers as f64,
    })
}
