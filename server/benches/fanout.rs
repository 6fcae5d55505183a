//! Fan-out benchmark: 1 writer, N readers on one document, keystroke-sized deltas in a burst.
//!
//! `cargo bench -p lattice-server --bench fanout -- [--readers 100] [--deltas 5000] [--runs 3]`
//!
//! The server runs in this process on its own 2-thread runtime, on a fresh SQLite file, so every
//! delta is committed before it is acknowledged and relayed. Each delta types one character and
//! carries a counter holding its own index, so a reader learns from the counter in each frame
//! (relays of a burst are merged) which deltas it has, without applying Yjs. Reported: deliveries
//! per second (deltas × readers / time from the first send to the last delivery) and the latency
//! from a delta's send to its arrival at each reader (p50, p99, max over all pairs).

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use lattice_engine::protocol::{ClientMsg, PROTOCOL_VERSION, ServerMsg};
use lattice_engine::{Delta, DocId, DocState, Document, GCounter, ReplicaId};
use lattice_server::config::Config;
use tokio_tungstenite::tungstenite::Message;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn keystrokes(n: usize) -> Vec<Delta> {
    let writer = ReplicaId::from_random(7);
    let mut doc = Document::new(writer);
    (0..n)
        .map(|i| {
            let at = doc.text_len("t");
            let mut d = doc.text_insert("t", at, "x").expect("insert");
            let mut c = GCounter::new();
            c.increment(writer, i as u64 + 1);
            d.counters.insert("i".into(), c);
            d
        })
        .collect()
}

async fn connect(
    url: &str,
    doc: &DocId,
) -> Result<
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    BoxError,
> {
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await?;
    let hello = ClientMsg::Hello {
        protocol: PROTOCOL_VERSION,
        token: None,
        agent: None,
        replica: None,
    };
    ws.send(Message::Binary(hello.encode().into())).await?;
    ws.send(Message::Binary(
        ClientMsg::Subscribe {
            doc: doc.clone(),
            state: DocState::default(),
        }
        .encode()
        .into(),
    ))
    .await?;
    // welcome, then sync
    loop {
        let Some(frame) = ws.next().await else {
            return Err("closed".into());
        };
        if let Message::Binary(b) = frame?
            && let ServerMsg::Sync { .. } = ServerMsg::decode(&b, usize::MAX)?
        {
            return Ok(ws);
        }
    }
}

struct RunResult {
    deliveries_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    frames: u64,
}

async fn run_once(url: String, readers: usize, deltas: &[Delta]) -> Result<RunResult, BoxError> {
    let doc = DocId::new("bench/fanout")?;
    let url = url.as_str();
    let n = deltas.len();
    let mut reader_tasks = Vec::new();
    let start_gate = std::sync::Arc::new(tokio::sync::Barrier::new(readers + 1));
    for _ in 0..readers {
        let mut ws = connect(url, &doc).await?;
        let gate = start_gate.clone();
        reader_tasks.push(tokio::spawn(async move {
            gate.wait().await;
            let mut arrivals = vec![Instant::now(); n];
            let mut have = 0usize;
            let mut frames = 0u64;
            while have < n {
                let Some(Ok(frame)) = ws.next().await else {
                    break;
                };
                let Message::Binary(b) = frame else { continue };
                if let Ok(ServerMsg::Delta { delta, .. }) = ServerMsg::decode(&b, usize::MAX) {
                    frames += 1;
                    let upto = delta.counters.get("i").map_or(0, GCounter::value) as usize;
                    let now = Instant::now();
                    while have < upto.min(n) {
                        arrivals[have] = now;
                        have += 1;
                    }
                }
            }
            (arrivals, have, frames)
        }));
    }
    let mut writer = connect(url, &doc).await?;
    start_gate.wait().await;
    let mut sent_at = Vec::with_capacity(n);
    let first = Instant::now();
    for (i, d) in deltas.iter().enumerate() {
        sent_at.push(Instant::now());
        writer
            .feed(Message::Binary(
                ClientMsg::Delta {
                    doc: doc.clone(),
                    seq: i as u64 + 1,
                    delta: d.clone(),
                }
                .encode()
                .into(),
            ))
            .await?;
        if i % 64 == 63 {
            writer.flush().await?;
        }
    }
    writer.flush().await?;
    let mut latencies = Vec::with_capacity(n * readers);
    let mut last = first;
    let mut frames = 0;
    for t in reader_tasks {
        let (arrivals, have, f) = tokio::time::timeout(Duration::from_secs(120), t).await??;
        if have < n {
            return Err(format!("a reader got {have} of {n}").into());
        }
        frames += f;
        for (i, at) in arrivals.iter().enumerate() {
            last = last.max(*at);
            latencies.push(at.duration_since(sent_at[i]).as_secs_f64() * 1e3);
        }
    }
    // Drain the writer's acks so the server finished cleanly.
    let elapsed = last.duration_since(first).as_secs_f64();
    latencies.sort_by(f64::total_cmp);
    let pct = |p: f64| latencies[((latencies.len() as f64 - 1.0) * p) as usize];
    drop(writer);
    Ok(RunResult {
        deliveries_per_s: (n * readers) as f64 / elapsed,
        p50_ms: pct(0.5),
        p99_ms: pct(0.99),
        max_ms: *latencies.last().unwrap_or(&0.0),
        frames,
    })
}

fn main() -> Result<(), BoxError> {
    let readers = arg("--readers", 100);
    let n = arg("--deltas", 5_000);
    let runs = arg("--runs", 3);
    let deltas = keystrokes(n);
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut results = Vec::new();
    for r in 0..runs {
        // A fresh server on a fresh SQLite file per run, on its own runtime.
        let dir = tempfile::tempdir()?;
        let mut config = Config {
            database_url: format!("sqlite://{}", dir.path().join("bench.db").display()),
            ..Config::default()
        };
        config.limits.messages_per_second = 1_000_000;
        config.limits.message_burst = 1_000_000;
        config.limits.bytes_per_second = u32::MAX / 2;
        let server_rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let listener = server_rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = server_rt.spawn(async move {
            let _ = lattice_server::run(config, listener, async {
                let _ = stopped.await;
            })
            .await;
        });
        let res = client_rt.block_on(run_once(format!("ws://{addr}/v1/sync"), readers, &deltas));
        let _ = stop.send(());
        let _ = server_rt.block_on(server);
        let res = res?;
        println!(
            "run {}: {:>12.0} deliveries/s  p50 {:>7.2} ms  p99 {:>7.2} ms  max {:>7.2} ms  ({} frames to readers)",
            r + 1,
            res.deliveries_per_s,
            res.p50_ms,
            res.p99_ms,
            res.max_ms,
            res.frames
        );
        results.push(res);
    }
    let median = |f: fn(&RunResult) -> f64| {
        let mut v: Vec<f64> = results.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!(
        "fanout: 1 writer → {readers} readers, {n} keystroke deltas (burst), SQLite, median of {runs}: {:.0} deliveries/s, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        median(|r| r.deliveries_per_s),
        median(|r| r.p50_ms),
        median(|r| r.p99_ms),
        median(|r| r.max_ms)
    );
    Ok(())
}
