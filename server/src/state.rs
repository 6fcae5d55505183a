//! `ServerState`: what every part of a running server shares (configuration, store, rooms,
//! metrics, authentication, connection slots, the shutdown signal). Built once by `run`; the
//! routes, connections and rooms hold it in an `Arc`. It depends on the parts it holds, and
//! nothing it holds depends on `server`.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use lattice_engine::ReplicaId;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::auth::Auth;
use crate::cluster::{Cluster, ClusterError};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::rooms::{RoomEnv, Rooms};
use crate::store::Store;
use crate::transport::idempotency::Idempotency;
use crate::transport::rate::HttpRate;
use crate::webhooks::Webhooks;

/// Shared by every task of one server.
#[derive(Debug)]
pub(crate) struct ServerState {
    pub config: Config,
    pub store: Store,
    pub rooms: Rooms,
    pub metrics: Arc<Metrics>,
    pub auth: Auth,
    /// Slots of authenticated WebSocket connections (`Limits::max_connections`).
    pub connections: Arc<Semaphore>,
    /// Slots of WebSocket connections that have not authenticated yet
    /// (`Limits::max_unauthenticated`).
    pub unauthenticated: Arc<Semaphore>,
    /// Slots for HTTP reads that rebuild a document (`Limits::max_concurrent_rebuilds`).
    pub rebuilds: Arc<Semaphore>,
    pub shutdown: CancellationToken,
    /// HTTP writes' answers by `Idempotency-Key`.
    pub idempotency: Idempotency,
    /// The HTTP transports' rate limits, per principal.
    pub http_rate: HttpRate,
    pub next_peer: AtomicU64,
    /// The server's own replica id: the Yjs client id of its documents, and the replica of
    /// changes it makes itself.
    pub replica: ReplicaId,
    /// The webhook service: admin operations, and its former and deliverer tasks.
    pub webhooks: Webhooks,
}

impl ServerState {
    /// The state of a server that has opened `store` and serves `config` on `listening`.
    pub(crate) fn new(
        config: Config,
        store: Store,
        listening: Option<std::net::SocketAddr>,
    ) -> Result<ServerState, ClusterError> {
        let metrics = Arc::<Metrics>::default();
        let shutdown = CancellationToken::new();
        let cluster = match &config.cluster {
            Some(c) => Some(Cluster::start(
                c.clone(),
                store.clone(),
                metrics.clone(),
                shutdown.clone(),
            )?),
            None => None,
        };
        let replica = random_replica();
        let idempotency = Idempotency::new(
            config.streams.idempotency_keys,
            config.streams.idempotency_ttl,
        );
        let http_rate = HttpRate::new(&config.limits);
        let webhooks = Webhooks::start(
            store.clone(),
            config.webhooks.clone(),
            metrics.clone(),
            listening,
            shutdown.clone(),
        );
        let rooms = Rooms::new(RoomEnv {
            settings: config.rooms.clone(),
            limits: config.limits.clone(),
            store: store.clone(),
            metrics: metrics.clone(),
            replica,
            shutdown: shutdown.clone(),
            cluster,
        });
        Ok(ServerState {
            connections: Arc::new(Semaphore::new(config.limits.max_connections)),
            unauthenticated: Arc::new(Semaphore::new(config.limits.max_unauthenticated)),
            rebuilds: Arc::new(Semaphore::new(config.limits.max_concurrent_rebuilds.max(1))),
            auth: Auth::new(&config.auth),
            config,
            store,
            rooms,
            metrics,
            shutdown,
            idempotency,
            http_rate,
            next_peer: AtomicU64::new(1),
            replica,
            webhooks,
        })
    }
}

/// A random replica id for this server process, from the OS's randomness via `RandomState`.
fn random_replica() -> ReplicaId {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    ReplicaId::from_random(h.finish() as u32)
}
