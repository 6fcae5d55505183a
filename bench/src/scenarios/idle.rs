//! `idle`: the server's memory per idle connection. N connections (default 10,000), each
//! subscribed to one of D documents (default 100) and synced as a real client would be, then
//! left idle; the server process's resident memory (`VmRSS`) after, minus before, divided by N.
//! Every connection keeps reading (answering pings) until it is measured; one that closed early
//! fails the scenario.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Arg, ArgMatches, value_parser};
use futures_util::{StreamExt, stream};

use super::{BoxFuture, Prepared, Scenario, flag, positive};
use crate::client::{self, ConnectOptions};
use crate::report::{Better, Medians, Sample};
use crate::target::{RunningServer, Target};
use crate::verdict;

/// Connections opened at once.
const CONNECT_CONCURRENCY: usize = 64;
/// Issue 21's target for the server's memory per idle connection: 6 KB.
const IDLE_TARGET_BYTES: f64 = 6.0 * 1024.0;
/// Open files the bench needs besides the connections (servers' pipes, stores, stdio).
const SPARE_FILES: u64 = 256;
/// Time left for the server to settle (allocations, timers) before it is measured.
const SETTLE: Duration = Duration::from_secs(2);

pub(super) struct Idle;

struct Plan {
    connections: usize,
    docs: usize,
}

impl Scenario for Idle {
    fn name(&self) -> &'static str {
        "idle"
    }

    fn about(&self) -> &'static str {
        "server memory per idle, subscribed connection"
    }

    fn args(&self) -> Vec<Arg> {
        vec![
            flag("idle-connections", "idle: connections held open", value_parser!(usize), Some("10000")),
            flag("idle-docs", "idle: documents the connections are spread over", value_parser!(usize), Some("100")),
        ]
    }

    fn prepare(&self, args: &ArgMatches) -> Result<Box<dyn Prepared>> {
        Ok(Box::new(Plan {
            connections: positive(args, "idle-connections")?,
            docs: positive(args, "idle-docs")?,
        }))
    }
}

impl Prepared for Plan {
    fn describe(&self) -> String {
        format!(
            "{} connections, each subscribed to one of {} empty documents and synced (native: \
             `hello` + `subscribe` → `sync`; y-websocket: sync step 1 → step 2, on Y-Sweet after \
             `POST /doc/new` once per document; Hocuspocus: auth + step 1 → authenticated + \
             step 2), then idle. Per connection = (server `VmRSS` after \
             connecting and {} s of settling − `VmRSS` of the fresh server) ÷ connections. Node \
             servers are measured the same way (no forced GC).",
            self.connections,
            self.docs,
            SETTLE.as_secs()
        )
    }

    fn run<'a>(&'a self, server: &'a mut RunningServer, target: &'a Target) -> BoxFuture<'a, Result<Vec<Sample>>> {
        Box::pin(async move {
            let limit = crate::open_files_limit();
            if limit < self.connections as u64 + SPARE_FILES {
                bail!(
                    "idle against {}: {} connections need about {} open files, the limit is \
                     {limit} (raise it with `ulimit -n`, or lower --idle-connections)",
                    target.label,
                    self.connections,
                    self.connections as u64 + SPARE_FILES
                );
            }
            let before = server.rss_bytes()?;
            let endpoint = server.endpoint.clone();
            let live = Arc::new(AtomicUsize::new(0));
            let mut keepers = tokio::task::JoinSet::new();
            let started = Instant::now();
            let docs = self.docs;
            let mut conns = stream::iter(0..self.connections)
                .map(|i| {
                    let endpoint = endpoint.clone();
                    async move {
                        let doc = format!("bench/idle-{}", i % docs);
                        client::connect(&endpoint, &doc, ConnectOptions { small_buffers: true }).await
                    }
                })
                .buffer_unordered(CONNECT_CONCURRENCY);
            let mut opened = 0usize;
            while let Some(conn) = conns.next().await {
                let (mut ws, _codec) = conn.with_context(|| {
                    format!("idle against {}: connection {} of {}", target.label, opened + 1, self.connections)
                })?;
                opened += 1;
                live.fetch_add(1, Ordering::Relaxed);
                let live = live.clone();
                keepers.spawn(async move {
                    // Reading answers the server's pings; anything it sends is ignored.
                    while let Some(Ok(_)) = ws.next().await {}
                    live.fetch_sub(1, Ordering::Relaxed);
                });
            }
            let connect_secs = started.elapsed().as_secs_f64();
            tokio::time::sleep(SETTLE).await;
            let after = server.rss_bytes()?;
            let still = live.load(Ordering::Relaxed);
            if still < self.connections {
                bail!(
                    "idle against {}: {} of {} connections closed before the measurement",
                    target.label,
                    self.connections - still,
                    self.connections
                );
            }
            server.check_alive()?;
            keepers.shutdown().await;
            let per = (after.saturating_sub(before)) as f64 / self.connections as f64;
            let case = format!("{} connections", self.connections);
            Ok(vec![
                Sample::new(&case, "memory per connection", "B", Better::Lower, per),
                Sample::new(&case, "RSS before", "MiB", Better::Lower, before as f64 / 1048576.0),
                Sample::new(&case, "RSS after", "MiB", Better::Lower, after as f64 / 1048576.0),
                Sample::new(&case, "time to connect all", "s", Better::Lower, connect_secs),
            ])
        })
    }

    fn verdicts(&self, m: &Medians) -> Vec<String> {
        let case = format!("{} connections", self.connections);
        verdict::against_target(
            m,
            ("idle", &case, "memory per connection"),
            "idle memory ≤ 6 KB per connection",
            IDLE_TARGET_BYTES,
        )
    }
}
