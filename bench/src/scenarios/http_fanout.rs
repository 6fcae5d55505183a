//! `http-fanout`: fan-out to the HTTP readers of docs/http-api.md and to gRPC `Subscribe`
//! streams (docs/grpc.md) next to WebSocket readers (issues 19 and 22). One writer (native
//! WebSocket) sends `fanout`'s keystroke updates to one document that four kinds of readers
//! follow at once: N WebSocket readers, N Server-Sent Events readers (`GET /v1/events/{doc}`),
//! N long-poll readers (`GET /v1/updates/{doc}`, again and again from the `next_after` of the
//! previous answer) and N gRPC readers (`Subscribe`, one HTTP/2 connection each). Every kind is measured as
//! `fanout` measures its readers, with its code: a reader counts the writer's updates in what
//! it receives by the writer's clock in each Yjs update (`update`, base64, in the events).
//!
//! Lattice's native target only: the peers have no HTTP API, and the y-websocket target is the
//! same server. The bench server runs with `--no-auth`, so the readers send no token.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use clap::{Arg, ArgMatches, value_parser};
use futures_util::{StreamExt, stream};
use serde::Deserialize;
use tokio::task::JoinHandle;

use super::fanout::{
    CONNECT_CONCURRENCY, CaseResult, Deadline, ReaderOutcome, WRITER, Writer,
    connect_websocket_readers, join_readers, spawn_websocket_reader, summarize,
};
use super::{BoxFuture, Prepared, Scenario, flag, positive};
use crate::client::{self, HANDSHAKE_TIMEOUT, Protocol};
use crate::http::{BodyStream, HttpConn, SseParser};
use crate::report::{Better, Medians, Sample, fmt_value};
use crate::target::{RunningServer, ServerKind, TARGETS, Target};
use lattice_server::grpc::proto::documents_client::DocumentsClient;
use lattice_server::grpc::proto::{DocumentEvent, SubscribeRequest, document_event};

/// The scenario's name, in the report and in [`Medians`].
const NAME: &str = "http-fanout";
/// How long a long poll may wait for the next commit (the server's cap).
const POLL_WAIT_MS: u64 = 25_000;

pub(super) struct HttpFanout;

struct Plan {
    /// The kinds of readers, in [`Kind::ALL`]'s order.
    kinds: Vec<Kind>,
    readers: usize,
    burst: Vec<Vec<u8>>,
    paced: Vec<Vec<u8>>,
    rate: u32,
}

/// A kind of reader; its name ends the report's case names (`burst sse`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    WebSocket,
    Sse,
    LongPoll,
    Grpc,
}

impl Kind {
    const ALL: [Kind; 4] = [Kind::WebSocket, Kind::Sse, Kind::LongPoll, Kind::Grpc];

    fn name(self) -> &'static str {
        match self {
            Kind::WebSocket => "websocket",
            Kind::Sse => "sse",
            Kind::LongPoll => "long-poll",
            Kind::Grpc => "grpc",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Kind::WebSocket => "WebSocket",
            Kind::Sse => "SSE",
            Kind::LongPoll => "Long polling",
            Kind::Grpc => "gRPC Subscribe",
        }
    }

    /// `websocket,sse,long-poll` or a part of it, in [`Kind::ALL`]'s order.
    fn parse_list(list: &str) -> Result<Vec<Kind>> {
        let names: Vec<&str> = list.split(',').map(str::trim).collect();
        if let Some(bad) = names.iter().find(|n| !Kind::ALL.iter().any(|k| k.name() == **n)) {
            bail!("unknown reader kind {bad:?} in --http-fanout-kinds; known: websocket, sse, long-poll, grpc");
        }
        Ok(Kind::ALL.into_iter().filter(|k| names.contains(&k.name())).collect())
    }
}

impl Scenario for HttpFanout {
    fn name(&self) -> &'static str {
        NAME
    }

    fn about(&self) -> &'static str {
        "1 writer → N WebSocket + N SSE + N long-poll + N gRPC Subscribe readers at once (Lattice only)"
    }

    fn args(&self) -> Vec<Arg> {
        vec![
            flag("http-fanout-readers", "http-fanout: readers of each kind", value_parser!(usize), Some("100")),
            flag("http-fanout-updates", "http-fanout: updates sent in the burst", value_parser!(usize), Some("2000")),
            flag("http-fanout-paced", "http-fanout: updates sent paced (0 skips the paced case)", value_parser!(usize), Some("500")),
            flag("http-fanout-rate", "http-fanout: paced updates per second", value_parser!(u32), Some("100")),
            flag("http-fanout-kinds", "http-fanout: the kinds of readers, comma-separated", value_parser!(String), Some("websocket,sse,long-poll,grpc")),
        ]
    }

    fn prepare(&self, args: &ArgMatches) -> Result<Box<dyn Prepared>> {
        let rate = args.get_one::<u32>("http-fanout-rate").copied().unwrap_or(100);
        if rate == 0 {
            bail!("--http-fanout-rate must be positive");
        }
        let paced = args.get_one::<usize>("http-fanout-paced").copied().unwrap_or_default();
        let kinds = args.get_one::<String>("http-fanout-kinds").map_or("", String::as_str);
        Ok(Box::new(Plan {
            kinds: Kind::parse_list(kinds)?,
            readers: positive(args, "http-fanout-readers")?,
            burst: client::keystrokes(positive(args, "http-fanout-updates")?, WRITER),
            paced: client::keystrokes(paced, WRITER),
            rate,
        }))
    }
}

impl Plan {
    fn paced_case(&self) -> String {
        format!("paced {}/s", self.rate)
    }

    fn cases(&self) -> Vec<Case<'_>> {
        let mut cases = vec![Case {
            name: "burst".to_owned(),
            updates: &self.burst,
            pace: None,
        }];
        if !self.paced.is_empty() {
            cases.push(Case {
                name: self.paced_case(),
                updates: &self.paced,
                pace: Some(Duration::from_secs_f64(1.0 / f64::from(self.rate))),
            });
        }
        cases
    }
}

/// A case: the writer's updates, sent one per `pace` or in a burst.
struct Case<'a> {
    name: String,
    updates: &'a [Vec<u8>],
    pace: Option<Duration>,
}

/// A figure reported per kind: metric, unit, which way is better, and its value.
struct Metric(&'static str, &'static str, Better, fn(&CaseResult) -> f64);

/// The figures of every kind, in the report's row order: by metric, then kind, so that the
/// kinds of one metric are adjacent rows.
const METRICS: [Metric; 5] = [
    Metric("deliveries/s", "deliveries/s", Better::Higher, |r| r.deliveries_per_s),
    Metric("p50 latency", "ms", Better::Lower, |r| r.p50_ms),
    Metric("p99 latency", "ms", Better::Lower, |r| r.p99_ms),
    Metric("max latency", "ms", Better::Lower, |r| r.max_ms),
    Metric("messages per reader", "messages", Better::Lower, |r| r.frames_per_reader),
];

impl Prepared for Plan {
    fn describe(&self) -> String {
        let paced = if self.paced.is_empty() {
            "**paced**: skipped (`--http-fanout-paced 0`)".to_owned()
        } else {
            format!("**paced** = {} updates at {}/s", self.paced.len(), self.rate)
        };
        let only = if self.kinds.len() == Kind::ALL.len() {
            String::new()
        } else {
            let names: Vec<&str> = self.kinds.iter().map(|k| k.name()).collect();
            format!(" This run measured only: {} (`--http-fanout-kinds`).", names.join(", "))
        };
        format!(
            "Lattice only (the peers have no HTTP API). One writer (native WebSocket) sends \
             `fanout`'s keystroke updates to one document that {r} readers of each kind follow \
             at once: WebSocket (native protocol), Server-Sent Events (`GET /v1/events/{{doc}}`, \
             one chunked `text/event-stream` response, one `delta` event per log entry) and \
             long polling (`GET /v1/updates/{{doc}}?after=N&wait_ms={POLL_WAIT_MS}` on a \
             keep-alive connection, from the head at connect time, each answer's `next_after` \
             the next `after`) and gRPC (`lattice.v1.Documents/Subscribe` on `--grpc-bind`, one \
             HTTP/2 connection per reader, tonic's client; docs/grpc.md). **burst** = {b} updates as fast as the writer's connection \
             takes them; {paced}. Readers count the writer's updates by its clock in each \
             update (WebSocket frames; the base64 `update` of the events). Per kind, as in \
             `fanout`: latency is an update's send → its arrival at a reader, over all (update, \
             reader) pairs; deliveries/s = updates × readers ÷ (last arrival − first send); \
             messages per reader = WebSocket frames, SSE events, long-poll answers with \
             events or gRPC messages. The client is raw HTTP/1.1 over tokio, in the same process and on the same \
             2 cores as the server.{only}",
            r = self.readers,
            b = self.burst.len(),
        )
    }

    fn supports(&self, target: &Target) -> bool {
        target.server == ServerKind::Lattice && target.protocol == Protocol::Native
    }

    fn run<'a>(&'a self, server: &'a mut RunningServer, target: &'a Target) -> BoxFuture<'a, Result<Vec<Sample>>> {
        Box::pin(async move {
            let mut out = Vec::new();
            for (i, case) in self.cases().into_iter().enumerate() {
                let doc = format!("bench/http-fanout-{i}");
                let results = one_case(server, &doc, &self.kinds, self.readers, case.updates, case.pace)
                    .await
                    .with_context(|| format!("{NAME} {} against {}", case.name, target.label))?;
                for Metric(metric, unit, better, value) in METRICS {
                    for (kind, r) in self.kinds.iter().zip(&results) {
                        let name = format!("{} {}", case.name, kind.name());
                        out.push(Sample::new(&name, metric, unit, better, value(r)));
                    }
                }
            }
            Ok(out)
        })
    }

    fn verdicts(&self, m: &Medians) -> Vec<String> {
        let mut out = Vec::new();
        let met = |ok: bool| if ok { "**met**" } else { "**not met**" };
        for target in TARGETS.iter().filter(|t| self.supports(t)) {
            let get = |case: &str, kind: Kind, metric: &str| {
                m.get(NAME, &format!("{case} {}", kind.name()), metric, target.id)
            };
            for kind in [Kind::Sse, Kind::LongPoll, Kind::Grpc] {
                let info = if kind == Kind::Sse { "" } else { " (for information)" };
                let rate = |k| get("burst", k, "deliveries/s");
                if let (Some(h), Some(w)) = (rate(kind), rate(Kind::WebSocket)) {
                    out.push(format!(
                        "{} burst deliveries/s ≥ 50 % of WebSocket's{info}: {} ({} vs {} deliveries/s, {:.2}×)",
                        kind.label(),
                        met(h >= 0.5 * w),
                        fmt_value(h, "deliveries/s"),
                        fmt_value(w, "deliveries/s"),
                        h / w
                    ));
                }
                for case in ["burst".to_owned(), self.paced_case()] {
                    let p50 = |k| get(&case, k, "p50 latency");
                    if let (Some(h), Some(w)) = (p50(kind), p50(Kind::WebSocket)) {
                        out.push(format!(
                            "{} {case} p50 ≤ 2× WebSocket's{info}: {} ({h:.2} ms vs {w:.2} ms, {:.2}×)",
                            kind.label(),
                            met(h <= 2.0 * w),
                            h / w
                        ));
                    }
                }
            }
        }
        out
    }
}

/// One case: all readers connected, the writer's updates sent, every delivery awaited; the
/// figures of each kind, in the order of `kinds`.
async fn one_case(
    server: &mut RunningServer,
    doc: &str,
    kinds: &[Kind],
    readers: usize,
    updates: &[Vec<u8>],
    pace: Option<Duration>,
) -> Result<Vec<CaseResult>> {
    let n = updates.len();
    let endpoint = server.endpoint.clone();
    let addr = endpoint.addr;
    let deadline = Deadline::for_case(n, pace);
    // Readers wait for the writer, who starts once every reader is connected.
    let mut tasks: Vec<Vec<JoinHandle<ReaderOutcome>>> = Vec::with_capacity(kinds.len());
    for kind in kinds {
        let spawned = match kind {
            Kind::WebSocket => connect_websocket_readers(&endpoint, doc, readers)
                .await?
                .into_iter()
                .map(|(ws, codec)| spawn_websocket_reader(ws, codec, n, deadline.clone()))
                .collect(),
            Kind::Sse => connect_all(readers, || connect_sse(addr, doc))
                .await
                .context("connecting the SSE readers")?
                .into_iter()
                .map(|(body, parser)| spawn_sse_reader(body, parser, n, deadline.clone()))
                .collect(),
            Kind::LongPoll => connect_all(readers, || connect_poll(addr, doc))
                .await
                .context("connecting the long-poll readers")?
                .into_iter()
                .map(|(conn, after)| spawn_poll_reader(conn, doc, after, n, deadline.clone()))
                .collect(),
            Kind::Grpc => {
                let grpc = server.grpc_addr().await?;
                connect_all(readers, || connect_grpc(grpc, doc))
                    .await
                    .context("connecting the gRPC readers")?
                    .into_iter()
                    .map(|stream| spawn_grpc_reader(stream, n, deadline.clone()))
                    .collect()
            }
        };
        tasks.push(spawned);
    }
    let mut writer = Writer::connect(&endpoint, doc).await?;
    let sent = writer.send(updates, pace).await?;
    deadline.writer_done();
    let mut outcomes = Vec::with_capacity(kinds.len());
    for kind_tasks in tasks {
        outcomes.push(join_readers(kind_tasks).await?);
    }
    writer.finish().await?;
    let results = kinds
        .iter()
        .zip(&outcomes)
        .map(|(kind, o)| summarize(o, &sent).with_context(|| format!("{} readers", kind.label())))
        .collect::<Result<Vec<_>>>()?;
    server.check_alive()?;
    Ok(results)
}

/// `readers` connections made by `connect`, [`CONNECT_CONCURRENCY`] at a time.
async fn connect_all<T, F, Fut>(readers: usize, connect: F) -> Result<Vec<T>>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    stream::iter(0..readers)
        .map(|_| connect())
        .buffer_unordered(CONNECT_CONCURRENCY)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect()
}

/// The JSON object of an event (docs/http-api.md), as far as the bench reads it.
#[derive(Deserialize)]
struct EventData<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default, borrow)]
    update: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    reason: Option<Cow<'a, str>>,
}

/// A long poll's `200` answer.
#[derive(Deserialize)]
struct PollAnswer<'a> {
    #[serde(borrow)]
    events: Vec<EventData<'a>>,
    next_after: u64,
}

/// Counts what `event`, arrived at `now`, brings; `true` if it carries an update. A `close`
/// event fails the reader with its reason.
fn take(out: &mut ReaderOutcome, event: &EventData<'_>, now: Instant, n: usize) -> Result<bool> {
    match &*event.kind {
        "sync" | "delta" => {
            let update = event.update.as_deref().context("an event without `update`")?;
            let bytes = STANDARD.decode(update).context("an `update` that is not base64")?;
            out.record(&bytes, now, n);
            Ok(true)
        }
        "close" => bail!("the server ended the stream: {}", event.reason.as_deref().unwrap_or("no reason")),
        _ => Ok(false),
    }
}

/// An SSE reader of `doc`, once its first event (the `sync`) came.
async fn connect_sse(addr: SocketAddr, doc: &str) -> Result<(BodyStream, SseParser)> {
    let path = format!("/v1/events/{doc}");
    let fut = async {
        let mut conn = HttpConn::connect(addr).await?;
        let head = conn.get(&path, "text/event-stream").await?;
        if head.status != 200 {
            let body = conn.body(&head).await.map(|(b, _)| b).unwrap_or_default();
            bail!("HTTP {}: {}", head.status, String::from_utf8_lossy(&body));
        }
        if !head.content_type.starts_with("text/event-stream") {
            bail!("Content-Type {:?}, not text/event-stream", head.content_type);
        }
        let mut body = conn.into_stream(&head)?;
        let mut parser = SseParser::default();
        loop {
            while let Some(event) = parser.next_event()? {
                match event.event.as_str() {
                    "sync" => return Ok((body, parser)),
                    "close" => bail!("closed before its sync: {}", event.data),
                    _ => {}
                }
            }
            let (bytes, _) = body.next().await?.context("the stream ended before its sync")?;
            parser.push(&bytes);
        }
    };
    tokio::time::timeout(HANDSHAKE_TIMEOUT, fut)
        .await
        .with_context(|| format!("no sync event within {HANDSHAKE_TIMEOUT:?}"))?
        .with_context(|| format!("GET http://{addr}{path}"))
}

/// An SSE reader: counts the writer's updates in every event until it has `n` of them, the
/// stream fails or `deadline` passes.
fn spawn_sse_reader(mut body: BodyStream, mut parser: SseParser, n: usize, deadline: Deadline) -> JoinHandle<ReaderOutcome> {
    tokio::spawn(async move {
        let mut out = ReaderOutcome::new(n);
        let mut now = Instant::now();
        let read = async {
            while out.arrivals.len() < n {
                if let Some(event) = parser.next_event()? {
                    let data: EventData<'_> = serde_json::from_str(&event.data).context("an event that is not JSON")?;
                    if take(&mut out, &data, now, n)? {
                        out.frames += 1;
                    }
                    continue;
                }
                let Ok(next) = tokio::time::timeout_at(deadline.get(), body.next()).await else {
                    break;
                };
                let (bytes, at) = next?.context("the stream ended")?;
                parser.push(&bytes);
                now = at;
            }
            Ok::<_, anyhow::Error>(())
        }
        .await;
        if let Err(e) = read {
            out.error = Some(e);
        }
        out
    })
}

/// A gRPC `Subscribe` stream of `doc` on its own connection, once its first message (the
/// `SYNC`) came.
async fn connect_grpc(addr: SocketAddr, doc: &str) -> Result<tonic::Streaming<DocumentEvent>> {
    let fut = async {
        let mut client = DocumentsClient::connect(format!("http://{addr}")).await?;
        let request = SubscribeRequest {
            doc: doc.to_owned(),
            after_seq: None,
        };
        let mut stream = client.subscribe(request).await?.into_inner();
        let first = stream.message().await?.context("the stream ended before its sync")?;
        if first.kind() != document_event::Kind::Sync {
            bail!("the first message is {:?}, not the sync", first.kind());
        }
        Ok(stream)
    };
    tokio::time::timeout(HANDSHAKE_TIMEOUT, fut)
        .await
        .with_context(|| format!("no sync within {HANDSHAKE_TIMEOUT:?}"))?
        .with_context(|| format!("Subscribe at {addr}"))
}

/// A gRPC reader: counts the writer's updates in every message until it has `n` of them, the
/// stream fails or `deadline` passes.
fn spawn_grpc_reader(mut stream: tonic::Streaming<DocumentEvent>, n: usize, deadline: Deadline) -> JoinHandle<ReaderOutcome> {
    tokio::spawn(async move {
        let mut out = ReaderOutcome::new(n);
        let read = async {
            while out.arrivals.len() < n {
                let Ok(next) = tokio::time::timeout_at(deadline.get(), stream.message()).await else {
                    break;
                };
                let event = next?.context("the stream ended")?;
                out.record(&event.yjs_update, Instant::now(), n);
                out.frames += 1;
            }
            Ok::<_, anyhow::Error>(())
        }
        .await;
        if let Err(e) = read {
            out.error = Some(e);
        }
        out
    })
}

/// A long-poll reader of `doc`: its first poll (without `after`) answers a `sync` and the seq
/// to continue from.
async fn connect_poll(addr: SocketAddr, doc: &str) -> Result<(HttpConn, u64)> {
    let path = format!("/v1/updates/{doc}");
    let fut = async {
        let mut conn = HttpConn::connect(addr).await?;
        let (status, body, _) = poll(&mut conn, &path).await?;
        if status != 200 {
            bail!("HTTP {status}: {}", String::from_utf8_lossy(&body));
        }
        let answer: PollAnswer<'_> = serde_json::from_slice(&body).context("an answer that is not JSON")?;
        if !answer.events.iter().any(|e| e.kind == "sync") {
            bail!("no sync event in the first answer");
        }
        Ok((conn, answer.next_after))
    };
    tokio::time::timeout(HANDSHAKE_TIMEOUT, fut)
        .await
        .with_context(|| format!("no answer within {HANDSHAKE_TIMEOUT:?}"))?
        .with_context(|| format!("GET http://{addr}{path}"))
}

/// One long poll: the status, the body, and when its last byte came.
async fn poll(conn: &mut HttpConn, path: &str) -> Result<(u16, Vec<u8>, Instant)> {
    let head = conn.get(path, "application/json").await?;
    let (body, at) = conn.body(&head).await?;
    Ok((head.status, body, at))
}

/// A long-poll reader: polls from `after` on, counting the writer's updates in every answer,
/// until it has `n` of them, a poll fails or `deadline` passes.
fn spawn_poll_reader(mut conn: HttpConn, doc: &str, mut after: u64, n: usize, deadline: Deadline) -> JoinHandle<ReaderOutcome> {
    let base = format!("/v1/updates/{doc}");
    tokio::spawn(async move {
        let mut out = ReaderOutcome::new(n);
        let read = async {
            while out.arrivals.len() < n {
                let path = format!("{base}?after={after}&wait_ms={POLL_WAIT_MS}");
                let Ok(answer) = tokio::time::timeout_at(deadline.get(), poll(&mut conn, &path)).await else {
                    break;
                };
                let (status, body, now) = answer.with_context(|| format!("GET {path}"))?;
                match status {
                    200 => {
                        let answer: PollAnswer<'_> = serde_json::from_slice(&body).context("an answer that is not JSON")?;
                        out.frames += 1;
                        for event in &answer.events {
                            take(&mut out, event, now, n)?;
                        }
                        after = answer.next_after;
                    }
                    204 => {}
                    s => bail!("GET {path}: HTTP {s}: {}", String::from_utf8_lossy(&body)),
                }
            }
            Ok::<_, anyhow::Error>(())
        }
        .await;
        if let Err(e) = read {
            out.error = Some(e);
        }
        out
    })
}
