//! Clusters for end-to-end tests: one fresh PostgreSQL database, one `redis-server` of the
//! test's own on a free port, and N `lattice serve` child processes joined through both
//! (`--database-url postgres://… --redis-url redis://…`). Nodes can be SIGKILLed, paused
//! (SIGSTOP) and restarted; Redis can be stopped, started again on the same port, have its
//! clients killed and its streams trimmed; a [`TcpProxy`] can stand between the nodes and
//! PostgreSQL (to take the database away) or between a client and a node (to move the client to
//! another node, as a load balancer would).
//!
//! Like the Postgres tests, these never skip: without a `redis-server` they fail and say how to
//! get one.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lattice_engine::{DocId, ReplicaId};
use lattice_server::client::{Client, ClientOptions};
use lattice_server::store::{LogEntry, Store, StoreConfig};
use tokio::io::{AsyncBufReadExt, BufReader};

pub use crate::proxy::{TcpProxy, through};
pub use crate::seq_reader::{ReaderLog, SeqReader};
use crate::server_support::{ChildServer, WAIT, http_get, lattice_binary, metric};
use crate::store_support::{Kind, TestDb};

/// The environment variable naming the `redis-server` binary; without it, `redis-server` on
/// `PATH`. `cargo xtask test` installs one and sets it.
pub const REDIS_SERVER_VAR: &str = "LATTICE_TEST_REDIS_SERVER";

/// The environment variable with the nodes' `RUST_LOG` (default `warn`).
pub const CLUSTER_LOG_VAR: &str = "LATTICE_TEST_CLUSTER_LOG";

/// The `redis-server` binary, or a panic that says how to get one.
pub fn redis_server_binary() -> PathBuf {
    if let Ok(path) = std::env::var(REDIS_SERVER_VAR)
        && !path.is_empty()
    {
        let path = PathBuf::from(path);
        assert!(
            path.exists(),
            "{REDIS_SERVER_VAR}={} does not exist. `cargo xtask test` installs redis-server \
             and sets it; these tests never skip",
            path.display()
        );
        return path;
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("redis-server"))
            .find(|candidate| candidate.is_file())
    });
    on_path.unwrap_or_else(|| {
        panic!(
            "no redis-server: set {REDIS_SERVER_VAR} or put redis-server on PATH. \
             `cargo xtask test` installs it; the cluster tests need a real Redis and never skip"
        )
    })
}

/// A free TCP port on 127.0.0.1 (free when this returns; the caller binds it right away).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// Keeps every line `pipe` prints in `log`.
fn collect_lines<R>(pipe: R, log: Arc<Mutex<Vec<String>>>)
where
    R: tokio::io::AsyncRead + Send + Unpin + 'static,
{
    tokio::spawn(async move {
        let mut lines = BufReader::new(pipe).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            log.lock().expect("log").push(line);
        }
    });
}

/// A `redis-server` child on a fixed local port, without persistence (`--save ''
/// --appendonly no`): stopping it loses every stream, as a Redis restart without persistence
/// does. Killed on drop.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    binary: PathBuf,
    child: Option<tokio::process::Child>,
    /// What the server printed, for failure messages.
    log: Arc<Mutex<Vec<String>>>,
}

impl RedisServer {
    /// Starts `redis-server` on a free port and waits until it answers `PING`.
    pub async fn start() -> RedisServer {
        let mut redis = RedisServer {
            port: free_port(),
            binary: redis_server_binary(),
            child: None,
            log: Arc::default(),
        };
        redis.spawn().await;
        redis
    }

    async fn spawn(&mut self) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let mut child = tokio::process::Command::new(&self.binary)
                .args(["--port", &self.port.to_string()])
                .args(["--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .unwrap_or_else(|e| panic!("spawn {}: {e}", self.binary.display()));
            if let Some(out) = child.stdout.take() {
                collect_lines(out, self.log.clone());
            }
            if let Some(err) = child.stderr.take() {
                collect_lines(err, self.log.clone());
            }
            // Up when it answers; if it exited (the port was taken meanwhile), try again.
            loop {
                if self.ping().await {
                    self.child = Some(child);
                    return;
                }
                if let Ok(Some(status)) = child.try_wait() {
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "redis-server exited with {status}: {}",
                        self.log().join("\n")
                    );
                    break;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "redis-server did not answer PING on port {}: {}",
                    self.port,
                    self.log().join("\n")
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }

    async fn ping(&self) -> bool {
        let Ok(client) = redis::Client::open(self.url()) else {
            return false;
        };
        let Ok(Ok(mut con)) = tokio::time::timeout(
            Duration::from_secs(1),
            client.get_multiplexed_async_connection(),
        )
        .await
        else {
            return false;
        };
        redis::cmd("PING")
            .query_async::<String>(&mut con)
            .await
            .is_ok_and(|p| p == "PONG")
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// What `redis-server` printed so far.
    pub fn log(&self) -> Vec<String> {
        self.log.lock().expect("redis log").clone()
    }

    /// SIGKILLs the server: every connection drops, and with no persistence every stream is
    /// gone.
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
    }

    /// Starts a fresh, empty server on the same port (after [`RedisServer::stop`]).
    pub async fn start_again(&mut self) {
        assert!(self.child.is_none(), "redis-server is still running");
        self.spawn().await;
    }

    /// A new admin connection of the test's own.
    pub async fn connection(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .expect("redis url")
            .get_multiplexed_async_connection()
            .await
            .expect("connect to the test's redis-server")
    }

    /// `CLIENT KILL TYPE <kind> SKIPME yes` on a fresh connection: drops every client
    /// connection of that kind (`normal`: the nodes' command and stream-reading connections)
    /// but this one. Returns how many were killed.
    pub async fn client_kill(&self, kind: &str) -> u64 {
        let mut con = self.connection().await;
        redis::cmd("CLIENT")
            .arg("KILL")
            .arg("TYPE")
            .arg(kind)
            .arg("SKIPME")
            .arg("yes")
            .query_async::<u64>(&mut con)
            .await
            .expect("CLIENT KILL")
    }

    /// `CLIENT KILL TYPE normal SKIPME yes`.
    pub async fn client_kill_normal(&self) -> u64 {
        self.client_kill("normal").await
    }

    /// The stream of document `doc`: `lattice:{<doc>}:log`.
    pub fn stream_key(doc: &str) -> String {
        format!("lattice:{{{doc}}}:log")
    }

    /// `XTRIM lattice:{<doc>}:log MAXLEN <maxlen>` (exact); returns how many entries went.
    pub async fn xtrim(&self, doc: &str, maxlen: u64) -> u64 {
        let mut con = self.connection().await;
        redis::cmd("XTRIM")
            .arg(RedisServer::stream_key(doc))
            .arg("MAXLEN")
            .arg(maxlen)
            .query_async::<u64>(&mut con)
            .await
            .expect("XTRIM")
    }

    /// `XLEN` of the document's stream.
    pub async fn xlen(&self, doc: &str) -> u64 {
        let mut con = self.connection().await;
        redis::cmd("XLEN")
            .arg(RedisServer::stream_key(doc))
            .query_async::<u64>(&mut con)
            .await
            .expect("XLEN")
    }
}

/// How a cluster's nodes are started.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    pub nodes: usize,
    /// `--presence-ttl-secs`.
    pub presence_ttl_secs: u64,
    /// `--cluster-check-interval-ms`.
    pub check_interval_ms: u64,
    /// `--cluster-fallback-interval-ms`.
    pub fallback_interval_ms: u64,
    /// Reach PostgreSQL through a [`TcpProxy`] the test can take down ([`Cluster::database`]).
    pub database_proxy: bool,
    /// More `lattice serve` flags for every node.
    pub extra: Vec<String>,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            nodes: 3,
            presence_ttl_secs: 2,
            check_interval_ms: 500,
            fallback_interval_ms: 200,
            database_proxy: false,
            extra: Vec::new(),
        }
    }
}

/// One fresh PostgreSQL database, one Redis and N `lattice serve --no-auth` nodes on both.
#[derive(Debug)]
pub struct Cluster {
    pub db: TestDb,
    pub redis: RedisServer,
    /// The proxy between the nodes and PostgreSQL, with [`ClusterOptions::database_proxy`].
    pub database: Option<TcpProxy>,
    /// The database URL the nodes use (through the proxy, if any).
    node_database_url: String,
    options: ClusterOptions,
    /// `None` once killed.
    nodes: Vec<Option<ChildServer>>,
    /// Every node's output, kept after it was killed, for failure messages.
    dead_logs: Vec<Vec<String>>,
}

impl Cluster {
    /// Three nodes with the default options.
    pub async fn start() -> Cluster {
        Cluster::start_with(ClusterOptions::default()).await
    }

    pub async fn start_with(options: ClusterOptions) -> Cluster {
        let db = TestDb::new(Kind::Postgres).await;
        let redis = RedisServer::start().await;
        let (database, node_database_url) = if options.database_proxy {
            let (_, upstream) = through(&db.url, "127.0.0.1:1".parse().expect("addr"));
            let proxy = TcpProxy::start(upstream).await;
            let (url, _) = through(&db.url, proxy.addr);
            (Some(proxy), url)
        } else {
            (None, db.url.clone())
        };
        let mut cluster = Cluster {
            db,
            redis,
            database,
            node_database_url,
            options,
            nodes: Vec::new(),
            dead_logs: Vec::new(),
        };
        for _ in 0..cluster.options.nodes {
            let node = cluster.spawn_node().await;
            cluster.nodes.push(Some(node));
            cluster.dead_logs.push(Vec::new());
        }
        cluster
    }

    /// The flags every node gets (besides `--bind` and `--database-url`).
    pub fn node_args(&self) -> Vec<String> {
        let o = &self.options;
        let mut args: Vec<String> = [
            "--no-auth",
            "--redis-url",
            &self.redis.url(),
            "--presence-ttl-secs",
            &o.presence_ttl_secs.to_string(),
            "--cluster-check-interval-ms",
            &o.check_interval_ms.to_string(),
            "--cluster-fallback-interval-ms",
            &o.fallback_interval_ms.to_string(),
            // The tests' HTTP readers all come from 127.0.0.1, one principal without auth.
            "--messages-per-second",
            "100000",
            "--message-burst",
            "100000",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(o.extra.iter().cloned());
        args
    }

    async fn spawn_node(&self) -> ChildServer {
        let args = self.node_args();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let filter = std::env::var(CLUSTER_LOG_VAR).unwrap_or_else(|_| "warn".to_owned());
        ChildServer::spawn_binary(&lattice_binary(), &self.node_database_url, &args, &filter).await
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Node `i`; panics if it was killed.
    pub fn node(&self, i: usize) -> &ChildServer {
        self.nodes[i]
            .as_ref()
            .unwrap_or_else(|| panic!("node {i} was killed"))
    }

    pub fn node_mut(&mut self, i: usize) -> &mut ChildServer {
        self.nodes[i]
            .as_mut()
            .unwrap_or_else(|| panic!("node {i} was killed"))
    }

    pub fn is_alive(&self, i: usize) -> bool {
        self.nodes[i].is_some()
    }

    /// The nodes still running.
    pub fn alive(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.is_alive(i))
            .collect()
    }

    pub fn addr(&self, i: usize) -> SocketAddr {
        self.node(i).addr
    }

    /// `ws://…/v1/sync` of node `i`.
    pub fn ws_url(&self, i: usize) -> String {
        self.node(i).ws_url()
    }

    /// What node `i` printed after `cluster:` at startup (`fan-out through redis://…`).
    pub async fn cluster_line(&self, i: usize) -> String {
        self.node(i).printed("cluster:").await
    }

    /// SIGKILL of node `i`: no flush, no goodbye.
    pub async fn kill9(&mut self, i: usize) {
        let node = self.nodes[i].take().expect("node is running");
        self.dead_logs[i].extend(node.output());
        node.kill9().await;
    }

    /// SIGSTOP of node `i`: it stops dead, its sockets stay open.
    pub fn pause(&self, i: usize) {
        self.signal(i, "-STOP");
    }

    /// SIGCONT of a paused node.
    pub fn resume(&self, i: usize) {
        self.signal(i, "-CONT");
    }

    fn signal(&self, i: usize, signal: &str) {
        let pid = self.node(i).pid().to_string();
        let status = std::process::Command::new("kill")
            .args([signal, &pid])
            .status()
            .expect("kill");
        assert!(status.success(), "kill {signal} {pid}");
    }

    /// Starts node `i` again (after [`Cluster::kill9`]), on a new port.
    pub async fn restart(&mut self, i: usize) {
        assert!(self.nodes[i].is_none(), "node {i} is still running");
        let node = self.spawn_node().await;
        self.nodes[i] = Some(node);
    }

    /// Metric `name_and_labels` of node `i` (`None` when the node does not print it).
    pub async fn metric(&self, i: usize, name_and_labels: &str) -> Option<f64> {
        metric(self.addr(i), name_and_labels).await
    }

    /// Metric `name_and_labels` of node `i`; panics when the node does not print it.
    pub async fn metric_of(&self, i: usize, name_and_labels: &str) -> f64 {
        self.metric(i, name_and_labels)
            .await
            .unwrap_or_else(|| panic!("node {i} has no metric {name_and_labels}"))
    }

    /// Metric `name_and_labels` summed over the running nodes.
    pub async fn metric_sum(&self, name_and_labels: &str) -> f64 {
        let mut sum = 0.0;
        for i in self.alive() {
            sum += self.metric_of(i, name_and_labels).await;
        }
        sum
    }

    /// Waits until `pred` holds for metric `name` of node `i`; returns whether it did.
    pub async fn wait_metric(
        &self,
        i: usize,
        name: &str,
        within: Duration,
        pred: impl Fn(f64) -> bool,
    ) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if self.metric(i, name).await.is_some_and(&pred) {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `GET /readyz` of node `i`: status and body.
    pub async fn readyz(&self, i: usize) -> (u16, String) {
        let r = http_get(self.addr(i), "/readyz", None).await;
        (r.status, r.body)
    }

    /// Every node's output so far (stdout, then its log), labelled, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for (i, node) in self.nodes.iter().enumerate() {
            let lines = match node {
                Some(n) => n.output(),
                None => self.dead_logs[i].clone(),
            };
            for line in lines {
                out.push_str(&format!("[node {i}] {line}\n"));
            }
        }
        for line in self.redis.log() {
            out.push_str(&format!("[redis] {line}\n"));
        }
        out
    }

    /// A store on the cluster's database (directly, not through the proxy), for reading what
    /// is committed.
    pub async fn store(&self) -> Store {
        self.db.open(StoreConfig::default()).await
    }

    /// Kills every node and Redis, and drops the database.
    pub async fn shutdown(mut self) {
        for node in self.nodes.drain(..).flatten() {
            node.kill9().await;
        }
        self.redis.stop().await;
        if let Some(proxy) = &self.database {
            proxy.down();
        }
        self.db.cleanup().await;
    }
}

/// The whole stored log of `doc`, in order.
pub async fn whole_log(store: &Store, doc: &DocId) -> Vec<LogEntry> {
    let mut entries: Vec<LogEntry> = Vec::new();
    loop {
        let from = entries.last().map_or(1, |e| e.seq + 1);
        let page = store.read_log(doc, from, 1_000).await.expect("read log");
        if page.is_empty() {
            return entries;
        }
        entries.extend(page);
    }
}

/// A native client on `url` that reconnects quickly (backoff 50 ms to 1 s): nodes come and
/// go in these tests.
pub fn cluster_client(url: &str, replica: u32) -> Client {
    let mut options = ClientOptions::new(url, ReplicaId::new(replica).expect("non-zero replica"));
    options.backoff_max = Duration::from_secs(1);
    Client::start(options)
}
