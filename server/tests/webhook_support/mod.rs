//! What the webhook tests share (`server/tests/webhooks.rs`): a receiver that records every
//! delivery, the `lattice` binary as a child process on a fresh SQLite or Postgres database, and
//! a small HTTP client.

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use base64::Engine as _;
use hmac::{Hmac, Mac as _};
use lattice_engine::{Document, ReplicaId};
use lattice_server::store::encode_delta;
use serde_json::{Value, json};
use sqlx::Connection as _;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::{TcpListener, TcpStream};

pub(crate) const WAIT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------------
// The receiver.

#[derive(Debug, Clone)]
pub(crate) struct Delivery {
    pub(crate) id: String,
    pub(crate) timestamp: String,
    pub(crate) signature: String,
    pub(crate) body: String,
    pub(crate) at: Instant,
    pub(crate) answered: u16,
}

impl Delivery {
    pub(crate) fn json(&self) -> Value {
        serde_json::from_str(&self.body).expect("a JSON body")
    }
}

/// An HTTP receiver that records every delivery and refuses (500) the first `fail_next` ones;
/// while `hang` is set, it records a delivery and then never answers.
#[derive(Debug, Clone)]
pub(crate) struct Receiver {
    pub(crate) addr: SocketAddr,
    pub(crate) hang: Arc<std::sync::atomic::AtomicBool>,
    pub(crate) log: Arc<Mutex<Vec<Delivery>>>,
    pub(crate) fail_next: Arc<AtomicUsize>,
}

impl Receiver {
    pub(crate) async fn start(fail_first: usize) -> Receiver {
        let log = Arc::new(Mutex::new(Vec::new()));
        let fail_next = Arc::new(AtomicUsize::new(fail_first));
        let hang = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (l, f, h) = (log.clone(), fail_next.clone(), hang.clone());
        let app = Router::new().route(
            "/hook",
            post(move |headers: HeaderMap, body: String| {
                let (log, fail_next, hang) = (l.clone(), f.clone(), h.clone());
                async move {
                    let hangs = hang.load(Ordering::SeqCst);
                    let fail = fail_next
                        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                        .is_ok();
                    let status = if fail {
                        StatusCode::INTERNAL_SERVER_ERROR
                    } else {
                        StatusCode::NO_CONTENT
                    };
                    let header = |name: &str| {
                        headers
                            .get(name)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default()
                            .to_owned()
                    };
                    log.lock().expect("log").push(Delivery {
                        id: header("webhook-id"),
                        timestamp: header("webhook-timestamp"),
                        signature: header("webhook-signature"),
                        body,
                        at: Instant::now(),
                        answered: if hangs { 0 } else { status.as_u16() },
                    });
                    if hangs {
                        std::future::pending::<()>().await;
                    }
                    status
                }
            }),
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver {
            addr,
            hang,
            log,
            fail_next,
        }
    }

    pub(crate) fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    pub(crate) fn deliveries(&self) -> Vec<Delivery> {
        self.log.lock().expect("log").clone()
    }

    /// Waits until `done` holds for the deliveries so far; returns them.
    pub(crate) async fn wait_for(
        &self,
        what: &str,
        done: impl Fn(&[Delivery]) -> bool,
    ) -> Vec<Delivery> {
        let started = Instant::now();
        loop {
            let seen = self.deliveries();
            if done(&seen) {
                return seen;
            }
            assert!(
                started.elapsed() < WAIT,
                "timed out waiting for {what}; received: {:#?}",
                seen.iter()
                    .map(|d| (&d.id, d.answered, &d.body))
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Checks a delivery's `webhook-signature` against the secret (HMAC-SHA256 computed here,
/// independently of the server's code).
pub(crate) fn assert_signed(d: &Delivery, secret: &str) {
    let key = base64::engine::general_purpose::STANDARD
        .decode(secret.strip_prefix("whsec_").expect("whsec_ prefix"))
        .expect("base64 secret");
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&key).expect("key");
    mac.update(format!("{}.{}.{}", d.id, d.timestamp, d.body).as_bytes());
    let expected = format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    );
    assert!(
        d.signature.split(' ').any(|s| s == expected),
        "signature {:?} does not match {expected:?}",
        d.signature
    );
    let ts: u64 = d.timestamp.parse().expect("a numeric timestamp");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    assert!(ts.abs_diff(now) < 60, "timestamp {ts} is not now ({now})");
}

// ---------------------------------------------------------------------------------------------
// The server under test.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Backend {
    Sqlite,
    Postgres,
}

/// A database for one test: a file in a temporary folder, or a new Postgres database.
#[derive(Debug)]
pub(crate) struct Db {
    pub(crate) url: String,
    pub(crate) _dir: Option<tempfile::TempDir>,
    pub(crate) pg: Option<(String, String)>,
}

impl Db {
    pub(crate) async fn new(backend: Backend) -> Db {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("tempdir");
                Db {
                    url: format!("sqlite://{}", dir.path().join("lattice.db").display()),
                    _dir: Some(dir),
                    pg: None,
                }
            }
            Backend::Postgres => {
                let admin = std::env::var("LATTICE_TEST_POSTGRES_URL").expect("postgres url");
                let name = format!(
                    "lattice_wh_{}_{}",
                    std::process::id(),
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .expect("clock")
                        .as_nanos()
                );
                let mut conn = sqlx::PgConnection::connect(&admin)
                    .await
                    .expect("connect to LATTICE_TEST_POSTGRES_URL");
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                    .execute(&mut conn)
                    .await
                    .expect("CREATE DATABASE");
                let _ = conn.close().await;
                let base = admin.rsplit_once('/').expect("a database in the URL").0;
                Db {
                    url: format!("{base}/{name}"),
                    _dir: None,
                    pg: Some((admin, name)),
                }
            }
        }
    }

    pub(crate) async fn cleanup(self) {
        if let Some((admin, name)) = &self.pg
            && let Ok(mut conn) = sqlx::PgConnection::connect(admin).await
        {
            let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
            )))
            .execute(&mut conn)
            .await;
        }
    }
}

/// The backends to run the durable tests on: SQLite, and Postgres when a server is named.
pub(crate) fn backends() -> Vec<Backend> {
    let mut out = vec![Backend::Sqlite];
    if std::env::var("LATTICE_TEST_POSTGRES_URL").is_ok_and(|u| !u.is_empty()) {
        out.push(Backend::Postgres);
    }
    out
}

#[derive(Debug)]
pub(crate) struct Server {
    pub(crate) addr: SocketAddr,
    pub(crate) child: tokio::process::Child,
}

impl Server {
    /// `lattice serve --no-auth` on `db` with `extra` flags.
    pub(crate) async fn spawn(db: &Db, extra: &[&str]) -> Server {
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_lattice"))
            .arg("serve")
            .args([
                "--no-auth",
                "--bind",
                "127.0.0.1:0",
                "--database-url",
                &db.url,
            ])
            .args(extra)
            .env_remove("LATTICE_AUTH_SECRET")
            .env("RUST_LOG", "warn,lattice_server::webhooks=info")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn lattice");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let addr = tokio::time::timeout(WAIT, async {
            while let Some(line) = lines.next_line().await.expect("stdout") {
                if let Some(rest) = line.split("listening on http://").nth(1) {
                    return rest.trim().parse::<SocketAddr>().expect("address");
                }
            }
            panic!("lattice exited before listening");
        })
        .await
        .expect("lattice starts");
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Server { addr, child }
    }

    pub(crate) async fn kill9(mut self) {
        self.child.start_kill().expect("kill");
        let _ = self.child.wait().await;
    }

    /// One HTTP/1.1 request; the status and body.
    pub(crate) async fn request(
        &self,
        method: &str,
        path: &str,
        content_type: &str,
        body: &[u8],
    ) -> (u16, Vec<u8>) {
        let mut stream = TcpStream::connect(self.addr).await.expect("connect");
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: {content_type}\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n",
            self.addr,
            body.len()
        );
        stream.write_all(head.as_bytes()).await.expect("write");
        stream.write_all(body).await.expect("write");
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await.expect("read");
        let split = answer
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("a response head");
        let head = String::from_utf8_lossy(&answer[..split]).to_string();
        let status: u16 = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("a status");
        let mut body = answer[split + 4..].to_vec();
        if head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            body = dechunk(&body);
        }
        (status, body)
    }

    pub(crate) async fn json(&self, method: &str, path: &str, body: Value) -> (u16, Value) {
        let (status, bytes) = self
            .request(
                method,
                path,
                "application/json",
                body.to_string().as_bytes(),
            )
            .await;
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    /// Adds an endpoint for `url`; its id and secret.
    pub(crate) async fn add_endpoint(&self, url: &str, extra: Value) -> (String, String) {
        let mut body = json!({ "url": url });
        if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
            b.extend(e.clone());
        }
        let (status, answer) = self.json("POST", "/api/admin/webhooks", body).await;
        assert_eq!(status, 201, "{answer}");
        (
            answer["endpoint"]["id"].as_str().expect("id").to_owned(),
            answer["secret"].as_str().expect("secret").to_owned(),
        )
    }

    /// Commits `delta` to `doc` over `POST /v1/updates/{doc}`; its seq.
    pub(crate) async fn write(&self, doc: &str, delta: &lattice_engine::Delta) -> u64 {
        let (status, body) = self
            .request(
                "POST",
                &format!("/v1/updates/{doc}"),
                "application/msgpack",
                &encode_delta(delta),
            )
            .await;
        let answer: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        assert_eq!(status, 200, "{answer}");
        answer["seq"].as_u64().expect("a seq")
    }
}

pub(crate) fn dechunk(mut bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = bytes.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(std::str::from_utf8(&bytes[..eol]).unwrap_or("0"), 16)
            .unwrap_or(0);
        if size == 0 {
            break;
        }
        out.extend_from_slice(&bytes[eol + 2..eol + 2 + size]);
        bytes = &bytes[eol + 2 + size + 2..];
    }
    out
}

pub(crate) fn author(n: u32) -> Document {
    Document::new(ReplicaId::new(n).expect("replica"))
}

/// Flags every test server gets: private targets allowed (the receiver is on 127.0.0.1).
pub(crate) const ALLOW: &str = "--webhook-allow-private";

/// The `document.changed` deliveries for `doc`.
pub(crate) fn changed_for<'a>(seen: &'a [Delivery], doc: &str) -> Vec<&'a Delivery> {
    seen.iter()
        .filter(|d| {
            let j = d.json();
            j["type"] == "document.changed" && j["data"]["document"] == doc
        })
        .collect()
}
