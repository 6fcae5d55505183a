//! The HTTP transports (docs/http-api.md) against a real server and SQLite file: SSE readers
//! get a `sync` then each committed entry once, and resume by `Last-Event-ID` with exactly
//! what they missed; long polls wake on a commit; HTTP writes are answered after commit and
//! are retry-safe by `Idempotency-Key`; bad input gets a clear 4xx and stores nothing.

use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use lattice_engine::protocol::ServerMsg;
use lattice_engine::{Delta, Document, ReplicaId};
use lattice_server::auth::Scope;
use lattice_server::store::encode_delta;
use lattice_tests::http_support::{Answer, Sse, send};
use lattice_tests::server_support::TestServer;
use lattice_tests::store_support::{Kind, TestDb};

lattice_tests::auth_helpers!("k1:http-transports-secret-0123456789abcdef");

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// POSTs `delta` as MessagePack, with an optional idempotency key.
async fn post_delta(
    server: &TestServer,
    doc: &str,
    tok: &str,
    delta: &Delta,
    key: Option<&str>,
) -> Answer {
    let auth = bearer(tok);
    let mut headers = vec![
        ("Authorization", auth.as_str()),
        ("Content-Type", "application/msgpack"),
    ];
    if let Some(key) = key {
        headers.push(("Idempotency-Key", key));
    }
    send(
        server.addr,
        "POST",
        &format!("/v1/updates/{doc}"),
        &headers,
        &encode_delta(delta),
    )
    .await
}

async fn head_seq(server: &TestServer, doc: &str) -> u64 {
    let admin = token("admin", Scope::Admin);
    let auth = bearer(&admin);
    let a = get(server, &format!("/v1/admin/docs/{doc}"), &auth).await;
    if a.status == 404 {
        return 0;
    }
    a.json()["head_seq"].as_u64().expect("head_seq")
}

/// `GET path` with `auth` as the `Authorization` header.
async fn get(server: &TestServer, path: &str, auth: &str) -> Answer {
    send(server.addr, "GET", path, &[("Authorization", auth)], b"").await
}

fn writer() -> Document {
    Document::new(ReplicaId::new(0x5e5e).expect("replica"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_gives_a_sync_then_each_entry_once_and_resumes_exactly_after_last_event_id() {
    let db = TestDb::new(Kind::Sqlite).await;
    let server = TestServer::start(auth_config(&db)).await;
    let (reader, write) = (token("reader", Scope::Read), token("writer", Scope::Write));
    let mut author = writer();
    // Two entries before the reader comes: they arrive in its sync.
    for i in 0..2 {
        let d = author.text_insert("t", i, "a").expect("edit");
        assert_eq!(
            post_delta(&server, "sse", &write, &d, None).await.status,
            200
        );
    }
    let path = format!("/v1/events/sse?token={reader}");
    let mut sse = Sse::open(server.addr, &path, &[]).await;
    assert_eq!(sse.status, 200);
    assert_eq!(sse.header("content-type"), Some("text/event-stream"));
    assert_eq!(sse.header("x-accel-buffering"), Some("no"));
    let sync = sse.next().await;
    assert_eq!(sync.event, "sync");
    assert_eq!(sync.id, Some(2));
    let mut mirror = Document::new(ReplicaId::new(0x77).expect("replica"));
    let apply = |mirror: &mut Document, data: &serde_json::Value| {
        let bytes = STANDARD
            .decode(data["frame"].as_str().expect("frame"))
            .expect("base64");
        let delta = match ServerMsg::decode(&bytes, usize::MAX).expect("a protocol message") {
            ServerMsg::Sync { delta, .. } | ServerMsg::Delta { delta, .. } => delta,
            other => panic!("not a sync or delta: {other:?}"),
        };
        mirror.apply(&delta).expect("applies");
    };
    apply(&mut mirror, &sync.data);
    assert_eq!(mirror.text("t"), "aa");
    // Live entries, one event each, ids = their seqs.
    for i in 2..5 {
        let d = author.text_insert("t", i, "b").expect("edit");
        let answer = post_delta(&server, "sse", &write, &d, None).await;
        assert_eq!(answer.json()["seq"], u64::from(i) + 1);
        let e = sse.next().await;
        assert_eq!((e.event.as_str(), e.id), ("delta", Some(u64::from(i) + 1)));
        assert!(e.data["update"].as_str().is_some_and(|u| !u.is_empty()));
        apply(&mut mirror, &e.data);
    }
    assert_eq!(mirror.text("t"), "aabbb");
    drop(sse);
    // Missed while away: seqs 6..=8.
    for i in 5..8 {
        let d = author.text_insert("t", i, "c").expect("edit");
        assert_eq!(
            post_delta(&server, "sse", &write, &d, None).await.status,
            200
        );
    }
    let mut sse = Sse::open(server.addr, &path, &[("Last-Event-ID", "5")]).await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        let e = sse.next().await;
        assert_eq!(e.event, "delta", "a resume sends no sync: {e:?}");
        ids.push(e.id.expect("id"));
        apply(&mut mirror, &e.data);
    }
    assert_eq!(ids, vec![6, 7, 8]);
    // Then live, and nothing twice.
    let d = author.text_insert("t", 8, "d").expect("edit");
    assert_eq!(
        post_delta(&server, "sse", &write, &d, None).await.status,
        200
    );
    let live = sse.next().await;
    assert_eq!(live.id, Some(9));
    apply(&mut mirror, &live.data);
    assert!(sse.next_within(Duration::from_millis(300)).await.is_none());
    assert_eq!(mirror.text("t"), "aabbbcccd");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_readers_see_each_others_presence_posted_over_http() {
    let db = TestDb::new(Kind::Sqlite).await;
    let server = TestServer::start(auth_config(&db)).await;
    let (ann, bob) = (token("ann", Scope::Read), token("bob", Scope::Read));
    let mut a = Sse::open(server.addr, &format!("/v1/events/p?token={ann}"), &[]).await;
    let a_peer = a.next().await.data["peer"].as_u64().expect("peer");
    let mut b = Sse::open(server.addr, &format!("/v1/events/p?token={bob}"), &[]).await;
    assert_eq!(b.next().await.event, "sync");
    let body = format!(r#"{{"peer":{a_peer},"state":{{"name":"Ann"}}}}"#);
    let presence = |tok: String| {
        let (addr, body) = (server.addr, body.clone());
        async move {
            let auth = bearer(&tok);
            let headers = [
                ("Authorization", auth.as_str()),
                ("Content-Type", "application/json"),
            ];
            send(addr, "POST", "/v1/presence/p", &headers, body.as_bytes()).await
        }
    };
    let posted = presence(ann.clone()).await;
    let text = String::from_utf8_lossy(&posted.body).into_owned();
    assert_eq!(posted.status, 200, "{text}");
    let e = b.next().await;
    assert_eq!(e.event, "presence");
    assert_eq!(e.data["state"]["name"], "Ann");
    assert_eq!(e.data["peer"], a_peer);
    // Bob cannot speak for Ann's stream.
    let forged = presence(bob.clone()).await;
    assert_eq!(forged.status, 404);
    assert_eq!(forged.json()["error"], "unknown_peer");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_answers_at_once_when_behind_and_wakes_on_a_commit() {
    let db = TestDb::new(Kind::Sqlite).await;
    let server = TestServer::start(auth_config(&db)).await;
    let (reader, write) = (token("reader", Scope::Read), token("writer", Scope::Write));
    let mut author = writer();
    let d = author.text_insert("t", 0, "x").expect("edit");
    assert_eq!(
        post_delta(&server, "lp", &write, &d, None).await.status,
        200
    );
    // Without `after`: a sync.
    let first = send(
        server.addr,
        "GET",
        &format!("/v1/updates/lp?token={reader}"),
        &[],
        b"",
    )
    .await;
    assert_eq!(first.status, 200);
    let body = first.json();
    assert_eq!(body["events"][0]["type"], "sync");
    assert_eq!(body["next_after"], 1);
    // Nothing after 1: waits, then 204 naming the same seq.
    let idle = send(
        server.addr,
        "GET",
        &format!("/v1/updates/lp?after=1&wait_ms=200&token={reader}"),
        &[],
        b"",
    )
    .await;
    assert_eq!(idle.status, 204);
    assert_eq!(idle.header("lattice-next-after"), Some("1"));
    // A waiting poll wakes on a commit.
    let addr = server.addr;
    let path = format!("/v1/updates/lp?after=1&wait_ms=10000&token={reader}");
    let poll = tokio::spawn(async move {
        let answer = send(addr, "GET", &path, &[], b"").await;
        (answer, Instant::now())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let d = author.text_insert("t", 1, "y").expect("edit");
    let committed = post_delta(&server, "lp", &write, &d, None).await;
    let acked_at = Instant::now();
    assert_eq!(committed.status, 200);
    let (answer, woke_at) = poll.await.expect("poll");
    assert_eq!(answer.status, 200);
    let body = answer.json();
    assert_eq!(body["events"][0]["type"], "delta");
    assert_eq!(body["events"][0]["seq"], 2);
    assert_eq!(body["next_after"], 2);
    let lag = woke_at.saturating_duration_since(acked_at);
    eprintln!("long poll answered {lag:?} after the writer's ack");
    assert!(lag < Duration::from_secs(2), "{lag:?}");
    // Behind: at once.
    let behind = send(
        server.addr,
        "GET",
        &format!("/v1/updates/lp?after=0&token={reader}"),
        &[],
        b"",
    )
    .await;
    let seqs: Vec<u64> = behind.json()["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["seq"].as_u64().expect("seq"))
        .collect();
    assert_eq!(seqs, vec![1, 2]);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_is_answered_after_commit_and_a_retry_with_its_key_is_not_applied_twice() {
    let db = TestDb::new(Kind::Sqlite).await;
    let server = TestServer::start(auth_config(&db)).await;
    let write = token("writer", Scope::Write);
    let mut author = writer();
    let bump = author.counter_increment("clicks", 5).expect("increment");
    let first = post_delta(&server, "idem", &write, &bump, Some("k-1")).await;
    assert_eq!(first.status, 200);
    assert_eq!(first.json()["seq"], 1);
    assert_eq!(first.json()["changed"], true);
    let again = post_delta(&server, "idem", &write, &bump, Some("k-1")).await;
    assert_eq!(again.json(), first.json());
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(head_seq(&server, "idem").await, 1, "the retry took no seq");
    // The key with another body is refused.
    let other = author.counter_increment("clicks", 1).expect("increment");
    let reused = post_delta(&server, "idem", &write, &other, Some("k-1")).await;
    assert_eq!(reused.status, 409);
    assert_eq!(reused.json()["error"], "idempotency_key_reused");
    // A raw Yjs update is a write too.
    let text = author.text_insert("t", 0, "hi").expect("edit");
    let auth = bearer(&write);
    let headers = [
        ("Authorization", auth.as_str()),
        ("Content-Type", "application/octet-stream"),
    ];
    let yjs = send(server.addr, "POST", "/v1/updates/idem", &headers, &text.yjs).await;
    assert_eq!(yjs.json()["seq"], 2);
    let view = get(&server, "/v1/docs/idem", &auth).await;
    assert_eq!(view.json()["counters"]["clicks"], 5);
    assert_eq!(view.json()["texts"]["t"], "hi");
    // The state as one Yjs update, and as what a state vector lacks (nothing).
    let state = get(&server, "/v1/state/idem", &auth).await;
    assert_eq!(
        state.header("content-type"),
        Some("application/octet-stream")
    );
    assert_eq!(state.header("lattice-seq"), Some("2"));
    let mut fresh = Document::new(ReplicaId::new(0x99).expect("replica"));
    fresh
        .apply(&Delta {
            yjs: state.body.clone(),
            ..Delta::default()
        })
        .expect("a Yjs update");
    assert_eq!(fresh.text("t"), "hi");
    let sv = STANDARD.encode(fresh.state().yjs);
    let lacks = get(&server, &format!("/v1/state/idem?sv={sv}"), &auth).await;
    assert!(
        lacks.body.len() < state.body.len(),
        "only what the state lacks"
    );
    server.shutdown().await;
}

/// One request that must be refused: what it is, its method, path, headers (`W`/`R` stand
/// for the writer's and the reader's bearer token), body, and the status and error expected.
struct Refused {
    what: &'static str,
    method: &'static str,
    path: &'static str,
    headers: &'static [(&'static str, &'static str)],
    body: Vec<u8>,
    status: u16,
    error: &'static str,
}

const W: &str = "W";
const R: &str = "R";

fn refused(
    what: &'static str,
    (method, path): (&'static str, &'static str),
    headers: &'static [(&'static str, &'static str)],
    body: Vec<u8>,
    (status, error): (u16, &'static str),
) -> Refused {
    Refused {
        what,
        method,
        path,
        headers,
        body,
        status,
        error,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_http_input_gets_a_clear_4xx_and_stores_nothing() {
    let db = TestDb::new(Kind::Sqlite).await;
    let mut cfg = auth_config(&db);
    cfg.limits.max_frame_bytes = 64 * 1024;
    let server = TestServer::start(cfg).await;
    let (reader, write) = (token("reader", Scope::Read), token("writer", Scope::Write));
    let mut author = writer();
    let d = author.text_insert("t", 0, "ok").expect("edit");
    let stored = post_delta(&server, "bad", &write, &d, None).await;
    assert_eq!(stored.status, 200);
    const POST: (&str, &str) = ("POST", "/v1/updates/bad");
    const MSGPACK: &[(&str, &str)] = &[
        ("Authorization", W),
        ("Content-Type", "application/msgpack"),
    ];
    const YJS: &[(&str, &str)] = &[
        ("Authorization", W),
        ("Content-Type", "application/octet-stream"),
    ];
    const AS_READER: &[(&str, &str)] = &[
        ("Authorization", R),
        ("Content-Type", "application/msgpack"),
    ];
    const READER: &[(&str, &str)] = &[("Authorization", R)];
    let gap = lattice_tests::hostile::text_after_gap(4242);
    let cases = [
        refused(
            "wrong content type",
            POST,
            &[("Authorization", W), ("Content-Type", "text/plain")],
            b"hi".to_vec(),
            (415, "unsupported_content_type"),
        ),
        refused(
            "malformed MessagePack",
            POST,
            MSGPACK,
            vec![0x81, 0xa3],
            (400, "malformed_delta"),
        ),
        refused(
            "not a map",
            POST,
            MSGPACK,
            vec![0x01],
            (400, "malformed_delta"),
        ),
        refused("empty body", POST, MSGPACK, Vec::new(), (400, "empty_body")),
        refused(
            "oversize body",
            POST,
            YJS,
            vec![0; 65 * 1024],
            (413, "too_large"),
        ),
        refused(
            "garbage Yjs",
            POST,
            YJS,
            vec![0xff; 16],
            (422, "invalid_delta"),
        ),
        refused(
            "missing history",
            POST,
            YJS,
            gap,
            (409, "missing_dependencies"),
        ),
        refused(
            "read-only token",
            POST,
            AS_READER,
            encode_delta(&d),
            (403, "forbidden"),
        ),
        refused(
            "bad Last-Event-ID",
            ("GET", "/v1/events/bad"),
            &[("Authorization", R), ("Last-Event-ID", "abc")],
            Vec::new(),
            (400, "bad_seq"),
        ),
        refused(
            "after beyond the head",
            ("GET", "/v1/events/bad?after=99"),
            READER,
            Vec::new(),
            (400, "after_beyond_head"),
        ),
        refused(
            "poll beyond the head",
            ("GET", "/v1/updates/bad?after=99"),
            READER,
            Vec::new(),
            (400, "after_beyond_head"),
        ),
        refused(
            "bad state",
            ("GET", "/v1/events/bad?state=%21%21"),
            READER,
            Vec::new(),
            (400, "bad_state"),
        ),
        refused(
            "no token",
            ("GET", "/v1/events/bad"),
            &[],
            Vec::new(),
            (401, "unauthorized"),
        ),
    ];
    let (w, r) = (bearer(&write), bearer(&reader));
    for case in &cases {
        let headers: Vec<(&str, &str)> = case
            .headers
            .iter()
            .map(|(name, value)| match *value {
                W => (*name, w.as_str()),
                R => (*name, r.as_str()),
                v => (*name, v),
            })
            .collect();
        let answer = send(server.addr, case.method, case.path, &headers, &case.body).await;
        let body = String::from_utf8_lossy(&answer.body);
        assert_eq!(answer.status, case.status, "{}: {body}", case.what);
        assert_eq!(answer.json()["error"], case.error, "{}", case.what);
    }
    assert_eq!(head_seq(&server, "bad").await, 1, "nothing was stored");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_requests_share_the_principals_rate_limits() {
    let db = TestDb::new(Kind::Sqlite).await;
    let mut cfg = auth_config(&db);
    cfg.limits.messages_per_second = 1;
    cfg.limits.message_burst = 3;
    let server = TestServer::start(cfg).await;
    let (ann, bob) = (token("ann", Scope::Write), token("bob", Scope::Write));
    let mut author = writer();
    let mut statuses = Vec::new();
    for i in 0..4 {
        let d = author.text_insert("t", i, "x").expect("edit");
        statuses.push(post_delta(&server, "rate", &ann, &d, None).await.status);
    }
    assert_eq!(statuses, vec![200, 200, 200, 429]);
    let limited = send(
        server.addr,
        "GET",
        &format!("/v1/updates/rate?after=0&token={ann}"),
        &[],
        b"",
    )
    .await;
    assert_eq!(limited.status, 429);
    assert_eq!(limited.json()["error"], "rate_limited");
    assert_eq!(limited.header("retry-after"), Some("1"));
    // Another principal has its own budget.
    // (A document of Bob's own: the refused fourth edit never reached the server.)
    let mut bobs = Document::new(ReplicaId::new(0x6b6b).expect("replica"));
    let d = bobs.text_insert("b", 0, "y").expect("edit");
    assert_eq!(
        post_delta(&server, "rate", &bob, &d, None).await.status,
        200
    );
    assert_eq!(head_seq(&server, "rate").await, 4);
    server.shutdown().await;
}

/// An SSE reader that stops reading while a writer floods the document: its bounded queue fills,
/// the stream ends with `close` / `slow_consumer` (not an ever-growing buffer), and a resume
/// from its last id gets every entry it missed, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sse_reader_that_falls_behind_is_ended_and_resumes_without_a_gap() {
    use lattice_engine::protocol::ClientMsg;
    use lattice_tests::server_support::{RawPeer, Read};

    let db = TestDb::new(Kind::Sqlite).await;
    let mut cfg = auth_config(&db);
    cfg.limits.outbox_frames = 8;
    cfg.limits.outbox_bytes = 256 * 1024;
    cfg.limits.bytes_per_second = 256 * 1024 * 1024;
    cfg.limits.byte_burst = 256 * 1024 * 1024;
    let server = TestServer::start(cfg).await;
    let (reader, write) = (token("reader", Scope::Read), token("writer", Scope::Write));
    let path = format!("/v1/events/flood?token={reader}");
    let mut sse = Sse::open(server.addr, &path, &[]).await;
    assert_eq!(sse.next().await.event, "sync");
    // The reader stops reading; the writer sends 200 deltas of 40 KB (≈ 20 MB of events).
    let mut peer = RawPeer::hello_with_token(&server.ws_url(), Some(&write)).await;
    let doc = lattice_engine::DocId::new("flood").expect("doc");
    let _ = peer
        .send(&ClientMsg::Subscribe {
            doc: doc.clone(),
            state: Default::default(),
        })
        .await;
    let mut author = writer();
    let chunk = "x".repeat(40 * 1024);
    let n = 200u64;
    for seq in 1..=n {
        let at = u32::try_from((seq - 1) * 40 * 1024).expect("offset");
        let delta = author.text_insert("t", at, &chunk).expect("edit");
        let _ = peer
            .send(&ClientMsg::Delta {
                doc: doc.clone(),
                seq,
                delta,
            })
            .await;
    }
    loop {
        match peer.read().await {
            Read::Msg(ServerMsg::Ack { seq, .. }) if seq == n => break,
            Read::Msg(_) => continue,
            Read::Closed(code) => panic!("the writer was closed: {code:?}"),
        }
    }
    // Now read: entries, then the end.
    let mut seen = Vec::new();
    let reason = loop {
        let e = sse.next().await;
        match e.event.as_str() {
            "delta" => seen.push(e.id.expect("id")),
            "close" => break e.data["reason"].as_str().expect("reason").to_owned(),
            other => panic!("unexpected {other}"),
        }
    };
    assert_eq!(reason, "slow_consumer");
    assert!(
        (seen.len() as u64) < n,
        "it fell behind: {} of {n}",
        seen.len()
    );
    let last = seen.last().copied().unwrap_or(0);
    let resumed = last.to_string();
    let mut sse = Sse::open(server.addr, &path, &[("Last-Event-ID", resumed.as_str())]).await;
    while seen.last().copied().unwrap_or(0) < n {
        let e = sse.next().await;
        assert_eq!(e.event, "delta");
        seen.push(e.id.expect("id"));
    }
    assert_eq!(
        seen,
        (1..=n).collect::<Vec<_>>(),
        "every entry once, in order"
    );
    server.shutdown().await;
}

/// A client without a stream (long polling) publishes presence as a named session: readers see
/// it, `GET /v1/presence` lists it, and it leaves when it stops renewing (the presence TTL).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_polling_clients_presence_session_is_seen_listed_and_expires() {
    let db = TestDb::new(Kind::Sqlite).await;
    let mut cfg = auth_config(&db);
    cfg.rooms.presence_ttl = Duration::from_secs(1);
    let server = TestServer::start(cfg).await;
    let (ann, bob) = (token("ann", Scope::Read), token("bob", Scope::Read));
    let mut b = Sse::open(server.addr, &format!("/v1/events/s?token={bob}"), &[]).await;
    assert_eq!(b.next().await.event, "sync");
    let auth = bearer(&ann);
    let headers = [
        ("Authorization", auth.as_str()),
        ("Content-Type", "application/json"),
    ];
    let body = br#"{"session":"tab-1","state":{"name":"Ann"},"typing":true}"#;
    let posted = send(server.addr, "POST", "/v1/presence/s", &headers, body).await;
    let text = String::from_utf8_lossy(&posted.body).into_owned();
    assert_eq!(posted.status, 200, "{text}");
    let session_peer = posted.json()["peer"].clone();
    let joined = b.next().await;
    assert_eq!(joined.event, "presence");
    assert_eq!(joined.data["state"]["name"], "Ann");
    assert_eq!(joined.data["typing"], true);
    assert_eq!(joined.data["peer"], session_peer);
    let listed = get(&server, "/v1/presence/s", &auth).await;
    let peers = listed.json()["peers"].clone();
    assert_eq!(peers.as_array().map(Vec::len), Some(1), "{peers}");
    assert_eq!(peers[0]["peer"], joined.data["peer"]);
    // Not renewed: it leaves within the TTL (and the tick).
    let left = loop {
        let e = b
            .next_within(Duration::from_secs(5))
            .await
            .expect("the session leaves");
        if e.event == "presence" && e.data["state"].is_null() {
            break e;
        }
    };
    assert_eq!(left.data["peer"], joined.data["peer"]);
    let listed = get(&server, "/v1/presence/s", &auth).await;
    assert_eq!(listed.json()["peers"], serde_json::json!([]));
    // Naming neither a stream nor a session is refused.
    let bad = send(
        server.addr,
        "POST",
        "/v1/presence/s",
        &headers,
        br#"{"state":{}}"#,
    )
    .await;
    assert_eq!(
        (bad.status, bad.json()["error"].clone()),
        (400, "malformed_presence".into())
    );
    server.shutdown().await;
}
