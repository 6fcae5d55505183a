//! The browser client's core (`lattice_client::core::ClientCore`, the logic the wasm client runs)
//! against the real server: offline edits kept as records, a reload that restores them into a
//! new replica, resync, acks that delete the records, presence and remote changes.
//!
//! The driver here is a minimal native stand-in for the browser's: a WebSocket, a map for
//! IndexedDB, and a loop that carries out the core's effects.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use lattice_client::core::{
    COPY_INTERVAL_MS, COPY_REPLICA, ClientCore, ClientEvent, ClientOptions, Origin, PendingKey,
    Status, StoreOp, StoredDelta,
};
use lattice_engine::{NTP64, ReplicaId, Value, ntp64_from_unix_ms};
use lattice_tests::server_support::{TestServer, WAIT, config, doc};
use lattice_tests::store_support::{Kind, TestDb};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn clock() -> NTP64 {
    ntp64_from_unix_ms(now_ms())
}

/// One tab: the core, its socket and its "IndexedDB".
struct Tab {
    core: ClientCore,
    ws: Option<WebSocketStream<MaybeTlsStream<TcpStream>>>,
    records: BTreeMap<PendingKey, Vec<u8>>,
    events: Vec<ClientEvent>,
}

impl Tab {
    fn new(replica: u32, records: BTreeMap<PendingKey, Vec<u8>>) -> Tab {
        Tab {
            core: ClientCore::new(
                ReplicaId::from_random(replica),
                clock,
                None,
                ClientOptions::default(),
            ),
            ws: None,
            records,
            events: Vec::new(),
        }
    }

    fn restored(&self) -> Vec<StoredDelta> {
        self.records
            .iter()
            .map(|(key, bytes)| StoredDelta {
                key: key.clone(),
                bytes: bytes.clone(),
            })
            .collect()
    }

    async fn connect(&mut self, url: &str) {
        self.core.connecting();
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("connect");
        self.ws = Some(ws);
        self.core.socket_open(now_ms());
        self.flush().await;
    }

    /// Carries out the core's effects.
    async fn flush(&mut self) {
        for op in self.core.take_store_ops() {
            match op {
                StoreOp::Put(r) => {
                    self.records.insert(r.key, r.bytes);
                }
                StoreOp::Delete(keys) => {
                    for key in keys {
                        self.records.remove(&key);
                    }
                }
            }
        }
        let frames = self.core.take_frames();
        assert_eq!(frames.drop_connection, None);
        if let Some(ws) = &mut self.ws {
            for frame in frames.frames {
                ws.send(Message::Binary(frame.into())).await.expect("send");
            }
        }
        self.events.extend(self.core.take_events());
    }

    /// Reads frames until `done` holds.
    async fn run_until(&mut self, what: &str, done: impl Fn(&Tab) -> bool) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            self.flush().await;
            if done(self) {
                return;
            }
            let ws = self.ws.as_mut().expect("connected");
            let frame = tokio::time::timeout_at(deadline, ws.next())
                .await
                .unwrap_or_else(|_| panic!("timed out waiting until {what}"));
            match frame {
                Some(Ok(Message::Binary(bytes))) => self.core.receive(&bytes, now_ms()),
                Some(Ok(_)) => {}
                other => panic!("socket ended while waiting until {what}: {other:?}"),
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_edits_survive_a_reload_and_reach_other_tabs() {
    let db = TestDb::new(Kind::Sqlite).await;
    let server = TestServer::start(config(&db)).await;
    let url = server.ws_url();
    let notes = doc("web/notes");

    // A tab edits offline, then closes before it ever connected.
    let mut first = Tab::new(11, BTreeMap::new());
    first.core.open(notes.clone(), Vec::new()).expect("open");
    first
        .core
        .text_insert(&notes, "body", 0, "written offline")
        .expect("insert");
    first
        .core
        .counter_increment(&notes, "likes", 2)
        .expect("increment");
    first
        .core
        .register_set(&notes, "title", Value::String("Notes".into()))
        .expect("set");
    first.flush().await;
    assert_eq!(first.records.len(), 3);
    let records = first.records.clone();
    drop(first);

    // The page reloads: a new replica restores the records and syncs them.
    let mut second = Tab::new(12, records);
    let restored = second.restored();
    second.core.open(notes.clone(), restored).expect("open");
    assert_eq!(second.core.pending(&notes), 3);
    second.connect(&url).await;
    second
        .run_until("the restored edits are acknowledged", |t| {
            t.core.status() == Status::Synced && t.core.pending_total() == 0
        })
        .await;
    // The first acknowledgement saves the document's copy at once and deletes the records it
    // holds.
    assert!(
        second.records.keys().all(|k| k.replica == COPY_REPLICA),
        "acked records are deleted: {:?}",
        second.records.keys().collect::<Vec<_>>()
    );
    assert_eq!(second.records.len(), 1, "the saved copy is kept");
    second
        .core
        .set_presence(
            &notes,
            Value::String("second".into()),
            Some(false),
            now_ms(),
        )
        .expect("presence");
    second.flush().await;

    // Another tab sees everything, and the presence of the second.
    let mut third = Tab::new(13, BTreeMap::new());
    third.core.open(notes.clone(), Vec::new()).expect("open");
    third.connect(&url).await;
    third
        .run_until("the third tab has the content and the presence", |t| {
            let d = t.core.document(&notes).expect("open");
            d.text("body") == "written offline" && !t.core.others(&notes).is_empty()
        })
        .await;
    let d = third.core.document(&notes).expect("open");
    assert_eq!(d.counter("likes"), 2);
    assert_eq!(d.register("title"), Some(&Value::String("Notes".into())));
    assert_eq!(
        third.core.others(&notes)[0].state,
        Value::String("second".into())
    );
    assert!(third.events.contains(&ClientEvent::Change {
        doc: notes.clone(),
        origin: Origin::Remote
    }));

    // A live edit of the second tab reaches the third as a remote change.
    third.events.clear();
    second
        .core
        .text_insert(&notes, "body", 0, "Now: ")
        .expect("insert");
    second.flush().await;
    third
        .run_until("the live edit arrives", |t| {
            t.core.document(&notes).expect("open").text("body") == "Now: written offline"
        })
        .await;
    assert!(third.events.contains(&ClientEvent::Change {
        doc: notes.clone(),
        origin: Origin::Remote
    }));
    second
        .run_until("the live edit is acknowledged", |t| {
            t.core.pending_total() == 0
        })
        .await;
    // Copies are throttled: the live edit's record goes with the next one.
    second.core.tick(now_ms() + COPY_INTERVAL_MS);
    second.flush().await;
    assert!(
        second.records.keys().all(|k| k.replica == COPY_REPLICA),
        "{:?}",
        second.records.keys().collect::<Vec<_>>()
    );

    tokio::time::sleep(Duration::from_millis(10)).await;
    server.shutdown().await;
    db.cleanup().await;
}
