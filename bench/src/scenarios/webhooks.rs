//! `webhooks`: webhook delivery throughput (issue 22). One Lattice server with one endpoint for
//! `document.changed`, a receiver in this process (HTTP/1.1, answers `200` at once), and one
//! update written to each of N documents (`POST /v1/updates/{doc}`, answered after commit, 16
//! at a time): how fast the N events arrive, and how long after its commit each one does.
//!
//! Lattice's native target only (no peer has webhooks). Two cases: the default coalescing
//! interval (2 s: each event waits for its document to be quiet that long) and a short one
//! (`--webhook-coalesce 50ms`), which shows what the forming and delivering cost apart from
//! the wait. A third case writes the same updates with no endpoint: the writes' rate next to
//! theirs in the two cases shows what an endpoint costs the commit path.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Arg, ArgMatches, value_parser};
use futures_util::{StreamExt, stream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::{BoxFuture, Prepared, Scenario, flag, positive};
use crate::client::{self, Protocol};
use crate::http::HttpConn;
use crate::report::{Better, Medians, Sample, fmt_value, quantile};
use crate::target::{RunningServer, ServerKind, Target, Tools};

const NAME: &str = "webhooks";
/// Writes in flight at once.
const WRITERS: usize = 16;
/// How long the last event may take after the last write.
const DRAIN: Duration = Duration::from_secs(60);
/// The Yjs client id of the written updates.
const WRITER: u64 = 0x5745_4248;

pub(super) struct Webhooks;

struct Plan {
    docs: usize,
}

impl Scenario for Webhooks {
    fn name(&self) -> &'static str {
        NAME
    }

    fn about(&self) -> &'static str {
        "N documents changed once each → N webhook deliveries to a local receiver (Lattice only)"
    }

    fn args(&self) -> Vec<Arg> {
        vec![flag(
            "webhooks-docs",
            "webhooks: documents changed (one update each, one event each)",
            value_parser!(usize),
            Some("1000"),
        )]
    }

    fn prepare(&self, args: &ArgMatches) -> Result<Box<dyn Prepared>> {
        Ok(Box::new(Plan {
            docs: positive(args, "webhooks-docs")?,
        }))
    }
}

/// A case: the server's coalescing interval.
const CASES: [(&str, &str); 2] = [("coalesce 2s (default)", "2s"), ("coalesce 50ms", "50ms")];
/// The case without an endpoint: writes only.
const NO_ENDPOINT: &str = "no endpoint (writes only)";

impl Prepared for Plan {
    fn describe(&self) -> String {
        format!(
            "Lattice only (no peer has webhooks). One server (release build, SQLite) with one \
             endpoint for `document.changed` on a receiver in the bench process (HTTP/1.1 \
             keep-alive, answers `200` at once; `--webhook-allow-private`), default delivery \
             limits (16 in flight, 4 per endpoint). One update is written to each of {n} \
             documents with `POST /v1/updates/{{doc}}`, {WRITERS} at a time; each answer comes \
             after its commit. **deliveries/s** = {n} ÷ (last event's arrival − first write); \
             **latency** = a document's commit answer → its event's arrival; **events per \
             document** should be 1; **writes/s** = {n} ÷ the time the writes took. Cases: the \
             default coalescing interval (2 s, which every event waits out), \
             `--webhook-coalesce 50ms`, and the same writes with no endpoint (what an endpoint \
             costs the commit path).",
            n = self.docs
        )
    }

    fn supports(&self, target: &Target) -> bool {
        target.server == ServerKind::Lattice && target.protocol == Protocol::Native
    }

    fn run<'a>(&'a self, _server: &'a mut RunningServer, _target: &'a Target) -> BoxFuture<'a, Result<Vec<Sample>>> {
        Box::pin(async { bail!("the webhooks scenario starts its own server (run_own)") })
    }

    fn run_own<'a>(&'a self, tools: &'a Tools, _target: &'a Target) -> Option<BoxFuture<'a, Result<Vec<Sample>>>> {
        Some(Box::pin(async move {
            let mut out = Vec::new();
            for (case, coalesce) in CASES {
                let r = one_case(tools, self.docs, Some(coalesce))
                    .await
                    .with_context(|| format!("{NAME} {case}"))?;
                out.push(Sample::new(case, "deliveries/s", "deliveries/s", Better::Higher, r.per_s));
                out.push(Sample::new(case, "p50 latency", "ms", Better::Lower, r.p50_ms));
                out.push(Sample::new(case, "p99 latency", "ms", Better::Lower, r.p99_ms));
                out.push(Sample::new(case, "events per document", "events", Better::Lower, r.events_per_doc));
                out.push(Sample::new(case, "writes/s", "writes/s", Better::Higher, r.writes_per_s));
            }
            let r = one_case(tools, self.docs, None)
                .await
                .with_context(|| format!("{NAME} {NO_ENDPOINT}"))?;
            out.push(Sample::new(NO_ENDPOINT, "writes/s", "writes/s", Better::Higher, r.writes_per_s));
            Ok(out)
        }))
    }

    fn own_section(&self) -> Option<&'static str> {
        Some("Webhook delivery (issue 22): one event per changed document")
    }

    fn verdicts(&self, m: &Medians) -> Vec<String> {
        let mut out = Vec::new();
        for (case, _) in CASES {
            if let (Some(rate), Some(p50)) = (
                m.get(NAME, case, "deliveries/s", "lattice"),
                m.get(NAME, case, "p50 latency", "lattice"),
            ) {
                out.push(format!(
                    "{case}: {} events delivered at {}, p50 {p50:.0} ms after commit (for information)",
                    self.docs,
                    fmt_value(rate, "deliveries/s")
                ));
            }
            if let (Some(with), Some(without)) = (
                m.get(NAME, case, "writes/s", "lattice"),
                m.get(NAME, NO_ENDPOINT, "writes/s", "lattice"),
            ) {
                out.push(format!(
                    "{case}: writes at {:.2}× the rate without an endpoint (for information)",
                    with / without
                ));
            }
        }
        out
    }
}

struct CaseResult {
    writes_per_s: f64,
    per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    events_per_doc: f64,
}

/// Arrivals at the receiver: per document, when its events came.
type Arrivals = Arc<Mutex<HashMap<String, Vec<Instant>>>>;

/// One server, `docs` writes; with `coalesce`, an endpoint and its deliveries too.
async fn one_case(tools: &Tools, docs: usize, coalesce: Option<&str>) -> Result<CaseResult> {
    let receiver = TcpListener::bind("127.0.0.1:0").await?;
    let receiver_addr = receiver.local_addr()?;
    let arrivals: Arrivals = Arc::default();
    let accept = tokio::spawn(receive(receiver, arrivals.clone()));
    let dir = tempfile::Builder::new().prefix("lattice-bench-webhooks-").tempdir()?;
    let db = format!("sqlite://{}", dir.path().join("bench.db").display());
    let flags: Vec<String> = ["--webhook-allow-private", "--webhook-coalesce", coalesce.unwrap_or("2s")]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    let mut server = RunningServer::start_lattice_on(tools, &db, &flags).await?;
    let addr = server.endpoint.addr;
    if coalesce.is_some() {
        add_endpoint(addr, receiver_addr).await?;
    }

    let update = client::keystrokes(1, WRITER).remove(0);
    let started = Instant::now();
    let committed: Vec<(String, Instant)> = stream::iter(0..docs)
        .map(|i| {
            let update = update.clone();
            async move {
                let doc = format!("bench/webhooks/{i}");
                let mut conn = HttpConn::connect(addr).await?;
                let head = conn
                    .post(&format!("/v1/updates/{doc}"), "application/octet-stream", &update)
                    .await?;
                let (body, at) = conn.body(&head).await?;
                if head.status != 200 {
                    bail!("HTTP {}: {}", head.status, String::from_utf8_lossy(&body));
                }
                Ok::<_, anyhow::Error>((doc, at))
            }
        })
        .buffer_unordered(WRITERS)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_>>()?;
    let writes_per_s = docs as f64 / started.elapsed().as_secs_f64();
    if coalesce.is_none() {
        server.check_alive()?;
        accept.abort();
        return Ok(CaseResult {
            writes_per_s,
            per_s: 0.0,
            p50_ms: 0.0,
            p99_ms: 0.0,
            events_per_doc: 0.0,
        });
    }
    let deadline = Instant::now() + DRAIN + Duration::from_secs(10);
    loop {
        let got = arrivals.lock().map_or(0, |a| a.len());
        if got >= docs {
            break;
        }
        if Instant::now() > deadline {
            bail!("{got} of {docs} documents' events arrived within {DRAIN:?} of the last write");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Late duplicates would show in the events per document; give them a moment.
    tokio::time::sleep(Duration::from_millis(200)).await;
    server.check_alive()?;
    drop(server);
    accept.abort();
    let arrivals = arrivals.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.clone();
    let mut latencies = Vec::with_capacity(docs);
    let mut last = started;
    let mut events = 0;
    for (doc, at) in &committed {
        let times = arrivals.get(doc).with_context(|| format!("no event for {doc}"))?;
        events += times.len();
        let first = times.iter().min().copied().unwrap_or(*at);
        last = last.max(first);
        latencies.push(first.saturating_duration_since(*at).as_secs_f64() * 1_000.0);
    }
    latencies.sort_by(f64::total_cmp);
    Ok(CaseResult {
        writes_per_s,
        per_s: docs as f64 / last.duration_since(started).as_secs_f64(),
        p50_ms: quantile(&latencies, 0.5),
        p99_ms: quantile(&latencies, 0.99),
        events_per_doc: events as f64 / docs as f64,
    })
}

/// `POST /api/admin/webhooks` (the bench server runs with `--no-auth`).
async fn add_endpoint(server: SocketAddr, receiver: SocketAddr) -> Result<()> {
    let body = serde_json::json!({
        "url": format!("http://{receiver}/hook"),
        "events": ["document.changed"],
    })
    .to_string();
    let mut conn = HttpConn::connect(server).await?;
    let head = conn
        .post("/api/admin/webhooks", "application/json", body.as_bytes())
        .await?;
    let (answer, _) = conn.body(&head).await?;
    if !(200..300).contains(&head.status) {
        bail!("adding the endpoint: HTTP {}: {}", head.status, String::from_utf8_lossy(&answer));
    }
    Ok(())
}

/// The receiver: every request on every connection is answered `200` and its
/// `data.document` recorded with its arrival time.
async fn receive(listener: TcpListener, arrivals: Arrivals) {
    while let Ok((stream, _)) = listener.accept().await {
        let arrivals = arrivals.clone();
        tokio::spawn(async move {
            let _ = serve(stream, arrivals).await;
        });
    }
}

async fn serve(mut stream: TcpStream, arrivals: Arrivals) -> Result<()> {
    let mut buf: Vec<u8> = Vec::new();
    loop {
        // The head.
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if stream.read_buf(&mut buf).await? == 0 {
                return Ok(());
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        while buf.len() < head_end + len {
            if stream.read_buf(&mut buf).await? == 0 {
                bail!("the connection ended inside a body");
            }
        }
        let now = Instant::now();
        let body: serde_json::Value = serde_json::from_slice(&buf[head_end..head_end + len]).unwrap_or_default();
        buf.drain(..head_end + len);
        if let Some(doc) = body["data"]["document"].as_str()
            && let Ok(mut a) = arrivals.lock()
        {
            a.entry(doc.to_owned()).or_default().push(now);
        }
        stream
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            .await?;
    }
}
