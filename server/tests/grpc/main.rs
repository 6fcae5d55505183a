//! The gRPC service (docs/grpc.md) end to end: a real server on `127.0.0.1:0` on a real SQLite
//! file, the tonic client generated from the same proto, and Python `grpcio` (stubs generated
//! by `grpc_tools.protoc` in the test) as a client from another ecosystem.
//!
//! The Python interpreter is the one `cargo xtask setup` prepares (`LATTICE_TEST_GRPC_PYTHON`,
//! a virtual environment under `target/` with pinned `grpcio`, `grpcio-tools`, `protobuf`);
//! without it the test fails and says how to get it.

#![allow(clippy::unwrap_used)]

mod calls;
mod python;
mod streams;

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
