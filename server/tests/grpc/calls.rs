//! The unary calls' refusals and their status codes, the call metrics, and `lattice serve
//! --grpc-bind`.

use super::*;

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
