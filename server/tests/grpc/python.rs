//! A client from another ecosystem: Python `grpcio`, running `interop.py` beside this file.

use super::*;

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
