//! The event format of the HTTP transports (docs/http-api.md): each event is one JSON object
//! with a `type`, written once as a Server-Sent Events frame (`event:`, `id:` = the last log
//! seq it covers, `data:`). Long polling answers the same objects in a JSON array, cut out of
//! the same frames ([`Event::data`]), so both transports carry identical payloads and a room
//! encodes each event once for all its HTTP readers.
//!
//! Bytes travel as standard base64: `update` is the Yjs v1 update (for Yjs-only consumers;
//! never empty: an event without Yjs content carries the empty update `[0, 0]`), `frame` the
//! native protocol's message of the event (`sync` or `delta` of docs/protocol.md, MessagePack:
//! what a WebSocket client would receive, counters and registers included).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use lattice_engine::{DocId, Value};
use serde_json::json;

/// The Yjs v1 update that changes nothing.
const EMPTY_UPDATE: &[u8] = &[0, 0];

/// `update` as it is sent: the empty update when there is no Yjs content.
fn update_field(update: &[u8]) -> String {
    STANDARD.encode(if update.is_empty() {
        EMPTY_UPDATE
    } else {
        update
    })
}

/// One encoded event: an SSE frame whose `data:` line is the event's JSON object.
#[derive(Clone, Debug)]
pub(crate) struct Event {
    frame: Bytes,
}

impl Event {
    fn new(kind: &str, id: Option<u64>, data: &serde_json::Value) -> Event {
        let mut frame = format!("event: {kind}\n");
        if let Some(id) = id {
            frame.push_str(&format!("id: {id}\n"));
        }
        frame.push_str("data: ");
        frame.push_str(&data.to_string());
        frame.push_str("\n\n");
        Event {
            frame: Bytes::from(frame),
        }
    }

    /// An event already encoded as an SSE frame by [`Event::frame`].
    pub(crate) fn from_frame(frame: Bytes) -> Event {
        Event { frame }
    }

    /// `sync`: what the reader lacks as of log `seq` (`update`; `frame` a protocol `sync`
    /// message, with the server's state). `peer` is the reader's number in the room, for
    /// `POST /v1/presence` (SSE only).
    pub(crate) fn sync(
        doc: &DocId,
        seq: u64,
        frame: &[u8],
        update: &[u8],
        peer: Option<u64>,
    ) -> Event {
        let mut data = json!({
            "type": "sync",
            "doc": doc.as_str(),
            "seq": seq,
            "update": update_field(update),
            "frame": STANDARD.encode(frame),
        });
        if let Some(peer) = peer {
            data["peer"] = json!(peer);
        }
        Event::new("sync", Some(seq), &data)
    }

    /// `delta`: the committed log entry `seq` (its Yjs update, and a protocol `delta` message).
    pub(crate) fn delta(seq: u64, frame: &[u8], update: &[u8]) -> Event {
        let data = json!({
            "type": "delta",
            "seq": seq,
            "update": update_field(update),
            "frame": STANDARD.encode(frame),
        });
        Event::new("delta", Some(seq), &data)
    }

    /// `presence`: another connection's presence joined or changed, or left (`state` null).
    pub(crate) fn presence(peer: u64, state: &Value, typing: bool) -> Event {
        let data = json!({
            "type": "presence",
            "peer": peer,
            "state": state,
            "typing": typing,
        });
        Event::new("presence", None, &data)
    }

    /// `close`: the stream ends; `reason` says why and whether to come back
    /// (docs/http-api.md): resume with `Last-Event-ID` unless the reason says otherwise.
    pub(crate) fn close(reason: &str, message: &str) -> Event {
        let data = json!({ "type": "close", "reason": reason, "message": message });
        Event::new("close", None, &data)
    }

    /// The SSE frame.
    pub(crate) fn frame(&self) -> &Bytes {
        &self.frame
    }

    /// The event's JSON object (the `data:` line), for long polling.
    pub(crate) fn data(&self) -> &[u8] {
        let text = &self.frame[..];
        let start = text
            .windows(6)
            .position(|w| w == b"data: ")
            .map_or(0, |at| at + 6);
        let end = text.len().saturating_sub(2).max(start);
        &text[start..end]
    }

    /// The log seq the event covers (`id:`), if it has one.
    pub(crate) fn seq(&self) -> Option<u64> {
        // The `id:` line, if any, is the second: look only at the head of the frame.
        let head = &self.frame[..self.frame.len().min(64)];
        let data = head
            .windows(6)
            .position(|w| w == b"data: ")
            .unwrap_or(head.len());
        let text = std::str::from_utf8(&head[..data]).ok()?;
        let line = text.lines().find(|l| l.starts_with("id: "))?;
        line[4..].parse().ok()
    }
}

/// What a `sync` or `delta` event carries, read back from its JSON: the gRPC stream follows
/// the same room window as the HTTP readers (encoded once for all of them) and re-frames it.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct EventParts {
    /// `sync` (else `delta`).
    pub sync: bool,
    pub seq: u64,
    /// The Yjs v1 update (the empty update `[0, 0]` without Yjs content).
    pub update: Vec<u8>,
    /// The native protocol's message.
    pub frame: Vec<u8>,
}

impl Event {
    /// The parts of a `sync` or `delta` event; `None` for any other (presence, close).
    pub(crate) fn parts(&self) -> Option<EventParts> {
        #[derive(serde::Deserialize)]
        struct Data {
            #[serde(rename = "type")]
            kind: String,
            seq: u64,
            update: String,
            frame: String,
        }
        let data: Data = serde_json::from_slice(self.data()).ok()?;
        let sync = match data.kind.as_str() {
            "sync" => true,
            "delta" => false,
            _ => return None,
        };
        Some(EventParts {
            sync,
            seq: data.seq,
            update: STANDARD.decode(data.update).ok()?,
            frame: STANDARD.decode(data.frame).ok()?,
        })
    }
}

/// An SSE comment line: keeps proxies from timing the stream out; clients ignore it.
pub(crate) const KEEP_ALIVE: &[u8] = b": keep-alive\n\n";

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn parts_read_back_what_a_delta_or_sync_event_carries() {
        let e = Event::delta(7, b"\x81\x01", b"");
        let parts = e.parts().unwrap();
        assert_eq!(
            parts,
            EventParts {
                sync: false,
                seq: 7,
                update: vec![0, 0],
                frame: vec![0x81, 1],
            }
        );
        let doc = DocId::new("a/b").unwrap();
        let s = Event::sync(&doc, 3, b"\x90", b"\x01\x02", Some(9));
        assert!(s.parts().unwrap().sync);
        assert_eq!(s.parts().unwrap().update, vec![1, 2]);
        assert_eq!(Event::presence(1, &Value::Null, false).parts(), None);
        assert_eq!(Event::close("x", "y").parts(), None);
    }

    #[test]
    fn a_delta_event_is_one_sse_frame_whose_data_is_its_json() {
        let e = Event::delta(42, b"\x80", b"");
        let frame = std::str::from_utf8(e.frame()).unwrap();
        assert_eq!(
            frame,
            "event: delta\nid: 42\ndata: {\"frame\":\"gA==\",\"seq\":42,\"type\":\"delta\",\"update\":\"AAA=\"}\n\n"
        );
        let data: serde_json::Value = serde_json::from_slice(e.data()).unwrap();
        assert_eq!(data["seq"], 42);
        assert_eq!(e.seq(), Some(42));
        let p = Event::presence(3, &Value::Null, false);
        assert_eq!(p.seq(), None);
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(p.data()).unwrap()["state"],
            serde_json::Value::Null
        );
    }
}
