//! A native Lattice client driven line by line over stdin, for the Node interop tests
//! (`tests/node/`): they run stock Yjs clients and this one on the same document.
//!
//! Usage: `native_editor <ws-url of /v1/sync> <doc> <replica> [token]`
//!
//! Commands, one per line; every command answers with one JSON line on stdout:
//! - `insert <index> <json string>`: inserts into the `Y.Text` named `text` → `{"ok":true}`
//! - `delete <index> <len>` → `{"ok":true}`
//! - `settle`: waits until synced with nothing unacknowledged → `{"ok":true}` or `{"ok":false}`
//! - `text` → `{"text":"…"}`
//! - `presence <json>`: publishes presence (`null` leaves) → `{"ok":true}`
//! - `peers` → `{"peers":{"<peer>":<state>,…}}`, the presence of others as last seen
//! - `offline` / `online`: drops or restores the connection → `{"ok":true}`
//! - `quit`

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lattice_engine::sync::SessionEvent;
use lattice_engine::{DocId, ReplicaId, Value};
use lattice_server::client::{Client, ClientOptions};
use tokio::io::{AsyncBufReadExt, BufReader};

/// The `Y.Text` both kinds of client edit.
const TEXT: &str = "text";

fn reply(v: serde_json::Value) {
    println!("{v}");
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(url), Some(doc), Some(replica)) = (args.next(), args.next(), args.next()) else {
        eprintln!("usage: native_editor WS_URL DOC REPLICA");
        std::process::exit(2);
    };
    let doc = DocId::new(&doc).expect("document id");
    let replica = replica
        .parse::<u32>()
        .ok()
        .and_then(ReplicaId::new)
        .expect("replica: a non-zero u32");
    let mut options = ClientOptions::new(url, replica);
    options.token = args.next();
    let client = Client::start(options);
    client.open(&doc, Vec::new()).await.expect("open");
    let peers: Arc<Mutex<BTreeMap<u64, Value>>> = Arc::default();
    {
        let peers = peers.clone();
        let mut events = client.events();
        tokio::spawn(async move {
            while let Ok(event) = events.recv().await {
                if let SessionEvent::Presence { peer, state, .. } = event {
                    let mut peers = peers.lock().expect("peers");
                    if state == Value::Null {
                        peers.remove(&peer);
                    } else {
                        peers.insert(peer, state);
                    }
                }
            }
        });
    }
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let (cmd, rest) = line.split_once(' ').unwrap_or((line.as_str(), ""));
        match cmd {
            "insert" => {
                let (index, text) = rest.split_once(' ').expect("insert INDEX JSON");
                let index: u32 = index.parse().expect("index");
                let text: String = serde_json::from_str(text).expect("JSON string");
                let r = client
                    .edit(&doc, |d, _| {
                        let at = index.min(d.text_len(TEXT));
                        d.text_insert(TEXT, at, &text)
                    })
                    .await;
                reply(serde_json::json!({ "ok": r.is_ok() }));
            }
            "delete" => {
                let (index, len) = rest.split_once(' ').expect("delete INDEX LEN");
                let index: u32 = index.parse().expect("index");
                let len: u32 = len.parse().expect("len");
                let r = client
                    .edit(&doc, |d, _| {
                        let at = index.min(d.text_len(TEXT));
                        let len = len.min(d.text_len(TEXT) - at);
                        d.text_delete(TEXT, at, len)
                    })
                    .await;
                reply(serde_json::json!({ "ok": r.is_ok() }));
            }
            "settle" => {
                let ok = client
                    .wait_until(Duration::from_secs(30), |s| {
                        s.is_synced(&doc) && s.pending(&doc) == 0
                    })
                    .await;
                reply(serde_json::json!({ "ok": ok }));
            }
            "text" => {
                let text = client.read(&doc, |d| d.text(TEXT)).unwrap_or_default();
                reply(serde_json::json!({ "text": text }));
            }
            "presence" => {
                let state: Value = serde_json::from_str(rest).expect("presence JSON");
                client.presence(&doc, state, false).await;
                reply(serde_json::json!({ "ok": true }));
            }
            "peers" => {
                let peers = peers.lock().expect("peers").clone();
                let map: serde_json::Map<String, serde_json::Value> = peers
                    .into_iter()
                    .map(|(k, v)| {
                        (
                            k.to_string(),
                            serde_json::to_value(&v).unwrap_or(serde_json::Value::Null),
                        )
                    })
                    .collect();
                reply(serde_json::json!({ "peers": map }));
            }
            "offline" => {
                client.set_offline(true);
                reply(serde_json::json!({ "ok": true }));
            }
            "online" => {
                client.set_offline(false);
                reply(serde_json::json!({ "ok": true }));
            }
            "quit" => break,
            other => {
                reply(serde_json::json!({ "error": format!("unknown command {other}") }));
            }
        }
    }
    client.stop();
}
