//! The golden conversation of docs/protocol.md, replayed against a real server: the frames a
//! client sends (`>`) are the ones below, and what the server answers (`<`) must be exactly the
//! bytes the document shows. With `LATTICE_BLESS=1` the test rewrites the document's block from
//! what the server answered instead (review the diff).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use lattice_engine::protocol::{ClientMsg, PROTOCOL_VERSION, ServerMsg};
use lattice_engine::{Delta, DocId, DocState, Document, GCounter, ReplicaId};
use lattice_tests::server_support::{RawPeer, Read, TestServer, WAIT, config};
use lattice_tests::store_support::{Kind, TestDb};

const START: &str = "<!-- conversation:start -->";
const END: &str = "<!-- conversation:end -->";

fn doc_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/protocol.md")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The client's side: each frame with the comment the document shows for it.
fn script() -> Vec<(Vec<u8>, String)> {
    let notes = DocId::new("notes").expect("doc");
    let replica = ReplicaId::new(0x0a11_ce01).expect("replica");
    let mut author = Document::new(replica);
    let hi = author.text_insert("body", 0, "Hi").expect("edit");
    // A second edit by another replica that builds on text the server never got.
    let mut other = Document::new(ReplicaId::new(0x0b0b_0b0b).expect("replica"));
    let unseen = other.text_insert("body", 0, "hidden").expect("edit");
    let mut later = Document::new(ReplicaId::new(0x0b0b_0b0b).expect("replica"));
    later.apply(&unseen).expect("apply");
    let builds_on_unseen = later.text_insert("body", 6, "!").expect("edit");
    let mut counters = BTreeMap::new();
    let mut likes = GCounter::new();
    likes.increment(replica, 2);
    counters.insert("likes".to_owned(), likes);
    let msg = |m: ClientMsg| m.encode();
    vec![
        (
            msg(ClientMsg::Hello {
                protocol: PROTOCOL_VERSION,
                token: None,
                agent: Some("doc-example".into()),
                replica: Some(0x0a11_ce01),
            }),
            "hello{protocol: 1, agent: \"doc-example\", replica: 0x0a11ce01}".into(),
        ),
        (
            msg(ClientMsg::Subscribe {
                doc: notes.clone(),
                state: DocState::default(),
            }),
            "subscribe{doc: \"notes\", state: {}}".into(),
        ),
        (
            msg(ClientMsg::Delta {
                doc: notes.clone(),
                seq: 1,
                delta: hi.clone(),
            }),
            "delta{doc: \"notes\", seq: 1, delta: {yjs: insert \"Hi\" into text \"body\"}}".into(),
        ),
        (
            msg(ClientMsg::Delta {
                doc: notes.clone(),
                seq: 1,
                delta: hi,
            }),
            "the same delta with the same seq".into(),
        ),
        (
            msg(ClientMsg::Delta {
                doc: notes.clone(),
                seq: 2,
                delta: builds_on_unseen,
            }),
            "delta{seq: 2}: another replica's \"!\" after text the server never got".into(),
        ),
        (
            msg(ClientMsg::Delta {
                doc: notes.clone(),
                seq: 3,
                delta: Delta {
                    counters,
                    ..Delta::default()
                },
            }),
            "delta{seq: 3, delta: {counters: {likes: {0x0a11ce01: 2}}}}".into(),
        ),
        (
            rmp_serde::to_vec_named(&serde_json::json!({
                "type": "delta", "doc": "notes", "seq": 4,
                "delta": {"counters": {"likes": {"7": 1}}},
            }))
            .expect("encode"),
            "delta{seq: 4} whose counter is keyed by the string \"7\"".into(),
        ),
        (
            msg(ClientMsg::Subscribe {
                doc: notes,
                state: DocState::default(),
            }),
            "subscribe to \"notes\" again".into(),
        ),
        (msg(ClientMsg::Ping { nonce: 7 }), "ping{nonce: 7}".into()),
        (
            rmp_serde::to_vec_named(&serde_json::json!({"type": "wave"})).expect("encode"),
            "{type: \"wave\"}: a kind this server does not know".into(),
        ),
    ]
}

/// A one-line description of a server frame.
fn describe(msg: &ServerMsg) -> String {
    let bytes = |b: &[u8]| {
        if b.is_empty() {
            "{}".to_owned()
        } else {
            format!("{} bytes", b.len())
        }
    };
    match msg {
        ServerMsg::Welcome { protocol, server } => {
            format!("welcome{{protocol: {protocol}, server: {server:?}}}")
        }
        ServerMsg::Sync { doc, delta, state } => format!(
            "sync{{doc: {:?}, delta: {}, state: {{yjs: {}}}}}",
            doc.as_str(),
            if delta.is_empty() {
                "{}".to_owned()
            } else {
                format!("yjs {}", bytes(&delta.yjs))
            },
            bytes(&state.yjs)
        ),
        ServerMsg::Ack { doc, seq } => format!("ack{{doc: {:?}, seq: {seq}}}", doc.as_str()),
        ServerMsg::Error {
            code, message, seq, ..
        } => match seq {
            Some(seq) => format!("error{{code: {}, seq: {seq}}}: {message}", code.as_str()),
            None => format!("error{{code: {}}}: {message}", code.as_str()),
        },
        ServerMsg::Pong { nonce } => format!("pong{{nonce: {nonce}}}"),
        other => other.kind().to_owned(),
    }
}

/// The `>`/`<` lines of the document's block: (direction, hex).
fn documented() -> Vec<(char, String)> {
    let text = std::fs::read_to_string(doc_path()).expect("docs/protocol.md");
    let start = text.find(START).expect("conversation start marker") + START.len();
    let end = text.find(END).expect("conversation end marker");
    text[start..end]
        .lines()
        .filter_map(|l| {
            let dir = l.chars().next()?;
            if dir != '>' && dir != '<' {
                return None;
            }
            let hex = l[1..].split('#').next()?.trim().to_owned();
            Some((dir, hex))
        })
        .collect()
}

/// Every frame the server sends until it has been quiet for `quiet`.
async fn answers(peer: &mut RawPeer, quiet: Duration) -> Vec<ServerMsg> {
    let mut out = Vec::new();
    while let Some(read) = peer.read_within(quiet).await {
        match read {
            Read::Msg(m) => out.push(m),
            Read::Closed(code) => panic!("the server closed the connection ({code:?})"),
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_conversation_is_what_the_server_says() {
    let db = TestDb::new(Kind::Sqlite).await;
    let server = TestServer::start(config(&db)).await;
    let mut peer = RawPeer::connect(&server.ws_url()).await;
    let bless = std::env::var("LATTICE_BLESS").is_ok_and(|v| v == "1");
    let script = script();
    if bless {
        let mut block = String::from("```\n");
        for (frame, comment) in &script {
            block.push_str(&format!("> {}  # {comment}\n", hex(frame)));
            assert!(peer.send_bytes(frame.clone()).await);
            for answer in answers(&mut peer, Duration::from_millis(500)).await {
                block.push_str(&format!(
                    "< {}  # {}\n",
                    hex(&answer.encode()),
                    describe(&answer)
                ));
            }
        }
        block.push_str("```\n");
        let text = std::fs::read_to_string(doc_path()).expect("read");
        let start = text.find(START).expect("start") + START.len();
        let end = text.find(END).expect("end");
        let updated = format!("{}\n{block}{}", &text[..start], &text[end..]);
        std::fs::write(doc_path(), updated).expect("write docs/protocol.md");
    } else {
        let lines = documented();
        let sent: Vec<&String> = lines
            .iter()
            .filter(|(d, _)| *d == '>')
            .map(|(_, h)| h)
            .collect();
        let expected: Vec<String> = script.iter().map(|(f, _)| hex(f)).collect();
        assert_eq!(
            sent.len(),
            expected.len(),
            "docs/protocol.md's conversation has other client frames; rewrite it with LATTICE_BLESS=1"
        );
        let mut i = 0;
        for (frame, comment) in &script {
            assert_eq!(
                lines[i].1,
                hex(frame),
                "client frame {comment:?} differs from the doc"
            );
            i += 1;
            assert!(peer.send_bytes(frame.clone()).await);
            while i < lines.len() && lines[i].0 == '<' {
                let got = match tokio::time::timeout(WAIT, peer.read()).await {
                    Ok(Read::Msg(m)) => m,
                    other => panic!("after {comment:?}: expected a frame, got {other:?}"),
                };
                assert_eq!(
                    hex(&got.encode()),
                    lines[i].1,
                    "after {comment:?} the server said {}",
                    describe(&got)
                );
                i += 1;
            }
            let extra = answers(&mut peer, Duration::from_millis(150)).await;
            assert!(
                extra.is_empty(),
                "after {comment:?} the server also said {extra:?}"
            );
        }
    }
    server.shutdown().await;
    db.cleanup().await;
}
