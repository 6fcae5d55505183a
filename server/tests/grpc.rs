//! The gRPC service (docs/grpc.md) end to end: a real server on `127.0.0.1:0` on a real SQLite
//! file, the tonic client generated from the same proto, and Python `grpcio` (stubs generated
//! by `grpc_tools.protoc` in the test) as a client from another ecosystem.
//!
//! The Python interpreter is the one `cargo xtask setup` prepares (`LATTICE_TEST_GRPC_PYTHON`,
//! a virtual environment under `target/` with pinned `grpcio`, `grpcio-tools`, `protobuf`);
//! without it the test fails and says how to get it.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use lattice_engine::{Delta, DocState, Document, ReplicaId};
use lattice_server::auth::{KeySet, Scope};
use lattice_server::config::{AuthConfig, Config};
use lattice_server::grpc::proto::apply_update_request::Update;
use lattice_server::grpc::proto::document_event::Kind;
use lattice_server::grpc::proto::documents_client::DocumentsClient;
use lattice_server::grpc::proto::{
    ApplyUpdateRequest, DocumentEvent, GetDocumentRequest, ListDocumentsRequest, SubscribeRequest,
};
use tokio::sync::oneshot;
use tonic::transport::Channel;
use tonic::{Code, Request, Status, Streaming};

/// How long any single wait of these tests may take.
const WAIT: Duration = Duration::from_secs(10);

/// A running server with the gRPC service, its keys, and how to stop it.
struct Server {
    http: SocketAddr,
    grpc: SocketAddr,
    keys: KeySet,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl Server {
    async fn start(tune: impl FnOnce(&mut Config)) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let keys = KeySet::new(vec![(
            "k1".into(),
            b"a grpc test secret of 32 bytes!!".to_vec(),
        )])
        .unwrap();
        let mut config = Config {
            database_url: format!("sqlite://{}", dir.path().join("grpc.db").display()),
            auth: AuthConfig::required(keys.clone()),
            ..Config::default()
        };
        config.shutdown_deadline = Duration::from_secs(5);
        // The tests write quickly; the rate limits are not their subject.
        config.limits.messages_per_second = 100_000;
        config.limits.message_burst = 100_000;
        config.limits.bytes_per_second = 1 << 30;
        config.limits.byte_burst = 1 << 30;
        tune(&mut config);
        let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = grpc.local_addr().unwrap();
        let http_addr = http.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            lattice_server::run_with_grpc(config, http, grpc, async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
        });
        Server {
            http: http_addr,
            grpc: addr,
            keys,
            stop: Some(stop),
            task: Some(task),
            _dir: dir,
        }
    }

    fn token(&self, subject: &str, docs: &[&str], scope: Scope) -> String {
        let docs: Vec<String> = docs.iter().map(|d| (*d).to_owned()).collect();
        self.keys
            .mint(subject, &docs, scope, Duration::from_secs(600), None)
            .unwrap()
    }

    async fn client(&self) -> DocumentsClient<Channel> {
        let url = format!("http://{}", self.grpc);
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match DocumentsClient::connect(url.clone()).await {
                Ok(client) => return client,
                Err(e) if tokio::time::Instant::now() > deadline => panic!("no gRPC server: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }

    /// The Prometheus text of `/metrics`, over a plain HTTP/1.1 request.
    async fn metrics(&self) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut socket = tokio::net::TcpStream::connect(self.http).await.unwrap();
        socket
            .write_all(b"GET /metrics HTTP/1.1\r\nhost: lattice\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut text = String::new();
        tokio::time::timeout(WAIT, socket.read_to_string(&mut text))
            .await
            .unwrap()
            .unwrap();
        text
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(WAIT, self.task.take().unwrap())
            .await
            .expect("the server stops within the deadline")
            .unwrap();
    }
}

/// `message` with `authorization: Bearer <token>`.
fn authed<T>(token: &str, message: T) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

fn yjs(doc: &str, update: &[u8]) -> ApplyUpdateRequest {
    ApplyUpdateRequest {
        doc: doc.into(),
        update: Some(Update::YjsUpdate(update.to_vec())),
        idempotency_key: String::new(),
    }
}

/// The next event of a stream, or the status it ended with.
async fn next(stream: &mut Streaming<DocumentEvent>) -> Result<Option<DocumentEvent>, Status> {
    tokio::time::timeout(WAIT, stream.message())
        .await
        .expect("an event or the end within the wait")
}

fn assert_refused<T: std::fmt::Debug>(result: Result<T, Status>, code: Code, error: &str) {
    let status = result.expect_err("refused");
    assert_eq!(status.code(), code, "{status:?}");
    assert_eq!(
        status
            .metadata()
            .get("lattice-error")
            .and_then(|v| v.to_str().ok()),
        Some(error),
        "{status:?}"
    );
}

/// The Yjs updates of typing `words` into text `body`, one per word.
fn typing(words: &[&str]) -> (Document, Vec<Vec<u8>>) {
    let mut doc = Document::new(ReplicaId::new(0x51).unwrap());
    let mut updates = Vec::new();
    for word in words {
        let at = doc.text_len("body");
        updates.push(doc.text_insert("body", at, word).unwrap().yjs);
    }
    (doc, updates)
}

/// Applies a stream's updates to a fresh document, the way a Yjs client would.
fn mirror(events: &[DocumentEvent]) -> Document {
    let mut doc = Document::new(ReplicaId::new(0x52).unwrap());
    for e in events {
        doc.apply(&Delta {
            yjs: e.yjs_update.clone(),
            ..Delta::default()
        })
        .unwrap();
    }
    doc
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_get_subscribe_and_resume_with_no_gap_and_no_duplicate() {
    let server = Server::start(|_| {}).await;
    let mut client = server.client().await;
    let writer = server.token("writer", &["notes/*"], Scope::Write);
    let doc = "notes/resume";
    let (mut source, updates) =
        typing(&["one ", "two ", "three ", "four ", "five ", "six ", "seven "]);

    // A raw Yjs update, then a MessagePack Lattice delta (with a counter), each acked with its seq.
    let first = client
        .apply_update(authed(&writer, yjs(doc, &updates[0])))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((first.seq, first.changed, first.replayed), (1, true, false));
    let mut delta = source.counter_increment("views", 3).unwrap();
    delta.yjs = updates[1].clone();
    let second = client
        .apply_update(authed(
            &writer,
            ApplyUpdateRequest {
                doc: doc.into(),
                update: Some(Update::Delta(delta.encode())),
                idempotency_key: "second".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((second.seq, second.replayed), (2, false));

    // The same key and update: the first answer again, nothing applied twice.
    let replay = client
        .apply_update(authed(
            &writer,
            ApplyUpdateRequest {
                doc: doc.into(),
                update: Some(Update::Delta(delta.encode())),
                idempotency_key: "second".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((replay.seq, replay.replayed), (2, true));
    let reused = client
        .apply_update(authed(
            &writer,
            ApplyUpdateRequest {
                doc: doc.into(),
                update: Some(Update::YjsUpdate(updates[2].clone())),
                idempotency_key: "second".into(),
            },
        ))
        .await;
    assert_refused(reused, Code::AlreadyExists, "idempotency_key_reused");

    // The document: its Yjs update and JSON view, as of seq 2.
    let got = client
        .get_document(authed(
            &writer,
            GetDocumentRequest {
                doc: doc.into(),
                state_vector: Vec::new(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.seq, 2);
    let json: serde_json::Value = serde_json::from_str(&got.json).unwrap();
    assert_eq!(json["texts"]["body"], "one two ", "{json}");
    assert_eq!(json["counters"]["views"], 3, "{json}");
    let mut copy = Document::new(ReplicaId::new(0x54).unwrap());
    copy.apply(&Delta {
        yjs: got.yjs_update.clone(),
        ..Delta::default()
    })
    .unwrap();
    assert_eq!(copy.text("body"), "one two ");
    // Given what it holds, a reader gets the empty update.
    let nothing = client
        .get_document(authed(
            &writer,
            GetDocumentRequest {
                doc: doc.into(),
                state_vector: copy.state().yjs,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(nothing.yjs_update, vec![0, 0]);

    // Subscribe without after_seq: a sync of the document, then live entries.
    let mut stream = client
        .subscribe(authed(
            &writer,
            SubscribeRequest {
                doc: doc.into(),
                after_seq: None,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let sync = next(&mut stream).await.unwrap().unwrap();
    assert_eq!((sync.kind(), sync.seq), (Kind::Sync, 2));
    let mut seen = vec![sync];
    for update in &updates[2..4] {
        client
            .apply_update(authed(&writer, yjs(doc, update)))
            .await
            .unwrap();
    }
    for seq in [3, 4] {
        let e = next(&mut stream).await.unwrap().unwrap();
        assert_eq!((e.kind(), e.seq), (Kind::Entry, seq));
        seen.push(e);
    }
    // The stream drops; entries commit meanwhile; a resume after 4 gets exactly the rest.
    drop(stream);
    for update in &updates[4..6] {
        client
            .apply_update(authed(&writer, yjs(doc, update)))
            .await
            .unwrap();
    }
    let mut resumed = client
        .subscribe(authed(
            &writer,
            SubscribeRequest {
                doc: doc.into(),
                after_seq: Some(4),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    for seq in [5, 6] {
        let e = next(&mut resumed).await.unwrap().unwrap();
        assert_eq!((e.kind(), e.seq), (Kind::Entry, seq));
        seen.push(e);
    }
    let live = client
        .apply_update(authed(&writer, yjs(doc, &updates[6])))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(live.seq, 7);
    let e = next(&mut resumed).await.unwrap().unwrap();
    assert_eq!((e.kind(), e.seq), (Kind::Entry, 7));
    seen.push(e);
    let seqs: Vec<u64> = seen.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, [2, 3, 4, 5, 6, 7]);
    assert_eq!(mirror(&seen).text("body"), source.text("body"));
    // The native frame carries the counter the Yjs update cannot.
    assert!(!seen[0].frame.is_empty());
    drop(resumed);
    drop(client);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_have_the_documented_status_codes() {
    let server = Server::start(|_| {}).await;
    let mut client = server.client().await;
    let writer = server.token("writer", &["notes/*"], Scope::Write);
    let reader = server.token("reader", &["notes/*"], Scope::Read);
    let admin = server.token("admin", &["*"], Scope::Admin);
    let (_, updates) = typing(&["x"]);
    let doc = "notes/refusals";

    let none = client
        .apply_update(Request::new(yjs(doc, &updates[0])))
        .await;
    assert_refused(none, Code::Unauthenticated, "unauthorized");
    let forged = client
        .apply_update(authed("not.a.token", yjs(doc, &updates[0])))
        .await;
    assert_refused(forged, Code::Unauthenticated, "unauthorized");
    let read_only = client
        .apply_update(authed(&reader, yjs(doc, &updates[0])))
        .await;
    assert_refused(read_only, Code::PermissionDenied, "forbidden");
    // Outside the token's patterns, whether the document exists or not.
    let elsewhere = client
        .get_document(authed(
            &writer,
            GetDocumentRequest {
                doc: "private/x".into(),
                state_vector: Vec::new(),
            },
        ))
        .await;
    assert_refused(elsewhere, Code::PermissionDenied, "forbidden");
    let listing = client
        .list_documents(authed(&writer, ListDocumentsRequest::default()))
        .await;
    assert_refused(listing, Code::PermissionDenied, "forbidden");
    let bad_id = client
        .apply_update(authed(&admin, yjs("", &updates[0])))
        .await;
    assert_refused(bad_id, Code::InvalidArgument, "invalid_document_id");
    let empty = client
        .apply_update(authed(
            &writer,
            ApplyUpdateRequest {
                doc: doc.into(),
                update: None,
                idempotency_key: String::new(),
            },
        ))
        .await;
    assert_refused(empty, Code::InvalidArgument, "empty_body");
    let garbage = client
        .apply_update(authed(
            &writer,
            ApplyUpdateRequest {
                doc: doc.into(),
                update: Some(Update::Delta(vec![0xc1, 0xff, 0x00])),
                idempotency_key: String::new(),
            },
        ))
        .await;
    assert_refused(garbage, Code::InvalidArgument, "malformed_delta");
    let missing = client
        .get_document(authed(
            &reader,
            GetDocumentRequest {
                doc: doc.into(),
                state_vector: Vec::new(),
            },
        ))
        .await;
    assert_refused(missing, Code::NotFound, "not_found");

    // After one write, a resume beyond the head is refused; the admin lists the document.
    client
        .apply_update(authed(&writer, yjs(doc, &updates[0])))
        .await
        .unwrap();
    let beyond = client
        .subscribe(authed(
            &reader,
            SubscribeRequest {
                doc: doc.into(),
                after_seq: Some(5),
            },
        ))
        .await;
    assert_refused(beyond, Code::InvalidArgument, "after_beyond_head");
    let list = client
        .list_documents(authed(&admin, ListDocumentsRequest::default()))
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<&str> = list.documents.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(ids, [doc]);
    assert_eq!(list.documents[0].updates, 1);
    // Every answer is counted by method and code.
    let metrics = server.metrics().await;
    for line in [
        r#"lattice_grpc_requests_total{method="ApplyUpdate",code="UNAUTHENTICATED"} 2"#,
        r#"lattice_grpc_requests_total{method="ApplyUpdate",code="PERMISSION_DENIED"} 1"#,
        r#"lattice_grpc_requests_total{method="ApplyUpdate",code="INVALID_ARGUMENT"} 3"#,
        r#"lattice_grpc_requests_total{method="ApplyUpdate",code="OK"} 1"#,
        r#"lattice_grpc_requests_total{method="GetDocument",code="NOT_FOUND"} 1"#,
        r#"lattice_grpc_requests_total{method="Subscribe",code="INVALID_ARGUMENT"} 1"#,
        r#"lattice_grpc_requests_total{method="ListDocuments",code="OK"} 1"#,
    ] {
        assert!(metrics.contains(line), "no {line} in\n{metrics}");
    }
    drop(client);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_ends_unavailable_when_the_server_shuts_down() {
    let server = Server::start(|_| {}).await;
    let mut client = server.client().await;
    let reader = server.token("reader", &["*"], Scope::Read);
    let mut stream = client
        .subscribe(authed(
            &reader,
            SubscribeRequest {
                doc: "any/doc".into(),
                after_seq: None,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let sync = next(&mut stream).await.unwrap().unwrap();
    assert_eq!((sync.kind(), sync.seq), (Kind::Sync, 0));
    // The server stops within its deadline, the open stream notwithstanding, and says why.
    let stopping = tokio::spawn(server.stop());
    let status = next(&mut stream)
        .await
        .expect_err("the stream ends with a status");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(
        status
            .metadata()
            .get("lattice-error")
            .unwrap()
            .to_str()
            .unwrap(),
        "shutdown"
    );
    stopping.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lattice_serve_grpc_bind_serves_the_api_and_names_its_port() {
    use tokio::io::AsyncBufReadExt;
    let dir = tempfile::tempdir().unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_lattice"))
        .args([
            "serve",
            "--bind",
            "127.0.0.1:0",
            "--no-auth",
            "--database-url",
        ])
        .arg(format!("sqlite://{}", dir.path().join("cli.db").display()))
        .args(["--grpc-bind", "127.0.0.1:0"])
        .env_remove("LATTICE_AUTH_SECRET")
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let grpc: SocketAddr = tokio::time::timeout(WAIT, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(rest) = line.trim_start().strip_prefix("gRPC:") {
                let url = rest.split_whitespace().next().unwrap();
                return url.trim_start_matches("http://").parse().unwrap();
            }
        }
        panic!("lattice exited without printing its gRPC address");
    })
    .await
    .expect("the banner names the gRPC address");
    let mut client = DocumentsClient::connect(format!("http://{grpc}"))
        .await
        .unwrap();
    let (_, updates) = typing(&["from the CLI"]);
    let applied = client
        .apply_update(Request::new(yjs("cli/doc", &updates[0])))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(applied.seq, 1);
    drop(client);
    // SIGTERM: a graceful stop, exit status 0.
    let pid = child.id().unwrap().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = tokio::time::timeout(WAIT, child.wait())
        .await
        .expect("lattice stops on SIGTERM")
        .unwrap();
    assert!(status.success(), "{status}");
}

/// How many writes the slow-reader test makes, and their size.
const SLOW_WRITES: u64 = 200;
const SLOW_WRITE_BYTES: usize = 6 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_falls_behind_ends_aborted_and_resumes_exactly() {
    let server = Server::start(|c| {
        // Room for a whole group commit of the eight writers below, so that only a reader
        // that does not read overflows it.
        c.limits.outbox_frames = 32;
        c.limits.outbox_bytes = 1024 * 1024;
    })
    .await;
    let client = server.client().await;
    let writer = server.token("writer", &["slow/*"], Scope::Write);
    let doc = "slow/reader";
    // The reader's own connection, with HTTP/2 windows of 64 KiB (hyper's client defaults are
    // megabytes): the writes' 2.4 MB then fill the window, the server's send buffer, the
    // stream's channel and the follower's outbox while the stream is not read.
    let mut slow = DocumentsClient::new(
        tonic::transport::Endpoint::from_shared(format!("http://{}", server.grpc))
            .unwrap()
            .initial_stream_window_size(64 * 1024)
            .initial_connection_window_size(64 * 1024)
            .connect()
            .await
            .unwrap(),
    );
    let mut stream = slow
        .subscribe(authed(
            &writer,
            SubscribeRequest {
                doc: doc.into(),
                after_seq: Some(0),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    // Every write is acknowledged while the stream is not read: it never slows the document.
    // Eight writers at once (group commit), each update a replica of its own, so they commute.
    let started = std::time::Instant::now();
    let mut writers = tokio::task::JoinSet::new();
    for w in 0..8u32 {
        let (mut client, writer) = (client.clone(), writer.clone());
        writers.spawn(async move {
            for i in 0..SLOW_WRITES as u32 / 8 {
                let mut replica = Document::new(ReplicaId::new(1000 + w * 100 + i).unwrap());
                let text = "x".repeat(SLOW_WRITE_BYTES);
                let update = replica.text_insert("body", 0, &text).unwrap().yjs;
                tokio::time::timeout(
                    WAIT,
                    client.apply_update(authed(&writer, yjs(doc, &update))),
                )
                .await
                .expect("a write is not held up by a stream nobody reads")
                .unwrap();
            }
        });
    }
    while let Some(done) = writers.join_next().await {
        done.unwrap();
    }
    eprintln!(
        "{SLOW_WRITES} writes beside an unread stream: {:?}",
        started.elapsed()
    );
    let mut seen = Vec::new();
    let status = loop {
        match next(&mut stream).await {
            Ok(Some(e)) => seen.push(e),
            Ok(None) => panic!(
                "the stream ended without a status after {} events",
                seen.len()
            ),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), Code::Aborted, "{status:?}");
    assert_eq!(
        status
            .metadata()
            .get("lattice-error")
            .unwrap()
            .to_str()
            .unwrap(),
        "slow_consumer"
    );
    let last = seen.last().map_or(0, |e| e.seq);
    eprintln!("the stream ended after seq {last}");
    // It got what the buffers held, then the end: it fell behind, it was not refused.
    assert!(
        last > 0 && last < SLOW_WRITES,
        "the stream ended after seq {last} of {SLOW_WRITES}"
    );
    assert!(
        seen.iter().map(|e| e.seq).eq(1..=last),
        "a gap before {last}"
    );
    // Resume from the last seq received: exactly the rest, in order.
    let mut resumed = slow
        .subscribe(authed(
            &writer,
            SubscribeRequest {
                doc: doc.into(),
                after_seq: Some(last),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    while seen.last().map_or(0, |e| e.seq) < SLOW_WRITES {
        seen.push(next(&mut resumed).await.unwrap().unwrap());
    }
    assert!(seen.iter().map(|e| e.seq).eq(1..=SLOW_WRITES));
    // What the streams carried is the whole document.
    let mut client = client;
    let got = client
        .get_document(authed(
            &writer,
            GetDocumentRequest {
                doc: doc.into(),
                state_vector: Vec::new(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let json: serde_json::Value = serde_json::from_str(&got.json).unwrap();
    let body = mirror(&seen).text("body");
    assert_eq!(body.len(), SLOW_WRITES as usize * SLOW_WRITE_BYTES);
    assert_eq!(json["texts"]["body"], body);
    drop((resumed, slow, client));
    server.stop().await;
}

/// The interpreter `cargo xtask setup` prepared, or a failure that says how to get it.
fn python() -> PathBuf {
    let Some(python) = std::env::var_os("LATTICE_TEST_GRPC_PYTHON") else {
        panic!(
            "LATTICE_TEST_GRPC_PYTHON is not set: run `cargo xtask setup` (it creates a Python \
             virtual environment with grpcio under target/grpc-python and exports its \
             interpreter), or run the tests through `cargo xtask test`"
        );
    };
    let python = PathBuf::from(python);
    let works = std::process::Command::new(&python)
        .args(["-c", "import grpc, grpc_tools"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        works,
        "{} cannot import grpc and grpc_tools: run `cargo xtask setup` again",
        python.display()
    );
    python
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_grpcio_applies_gets_subscribes_and_is_refused() {
    let python = python();
    let server = Server::start(|_| {}).await;
    let writer = server.token("py-writer", &["py/*"], Scope::Write);
    let reader = server.token("py-reader", &["py/*"], Scope::Read);
    let (source, updates) = typing(&["hello", " world"]);
    let stubs = tempfile::tempdir().unwrap();
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut child = tokio::process::Command::new(&python)
        .arg(here.join("tests/grpc/interop.py"))
        .env("LATTICE_GRPC_ADDR", server.grpc.to_string())
        .env("LATTICE_PROTO_DIR", here.join("../proto"))
        .env("LATTICE_STUB_DIR", stubs.path())
        .env("LATTICE_WRITER", &writer)
        .env("LATTICE_READER", &reader)
        .env("LATTICE_DOC", "py/notes")
        .env("LATTICE_UPDATE_1", hex::encode(&updates[0]))
        .env("LATTICE_UPDATE_2", hex::encode(&updates[1]))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let read = |mut pipe: Box<dyn tokio::io::AsyncRead + Unpin + Send>| async move {
        let mut text = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut pipe, &mut text)
            .await
            .unwrap();
        text
    };
    let (out, err, status) = tokio::time::timeout(Duration::from_secs(60), async {
        tokio::join!(read(Box::new(stdout)), read(Box::new(stderr)), child.wait())
    })
    .await
    .expect("the Python client finishes within a minute");
    let status = status.unwrap();
    assert!(
        status.success(),
        "the Python client failed ({status}):\n{out}\n{err}"
    );
    for line in [
        "applied seq=1 replayed=True",
        "got seq=1",
        "subscribed seqs=[1, 2] kinds=['ENTRY', 'ENTRY']",
        "refused PERMISSION_DENIED lattice-error=forbidden",
        "refused UNAUTHENTICATED lattice-error=unauthorized",
        "python interop ok",
    ] {
        assert!(out.contains(line), "missing {line:?} in:\n{out}\n{err}");
    }
    // What Python wrote is the document, as the tonic client reads it.
    let mut client = server.client().await;
    let got = client
        .get_document(authed(
            &reader,
            GetDocumentRequest {
                doc: "py/notes".into(),
                state_vector: DocState::default().yjs,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let json: serde_json::Value = serde_json::from_str(&got.json).unwrap();
    assert_eq!(json["texts"]["body"], source.text("body"));
    drop(client);
    server.stop().await;
}
