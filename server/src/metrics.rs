//! Prometheus metrics, kept in atomics and rendered as text at `/metrics`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Latency buckets, in seconds.
const BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];

/// A cumulative histogram.
#[derive(Debug, Default)]
pub struct Histogram {
    counts: [AtomicU64; 14],
    sum_micros: AtomicU64,
    total: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, seconds: f64) {
        let idx = BUCKETS
            .iter()
            .position(|b| seconds <= *b)
            .unwrap_or(BUCKETS.len());
        self.counts[idx].fetch_add(1, Relaxed);
        self.total.fetch_add(1, Relaxed);
        self.sum_micros.fetch_add((seconds * 1e6) as u64, Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (i, bound) in BUCKETS.iter().enumerate() {
            cumulative += self.counts[i].load(Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        let total = self.total.load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {total}");
        let sum = self.sum_micros.load(Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {total}");
    }
}

/// The gRPC methods, for `lattice_grpc_requests_total{method=…}`.
pub const GRPC_METHODS: [&str; 4] = ["ApplyUpdate", "GetDocument", "Subscribe", "ListDocuments"];

/// gRPC status codes by number, for `lattice_grpc_requests_total{code=…}`.
const GRPC_CODES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// Why connections were closed, for `lattice_closes_total{reason=…}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseKind {
    Normal,
    Shutdown,
    SlowConsumer,
    IdleTimeout,
    RateLimited,
    FrameTooLarge,
    Protocol,
    DocumentUnavailable,
    Auth,
}

impl CloseKind {
    const ALL: [CloseKind; 9] = [
        CloseKind::Normal,
        CloseKind::Shutdown,
        CloseKind::SlowConsumer,
        CloseKind::IdleTimeout,
        CloseKind::RateLimited,
        CloseKind::FrameTooLarge,
        CloseKind::Protocol,
        CloseKind::DocumentUnavailable,
        CloseKind::Auth,
    ];

    fn label(self) -> &'static str {
        match self {
            CloseKind::Normal => "normal",
            CloseKind::Shutdown => "shutdown",
            CloseKind::SlowConsumer => "slow_consumer",
            CloseKind::IdleTimeout => "idle_timeout",
            CloseKind::RateLimited => "rate_limited",
            CloseKind::FrameTooLarge => "frame_too_large",
            CloseKind::Protocol => "protocol",
            CloseKind::DocumentUnavailable => "store_failure",
            CloseKind::Auth => "auth",
        }
    }
}

/// Every metric the server exports.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Authenticated WebSocket connections.
    pub connections: AtomicU64,
    /// WebSocket connections that have not authenticated yet.
    pub unauthenticated_connections: AtomicU64,
    /// TCP connections closed at once because too many were in their HTTP phase.
    pub http_connections_refused: AtomicU64,
    /// Open HTTP readers (SSE streams and waiting long polls); they hold connection slots.
    pub http_readers: AtomicU64,
    /// HTTP writes committed (`POST /v1/updates`), and those answered from the idempotency
    /// cache.
    pub http_writes: AtomicU64,
    pub http_writes_replayed: AtomicU64,
    /// gRPC calls by method ([`GRPC_METHODS`]) and status code (0 to 16); a `Subscribe`
    /// counts how its opening was answered (its end is a status on the stream).
    pub grpc_requests: [[AtomicU64; GRPC_CODES.len()]; GRPC_METHODS.len()],
    /// Times a connection waited for its budget of full-state syncs.
    pub sync_budget_waits: AtomicU64,
    pub live_documents: AtomicU64,
    pub deltas_in: AtomicU64,
    pub deltas_out: AtomicU64,
    pub deltas_refused: AtomicU64,
    pub commit_batches: AtomicU64,
    /// HTTP reads holding a rebuild slot now, the most there ever were at once, and the reads
    /// answered 503 because no slot freed in time.
    pub rebuilds_in_flight: AtomicU64,
    pub rebuilds_in_flight_peak: AtomicU64,
    pub rebuilds_busy: AtomicU64,
    pub commit_seconds: Histogram,
    pub commit_batch_size: Histogram,
    pub fanout_seconds: Histogram,
    /// Cross-node fan-out (`cluster/`); all zero on a single node.
    pub cluster: ClusterMetrics,
    closes: [AtomicU64; 9],
}

/// What a cluster node counts about its fan-out through Redis and its catch-up from the
/// database (`cluster/`, docs/cluster.md).
#[derive(Debug, Default)]
pub struct ClusterMetrics {
    /// 1 while this node's Redis connections work, 0 while it falls back to polling.
    pub redis_up: AtomicU64,
    /// Entries of other nodes received through a stream and applied.
    pub stream_entries: AtomicU64,
    /// Reads of missing entries from the database (a gap, a trimmed stream, a reconnect, a
    /// position check, or polling while Redis is down).
    pub catchup_reads: AtomicU64,
    /// Entries applied from those reads.
    pub catchup_entries: AtomicU64,
    /// Committed entries that could not be added to their stream (Redis down or too slow);
    /// other nodes read them from the database.
    pub publish_failures: AtomicU64,
    /// Entries not added to their stream because a later seq was there first (another node
    /// committed after it and published before it); readers fill the gap from the database.
    pub publish_out_of_order: AtomicU64,
    /// Redis connection failures (each followed by a reconnect).
    pub redis_errors: AtomicU64,
    /// Presence messages received from other nodes.
    pub presence_in: AtomicU64,
    /// Stream entries a room could not take at once (its inbox full); it reads them from the
    /// database instead.
    pub room_inbox_full: AtomicU64,
}

impl Metrics {
    pub fn closed(&self, kind: CloseKind) {
        if let Some(i) = CloseKind::ALL.iter().position(|k| *k == kind) {
            self.closes[i].fetch_add(1, Relaxed);
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let gauge = |out: &mut String, name: &str, help: &str, v: u64, kind: &str| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
            );
        };
        gauge(
            &mut out,
            "lattice_connections",
            "Open WebSocket connections.",
            self.connections.load(Relaxed),
            "gauge",
        );
        gauge(
            &mut out,
            "lattice_unauthenticated_connections",
            "WebSocket connections that have not authenticated yet.",
            self.unauthenticated_connections.load(Relaxed),
            "gauge",
        );
        gauge(
            &mut out,
            "lattice_http_readers",
            "Open HTTP readers: SSE streams and waiting long polls.",
            self.http_readers.load(Relaxed),
            "gauge",
        );
        gauge(
            &mut out,
            "lattice_http_writes_total",
            "HTTP writes committed.",
            self.http_writes.load(Relaxed),
            "counter",
        );
        gauge(
            &mut out,
            "lattice_http_writes_replayed_total",
            "HTTP writes answered from the idempotency cache instead of applied again.",
            self.http_writes_replayed.load(Relaxed),
            "counter",
        );
        gauge(
            &mut out,
            "lattice_http_connections_refused_total",
            "TCP connections closed at once: too many were in their HTTP phase.",
            self.http_connections_refused.load(Relaxed),
            "counter",
        );
        gauge(
            &mut out,
            "lattice_sync_budget_waits_total",
            "Subscriptions that waited for their connection's budget of full-state syncs.",
            self.sync_budget_waits.load(Relaxed),
            "counter",
        );
        gauge(
            &mut out,
            "lattice_live_documents",
            "Documents loaded in rooms.",
            self.live_documents.load(Relaxed),
            "gauge",
        );
        gauge(
            &mut out,
            "lattice_deltas_in_total",
            "Deltas received from clients.",
            self.deltas_in.load(Relaxed),
            "counter",
        );
        gauge(
            &mut out,
            "lattice_deltas_out_total",
            "Delta frames delivered to subscribers (one frame may merge several deltas of one sender).",
            self.deltas_out.load(Relaxed),
            "counter",
        );
        gauge(
            &mut out,
            "lattice_deltas_refused_total",
            "Deltas refused as invalid.",
            self.deltas_refused.load(Relaxed),
            "counter",
        );
        gauge(
            &mut out,
            "lattice_commit_batches_total",
            "Commit transactions.",
            self.commit_batches.load(Relaxed),
            "counter",
        );
        gauge(
            &mut out,
            "lattice_rebuilds_in_flight",
            "HTTP reads rebuilding a document now (bounded by max_concurrent_rebuilds).",
            self.rebuilds_in_flight.load(Relaxed),
            "gauge",
        );
        gauge(
            &mut out,
            "lattice_rebuilds_in_flight_peak",
            "The most HTTP reads that rebuilt a document at once since start.",
            self.rebuilds_in_flight_peak.load(Relaxed),
            "gauge",
        );
        gauge(
            &mut out,
            "lattice_rebuilds_busy_total",
            "HTTP reads answered 503 busy: no rebuild slot freed within rebuild_wait.",
            self.rebuilds_busy.load(Relaxed),
            "counter",
        );
        self.commit_seconds.render(
            &mut out,
            "lattice_commit_seconds",
            "Time to commit one batch.",
        );
        self.commit_batch_size.render(
            &mut out,
            "lattice_commit_batch_size",
            "Deltas per commit batch.",
        );
        self.fanout_seconds.render(
            &mut out,
            "lattice_fanout_seconds",
            "Time from commit to the last subscriber's outbox.",
        );
        let c = &self.cluster;
        for (name, help, v, kind) in [
            (
                "lattice_cluster_redis_up",
                "1 while this node's Redis connections work; 0 while it polls the database instead.",
                &c.redis_up,
                "gauge",
            ),
            (
                "lattice_cluster_stream_entries_total",
                "Entries of other nodes received through Redis and applied.",
                &c.stream_entries,
                "counter",
            ),
            (
                "lattice_cluster_catchup_reads_total",
                "Reads of missing entries from the database (gap, trimmed stream, reconnect, position check, polling).",
                &c.catchup_reads,
                "counter",
            ),
            (
                "lattice_cluster_catchup_entries_total",
                "Entries applied from catch-up reads.",
                &c.catchup_entries,
                "counter",
            ),
            (
                "lattice_cluster_publish_failures_total",
                "Committed entries not added to their stream (Redis unavailable or too slow); other nodes read them from the database.",
                &c.publish_failures,
                "counter",
            ),
            (
                "lattice_cluster_publish_out_of_order_total",
                "Committed entries not added to their stream because a later seq was there first.",
                &c.publish_out_of_order,
                "counter",
            ),
            (
                "lattice_cluster_redis_errors_total",
                "Redis connection failures.",
                &c.redis_errors,
                "counter",
            ),
            (
                "lattice_cluster_presence_in_total",
                "Presence messages received from other nodes.",
                &c.presence_in,
                "counter",
            ),
            (
                "lattice_cluster_room_inbox_full_total",
                "Stream entries a busy room left to its catch-up from the database.",
                &c.room_inbox_full,
                "counter",
            ),
        ] {
            gauge(&mut out, name, help, v.load(Relaxed), kind);
        }
        let _ = writeln!(
            out,
            "# HELP lattice_closes_total Connections closed, by reason.\n# TYPE lattice_closes_total counter"
        );
        for (i, kind) in CloseKind::ALL.iter().enumerate() {
            let _ = writeln!(
                out,
                "lattice_closes_total{{reason=\"{}\"}} {}",
                kind.label(),
                self.closes[i].load(Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP lattice_grpc_requests_total gRPC calls, by method and status code (codes never answered are left out).\n# TYPE lattice_grpc_requests_total counter"
        );
        for (method, codes) in GRPC_METHODS.iter().zip(&self.grpc_requests) {
            for (code, n) in GRPC_CODES.iter().zip(codes) {
                let n = n.load(Relaxed);
                if n > 0 {
                    let _ = writeln!(
                        out,
                        "lattice_grpc_requests_total{{method=\"{method}\",code=\"{code}\"}} {n}"
                    );
                }
            }
        }
        out
    }
}
