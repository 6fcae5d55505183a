//! End-to-end tests of the sync server: real server on port 0, real SQLite file or PostgreSQL
//! database, native clients and raw WebSocket peers.

use std::time::Duration;

use lattice_engine::protocol::{ClientMsg, ErrorCode, ServerMsg};
use lattice_engine::{Delta, DocState, Value};
use lattice_tests::on_both_backends;
use lattice_tests::server_support::{
    ChildServer, RawPeer, Read, TestServer, WAIT, client, config, doc, settled,
};
use lattice_tests::store_support::{Kind, TestDb};

on_both_backends!(
    three_clients_converge_and_survive_restart,
    offline_edits_merge_on_reconnect,
    presence_joins_renews_expires_and_leaves,
    bad_input_is_refused_and_isolated,
    graceful_shutdown_keeps_every_acked_delta,
);

async fn three_clients_converge_and_survive_restart(db: TestDb) {
    let server = TestServer::start(config(&db)).await;
    let url = server.ws_url();
    let docs = [doc("team/notes"), doc("team/todo")];
    let clients = [client(&url, 11), client(&url, 22), client(&url, 33)];
    // Error events, kept for the failure message.
    let errors = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    for (i, c) in clients.iter().enumerate() {
        let mut events = c.events();
        let errors = errors.clone();
        tokio::spawn(async move {
            while let Ok(e) = events.recv().await {
                match e {
                    lattice_engine::sync::SessionEvent::Error { .. } => {
                        errors
                            .lock()
                            .expect("errors")
                            .push(format!("client {i}: {e:?}"));
                    }
                    lattice_engine::sync::SessionEvent::Remote { doc } => {
                        errors
                            .lock()
                            .expect("errors")
                            .push(format!("client {i}: remote {doc}"));
                    }
                    _ => {}
                }
            }
        });
    }
    for c in &clients {
        for d in &docs {
            c.open(d, Vec::new()).await.expect("open");
        }
    }
    for c in &clients {
        for d in &docs {
            settled(c, d).await;
        }
    }
    // Concurrent edits: every client edits every document without waiting for the others.
    let mut tasks = Vec::new();
    for (i, c) in clients.iter().enumerate() {
        for d in &docs {
            let c = c.clone();
            let d = d.clone();
            tasks.push(tokio::spawn(async move {
                for round in 0..20u32 {
                    c.edit(&d, |doc, _| {
                        doc.text_insert("body", 0, &format!("c{i}r{round};"))
                    })
                    .await
                    .expect("text");
                    c.edit(&d, |doc, _| doc.counter_increment("clicks", 1))
                        .await
                        .expect("counter");
                    c.edit(&d, |doc, hlc| {
                        doc.register_set(
                            "title",
                            Value::String(format!("t{i}-{round}")),
                            hlc.tick(),
                        )
                    })
                    .await
                    .expect("register");
                }
            }));
        }
    }
    for t in tasks {
        t.await.expect("editor");
    }
    for c in &clients {
        for d in &docs {
            settled(c, d).await;
        }
    }
    // Every client must end up holding all 60 edits of every kind, and then the same document.
    // (A client's own acks say nothing about relays of the others' edits still in flight.)
    let complete = |s: &lattice_engine::sync::Session, d: &lattice_engine::DocId| {
        s.document(d)
            .is_some_and(|x| x.counter("clicks") == 60 && x.text("body").matches(';').count() == 60)
    };
    for d in &docs {
        for (i, c) in clients.iter().enumerate() {
            if !c.wait_until(WAIT, |s| complete(s, d)).await {
                let seen = errors.lock().expect("errors").clone();
                panic!(
                    "client {i} did not receive every edit of {d}: {}\n errors {seen:?}",
                    c.json(d).unwrap_or_default()
                );
            }
        }
        let reference = clients[0].json(d).expect("json");
        for c in &clients[1..] {
            assert_eq!(
                c.json(d).expect("json"),
                reference,
                "clients diverged on {d}"
            );
        }
    }
    let before: Vec<_> = docs
        .iter()
        .map(|d| clients[0].json(d).expect("json"))
        .collect();
    assert_eq!(before[0]["counters"]["clicks"], 60);
    assert_eq!(
        before[0]["texts"]["body"]
            .as_str()
            .map(|t| t.matches(';').count()),
        Some(60)
    );
    for c in &clients {
        c.stop();
    }
    server.shutdown().await;

    // A fresh server on the same database serves the same content to a fresh client.
    let server = TestServer::start(config(&db)).await;
    let fresh = client(&server.ws_url(), 44);
    for (d, want) in docs.iter().zip(&before) {
        fresh.open(d, Vec::new()).await.expect("open");
        settled(&fresh, d).await;
        assert_eq!(&fresh.json(d).expect("json"), want, "reload of {d} differs");
    }
    fresh.stop();
    server.shutdown().await;
}

async fn offline_edits_merge_on_reconnect(db: TestDb) {
    let server = TestServer::start(config(&db)).await;
    let url = server.ws_url();
    let d = doc("offline");
    let a = client(&url, 1);
    let b = client(&url, 2);
    for c in [&a, &b] {
        c.open(&d, Vec::new()).await.expect("open");
        settled(c, &d).await;
    }
    a.edit(&d, |doc, _| doc.text_insert("t", 0, "shared "))
        .await
        .expect("edit");
    settled(&a, &d).await;
    assert!(
        b.wait_until(WAIT, |s| s
            .document(&d)
            .is_some_and(|x| x.text("t") == "shared "))
            .await
    );

    a.set_offline(true);
    assert!(a.wait_until(WAIT, |s| !s.is_connected()).await);
    for i in 0..5 {
        a.edit(&d, |doc, _| {
            let end = doc.text_len("t");
            doc.text_insert("t", end, &format!("a{i} "))
        })
        .await
        .expect("offline edit");
    }
    a.edit(&d, |doc, _| doc.counter_increment("n", 3))
        .await
        .expect("counter");
    assert_eq!(a.pending(&d), 6, "offline edits are pending");
    b.edit(&d, |doc, _| doc.text_insert("t", 0, "b! "))
        .await
        .expect("edit");
    b.edit(&d, |doc, _| doc.counter_increment("n", 4))
        .await
        .expect("counter");
    settled(&b, &d).await;

    a.set_offline(false);
    settled(&a, &d).await;
    let want = |s: &lattice_engine::sync::Session| {
        s.document(&d).is_some_and(|x| {
            let t = x.text("t");
            t.contains("b! ") && t.contains("a4 ") && x.counter("n") == 7
        })
    };
    assert!(a.wait_until(WAIT, want).await, "A lacks B's edits");
    assert!(b.wait_until(WAIT, want).await, "B lacks A's offline edits");
    assert_eq!(a.json(&d), b.json(&d));
    a.stop();
    b.stop();
    server.shutdown().await;
}

async fn presence_joins_renews_expires_and_leaves(db: TestDb) {
    let mut cfg = config(&db);
    cfg.rooms.presence_ttl = Duration::from_millis(1_500);
    cfg.rooms.typing_ttl = Duration::from_millis(400);
    let server = TestServer::start(cfg).await;
    let d = doc("presence");
    let mut watcher = RawPeer::hello(&server.ws_url()).await;
    let _ = watcher
        .send(&ClientMsg::Subscribe {
            doc: d.clone(),
            state: DocState::default(),
        })
        .await;
    assert!(matches!(
        watcher.read().await,
        Read::Msg(ServerMsg::Sync { .. })
    ));

    let mut alice = RawPeer::hello(&server.ws_url()).await;
    let _ = alice
        .send(&ClientMsg::Subscribe {
            doc: d.clone(),
            state: DocState::default(),
        })
        .await;
    assert!(matches!(
        alice.read().await,
        Read::Msg(ServerMsg::Sync { .. })
    ));
    let me = Value::Map([("name".to_owned(), Value::String("Alice".into()))].into());
    let _ = alice
        .send(&ClientMsg::Presence {
            doc: d.clone(),
            state: me.clone(),
            typing: true,
        })
        .await;
    let alice_peer = match watcher.read().await {
        Read::Msg(ServerMsg::Presence {
            peer,
            state,
            typing,
            ..
        }) => {
            assert_eq!(state, me);
            assert!(typing);
            peer
        }
        other => panic!("expected presence, got {other:?}"),
    };
    // Typing expires on its own; the entry stays.
    match watcher.read().await {
        Read::Msg(ServerMsg::Presence {
            peer,
            state,
            typing,
            ..
        }) => {
            assert_eq!(peer, alice_peer);
            assert_ne!(state, Value::Null);
            assert!(!typing, "typing flag expires");
        }
        other => panic!("expected typing expiry, got {other:?}"),
    }
    // Renewal keeps it alive past the TTL.
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        let _ = alice
            .send(&ClientMsg::Presence {
                doc: d.clone(),
                state: me.clone(),
                typing: false,
            })
            .await;
        match watcher.read().await {
            Read::Msg(ServerMsg::Presence { state, .. }) => {
                assert_ne!(state, Value::Null, "renewed")
            }
            other => panic!("expected renewal, got {other:?}"),
        }
    }
    // Without renewal it expires after the TTL.
    match watcher.read().await {
        Read::Msg(ServerMsg::Presence { peer, state, .. }) => {
            assert_eq!(peer, alice_peer);
            assert_eq!(state, Value::Null, "presence expires");
        }
        other => panic!("expected expiry, got {other:?}"),
    }
    // Published again, then the socket drops: removed at once.
    let _ = alice
        .send(&ClientMsg::Presence {
            doc: d.clone(),
            state: me.clone(),
            typing: false,
        })
        .await;
    assert!(matches!(
        watcher.read().await,
        Read::Msg(ServerMsg::Presence {
            state: Value::Map(_),
            ..
        })
    ));
    drop(alice);
    let started = std::time::Instant::now();
    match watcher.read().await {
        Read::Msg(ServerMsg::Presence { state, .. }) => assert_eq!(state, Value::Null),
        other => panic!("expected leave, got {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_millis(1_000),
        "leave is immediate"
    );
    server.shutdown().await;
}

async fn expect_error(peer: &mut RawPeer, code: ErrorCode) {
    match peer.read().await {
        Read::Msg(ServerMsg::Error { code: got, .. }) => assert_eq!(got, code),
        other => panic!("expected error {code:?}, got {other:?}"),
    }
}

async fn expect_close(peer: &mut RawPeer, code: u16) {
    match peer.read().await {
        Read::Closed(Some(got)) => assert_eq!(got, code),
        other => panic!("expected close {code}, got {other:?}"),
    }
}

async fn bad_input_is_refused_and_isolated(db: TestDb) {
    let mut cfg = config(&db);
    cfg.limits.max_frame_bytes = 64 * 1024;
    cfg.limits.messages_per_second = 20;
    cfg.limits.message_burst = 40;
    let server = TestServer::start(cfg).await;
    let url = server.ws_url();
    let d = doc("victim");
    // A well-behaved client keeps working throughout.
    let good = client(&url, 5);
    good.open(&d, Vec::new()).await.expect("open");
    settled(&good, &d).await;
    good.edit(&d, |doc, _| doc.text_insert("t", 0, "intact"))
        .await
        .expect("edit");
    settled(&good, &d).await;
    let before = good.json(&d).expect("json");

    // Invalid Yjs updates: refused, connection stays, document unchanged.
    let mut p = RawPeer::hello(&url).await;
    let _ = p
        .send(&ClientMsg::Subscribe {
            doc: d.clone(),
            state: DocState::default(),
        })
        .await;
    assert!(matches!(p.read().await, Read::Msg(ServerMsg::Sync { .. })));
    for bad in [vec![0x9f, 0x9e, 0x97, 0x31], vec![1, 1, 1], vec![0xff; 32]] {
        let _ = p
            .send(&ClientMsg::Delta {
                doc: d.clone(),
                seq: 1,
                delta: Delta {
                    yjs: bad,
                    ..Delta::default()
                },
            })
            .await;
        expect_error(&mut p, ErrorCode::InvalidDelta).await;
    }
    // Unknown kinds are refused but not fatal.
    let _ = p
        .send_bytes(
            rmp_serde::to_vec_named(&serde_json::json!({"type": "teleport"})).expect("encode"),
        )
        .await;
    expect_error(&mut p, ErrorCode::UnknownMessage).await;
    let _ = p.send(&ClientMsg::Ping { nonce: 9 }).await;
    assert!(matches!(
        p.read().await,
        Read::Msg(ServerMsg::Pong { nonce: 9 })
    ));

    // Random bytes and truncated MessagePack: error, then close 4000.
    for garbage in [vec![0xc1, 0x00, 0x13], {
        let mut t = ClientMsg::Subscribe {
            doc: d.clone(),
            state: DocState::default(),
        }
        .encode();
        t.truncate(t.len() / 2);
        t
    }] {
        let mut q = RawPeer::hello(&url).await;
        let _ = q.send_bytes(garbage).await;
        expect_error(&mut q, ErrorCode::MalformedMessage).await;
        expect_close(&mut q, 4000).await;
    }

    // An oversized frame: error, then close 1009.
    let mut big = RawPeer::hello(&url).await;
    let _ = big.send_bytes(vec![0x80; 100 * 1024]).await;
    expect_error(&mut big, ErrorCode::FrameTooLarge).await;
    expect_close(&mut big, 1009).await;

    // Over the rate limit: error, then close 4029.
    let mut fast = RawPeer::hello(&url).await;
    for n in 0..200 {
        let _ = fast.send(&ClientMsg::Ping { nonce: n }).await;
    }
    loop {
        match fast.read().await {
            Read::Msg(ServerMsg::Pong { .. }) => continue,
            Read::Msg(ServerMsg::Error { code, .. }) => {
                assert_eq!(code, ErrorCode::RateLimited);
                break;
            }
            other => panic!("expected rate limit, got {other:?}"),
        }
    }
    expect_close(&mut fast, 4029).await;

    // A wrong protocol version: error, then close 4001.
    let mut old = RawPeer::connect(&url).await;
    let _ = old
        .send_bytes(
            rmp_serde::to_vec_named(&serde_json::json!({"type": "hello", "protocol": 99}))
                .expect("encode"),
        )
        .await;
    expect_error(&mut old, ErrorCode::UnsupportedVersion).await;
    expect_close(&mut old, 4001).await;

    // The document and the good client are untouched, and the good client still syncs.
    assert_eq!(good.json(&d).expect("json"), before);
    good.edit(&d, |doc, _| doc.text_insert("t", 0, "still "))
        .await
        .expect("edit");
    settled(&good, &d).await;
    let fresh = client(&url, 6);
    fresh.open(&d, Vec::new()).await.expect("open");
    settled(&fresh, &d).await;
    assert_eq!(
        fresh.read(&d, |x| x.text("t")).as_deref(),
        Some("still intact")
    );
    good.stop();
    fresh.stop();
    server.shutdown().await;
}

async fn graceful_shutdown_keeps_every_acked_delta(db: TestDb) {
    let server = TestServer::start(config(&db)).await;
    let d = doc("shutdown");
    let mut p = RawPeer::hello(&server.ws_url()).await;
    let _ = p
        .send(&ClientMsg::Subscribe {
            doc: d.clone(),
            state: DocState::default(),
        })
        .await;
    assert!(matches!(p.read().await, Read::Msg(ServerMsg::Sync { .. })));
    let mut source = lattice_engine::Document::new(lattice_engine::ReplicaId::from_random(77));
    let mut deltas = Vec::new();
    for i in 0..300u32 {
        deltas.push(source.text_insert("t", 0, &format!("{i},")).expect("edit"));
    }
    for (i, delta) in deltas.iter().enumerate() {
        let _ = p
            .send(&ClientMsg::Delta {
                doc: d.clone(),
                seq: i as u64 + 1,
                delta: delta.clone(),
            })
            .await;
    }
    // Shut down once acks are arriving, while more deltas are still in flight.
    let mut acked = 0u64;
    while acked == 0 {
        if let Read::Msg(ServerMsg::Ack { seq, .. }) = p.read().await {
            acked = seq;
        }
    }
    let stopper = tokio::spawn(server.shutdown());
    loop {
        match p.read().await {
            Read::Msg(ServerMsg::Ack { seq, .. }) => acked = acked.max(seq),
            Read::Msg(_) => {}
            Read::Closed(code) => {
                assert_eq!(code, Some(1001), "closed with going-away");
                break;
            }
        }
    }
    stopper.await.expect("shutdown");
    assert!(acked > 0, "some deltas were acknowledged before the close");
    let server = TestServer::start(config(&db)).await;
    let reader = client(&server.ws_url(), 78);
    reader.open(&d, Vec::new()).await.expect("open");
    settled(&reader, &d).await;
    let text = reader.read(&d, |x| x.text("t")).expect("text");
    for i in 0..acked {
        assert!(text.contains(&format!("{i},")), "acked delta {i} lost");
    }
    reader.stop();
    server.shutdown().await;
}

/// Ack means durable: after an ack, SIGKILL the server; after restart the delta is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acked_delta_survives_sigkill() {
    for kind in [Kind::Sqlite, Kind::Postgres] {
        let db = TestDb::new(kind).await;
        let server = ChildServer::spawn(&db.url, &[]).await;
        let d = doc("durable");
        let c = client(&server.ws_url(), 9);
        c.open(&d, Vec::new()).await.expect("open");
        settled(&c, &d).await;
        for i in 0..50 {
            c.edit(&d, |doc, _| doc.text_insert("t", 0, &format!("k{i};")))
                .await
                .expect("edit");
        }
        c.edit(&d, |doc, _| doc.counter_increment("n", 50))
            .await
            .expect("edit");
        settled(&c, &d).await;
        let want = c.json(&d).expect("json");
        c.stop();
        server.kill9().await;

        let server = ChildServer::spawn(&db.url, &[]).await;
        let r = client(&server.ws_url(), 10);
        r.open(&d, Vec::new()).await.expect("open");
        settled(&r, &d).await;
        assert_eq!(
            r.json(&d).expect("json"),
            want,
            "acked deltas lost after SIGKILL"
        );
        r.stop();
        let status = server.terminate().await;
        assert!(status.success(), "SIGTERM gives a clean exit");
    }
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS")
}

/// A subscriber that never reads is closed as a slow consumer; the others keep a normal
/// latency, and the server's memory stays bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_is_closed_and_others_are_unaffected() {
    let db = TestDb::new(Kind::Sqlite).await;
    let server = ChildServer::spawn(
        &db.url,
        &[
            // Relays of a burst are merged into frames of up to 256 KiB, so a small outbox is
            // what fills behind the kernel's socket buffers.
            "--outbox-frames",
            "32",
            "--messages-per-second",
            "100000",
            "--message-burst",
            "100000",
            "--bytes-per-second",
            "1000000000",
        ],
    )
    .await;
    let url = server.ws_url();
    let d = doc("firehose");
    let mut sleeper = RawPeer::hello(&url).await;
    let _ = sleeper
        .send(&ClientMsg::Subscribe {
            doc: d.clone(),
            state: DocState::default(),
        })
        .await;
    let reader = client(&url, 3);
    reader.open(&d, Vec::new()).await.expect("open");
    settled(&reader, &d).await;
    let writer = client(&url, 4);
    writer.open(&d, Vec::new()).await.expect("open");
    settled(&writer, &d).await;
    let rss_before = rss_kib(server.pid());
    let chunk = "x".repeat(16 * 1024);
    // 40 rounds of 30 × 16 KiB: the normal reader keeps up round by round, while everything
    // piles up for the sleeper (≈ 19 MiB, far more than socket buffers and 32 frames hold).
    let mut written = 0;
    let started = std::time::Instant::now();
    for _ in 0..40 {
        for _ in 0..30 {
            writer
                .edit(&d, |doc, _| doc.text_insert("t", 0, &chunk))
                .await
                .expect("edit");
        }
        written += 30 * chunk.len();
        settled(&writer, &d).await;
        assert!(
            reader
                .wait_until(WAIT, |s| s
                    .document(&d)
                    .is_some_and(|x| x.text_len("t") as usize == written))
                .await,
            "the normal reader fell behind"
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "reader was slowed down"
    );
    // One more write after the reader caught up, to time a single delivery.
    let t0 = std::time::Instant::now();
    writer
        .edit(&d, |doc, _| doc.text_insert("t", 0, "ping"))
        .await
        .expect("edit");
    assert!(
        reader
            .wait_until(WAIT, |s| s
                .document(&d)
                .is_some_and(|x| x.text("t").starts_with("ping")))
            .await
    );
    assert!(
        t0.elapsed() < Duration::from_millis(500),
        "delivery latency {:?}",
        t0.elapsed()
    );
    let rss_after = rss_kib(server.pid());
    // The server legitimately holds the 19 MiB document in yrs, snapshots it for checkpoints,
    // and keeps a 64 MiB SQLite page cache; what must not grow is the sleeper's backlog, capped
    // at 32 frames. Without the cap the backlog alone would be the whole 19 MiB again per reader.
    assert!(
        rss_after < rss_before + 512 * 1024,
        "server RSS grew from {rss_before} KiB to {rss_after} KiB"
    );
    // The sleeper finally reads: buffered frames, then the slow-consumer close.
    let code = loop {
        match sleeper.read().await {
            Read::Msg(_) => continue,
            Read::Closed(code) => break code,
        }
    };
    assert_eq!(code, Some(4008), "closed as a slow consumer");
    reader.stop();
    writer.stop();
    let metrics = reqwest_metrics(server.addr).await;
    assert!(
        metrics.contains("lattice_closes_total{reason=\"slow_consumer\"} 1"),
        "{metrics}"
    );
    server.kill9().await;
}

async fn reqwest_metrics(addr: std::net::SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).await.expect("read");
    out
}
