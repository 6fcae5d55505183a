//! The y-websocket wire protocol, as stock Yjs clients (`y-websocket`, `y-protocols`) speak it.
//!
//! Every frame is one or more messages in lib0 encoding: a varuint message type, then a body.
//!
//! | type | name | body |
//! |---|---|---|
//! | 0 | sync | varuint sub-type: 0 step 1 (varbytes state vector), 1 step 2 (varbytes update), 2 update (varbytes update) |
//! | 1 | awareness | varbytes: varuint count, then per entry varuint client id, varuint clock, varstring JSON state |
//! | 2 | auth | varuint 0 = permission denied + varstring reason (1 = granted) |
//! | 3 | query awareness | nothing |
//!
//! Decoding is ours and bounded: every count is checked against the bytes left, every update and
//! state vector is walked by [`crate::yjs`]'s guards before `yrs` may see it, and nothing a peer
//! sends can make this module allocate more than the frame's own size. Encoding uses `yrs::sync`'s
//! message types, so what we send is what the reference implementation sends.

use std::collections::HashMap;
use std::sync::Arc;

use yrs::StateVector;
use yrs::block::ClientID;
use yrs::sync::awareness::{AwarenessUpdate, AwarenessUpdateEntry};
use yrs::sync::{Message, SyncMessage};
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;

use crate::yjs::{UpdateCheckError, check_state_vector_v1, check_update_v1};

/// Message type tag of sync messages (step 1, step 2, update), followed by a sub-type.
pub const MSG_SYNC: u64 = 0;
/// Message type tag of awareness updates.
pub const MSG_AWARENESS: u64 = 1;
/// Message type tag of auth messages (the server's "permission denied").
pub const MSG_AUTH: u64 = 2;
/// Message type tag of a query for everyone's awareness; it has no body.
pub const MSG_QUERY_AWARENESS: u64 = 3;

/// An empty Yjs v1 update: no structs, no deletions. Sent as sync step 2 when the client lacks
/// nothing, because an empty byte string is not a valid update for Yjs.
pub const EMPTY_UPDATE: [u8; 2] = [0, 0];

/// Largest Yjs client id a peer may use in awareness (lib0 integers are 53-bit).
pub const MAX_AWARENESS_CLIENT: u64 = (1 << 53) - 1;

/// One decoded client message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum YMessage {
    /// "Here is my state vector; send me what I lack." Checked v1 state vector bytes.
    SyncStep1 {
        /// The client's state vector, v1 encoding, checked by [`check_state_vector_v1`].
        state_vector: Vec<u8>,
    },
    /// "Here is what you lack." A checked v1 update.
    SyncStep2 {
        /// The update, v1 encoding, checked by [`check_update_v1`] (structure only: it has not
        /// been planned against a document yet).
        update: Vec<u8>,
    },
    /// A change. A checked v1 update.
    Update {
        /// The update, v1 encoding, checked by [`check_update_v1`] (structure only: it has not
        /// been planned against a document yet).
        update: Vec<u8>,
    },
    /// An awareness update: the states of one or more Yjs clients.
    Awareness {
        /// The entries in the order received; client ids at most [`MAX_AWARENESS_CLIENT`].
        entries: Vec<AwarenessEntry>,
    },
    /// Clients do not normally send auth messages; decoded so they can be ignored.
    Auth {
        /// The reason of a "permission denied"; `None` for any other auth sub-type.
        denied: Option<String>,
    },
    /// A request for everyone's current awareness.
    QueryAwareness,
}

/// One client's awareness state: `state_json` is the JSON text, `"null"` when the client left.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AwarenessEntry {
    /// The awareness client id, at most [`MAX_AWARENESS_CLIENT`]: a Yjs client's own id, or
    /// one the server gives a native peer. Encoding keeps only its low 53 bits.
    pub client: u64,
    /// The entry's clock: the client increments it on every change, and a receiver keeps the
    /// state with the highest clock.
    pub clock: u32,
    /// The state as JSON text; not checked to be valid JSON by [`decode_frame`].
    pub state_json: String,
}

impl AwarenessEntry {
    /// Whether this entry removes the client (its state is JSON `null`).
    pub fn is_removal(&self) -> bool {
        self.state_json.trim() == "null"
    }
}

/// Why a y-websocket frame was refused. The frame changes nothing.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum YDecodeError {
    /// The frame has no bytes.
    #[error("empty frame")]
    Empty,
    /// The frame is over the limit given to [`decode_frame`]; nothing of it was read.
    #[error("frame is {len} bytes, the limit is {max}")]
    FrameTooLarge {
        /// The frame's length in bytes.
        len: usize,
        /// The limit in bytes.
        max: usize,
    },
    /// A varint or a length-prefixed field runs past the end of the frame (or of the
    /// awareness body).
    #[error("truncated {what} at byte {at}")]
    Truncated {
        /// The field being read.
        what: &'static str,
        /// The offset where the field starts, in the frame or in the awareness body.
        at: usize,
    },
    /// A varint does not fit in 64 bits.
    #[error("varint longer than 64 bits at byte {at}")]
    VarintOverflow {
        /// The offset where the varint starts.
        at: usize,
    },
    /// A message type other than 0–3.
    #[error("unknown message type {kind}")]
    UnknownMessageType {
        /// The type received.
        kind: u64,
    },
    /// A sync sub-type other than 0 (step 1), 1 (step 2) and 2 (update).
    #[error("unknown sync message type {kind}")]
    UnknownSyncType {
        /// The sub-type received.
        kind: u64,
    },
    /// A string (an awareness state, an auth reason) is not valid UTF-8.
    #[error("{what} is not UTF-8")]
    NotUtf8 {
        /// The field being read.
        what: &'static str,
    },
    /// An awareness client id above [`MAX_AWARENESS_CLIENT`].
    #[error("awareness client id {client} is wider than 53 bits")]
    AwarenessClientTooWide {
        /// The id received.
        client: u64,
    },
    /// An awareness clock that does not fit in a `u32`.
    #[error("awareness clock {clock} is wider than 32 bits")]
    AwarenessClockTooWide {
        /// The clock received.
        clock: u64,
    },
    /// An awareness update declares more entries than its bytes can hold (each takes at
    /// least three), refused before anything is allocated.
    #[error("awareness update claims {count} entries in {left} bytes")]
    TooManyEntries {
        /// The entry count declared.
        count: u64,
        /// The bytes left in the awareness body after the count.
        left: usize,
    },
    /// A sync step 2 or update whose Yjs update fails [`check_update_v1`].
    #[error("bad Yjs update: {0}")]
    Update(UpdateCheckError),
    /// A sync step 1 whose state vector fails [`check_state_vector_v1`].
    #[error("bad state vector: {0}")]
    StateVector(UpdateCheckError),
}

/// A bounded lib0 reader over one frame (shared with [`crate::hocuspocus`]).
pub(crate) struct Reader<'a> {
    pub(crate) buf: &'a [u8],
    pub(crate) pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn is_done(&self) -> bool {
        self.pos >= self.buf.len()
    }

    pub(crate) fn left(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    pub(crate) fn var_uint(&mut self, what: &'static str) -> Result<u64, YDecodeError> {
        let start = self.pos;
        let mut value: u64 = 0;
        let mut shift = 0u32;
        loop {
            let Some(&byte) = self.buf.get(self.pos) else {
                return Err(YDecodeError::Truncated { what, at: start });
            };
            self.pos += 1;
            if shift >= 64 || (shift == 63 && byte & 0x7e != 0) {
                return Err(YDecodeError::VarintOverflow { at: start });
            }
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
            shift += 7;
        }
    }

    pub(crate) fn var_bytes(&mut self, what: &'static str) -> Result<&'a [u8], YDecodeError> {
        let start = self.pos;
        let len = self.var_uint(what)?;
        let len = usize::try_from(len)
            .ok()
            .filter(|l| *l <= self.left())
            .ok_or(YDecodeError::Truncated { what, at: start })?;
        let bytes = &self.buf[self.pos..self.pos + len];
        self.pos += len;
        Ok(bytes)
    }

    pub(crate) fn var_string(&mut self, what: &'static str) -> Result<&'a str, YDecodeError> {
        let bytes = self.var_bytes(what)?;
        std::str::from_utf8(bytes).map_err(|_| YDecodeError::NotUtf8 { what })
    }
}

/// Decodes every message in one frame. A frame that is not entirely valid is refused whole.
pub fn decode_frame(frame: &[u8], max_frame_bytes: usize) -> Result<Vec<YMessage>, YDecodeError> {
    if frame.len() > max_frame_bytes {
        return Err(YDecodeError::FrameTooLarge {
            len: frame.len(),
            max: max_frame_bytes,
        });
    }
    if frame.is_empty() {
        return Err(YDecodeError::Empty);
    }
    let mut r = Reader { buf: frame, pos: 0 };
    let mut out = Vec::with_capacity(1);
    while !r.is_done() {
        out.push(decode_one(&mut r)?);
    }
    Ok(out)
}

pub(crate) fn checked_update(bytes: &[u8]) -> Result<Vec<u8>, YDecodeError> {
    check_update_v1(bytes).map_err(YDecodeError::Update)?;
    Ok(bytes.to_vec())
}

fn decode_one(r: &mut Reader<'_>) -> Result<YMessage, YDecodeError> {
    match r.var_uint("message type")? {
        MSG_SYNC => match r.var_uint("sync message type")? {
            0 => {
                let sv = r.var_bytes("state vector")?;
                check_state_vector_v1(sv).map_err(YDecodeError::StateVector)?;
                Ok(YMessage::SyncStep1 {
                    state_vector: sv.to_vec(),
                })
            }
            1 => Ok(YMessage::SyncStep2 {
                update: checked_update(r.var_bytes("sync step 2")?)?,
            }),
            2 => Ok(YMessage::Update {
                update: checked_update(r.var_bytes("update")?)?,
            }),
            kind => Err(YDecodeError::UnknownSyncType { kind }),
        },
        MSG_AWARENESS => {
            let body = r.var_bytes("awareness update")?;
            Ok(YMessage::Awareness {
                entries: decode_awareness(body)?,
            })
        }
        MSG_AUTH => {
            let denied = match r.var_uint("auth message")? {
                0 => Some(r.var_string("auth reason")?.to_owned()),
                _ => None,
            };
            Ok(YMessage::Auth { denied })
        }
        MSG_QUERY_AWARENESS => Ok(YMessage::QueryAwareness),
        kind => Err(YDecodeError::UnknownMessageType { kind }),
    }
}

pub(crate) fn decode_awareness(body: &[u8]) -> Result<Vec<AwarenessEntry>, YDecodeError> {
    let mut r = Reader { buf: body, pos: 0 };
    let count = r.var_uint("awareness count")?;
    // Each entry takes at least three bytes (client, clock, empty string length).
    if count > (r.left() / 3) as u64 {
        return Err(YDecodeError::TooManyEntries {
            count,
            left: r.left(),
        });
    }
    let mut entries = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let client = r.var_uint("awareness client id")?;
        if client > MAX_AWARENESS_CLIENT {
            return Err(YDecodeError::AwarenessClientTooWide { client });
        }
        let clock = r.var_uint("awareness clock")?;
        let clock =
            u32::try_from(clock).map_err(|_| YDecodeError::AwarenessClockTooWide { clock })?;
        let state_json = r.var_string("awareness state")?.to_owned();
        entries.push(AwarenessEntry {
            client,
            clock,
            state_json,
        });
    }
    Ok(entries)
}

/// Sync step 1 carrying `state_vector` (v1 bytes; empty means "nothing").
pub fn encode_sync_step1(state_vector: &[u8]) -> Vec<u8> {
    let sv = if state_vector.is_empty() {
        StateVector::default()
    } else {
        // Our own documents' state vectors; a failure would mean a bug, and asking for
        // everything is the safe answer.
        StateVector::decode_v1(state_vector).unwrap_or_default()
    };
    Message::Sync(SyncMessage::SyncStep1(sv)).encode_v1()
}

/// Sync step 2 carrying `update`; an empty update is sent as [`EMPTY_UPDATE`].
pub fn encode_sync_step2(update: &[u8]) -> Vec<u8> {
    let update = if update.is_empty() {
        EMPTY_UPDATE.to_vec()
    } else {
        update.to_vec()
    };
    Message::Sync(SyncMessage::SyncStep2(update)).encode_v1()
}

/// A sync update message.
pub fn encode_update(update: &[u8]) -> Vec<u8> {
    Message::Sync(SyncMessage::Update(update.to_vec())).encode_v1()
}

/// An awareness message with `entries` (none is a valid keep-alive).
pub fn encode_awareness(entries: &[AwarenessEntry]) -> Vec<u8> {
    let clients: HashMap<ClientID, AwarenessUpdateEntry> = entries
        .iter()
        .map(|e| {
            (
                ClientID::new(e.client & MAX_AWARENESS_CLIENT),
                AwarenessUpdateEntry {
                    clock: e.clock,
                    json: Arc::from(e.state_json.as_str()),
                },
            )
        })
        .collect();
    Message::Awareness(AwarenessUpdate { clients }).encode_v1()
}

/// "Permission denied" with a reason, as y-protocols' auth message.
pub fn encode_permission_denied(reason: &str) -> Vec<u8> {
    Message::Auth(Some(reason.to_owned())).encode_v1()
}

/// A query for everyone's awareness.
pub fn encode_query_awareness() -> Vec<u8> {
    Message::AwarenessQuery.encode_v1()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 1 << 20;

    #[test]
    fn round_trips_through_yrs_encoding() {
        let sv = [1, 5, 1];
        assert_eq!(
            decode_frame(&encode_update(&[0, 0]), MAX).unwrap(),
            vec![YMessage::Update { update: vec![0, 0] }]
        );
        assert_eq!(
            decode_frame(&encode_sync_step1(&sv), MAX).unwrap(),
            vec![YMessage::SyncStep1 {
                state_vector: sv.to_vec()
            }]
        );
        assert_eq!(
            decode_frame(&encode_sync_step2(&[]), MAX).unwrap(),
            vec![YMessage::SyncStep2 {
                update: EMPTY_UPDATE.to_vec()
            }]
        );
        let entries = vec![AwarenessEntry {
            client: 42,
            clock: 7,
            state_json: r#"{"user":"ann"}"#.into(),
        }];
        assert_eq!(
            decode_frame(&encode_awareness(&entries), MAX).unwrap(),
            vec![YMessage::Awareness { entries }]
        );
        assert_eq!(
            decode_frame(&encode_permission_denied("read-only"), MAX).unwrap(),
            vec![YMessage::Auth {
                denied: Some("read-only".into())
            }]
        );
        assert_eq!(
            decode_frame(&encode_query_awareness(), MAX).unwrap(),
            vec![YMessage::QueryAwareness]
        );
    }

    #[test]
    fn matches_lib0_bytes() {
        // Bytes as y-protocols writes them.
        assert_eq!(encode_update(&[0, 0]), vec![0, 2, 2, 0, 0]);
        assert_eq!(encode_sync_step1(&[]), vec![0, 0, 1, 0]);
        assert_eq!(encode_awareness(&[]), vec![1, 1, 0]);
        assert_eq!(encode_query_awareness(), vec![3]);
    }

    #[test]
    fn refuses_bad_frames() {
        assert_eq!(decode_frame(&[], MAX), Err(YDecodeError::Empty));
        assert_eq!(
            decode_frame(&[9], MAX),
            Err(YDecodeError::UnknownMessageType { kind: 9 })
        );
        assert_eq!(
            decode_frame(&[0, 7], MAX),
            Err(YDecodeError::UnknownSyncType { kind: 7 })
        );
        assert!(matches!(
            decode_frame(&[0x80], MAX),
            Err(YDecodeError::Truncated { .. })
        ));
        assert!(matches!(
            decode_frame(&[0, 2, 0xff, 0xff], MAX),
            Err(YDecodeError::Truncated { .. })
        ));
        assert!(matches!(
            decode_frame(&[0xff; 11], MAX),
            Err(YDecodeError::VarintOverflow { .. })
        ));
        // The allocation bomb, as an update body.
        assert!(matches!(
            decode_frame(&[0, 2, 4, 0x9f, 0x9e, 0x97, 0x31], MAX),
            Err(YDecodeError::Update(UpdateCheckError::CountTooLarge { .. }))
        ));
        // An awareness update claiming a billion entries.
        assert!(matches!(
            decode_frame(&[1, 5, 0x80, 0x94, 0xeb, 0xdc, 0x03], MAX),
            Err(YDecodeError::TooManyEntries { .. })
        ));
        // A valid message followed by garbage is refused whole.
        assert!(matches!(
            decode_frame(&[3, 0, 2], MAX),
            Err(YDecodeError::Truncated { .. })
        ));
        assert!(matches!(
            decode_frame(&[3; 10], 4),
            Err(YDecodeError::FrameTooLarge { len: 10, max: 4 })
        ));
    }
}
