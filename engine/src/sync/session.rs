//! The client side of a connection: the documents a client replicates and what it owes the
//! server.

use std::collections::{BTreeMap, VecDeque};

use crate::protocol::{ClientMsg, ErrorCode, PROTOCOL_VERSION, ServerMsg};
use crate::{ApplyError, ClockedHlc, Delta, DocId, Document, EditError, ReplicaId, Value};

/// Something the application should hear about.
#[derive(Clone, Debug, PartialEq)]
pub enum SessionEvent {
    /// The server answered `hello`.
    Online,
    /// A document finished its initial exchange: the client holds everything the server had.
    Synced {
        /// The document synced. Also reported after a resync the server asked for.
        doc: DocId,
    },
    /// A change from another replica was applied: a relayed delta, or a `sync` that brought
    /// something the client lacked.
    Remote {
        /// The document changed.
        doc: DocId,
    },
    /// Local deltas up to `seq` are durable on the server.
    Acked {
        /// The document the acknowledged deltas changed.
        doc: DocId,
        /// The highest sequence number acknowledged.
        seq: u64,
    },
    /// Another connection's presence on a document joined, changed or left.
    Presence {
        /// The document the presence is about.
        doc: DocId,
        /// The server's number for the other connection.
        peer: u64,
        /// `Value::Null` when the peer left.
        state: Value,
        /// Whether the peer is typing.
        typing: bool,
    },
    /// The server refused something, or the session could not take what the server sent
    /// (reported as `invalid_delta` for a delta it cannot apply, `malformed_message` for a
    /// state it cannot read). A refused local delta stays pending and goes out with the next
    /// resync.
    Error {
        /// What went wrong.
        code: ErrorCode,
        /// What went wrong, for people.
        message: String,
        /// The document concerned, when there is one.
        doc: Option<DocId>,
    },
    /// The server answered a `ping`.
    Pong {
        /// The `ping`'s nonce.
        nonce: u64,
    },
}

/// What the driver must send and report after one input.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SessionOutput {
    /// Messages to send to the server, in order. Drop them if the socket is closed: the next
    /// connection's resync covers them.
    pub send: Vec<ClientMsg>,
    /// Events for the application, in order.
    pub events: Vec<SessionEvent>,
}

/// A local delta the server has not confirmed yet.
struct Unconfirmed {
    delta: Delta,
    /// The sequence number of the message that carries it (or a later resync delta that covers
    /// it); `None` while it has not been sent on the current connection.
    covered_by: Option<u64>,
}

struct ClientDoc {
    doc: Document,
    synced: bool,
    unconfirmed: VecDeque<Unconfirmed>,
    /// The sequence number of the resync delta in flight on this connection: what the server's
    /// state lacked at the sync, which may be other replicas' content this client holds. It
    /// covers no local edit, so it is tracked apart from `unconfirmed`.
    resync: Option<u64>,
}

/// A client's sync state, independent of any socket: the same logic drives the native client
/// and the browser client.
///
/// **Invariants:** a local edit stays counted as pending until the server acknowledges a delta
/// that contains it; after a reconnect, the client sends exactly what the server's state lacks
/// (`diff_since`), which covers every offline edit and every delta that was in flight.
pub struct Session {
    replica: ReplicaId,
    hlc: ClockedHlc,
    token: Option<String>,
    agent: Option<String>,
    docs: BTreeMap<DocId, ClientDoc>,
    connected: bool,
    next_seq: u64,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("replica", &self.replica)
            .field("docs", &self.docs.len())
            .field("connected", &self.connected)
            .finish_non_exhaustive()
    }
}

impl Session {
    /// A session for `replica`. `hlc` stamps its register writes in [`Session::edit`]; it reads
    /// the driver's clock function, so edits need no time argument.
    pub fn new(replica: ReplicaId, hlc: ClockedHlc) -> Self {
        Self {
            replica,
            hlc,
            token: None,
            agent: None,
            docs: BTreeMap::new(),
            connected: false,
            next_seq: 1,
        }
    }

    /// The token sent in `hello`.
    pub fn set_token(&mut self, token: Option<String>) {
        self.token = token;
    }

    /// The free-form client name and version sent in `hello`, for the server's logs.
    pub fn set_agent(&mut self, agent: Option<String>) {
        self.agent = agent;
    }

    /// This client's replica id, sent in `hello` and used for its edits.
    pub fn replica(&self) -> ReplicaId {
        self.replica
    }

    /// Whether the driver reported the socket open ([`Session::connected`]) and not closed
    /// since ([`Session::disconnected`]).
    pub fn is_connected(&self) -> bool {
        self.connected
    }

    /// The local replica of `doc`, if it is open. Change it only through [`Session::edit`].
    pub fn document(&self, doc: &DocId) -> Option<&Document> {
        self.docs.get(doc).map(|d| &d.doc)
    }

    /// Whether `doc` finished its exchange with the server on this connection: the client then
    /// holds everything the server had, and local edits go out at once.
    pub fn is_synced(&self, doc: &DocId) -> bool {
        self.docs.get(doc).is_some_and(|d| d.synced)
    }

    /// Whether everything this client holds of `doc` is in the server's committed state:
    /// synced, no local delta pending, and no resync delta (which can carry other replicas'
    /// content the server lost) waiting for its ack.
    pub fn is_settled(&self, doc: &DocId) -> bool {
        self.docs
            .get(doc)
            .is_some_and(|d| d.synced && d.unconfirmed.is_empty() && d.resync.is_none())
    }

    /// Local deltas of `doc` not yet acknowledged by the server (a resync delta that carries
    /// only other replicas' content is not counted; see [`Session::is_settled`]).
    pub fn pending(&self, doc: &DocId) -> usize {
        self.docs.get(doc).map_or(0, |d| d.unconfirmed.len())
    }

    /// The unconfirmed local deltas, for a driver that keeps them across restarts.
    pub fn pending_deltas(&self, doc: &DocId) -> Vec<Delta> {
        self.docs.get(doc).map_or_else(Vec::new, |d| {
            d.unconfirmed.iter().map(|u| u.delta.clone()).collect()
        })
    }

    fn subscribe_msg(doc: &DocId, d: &ClientDoc) -> ClientMsg {
        ClientMsg::Subscribe {
            doc: doc.clone(),
            state: d.doc.state(),
        }
    }

    /// Starts replicating `doc`. `restored` are local deltas a previous run did not get
    /// confirmed (kept by the driver); they count as pending until the server has them.
    pub fn open(&mut self, doc: DocId, restored: Vec<Delta>) -> Result<SessionOutput, ApplyError> {
        self.open_with_base(doc, None, restored)
    }

    /// Like [`Session::open`], starting from `base`: a copy of the document a previous run
    /// saved locally (content the server already has, so it is not pending). Offline, the
    /// document then shows what it held, not just this replica's unconfirmed edits.
    pub fn open_with_base(
        &mut self,
        doc: DocId,
        base: Option<&Delta>,
        restored: Vec<Delta>,
    ) -> Result<SessionOutput, ApplyError> {
        let mut out = SessionOutput::default();
        if self.docs.contains_key(&doc) {
            return Ok(out);
        }
        let mut d = ClientDoc {
            doc: Document::new(self.replica),
            synced: false,
            unconfirmed: VecDeque::new(),
            resync: None,
        };
        if let Some(base) = base {
            d.doc.apply(base)?;
        }
        for delta in restored {
            d.doc.apply(&delta)?;
            d.unconfirmed.push_back(Unconfirmed {
                delta,
                covered_by: None,
            });
        }
        if self.connected {
            out.send.push(Self::subscribe_msg(&doc, &d));
        }
        self.docs.insert(doc, d);
        Ok(out)
    }

    /// Stops replicating `doc`.
    pub fn close(&mut self, doc: &DocId) -> SessionOutput {
        let mut out = SessionOutput::default();
        if self.docs.remove(doc).is_some() && self.connected {
            out.send.push(ClientMsg::Unsubscribe { doc: doc.clone() });
        }
        out
    }

    /// The socket is open: say hello and subscribe to every open document.
    pub fn connected(&mut self) -> SessionOutput {
        self.connected = true;
        let mut out = SessionOutput::default();
        out.send.push(ClientMsg::Hello {
            protocol: PROTOCOL_VERSION,
            token: self.token.clone(),
            agent: self.agent.clone(),
            replica: Some(self.replica.get()),
        });
        for (id, d) in &self.docs {
            out.send.push(Self::subscribe_msg(id, d));
        }
        out
    }

    /// The socket is gone. Nothing is lost: in-flight deltas stay pending and are covered by
    /// the resync on the next connection.
    pub fn disconnected(&mut self) {
        self.connected = false;
        for d in self.docs.values_mut() {
            d.synced = false;
            d.resync = None;
            for u in &mut d.unconfirmed {
                u.covered_by = None;
            }
        }
    }

    /// Makes a local change with `edit` (which gets the document and this replica's clock) and
    /// sends it when the document is synced; otherwise it waits for the next resync.
    pub fn edit(
        &mut self,
        doc: &DocId,
        edit: impl FnOnce(&mut Document, &mut ClockedHlc) -> Result<Delta, EditError>,
    ) -> Result<SessionOutput, EditError> {
        let mut out = SessionOutput::default();
        let Some(d) = self.docs.get_mut(doc) else {
            return Ok(out);
        };
        let delta = edit(&mut d.doc, &mut self.hlc)?;
        if delta.is_empty() {
            return Ok(out);
        }
        let covered_by = if d.synced && self.connected {
            let seq = self.next_seq;
            self.next_seq += 1;
            out.send.push(ClientMsg::Delta {
                doc: doc.clone(),
                seq,
                delta: delta.clone(),
            });
            Some(seq)
        } else {
            None
        };
        d.unconfirmed.push_back(Unconfirmed { delta, covered_by });
        Ok(out)
    }

    /// Handles one message from the server.
    pub fn handle(&mut self, msg: ServerMsg) -> SessionOutput {
        let mut out = SessionOutput::default();
        match msg {
            ServerMsg::Welcome { .. } => out.events.push(SessionEvent::Online),
            ServerMsg::Sync { doc, delta, state } => {
                let Some(d) = self.docs.get_mut(&doc) else {
                    return out;
                };
                match d.doc.apply(&delta) {
                    // What the client lacked is a change from other replicas like any relay.
                    Ok(applied) if applied.changed => {
                        out.events.push(SessionEvent::Remote { doc: doc.clone() })
                    }
                    Ok(_) => {}
                    Err(e) => {
                        out.events.push(SessionEvent::Error {
                            code: ErrorCode::InvalidDelta,
                            message: format!("server sync delta refused: {e}"),
                            doc: Some(doc),
                        });
                        return out;
                    }
                }
                match d.doc.diff_since(&state) {
                    Ok(missing) if !missing.is_empty() => {
                        let seq = self.next_seq;
                        self.next_seq += 1;
                        out.send.push(ClientMsg::Delta {
                            doc: doc.clone(),
                            seq,
                            delta: missing,
                        });
                        for u in &mut d.unconfirmed {
                            u.covered_by = Some(seq);
                        }
                        d.resync = Some(seq);
                    }
                    Ok(_) => {
                        d.unconfirmed.clear();
                        d.resync = None;
                    }
                    Err(e) => out.events.push(SessionEvent::Error {
                        code: ErrorCode::MalformedMessage,
                        message: format!("server state unreadable: {e}"),
                        doc: Some(doc.clone()),
                    }),
                }
                d.synced = true;
                out.events.push(SessionEvent::Synced { doc });
            }
            ServerMsg::Delta { doc, delta } => {
                let Some(d) = self.docs.get_mut(&doc) else {
                    return out;
                };
                match d.doc.apply(&delta) {
                    Ok(_) => out.events.push(SessionEvent::Remote { doc }),
                    Err(e) => out.events.push(SessionEvent::Error {
                        code: ErrorCode::InvalidDelta,
                        message: format!("server delta refused: {e}"),
                        doc: Some(doc),
                    }),
                }
            }
            ServerMsg::Ack { doc, seq } => {
                if let Some(d) = self.docs.get_mut(&doc) {
                    d.unconfirmed
                        .retain(|u| u.covered_by.is_none_or(|covered| covered > seq));
                    if d.resync.is_some_and(|r| r <= seq) {
                        d.resync = None;
                    }
                }
                out.events.push(SessionEvent::Acked { doc, seq });
            }
            ServerMsg::Presence {
                doc,
                peer,
                state,
                typing,
            } => out.events.push(SessionEvent::Presence {
                doc,
                peer,
                state,
                typing,
            }),
            ServerMsg::Error {
                code,
                message,
                doc,
                seq,
            } => {
                // A refused delta is never covered by a later ack: it stays pending and goes
                // out again with the next resync (on reconnect, or at once when the server
                // follows a `missing_dependencies` refusal with a `sync`).
                if let (Some(id), Some(seq)) = (&doc, seq)
                    && let Some(d) = self.docs.get_mut(id)
                {
                    for u in &mut d.unconfirmed {
                        if u.covered_by == Some(seq) {
                            u.covered_by = None;
                        }
                    }
                    // A refused resync delta is no longer in flight; its content is still
                    // held, and the next resync computes it again.
                    if d.resync == Some(seq) {
                        d.resync = None;
                    }
                }
                out.events.push(SessionEvent::Error { code, message, doc });
            }
            ServerMsg::Pong { nonce } => out.events.push(SessionEvent::Pong { nonce }),
        }
        out
    }

    /// Publishes this client's presence on `doc` (`Value::Null` leaves).
    pub fn presence(&self, doc: &DocId, state: Value, typing: bool) -> SessionOutput {
        let mut out = SessionOutput::default();
        if self.connected && self.docs.contains_key(doc) {
            out.send.push(ClientMsg::Presence {
                doc: doc.clone(),
                state,
                typing,
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DEFAULT_MAX_DRIFT, manual_clock};

    fn session(replica: u32) -> Session {
        let replica = ReplicaId::from_random(replica);
        Session::new(
            replica,
            ClockedHlc::new(replica, manual_clock, DEFAULT_MAX_DRIFT),
        )
    }

    fn doc() -> DocId {
        DocId::new("notes").expect("doc id")
    }

    #[test]
    fn a_sync_that_brings_content_reports_a_remote_change() {
        let mut other = Document::new(ReplicaId::from_random(9));
        let content = other.text_insert("body", 0, "hi").expect("insert");
        let mut s = session(1);
        s.open(doc(), Vec::new()).expect("open");
        s.connected();
        let out = s.handle(ServerMsg::Sync {
            doc: doc(),
            delta: content,
            state: other.state(),
        });
        assert_eq!(
            out.events,
            vec![
                SessionEvent::Remote { doc: doc() },
                SessionEvent::Synced { doc: doc() }
            ]
        );
    }

    #[test]
    fn an_empty_sync_reports_only_synced() {
        let mut s = session(1);
        s.open(doc(), Vec::new()).expect("open");
        s.connected();
        let out = s.handle(ServerMsg::Sync {
            doc: doc(),
            delta: Delta::default(),
            state: crate::DocState::default(),
        });
        assert_eq!(out.events, vec![SessionEvent::Synced { doc: doc() }]);
    }

    #[test]
    fn other_replicas_content_the_server_lacks_keeps_a_client_unsettled_until_acked() {
        // The client holds another replica's edit (relayed before a crash lost it); it has no
        // local edit of its own, yet it is not settled until the server acknowledges the
        // resync delta that gives the edit back.
        let mut other = Document::new(ReplicaId::from_random(9));
        let relayed = other.text_insert("body", 0, "hi").expect("insert");
        let mut s = session(1);
        s.open(doc(), Vec::new()).expect("open");
        s.connected();
        s.handle(ServerMsg::Sync {
            doc: doc(),
            delta: Delta::default(),
            state: crate::DocState::default(),
        });
        s.handle(ServerMsg::Delta {
            doc: doc(),
            delta: relayed,
        });
        assert!(s.is_settled(&doc()));

        s.disconnected();
        assert!(!s.is_settled(&doc()));
        s.connected();
        let out = s.handle(ServerMsg::Sync {
            doc: doc(),
            delta: Delta::default(),
            state: crate::DocState::default(),
        });
        let Some(ClientMsg::Delta { seq, .. }) = out.send.first() else {
            panic!("no resync delta: {:?}", out.send);
        };
        assert_eq!(s.pending(&doc()), 0, "no local edit is pending");
        assert!(!s.is_settled(&doc()), "the resync delta is in flight");
        s.handle(ServerMsg::Ack {
            doc: doc(),
            seq: *seq,
        });
        assert!(s.is_settled(&doc()));
    }
}
