//! `Subscribe`: the sync, live entries, resume after a dropped stream, the end of a stream
//! that falls behind, and of one the server stops under.

use super::*;

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
