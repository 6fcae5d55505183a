//! Presence as clients on different nodes see it: a native client's view, and a raw
//! y-websocket peer that mirrors the document and awareness.

use super::*;

/// The other connections' presence on one document, as a client sees it (peer → state).
pub(crate) struct PresenceView {
    pub(crate) peers: Arc<Mutex<HashMap<u64, Value>>>,
}

impl PresenceView {
    pub(crate) fn watch(client: &Client, d: &DocId) -> PresenceView {
        let peers: Arc<Mutex<HashMap<u64, Value>>> = Arc::default();
        let mut events = client.events();
        let (keep, d) = (peers.clone(), d.clone());
        tokio::spawn(async move {
            loop {
                match events.recv().await {
                    Ok(SessionEvent::Presence {
                        doc, peer, state, ..
                    }) if doc == d => {
                        let mut p = keep.lock().expect("presence");
                        if state == Value::Null {
                            p.remove(&peer);
                        } else {
                            p.insert(peer, state);
                        }
                    }
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        PresenceView { peers }
    }

    /// The `name`s of the peers present.
    pub(crate) fn names(&self) -> BTreeSet<String> {
        self.peers
            .lock()
            .expect("presence")
            .values()
            .filter_map(|v| match v {
                Value::Map(m) => match m.get("name") {
                    Some(Value::String(s)) => Some(s.clone()),
                    _ => None,
                },
                _ => None,
            })
            .collect()
    }

    /// Waits until `pred` holds for the names present; returns whether it did.
    pub(crate) async fn wait(
        &self,
        within: Duration,
        pred: impl Fn(&BTreeSet<String>) -> bool,
    ) -> bool {
        let deadline = Instant::now() + within;
        loop {
            if pred(&self.names()) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

pub(crate) fn named(name: &str) -> Value {
    Value::Map([("name".to_owned(), Value::String(name.to_owned()))].into())
}

/// A raw y-websocket peer (as a stock Yjs client speaks) mirroring a document into a
/// [`Document`]: it syncs, sends one insert of its own, then applies every update it gets.
pub(crate) struct YjsMirror {
    pub(crate) doc: Arc<Mutex<Document>>,
    pub(crate) task: tokio::task::JoinHandle<()>,
}

impl YjsMirror {
    pub(crate) async fn join(
        addr: std::net::SocketAddr,
        id: &str,
        replica: u32,
        insert: &str,
    ) -> YjsMirror {
        let mut peer = YjsPeer::connect(addr, id, None).await;
        assert!(peer.send_frame(&[yws::encode_sync_step1(&[])]).await);
        let mut mirror = Document::new(ReplicaId::new(replica).expect("replica"));
        let apply = |mirror: &mut Document, update: Vec<u8>| {
            mirror
                .apply(&Delta {
                    yjs: update,
                    ..Delta::default()
                })
                .expect("a server update applies");
        };
        'synced: loop {
            match peer.read().await {
                YjsRead::Messages(messages) => {
                    for m in messages {
                        match m {
                            YMessage::SyncStep2 { update } => {
                                apply(&mut mirror, update);
                                break 'synced;
                            }
                            YMessage::Update { update } => apply(&mut mirror, update),
                            _ => {}
                        }
                    }
                }
                YjsRead::Closed(code) => {
                    panic!("the y-websocket connection closed before its sync: {code:?}")
                }
            }
        }
        let mine = mirror.text_insert(TEXT, 0, insert).expect("insert");
        assert!(peer.send_frame(&[yws::encode_update(&mine.yjs)]).await);
        let doc = Arc::new(Mutex::new(mirror));
        let keep = doc.clone();
        let task = tokio::spawn(async move {
            while let Some(Ok(frame)) = peer.ws.next().await {
                let Message::Binary(bytes) = frame else {
                    continue;
                };
                for m in yws::decode_frame(&bytes, usize::MAX).expect("server frames decode") {
                    if let YMessage::Update { update } | YMessage::SyncStep2 { update } = m {
                        apply(&mut keep.lock().expect("mirror"), update);
                    }
                }
            }
        });
        YjsMirror { doc, task }
    }

    pub(crate) fn text(&self) -> String {
        self.doc.lock().expect("mirror").text(TEXT)
    }
}

impl Drop for YjsMirror {
    fn drop(&mut self) {
        self.task.abort();
    }
}
