//! `cluster`: fan-out across the nodes of a Lattice cluster (issue 20). Every run starts its
//! own cluster: a fresh PostgreSQL database, a `redis-server` child on a free port, and N
//! `lattice serve --no-auth --redis-url …` nodes on both (node 1 first, the next once the
//! previous one reports Redis up in `/metrics`). Then, in that one cluster, the same
//! keystroke updates are sent twice, to two fresh documents:
//!
//! - **all on node 1**: the writer and every reader on node 1. The other nodes have no
//!   subscriber of that document, so they never load it; node 1 still commits to PostgreSQL
//!   and publishes every entry to the Redis stream, as any cluster node does.
//! - **spread over N nodes**: the writer on node 1, reader i on node (i mod N) + 1. A reader
//!   on another node gets an update after the commit on node 1, its relay through the stream
//!   (or a catch-up read from PostgreSQL) and the relay on its own node.
//!
//! Readers account for every update exactly: the clock ranges of the writer in each relay say
//! which updates it carries, so a repeated, skipped or late update shows (fanout's readers
//! count only up to the highest clock). A delivery missing when the case ends fails the bench.
//! Latency and deliveries/s are `fanout`'s; the cross-node extra is the p50 of the readers on
//! the other nodes minus the p50 of those on node 1, in the spread case. The cluster's own
//! counters (`lattice_cluster_*` in `/metrics`, summed over the nodes) say how the entries
//! travelled.
//!
//! Lattice's native target only: the peers have no cluster mode comparable here.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Arg, ArgMatches, value_parser};
use futures_util::StreamExt;
use tokio::task::JoinHandle;

use super::fanout::{Deadline, Sent, WRITER, Writer, connect_websocket_readers};
use super::{BoxFuture, Prepared, Scenario, flag, positive};
use crate::client::{self, Codec, Event, Protocol, Ws};
use crate::http::HttpConn;
use crate::report::{Better, Medians, Sample, fmt_value, quantile};
use crate::services::{self, PostgresDb, RedisServer};
use crate::target::{RunningServer, ServerKind, Target, Tools};

/// The scenario's name, in the report and in [`Medians`].
const NAME: &str = "cluster";
/// How long a node may take, after its ready line, to report Redis up in `/metrics`.
const CLUSTER_UP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one `/metrics` read may take.
const METRICS_TIMEOUT: Duration = Duration::from_secs(10);
/// The cross-node latency the issue allows on loopback, over the same-node p50.
const CROSS_NODE_TARGET_MS: f64 = 2.0;

/// The counters of `/metrics` that say how entries crossed nodes, summed over the nodes.
const COUNTERS: [&str; 5] = [
    "lattice_cluster_stream_entries_total",
    "lattice_cluster_catchup_reads_total",
    "lattice_cluster_catchup_entries_total",
    "lattice_cluster_publish_failures_total",
    "lattice_cluster_redis_errors_total",
];

pub(super) struct Cluster;

struct Plan {
    nodes: usize,
    readers: usize,
    burst: Vec<Vec<u8>>,
    paced: Vec<Vec<u8>>,
    rate: u32,
    /// The PostgreSQL server; each run creates (and drops) a database on it.
    admin_url: String,
    redis_bin: PathBuf,
    postgres_version: String,
    redis_version: String,
}

/// Where the readers of a case are; the writer is always on node 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Placement {
    OneNode,
    Spread,
}

impl Scenario for Cluster {
    fn name(&self) -> &'static str {
        NAME
    }

    fn about(&self) -> &'static str {
        "1 writer → N readers on one node vs spread over a Postgres + Redis cluster (Lattice only)"
    }

    fn args(&self) -> Vec<Arg> {
        vec![
            flag("cluster-nodes", "cluster: Lattice nodes in the cluster (at least 2)", value_parser!(usize), Some("3")),
            flag("cluster-readers", "cluster: readers on the document", value_parser!(usize), Some("100")),
            flag("cluster-updates", "cluster: updates sent in the burst", value_parser!(usize), Some("2000")),
            flag("cluster-paced", "cluster: updates sent paced (0 skips the paced cases)", value_parser!(usize), Some("1000")),
            flag("cluster-rate", "cluster: paced updates per second", value_parser!(u32), Some("100")),
        ]
    }

    fn prepare(&self, args: &ArgMatches) -> Result<Box<dyn Prepared>> {
        let nodes: usize = positive(args, "cluster-nodes")?;
        if nodes < 2 {
            bail!("--cluster-nodes must be at least 2");
        }
        let rate = args.get_one::<u32>("cluster-rate").copied().unwrap_or(100);
        if rate == 0 {
            bail!("--cluster-rate must be positive");
        }
        let paced = args.get_one::<usize>("cluster-paced").copied().unwrap_or_default();
        // Both services are checked now, before any scenario runs, so a missing one fails the
        // bench at once and by name.
        let admin_url = services::postgres_url()?;
        let redis_bin = services::redis_server_bin()?;
        let redis_version = std::process::Command::new(&redis_bin)
            .arg("--version")
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .with_context(|| format!("`{} --version` failed", redis_bin.display()))?;
        let postgres_version = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(services::postgres_version(&admin_url))?;
        Ok(Box::new(Plan {
            nodes,
            readers: positive(args, "cluster-readers")?,
            burst: client::keystrokes(positive(args, "cluster-updates")?, WRITER),
            paced: client::keystrokes(paced, WRITER),
            rate,
            admin_url,
            redis_bin,
            postgres_version,
            redis_version,
        }))
    }
}

/// One case: an update sequence (burst or paced) and where the readers are.
struct Case<'a> {
    kind: String,
    updates: &'a [Vec<u8>],
    pace: Option<Duration>,
    placement: Placement,
}

impl Plan {
    fn paced_kind(&self) -> String {
        format!("paced {}/s", self.rate)
    }

    fn case_name(&self, kind: &str, placement: Placement) -> String {
        match placement {
            Placement::OneNode => format!("{kind}, all on node 1"),
            Placement::Spread => format!("{kind}, spread over {} nodes", self.nodes),
        }
    }

    /// The cases of a run, each sequence once on one node and once spread.
    fn cases(&self) -> Vec<Case<'_>> {
        let mut kinds = vec![("burst".to_owned(), &self.burst, None)];
        if !self.paced.is_empty() {
            let period = Duration::from_secs_f64(1.0 / f64::from(self.rate));
            kinds.push((self.paced_kind(), &self.paced, Some(period)));
        }
        kinds
            .into_iter()
            .flat_map(|(kind, updates, pace)| {
                [Placement::OneNode, Placement::Spread].map(|placement| Case {
                    kind: kind.clone(),
                    updates,
                    pace,
                    placement,
                })
            })
            .collect()
    }

    /// The node (0-based) of reader `i`.
    fn node_of(&self, i: usize, placement: Placement) -> usize {
        match placement {
            Placement::OneNode => 0,
            Placement::Spread => i % self.nodes,
        }
    }

    /// Starts the cluster on `db`, measures every case, stops the cluster.
    async fn measure(&self, tools: &Tools, db: &PostgresDb) -> Result<Vec<Sample>> {
        let mut redis = RedisServer::start(&self.redis_bin).await?;
        let mut nodes: Vec<RunningServer> = Vec::with_capacity(self.nodes);
        let flags = ["--redis-url".to_owned(), redis.url.clone()];
        for i in 0..self.nodes {
            let started = RunningServer::start_lattice_on(tools, &db.url, &flags).await;
            let node = match started {
                Ok(n) => n,
                Err(e) => return Err(e.context(format!("starting node {}", i + 1))),
            };
            if let Err(e) = wait_redis_up(node.endpoint.addr).await {
                return Err(e.context(format!(
                    "node {} did not join the cluster; its output:\n{}",
                    i + 1,
                    node.log_tail()
                )));
            }
            nodes.push(node);
        }
        let mut out = Vec::new();
        for (i, case) in self.cases().iter().enumerate() {
            let name = self.case_name(&case.kind, case.placement);
            let measured = self.one_case(&nodes, &format!("bench/cluster-{i}"), case).await;
            match measured {
                Ok(samples) => out.extend(samples),
                Err(e) => {
                    let mut why = String::new();
                    for (k, node) in nodes.iter_mut().enumerate() {
                        let alive = node
                            .check_alive()
                            .err()
                            .map_or_else(String::new, |e| format!("\n{e:#}"));
                        why.push_str(&format!(
                            "\n--- node {} ({}){alive}\n{}",
                            k + 1,
                            node.endpoint.addr,
                            node.log_tail()
                        ));
                    }
                    if let Err(e) = redis.check_alive() {
                        why.push_str(&format!("\n--- {e:#}"));
                    }
                    return Err(e.context(format!("case {name:?}; the nodes' output:{why}")));
                }
            }
        }
        for (k, node) in nodes.into_iter().enumerate() {
            node.stop()
                .await
                .with_context(|| format!("node {} after the cases", k + 1))?;
        }
        redis.check_alive()?;
        Ok(out)
    }

    async fn one_case(&self, nodes: &[RunningServer], doc: &str, case: &Case<'_>) -> Result<Vec<Sample>> {
        let n = case.updates.len();
        let mut per_node = vec![0; nodes.len()];
        for i in 0..self.readers {
            per_node[self.node_of(i, case.placement)] += 1;
        }
        let deadline = Deadline::for_case(n, case.pace);
        let mut tasks = Vec::with_capacity(self.readers);
        for (k, count) in per_node.iter().enumerate().filter(|(_, c)| **c > 0) {
            let conns = connect_websocket_readers(&nodes[k].endpoint, doc, *count)
                .await
                .with_context(|| format!("readers on node {}", k + 1))?;
            for (ws, codec) in conns {
                tasks.push((k, spawn_reader(ws, codec, n, deadline.clone())));
            }
        }
        let before = Counters::read(nodes).await?;
        let mut writer = Writer::connect(&nodes[0].endpoint, doc).await?;
        let sent = writer.send(case.updates, case.pace).await?;
        deadline.writer_done();
        let mut readers = Vec::with_capacity(tasks.len());
        for (k, t) in tasks {
            readers.push((k, t.await.context("a reader task panicked")?));
        }
        writer.finish().await?;
        let after = Counters::read(nodes).await?;
        let relayed = after.minus(&before);
        check_complete(&readers, n, &relayed)?;

        let name = self.case_name(&case.kind, case.placement);
        let all = Latencies::of(readers.iter().map(|(_, r)| r), &sent);
        let relays_per_reader = |on_node_1: bool| {
            let of: Vec<u64> = readers.iter().filter(|(k, _)| (*k == 0) == on_node_1).map(|(_, r)| r.relays).collect();
            of.iter().sum::<u64>() as f64 / of.len().max(1) as f64
        };
        let mut out = vec![
            Sample::new(&name, "deliveries/s", "deliveries/s", Better::Higher, all.deliveries_per_s),
            Sample::new(&name, "p50 latency", "ms", Better::Lower, all.quantile(0.5)),
            Sample::new(&name, "p99 latency", "ms", Better::Lower, all.quantile(0.99)),
            Sample::new(&name, "max latency", "ms", Better::Lower, all.quantile(1.0)),
        ];
        if case.placement == Placement::Spread {
            let local = Latencies::of(readers.iter().filter(|(k, _)| *k == 0).map(|(_, r)| r), &sent);
            let remote = Latencies::of(readers.iter().filter(|(k, _)| *k != 0).map(|(_, r)| r), &sent);
            out.extend([
                Sample::new(&name, "p50 latency, readers on node 1", "ms", Better::Lower, local.quantile(0.5)),
                Sample::new(&name, "p50 latency, readers on other nodes", "ms", Better::Lower, remote.quantile(0.5)),
                Sample::new(&name, "p99 latency, readers on other nodes", "ms", Better::Lower, remote.quantile(0.99)),
                Sample::new(&name, "cross-node extra p50", "ms", Better::Lower, remote.quantile(0.5) - local.quantile(0.5)),
                Sample::new(&name, "relays per reader on node 1", "relays", Better::Lower, relays_per_reader(true)),
                Sample::new(&name, "relays per reader on other nodes", "relays", Better::Lower, relays_per_reader(false)),
            ]);
        } else {
            out.push(Sample::new(&name, "relays per reader", "relays", Better::Lower, relays_per_reader(true)));
        }
        let repeated: u64 = readers.iter().map(|(_, r)| r.repeated).sum();
        let out_of_order: u64 = readers.iter().map(|(_, r)| r.out_of_order).sum();
        out.extend([
            Sample::new(&name, "via the Redis stream", "entries", Better::Higher, relayed.get(COUNTERS[0])),
            Sample::new(&name, "via catch-up reads", "entries", Better::Lower, relayed.get(COUNTERS[2])),
            Sample::new(&name, "repeated", "deliveries", Better::Lower, repeated as f64),
            Sample::new(&name, "out of order", "relays", Better::Lower, out_of_order as f64),
        ]);
        for (k, node) in nodes.iter().enumerate() {
            // Only the process: a node that died stops the bench with its output.
            if !std::path::Path::new(&format!("/proc/{}", node.pid)).exists() {
                bail!("node {} exited during the case", k + 1);
            }
        }
        Ok(out)
    }
}

impl Prepared for Plan {
    fn describe(&self) -> String {
        let paced = if self.paced.is_empty() {
            "no paced cases (`--cluster-paced 0`)".to_owned()
        } else {
            format!("**paced** = {} updates at {}/s", self.paced.len(), self.rate)
        };
        let others = if self.nodes == 2 {
            "node 2".to_owned()
        } else {
            format!("nodes 2–{}", self.nodes)
        };
        format!(
            "Lattice only: the peers have no cluster mode comparable here. Each run starts a \
             cluster of {nodes} release `lattice serve --no-auth` nodes (rate limits raised as \
             for the other scenarios; cluster intervals at their defaults) on one fresh \
             PostgreSQL database (server {pg}, local, over TCP) and one `redis-server` child \
             ({redis}; no persistence) on loopback. In that cluster one writer on node 1 sends \
             `fanout`'s keystroke updates, **burst** = {b} updates as fast as the connection \
             takes them, then {paced}, each sequence to two fresh documents with {r} readers: \
             **all on node 1** (the writer and every reader on node 1; the other nodes have no \
             subscriber of that document and never load it, while node 1 still publishes \
             every entry to Redis), and **spread over {nodes} nodes** (reader i on node \
             (i mod {nodes}) + 1). Readers on the writer's node get an update once applied, \
             readers on other nodes once it is committed to PostgreSQL (through Redis). \
             Readers check every update exactly by the writer's clock ranges in each relay: a \
             missing delivery fails the bench; repeated deliveries and relays that skip ahead \
             are counted, and so are the relays per reader (frames with updates of the writer; \
             one that carries several merged updates counts once). Latency: an update's send → \
             its arrival at a reader, over all (update, reader) pairs of the case or of the \
             readers named; cross-node extra p50 = p50 of the readers on {others} − p50 of the \
             readers on node 1 (spread case); deliveries/s = updates × readers ÷ (last arrival \
             − first send). Entries via the Redis stream / via catch-up reads: the increase of \
             `lattice_cluster_stream_entries_total` / `lattice_cluster_catchup_entries_total`, \
             summed over the nodes.",
            nodes = self.nodes,
            pg = self.postgres_version,
            redis = self.redis_version,
            b = self.burst.len(),
            r = self.readers,
        )
    }

    fn supports(&self, target: &Target) -> bool {
        target.server == ServerKind::Lattice && target.protocol == Protocol::Native
    }

    fn run<'a>(&'a self, _server: &'a mut RunningServer, _target: &'a Target) -> BoxFuture<'a, Result<Vec<Sample>>> {
        Box::pin(async { bail!("the cluster scenario starts its own servers (run_own)") })
    }

    fn run_own<'a>(&'a self, tools: &'a Tools, _target: &'a Target) -> Option<BoxFuture<'a, Result<Vec<Sample>>>> {
        Some(Box::pin(async move {
            let db = PostgresDb::create(&self.admin_url).await?;
            let measured = self.measure(tools, &db).await;
            // The nodes are gone by now (killed when `measure` dropped them); FORCE closes
            // whatever connection the kernel has not torn down yet.
            if let Err(e) = db.drop_now().await {
                eprintln!("cluster: could not drop the bench database: {e:#}");
            }
            measured
        }))
    }

    fn own_section(&self) -> Option<&'static str> {
        Some("Cluster fan-out (issue 20): one node against nodes sharing PostgreSQL and Redis")
    }

    fn verdicts(&self, m: &Medians) -> Vec<String> {
        let get = |case: &str, metric: &str| m.get(NAME, case, metric, "lattice");
        let mut kinds = vec!["burst".to_owned()];
        if !self.paced.is_empty() {
            kinds.push(self.paced_kind());
        }
        let mut out = Vec::new();
        for kind in kinds.iter().rev() {
            let spread = self.case_name(kind, Placement::Spread);
            let one = self.case_name(kind, Placement::OneNode);
            let info = if kind == "burst" {
                " (for information: a burst's latency is its queueing)"
            } else {
                ""
            };
            if let (Some(extra), Some(local), Some(remote)) = (
                get(&spread, "cross-node extra p50"),
                get(&spread, "p50 latency, readers on node 1"),
                get(&spread, "p50 latency, readers on other nodes"),
            ) {
                let sign = if extra < 0.0 { "−" } else { "+" };
                out.push(format!(
                    "{kind}: cross-node p50 ≤ same-node p50 + {CROSS_NODE_TARGET_MS} ms{info}: {} \
                     (extra {sign}{} ms, the median of the runs' differences; medians of the p50s: \
                     other nodes {} ms, node 1 {} ms)",
                    if extra <= CROSS_NODE_TARGET_MS { "**met**" } else { "**not met**" },
                    fmt_value(extra.abs(), "ms"),
                    fmt_value(remote, "ms"),
                    fmt_value(local, "ms"),
                ));
            }
            if let (Some(s), Some(o)) = (get(&spread, "deliveries/s"), get(&one, "deliveries/s")) {
                out.push(format!(
                    "{kind}: deliveries/s spread over {} nodes ÷ all on node 1 (for information): {:.2}×",
                    self.nodes,
                    s / o
                ));
            }
        }
        out.push(
            "Every reader received every update in every run (checked: a missing delivery fails \
             the bench); repeated deliveries and out-of-order relays are in the table."
                .to_owned(),
        );
        out
    }
}

/// What one reader received: when each of the writer's updates first arrived (index = update
/// number − 1), and what did not fit exactly-once, in-order delivery.
struct Received {
    at: Vec<Option<Instant>>,
    /// Updates received at least once.
    count: usize,
    /// The first update not received yet, in order.
    next: usize,
    /// Updates received again.
    repeated: u64,
    /// Relays that began past `next`: an update arrived before an earlier one.
    out_of_order: u64,
    /// Relays holding updates of the writer (merged ones count once).
    relays: u64,
    error: Option<anyhow::Error>,
}

impl Received {
    fn new(n: usize) -> Self {
        Self {
            at: vec![None; n],
            count: 0,
            next: 0,
            repeated: 0,
            out_of_order: 0,
            relays: 0,
            error: None,
        }
    }

    fn record(&mut self, update: &[u8], now: Instant) -> Result<()> {
        let ranges = client::clock_ranges(update, WRITER)?;
        if !ranges.is_empty() {
            self.relays += 1;
        }
        for range in ranges {
            if range.start as usize > self.next {
                self.out_of_order += 1;
            }
            for clock in range {
                let slot = self
                    .at
                    .get_mut(clock as usize)
                    .with_context(|| format!("a relay holds update {}, never sent", clock + 1))?;
                match slot {
                    Some(_) => self.repeated += 1,
                    None => {
                        *slot = Some(now);
                        self.count += 1;
                    }
                }
            }
        }
        while self.at.get(self.next).is_some_and(Option::is_some) {
            self.next += 1;
        }
        Ok(())
    }
}

/// A reader: records the writer's updates in every frame until it has all `n`, the connection
/// fails or `deadline` passes.
fn spawn_reader(mut ws: Ws, codec: Codec, n: usize, deadline: Deadline) -> JoinHandle<Received> {
    tokio::spawn(async move {
        let mut out = Received::new(n);
        while out.count < n {
            let msg = match tokio::time::timeout_at(deadline.get(), ws.next()).await {
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
            let recorded = codec.decode(&msg).and_then(|events| {
                events.into_iter().try_for_each(|ev| match ev {
                    Event::Update(u) => out.record(&u, now),
                    _ => Ok(()),
                })
            });
            if let Err(e) = recorded {
                out.error = Some(e);
                break;
            }
        }
        out
    })
}

/// Fails unless every reader received every update, saying where deliveries are missing and
/// how the entries travelled.
fn check_complete(readers: &[(usize, Received)], n: usize, relayed: &Counters) -> Result<()> {
    let missing: usize = readers.iter().map(|(_, r)| n - r.count).sum();
    if missing == 0 {
        return Ok(());
    }
    let nodes = readers.iter().map(|(k, _)| k + 1).max().unwrap_or(1);
    let mut detail = String::new();
    for node in 1..=nodes {
        let on: Vec<&Received> = readers.iter().filter(|(k, _)| k + 1 == node).map(|(_, r)| r).collect();
        let incomplete: Vec<&&Received> = on.iter().filter(|r| r.count < n).collect();
        if incomplete.is_empty() {
            continue;
        }
        let lost: usize = incomplete.iter().map(|r| n - r.count).sum();
        let first = incomplete.iter().map(|r| r.next + 1).min().unwrap_or(0);
        detail.push_str(&format!(
            "\n  node {node}: {} of {} readers incomplete, {lost} deliveries missing, the first \
             missing update is #{first}",
            incomplete.len(),
            on.len()
        ));
    }
    let why = readers
        .iter()
        .find_map(|(_, r)| r.error.as_ref())
        .map_or_else(
            || format!("timed out {:?} after the last send", super::fanout::DRAIN_TIMEOUT),
            |e| format!("{e:#}"),
        );
    bail!(
        "lost updates: {missing} of {} deliveries missing ({why}){detail}\n  cluster counters \
         during the case, summed over the nodes: {}",
        n * readers.len(),
        relayed.describe()
    )
}

/// Latencies of a set of readers, sorted, and their deliveries/s.
struct Latencies {
    sorted_ms: Vec<f64>,
    deliveries_per_s: f64,
}

impl Latencies {
    /// Of readers known to be complete ([`check_complete`]).
    fn of<'a>(readers: impl Iterator<Item = &'a Received>, sent: &Sent) -> Self {
        let mut sorted_ms = Vec::new();
        let mut last = sent.first;
        for r in readers {
            for (i, at) in r.at.iter().enumerate() {
                if let Some(at) = at {
                    last = last.max(*at);
                    sorted_ms.push(at.saturating_duration_since(sent.at[i]).as_secs_f64() * 1e3);
                }
            }
        }
        sorted_ms.sort_by(f64::total_cmp);
        let span = last.duration_since(sent.first).as_secs_f64();
        Self {
            deliveries_per_s: sorted_ms.len() as f64 / span,
            sorted_ms,
        }
    }

    fn quantile(&self, p: f64) -> f64 {
        quantile(&self.sorted_ms, p)
    }
}

/// [`COUNTERS`] summed over the nodes, or their increase over a case.
#[derive(Debug)]
struct Counters(Vec<(&'static str, f64)>);

impl Counters {
    async fn read(nodes: &[RunningServer]) -> Result<Self> {
        let mut sums = COUNTERS.map(|c| (c, 0.0)).to_vec();
        for (k, node) in nodes.iter().enumerate() {
            let text = metrics(node.endpoint.addr)
                .await
                .with_context(|| format!("node {}", k + 1))?;
            for (name, sum) in &mut sums {
                *sum += metric(&text, name).unwrap_or(0.0);
            }
        }
        Ok(Self(sums))
    }

    fn minus(&self, before: &Self) -> Self {
        Self(
            self.0
                .iter()
                .map(|(name, v)| (*name, v - before.get(name)))
                .collect(),
        )
    }

    fn get(&self, name: &str) -> f64 {
        self.0
            .iter()
            .find(|(n, _)| *n == name)
            .map_or(0.0, |(_, v)| *v)
    }

    fn describe(&self) -> String {
        self.0
            .iter()
            .map(|(n, v)| format!("{n} +{v}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// A node's `/metrics` text.
async fn metrics(addr: SocketAddr) -> Result<String> {
    let read = async {
        let mut conn = HttpConn::connect(addr).await?;
        let head = conn.get("/metrics", "text/plain").await?;
        let (body, _) = conn.body(&head).await?;
        if head.status != 200 {
            bail!("GET /metrics answered {}", head.status);
        }
        Ok(String::from_utf8_lossy(&body).into_owned())
    };
    tokio::time::timeout(METRICS_TIMEOUT, read)
        .await
        .with_context(|| format!("GET http://{addr}/metrics took over {METRICS_TIMEOUT:?}"))?
}

/// The value of `name` in Prometheus text, summed over its label sets; `None` if absent.
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            if !(rest.starts_with(' ') || rest.starts_with('{')) {
                return None;
            }
            rest.split_whitespace().last()?.parse::<f64>().ok()
        })
        .reduce(|a, b| a + b)
}

/// Waits until the node at `addr` reports `lattice_cluster_redis_up 1`: measuring a node
/// that fell back to polling PostgreSQL would measure the fallback.
async fn wait_redis_up(addr: SocketAddr) -> Result<()> {
    let deadline = tokio::time::Instant::now() + CLUSTER_UP_TIMEOUT;
    loop {
        let last = match metrics(addr).await {
            Ok(text) => match metric(&text, "lattice_cluster_redis_up") {
                Some(v) if v >= 1.0 => return Ok(()),
                Some(v) => format!("lattice_cluster_redis_up {v}"),
                None => "no lattice_cluster_redis_up in /metrics".to_owned(),
            },
            Err(e) => format!("{e:#}"),
        };
        if tokio::time::Instant::now() >= deadline {
            bail!("Redis not up within {CLUSTER_UP_TIMEOUT:?} ({last})");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_summed_over_labels() {
        let text = "# TYPE a counter\na 1\na_total 5\nb{x=\"1\"} 2\nb{x=\"2\"} 3.5\n";
        assert_eq!(metric(text, "a"), Some(1.0));
        assert_eq!(metric(text, "b"), Some(5.5));
        assert_eq!(metric(text, "c"), None);
    }

    #[test]
    fn receipts_show_repeats_and_gaps() {
        let ups = client::keystrokes(4, WRITER);
        let now = Instant::now();
        let mut r = Received::new(4);
        r.record(&ups[0], now).expect("record");
        r.record(&ups[2], now).expect("record");
        assert_eq!((r.count, r.next, r.out_of_order), (2, 1, 1));
        r.record(&ups[1], now).expect("record");
        r.record(&ups[1], now).expect("record");
        assert_eq!((r.count, r.next, r.repeated), (3, 3, 1));
        let merged = yrs::merge_updates_v1(&ups[2..4]).expect("merge");
        r.record(&merged, now).expect("record");
        assert_eq!((r.count, r.next, r.repeated), (4, 4, 2));
    }
}
