//! Issue 17's attack classes, each against a real server: what a peer sends must never stop
//! the server, starve other users, or turn an acknowledgement into a lie. Every test here
//! failed on the server before the hardening (each says how) and passes after.

use std::time::Duration;

use futures_util::SinkExt;
use lattice_engine::protocol::{ClientMsg, ErrorCode, ServerMsg};
use lattice_engine::yws::{self, AwarenessEntry, YMessage};
use lattice_engine::{Delta, DocId, DocState, Document, ReplicaId};
use lattice_server::auth::{Claims, Scope};
use lattice_server::store::{NewEntry, StoreConfig};
use lattice_tests::hostile::{gc_range, nested_arrays, text_after_gap, yjs_delta};
use lattice_tests::server_support::{
    ChildServer, RawPeer, Read, TestServer, WAIT, YjsPeer, YjsRead, config, doc, http_get,
    lattice_release_binary, metric,
};
use lattice_tests::store_support::{Kind, TestDb};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

lattice_tests::auth_helpers!("k1:hardening-secret-0123456789abcdef-0123");

async fn subscribed(peer: &mut RawPeer, d: &DocId) {
    let _ = peer
        .send(&ClientMsg::Subscribe {
            doc: d.clone(),
            state: DocState::default(),
        })
        .await;
    loop {
        match peer.read().await {
            Read::Msg(ServerMsg::Sync { doc, .. }) if &doc == d => return,
            Read::Msg(ServerMsg::Presence { .. }) => continue,
            other => panic!("expected sync of {d}, got {other:?}"),
        }
    }
}

/// Sends `delta` as `seq` and returns the server's answer to it (an ack or an error).
async fn send_delta(peer: &mut RawPeer, d: &DocId, seq: u64, delta: Delta) -> ServerMsg {
    let _ = peer
        .send(&ClientMsg::Delta {
            doc: d.clone(),
            seq,
            delta,
        })
        .await;
    loop {
        match peer.read().await {
            Read::Msg(msg @ (ServerMsg::Ack { .. } | ServerMsg::Error { .. })) => return msg,
            Read::Msg(_) => continue,
            Read::Closed(code) => panic!("closed ({code:?}) instead of answering delta {seq}"),
        }
    }
}

fn assert_error(msg: &ServerMsg, code: ErrorCode, seq: u64) {
    match msg {
        ServerMsg::Error {
            code: got,
            seq: Some(s),
            message,
            ..
        } => {
            assert_eq!(*got, code, "{message}");
            assert_eq!(*s, seq);
        }
        other => panic!("expected error {code:?} for seq {seq}, got {other:?}"),
    }
}

// --- class 1: deep nesting crashed the server ------------------------------------------------

/// Before: one 20,000-level delta was acknowledged and the next read of the document (or a
/// delete, or a checkpoint) overflowed the stack and aborted the process. A stored deep
/// document then aborted it again at every read after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_nesting_never_aborts_a_release_server_and_a_stored_one_loads_as_an_error() {
    let db = TestDb::new(Kind::Sqlite).await;
    let binary = lattice_release_binary();
    let mut server = ChildServer::spawn_binary(&binary, &db.url, &["--no-auth"], "warn").await;
    let d = doc("deep");
    let mut peer = RawPeer::hello(&server.ws_url()).await;
    subscribed(&mut peer, &d).await;
    let answer = send_delta(&mut peer, &d, 1, yjs_delta(nested_arrays(77, 20_000))).await;
    assert_error(&answer, ErrorCode::InvalidDelta, 1);
    // Built up one level per delta: every level up to the limit is taken, the next refused.
    let limit = u64::from(lattice_engine::yjs::MAX_TYPE_DEPTH);
    let mut seq = 1;
    for levels in 1..=limit {
        seq += 1;
        // Every level so far: the ones before the newest are in the document already, and
        // only the newest is new.
        let answer = send_delta(&mut peer, &d, seq, yjs_delta(nested_arrays(78, levels))).await;
        if levels < limit {
            assert!(
                matches!(answer, ServerMsg::Ack { .. }),
                "level {levels}: {answer:?}"
            );
        } else {
            assert_error(&answer, ErrorCode::InvalidDelta, seq);
        }
    }
    let view = http_get(server.addr, "/v1/docs/deep", None).await;
    assert_eq!(view.status, 200, "{}", view.body);
    assert!(server.is_running(), "the server aborted");
    drop(peer);
    server.terminate().await;

    // A document nested deeper than the limit, stored before the limit existed (written here
    // straight into the store, as an old server would have).
    let store = db.open(StoreConfig::default()).await;
    let stored = doc("stored-deep");
    store
        .append(NewEntry::new(
            stored.clone(),
            &yjs_delta(nested_arrays(79, 20_000)),
            0,
            ReplicaId::new(79).expect("replica"),
            Some("old".into()),
        ))
        .await
        .expect("append");
    store.close().await;
    for _restart in 0..2 {
        let mut server = ChildServer::spawn_binary(&binary, &db.url, &["--no-auth"], "warn").await;
        let view = http_get(server.addr, "/v1/docs/stored-deep", None).await;
        assert_eq!(view.status, 500, "{}", view.body);
        assert_eq!(view.json()["error"], "document_damaged");
        let mut peer = RawPeer::hello(&server.ws_url()).await;
        let _ = peer
            .send(&ClientMsg::Subscribe {
                doc: stored.clone(),
                state: DocState::default(),
            })
            .await;
        match peer.read().await {
            Read::Msg(ServerMsg::Error { code, .. }) => assert_eq!(code, ErrorCode::Internal),
            other => panic!("expected an error for the damaged document, got {other:?}"),
        }
        assert_eq!(http_get(server.addr, "/healthz", None).await.status, 200);
        assert!(server.is_running(), "the server aborted");
        server.terminate().await;
    }
    db.cleanup().await;
}

// --- class 2: memory amplification by re-subscribing ----------------------------------------

/// Before: a read-only token could subscribe to one document again and again on one
/// connection, each time making the server build and queue a full copy (2,000 re-subscribes of
/// a 500 KB document took the process to 1 GB). Now a second subscribe is refused, and a Yjs
/// peer's repeated sync step 1 is paced by its budget and stopped by the byte-bounded outbox.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resubscribing_builds_no_new_full_copies_and_sync_work_is_budgeted() {
    let db = TestDb::new(Kind::Sqlite).await;
    let mut cfg = auth_config(&db);
    cfg.limits.sync_bytes_per_second = 512 * 1024;
    cfg.limits.sync_byte_burst = 2 * 1024 * 1024;
    cfg.limits.outbox_bytes = 2 * 1024 * 1024;
    let server = TestServer::start(cfg).await;
    let d = doc("big");
    let writer = token("writer", Scope::Write);
    let mut w = RawPeer::hello_with_token(&server.ws_url(), Some(&writer)).await;
    subscribed(&mut w, &d).await;
    let mut author = Document::new(ReplicaId::new(9).expect("replica"));
    let big = author
        .text_insert("t", 0, &"x".repeat(300_000))
        .expect("edit");
    assert!(matches!(
        send_delta(&mut w, &d, 1, big).await,
        ServerMsg::Ack { .. }
    ));

    let reader = token("reader", Scope::Read);
    let mut r = RawPeer::hello_with_token(&server.ws_url(), Some(&reader)).await;
    subscribed(&mut r, &d).await;
    for _ in 0..3 {
        let _ = r
            .send(&ClientMsg::Subscribe {
                doc: d.clone(),
                state: DocState::default(),
            })
            .await;
        match r.read().await {
            Read::Msg(ServerMsg::Error { code, .. }) => {
                assert_eq!(code, ErrorCode::AlreadySubscribed)
            }
            other => panic!("expected already_subscribed, got {other:?}"),
        }
    }

    // A Yjs peer that asks for everything 100 times and reads nothing.
    let mut y = YjsPeer::connect(server.addr, "big", Some(&reader)).await;
    for _ in 0..10 {
        let steps: Vec<Vec<u8>> = (0..10).map(|_| yws::encode_sync_step1(&[])).collect();
        if !y.send_frame(&steps).await {
            break;
        }
    }
    let closed = tokio::time::timeout(WAIT, async {
        loop {
            let slow = metric(
                server.addr,
                "lattice_closes_total{reason=\"slow_consumer\"}",
            )
            .await;
            if slow.unwrap_or(0.0) >= 1.0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "the peer that reads nothing was never closed"
    );
    let waits = metric(server.addr, "lattice_sync_budget_waits_total")
        .await
        .expect("metric");
    assert!(waits >= 1.0, "the sync budget never paced the peer");
    drop(y);
    server.shutdown().await;
    db.cleanup().await;
}

// --- class 3: CPU amplification by many messages in one frame -------------------------------

/// Before: the rate limit counted frames, and one frame could carry 20,000 sync step 1
/// messages, each a full diff. Now every message counts: the frame closes the connection with
/// 4029 before any of them is worked on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_of_twenty_thousand_messages_is_over_the_rate_limit() {
    let db = TestDb::new(Kind::Sqlite).await;
    let server = TestServer::start(auth_config(&db)).await;
    let reader = token("reader", Scope::Read);
    let mut y = YjsPeer::connect(server.addr, "cpu", Some(&reader)).await;
    let steps: Vec<Vec<u8>> = (0..20_000).map(|_| yws::encode_sync_step1(&[])).collect();
    assert!(y.send_frame(&steps).await);
    assert_eq!(y.closed().await, Some(4029));
    // A bystander subscribes to another document at once.
    let writer = token("writer", Scope::Write);
    let mut b = RawPeer::hello_with_token(&server.ws_url(), Some(&writer)).await;
    subscribed(&mut b, &doc("other")).await;
    server.shutdown().await;
    db.cleanup().await;
}

// --- class 6: held updates acknowledged although not in the document ------------------------

/// Before: an update that skipped clocks was held back (up to 16 MiB), stored, re-walked by
/// every later delta, and acknowledged although it was not in the document. Now it is refused
/// with `missing_dependencies` (no ack, nothing stored), and the server asks for a resync.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_with_missing_history_is_refused_not_acked_not_stored() {
    let db = TestDb::new(Kind::Sqlite).await;
    let server = TestServer::start(auth_config(&db)).await;
    let admin = token("admin", Scope::Admin);
    let d = doc("gaps");
    let mut peer = RawPeer::hello_with_token(&server.ws_url(), Some(&admin)).await;
    subscribed(&mut peer, &d).await;
    // Client 4242's text starting at clock 5: clocks 0..5 were never sent.
    let gap = text_after_gap(4242);
    let answer = send_delta(&mut peer, &d, 1, yjs_delta(gap.clone())).await;
    assert_error(&answer, ErrorCode::MissingDependencies, 1);
    match peer.read().await {
        Read::Msg(ServerMsg::Sync { delta, .. }) => assert!(delta.is_empty()),
        other => panic!("expected the room's state to resync from, got {other:?}"),
    }
    let meta = http_get(server.addr, "/v1/admin/docs/gaps", Some(&admin)).await;
    assert_eq!(meta.status, 404, "nothing may be stored: {}", meta.body);

    // A y-websocket peer gets the room's sync step 1 instead, and stays connected.
    let mut y = YjsPeer::connect(server.addr, "gaps", Some(&admin)).await;
    assert!(y.send_frame(&[yws::encode_sync_step1(&[])]).await);
    let _ = y.read().await;
    assert!(y.send_frame(&[yws::encode_update(&gap)]).await);
    let asked = tokio::time::timeout(WAIT, async {
        loop {
            match y.read().await {
                YjsRead::Messages(m)
                    if m.iter().any(|m| matches!(m, YMessage::SyncStep1 { .. })) =>
                {
                    return;
                }
                YjsRead::Messages(_) => continue,
                YjsRead::Closed(code) => panic!("closed with {code:?}"),
            }
        }
    })
    .await;
    assert!(asked.is_ok(), "no sync step 1 after the refused update");
    server.shutdown().await;
    db.cleanup().await;
}

// --- class 7: an acknowledgement that was not kept -------------------------------------------

/// Before: a writer could send garbage-collected ranges under another writer's client id for
/// clocks that writer had not used yet; the victim's next edit was then "already known",
/// acknowledged, and never appeared. Now content under a client id another principal
/// introduced is refused, and the victim's acknowledged edit is in the stored document.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_cannot_claim_the_clocks_of_another_writers_client_id() {
    let db = TestDb::new(Kind::Sqlite).await;
    let server = TestServer::start(auth_config(&db)).await;
    let d = doc("claims");
    let alice_token = token("alice", Scope::Write);
    let mallory_token = token("mallory", Scope::Write);
    let replica = 0x00A1_1CE0;
    let mut alice_doc = Document::new(ReplicaId::new(replica).expect("replica"));
    let mut alice = RawPeer::hello_with_token(&server.ws_url(), Some(&alice_token)).await;
    subscribed(&mut alice, &d).await;
    let hello = alice_doc.text_insert("t", 0, "hello").expect("edit");
    assert!(matches!(
        send_delta(&mut alice, &d, 1, hello).await,
        ServerMsg::Ack { .. }
    ));

    let mut mallory = RawPeer::hello_with_token(&server.ws_url(), Some(&mallory_token)).await;
    subscribed(&mut mallory, &d).await;
    let gc = gc_range(replica, 5, 1_000);
    let answer = send_delta(&mut mallory, &d, 1, yjs_delta(gc)).await;
    assert_error(&answer, ErrorCode::InvalidDelta, 1);

    let world = alice_doc.text_insert("t", 5, " world").expect("edit");
    let answer = send_delta(&mut alice, &d, 2, world).await;
    assert!(
        matches!(answer, ServerMsg::Ack { seq: 2, .. }),
        "{answer:?}"
    );
    let admin = token("admin", Scope::Admin);
    let view = http_get(server.addr, "/v1/docs/claims", Some(&admin)).await;
    assert_eq!(view.json()["texts"]["t"], "hello world");
    server.shutdown().await;
    // After a restart the owner is still known.
    let server = TestServer::start(auth_config(&db)).await;
    let mut mallory = RawPeer::hello_with_token(&server.ws_url(), Some(&mallory_token)).await;
    subscribed(&mut mallory, &d).await;
    let gc = gc_range(replica, 11, 1_000);
    let answer = send_delta(&mut mallory, &d, 1, yjs_delta(gc)).await;
    assert_error(&answer, ErrorCode::InvalidDelta, 1);
    server.shutdown().await;
    db.cleanup().await;
}

// --- class 8: slots held without a token -----------------------------------------------------

/// Before: a connection slot was taken before authentication and held through the hello
/// deadline, so 50 idle upgrades with `--max-connections 50` locked every real user out.
/// Now connections without a token hold slots of their own; a user whose token comes with
/// the upgrade gets an authenticated slot whatever they do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_upgrades_without_a_token_cannot_take_users_slots() {
    let db = TestDb::new(Kind::Sqlite).await;
    let mut cfg = auth_config(&db);
    cfg.limits.max_connections = 5;
    cfg.limits.max_unauthenticated = 20;
    cfg.limits.hello_timeout = Duration::from_secs(60);
    let server = TestServer::start(cfg).await;
    let mut idle = Vec::new();
    for _ in 0..20 {
        idle.push(RawPeer::connect(&server.ws_url()).await);
    }
    // The unauthenticated slots are full: one more upgrade without a token gets 503.
    let refused = tokio_tungstenite::connect_async(server.ws_url()).await;
    assert!(refused.is_err(), "a 21st idle upgrade was admitted");
    // Users with their token on the upgrade still get in, up to max_connections.
    let user = token("user", Scope::Write);
    let mut users = Vec::new();
    for _ in 0..5 {
        let mut p = RawPeer::connect_bearer(&server.ws_url(), &user).await;
        match p.send_hello(None).await {
            Read::Msg(ServerMsg::Welcome { .. }) => users.push(p),
            other => panic!("a user was kept out: {other:?}"),
        }
    }
    assert_eq!(metric(server.addr, "lattice_connections").await, Some(5.0));
    assert_eq!(
        metric(server.addr, "lattice_unauthenticated_connections").await,
        Some(20.0)
    );
    drop(idle);
    drop(users);
    server.shutdown().await;
    db.cleanup().await;
}

/// Before: `axum::serve` set no header-read deadline; 200 half-sent requests stayed open for
/// more than 75 s. Now a request's headers must arrive within `header_read_timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_requests_are_closed_at_the_header_deadline() {
    let db = TestDb::new(Kind::Sqlite).await;
    let mut cfg = config(&db);
    cfg.limits.header_read_timeout = Duration::from_millis(500);
    let server = TestServer::start(cfg).await;
    let mut sockets = Vec::new();
    for _ in 0..50 {
        let mut s = tokio::net::TcpStream::connect(server.addr)
            .await
            .expect("connect");
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            .await
            .expect("write");
        sockets.push(s);
    }
    for mut s in sockets {
        let mut buf = [0u8; 256];
        // The server answers the timeout (408 or a bare close) and closes: read reaches EOF.
        let closed = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => continue,
                }
            }
        })
        .await;
        assert!(
            closed.is_ok(),
            "a half-sent request was still open after 10 s"
        );
    }
    assert_eq!(http_get(server.addr, "/healthz", None).await.status, 200);
    server.shutdown().await;
    db.cleanup().await;
}

// --- class 9: the smaller ones ---------------------------------------------------------------

/// Before: WebSocket pings were not counted by the rate limiter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pings_count_against_the_rate_limit() {
    let db = TestDb::new(Kind::Sqlite).await;
    let mut cfg = config(&db);
    cfg.limits.messages_per_second = 5;
    cfg.limits.message_burst = 10;
    let server = TestServer::start(cfg).await;
    let mut p = RawPeer::hello(&server.ws_url()).await;
    for _ in 0..100 {
        if p.ws.send(Message::Ping(vec![1].into())).await.is_err() {
            break;
        }
    }
    loop {
        match p.read().await {
            Read::Msg(ServerMsg::Error { code, .. }) => assert_eq!(code, ErrorCode::RateLimited),
            Read::Msg(other) => panic!("unexpected {other:?}"),
            Read::Closed(code) => {
                assert_eq!(code, Some(4029));
                break;
            }
        }
    }
    server.shutdown().await;
    db.cleanup().await;
}

/// Before: a connection that had not authenticated could make the server buffer a first
/// frame of about 2 MiB (twice the frame limit) before the 64 KiB hello limit applied. Now the
/// limit applies to the bytes as they arrive: a frame header declaring more is refused at once
/// (1009), without waiting for its payload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_first_message_is_refused_as_its_header_arrives() {
    let db = TestDb::new(Kind::Sqlite).await;
    let mut cfg = auth_config(&db);
    cfg.limits.hello_timeout = Duration::from_secs(15);
    let server = TestServer::start(cfg).await;
    let mut p = RawPeer::connect(&server.ws_url()).await;
    // A masked binary frame declaring 1.5 MiB, of which only 100 KiB are sent.
    let declared: u64 = 1_536 * 1024;
    let mut raw = vec![0x82, 0x80 | 127];
    raw.extend(declared.to_be_bytes());
    raw.extend([1, 2, 3, 4]);
    raw.extend(vec![0u8; 100 * 1024]);
    let tcp = match p.ws.get_mut() {
        tokio_tungstenite::MaybeTlsStream::Plain(s) => s,
        _ => unreachable!("plain ws:// connection"),
    };
    let _ = tcp.write_all(&raw).await;
    let started = std::time::Instant::now();
    loop {
        match p.read().await {
            Read::Msg(ServerMsg::Error { code, .. }) => assert_eq!(code, ErrorCode::FrameTooLarge),
            Read::Msg(other) => panic!("unexpected {other:?}"),
            Read::Closed(code) => {
                assert_eq!(code, Some(1009));
                break;
            }
        }
    }
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "the server waited for the rest of the frame"
    );
    server.shutdown().await;
    db.cleanup().await;
}

/// Before: bytes after the end of a Yjs update were accepted, stored and relayed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_after_the_end_of_a_yjs_update_are_refused() {
    let db = TestDb::new(Kind::Sqlite).await;
    let server = TestServer::start(config(&db)).await;
    let d = doc("trailing");
    let mut p = RawPeer::hello(&server.ws_url()).await;
    subscribed(&mut p, &d).await;
    let mut delta = Document::new(ReplicaId::new(3).expect("replica"))
        .text_insert("t", 0, "x")
        .expect("edit");
    delta.yjs.extend([0xde, 0xad]);
    let answer = send_delta(&mut p, &d, 1, delta).await;
    assert_error(&answer, ErrorCode::InvalidDelta, 1);
    server.shutdown().await;
    db.cleanup().await;
}

/// Before: a counter map with string keys was a malformed frame that closed the whole
/// connection (4000); now only that delta is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delta_whose_body_does_not_decode_is_refused_alone() {
    let db = TestDb::new(Kind::Sqlite).await;
    let server = TestServer::start(config(&db)).await;
    let d = doc("bodies");
    let mut p = RawPeer::hello(&server.ws_url()).await;
    subscribed(&mut p, &d).await;
    // {type: "delta", doc: "bodies", seq: 1, delta: {counters: {likes: {"7": 1}}}}
    let frame = rmp_serde::to_vec_named(&serde_json::json!({
        "type": "delta",
        "doc": "bodies",
        "seq": 1,
        "delta": {"counters": {"likes": {"7": 1}}},
    }))
    .expect("encode");
    assert!(p.send_bytes(frame).await);
    match p.read().await {
        Read::Msg(ServerMsg::Error { code, doc, seq, .. }) => {
            assert_eq!(code, ErrorCode::InvalidDelta);
            assert_eq!(doc, Some(d.clone()));
            assert_eq!(seq, Some(1));
        }
        other => panic!("expected invalid_delta, got {other:?}"),
    }
    // The connection is still open and works.
    let _ = p.send(&ClientMsg::Ping { nonce: 7 }).await;
    assert!(matches!(
        p.read().await,
        Read::Msg(ServerMsg::Pong { nonce: 7 })
    ));
    server.shutdown().await;
    db.cleanup().await;
}

/// Reads until `step1s` sync step 1 messages the peer sent are answered: by then the room has
/// handled everything the peer sent before the last one.
async fn handled(peer: &mut YjsPeer, step1s: usize) {
    let mut answered = 0;
    let done = tokio::time::timeout(WAIT, async {
        while answered < step1s {
            match peer.read().await {
                YjsRead::Messages(m) => {
                    answered += m
                        .iter()
                        .filter(|m| matches!(m, YMessage::SyncStep2 { .. }))
                        .count();
                }
                YjsRead::Closed(code) => panic!("closed ({code:?}) before its answers"),
            }
        }
    })
    .await;
    assert!(done.is_ok(), "a sync step 1 was never answered");
}

/// The awareness states `observer` sees under `client`, until one contains `marker`; and
/// whether it came within the wait.
async fn states_of(observer: &mut YjsPeer, client: u64, marker: &str) -> (Vec<String>, bool) {
    let mut names = Vec::new();
    let seen = tokio::time::timeout(WAIT, async {
        loop {
            if let YjsRead::Messages(messages) = observer.read().await {
                for m in messages {
                    if let YMessage::Awareness { entries } = m {
                        for e in entries.into_iter().filter(|e| e.client == client) {
                            let done = e.state_json.contains(marker);
                            names.push(e.state_json);
                            if done {
                                return;
                            }
                        }
                    }
                }
            }
        }
    })
    .await;
    (names, seen.is_ok())
}

/// Before: a Yjs peer could publish awareness under another user's awareness client id, and
/// every other client then showed its state as that user's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn awareness_cannot_be_published_under_another_users_client_id() {
    let db = TestDb::new(Kind::Sqlite).await;
    let server = TestServer::start(auth_config(&db)).await;
    let alice_token = token("alice", Scope::Write);
    let mallory_token = token("mallory", Scope::Write);
    let observer_token = token("observer", Scope::Read);
    let mut observer = YjsPeer::connect(server.addr, "aware", Some(&observer_token)).await;
    assert!(observer.send_frame(&[yws::encode_sync_step1(&[])]).await);
    let mut alice = YjsPeer::connect(server.addr, "aware", Some(&alice_token)).await;
    assert!(alice.send_frame(&[yws::encode_sync_step1(&[])]).await);
    let entry = |name: &str, clock: u32| AwarenessEntry {
        client: 777,
        clock,
        state_json: format!("{{\"name\":\"{name}\"}}"),
    };
    assert!(
        alice
            .send_frame(&[yws::encode_awareness(&[entry("alice", 1)])])
            .await
    );
    // Alice's entry is in the room before Mallory connects.
    assert!(alice.send_frame(&[yws::encode_sync_step1(&[])]).await);
    handled(&mut alice, 2).await;
    let mut mallory = YjsPeer::connect(server.addr, "aware", Some(&mallory_token)).await;
    assert!(mallory.send_frame(&[yws::encode_sync_step1(&[])]).await);
    assert!(
        mallory
            .send_frame(&[yws::encode_awareness(&[entry("mallory", 9)])])
            .await
    );
    assert!(mallory.send_frame(&[yws::encode_sync_step1(&[])]).await);
    handled(&mut mallory, 2).await;
    // A marker after Mallory's attempt: once the observer sees it, Mallory's entry would have
    // arrived before it.
    assert!(
        alice
            .send_frame(&[yws::encode_awareness(&[entry("alice-2", 2)])])
            .await
    );
    let (names, seen) = states_of(&mut observer, 777, "alice-2").await;
    assert!(
        seen,
        "the observer never saw alice's second state: {names:?}"
    );
    assert!(
        names.iter().all(|n| !n.contains("mallory")),
        "mallory spoke for alice's client id: {names:?}"
    );
    server.shutdown().await;
    db.cleanup().await;
}

/// Before: the moment a Yjs client left, anyone could take its awareness client id (an
/// impostor racing a user's reconnect, or its last message). Now the id stays its principal's
/// for a presence TTL after it leaves, and that principal takes it back on reconnecting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leaving_users_awareness_id_stays_theirs_for_a_presence_ttl() {
    let db = TestDb::new(Kind::Sqlite).await;
    let server = TestServer::start(auth_config(&db)).await;
    let alice_token = token("alice", Scope::Write);
    let mallory_token = token("mallory", Scope::Write);
    let observer_token = token("observer", Scope::Read);
    let mut observer = YjsPeer::connect(server.addr, "left", Some(&observer_token)).await;
    assert!(observer.send_frame(&[yws::encode_sync_step1(&[])]).await);
    let entry = |name: &str, clock: u32| AwarenessEntry {
        client: 777,
        clock,
        state_json: format!("{{\"name\":\"{name}\"}}"),
    };
    let mut alice = YjsPeer::connect(server.addr, "left", Some(&alice_token)).await;
    assert!(alice.send_frame(&[yws::encode_sync_step1(&[])]).await);
    assert!(
        alice
            .send_frame(&[yws::encode_awareness(&[entry("alice", 1)])])
            .await
    );
    assert!(alice.send_frame(&[yws::encode_sync_step1(&[])]).await);
    handled(&mut alice, 2).await;
    drop(alice);
    // Mallory tries the id Alice just left.
    let mut mallory = YjsPeer::connect(server.addr, "left", Some(&mallory_token)).await;
    assert!(mallory.send_frame(&[yws::encode_sync_step1(&[])]).await);
    assert!(
        mallory
            .send_frame(&[yws::encode_awareness(&[entry("mallory", 9)])])
            .await
    );
    assert!(mallory.send_frame(&[yws::encode_sync_step1(&[])]).await);
    handled(&mut mallory, 2).await;
    // Alice comes back and takes her id again.
    let mut alice = YjsPeer::connect(server.addr, "left", Some(&alice_token)).await;
    assert!(alice.send_frame(&[yws::encode_sync_step1(&[])]).await);
    assert!(
        alice
            .send_frame(&[yws::encode_awareness(&[entry("alice-back", 10)])])
            .await
    );
    let (names, seen) = states_of(&mut observer, 777, "alice-back").await;
    assert!(seen, "alice did not get her id back: {names:?}");
    assert!(
        names.iter().all(|n| !n.contains("mallory")),
        "mallory took alice's id as she left: {names:?}"
    );
    server.shutdown().await;
    db.cleanup().await;
}

/// Before: a connection task that panicked (a token with `exp` near `u64::MAX` made it
/// overflow a time computation) never decremented the connections gauge. Now the gauges go
/// down when a connection ends, however it ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_gauges_return_to_zero_whatever_the_token() {
    let db = TestDb::new(Kind::Sqlite).await;
    let server = TestServer::start(auth_config(&db)).await;
    let far = keys()
        .mint_claims(
            &Claims {
                sub: "forever".into(),
                docs: vec!["*".into()],
                scope: Scope::Write,
                exp: u64::MAX - 1,
                iat: None,
            },
            None,
        )
        .expect("mint");
    for t in [far.as_str(), token("user", Scope::Write).as_str()] {
        let mut p = RawPeer::connect(&server.ws_url()).await;
        let _ = p.send_hello(Some(t)).await;
        let _ = p.ws.close(None).await;
        let _ = p.read_within(Duration::from_secs(2)).await;
    }
    let zero = tokio::time::timeout(WAIT, async {
        loop {
            let open = metric(server.addr, "lattice_connections").await;
            let pre = metric(server.addr, "lattice_unauthenticated_connections").await;
            if open == Some(0.0) && pre == Some(0.0) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(
        zero.is_ok(),
        "a gauge stayed up after every connection ended"
    );
    assert_eq!(http_get(server.addr, "/healthz", None).await.status, 200);
    server.shutdown().await;
    db.cleanup().await;
}
