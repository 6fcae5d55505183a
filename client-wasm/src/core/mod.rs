//! The browser client's logic in plain Rust, without web APIs, so it is unit-tested natively.
//!
//! [`ClientCore`] wraps the engine's [`Session`] (the same sync logic as the native client) and
//! adds what a browser driver needs around it: the connection status, the number of local deltas
//! not yet acknowledged, a queue of application events (changes with their origin, presence,
//! status, errors), the presence of the other peers, reconnect backoff with injected jitter,
//! heartbeats, and the records that keep unacknowledged deltas across a page reload.
//!
//! Like the engine it does no IO: inputs are method calls (socket opened, frame received, local
//! edit, timer tick with the time passed in), effects are taken out by the driver
//! ([`ClientCore::take_frames`], [`ClientCore::take_store_ops`], [`ClientCore::take_events`]).
//!
//! This file is `ClientCore` itself (connection, documents and edits, effects); its pieces are
//! `records` (what is kept for a reload, and the saved copy), `events`, `presence`, `backoff`
//! and `yjs_tap` (the Yjs bridge's side).
//!
//! **Invariants:**
//! - For every open document, the stored records (`PendingKey`s) correspond one to one, in
//!   order, to the session's unconfirmed deltas. The session confirms deltas oldest first (acks
//!   are cumulative, a resync covers every delta), so an acknowledgement removes a prefix and
//!   the matching records are deleted.
//! - Every queue is bounded: frames by [`OUTBOX_CAPACITY`] (overflow drops the connection; the
//!   resync brings everything back), events by [`EVENT_QUEUE_CAPACITY`] (changes, presence and
//!   status coalesce; overflow is reported as [`ClientEvent::Lagged`], never silently), and
//!   store operations are drained after every input, so they hold one input's effects.

use lattice_engine::protocol::{ClientMsg, DEFAULT_MAX_FRAME_BYTES, ServerMsg};
use lattice_engine::sync::{Session, SessionEvent, SessionOutput};
use lattice_engine::{
    ApplyError, ClockedHlc, DEFAULT_MAX_DRIFT, Delta, DocId, Document, EditError, NTP64, ReplicaId,
    Value,
};

use crate::small_map::SmallMap;

mod backoff;
mod events;
mod presence;
mod records;
mod yjs_tap;

pub use backoff::Backoff;
use events::EventQueue;
pub use events::{ClientEvent, EVENT_QUEUE_CAPACITY, Origin, Status};
use presence::MyPresence;
pub use presence::{PeerPresence, TYPING_TTL_MS};
use records::copy_key;
pub use records::{
    COPY_INTERVAL_MS, COPY_REPLICA, PendingKey, RecordError, StoreOp, StoredDelta, decode_record,
    encode_record,
};
use yjs_tap::YjsTap;

/// Most encoded frames waiting for the socket. The driver drains them after every input, so
/// reaching this means the socket cannot keep up; the connection is dropped and the resync on
/// the next one covers everything that was not sent.
pub const OUTBOX_CAPACITY: usize = 1_024;

/// How the client paces itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientOptions {
    /// First reconnect delay; doubles per failed attempt up to `backoff_max_ms`.
    pub backoff_min_ms: u64,
    /// Cap of the reconnect delay, jitter included.
    pub backoff_max_ms: u64,
    /// Application ping interval while online (browsers cannot see WebSocket pings).
    pub ping_interval_ms: u64,
    /// Renewal interval of this client's presence (the server's TTL is 30 s by default).
    pub presence_renew_ms: u64,
    /// A connection that received nothing for this long is dropped and reopened: browsers can
    /// keep a dead socket open for minutes. Pongs count, so it must exceed `ping_interval_ms`.
    pub idle_timeout_ms: u64,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            backoff_min_ms: 250,
            backoff_max_ms: 30_000,
            ping_interval_ms: 10_000,
            presence_renew_ms: 10_000,
            idle_timeout_ms: 35_000,
        }
    }
}

/// Why the connection must be dropped and reopened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// More than [`OUTBOX_CAPACITY`] frames were waiting.
    OutboxFull,
    /// Nothing was received for `idle_timeout_ms`.
    Idle,
}

/// Frames to send now, and whether to drop the connection instead.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Frames {
    pub frames: Vec<Vec<u8>>,
    pub drop_connection: Option<DropReason>,
}

/// What to send, as messages: for a driver that does not send frames (the HTTP transports).
#[derive(Debug, Default)]
pub struct Messages {
    pub messages: Vec<ClientMsg>,
    pub drop_connection: Option<DropReason>,
}

/// A call the client cannot carry out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    #[error("document {doc} is not open")]
    NotOpen { doc: DocId },
    #[error(transparent)]
    Edit(#[from] EditError),
    #[error("restored deltas of {doc} cannot be applied: {source}")]
    Restore { doc: DocId, source: ApplyError },
}

/// A local edit: it changes the document (stamping with the clock) and returns the delta.
type EditFn<'a> = dyn FnOnce(&mut Document, &mut ClockedHlc) -> Result<Delta, EditError> + 'a;

#[derive(Debug, Default)]
struct DocExtra {
    /// Records of the session's unconfirmed deltas, oldest first.
    keys: Vec<PendingKey>,
    mine: Option<MyPresence>,
    others: SmallMap<u64, PeerPresence>,
    tap: Option<YjsTap>,
    /// The document changed since its copy was saved.
    copy_dirty: bool,
    copy_saved_at_ms: Option<u64>,
    /// Records of acknowledged deltas, deleted once a copy that contains them is saved.
    delete_after_copy: Vec<PendingKey>,
}

/// Sorts records by key. They come in key order from IndexedDB, which an insertion sort checks
/// in one pass; the standard library's sort would add several kilobytes of wasm for this one
/// element type (docs/client.md, Size).
fn sort_by_key_order(records: &mut [StoredDelta]) {
    for i in 1..records.len() {
        let mut j = i;
        while j > 0 && records[j - 1].key > records[j].key {
            records.swap(j - 1, j);
            j -= 1;
        }
    }
}

/// The connection as the driver reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Link {
    Down,
    Opening,
    Open,
}

/// The browser client without the browser. See the module docs.
#[derive(Debug)]
pub struct ClientCore {
    session: Session,
    options: ClientOptions,
    docs: SmallMap<DocId, DocExtra>,
    link: Link,
    welcomed: bool,
    backoff: Backoff,
    /// Next local sequence number of this replica's records, per document.
    next_record: SmallMap<DocId, u64>,
    outbox: Vec<ClientMsg>,
    drop_connection: Option<DropReason>,
    store_ops: Vec<StoreOp>,
    events: EventQueue,
    reported: Option<(Status, usize, bool)>,
    last_ping_ms: u64,
    last_received_ms: u64,
    nonce: u64,
}

impl ClientCore {
    /// A client for `replica` whose clock reads `clock`. `token` goes into `hello`.
    pub fn new(
        replica: ReplicaId,
        clock: fn() -> NTP64,
        token: Option<String>,
        options: ClientOptions,
    ) -> Self {
        let mut session = Session::new(replica, ClockedHlc::new(replica, clock, DEFAULT_MAX_DRIFT));
        session.set_token(token);
        session.set_agent(Some(format!("lattice-web/{}", env!("CARGO_PKG_VERSION"))));
        let backoff = Backoff::new(options.backoff_min_ms, options.backoff_max_ms);
        let mut core = Self {
            session,
            options,
            docs: SmallMap::new(),
            link: Link::Down,
            welcomed: false,
            backoff,
            next_record: SmallMap::new(),
            outbox: Vec::new(),
            drop_connection: None,
            store_ops: Vec::new(),
            events: EventQueue::default(),
            reported: None,
            last_ping_ms: 0,
            last_received_ms: 0,
            nonce: 0,
        };
        core.report_status();
        core
    }

    pub fn replica(&self) -> ReplicaId {
        self.session.replica()
    }

    pub fn status(&self) -> Status {
        match self.link {
            Link::Down => Status::Offline,
            Link::Opening => Status::Connecting,
            Link::Open if !self.welcomed => Status::Connecting,
            Link::Open if self.docs.keys().all(|d| self.session.is_synced(d)) => Status::Synced,
            Link::Open => Status::Online,
        }
    }

    /// Unacknowledged local deltas over all open documents.
    pub fn pending_total(&self) -> usize {
        self.docs.keys().map(|d| self.session.pending(d)).sum()
    }

    /// Unacknowledged local deltas of `doc`.
    pub fn pending(&self, doc: &DocId) -> usize {
        self.session.pending(doc)
    }

    pub fn is_open(&self, doc: &DocId) -> bool {
        self.docs.contains_key(doc)
    }

    pub fn is_synced(&self, doc: &DocId) -> bool {
        self.session.is_synced(doc)
    }

    /// Whether the server has committed everything this client holds of `doc`: synced, no
    /// local edit pending, and no resync delta waiting for its ack (one can carry other
    /// replicas' content that the server lost, which `pending` does not count).
    pub fn is_saved(&self, doc: &DocId) -> bool {
        self.session.is_settled(doc)
    }

    /// [`ClientCore::is_saved`] for every open document (true with none open).
    pub fn all_saved(&self) -> bool {
        self.docs.keys().all(|d| self.session.is_settled(d))
    }

    pub fn document(&self, doc: &DocId) -> Option<&Document> {
        self.session.document(doc)
    }

    // --- connection -------------------------------------------------------------------------

    /// The driver is opening a socket.
    pub fn connecting(&mut self) {
        self.link = Link::Opening;
        self.report_status();
    }

    /// The socket is open: hello, then a subscription per open document.
    pub fn socket_open(&mut self, now_ms: u64) {
        self.link = Link::Open;
        self.welcomed = false;
        self.last_ping_ms = now_ms;
        self.last_received_ms = now_ms;
        self.outbox.clear();
        self.drop_connection = None;
        let out = self.session.connected();
        self.dispatch(out);
        self.report_status();
    }

    /// The socket closed (or failed to open). Unsent and in-flight deltas stay pending and are
    /// covered by the next resync; the others' presence is forgotten, as the server forgets it.
    pub fn socket_closed(&mut self) {
        self.link = Link::Down;
        self.welcomed = false;
        self.outbox.clear();
        self.drop_connection = None;
        self.session.disconnected();
        for (id, d) in &mut self.docs {
            if let Some(mine) = &mut d.mine {
                mine.sent_at_ms = None;
            }
            if !d.others.is_empty() {
                d.others.clear();
                self.events.push(ClientEvent::Presence { doc: id.clone() });
            }
        }
        self.report_status();
    }

    /// How long to wait before the next connection attempt; `random` is uniform in `[0, 1)`.
    pub fn next_reconnect_delay_ms(&mut self, random: f64) -> u64 {
        self.backoff.next_delay_ms(random)
    }

    /// Handles one binary frame from the server.
    pub fn receive(&mut self, bytes: &[u8], now_ms: u64) {
        match ServerMsg::decode(bytes, DEFAULT_MAX_FRAME_BYTES) {
            Ok(msg) => self.receive_msg(msg, now_ms),
            Err(e) => {
                self.last_received_ms = now_ms;
                self.events.push(ClientEvent::Error {
                    code: e.code().as_str(),
                    message: format!("undecodable frame from the server: {e}"),
                    doc: None,
                });
                self.reconcile_records();
                self.save_due_copies(now_ms);
                self.report_status();
            }
        }
    }

    /// Handles one message from the server that did not come as a frame (the HTTP transports).
    pub fn receive_msg(&mut self, msg: ServerMsg, now_ms: u64) {
        self.last_received_ms = now_ms;
        let out = self.session.handle(msg);
        self.dispatch_at(out, now_ms);
        self.reconcile_records();
        self.save_due_copies(now_ms);
        self.report_status();
    }

    /// Timer input: pings, presence renewals, and the idle check.
    pub fn tick(&mut self, now_ms: u64) {
        self.save_due_copies(now_ms);
        if self.link != Link::Open {
            return;
        }
        if now_ms.saturating_sub(self.last_received_ms) >= self.options.idle_timeout_ms {
            self.drop_connection = Some(DropReason::Idle);
            return;
        }
        if !self.welcomed {
            return;
        }
        if now_ms.saturating_sub(self.last_ping_ms) >= self.options.ping_interval_ms {
            self.last_ping_ms = now_ms;
            self.nonce += 1;
            self.push_frame(&ClientMsg::Ping { nonce: self.nonce });
        }
        let due: Vec<DocId> = self
            .docs
            .iter()
            .filter(|(id, d)| {
                self.session.is_synced(id)
                    && d.mine.as_ref().is_some_and(|m| {
                        m.sent_at_ms.is_none_or(|sent| {
                            now_ms.saturating_sub(sent) >= self.options.presence_renew_ms
                        })
                    })
            })
            .map(|(id, _)| id.clone())
            .collect();
        for doc in due {
            self.send_my_presence(&doc, now_ms);
        }
    }

    // --- documents --------------------------------------------------------------------------

    /// Starts replicating `doc` with the records a previous run left (any replica's: a closed
    /// tab's edits are adopted). Unreadable records are reported and deleted. Opening a document
    /// that is already open does nothing.
    pub fn open(&mut self, doc: DocId, restored: Vec<StoredDelta>) -> Result<(), ClientError> {
        if self.docs.contains_key(&doc) {
            return Ok(());
        }
        let mut restored = restored;
        sort_by_key_order(&mut restored);
        let mut keys = Vec::new();
        let mut deltas = Vec::new();
        let mut unreadable = Vec::new();
        let mut base = None;
        let own = self.replica().get();
        let mut next = 1;
        for record in restored {
            if record.key.doc != doc {
                continue;
            }
            if record.key.replica == COPY_REPLICA {
                match decode_record(&doc, &record.bytes) {
                    Ok(delta) => base = Some(delta),
                    Err(e) => {
                        self.events.push(ClientEvent::Error {
                            code: "invalid_record",
                            message: format!("the saved copy of the document was dropped: {e}"),
                            doc: Some(doc.clone()),
                        });
                        unreadable.push(record.key);
                    }
                }
                continue;
            }
            if record.key.replica == own {
                next = next.max(record.key.seq.saturating_add(1));
            }
            match decode_record(&doc, &record.bytes) {
                Ok(delta) => {
                    keys.push(record.key);
                    deltas.push(delta);
                }
                Err(e) => {
                    self.events.push(ClientEvent::Error {
                        code: "invalid_record",
                        message: format!("a stored pending delta was dropped: {e}"),
                        doc: Some(doc.clone()),
                    });
                    unreadable.push(record.key);
                }
            }
        }
        if !unreadable.is_empty() {
            self.store_ops.push(StoreOp::Delete(unreadable));
        }
        let had_content = !keys.is_empty() || base.is_some();
        let out = match self
            .session
            .open_with_base(doc.clone(), base.as_ref(), deltas.clone())
        {
            Ok(out) => out,
            // A copy that does not apply (another build wrote it) is dropped; the server has
            // its content.
            Err(e) if base.is_some() => {
                self.events.push(ClientEvent::Error {
                    code: "invalid_record",
                    message: format!("the saved copy of the document was dropped: {e}"),
                    doc: Some(doc.clone()),
                });
                self.store_ops.push(StoreOp::Delete(vec![copy_key(&doc)]));
                self.session
                    .open(doc.clone(), deltas)
                    .map_err(|source| ClientError::Restore {
                        doc: doc.clone(),
                        source,
                    })?
            }
            Err(source) => {
                return Err(ClientError::Restore {
                    doc: doc.clone(),
                    source,
                });
            }
        };
        self.docs.insert(
            doc.clone(),
            DocExtra {
                keys,
                ..DocExtra::default()
            },
        );
        let next = next.max(self.next_record.get(&doc).copied().unwrap_or(1));
        self.next_record.insert(doc.clone(), next);
        self.dispatch(out);
        if had_content {
            self.events.push(ClientEvent::Change {
                doc,
                origin: Origin::Local,
            });
        }
        self.report_status();
        Ok(())
    }

    /// Stops replicating `doc`. Its unacknowledged records stay stored for the next `open`.
    pub fn close(&mut self, doc: &DocId) {
        self.save_copy(doc);
        if self.docs.remove(doc).is_some() {
            let out = self.session.close(doc);
            self.dispatch(out);
            self.report_status();
        }
    }

    /// Inserts `chunk` at UTF-16 offset `index` of text `name`.
    pub fn text_insert(
        &mut self,
        doc: &DocId,
        name: &str,
        index: u32,
        chunk: &str,
    ) -> Result<(), ClientError> {
        self.edit(doc, |d, _| d.text_insert(name, index, chunk))
    }

    /// Deletes `len` UTF-16 code units at `index` of text `name`.
    pub fn text_delete(
        &mut self,
        doc: &DocId,
        name: &str,
        index: u32,
        len: u32,
    ) -> Result<(), ClientError> {
        self.edit(doc, |d, _| d.text_delete(name, index, len))
    }

    pub fn counter_increment(
        &mut self,
        doc: &DocId,
        name: &str,
        by: u64,
    ) -> Result<(), ClientError> {
        self.edit(doc, |d, _| d.counter_increment(name, by))
    }

    pub fn register_set(
        &mut self,
        doc: &DocId,
        name: &str,
        value: Value,
    ) -> Result<(), ClientError> {
        self.edit(doc, |d, hlc| d.register_set(name, value, hlc.tick()))
    }

    /// Makes a local change: it is sent now when the document is synced (else by the next
    /// resync), recorded for the store, and reported as a local change.
    pub fn edit(
        &mut self,
        doc: &DocId,
        edit: impl FnOnce(&mut Document, &mut ClockedHlc) -> Result<Delta, EditError>,
    ) -> Result<(), ClientError> {
        self.edit_boxed(doc, Box::new(edit))
    }

    /// [`ClientCore::edit`], compiled once for every kind of edit (each closure type would
    /// otherwise get its own copy of this and of [`Session::edit`] in the wasm module).
    fn edit_boxed(&mut self, doc: &DocId, edit: Box<EditFn<'_>>) -> Result<(), ClientError> {
        if !self.docs.contains_key(doc) {
            return Err(ClientError::NotOpen { doc: doc.clone() });
        }
        let mut made = None;
        let out = self.session.edit(doc, |d, hlc| {
            let delta = edit(d, hlc)?;
            made = Some(delta.clone());
            Ok(delta)
        })?;
        self.dispatch(out);
        if let Some(delta) = made.filter(|d| !d.is_empty()) {
            let seq = self.next_record.get(doc).copied().unwrap_or(1);
            self.next_record.insert(doc.clone(), seq + 1);
            let key = PendingKey {
                doc: doc.clone(),
                replica: self.replica().get(),
                seq,
            };
            if let Some(d) = self.docs.get_mut(doc) {
                d.keys.push(key.clone());
            }
            let bytes = encode_record(&key, &delta);
            self.store_ops
                .push(StoreOp::Put(StoredDelta { key, bytes }));
            self.events.push(ClientEvent::Change {
                doc: doc.clone(),
                origin: Origin::Local,
            });
        }
        self.report_status();
        Ok(())
    }

    // --- effects ----------------------------------------------------------------------------

    /// Frames to send, oldest first, or the instruction to drop the connection.
    pub fn take_frames(&mut self) -> Frames {
        Frames {
            frames: self.outbox.drain(..).map(|m| m.encode()).collect(),
            drop_connection: self.drop_connection.take(),
        }
    }

    /// What to send, as messages (instead of [`ClientCore::take_frames`]).
    pub fn take_messages(&mut self) -> Messages {
        Messages {
            messages: self.outbox.drain(..).collect(),
            drop_connection: self.drop_connection.take(),
        }
    }

    /// Changes to make to the pending-delta store, in order.
    pub fn take_store_ops(&mut self) -> Vec<StoreOp> {
        std::mem::take(&mut self.store_ops)
    }

    /// Events for the application, oldest first.
    pub fn take_events(&mut self) -> Vec<ClientEvent> {
        self.events.drain()
    }

    /// Records an error found by the driver (a failed store write), for the application.
    pub fn report_error(&mut self, code: &'static str, message: String, doc: Option<DocId>) {
        self.events.push(ClientEvent::Error { code, message, doc });
    }

    // --- internals --------------------------------------------------------------------------

    fn push_frame(&mut self, msg: &ClientMsg) {
        if self.link != Link::Open || self.drop_connection.is_some() {
            return;
        }
        if self.outbox.len() >= OUTBOX_CAPACITY {
            self.outbox.clear();
            self.drop_connection = Some(DropReason::OutboxFull);
            return;
        }
        self.outbox.push(msg.clone());
    }

    fn dispatch(&mut self, out: SessionOutput) {
        self.dispatch_at(out, self.last_received_ms);
    }

    fn dispatch_at(&mut self, out: SessionOutput, now_ms: u64) {
        for msg in &out.send {
            self.push_frame(msg);
        }
        for event in out.events {
            match event {
                SessionEvent::Online => {
                    self.welcomed = true;
                    self.backoff.reset();
                }
                SessionEvent::Synced { doc } => {
                    if self.docs.get(&doc).is_some_and(|d| d.mine.is_some()) {
                        self.send_my_presence(&doc, now_ms);
                    }
                }
                SessionEvent::Remote { doc } => {
                    if let Some(d) = self.docs.get_mut(&doc) {
                        d.copy_dirty = true;
                    }
                    self.events.push(ClientEvent::Change {
                        doc,
                        origin: Origin::Remote,
                    });
                }
                SessionEvent::Acked { .. } | SessionEvent::Pong { .. } => {}
                SessionEvent::Presence {
                    doc,
                    peer,
                    state,
                    typing,
                } => {
                    let Some(d) = self.docs.get_mut(&doc) else {
                        continue;
                    };
                    if state == Value::Null {
                        d.others.remove(&peer);
                    } else {
                        d.others.insert(
                            peer,
                            PeerPresence {
                                peer,
                                state,
                                typing,
                            },
                        );
                    }
                    self.events.push(ClientEvent::Presence { doc });
                }
                SessionEvent::Error { code, message, doc } => {
                    self.events.push(ClientEvent::Error {
                        code: code.as_str(),
                        message,
                        doc,
                    });
                }
            }
        }
    }

    /// Whether any document is open.
    pub fn has_open_docs(&self) -> bool {
        !self.docs.is_empty()
    }

    /// Whether the server answered `hello` on the current connection.
    pub fn welcomed(&self) -> bool {
        self.welcomed
    }

    /// Reports the status again even if it did not change (the driver changed transport).
    pub fn announce_status(&mut self) {
        self.reported = None;
        self.report_status();
    }

    fn report_status(&mut self) {
        let now = (self.status(), self.pending_total(), self.all_saved());
        if self.reported != Some(now) {
            self.reported = Some(now);
            self.events.push(ClientEvent::Status {
                status: now.0,
                pending: now.1,
                saved: now.2,
            });
        }
    }
}

#[cfg(test)]
mod testing;

#[cfg(test)]
mod tests {
    use super::*;
    use lattice_engine::DocState;

    use super::testing::{
        core, doc, online, online_client, reconnect, saved, sent, server, statuses,
    };

    #[test]
    fn records_are_sorted_by_key() {
        let record = |replica, seq| StoredDelta {
            key: PendingKey {
                doc: doc("notes"),
                replica,
                seq,
            },
            bytes: Vec::new(),
        };
        let mut records = vec![record(2, 1), record(1, 2), record(1, 1), record(2, 0)];
        sort_by_key_order(&mut records);
        let keys: Vec<(u32, u64)> = records.iter().map(|r| (r.key.replica, r.key.seq)).collect();
        assert_eq!(keys, [(1, 1), (1, 2), (2, 0), (2, 1)]);
    }

    #[test]
    fn handshake_says_hello_with_token_and_replica_then_subscribes() {
        let d = doc("notes");
        let mut c = core(7);
        c.open(d.clone(), Vec::new()).expect("open");
        assert_eq!(c.status(), Status::Offline);
        c.connecting();
        assert_eq!(c.status(), Status::Connecting);
        c.socket_open(0);
        let msgs = sent(&mut c);
        assert!(matches!(
            &msgs[0],
            ClientMsg::Hello { token: Some(t), replica: Some(7), .. } if t == "secret"
        ));
        assert!(matches!(&msgs[1], ClientMsg::Subscribe { doc, .. } if *doc == d));
        assert_eq!(c.status(), Status::Connecting);
        server(
            &mut c,
            ServerMsg::Welcome {
                protocol: 1,
                server: "t".into(),
            },
        );
        assert_eq!(c.status(), Status::Online);
        server(
            &mut c,
            ServerMsg::Sync {
                doc: d.clone(),
                delta: Delta::default(),
                state: DocState::default(),
            },
        );
        assert_eq!(c.status(), Status::Synced);
        let events = c.take_events();
        // Coalesced: one status event with the latest value.
        assert_eq!(statuses(&events), vec![(Status::Synced, 0)]);
    }

    #[test]
    fn local_edits_are_sent_recorded_and_deleted_once_acked() {
        let (mut c, d) = online_client();
        sent(&mut c);
        c.take_events();
        c.text_insert(&d, "body", 0, "hello").expect("insert");
        c.counter_increment(&d, "likes", 2).expect("increment");
        c.register_set(&d, "title", Value::String("T".into()))
            .expect("set");
        assert_eq!(c.pending(&d), 3);
        assert_eq!(c.pending_total(), 3);
        let msgs = sent(&mut c);
        let seqs: Vec<u64> = msgs
            .iter()
            .filter_map(|m| match m {
                ClientMsg::Delta { seq, .. } => Some(*seq),
                _ => None,
            })
            .collect();
        assert_eq!(seqs.len(), 3);
        let ops = c.take_store_ops();
        let puts: Vec<&StoredDelta> = ops
            .iter()
            .filter_map(|op| match op {
                StoreOp::Put(r) => Some(r),
                StoreOp::Delete(_) => None,
            })
            .collect();
        assert_eq!(
            puts.iter().map(|r| r.key.seq).collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
        assert!(puts.iter().all(|r| r.key.replica == 7 && r.key.doc == d));
        assert_eq!(
            decode_record(&d, &puts[1].bytes)
                .expect("decodes")
                .counters
                .len(),
            1
        );
        let events = c.take_events();
        assert_eq!(
            events
                .iter()
                .filter(|e| matches!(
                    e,
                    ClientEvent::Change {
                        origin: Origin::Local,
                        ..
                    }
                ))
                .count(),
            1,
            "local changes of one document coalesce: {events:?}"
        );
        assert_eq!(statuses(&events), vec![(Status::Synced, 3)]);

        server(
            &mut c,
            ServerMsg::Ack {
                doc: d.clone(),
                seq: seqs[1],
            },
        );
        assert_eq!(c.pending(&d), 1);
        let deleted: Vec<u64> = c
            .take_store_ops()
            .into_iter()
            .flat_map(|op| match op {
                StoreOp::Delete(keys) => keys,
                StoreOp::Put(_) => Vec::new(),
            })
            .map(|k| k.seq)
            .collect();
        assert_eq!(deleted, vec![1, 2]);
        assert_eq!(statuses(&c.take_events()), vec![(Status::Synced, 1)]);
    }

    #[test]
    fn pings_while_online_and_drops_an_idle_connection() {
        let (mut c, _d) = online_client();
        sent(&mut c);
        let ping = c.options.ping_interval_ms;
        c.tick(ping - 1);
        assert!(sent(&mut c).is_empty());
        c.tick(ping);
        assert_eq!(sent(&mut c), vec![ClientMsg::Ping { nonce: 1 }]);
        // The last frame arrived at 1 000 ms.
        c.tick(1_000 + c.options.idle_timeout_ms);
        assert_eq!(c.take_frames().drop_connection, Some(DropReason::Idle));
    }

    #[test]
    fn saved_waits_for_the_ack_of_a_resync_that_carries_only_others_edits() {
        let (mut c, d) = online_client();
        sent(&mut c);
        assert!(c.all_saved());
        // Another replica's edit, relayed: committed on the server.
        let mut other = Document::new(ReplicaId::from_random(8));
        let relayed = other.text_insert("body", 0, "hi").expect("edit");
        server(
            &mut c,
            ServerMsg::Delta {
                doc: d.clone(),
                delta: relayed,
            },
        );
        c.take_events();
        // The server comes back without it (restored from an older backup): the resync sends it
        // back. No local edit is pending, yet the document is not saved until that is acked.
        c.socket_closed();
        reconnect(&mut c, &d);
        let seq = sent(&mut c)
            .into_iter()
            .find_map(|m| match m {
                ClientMsg::Delta { seq, .. } => Some(seq),
                _ => None,
            })
            .expect("a resync delta");
        assert_eq!(c.status(), Status::Synced);
        assert_eq!(c.pending(&d), 0);
        assert!(!c.is_saved(&d) && !c.all_saved());
        assert_eq!(saved(&c.take_events()).last(), Some(&false));
        server(
            &mut c,
            ServerMsg::Ack {
                doc: d.clone(),
                seq,
            },
        );
        assert!(c.is_saved(&d) && c.all_saved());
        // The ack changes neither the status nor the pending count: `saved` alone is news.
        let events = c.take_events();
        assert_eq!(statuses(&events), vec![(Status::Synced, 0)]);
        assert_eq!(saved(&events), vec![true]);
    }

    #[test]
    fn a_full_outbox_drops_the_connection_and_the_resync_covers_it() {
        let (mut c, d) = online_client();
        sent(&mut c);
        for i in 0..=OUTBOX_CAPACITY {
            c.counter_increment(&d, "n", 1)
                .unwrap_or_else(|e| panic!("increment {i}: {e}"));
        }
        let frames = c.take_frames();
        assert!(frames.frames.is_empty());
        assert_eq!(frames.drop_connection, Some(DropReason::OutboxFull));
        c.socket_closed();
        online(&mut c, &d);
        let msgs = sent(&mut c);
        let resync = msgs
            .iter()
            .find_map(|m| match m {
                ClientMsg::Delta { delta, .. } => Some(delta),
                _ => None,
            })
            .expect("resync delta");
        let mut server_doc = Document::new(ReplicaId::from_random(99));
        server_doc.apply(resync).expect("apply");
        assert_eq!(server_doc.counter("n"), OUTBOX_CAPACITY as u64 + 1);
    }

    #[test]
    fn editing_a_document_that_is_not_open_is_an_error() {
        let mut c = core(7);
        assert_eq!(
            c.text_insert(&doc("nope"), "t", 0, "x"),
            Err(ClientError::NotOpen { doc: doc("nope") })
        );
        let d = doc("notes");
        c.open(d.clone(), Vec::new()).expect("open");
        assert!(matches!(
            c.text_delete(&d, "t", 0, 5),
            Err(ClientError::Edit(EditError::OutOfRange { .. }))
        ));
        assert_eq!(c.pending(&d), 0);
    }
}
