//! Server configuration: one struct of named, documented fields. The CLI (`lattice serve`) maps
//! flags and `LATTICE_*` environment variables onto it; tests build it directly.

pub use crate::cluster::ClusterConfig;
use std::time::Duration;

pub use lattice_engine::sync::RelayOrder;

pub use crate::auth::{AuthConfig, AuthMode};
use crate::store::StoreConfig;

/// Everything `run` needs to know.
#[derive(Clone, Debug)]
pub struct Config {
    /// `sqlite://path.db` (created if missing) or `postgres://…`.
    pub database_url: String,
    pub limits: Limits,
    pub heartbeat: Heartbeat,
    pub rooms: RoomSettings,
    pub streams: Streams,
    pub store: StoreConfig,
    /// Who may do what. The default is [`AuthMode::Disabled`] (library and test use);
    /// `lattice serve` always requires tokens unless given `--no-auth`.
    pub auth: AuthConfig,
    /// How long a graceful shutdown may take before remaining connections are dropped.
    pub shutdown_deadline: Duration,
    /// The demo's web build (`cargo xtask build-web` writes it to `target/web/demo`), served at
    /// `/` and `/demo/…`. `None` serves a page that says how to build it.
    pub web_dir: Option<std::path::PathBuf>,
    /// Join a cluster of nodes on the same PostgreSQL database, fanning out through Redis
    /// (docs/cluster.md). `None`: a single server.
    pub cluster: Option<ClusterConfig>,
    /// Where the gRPC service (docs/grpc.md) listens, on a port of its own. `None`: no gRPC.
    pub grpc_bind: Option<std::net::SocketAddr>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            database_url: "sqlite://lattice.db".into(),
            limits: Limits::default(),
            heartbeat: Heartbeat::default(),
            rooms: RoomSettings::default(),
            streams: Streams::default(),
            store: StoreConfig::default(),
            auth: AuthConfig::default(),
            shutdown_deadline: Duration::from_secs(10),
            web_dir: None,
            cluster: None,
            grpc_bind: None,
        }
    }
}

/// Limits that protect the server from any one peer. Every queue is bounded by one of these.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Largest WebSocket frame accepted, checked before decoding. Larger frames close the
    /// connection with 1009.
    pub max_frame_bytes: usize,
    /// Documents one connection may subscribe to at once.
    pub max_docs_per_connection: usize,
    /// Concurrent WebSocket connections; further upgrades get HTTP 503.
    pub max_connections: usize,
    /// Sustained messages per second per connection (token bucket).
    pub messages_per_second: u32,
    /// Messages a connection may send in a burst above the sustained rate.
    pub message_burst: u32,
    /// Sustained bytes per second per connection (token bucket).
    pub bytes_per_second: u32,
    /// Bytes a connection may send in a burst; at least `max_frame_bytes`.
    pub byte_burst: u32,
    /// Frames queued for one connection before it counts as a slow consumer and is closed.
    pub outbox_frames: usize,
    /// Bytes queued for one connection before it counts as a slow consumer and is closed (with
    /// `outbox_frames`, whichever comes first). One frame always fits, however large.
    pub outbox_bytes: usize,
    /// Commands queued for one room; senders wait (backpressure), nothing is dropped.
    pub room_inbox: usize,
    /// Time a new connection has to send `hello` (and so to authenticate); closed with 4002
    /// after it.
    pub hello_timeout: Duration,
    /// Largest first message (the `hello`, token included) of a connection that has not
    /// authenticated yet, enforced on the bytes as they arrive (the WebSocket layer reads no
    /// more); a larger one closes it with 1009.
    pub max_hello_bytes: usize,
    /// WebSocket connections that have not authenticated yet, at once (`/v1/sync` before its
    /// `hello`, and `/yjs` refusals being sent). Past it, upgrades get HTTP 503. Counted apart
    /// from `max_connections`, so peers without a token never take authenticated users' slots.
    pub max_unauthenticated: usize,
    /// Time a client has to send an HTTP request's headers; an idle keep-alive connection is
    /// closed after it too.
    pub header_read_timeout: Duration,
    /// TCP connections in their HTTP phase (before any WebSocket upgrade) at once; more are
    /// closed as soon as they are accepted.
    pub max_http_connections: usize,
    /// Full-state computations: bytes of `sync` answers (native `subscribe`, y-websocket sync
    /// step 1) one connection may cause per second, sustained. A connection over it waits
    /// before its next subscription is computed; one computation at a time per connection.
    pub sync_bytes_per_second: u64,
    /// Bytes of `sync` answers a connection may cause in a burst (its first subscriptions).
    pub sync_byte_burst: u64,
    /// HTTP reads that rebuild a document (`GET /v1/docs/{doc}`, the admin history, content,
    /// diff and export endpoints, restore) running at once: checkpoint, replay and rendering,
    /// on the blocking pool. Further reads wait for a slot. Default: the number of CPUs.
    pub max_concurrent_rebuilds: usize,
    /// How long a read waits for a rebuild slot before it is answered 503 `busy` with
    /// `Retry-After`.
    pub rebuild_wait: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_frame_bytes: lattice_engine::protocol::DEFAULT_MAX_FRAME_BYTES,
            max_docs_per_connection: 256,
            max_connections: 20_000,
            messages_per_second: 500,
            message_burst: 2_000,
            bytes_per_second: 4 * 1024 * 1024,
            byte_burst: 16 * 1024 * 1024,
            outbox_frames: 4_096,
            outbox_bytes: 8 * 1024 * 1024,
            room_inbox: 1_024,
            hello_timeout: Duration::from_secs(5),
            max_hello_bytes: 64 * 1024,
            max_unauthenticated: 1_024,
            header_read_timeout: Duration::from_secs(10),
            max_http_connections: 16_384,
            sync_bytes_per_second: 8 * 1024 * 1024,
            sync_byte_burst: 64 * 1024 * 1024,
            max_concurrent_rebuilds: std::thread::available_parallelism()
                .map_or(1, std::num::NonZeroUsize::get),
            rebuild_wait: Duration::from_secs(5),
        }
    }
}

/// Liveness: application pings from clients, WebSocket pings from the server, and a timeout.
#[derive(Clone, Debug)]
pub struct Heartbeat {
    /// How often the server sends a WebSocket ping (keeps proxies and NATs open).
    pub ping_interval: Duration,
    /// A connection that sends nothing (no frame, ping or pong) for this long is closed with 4009.
    pub idle_timeout: Duration,
}

impl Default for Heartbeat {
    fn default() -> Self {
        Self {
            ping_interval: Duration::from_secs(15),
            idle_timeout: Duration::from_secs(45),
        }
    }
}

/// The HTTP transports: Server-Sent Events and long polling (docs/http-api.md).
#[derive(Clone, Debug)]
pub struct Streams {
    /// An SSE stream ends (with a `close` event, reason `lifetime`) after this long, so that
    /// proxies do not hold it forever; the client resumes with `Last-Event-ID`.
    pub sse_lifetime: Duration,
    /// An SSE comment is sent when the stream has been quiet this long.
    pub keep_alive: Duration,
    /// The longest a long poll waits (`wait_ms` is capped to it; its default).
    pub max_poll_wait: Duration,
    /// Log entries one long-poll answer or one replay page carries at most.
    pub max_entries_per_read: u32,
    /// `Idempotency-Key`s of HTTP writes remembered (the oldest are forgotten first).
    pub idempotency_keys: usize,
    /// How long an `Idempotency-Key` is remembered.
    pub idempotency_ttl: Duration,
}

impl Default for Streams {
    fn default() -> Self {
        Self {
            sse_lifetime: Duration::from_secs(300),
            keep_alive: Duration::from_secs(15),
            max_poll_wait: Duration::from_secs(25),
            max_entries_per_read: 1_000,
            idempotency_keys: 100_000,
            idempotency_ttl: Duration::from_secs(24 * 3600),
        }
    }
}

/// Room behaviour.
#[derive(Clone, Debug)]
pub struct RoomSettings {
    /// A room with no subscribers is unloaded after this long.
    pub idle_ttl: Duration,
    /// Presence entries not renewed for this long expire.
    pub presence_ttl: Duration,
    /// `typing` flags not renewed for this long are cleared.
    pub typing_ttl: Duration,
    /// Largest number of deltas one room commits in one batch.
    pub max_commit_batch: usize,
    /// Consecutive deltas of one sender released by one commit are relayed merged, up to this
    /// many Yjs bytes per frame.
    pub max_relay_bytes: usize,
    /// When a delta is relayed: once applied to the subscribers of its sender's principal
    /// (the default), or only once committed (`--relay-after-commit`). Acks always wait for
    /// the commit (docs/protocol.md, "Relay and acknowledgement").
    pub relay: RelayOrder,
}

impl Default for RoomSettings {
    fn default() -> Self {
        Self {
            idle_ttl: Duration::from_secs(30),
            presence_ttl: Duration::from_secs(30),
            typing_ttl: Duration::from_secs(5),
            max_commit_batch: 1_024,
            max_relay_bytes: 256 * 1024,
            relay: RelayOrder::AfterApply,
        }
    }
}
