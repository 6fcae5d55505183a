//! What the application hears about: [`ClientEvent`]s (status, changes with their [`Origin`],
//! presence, errors) and the bounded queue that holds them until the driver takes them.

use lattice_engine::DocId;

/// Most application events waiting for the driver. Changes, presence and status coalesce per
/// document, so only errors can fill it; then [`ClientEvent::Lagged`] tells the application to
/// re-read its documents.
pub const EVENT_QUEUE_CAPACITY: usize = 1_024;

/// The connection as the application sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// A socket is being opened, or the server has not answered `hello` yet.
    Connecting,
    /// The server answered; some open document has not finished its initial exchange.
    Online,
    /// Online, and every open document holds everything the server had when it subscribed.
    Synced,
    /// No connection; edits are kept (and persisted) until the next one.
    Offline,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Connecting => "connecting",
            Status::Online => "online",
            Status::Synced => "synced",
            Status::Offline => "offline",
        }
    }
}

/// Where a change came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// This client's own edit.
    Local,
    /// Another replica's change, relayed by the server or brought by a resync.
    Remote,
}

impl Origin {
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Local => "local",
            Origin::Remote => "remote",
        }
    }
}

/// Something the application should hear about.
#[derive(Clone, Debug, PartialEq)]
pub enum ClientEvent {
    /// The status, the number of unacknowledged local deltas, or whether everything is saved
    /// changed. `saved`: every open document is synced and the server has committed all this
    /// client holds of it ([`ClientCore::all_saved`](super::ClientCore::all_saved)).
    Status {
        status: Status,
        pending: usize,
        saved: bool,
    },
    /// `doc` changed; read it again.
    Change { doc: DocId, origin: Origin },
    /// The presence of the other peers on `doc` changed; read
    /// [`ClientCore::others`](super::ClientCore::others).
    Presence { doc: DocId },
    /// A refusal from the server, an unreadable frame, or a persisted record that could not be
    /// restored.
    Error {
        code: &'static str,
        message: String,
        doc: Option<DocId>,
    },
    /// Events were lost because the queue was full; re-read every document.
    Lagged,
}

/// The application events waiting for the driver: coalesced per document and bounded.
#[derive(Debug, Default)]
pub(super) struct EventQueue {
    items: Vec<ClientEvent>,
    lagged: bool,
}

impl EventQueue {
    pub(super) fn push(&mut self, event: ClientEvent) {
        match &event {
            ClientEvent::Status { .. } => {
                if let Some(queued) = self
                    .items
                    .iter_mut()
                    .find(|e| matches!(e, ClientEvent::Status { .. }))
                {
                    *queued = event;
                    return;
                }
            }
            ClientEvent::Change { .. } | ClientEvent::Presence { .. } => {
                if self.items.contains(&event) {
                    return;
                }
            }
            ClientEvent::Error { .. } | ClientEvent::Lagged => {}
        }
        if self.items.len() >= EVENT_QUEUE_CAPACITY {
            self.lagged = true;
        } else {
            self.items.push(event);
        }
    }

    pub(super) fn drain(&mut self) -> Vec<ClientEvent> {
        let mut out = std::mem::take(&mut self.items);
        if std::mem::take(&mut self.lagged) {
            out.push(ClientEvent::Lagged);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use lattice_engine::protocol::ServerMsg;
    use lattice_engine::{Document, ReplicaId};

    use super::*;
    use crate::core::testing::{online_client, server};

    #[test]
    fn remote_changes_are_reported_with_their_origin() {
        let (mut c, d) = online_client();
        c.take_events();
        let mut other = Document::new(ReplicaId::from_random(9));
        let delta = other.text_insert("body", 0, "hi").expect("insert");
        server(
            &mut c,
            ServerMsg::Delta {
                doc: d.clone(),
                delta,
            },
        );
        assert_eq!(
            c.take_events(),
            vec![ClientEvent::Change {
                doc: d.clone(),
                origin: Origin::Remote
            }]
        );
        assert_eq!(c.document(&d).expect("open").text("body"), "hi");
    }

    #[test]
    fn the_event_queue_is_bounded_and_reports_lag() {
        let mut q = EventQueue::default();
        for i in 0..EVENT_QUEUE_CAPACITY + 10 {
            q.push(ClientEvent::Error {
                code: "internal",
                message: format!("{i}"),
                doc: None,
            });
        }
        let events = q.drain();
        assert_eq!(events.len(), EVENT_QUEUE_CAPACITY + 1);
        assert_eq!(events.last(), Some(&ClientEvent::Lagged));
        assert!(q.drain().is_empty());
    }
}
