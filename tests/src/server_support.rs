//! Servers and peers for end-to-end tests: real servers on `127.0.0.1:0` (in this process or
//! as a child process for SIGKILL tests), native clients, and raw WebSocket peers.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use lattice_engine::protocol::{ClientMsg, PROTOCOL_VERSION, ServerMsg};
use lattice_engine::{DocId, ReplicaId};
use lattice_server::client::{Client, ClientOptions};
use lattice_server::config::Config;

use crate::store_support::TestDb;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

/// Generous bound for anything the tests wait on; real waits are milliseconds.
pub const WAIT: Duration = Duration::from_secs(20);

/// A server running in this process.
#[derive(Debug)]
pub struct TestServer {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestServer {
    pub async fn start(config: Config) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            lattice_server::run(config, listener, async {
                let _ = stopped.await;
            })
            .await
            .expect("server run");
        });
        wait_healthy(addr).await;
        TestServer {
            addr,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/v1/sync", self.addr)
    }

    /// Graceful shutdown; waits until `run` returned.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(WAIT, task)
                .await
                .expect("server stops within the deadline")
                .expect("server task");
        }
    }
}

/// A test config on `db` with short timers.
pub fn config(db: &TestDb) -> Config {
    let mut c = Config {
        database_url: db.url.clone(),
        ..Config::default()
    };
    c.rooms.idle_ttl = Duration::from_secs(2);
    c.shutdown_deadline = Duration::from_secs(5);
    c
}

async fn wait_healthy(addr: SocketAddr) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "server did not come up"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The `lattice` binary of this build. Cargo does not rebuild another package's binary for
/// this crate's tests, so ask it to (a no-op when it is current), in this test's target dir.
pub fn lattice_binary() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let exe = std::env::current_exe().expect("current exe");
            // <target>/<profile>/deps/<test exe>
            let profile_dir = exe.parent().and_then(|d| d.parent()).expect("profile dir");
            let target_dir = profile_dir.parent().expect("target dir");
            let status = std::process::Command::new(env!("CARGO"))
                .args([
                    "build",
                    "--quiet",
                    "-p",
                    "lattice-server",
                    "--bin",
                    "lattice",
                ])
                .arg("--target-dir")
                .arg(target_dir)
                .status()
                .expect("cargo build");
            assert!(status.success(), "building the lattice binary failed");
            profile_dir.join("lattice")
        })
        .clone()
}

/// A server in a child process, for SIGKILL tests.
#[derive(Debug)]
pub struct ChildServer {
    pub addr: SocketAddr,
    pub child: tokio::process::Child,
}

impl ChildServer {
    pub async fn spawn(database_url: &str, extra: &[&str]) -> ChildServer {
        let mut child = tokio::process::Command::new(lattice_binary())
            .arg("serve")
            .args(["--bind", "127.0.0.1:0", "--database-url", database_url])
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn lattice");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let addr = tokio::time::timeout(WAIT, async {
            while let Some(line) = lines.next_line().await.expect("read stdout") {
                if let Some(rest) = line.split("listening on http://").nth(1) {
                    return rest.trim().parse::<SocketAddr>().expect("address");
                }
            }
            panic!("lattice exited before listening");
        })
        .await
        .expect("lattice starts");
        // Keep draining stdout so the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        wait_healthy(addr).await;
        ChildServer { addr, child }
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/v1/sync", self.addr)
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("running child")
    }

    /// SIGKILL: no flush, no goodbye.
    pub async fn kill9(mut self) {
        self.child.start_kill().expect("kill");
        let _ = self.child.wait().await;
    }

    /// SIGTERM and wait for a clean exit.
    pub async fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.pid().to_string();
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill -TERM");
        assert!(status.success());
        tokio::time::timeout(WAIT, self.child.wait())
            .await
            .expect("exits after SIGTERM")
            .expect("wait")
    }
}

pub fn doc(id: &str) -> DocId {
    DocId::new(id).expect("valid doc id")
}

/// A native client with a fixed replica id.
pub fn client(url: &str, replica: u32) -> Client {
    Client::start(ClientOptions::new(
        url,
        ReplicaId::new(replica).expect("non-zero replica"),
    ))
}

/// Waits until `client` holds `doc` synced with nothing pending.
pub async fn settled(client: &Client, doc: &DocId) {
    let ok = client
        .wait_until(WAIT, |s| s.is_synced(doc) && s.pending(doc) == 0)
        .await;
    assert!(ok, "client did not settle on {doc}");
}

/// A raw WebSocket peer that speaks frames directly, for bad-input tests.
pub struct RawPeer {
    pub ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
}

impl std::fmt::Debug for RawPeer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RawPeer")
    }
}

/// What a raw peer read.
#[derive(Debug)]
pub enum Read {
    Msg(ServerMsg),
    Closed(Option<u16>),
}

impl RawPeer {
    pub async fn connect(url: &str) -> RawPeer {
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("connect");
        RawPeer { ws }
    }

    /// Connects and completes the handshake.
    pub async fn hello(url: &str) -> RawPeer {
        let mut p = RawPeer::connect(url).await;
        let _ = p
            .send(&ClientMsg::Hello {
                protocol: PROTOCOL_VERSION,
                token: None,
                agent: None,
                replica: None,
            })
            .await;
        match p.read().await {
            Read::Msg(ServerMsg::Welcome { .. }) => p,
            other => panic!("expected welcome, got {other:?}"),
        }
    }

    /// Sends a message; `false` if the server already closed the connection (the reads that
    /// follow say how and why).
    pub async fn send(&mut self, msg: &ClientMsg) -> bool {
        self.send_bytes(msg.encode()).await
    }

    pub async fn send_bytes(&mut self, bytes: Vec<u8>) -> bool {
        self.ws.send(Message::Binary(bytes.into())).await.is_ok()
    }

    /// The next message or close, skipping pings.
    pub async fn read(&mut self) -> Read {
        tokio::time::timeout(WAIT, async {
            loop {
                match self.ws.next().await {
                    Some(Ok(Message::Binary(b))) => {
                        return Read::Msg(ServerMsg::decode(&b, usize::MAX).expect("server frame"));
                    }
                    Some(Ok(Message::Close(frame))) => {
                        return Read::Closed(frame.map(|f: CloseFrame| u16::from(f.code)));
                    }
                    Some(Ok(_)) => continue,
                    Some(Err(_)) | None => return Read::Closed(None),
                }
            }
        })
        .await
        .expect("server answers")
    }
}
