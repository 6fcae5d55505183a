//! Access control end to end: a real server with known keys (or the real `lattice` binary with
//! none), raw WebSocket peers, native clients and plain HTTP requests. Every case asserts the
//! exact close code or status, and what the document holds afterwards.

use std::time::{Duration, Instant};

use lattice_engine::protocol::{ClientMsg, ErrorCode, ServerMsg};
use lattice_engine::{Delta, DocId, DocState, Document, ReplicaId, Value};
use lattice_server::auth::{Claims, KeySet, Scope};
use lattice_server::config::{AuthConfig, Config};
use lattice_server::store::{Store, StoreConfig};
use lattice_tests::server_support::{
    ChildServer, HttpResponse, RawPeer, Read, TestServer, client, client_with_token, config, doc,
    http_get, lattice_binary, settled,
};
use lattice_tests::store_support::{Kind, TestDb};

const OLD: &str = "k1:old-secret-0123456789abcdef-0123456789";
const NEW: &str = "k2:new-secret-0123456789abcdef-0123456789";
/// Same key id as `NEW`, other secret: what a forger without the secret can produce.
const FORGED: &str = "k2:forged-secret-0123456789abcdef-01234567";

fn keys(items: &[&str]) -> KeySet {
    KeySet::parse(items).expect("keys")
}

fn auth_config(db: &TestDb, keys: KeySet) -> Config {
    let mut c = config(db);
    c.auth = AuthConfig::required(keys);
    // The matrix makes many failed attempts from 127.0.0.1; throttling has its own test.
    c.auth.failed_attempts_per_minute = 10_000;
    c
}

fn token(keys: &KeySet, sub: &str, docs: &[&str], scope: Scope) -> String {
    let docs: Vec<String> = docs.iter().map(|d| d.to_string()).collect();
    keys.mint(sub, &docs, scope, Duration::from_secs(3_600), None)
        .expect("mint")
}

fn expired(keys: &KeySet, docs: &[&str]) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let claims = Claims {
        sub: "late".into(),
        docs: docs.iter().map(|d| d.to_string()).collect(),
        scope: Scope::Admin,
        exp: now - 10,
        iat: Some(now - 3_600),
    };
    keys.mint_claims(&claims, None).expect("mint")
}

fn subscribe(doc: &DocId) -> ClientMsg {
    ClientMsg::Subscribe {
        doc: doc.clone(),
        state: DocState::default(),
    }
}

/// A change to text `t` made by a replica that is not the server's.
fn text_delta(replica: u32, text: &str) -> Delta {
    Document::new(ReplicaId::from_random(replica))
        .text_insert("t", 0, text)
        .expect("edit")
}

async fn expect_error(peer: &mut RawPeer, code: ErrorCode) -> String {
    match peer.read().await {
        Read::Msg(ServerMsg::Error {
            code: got, message, ..
        }) => {
            assert_eq!(got, code, "{message}");
            message
        }
        other => panic!("expected error {code:?}, got {other:?}"),
    }
}

async fn expect_close(peer: &mut RawPeer, code: u16) {
    match peer.read().await {
        Read::Closed(Some(got)) => assert_eq!(got, code),
        other => panic!("expected close {code}, got {other:?}"),
    }
}

/// A hello with `token` is refused: `error{code}` then close `close`.
async fn hello_refused(url: &str, token: Option<&str>, code: ErrorCode, close: u16) {
    let mut p = RawPeer::connect(url).await;
    match p.send_hello(token).await {
        Read::Msg(ServerMsg::Error { code: got, .. }) => assert_eq!(got, code),
        other => panic!("expected error {code:?}, got {other:?}"),
    }
    expect_close(&mut p, close).await;
}

async fn subscribed(peer: &mut RawPeer, d: &DocId) {
    let _ = peer.send(&subscribe(d)).await;
    loop {
        match peer.read().await {
            Read::Msg(ServerMsg::Sync { doc, .. }) if &doc == d => return,
            Read::Msg(ServerMsg::Presence { .. }) => continue,
            other => panic!("expected sync of {d}, got {other:?}"),
        }
    }
}

/// A fresh replica id per write, so that equal texts are distinct changes.
fn next_replica() -> u32 {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1_000);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// Writes `text` to `d` through a raw peer holding `token` and waits for the ack.
async fn write(url: &str, token: &str, d: &DocId, text: &str) {
    let mut p = RawPeer::hello_with_token(url, Some(token)).await;
    subscribed(&mut p, d).await;
    let _ = p
        .send(&ClientMsg::Delta {
            doc: d.clone(),
            seq: 1,
            delta: text_delta(next_replica(), text),
        })
        .await;
    match p.read().await {
        Read::Msg(ServerMsg::Ack { seq: 1, .. }) => {}
        other => panic!("expected ack, got {other:?}"),
    }
}

async fn get(server: &TestServer, path: &str, bearer: Option<&str>) -> HttpResponse {
    http_get(server.addr, path, bearer).await
}

/// The stored JSON view and head of `d`, read with an admin token.
async fn stored(server: &TestServer, admin: &str, d: &str) -> (serde_json::Value, u64) {
    let view = get(server, &format!("/v1/docs/{d}"), Some(admin)).await;
    assert_eq!(view.status, 200, "{}", view.body);
    let meta = get(server, &format!("/v1/admin/docs/{d}"), Some(admin)).await;
    assert_eq!(meta.status, 200, "{}", meta.body);
    (
        view.json(),
        meta.json()["head_seq"].as_u64().expect("head_seq"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_bad_expired_and_unknown_key_tokens_are_refused() {
    let db = TestDb::new(Kind::Sqlite).await;
    let ks = keys(&[NEW]);
    let server = TestServer::start(auth_config(&db, ks.clone())).await;
    let url = server.ws_url();
    let admin = token(&ks, "root", &["*"], Scope::Admin);
    write(&url, &admin, &doc("team-a/doc"), "intact").await;
    let before = stored(&server, &admin, "team-a/doc").await;

    let forged = token(&keys(&[FORGED]), "eve", &["*"], Scope::Admin);
    let unknown_kid = token(&keys(&[OLD]), "eve", &["*"], Scope::Admin);
    let late = expired(&ks, &["*"]);
    let cases: [(&str, Option<&str>); 5] = [
        ("no token", None),
        ("bad signature", Some(&forged)),
        ("unknown key id", Some(&unknown_kid)),
        ("expired", Some(&late)),
        ("not a JWT", Some("garbage")),
    ];
    for (case, t) in cases {
        // WebSocket: error{unauthorized}, then close 4401.
        let mut p = RawPeer::connect(&url).await;
        match p.send_hello(t).await {
            Read::Msg(ServerMsg::Error { code, .. }) => {
                assert_eq!(code, ErrorCode::Unauthorized, "{case}");
            }
            other => panic!("{case}: expected unauthorized, got {other:?}"),
        }
        expect_close(&mut p, 4401).await;
        // HTTP: 401 with a Bearer challenge, on the document and on the admin endpoint.
        for path in ["/v1/docs/team-a/doc", "/v1/admin/docs/team-a/doc", "/"] {
            let r = get(&server, path, t).await;
            assert_eq!(r.status, 401, "{case} {path}: {}", r.body);
            let challenge = r.header("www-authenticate").expect("challenge");
            assert!(
                challenge.starts_with("Bearer realm=\"lattice\""),
                "{challenge}"
            );
            assert_eq!(
                challenge.contains("invalid_token"),
                t.is_some(),
                "{case}: {challenge}"
            );
            if path == "/" {
                // The demo page's refusal is a page that says how to get a token.
                assert!(r.body.contains("needs a token"), "{case}: {}", r.body);
            } else {
                assert_eq!(r.json()["error"], "unauthorized");
            }
        }
    }
    // Nothing was written by any of them.
    assert_eq!(stored(&server, &admin, "team-a/doc").await, before);
    let metrics = get(&server, "/metrics", None).await;
    assert!(
        metrics
            .body
            .contains("lattice_closes_total{reason=\"auth\"} 5"),
        "{}",
        metrics.body
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_travel_in_the_hello_the_header_and_the_query() {
    let db = TestDb::new(Kind::Sqlite).await;
    let ks = keys(&[NEW]);
    let server = TestServer::start(auth_config(&db, ks.clone())).await;
    let url = server.ws_url();
    let good = token(&ks, "alice", &["notes/*"], Scope::Write);
    let bad = token(&keys(&[FORGED]), "eve", &["notes/*"], Scope::Write);
    let d = doc("notes/a");

    // Query parameter.
    let mut p = RawPeer::connect(&format!("{url}?token={good}")).await;
    assert!(matches!(
        p.send_hello(None).await,
        Read::Msg(ServerMsg::Welcome { .. })
    ));
    subscribed(&mut p, &d).await;
    // Authorization header.
    let mut p = RawPeer::connect_bearer(&url, &good).await;
    assert!(matches!(
        p.send_hello(None).await,
        Read::Msg(ServerMsg::Welcome { .. })
    ));
    subscribed(&mut p, &d).await;
    // The hello's token wins over the upgrade request's, both ways.
    let mut p = RawPeer::connect(&format!("{url}?token={bad}")).await;
    assert!(matches!(
        p.send_hello(Some(&good)).await,
        Read::Msg(ServerMsg::Welcome { .. })
    ));
    let mut p = RawPeer::connect_bearer(&url, &good).await;
    assert!(matches!(
        p.send_hello(Some(&bad)).await,
        Read::Msg(ServerMsg::Error {
            code: ErrorCode::Unauthorized,
            ..
        })
    ));
    expect_close(&mut p, 4401).await;

    // HTTP: header and query; the header wins over the query.
    write(&url, &good, &d, "x").await;
    assert_eq!(
        get(&server, "/v1/docs/notes/a", Some(&good)).await.status,
        200
    );
    assert_eq!(
        get(&server, &format!("/v1/docs/notes/a?token={good}"), None)
            .await
            .status,
        200
    );
    assert_eq!(
        get(
            &server,
            &format!("/v1/docs/notes/a?token={good}"),
            Some(&bad)
        )
        .await
        .status,
        401
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_documents_are_refused_without_revealing_existence_and_prefixes_match() {
    let db = TestDb::new(Kind::Sqlite).await;
    let ks = keys(&[NEW]);
    let server = TestServer::start(auth_config(&db, ks.clone())).await;
    let url = server.ws_url();
    let admin = token(&ks, "root", &["*"], Scope::Admin);
    write(&url, &admin, &doc("team-b/secret"), "classified").await;
    write(&url, &admin, &doc("team-a/doc"), "shared").await;
    let secret_before = stored(&server, &admin, "team-b/secret").await;

    let team_a = token(&ks, "alice", &["team-a/*"], Scope::Write);
    let mut p = RawPeer::hello_with_token(&url, Some(&team_a)).await;
    // An existing and a missing document outside the token get the very same answer.
    let mut answers = Vec::new();
    for d in ["team-b/secret", "team-b/nothing", "team-a", "team-ab/x"] {
        let _ = p.send(&subscribe(&doc(d))).await;
        match p.read().await {
            Read::Msg(ServerMsg::Error {
                code,
                message,
                doc: Some(got),
                seq: None,
            }) => {
                assert_eq!(code, ErrorCode::Forbidden, "{d}");
                assert_eq!(got.as_str(), d);
                answers.push(message);
            }
            other => panic!("{d}: expected forbidden, got {other:?}"),
        }
    }
    assert!(answers.iter().all(|m| m == &answers[0]), "{answers:?}");
    // The connection stays usable.
    let _ = p.send(&ClientMsg::Ping { nonce: 1 }).await;
    assert!(matches!(
        p.read().await,
        Read::Msg(ServerMsg::Pong { nonce: 1 })
    ));
    // A delta for the refused document goes nowhere.
    let _ = p
        .send(&ClientMsg::Delta {
            doc: doc("team-b/secret"),
            seq: 1,
            delta: text_delta(5, "tampered"),
        })
        .await;
    expect_error(&mut p, ErrorCode::NotSubscribed).await;
    // Prefix matches: the document itself and deeper ones.
    subscribed(&mut p, &doc("team-a/doc")).await;
    subscribed(&mut p, &doc("team-a/deep/er")).await;
    assert_eq!(
        stored(&server, &admin, "team-b/secret").await,
        secret_before
    );

    // HTTP: 403 for both uncovered documents, with the same body; 404 only inside the token.
    let existing = get(&server, "/v1/docs/team-b/secret", Some(&team_a)).await;
    let missing = get(&server, "/v1/docs/team-b/nothing", Some(&team_a)).await;
    assert_eq!((existing.status, missing.status), (403, 403));
    assert_eq!(existing.body, missing.body);
    let view = get(&server, "/v1/docs/team-a/doc", Some(&team_a)).await;
    assert_eq!(view.status, 200);
    assert_eq!(view.json()["texts"]["t"], "shared");
    assert_eq!(
        get(&server, "/v1/docs/team-a/nothing", Some(&team_a))
            .await
            .status,
        404
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_writes_are_refused_and_reach_neither_store_nor_peers() {
    let db = TestDb::new(Kind::Sqlite).await;
    let ks = keys(&[NEW]);
    let server = TestServer::start(auth_config(&db, ks.clone())).await;
    let url = server.ws_url();
    let admin = token(&ks, "root", &["*"], Scope::Admin);
    let d = doc("team-a/doc");
    write(&url, &admin, &d, "original").await;
    let before = stored(&server, &admin, "team-a/doc").await;

    let writer_token = token(&ks, "alice", &["team-a/*"], Scope::Write);
    let reader_token = token(&ks, "bob", &["team-a/*"], Scope::Read);
    let mut writer = RawPeer::hello_with_token(&url, Some(&writer_token)).await;
    subscribed(&mut writer, &d).await;
    let mut reader = RawPeer::hello_with_token(&url, Some(&reader_token)).await;
    subscribed(&mut reader, &d).await;

    // The write: refused with its seq, the connection stays.
    let _ = reader
        .send(&ClientMsg::Delta {
            doc: d.clone(),
            seq: 1,
            delta: text_delta(66, "vandalism "),
        })
        .await;
    match reader.read().await {
        Read::Msg(ServerMsg::Error {
            code: ErrorCode::Forbidden,
            seq: Some(1),
            doc: Some(got),
            ..
        }) => assert_eq!(got, d),
        other => panic!("expected forbidden, got {other:?}"),
    }
    // Nothing reached the other peer or the store.
    assert!(
        writer
            .read_within(Duration::from_millis(500))
            .await
            .is_none(),
        "the refused write reached a peer"
    );
    assert_eq!(stored(&server, &admin, "team-a/doc").await, before);

    // Presence from a reader is allowed and relayed.
    let _ = reader
        .send(&ClientMsg::Presence {
            doc: d.clone(),
            state: Value::String("bob is reading".into()),
            typing: false,
        })
        .await;
    match writer.read().await {
        Read::Msg(ServerMsg::Presence { state, .. }) => {
            assert_eq!(state, Value::String("bob is reading".into()));
        }
        other => panic!("expected presence, got {other:?}"),
    }
    // And the reader still receives updates.
    let _ = writer
        .send(&ClientMsg::Delta {
            doc: d.clone(),
            seq: 1,
            delta: text_delta(77, "edited "),
        })
        .await;
    assert!(matches!(
        writer.read().await,
        Read::Msg(ServerMsg::Ack { seq: 1, .. })
    ));
    match reader.read().await {
        Read::Msg(ServerMsg::Delta { doc: got, .. }) => assert_eq!(got, d),
        other => panic!("expected the writer's delta, got {other:?}"),
    }
    let (view, head) = stored(&server, &admin, "team-a/doc").await;
    assert_eq!(head, before.1 + 1);
    let text = view["texts"]["t"].as_str().expect("text");
    assert!(text.contains("edited ") && text.contains("original"));
    assert!(!text.contains("vandalism"));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_are_attributed_to_the_token_subject() {
    for kind in [Kind::Sqlite, Kind::Postgres] {
        let db = TestDb::new(kind).await;
        let ks = keys(&[NEW]);
        let server = TestServer::start(auth_config(&db, ks.clone())).await;
        let url = server.ws_url();
        let d = doc("notes/attributed");
        let alice = client_with_token(&url, 1, &token(&ks, "alice", &["notes/*"], Scope::Write));
        let bob = client_with_token(&url, 2, &token(&ks, "bob", &["notes/*"], Scope::Admin));
        for c in [&alice, &bob] {
            c.open(&d, Vec::new()).await.expect("open");
            settled(c, &d).await;
        }
        for i in 0..3 {
            alice
                .edit(&d, |x, _| x.text_insert("t", 0, &format!("a{i}")))
                .await
                .expect("edit");
            settled(&alice, &d).await;
        }
        bob.edit(&d, |x, _| x.text_insert("t", 0, "b"))
            .await
            .expect("edit");
        settled(&bob, &d).await;
        alice.stop();
        bob.stop();
        server.shutdown().await;

        let store = Store::open(&db.url, StoreConfig::default())
            .await
            .expect("store");
        let log = store.read_log(&d, 1, 100).await.expect("log");
        let authors: Vec<Option<&str>> = log.iter().map(|e| e.author.as_deref()).collect();
        assert_eq!(
            authors,
            [Some("alice"), Some("alice"), Some("alice"), Some("bob")],
            "{kind:?}"
        );
        store.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoints_need_the_admin_scope() {
    let db = TestDb::new(Kind::Sqlite).await;
    let ks = keys(&[NEW]);
    let server = TestServer::start(auth_config(&db, ks.clone())).await;
    let writer = token(&ks, "alice", &["team-a/*"], Scope::Write);
    write(&server.ws_url(), &writer, &doc("team-a/doc"), "x").await;
    let path = "/v1/admin/docs/team-a/doc";

    let write_scope = get(&server, path, Some(&writer)).await;
    assert_eq!(write_scope.status, 403, "{}", write_scope.body);
    assert_eq!(write_scope.json()["error"], "forbidden");
    let read_scope = token(&ks, "r", &["team-a/*"], Scope::Read);
    assert_eq!(get(&server, path, Some(&read_scope)).await.status, 403);
    // Admin elsewhere is not admin here.
    let other_admin = token(&ks, "b", &["team-b/*"], Scope::Admin);
    assert_eq!(get(&server, path, Some(&other_admin)).await.status, 403);
    assert_eq!(get(&server, path, None).await.status, 401);

    let admin = token(&ks, "root", &["team-a/*"], Scope::Admin);
    let meta = get(&server, path, Some(&admin)).await;
    assert_eq!(meta.status, 200, "{}", meta.body);
    assert_eq!(meta.json()["id"], "team-a/doc");
    assert_eq!(meta.json()["head_seq"], 1);
    assert_eq!(meta.header("cache-control"), Some("no-store"));
    assert_eq!(
        get(&server, "/v1/admin/docs/team-a/missing", Some(&admin))
            .await
            .status,
        404
    );
    // The write token still reads the document itself.
    assert_eq!(
        get(&server, "/v1/docs/team-a/doc", Some(&writer))
            .await
            .status,
        200
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_keys_verify_until_they_are_removed() {
    let db = TestDb::new(Kind::Sqlite).await;
    let old_keys = keys(&[OLD]);
    let old_token = token(&old_keys, "alice", &["notes/*"], Scope::Write);

    // Rotation: the new key signs, the old one still verifies.
    let rotating = keys(&[NEW, OLD]);
    let new_token = token(&rotating, "alice", &["notes/*"], Scope::Write);
    assert_ne!(old_token, new_token);
    let server = TestServer::start(auth_config(&db, rotating)).await;
    let url = server.ws_url();
    for t in [&old_token, &new_token] {
        write(&url, t, &doc("notes/a"), "k").await;
        assert_eq!(get(&server, "/v1/docs/notes/a", Some(t)).await.status, 200);
    }
    server.shutdown().await;

    // After the old key is removed, its tokens stop working; the new ones keep working.
    let server = TestServer::start(auth_config(&db, keys(&[NEW]))).await;
    let url = server.ws_url();
    hello_refused(&url, Some(&old_token), ErrorCode::Unauthorized, 4401).await;
    assert_eq!(
        get(&server, "/v1/docs/notes/a", Some(&old_token))
            .await
            .status,
        401
    );
    let view = get(&server, "/v1/docs/notes/a", Some(&new_token)).await;
    assert_eq!(view.status, 200);
    assert_eq!(view.json()["texts"]["t"], "kk");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_is_enforced_during_a_live_session() {
    let db = TestDb::new(Kind::Sqlite).await;
    let ks = keys(&[NEW]);
    let server = TestServer::start(auth_config(&db, ks.clone())).await;
    let url = server.ws_url();
    let short = ks
        .mint(
            "alice",
            &["notes/*".to_string()],
            Scope::Write,
            Duration::from_secs(2),
            None,
        )
        .expect("mint");
    let started = Instant::now();
    let mut p = RawPeer::hello_with_token(&url, Some(&short)).await;
    let d = doc("notes/short");
    subscribed(&mut p, &d).await;
    let _ = p
        .send(&ClientMsg::Delta {
            doc: d.clone(),
            seq: 1,
            delta: text_delta(3, "before expiry"),
        })
        .await;
    assert!(matches!(
        p.read().await,
        Read::Msg(ServerMsg::Ack { seq: 1, .. })
    ));
    // `exp` has one-second resolution: the close comes 1–2 s after the mint.
    let message = expect_error(&mut p, ErrorCode::Unauthorized).await;
    assert!(message.contains("expired"), "{message}");
    expect_close(&mut p, 4401).await;
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(900) && elapsed < Duration::from_secs(5),
        "closed after {elapsed:?}"
    );
    // The same token cannot come back.
    hello_refused(&url, Some(&short), ErrorCode::Unauthorized, 4401).await;
    let admin = token(&ks, "root", &["*"], Scope::Admin);
    let (view, head) = stored(&server, &admin, "notes/short").await;
    assert_eq!(
        (view["texts"]["t"].as_str(), head),
        (Some("before expiry"), 1)
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_attempts_are_throttled_per_address() {
    let db = TestDb::new(Kind::Sqlite).await;
    let ks = keys(&[NEW]);
    let mut cfg = auth_config(&db, ks.clone());
    cfg.auth.failed_attempts_per_minute = 3;
    let server = TestServer::start(cfg).await;
    let good = token(&ks, "alice", &["*"], Scope::Admin);
    let forged = token(&keys(&[FORGED]), "eve", &["*"], Scope::Admin);
    // Requests without a token are not guessing attempts and are not counted.
    for _ in 0..5 {
        assert_eq!(get(&server, "/v1/docs/x", None).await.status, 401);
    }
    for _ in 0..3 {
        assert_eq!(get(&server, "/v1/docs/x", Some(&forged)).await.status, 401);
    }
    let throttled = get(&server, "/v1/docs/x", Some(&forged)).await;
    assert_eq!(throttled.status, 429);
    let retry: u64 = throttled
        .header("retry-after")
        .expect("retry-after")
        .parse()
        .expect("seconds");
    assert!((1..=60).contains(&retry), "{retry}");
    // While blocked, a failing attempt is refused with 429 / 4029 on every endpoint...
    hello_refused(
        &server.ws_url(),
        Some(&forged),
        ErrorCode::RateLimited,
        4029,
    )
    .await;
    // ...but a valid token is verified and passes: the block is on failures, not on the address.
    assert_eq!(get(&server, "/v1/docs/x", Some(&good)).await.status, 404);
    let _ = RawPeer::hello_with_token(&server.ws_url(), Some(&good)).await;
    assert_eq!(get(&server, "/v1/docs/x", Some(&forged)).await.status, 429);
    server.shutdown().await;
}

/// Issue 17, class 4: one address (every user behind one proxy) sends garbage tokens at 20 a
/// second. Its failures are throttled, yet all 100 valid requests from the same address, over
/// HTTP and WebSocket hellos, succeed while it is blocked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_tokens_never_lock_out_valid_users_of_the_same_address() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    let db = TestDb::new(Kind::Sqlite).await;
    let ks = keys(&[NEW]);
    let mut cfg = auth_config(&db, ks.clone());
    cfg.auth.failed_attempts_per_minute = 5;
    let server = TestServer::start(cfg).await;
    let url = server.ws_url();
    let good = token(&ks, "alice", &["shared/*"], Scope::Write);
    let d = doc("shared/doc");
    write(&url, &good, &d, "hello").await;

    // Block the address first, so that every valid request below comes from a blocked address.
    let forged = token(&keys(&[FORGED]), "eve", &["*"], Scope::Admin);
    let mut blocked = false;
    for _ in 0..6 {
        if get(&server, "/v1/docs/shared/doc", Some(&forged))
            .await
            .status
            == 429
        {
            blocked = true;
            break;
        }
    }
    assert!(blocked, "five failures a minute should block the sixth");

    // Garbage for the whole run: forged signatures and non-JWTs, over HTTP and WebSocket, at
    // 20 a second from a task of its own, and one more right before every valid request.
    async fn garbage(addr: std::net::SocketAddr, url: &str, forged: &str, i: u32) -> u16 {
        let t = if i.is_multiple_of(2) {
            forged
        } else {
            "not.a.jwt"
        };
        if i.is_multiple_of(3) {
            let mut p = RawPeer::connect(url).await;
            match p.send_hello(Some(t)).await {
                Read::Msg(ServerMsg::Error {
                    code: ErrorCode::RateLimited,
                    ..
                }) => 429,
                Read::Msg(ServerMsg::Error {
                    code: ErrorCode::Unauthorized,
                    ..
                }) => 401,
                other => panic!("garbage hello answered {other:?}"),
            }
        } else {
            http_get(addr, "/v1/docs/shared/doc", Some(t)).await.status
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    let background = {
        let (stop, addr, url, forged) = (stop.clone(), server.addr, url.clone(), forged.clone());
        tokio::spawn(async move {
            let mut answers = Vec::new();
            let mut tick = tokio::time::interval(Duration::from_millis(50));
            for i in 0.. {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                tick.tick().await;
                answers.push(garbage(addr, &url, &forged, i).await);
            }
            answers
        })
    };

    let mut answers = Vec::new();
    for i in 0..100 {
        answers.push(garbage(server.addr, &url, &forged, i).await);
        if i % 2 == 0 {
            let r = get(&server, "/v1/docs/shared/doc", Some(&good)).await;
            assert_eq!(r.status, 200, "valid request {i}: {}", r.body);
            assert_eq!(r.json()["texts"]["t"], "hello");
        } else {
            let mut p = RawPeer::connect(&url).await;
            match p.send_hello(Some(&good)).await {
                Read::Msg(ServerMsg::Welcome { .. }) => {}
                other => panic!("valid hello {i}: expected welcome, got {other:?}"),
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    answers.extend(background.await.expect("garbage task"));
    // Every garbage request was refused, and nearly all throttled (the bucket refills one
    // failure every 12 s, so an occasional 401 is expected).
    assert!(answers.len() > 100, "{answers:?}");
    assert!(
        answers.iter().all(|s| *s == 401 || *s == 429),
        "{answers:?}"
    );
    let throttled = answers.iter().filter(|s| **s == 429).count();
    assert!(throttled * 10 >= answers.len() * 9, "{answers:?}");
    // Valid requests do not lift the block for failures.
    let after = get(&server, "/v1/docs/shared/doc", Some(&forged)).await;
    assert_eq!(after.status, 429, "{}", after.body);
    assert!(after.header("retry-after").is_some());
    server.shutdown().await;
}

/// Issue 17, class 9: a token whose `exp` is near `u64::MAX` (valid "forever") used to panic the
/// connection task (the expiry overflowed `SystemTime`). Such a token is accepted, its expiry is
/// capped far in the future, and the server stays up on every endpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_valid_forever_is_capped_not_a_crash() {
    use futures_util::{SinkExt, StreamExt};
    use lattice_engine::yws::{self, YMessage};
    use tokio_tungstenite::tungstenite::Message;

    let db = TestDb::new(Kind::Sqlite).await;
    let ks = keys(&[NEW]);
    let server = TestServer::start(auth_config(&db, ks.clone())).await;
    let url = server.ws_url();
    let forever = ks
        .mint_claims(
            &Claims {
                sub: "forever".into(),
                docs: vec!["forever/*".into()],
                scope: Scope::Write,
                exp: u64::MAX - 1,
                iat: None,
            },
            None,
        )
        .expect("mint");
    let d = doc("forever/doc");

    // Native protocol: hello, subscribe, a write acknowledged.
    write(&url, &forever, &d, "still here").await;
    // HTTP.
    let view = get(&server, "/v1/docs/forever/doc", Some(&forever)).await;
    assert_eq!(view.status, 200, "{}", view.body);
    assert_eq!(view.json()["texts"]["t"], "still here");
    // The Yjs endpoint: sync step 1 is answered with sync step 2.
    let (mut yjs, _) = tokio_tungstenite::connect_async(format!(
        "{}/{d}?token={forever}",
        url.replace("/v1/sync", "/yjs")
    ))
    .await
    .expect("yjs upgrade");
    yjs.send(Message::Binary(yws::encode_sync_step1(&[]).into()))
        .await
        .expect("send");
    let answered = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(Ok(frame)) = yjs.next().await {
            if let Message::Binary(b) = frame {
                for m in yws::decode_frame(&b, usize::MAX).expect("server frames decode") {
                    match m {
                        YMessage::SyncStep2 { .. } => return true,
                        YMessage::Auth { denied: Some(r) } => panic!("refused: {r}"),
                        _ => {}
                    }
                }
            }
        }
        false
    })
    .await
    .expect("the yjs endpoint answers");
    assert!(answered, "the yjs connection ended without sync step 2");
    drop(yjs);

    // The principal's expiry is far away but finite.
    let left = ks
        .verify(&forever)
        .expect("verifies")
        .time_left()
        .expect("an expiry");
    assert!(left > Duration::from_secs(1_000 * 365 * 86_400), "{left:?}");
    // The server is still up and serves others.
    assert_eq!(get(&server, "/healthz", None).await.status, 200);
    let other = token(&ks, "bob", &["forever/*"], Scope::Read);
    let _ = RawPeer::hello_with_token(&url, Some(&other)).await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_connections_get_a_short_deadline_and_a_small_budget() {
    let db = TestDb::new(Kind::Sqlite).await;
    let ks = keys(&[NEW]);
    let mut cfg = auth_config(&db, ks);
    cfg.limits.hello_timeout = Duration::from_millis(300);
    let server = TestServer::start(cfg).await;
    let url = server.ws_url();
    let started = Instant::now();
    let mut silent = RawPeer::connect(&url).await;
    expect_error(&mut silent, ErrorCode::HelloTimeout).await;
    expect_close(&mut silent, 4002).await;
    assert!(started.elapsed() < Duration::from_secs(3));
    // A first frame over 64 KiB is refused before it is decoded, far below the 1 MiB limit
    // that applies after the hello.
    let mut big = RawPeer::connect(&url).await;
    let _ = big.send_bytes(vec![0x80; 100 * 1024]).await;
    expect_error(&mut big, ErrorCode::FrameTooLarge).await;
    expect_close(&mut big, 1009).await;
    server.shutdown().await;
}

/// The split of a printed URL into what `http_get` needs.
fn path_of(url: &str) -> String {
    let rest = url.strip_prefix("http://").expect("http URL");
    let slash = rest.find('/').expect("path");
    rest[slash..].to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_without_flags_prints_a_working_demo_url_and_admin_token() {
    let db = TestDb::new(Kind::Sqlite).await;
    let server = ChildServer::spawn_with_auth(&db.url, &[]).await;
    let admin = server.printed("admin token:").await;
    let demo_url = server.printed("demo:").await;
    assert!(
        demo_url.starts_with(&format!("http://{}/?doc=demo&token=", server.addr)),
        "{demo_url}"
    );
    let demo_token = demo_url
        .split("token=")
        .nth(1)
        .expect("token in URL")
        .to_string();

    // The URL works; the same page without a token, or with a wrong one, does not.
    let page = http_get(server.addr, &path_of(&demo_url), None).await;
    assert_eq!(page.status, 200);
    assert!(
        page.header("content-type")
            .is_some_and(|c| c.starts_with("text/html"))
    );
    assert!(page.body.contains("/v1/docs/"));
    // Without a token, or with a wrong one, `/` is a 401 page that says why and how to get one.
    let bare = http_get(server.addr, "/", None).await;
    assert_eq!(bare.status, 401);
    assert!(
        bare.header("content-type")
            .is_some_and(|c| c.starts_with("text/html")),
        "{:?}",
        bare.header("content-type")
    );
    assert!(bare.body.contains("No token was given."), "{}", bare.body);
    assert!(bare.body.contains("lattice token --sub"), "{}", bare.body);
    let wrong = http_get(server.addr, "/?doc=demo&token=nope", None).await;
    assert_eq!(wrong.status, 401);
    assert!(
        wrong
            .body
            .contains("The token was refused: malformed token"),
        "{}",
        wrong.body
    );
    // The banner's admin link opens the admin console with the admin token.
    let admin_url = server.printed("admin:").await;
    assert_eq!(
        admin_url,
        format!("http://{}/admin?token={admin}", server.addr)
    );
    assert_eq!(
        http_get(server.addr, &path_of(&admin_url), None)
            .await
            .status,
        200
    );
    // Sync without a token is refused too.
    hello_refused(&server.ws_url(), None, ErrorCode::Unauthorized, 4401).await;

    // The demo token writes the demo document; the page's fetch reads it back.
    let d = doc("demo");
    let c = client_with_token(&server.ws_url(), 5, &demo_token);
    c.open(&d, Vec::new()).await.expect("open");
    settled(&c, &d).await;
    c.edit(&d, |x, _| x.text_insert("t", 0, "hello"))
        .await
        .expect("edit");
    settled(&c, &d).await;
    c.stop();
    let view = http_get(server.addr, "/v1/docs/demo", Some(&demo_token)).await;
    assert_eq!(view.status, 200);
    assert_eq!(view.json()["texts"]["t"], "hello");
    // The demo token is write, not admin; the admin token is.
    assert_eq!(
        http_get(server.addr, "/v1/admin/docs/demo", Some(&demo_token))
            .await
            .status,
        403
    );
    let meta = http_get(server.addr, "/v1/admin/docs/demo", Some(&admin)).await;
    assert_eq!(meta.status, 200, "{}", meta.body);
    assert_eq!(meta.json()["head_seq"], 1);
    server.kill9().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lattice_token_mints_what_the_server_accepts() {
    let secret = NEW;
    let out = tokio::process::Command::new(lattice_binary())
        .args([
            "token", "--doc", "notes/*", "--scope", "write", "--ttl", "1h", "--sub", "alice",
        ])
        .env("LATTICE_AUTH_SECRET", secret)
        .output()
        .await
        .expect("lattice token");
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8(out.stdout).expect("utf-8");
    let minted = stdout.lines().last().expect("a line").trim().to_string();
    let principal = keys(&[secret]).verify(&minted).expect("verifies");
    assert_eq!(principal.subject(), Some("alice"));
    assert_eq!(principal.scope(), Scope::Write);
    assert!(principal.covers(&doc("notes/x")) && !principal.covers(&doc("todo/x")));
    let left = principal.time_left().expect("expiry");
    assert!(left > Duration::from_secs(3_500) && left <= Duration::from_secs(3_600));

    // A short secret is refused with a clear message.
    let out = tokio::process::Command::new(lattice_binary())
        .args(["token", "--doc", "*", "--sub", "a", "--secret", "short"])
        .env_remove("LATTICE_AUTH_SECRET")
        .output()
        .await
        .expect("lattice token");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("at least 32"), "{stderr}");

    // A server given the same secret accepts the token.
    let db = TestDb::new(Kind::Sqlite).await;
    let server = ChildServer::spawn_with_auth(&db.url, &["--auth-secret", secret]).await;
    assert!(
        server.printed("auth:").await.contains("key ids k2"),
        "the banner names the keys"
    );
    let d = doc("notes/a");
    let c = client_with_token(&server.ws_url(), 8, &minted);
    c.open(&d, Vec::new()).await.expect("open");
    settled(&c, &d).await;
    c.edit(&d, |x, _| x.text_insert("t", 0, "minted"))
        .await
        .expect("edit");
    settled(&c, &d).await;
    c.stop();
    let view = http_get(server.addr, "/v1/docs/notes/a", Some(&minted)).await;
    assert_eq!(view.status, 200);
    assert_eq!(view.json()["texts"]["t"], "minted");
    server.kill9().await;
}

/// A stock Yjs client's updates on `/yjs/{doc}` are attributed to its token's subject too, and
/// a read-only token's updates are refused with a permission-denied message and stored nowhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn yjs_endpoint_attributes_and_refuses_read_only_writes() {
    use futures_util::{SinkExt, StreamExt};
    use lattice_engine::yws::{self, YMessage};
    use tokio_tungstenite::tungstenite::Message;

    let db = TestDb::new(Kind::Sqlite).await;
    let ks = keys(&[NEW]);
    let server = TestServer::start(auth_config(&db, ks.clone())).await;
    let base = server.ws_url().replace("/v1/sync", "/yjs");
    let d = doc("notes/yjs-attributed");
    let connect = |sub: &str, scope: Scope| {
        let url = format!("{base}/{d}?token={}", token(&ks, sub, &["notes/*"], scope));
        async move {
            tokio_tungstenite::connect_async(url)
                .await
                .expect("connect")
                .0
        }
    };
    // Reads frames until one decodes to a message `want` accepts.
    async fn wait_for<S>(ws: &mut S, want: impl Fn(&YMessage) -> bool) -> YMessage
    where
        S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>>
            + Unpin,
    {
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let Some(Ok(Message::Binary(b))) = ws.next().await else {
                    panic!("connection ended");
                };
                for m in yws::decode_frame(&b, usize::MAX).expect("server frames decode") {
                    if want(&m) {
                        return m;
                    }
                }
            }
        })
        .await
        .expect("the message arrives")
    }

    let mut editor = Document::new(ReplicaId::new(77).expect("replica"));
    let update = editor.text_insert("text", 0, "by carol").expect("edit").yjs;

    let mut carol = connect("carol", Scope::Write).await;
    carol
        .send(Message::Binary(yws::encode_sync_step1(&[]).into()))
        .await
        .expect("send");
    carol
        .send(Message::Binary(yws::encode_update(&update).into()))
        .await
        .expect("send");
    // The echo means committed.
    let echoed = wait_for(&mut carol, |m| matches!(m, YMessage::Update { .. })).await;
    assert_eq!(echoed, YMessage::Update { update });

    let mut rita = connect("rita", Scope::Read).await;
    let mut intruder = Document::new(ReplicaId::new(78).expect("replica"));
    let refused = intruder
        .text_insert("text", 0, "by rita")
        .expect("edit")
        .yjs;
    rita.send(Message::Binary(yws::encode_update(&refused).into()))
        .await
        .expect("send");
    let denied = wait_for(&mut rita, |m| matches!(m, YMessage::Auth { .. })).await;
    assert!(matches!(denied, YMessage::Auth { denied: Some(ref r) } if r.contains("read-only")));
    drop(carol);
    drop(rita);
    server.shutdown().await;

    let store = Store::open(&db.url, StoreConfig::default())
        .await
        .expect("store");
    let log = store.read_log(&d, 1, 100).await.expect("log");
    let authors: Vec<Option<&str>> = log.iter().map(|e| e.author.as_deref()).collect();
    assert_eq!(authors, [Some("carol")], "only carol's update is stored");
    store.close().await;
}

/// `postgres://user:password@host…` split into the password and the URL with it replaced by
/// `replacement`.
fn split_password(url: &str, replacement: &str) -> (String, String) {
    let start = url.find("://").expect("scheme") + 3;
    let at = start + url[start..].find('@').expect("user info");
    let colon = start + url[start..at].find(':').expect("a password in the URL");
    let password = url[colon + 1..at].to_string();
    let redacted = format!("{}{replacement}{}", &url[..=colon], &url[at..]);
    (password, redacted)
}

/// Issue 17, class 9: `lattice serve` printed the database URL with its password. The banner
/// shows user, host, port and database with the password replaced by `***`, and nothing the
/// process prints (banner, log at `debug`, errors) contains the password, whether the server
/// starts or the database refuses it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_banner_and_the_log_never_show_the_database_password() {
    let db = TestDb::new(Kind::Postgres).await;
    let (password, redacted) = split_password(&db.url, "***");
    let server = ChildServer::spawn_logging(&db.url, &["--no-auth"], "debug").await;
    assert_eq!(server.printed("database:").await, redacted);
    // Some work, so that the store logs what it logs.
    let c = client(&server.ws_url(), 9);
    let d = doc("notes/logged");
    c.open(&d, Vec::new()).await.expect("open");
    settled(&c, &d).await;
    c.edit(&d, |x, _| x.text_insert("t", 0, "x"))
        .await
        .expect("edit");
    settled(&c, &d).await;
    c.stop();
    assert_eq!(
        http_get(server.addr, "/v1/docs/notes/logged", None)
            .await
            .status,
        200
    );
    let lines = server.output();
    assert!(
        lines.len() > 5,
        "the server logged almost nothing: {lines:?}"
    );
    // The test role's password may equal its user name, so look for it where a URL puts it.
    for line in &lines {
        assert!(
            !line.contains(&format!(":{password}@")) && !line.contains(&format!("={password}")),
            "the password is printed: {line}"
        );
    }
    server.kill9().await;

    // A password the database refuses, in the user info and as a query parameter, and a URL
    // the server does not support: the process stops with an error that names no password.
    let secret = "hunter2-never-printed";
    let (_, wrong) = split_password(&db.url, secret);
    let (_, no_password) = split_password(&db.url, "");
    let no_password = no_password.replacen(":@", "@", 1);
    let as_query = format!("{no_password}?password={secret}");
    let unsupported = format!("mysql://root:{secret}@127.0.0.1/x");
    for url in [&wrong, &as_query, &unsupported] {
        let out = tokio::time::timeout(
            Duration::from_secs(60),
            tokio::process::Command::new(lattice_binary())
                .args(["serve", "--no-auth", "--bind", "127.0.0.1:0"])
                .args(["--database-url", url])
                .env("RUST_LOG", "debug")
                .env_remove("LATTICE_AUTH_SECRET")
                .env_remove("LATTICE_NO_AUTH")
                .output(),
        )
        .await
        .expect("lattice stops")
        .expect("run lattice");
        assert!(!out.status.success(), "{url} was accepted");
        let printed = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // The banner waits for the database to open; the error names it, redacted.
        assert!(!printed.contains("listening on"), "{printed}");
        assert!(printed.contains("cannot serve with database "), "{printed}");
        assert!(
            !printed.contains(secret),
            "{url}: the password is printed:\n{printed}"
        );
        assert!(
            printed.contains("***"),
            "{url}: no redaction shown:\n{printed}"
        );
    }
    db.cleanup().await;
}
