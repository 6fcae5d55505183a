//! Document history for admins, end to end on both backends: a scripted editing session by two
//! authors through native clients, then the admin API (`/api/admin/…`) must report the right
//! authors, summaries, sessions, content at chosen versions and diffs; a restore brings the old
//! text back while connected clients (native and stock Yjs) receive it; a soft-deleted document's history stays
//! readable to admins; and the usual refusals (401, 403, 400, 409) hold.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use lattice_engine::protocol::{ClientMsg, ServerMsg};
use lattice_engine::yws::{self, YMessage};
use lattice_engine::{DocId, DocState, Document, ReplicaId, Value};
use lattice_server::auth::{KeySet, Scope};
use lattice_server::client::Client;
use lattice_server::config::{AuthConfig, Config};
use lattice_tests::on_both_backends;
use lattice_tests::server_support::{
    RawPeer, Read, TestServer, WAIT, client_with_token, config, doc, http_get, http_post,
    lattice_binary, settled,
};
use lattice_tests::store_support::TestDb;
use serde_json::{Value as Json, json};
use tokio_tungstenite::tungstenite::Message;

on_both_backends!(
    two_authors_history_restore_and_soft_delete,
    listing_needs_admin_and_never_names_what_the_token_cannot_administer,
);

const SECRET: &str = "k1:history-secret-0123456789abcdef-012345";

fn keys() -> KeySet {
    KeySet::parse(&[SECRET]).expect("keys")
}

fn token(sub: &str, docs: &[&str], scope: Scope) -> String {
    let docs: Vec<String> = docs.iter().map(|d| d.to_string()).collect();
    keys()
        .mint(sub, &docs, scope, Duration::from_secs(3_600), None)
        .expect("mint")
}

fn auth_config(db: &TestDb) -> Config {
    let mut c = config(db);
    c.auth = AuthConfig::required(keys());
    c.auth.failed_attempts_per_minute = 10_000;
    c
}

async fn edit(
    c: &Client,
    d: &DocId,
    f: impl FnOnce(
        &mut lattice_engine::Document,
        &mut lattice_engine::ClockedHlc,
    ) -> Result<lattice_engine::Delta, lattice_engine::EditError>,
) {
    c.edit(d, f).await.expect("edit");
    settled(c, d).await;
}

async fn get_ok(server: &TestServer, path: &str, token: &str) -> Json {
    let r = http_get(server.addr, path, Some(token)).await;
    assert_eq!(r.status, 200, "GET {path}: {}", r.body);
    r.json()
}

/// Reads y-websocket frames until one holds a message `want` accepts.
async fn next_y<S>(ws: &mut S, want: impl Fn(&YMessage) -> bool) -> YMessage
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    tokio::time::timeout(WAIT, async {
        loop {
            let Some(Ok(frame)) = ws.next().await else {
                panic!("the Yjs connection ended");
            };
            let Message::Binary(b) = frame else { continue };
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

/// Runs the `lattice` binary with `LATTICE_TOKEN` set.
fn lattice_cli(args: &[&str], token: &str) -> std::process::Output {
    std::process::Command::new(lattice_binary())
        .args(args)
        .env("LATTICE_TOKEN", token)
        .output()
        .expect("run lattice")
}

fn body_of(v: &Json) -> &str {
    v["content"]["texts"]["body"].as_str().unwrap_or("")
}

async fn two_authors_history_restore_and_soft_delete(db: TestDb) {
    let server = TestServer::start(auth_config(&db)).await;
    let url = server.ws_url();
    let d = doc("notes/plan");
    let admin = token("root-admin", &["*"], Scope::Admin);
    let alice = client_with_token(&url, 101, &token("alice", &["notes/*"], Scope::Write));
    let bob_token = token("bob", &["notes/*"], Scope::Write);
    let bob = client_with_token(&url, 202, &bob_token);
    for c in [&alice, &bob] {
        c.open(&d, Vec::new()).await.expect("open");
        settled(c, &d).await;
    }

    // The scripted session: one update per step, each committed before the next.
    edit(&alice, &d, |doc, _| {
        doc.text_insert("body", 0, "Hello world")
    })
    .await; // 1
    edit(&alice, &d, |doc, hlc| {
        doc.register_set("title", Value::String("Draft".into()), hlc.tick())
    })
    .await; // 2
    assert!(
        bob.wait_until(WAIT, |s| s
            .document(&d)
            .is_some_and(|x| x.text("body") == "Hello world"))
            .await
    );
    edit(&bob, &d, |doc, _| doc.text_insert("body", 11, " again")).await; // 3
    edit(&bob, &d, |doc, _| doc.counter_increment("likes", 1)).await; // 4
    assert!(
        alice
            .wait_until(WAIT, |s| s
                .document(&d)
                .is_some_and(|x| x.text("body") == "Hello world again"))
            .await
    );
    edit(&alice, &d, |doc, _| doc.text_delete("body", 6, 6)).await; // 5: "Hello again"
    assert!(
        bob.wait_until(WAIT, |s| s.document(&d).is_some_and(|x| x
            .register("title")
            == Some(&Value::String("Draft".into()))))
            .await
    );
    edit(&bob, &d, |doc, hlc| {
        doc.register_set("title", Value::String("Final".into()), hlc.tick())
    })
    .await; // 6

    // History: authors, summaries, sessions.
    let h = get_ok(&server, "/api/admin/history/notes/plan", &admin).await;
    let entries = h["entries"].as_array().expect("entries");
    let seen: Vec<(u64, &str, &str)> = entries
        .iter()
        .map(|e| {
            (
                e["seq"].as_u64().expect("seq"),
                e["author"].as_str().expect("author"),
                e["summary"].as_str().expect("summary"),
            )
        })
        .collect();
    assert_eq!(
        seen,
        vec![
            (1, "alice", "+11 chars in \"body\""),
            (2, "alice", "title := \"Draft\""),
            (3, "bob", "+6 chars in \"body\""),
            (4, "bob", "counter likes +1"),
            (5, "alice", "\u{2212}6 chars in \"body\""),
            (6, "bob", "title := \"Final\""),
        ]
    );
    assert_eq!(entries[0]["replica"], 101);
    assert_eq!(entries[2]["replica"], 202);
    assert!(entries[0]["time"].as_str().expect("time").ends_with('Z'));
    assert_eq!(h["head_seq"], 6);
    assert_eq!(h["next_after"], Json::Null);
    let sessions: Vec<(String, u64, u64)> = h["sessions"]
        .as_array()
        .expect("sessions")
        .iter()
        .map(|s| {
            (
                s["author"].as_str().expect("author").to_owned(),
                s["from_seq"].as_u64().expect("from"),
                s["to_seq"].as_u64().expect("to"),
            )
        })
        .collect();
    assert_eq!(
        sessions,
        vec![
            ("alice".into(), 1, 2),
            ("bob".into(), 3, 4),
            ("alice".into(), 5, 5),
            ("bob".into(), 6, 6)
        ]
    );
    // Paging: two entries after 2.
    let p = get_ok(
        &server,
        "/api/admin/history/notes/plan?after=2&limit=2",
        &admin,
    )
    .await;
    let seqs: Vec<u64> = p["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| e["seq"].as_u64().expect("seq"))
        .collect();
    assert_eq!(seqs, vec![3, 4]);
    assert_eq!(p["next_after"], 4);
    assert_eq!(
        p["entries"][1]["summary"], "counter likes +1",
        "a page starting mid-log summarises from the right state"
    );

    // Content at chosen versions.
    let c3 = get_ok(&server, "/api/admin/content/notes/plan?at=3", &admin).await;
    assert_eq!(body_of(&c3), "Hello world again");
    assert_eq!(c3["content"]["registers"]["title"], "Draft");
    let c6 = get_ok(&server, "/api/admin/content/notes/plan?at=6", &admin).await;
    assert_eq!(body_of(&c6), "Hello again");
    assert_eq!(c6["content"]["registers"]["title"], "Final");
    assert_eq!(c6["content"]["counters"]["likes"], 1);
    let c0 = get_ok(&server, "/api/admin/content/notes/plan?at=0", &admin).await;
    assert_eq!(body_of(&c0), "");

    // Diffs.
    let diff = get_ok(&server, "/api/admin/diff/notes/plan?from=3&to=6", &admin).await;
    assert_eq!(
        diff["texts"]["body"],
        json!([
            {"op": "equal", "text": "Hello "},
            {"op": "delete", "text": "world "},
            {"op": "equal", "text": "again"},
        ])
    );
    assert_eq!(diff["counters"]["likes"], json!({"from": 0, "to": 1}));
    assert_eq!(
        diff["registers"]["title"],
        json!({"from": "Draft", "to": "Final"})
    );

    // Listing: the document with its counts and live subscribers.
    let list = get_ok(&server, "/api/admin/docs?prefix=notes/", &admin).await;
    let listed = &list["documents"][0];
    assert_eq!(listed["id"], "notes/plan");
    assert_eq!(listed["updates"], 6);
    assert_eq!(listed["live_subscribers"], 2);
    assert_eq!(listed["deleted"], false);

    // A stock Yjs client is connected too (y-websocket on `/yjs/{doc}`), synced.
    let yjs_url = format!(
        "{}/notes/plan?token={}",
        url.replace("/v1/sync", "/yjs"),
        token("yuki", &["notes/*"], Scope::Read)
    );
    let mut yjs = tokio_tungstenite::connect_async(yjs_url)
        .await
        .expect("connect yjs")
        .0;
    yjs.send(Message::Binary(yws::encode_sync_step1(&[]).into()))
        .await
        .expect("send");
    let mut yjs_doc =
        lattice_engine::Document::new(lattice_engine::ReplicaId::new(404).expect("replica"));
    match next_y(&mut yjs, |m| matches!(m, YMessage::SyncStep2 { .. })).await {
        YMessage::SyncStep2 { update } => {
            yjs_doc
                .apply(&lattice_engine::Delta {
                    yjs: update,
                    ..Default::default()
                })
                .expect("apply");
        }
        other => panic!("expected sync step 2, got {other:?}"),
    }
    assert_eq!(yjs_doc.text("body"), "Hello again");

    // Restore to version 3 while bob is connected: bob receives the old text.
    let r = http_post(
        server.addr,
        "/api/admin/restore/notes/plan",
        Some(&admin),
        Some(r#"{"to": 3}"#),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let restored = r.json();
    assert_eq!(restored["seq"], 7);
    assert_eq!(restored["author"], "root-admin");
    assert_eq!(restored["texts"], json!(["body"]));
    assert_eq!(restored["registers"], json!(["title"]));
    assert_eq!(
        restored["counters_not_restored"]["likes"],
        json!({"current": 1, "at_version": 0})
    );
    assert!(
        bob.wait_until(WAIT, |s| s.document(&d).is_some_and(|x| {
            x.text("body") == "Hello world again"
                && x.register("title") == Some(&Value::String("Draft".into()))
                && x.counter("likes") == 1
        }))
        .await,
        "a connected client receives the restore: {:?}",
        bob.json(&d)
    );
    // The Yjs client receives it as an update.
    match next_y(&mut yjs, |m| matches!(m, YMessage::Update { .. })).await {
        YMessage::Update { update } => {
            yjs_doc
                .apply(&lattice_engine::Delta {
                    yjs: update,
                    ..Default::default()
                })
                .expect("apply");
        }
        other => panic!("expected an update, got {other:?}"),
    }
    assert_eq!(yjs_doc.text("body"), "Hello world again");
    drop(yjs);
    let h = get_ok(&server, "/api/admin/history/notes/plan?after=6", &admin).await;
    assert_eq!(h["entries"][0]["author"], "root-admin");
    let c7 = get_ok(&server, "/api/admin/content/notes/plan", &admin).await;
    assert_eq!(body_of(&c7), "Hello world again");
    assert_eq!(c7["seq"], 7);

    // Export: Yjs bytes and JSON.
    let ex = http_get(
        server.addr,
        "/api/admin/export/notes/plan?format=json&at=1",
        Some(&admin),
    )
    .await;
    assert_eq!(ex.status, 200);
    assert_eq!(body_of(&ex.json()), "Hello world");
    let ex = http_get(
        server.addr,
        "/api/admin/export/notes/plan?format=yjs",
        Some(&admin),
    )
    .await;
    assert_eq!(ex.status, 200);
    assert_eq!(ex.header("content-type"), Some("application/octet-stream"));

    // Refusals: no token, a write token, bad versions and parameters.
    let path = "/api/admin/history/notes/plan";
    assert_eq!(http_get(server.addr, path, None).await.status, 401);
    assert_eq!(
        http_get(server.addr, path, Some(&bob_token)).await.status,
        403
    );
    let other_admin = token("other", &["elsewhere/*"], Scope::Admin);
    assert_eq!(
        http_get(server.addr, path, Some(&other_admin)).await.status,
        403
    );
    let empty = get_ok(&server, "/api/admin/docs", &other_admin).await;
    assert_eq!(empty["documents"], json!([]));
    let bad = http_get(
        server.addr,
        "/api/admin/content/notes/plan?at=99",
        Some(&admin),
    )
    .await;
    assert_eq!(bad.status, 400);
    assert_eq!(bad.json()["error"], "bad_version");
    let bad = http_get(
        server.addr,
        "/api/admin/content/notes/plan?at=x",
        Some(&admin),
    )
    .await;
    assert_eq!(bad.status, 400);
    assert_eq!(bad.json()["error"], "bad_query");
    let bad = http_post(
        server.addr,
        "/api/admin/restore/notes/plan",
        Some(&admin),
        Some("{"),
    )
    .await;
    assert_eq!(bad.status, 400);
    assert_eq!(
        http_get(server.addr, "/api/admin/history/notes/none", Some(&admin))
            .await
            .status,
        404
    );

    // Soft delete: history and content stay readable to admins; restore is refused.
    let del = http_post(
        server.addr,
        "/api/admin/delete/notes/plan",
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(del.status, 200, "{}", del.body);
    let h = get_ok(&server, "/api/admin/history/notes/plan", &admin).await;
    assert_eq!(h["deleted"], true);
    assert_eq!(h["entries"].as_array().expect("entries").len(), 7);
    let c = get_ok(&server, "/api/admin/content/notes/plan?at=6", &admin).await;
    assert_eq!(body_of(&c), "Hello again");
    let list = get_ok(&server, "/api/admin/docs", &admin).await;
    assert_eq!(list["documents"], json!([]));
    let list = get_ok(&server, "/api/admin/docs?include_deleted=true", &admin).await;
    assert_eq!(list["documents"][0]["deleted"], true);
    // The live room stopped: its subscribers were closed and cannot come back.
    assert_eq!(list["documents"][0]["live_subscribers"], 0);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !bob.is_synced(&d),
        "a deleted document cannot be subscribed to"
    );
    let r = http_post(
        server.addr,
        "/api/admin/restore/notes/plan?to=2",
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(r.status, 409, "{}", r.body);
    let un = http_post(
        server.addr,
        "/api/admin/undelete/notes/plan",
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(un.status, 200);
    let list = get_ok(&server, "/api/admin/docs", &admin).await;
    assert_eq!(list["documents"][0]["id"], "notes/plan");
    // After undelete, the document opens again, with its content.
    let carol = client_with_token(&url, 303, &bob_token);
    carol.open(&d, Vec::new()).await.expect("open");
    settled(&carol, &d).await;
    assert_eq!(
        carol.read(&d, |x| x.text("body")).as_deref(),
        Some("Hello world again")
    );
    carol.stop();

    // The admin page itself is static and served without a token.
    let page = http_get(server.addr, "/admin", None).await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("data-testid=\"doc-list\""));

    // The CLI, against the server and straight from the database.
    let url = format!("http://{}", server.addr);
    let out = lattice_cli(
        &["admin", "--url", &url, "--json", "history", "notes/plan"],
        &admin,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let h: Json = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(h["entries"].as_array().expect("entries").len(), 7);
    let out = lattice_cli(
        &["admin", "--url", &url, "show", "notes/plan", "--at", "3"],
        &admin,
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("Hello world again"));
    let out = lattice_cli(
        &[
            "admin",
            "--database-url",
            &db.url,
            "--json",
            "show",
            "notes/plan",
            "--at",
            "5",
        ],
        "",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let c: Json = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(body_of(&c), "Hello again");
    let out = lattice_cli(&["admin", "--database-url", &db.url, "docs"], "");
    assert!(String::from_utf8_lossy(&out.stdout).contains("notes/plan"));
    let out = lattice_cli(
        &[
            "admin",
            "--database-url",
            &db.url,
            "restore",
            "notes/plan",
            "--to",
            "1",
        ],
        "",
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("restore needs a running server"));

    alice.stop();
    bob.stop();
    server.shutdown().await;
    db.cleanup().await;
}

/// Writes one change to each of `ids` over one connection, waiting for every ack.
async fn seed(server: &TestServer, token: &str, ids: &[&str]) {
    let mut p = RawPeer::hello_with_token(&server.ws_url(), Some(token)).await;
    for (i, id) in ids.iter().enumerate() {
        let d = doc(id);
        let _ = p
            .send(&ClientMsg::Subscribe {
                doc: d.clone(),
                state: DocState::default(),
            })
            .await;
        loop {
            match p.read().await {
                Read::Msg(ServerMsg::Sync { doc: got, .. }) if got == d => break,
                Read::Msg(ServerMsg::Presence { .. }) => continue,
                other => panic!("expected sync of {d}, got {other:?}"),
            }
        }
        let replica = ReplicaId::new(5_000 + i as u32).expect("replica");
        let delta = Document::new(replica)
            .text_insert("t", 0, id)
            .expect("edit");
        let _ = p
            .send(&ClientMsg::Delta {
                doc: d.clone(),
                seq: 1,
                delta,
            })
            .await;
        loop {
            match p.read().await {
                Read::Msg(ServerMsg::Ack { seq: 1, .. }) => break,
                Read::Msg(ServerMsg::Presence { .. }) => continue,
                other => panic!("expected the ack for {d}, got {other:?}"),
            }
        }
    }
}

/// Every page of `/api/admin/docs` (with `query`, paging with `limit=1`) as `(ids, cursors)`.
async fn all_pages(server: &TestServer, token: &str, query: &str) -> (Vec<String>, Vec<String>) {
    let mut ids = Vec::new();
    let mut cursors = Vec::new();
    let mut after = String::new();
    for _ in 0..50 {
        let page = get_ok(
            server,
            &format!("/api/admin/docs?limit=1&after={after}{query}"),
            token,
        )
        .await;
        for d in page["documents"].as_array().expect("documents") {
            ids.push(d["id"].as_str().expect("id").to_owned());
        }
        match page["next_after"].as_str() {
            Some(next) => {
                cursors.push(next.to_owned());
                after = next.to_owned();
            }
            None => return (ids, cursors),
        }
    }
    panic!("the listing never ended: {ids:?} {cursors:?}");
}

/// Issue 17, class 5: the document listing needs the admin scope, and neither its results, nor
/// its cursor, nor its `prefix`/`after` filters tell a `team-a/*` admin anything about
/// `team-b/…`, deleted or not.
async fn listing_needs_admin_and_never_names_what_the_token_cannot_administer(db: TestDb) {
    let server = TestServer::start(auth_config(&db)).await;
    let root = token("root", &["*"], Scope::Admin);
    let team_a = token("ann", &["team-a/*"], Scope::Admin);
    seed(&server, &root, &["team-a/1", "team-a/2", "team-a/3"]).await;

    // What a team-a admin learns when probing for team-b, before team-b exists...
    let probes = [
        "/api/admin/docs?prefix=team-b",
        "/api/admin/docs?prefix=team-b&limit=1",
        "/api/admin/docs?prefix=team-b/0&limit=1&include_deleted=true",
        "/api/admin/docs?after=team-b/0&limit=1",
        "/api/admin/docs?prefix=team-&after=team-b/05&limit=1",
    ];
    let mut before = Vec::new();
    for p in probes {
        let r = http_get(server.addr, p, Some(&team_a)).await;
        assert_eq!(r.status, 200, "{p}: {}", r.body);
        before.push(r.body);
    }
    // ...and after: twelve team-b documents (more than a listing scans per request), a deleted
    // one, and a document after them.
    let team_b: Vec<String> = (0..12).map(|i| format!("team-b/{i:02}")).collect();
    let mut more: Vec<&str> = team_b.iter().map(String::as_str).collect();
    more.extend(["team-b/gone", "team-c/z"]);
    seed(&server, &root, &more).await;
    for d in ["team-a/3", "team-b/gone"] {
        let r = http_post(
            server.addr,
            &format!("/api/admin/delete/{d}"),
            Some(&root),
            None,
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
    for (p, earlier) in probes.iter().zip(&before) {
        let r = http_get(server.addr, p, Some(&team_a)).await;
        assert_eq!(r.status, 200, "{p}: {}", r.body);
        assert_eq!(
            &r.body, earlier,
            "{p} answers differently once team-b exists"
        );
    }

    // Paging one by one: only team-a documents, and only team-a documents as cursors.
    let (ids, cursors) = all_pages(&server, &team_a, "").await;
    assert_eq!(ids, ["team-a/1", "team-a/2"]);
    assert!(
        cursors.iter().all(|c| c.starts_with("team-a/")),
        "a cursor names a document the token cannot administer: {cursors:?}"
    );
    // Deleted documents only where the token is admin.
    let (ids, cursors) = all_pages(&server, &team_a, "&include_deleted=true").await;
    assert_eq!(ids, ["team-a/1", "team-a/2", "team-a/3"]);
    assert!(
        cursors.iter().all(|c| c.starts_with("team-a/")),
        "{cursors:?}"
    );
    let page = get_ok(&server, "/api/admin/docs?include_deleted=true", &team_a).await;
    assert_eq!(page["documents"][2]["deleted"], true);
    // Several patterns, exact ids among them, list in id order and page across each other.
    let mixed = token(
        "mo",
        &["team-c/z", "team-b/03", "team-a/*", "team-a/2"],
        Scope::Admin,
    );
    let (ids, cursors) = all_pages(&server, &mixed, "").await;
    assert_eq!(ids, ["team-a/1", "team-a/2", "team-b/03", "team-c/z"]);
    assert!(
        cursors
            .iter()
            .all(|c| ["team-a/1", "team-a/2", "team-b/03", "team-c/z"].contains(&c.as_str())),
        "{cursors:?}"
    );
    let page = get_ok(&server, "/api/admin/docs?prefix=team-b", &mixed).await;
    assert_eq!(page["documents"].as_array().map(Vec::len), Some(1));
    // The root admin sees everything, the deleted team-b document too.
    let (ids, _) = all_pages(&server, &root, "&include_deleted=true").await;
    assert_eq!(ids.len(), 3 + 12 + 2);

    // Without the admin scope there is no listing at all, not even of covered documents.
    for scope in [Scope::Write, Scope::Read] {
        let t = token("w", &["team-a/*"], scope);
        let r = http_get(server.addr, "/api/admin/docs", Some(&t)).await;
        assert_eq!(r.status, 403, "{scope}: {}", r.body);
        assert_eq!(r.json()["error"], "forbidden");
        let r = http_get(
            server.addr,
            "/api/admin/docs?include_deleted=true",
            Some(&t),
        )
        .await;
        assert_eq!(r.status, 403, "{scope}: {}", r.body);
    }
    assert_eq!(
        http_get(server.addr, "/api/admin/docs", None).await.status,
        401
    );
    server.shutdown().await;
    db.cleanup().await;
}

/// The value of the metric `name` (a line `name value`) at `/metrics`.
async fn metric(server: &TestServer, name: &str) -> Option<u64> {
    let r = http_get(server.addr, "/metrics", None).await;
    r.body.lines().find_map(|l| {
        l.strip_prefix(name)
            .and_then(|rest| rest.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    })
}

/// Issue 17, class 9: HTTP reads rebuild documents (checkpoint and replay, rendering), which
/// used to run on the async workers without any limit. With one rebuild slot, taken by a read
/// that is held inside it (a Postgres table lock stops its query), every other rebuilding read
/// waits `rebuild_wait` and is answered 503 `busy` with `Retry-After`; reads that rebuild
/// nothing are not affected; once the slot frees, reads are served again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_beyond_the_rebuild_limit_wait_then_answer_busy() {
    use sqlx::Connection as _;

    let db = TestDb::new(lattice_tests::store_support::Kind::Postgres).await;
    let mut cfg = auth_config(&db);
    cfg.limits.max_concurrent_rebuilds = 1;
    cfg.limits.rebuild_wait = Duration::from_millis(300);
    let server = TestServer::start(cfg).await;
    let admin = token("root", &["*"], Scope::Admin);
    seed(&server, &admin, &["big/a", "big/b"]).await;
    assert_eq!(metric(&server, "lattice_rebuilds_in_flight").await, Some(0));

    let mut locker = sqlx::PgConnection::connect(&db.url).await.expect("connect");
    sqlx::query("BEGIN")
        .execute(&mut locker)
        .await
        .expect("begin");
    sqlx::query("LOCK TABLE documents IN ACCESS EXCLUSIVE MODE")
        .execute(&mut locker)
        .await
        .expect("lock");
    let held = {
        let (addr, admin) = (server.addr, admin.clone());
        tokio::spawn(async move { http_get(addr, "/v1/docs/big/a", Some(&admin)).await })
    };
    let deadline = tokio::time::Instant::now() + WAIT;
    while metric(&server, "lattice_rebuilds_in_flight").await != Some(1) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the first read never took the rebuild slot"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let busy = [
        "/v1/docs/big/b",
        "/api/admin/content/big/b",
        "/api/admin/history/big/b",
        "/api/admin/diff/big/b?from=0&to=1",
        "/api/admin/export/big/b?format=yjs",
    ];
    for path in busy {
        let r = http_get(server.addr, path, Some(&admin)).await;
        assert_eq!(r.status, 503, "{path}: {}", r.body);
        assert_eq!(r.json()["error"], "busy", "{path}");
        assert_eq!(r.header("retry-after"), Some("1"), "{path}");
    }
    assert_eq!(
        metric(&server, "lattice_rebuilds_busy_total").await,
        Some(busy.len() as u64)
    );
    assert_eq!(http_get(server.addr, "/healthz", None).await.status, 200);

    sqlx::query("ROLLBACK")
        .execute(&mut locker)
        .await
        .expect("rollback");
    let first = held.await.expect("held read");
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(first.json()["texts"]["t"], "big/a");
    for path in busy {
        let r = http_get(server.addr, path, Some(&admin)).await;
        assert_eq!(r.status, 200, "{path}: {}", r.body);
    }
    assert_eq!(metric(&server, "lattice_rebuilds_in_flight").await, Some(0));
    assert_eq!(
        metric(&server, "lattice_rebuilds_in_flight_peak").await,
        Some(1)
    );
    server.shutdown().await;
    db.cleanup().await;
}

/// Twenty concurrent reads with two rebuild slots: all are served (they wait rather than
/// fail), and no more than two ever rebuilt at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_reads_never_rebuild_more_than_the_limit_at_once() {
    let db = TestDb::new(lattice_tests::store_support::Kind::Sqlite).await;
    let mut cfg = auth_config(&db);
    cfg.limits.max_concurrent_rebuilds = 2;
    cfg.limits.rebuild_wait = WAIT;
    let server = TestServer::start(cfg).await;
    let admin = token("root", &["*"], Scope::Admin);
    let ids: Vec<String> = (0..4).map(|i| format!("many/{i}")).collect();
    seed(
        &server,
        &admin,
        &ids.iter().map(String::as_str).collect::<Vec<_>>(),
    )
    .await;
    let reads: Vec<_> = (0..20)
        .map(|i| {
            let (addr, admin) = (server.addr, admin.clone());
            let path = if i % 2 == 0 {
                format!("/v1/docs/many/{}", i % 4)
            } else {
                format!("/api/admin/history/many/{}", i % 4)
            };
            tokio::spawn(async move { (http_get(addr, &path, Some(&admin)).await, path) })
        })
        .collect();
    for read in reads {
        let (r, path) = read.await.expect("read");
        assert_eq!(r.status, 200, "{path}: {}", r.body);
    }
    let peak = metric(&server, "lattice_rebuilds_in_flight_peak")
        .await
        .expect("peak gauge");
    assert!((1..=2).contains(&peak), "{peak} rebuilds at once");
    assert_eq!(metric(&server, "lattice_rebuilds_in_flight").await, Some(0));
    assert_eq!(
        metric(&server, "lattice_rebuilds_busy_total").await,
        Some(0)
    );
    server.shutdown().await;
}
