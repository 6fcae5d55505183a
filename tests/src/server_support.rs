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
    BUILT.get_or_init(|| build_lattice(false)).clone()
}

/// The `lattice` binary of this build in the release profile, for the tests whose subject
/// depends on it (how deep a recursion overflows the stack depends on frame sizes). Built here
/// if needed; `cargo xtask test` builds it before the tests run.
pub fn lattice_release_binary() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT.get_or_init(|| build_lattice(true)).clone()
}

fn build_lattice(release: bool) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // <target>/<profile>/deps/<test exe>
    let profile_dir = exe.parent().and_then(|d| d.parent()).expect("profile dir");
    let target_dir = profile_dir.parent().expect("target dir");
    let mut args = vec![
        "build",
        "--quiet",
        "-p",
        "lattice-server",
        "--bin",
        "lattice",
    ];
    if release {
        args.push("--release");
    }
    let status = std::process::Command::new(env!("CARGO"))
        .args(&args)
        .arg("--target-dir")
        .arg(target_dir)
        .status()
        .expect("cargo build");
    assert!(status.success(), "building the lattice binary failed");
    match release {
        true => target_dir.join("release").join("lattice"),
        false => profile_dir.join("lattice"),
    }
}

/// A server in a child process, for SIGKILL tests and for what `lattice serve` prints.
#[derive(Debug)]
pub struct ChildServer {
    pub addr: SocketAddr,
    pub child: tokio::process::Child,
    /// Every line the child printed on stdout so far.
    stdout: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    /// Every line the child printed on stderr (its log) so far; also echoed to this process's
    /// stderr, so a failing test shows the server's log.
    stderr: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl ChildServer {
    /// `lattice serve --no-auth …`: open access, as the sync tests assume.
    pub async fn spawn(database_url: &str, extra: &[&str]) -> ChildServer {
        let mut args = vec!["--no-auth"];
        args.extend_from_slice(extra);
        ChildServer::spawn_with_auth(database_url, &args).await
    }

    /// `lattice serve …` with only the given flags: without `--no-auth` or `--auth-secret`, the
    /// server generates a secret and prints an admin token and a demo URL.
    pub async fn spawn_with_auth(database_url: &str, extra: &[&str]) -> ChildServer {
        ChildServer::spawn_logging(database_url, extra, "warn").await
    }

    /// [`ChildServer::spawn_with_auth`] with `RUST_LOG` set to `log_filter`.
    pub async fn spawn_logging(
        database_url: &str,
        extra: &[&str],
        log_filter: &str,
    ) -> ChildServer {
        ChildServer::spawn_binary(&lattice_binary(), database_url, extra, log_filter).await
    }

    /// `binary serve …` with the given flags and `RUST_LOG` (see
    /// [`ChildServer::spawn_with_auth`]).
    pub async fn spawn_binary(
        binary: &std::path::Path,
        database_url: &str,
        extra: &[&str],
        log_filter: &str,
    ) -> ChildServer {
        let mut child = tokio::process::Command::new(binary)
            .arg("serve")
            .args(["--bind", "127.0.0.1:0", "--database-url", database_url])
            .args(extra)
            .env_remove("LATTICE_AUTH_SECRET")
            .env_remove("LATTICE_NO_AUTH")
            .env("RUST_LOG", log_filter)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn lattice");
        let logged = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut errors = BufReader::new(child.stderr.take().expect("stderr")).lines();
        let keep = logged.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = errors.next_line().await {
                eprintln!("{line}");
                keep.lock().expect("stderr").push(line);
            }
        });
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let printed = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let addr = tokio::time::timeout(WAIT, async {
            while let Some(line) = lines.next_line().await.expect("read stdout") {
                printed.lock().expect("stdout").push(line.clone());
                if let Some(rest) = line.split("listening on http://").nth(1) {
                    return rest.trim().parse::<SocketAddr>().expect("address");
                }
            }
            panic!("lattice exited before listening");
        })
        .await
        .expect("lattice starts");
        // Keep draining stdout so the child never blocks on a full pipe.
        let keep = printed.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                keep.lock().expect("stdout").push(line);
            }
        });
        wait_healthy(addr).await;
        ChildServer {
            addr,
            child,
            stdout: printed,
            stderr: logged,
        }
    }

    /// Every line printed so far, stdout and then stderr.
    pub fn output(&self) -> Vec<String> {
        let mut lines = self.stdout.lock().expect("stdout").clone();
        lines.extend(self.stderr.lock().expect("stderr").iter().cloned());
        lines
    }

    /// The rest of the first stdout line that starts (after indentation) with `label`, waiting
    /// for it to be printed.
    pub async fn printed(&self, label: &str) -> String {
        tokio::time::timeout(WAIT, async {
            loop {
                let found = self.stdout.lock().expect("stdout").iter().find_map(|l| {
                    l.trim_start()
                        .strip_prefix(label)
                        .map(|r| r.trim().to_string())
                });
                if let Some(rest) = found {
                    return rest;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("lattice never printed {label:?}"))
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/v1/sync", self.addr)
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("running child")
    }

    /// Whether the process is still running (it has not exited, crashed or aborted).
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
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

/// A native client that sends `token` in its hello.
pub fn client_with_token(url: &str, replica: u32, token: &str) -> Client {
    let mut options = ClientOptions::new(url, ReplicaId::new(replica).expect("non-zero replica"));
    options.token = Some(token.to_string());
    Client::start(options)
}

/// One HTTP response, as read off the wire.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    /// Header names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

/// `GET path_and_query` over a fresh HTTP/1.1 connection, with an optional bearer token.
pub async fn http_get(
    addr: SocketAddr,
    path_and_query: &str,
    bearer: Option<&str>,
) -> HttpResponse {
    http_request(addr, "GET", path_and_query, bearer, None).await
}

/// `POST path_and_query` with a JSON body (or none).
pub async fn http_post(
    addr: SocketAddr,
    path_and_query: &str,
    bearer: Option<&str>,
    json_body: Option<&str>,
) -> HttpResponse {
    http_request(addr, "POST", path_and_query, bearer, json_body).await
}

/// One request over a fresh HTTP/1.1 connection, with an optional bearer token and JSON body.
pub async fn http_request(
    addr: SocketAddr,
    method: &str,
    path_and_query: &str,
    bearer: Option<&str>,
    json_body: Option<&str>,
) -> HttpResponse {
    let auth = bearer.map(|t| format!("Bearer {t}"));
    let mut headers = Vec::new();
    if let Some(auth) = &auth {
        headers.push(("Authorization", auth.as_str()));
    }
    if json_body.is_some() {
        headers.push(("Content-Type", "application/json"));
    }
    let body = json_body.unwrap_or("").as_bytes();
    let answer = crate::http_support::send(addr, method, path_and_query, &headers, body).await;
    HttpResponse {
        status: answer.status,
        headers: answer.headers,
        body: String::from_utf8_lossy(&answer.body).into_owned(),
    }
}

/// Waits until `client` holds `doc` synced with nothing pending and no resync delta in flight
/// (`Session::is_settled`).
pub async fn settled(client: &Client, doc: &DocId) {
    let ok = client.wait_until(WAIT, |s| s.is_settled(doc)).await;
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

    /// Connects with an `Authorization: Bearer` header on the upgrade request.
    pub async fn connect_bearer(url: &str, token: &str) -> RawPeer {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut request = url.into_client_request().expect("request");
        request.headers_mut().insert(
            "authorization",
            format!("Bearer {token}").parse().expect("header value"),
        );
        let (ws, _) = tokio_tungstenite::connect_async(request)
            .await
            .expect("connect");
        RawPeer { ws }
    }

    /// Sends `hello` carrying `token`, and returns what the server answered first.
    pub async fn send_hello(&mut self, token: Option<&str>) -> Read {
        let _ = self
            .send(&ClientMsg::Hello {
                protocol: PROTOCOL_VERSION,
                token: token.map(str::to_string),
                agent: None,
                replica: None,
            })
            .await;
        self.read().await
    }

    /// Connects and completes the handshake.
    pub async fn hello(url: &str) -> RawPeer {
        RawPeer::hello_with_token(url, None).await
    }

    /// Connects and completes the handshake with `token` in the hello.
    pub async fn hello_with_token(url: &str, token: Option<&str>) -> RawPeer {
        let mut p = RawPeer::connect(url).await;
        match p.send_hello(token).await {
            Read::Msg(ServerMsg::Welcome { .. }) => p,
            other => panic!("expected welcome, got {other:?}"),
        }
    }

    /// The next message or close within `within`, skipping pings; `None` if nothing came.
    pub async fn read_within(&mut self, within: Duration) -> Option<Read> {
        tokio::time::timeout(within, self.read()).await.ok()
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

/// A raw y-websocket peer on `/yjs/{doc}`: sends lib0-encoded messages, one frame or many per
/// frame, and reads what the server sends.
pub struct YjsPeer {
    pub ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
}

impl std::fmt::Debug for YjsPeer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("YjsPeer")
    }
}

/// What a y-websocket peer read.
#[derive(Debug)]
pub enum YjsRead {
    Messages(Vec<lattice_engine::yws::YMessage>),
    Closed(Option<u16>),
}

impl YjsPeer {
    /// Connects to `/yjs/{doc}` on `addr`, with `token` as `?token=` if given.
    pub async fn connect(addr: SocketAddr, doc: &str, token: Option<&str>) -> YjsPeer {
        let url = match token {
            Some(t) => format!("ws://{addr}/yjs/{doc}?token={t}"),
            None => format!("ws://{addr}/yjs/{doc}"),
        };
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("connect");
        YjsPeer { ws }
    }

    /// Sends `messages` (each already lib0-encoded) as one frame.
    pub async fn send_frame(&mut self, messages: &[Vec<u8>]) -> bool {
        let frame: Vec<u8> = messages.concat();
        self.ws.send(Message::Binary(frame.into())).await.is_ok()
    }

    /// The next frame's messages or the close, skipping pings.
    pub async fn read(&mut self) -> YjsRead {
        tokio::time::timeout(WAIT, async {
            loop {
                match self.ws.next().await {
                    Some(Ok(Message::Binary(b))) => {
                        return YjsRead::Messages(
                            lattice_engine::yws::decode_frame(&b, usize::MAX)
                                .expect("server frame"),
                        );
                    }
                    Some(Ok(Message::Close(frame))) => {
                        return YjsRead::Closed(frame.map(|f: CloseFrame| u16::from(f.code)));
                    }
                    Some(Ok(_)) => continue,
                    Some(Err(_)) | None => return YjsRead::Closed(None),
                }
            }
        })
        .await
        .expect("server answers")
    }

    /// Reads until the server closes the connection; returns the close code.
    pub async fn closed(&mut self) -> Option<u16> {
        loop {
            if let YjsRead::Closed(code) = self.read().await {
                return code;
            }
        }
    }
}

/// The value of metric `name` (without labels, or with exactly `labels`) in `/metrics`.
pub async fn metric(addr: SocketAddr, name_and_labels: &str) -> Option<f64> {
    let text = http_get(addr, "/metrics", None).await.body;
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (key, value) = l.rsplit_once(' ')?;
        (key == name_and_labels).then(|| value.parse().ok())?
    })
}

/// Defines `keys()`, `token(sub, scope)` and `auth_config(db)` in the calling test file: a key
/// set of the one `secret`, a token of `sub` with `scope` on every document (valid for an
/// hour), and [`config`] with tokens required.
#[macro_export]
macro_rules! auth_helpers {
    ($secret:expr) => {
        fn keys() -> lattice_server::auth::KeySet {
            lattice_server::auth::KeySet::parse(&[$secret]).expect("keys")
        }

        fn token(sub: &str, scope: lattice_server::auth::Scope) -> String {
            let hour = std::time::Duration::from_secs(3_600);
            keys()
                .mint(sub, &["*".to_owned()], scope, hour, None)
                .expect("mint")
        }

        fn auth_config(
            db: &lattice_tests::store_support::TestDb,
        ) -> lattice_server::config::Config {
            let mut c = lattice_tests::server_support::config(db);
            c.auth = lattice_server::config::AuthConfig::required(keys());
            c
        }
    };
}
