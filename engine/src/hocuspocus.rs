//! The Hocuspocus wire protocol, as `@hocuspocus/provider` 4.x speaks it: several documents
//! multiplexed on one WebSocket.
//!
//! A frame is one message: a varstring *document name*, a varuint message type, then a body.
//! The two connection-level messages are a single byte with no document name (a frame of
//! length one cannot hold a name and a type).
//!
//! | type | name | body |
//! |---|---|---|
//! | 0 | sync | as y-websocket: varuint sub-type 0 step 1 (varbytes state vector), 1 step 2 (varbytes update), 2 update (varbytes update) |
//! | 1 | awareness | as y-websocket: varbytes awareness update |
//! | 2 | auth | varuint sub-type: 0 token (varstring token, then optionally varstring provider version), 1 permission denied (varstring reason), 2 authenticated (varstring scope, `"readonly"` or `"read-write"`) |
//! | 3 | query awareness | nothing |
//! | 5 | stateless | varstring payload |
//! | 7 | close | from the client nothing; from the server varstring reason |
//! | 8 | sync status | lib0 signed varint, 1 = applied |
//! | 9 | ping | the whole frame is `[9]` |
//! | 10 | pong | the whole frame is `[10]` |
//!
//! Decoding is ours and bounded, on [`crate::yws`]'s reader: every length is checked against the
//! bytes left, updates and state vectors pass [`crate::yjs`]'s guards before `yrs` may see them,
//! trailing bytes are refused (except after an auth token, whose message grows new fields), and
//! nothing a peer sends makes this module allocate more than the frame's own size.

use crate::yjs::check_state_vector_v1;
use crate::yws::{self, AwarenessEntry, Reader, YDecodeError, checked_update, decode_awareness};

/// Message type of sync messages (step 1, step 2, update).
pub const MSG_SYNC: u64 = 0;
/// Message type of awareness updates.
pub const MSG_AWARENESS: u64 = 1;
/// Message type of auth messages (token, permission denied, authenticated).
pub const MSG_AUTH: u64 = 2;
/// Message type of a query for everyone's awareness.
pub const MSG_QUERY_AWARENESS: u64 = 3;
/// Message type of stateless messages (an application's string payload).
pub const MSG_STATELESS: u64 = 5;
/// Message type of "close this document" (client) or "this document is closed" (server).
pub const MSG_CLOSE: u64 = 7;
/// Message type of the server's answer to an update: applied or not.
pub const MSG_SYNC_STATUS: u64 = 8;
/// The connection-level ping, a frame of this one byte.
pub const PING: [u8; 1] = [9];
/// The connection-level pong, a frame of this one byte.
pub const PONG: [u8; 1] = [10];

const AUTH_TOKEN: u64 = 0;
const AUTH_PERMISSION_DENIED: u64 = 1;
const AUTH_AUTHENTICATED: u64 = 2;

/// The scope the provider reads from `authenticated` for a read-only document.
pub const SCOPE_READONLY: &str = "readonly";
/// The scope the provider reads from `authenticated` for a writable document.
pub const SCOPE_READ_WRITE: &str = "read-write";

/// One decoded frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HocusFrame {
    /// The connection-level keep-alive; answered with [`PONG`].
    Ping,
    /// The answer to [`PING`].
    Pong,
    /// A message about one document.
    Doc {
        /// The document name exactly as sent (not checked to be a valid document id here).
        name: String,
        /// What it says.
        message: HocusMessage,
    },
}

/// A message about one document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HocusMessage {
    /// "Here is my state vector; send me what I lack." Checked v1 state vector bytes.
    SyncStep1 {
        /// The state vector, v1 encoding, checked by [`check_state_vector_v1`].
        state_vector: Vec<u8>,
    },
    /// "Here is what you lack." A structurally checked v1 update.
    SyncStep2 {
        /// The update, v1 encoding, checked by [`crate::yjs::check_update_v1`].
        update: Vec<u8>,
    },
    /// A change. A structurally checked v1 update.
    Update {
        /// The update, v1 encoding, checked by [`crate::yjs::check_update_v1`].
        update: Vec<u8>,
    },
    /// An awareness update, decoded as y-websocket's.
    Awareness {
        /// The entries in the order received.
        entries: Vec<AwarenessEntry>,
    },
    /// The provider's token for this document (auth sub-type 0).
    Token {
        /// The token as sent; empty when the provider has none.
        token: String,
        /// The provider's version, which 4.x sends after the token.
        provider_version: Option<String>,
    },
    /// The server refuses the document (auth sub-type 1).
    PermissionDenied {
        /// Why, for people.
        reason: String,
    },
    /// The server accepts the document (auth sub-type 2).
    Authenticated {
        /// [`SCOPE_READONLY`] or [`SCOPE_READ_WRITE`] (decoded as any string).
        scope: String,
    },
    /// A request for everyone's current awareness.
    QueryAwareness,
    /// An application's message for the document's other connections.
    Stateless {
        /// The payload, any string.
        payload: String,
    },
    /// The provider detaches from the document; from the server, a reason (empty from a
    /// client).
    Close {
        /// Why; the provider reports it as the close event's reason.
        reason: String,
    },
    /// Whether the server applied the client's last update (one per update).
    SyncStatus {
        /// `true` when applied (for Lattice: committed to the store).
        applied: bool,
    },
}

/// Why a Hocuspocus frame was refused. The frame changes nothing.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HocusDecodeError {
    /// What is shared with y-websocket: sizes, varints, strings, sync and awareness bodies.
    #[error(transparent)]
    Frame(#[from] YDecodeError),
    /// A message type Hocuspocus clients do not send, or none at all.
    #[error("unknown message type {kind}")]
    UnknownMessageType {
        /// The type received.
        kind: u64,
    },
    /// An auth sub-type other than 0 (token), 1 (denied) and 2 (authenticated).
    #[error("unknown auth message type {kind}")]
    UnknownAuthType {
        /// The sub-type received.
        kind: u64,
    },
    /// Bytes after the message.
    #[error("{left} bytes after the message")]
    TrailingBytes {
        /// How many.
        left: usize,
    },
}

/// Decodes one frame of at most `max_frame_bytes`. A frame that is not entirely valid is
/// refused whole.
pub fn decode_frame(frame: &[u8], max_frame_bytes: usize) -> Result<HocusFrame, HocusDecodeError> {
    if frame.len() > max_frame_bytes {
        return Err(YDecodeError::FrameTooLarge {
            len: frame.len(),
            max: max_frame_bytes,
        }
        .into());
    }
    match frame {
        [] => return Err(YDecodeError::Empty.into()),
        [9] => return Ok(HocusFrame::Ping),
        [10] => return Ok(HocusFrame::Pong),
        _ => {}
    }
    let mut r = Reader { buf: frame, pos: 0 };
    let name = r.var_string("document name")?.to_owned();
    let (message, trailing_allowed) = decode_message(&mut r)?;
    if !r.is_done() && !trailing_allowed {
        return Err(HocusDecodeError::TrailingBytes { left: r.left() });
    }
    Ok(HocusFrame::Doc { name, message })
}

fn decode_message(r: &mut Reader<'_>) -> Result<(HocusMessage, bool), HocusDecodeError> {
    let message = match r.var_uint("message type")? {
        MSG_SYNC => match r.var_uint("sync message type")? {
            0 => {
                let sv = r.var_bytes("state vector")?;
                check_state_vector_v1(sv).map_err(YDecodeError::StateVector)?;
                HocusMessage::SyncStep1 {
                    state_vector: sv.to_vec(),
                }
            }
            1 => HocusMessage::SyncStep2 {
                update: checked_update(r.var_bytes("sync step 2")?)?,
            },
            2 => HocusMessage::Update {
                update: checked_update(r.var_bytes("update")?)?,
            },
            kind => return Err(YDecodeError::UnknownSyncType { kind }.into()),
        },
        MSG_AWARENESS => HocusMessage::Awareness {
            entries: decode_awareness(r.var_bytes("awareness update")?)?,
        },
        MSG_AUTH => match r.var_uint("auth message type")? {
            AUTH_TOKEN => {
                let token = r.var_string("token")?.to_owned();
                let provider_version = if r.is_done() {
                    None
                } else {
                    Some(r.var_string("provider version")?.to_owned())
                };
                let message = HocusMessage::Token {
                    token,
                    provider_version,
                };
                return Ok((message, true));
            }
            AUTH_PERMISSION_DENIED => HocusMessage::PermissionDenied {
                reason: r.var_string("auth reason")?.to_owned(),
            },
            AUTH_AUTHENTICATED => HocusMessage::Authenticated {
                scope: r.var_string("auth scope")?.to_owned(),
            },
            kind => return Err(HocusDecodeError::UnknownAuthType { kind }),
        },
        MSG_QUERY_AWARENESS => HocusMessage::QueryAwareness,
        MSG_STATELESS => HocusMessage::Stateless {
            payload: r.var_string("stateless payload")?.to_owned(),
        },
        MSG_CLOSE => HocusMessage::Close {
            reason: if r.is_done() {
                String::new()
            } else {
                r.var_string("close reason")?.to_owned()
            },
        },
        MSG_SYNC_STATUS => HocusMessage::SyncStatus {
            applied: var_int(r)? == 1,
        },
        kind => return Err(HocusDecodeError::UnknownMessageType { kind }),
    };
    Ok((message, false))
}

/// A lib0 signed varint: the first byte holds a continuation bit, the sign and six bits.
fn var_int(r: &mut Reader<'_>) -> Result<i64, HocusDecodeError> {
    let start = r.pos;
    let truncated = YDecodeError::Truncated {
        what: "sync status",
        at: start,
    };
    let &first = r.buf.get(r.pos).ok_or(truncated.clone())?;
    r.pos += 1;
    let negative = first & 0x40 != 0;
    let mut value = u64::from(first & 0x3f);
    let mut more = first & 0x80 != 0;
    let mut shift = 6u32;
    while more {
        let &byte = r.buf.get(r.pos).ok_or(truncated.clone())?;
        r.pos += 1;
        if shift > 56 {
            return Err(YDecodeError::VarintOverflow { at: start }.into());
        }
        value |= u64::from(byte & 0x7f) << shift;
        more = byte & 0x80 != 0;
        shift += 7;
    }
    // At most 62 bits were read, so the value fits.
    let value = i64::try_from(value).unwrap_or(i64::MAX);
    Ok(if negative { -value } else { value })
}

fn write_var_uint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn write_var_string(out: &mut Vec<u8>, s: &str) {
    write_var_uint(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

fn header(name: &str, kind: u64, body_len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(name.len() + body_len + 12);
    write_var_string(&mut out, name);
    write_var_uint(&mut out, kind);
    out
}

/// `name` followed by a y-websocket message (sync and awareness bodies are the same).
fn with_name(name: &str, yws_frame: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(name.len() + yws_frame.len() + 4);
    write_var_string(&mut out, name);
    out.extend_from_slice(yws_frame);
    out
}

/// Sync step 1 for `name` with `state_vector` (v1 bytes; empty means "nothing").
pub fn encode_sync_step1(name: &str, state_vector: &[u8]) -> Vec<u8> {
    with_name(name, &yws::encode_sync_step1(state_vector))
}

/// Sync step 2 for `name`; an empty update is sent as [`yws::EMPTY_UPDATE`].
pub fn encode_sync_step2(name: &str, update: &[u8]) -> Vec<u8> {
    with_name(name, &yws::encode_sync_step2(update))
}

/// A sync update for `name`.
pub fn encode_update(name: &str, update: &[u8]) -> Vec<u8> {
    with_name(name, &yws::encode_update(update))
}

/// An awareness message for `name` (no entries is a valid, empty update).
pub fn encode_awareness(name: &str, entries: &[AwarenessEntry]) -> Vec<u8> {
    with_name(name, &yws::encode_awareness(entries))
}

/// "Authenticated" for `name`, read-only or not.
pub fn encode_authenticated(name: &str, read_only: bool) -> Vec<u8> {
    let scope = if read_only {
        SCOPE_READONLY
    } else {
        SCOPE_READ_WRITE
    };
    encode_auth(name, AUTH_AUTHENTICATED, scope, None)
}

/// "Permission denied" for `name`, with a reason.
pub fn encode_permission_denied(name: &str, reason: &str) -> Vec<u8> {
    encode_auth(name, AUTH_PERMISSION_DENIED, reason, None)
}

/// The provider's token message for `name` (what `@hocuspocus/provider` sends first).
pub fn encode_token(name: &str, token: &str, provider_version: Option<&str>) -> Vec<u8> {
    encode_auth(name, AUTH_TOKEN, token, provider_version)
}

fn encode_auth(name: &str, kind: u64, text: &str, extra: Option<&str>) -> Vec<u8> {
    let mut out = header(name, MSG_AUTH, text.len() + 8);
    write_var_uint(&mut out, kind);
    write_var_string(&mut out, text);
    if let Some(extra) = extra {
        write_var_string(&mut out, extra);
    }
    out
}

/// A query for everyone's awareness on `name`.
pub fn encode_query_awareness(name: &str) -> Vec<u8> {
    header(name, MSG_QUERY_AWARENESS, 0)
}

/// A stateless message for `name`.
pub fn encode_stateless(name: &str, payload: &str) -> Vec<u8> {
    let mut out = header(name, MSG_STATELESS, payload.len() + 4);
    write_var_string(&mut out, payload);
    out
}

/// "This document is closed" for `name`, with a reason (the provider treats it as a close
/// event for that document only). An empty reason is what a client sends.
pub fn encode_close(name: &str, reason: &str) -> Vec<u8> {
    let mut out = header(name, MSG_CLOSE, reason.len() + 4);
    if !reason.is_empty() {
        write_var_string(&mut out, reason);
    }
    out
}

/// The answer to one update for `name`: applied (committed) or not.
pub fn encode_sync_status(name: &str, applied: bool) -> Vec<u8> {
    let mut out = header(name, MSG_SYNC_STATUS, 1);
    // lib0's writeVarInt of 1 and 0: one byte, no sign, no continuation.
    out.push(u8::from(applied));
    out
}

impl HocusFrame {
    /// This frame's bytes, with the encoders above (canonical forms: awareness keeps one
    /// entry per client, as y-protocols does).
    pub fn encode(&self) -> Vec<u8> {
        let (name, message) = match self {
            HocusFrame::Ping => return PING.to_vec(),
            HocusFrame::Pong => return PONG.to_vec(),
            HocusFrame::Doc { name, message } => (name.as_str(), message),
        };
        match message {
            HocusMessage::SyncStep1 { state_vector } => encode_sync_step1(name, state_vector),
            HocusMessage::SyncStep2 { update } => encode_sync_step2(name, update),
            HocusMessage::Update { update } => encode_update(name, update),
            HocusMessage::Awareness { entries } => encode_awareness(name, entries),
            HocusMessage::Token {
                token,
                provider_version,
            } => encode_token(name, token, provider_version.as_deref()),
            HocusMessage::PermissionDenied { reason } => encode_permission_denied(name, reason),
            HocusMessage::Authenticated { scope } => {
                encode_auth(name, AUTH_AUTHENTICATED, scope, None)
            }
            HocusMessage::QueryAwareness => encode_query_awareness(name),
            HocusMessage::Stateless { payload } => encode_stateless(name, payload),
            HocusMessage::Close { reason } => encode_close(name, reason),
            HocusMessage::SyncStatus { applied } => encode_sync_status(name, *applied),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::yjs::UpdateCheckError;

    const MAX: usize = 1 << 20;

    fn doc(name: &str, message: HocusMessage) -> HocusFrame {
        HocusFrame::Doc {
            name: name.into(),
            message,
        }
    }

    #[test]
    fn every_message_round_trips() {
        let frames = [
            HocusFrame::Ping,
            HocusFrame::Pong,
            doc(
                "a",
                HocusMessage::SyncStep1 {
                    state_vector: vec![1, 5, 1],
                },
            ),
            doc("team/b", HocusMessage::SyncStep2 { update: vec![0, 0] }),
            doc("c", HocusMessage::Update { update: vec![0, 0] }),
            doc(
                "d",
                HocusMessage::Awareness {
                    entries: vec![AwarenessEntry {
                        client: 42,
                        clock: 7,
                        state_json: r#"{"user":"ann"}"#.into(),
                    }],
                },
            ),
            doc(
                "e",
                HocusMessage::Token {
                    token: "jwt".into(),
                    provider_version: Some("4.7.0".into()),
                },
            ),
            doc(
                "e",
                HocusMessage::Token {
                    token: String::new(),
                    provider_version: None,
                },
            ),
            doc(
                "f",
                HocusMessage::PermissionDenied {
                    reason: "not permitted".into(),
                },
            ),
            doc(
                "g",
                HocusMessage::Authenticated {
                    scope: SCOPE_READONLY.into(),
                },
            ),
            doc("h", HocusMessage::QueryAwareness),
            doc(
                "i",
                HocusMessage::Stateless {
                    payload: "{\"x\":1}".into(),
                },
            ),
            doc("j", HocusMessage::Close { reason: "".into() }),
            doc(
                "j",
                HocusMessage::Close {
                    reason: "gone".into(),
                },
            ),
            doc("k", HocusMessage::SyncStatus { applied: true }),
            doc("k", HocusMessage::SyncStatus { applied: false }),
        ];
        for frame in frames {
            assert_eq!(decode_frame(&frame.encode(), MAX), Ok(frame));
        }
    }

    #[test]
    fn matches_the_providers_bytes() {
        // As @hocuspocus/provider 4.7.0 writes them (lib0 encoding).
        assert_eq!(
            encode_token("ab", "t", Some("4.7.0")),
            [&[2, b'a', b'b', 2, 0, 1, b't', 5][..], b"4.7.0"].concat()
        );
        assert_eq!(encode_sync_status("ab", true), [2, b'a', b'b', 8, 1]);
        assert_eq!(
            encode_authenticated("ab", true),
            [&[2, b'a', b'b', 2, 2, 8][..], b"readonly"].concat()
        );
        assert_eq!(
            encode_authenticated("ab", false)[5..],
            [&[10][..], b"read-write"].concat()[..]
        );
        assert_eq!(encode_update("ab", &[0, 0]), [2, b'a', b'b', 0, 2, 2, 0, 0]);
        assert_eq!(encode_close("ab", ""), [2, b'a', b'b', 7]);
        // A name of length 9 is not a ping: the frame is longer than one byte.
        let nine = encode_query_awareness("ninechars");
        assert_eq!(nine[0], 9);
        assert!(matches!(
            decode_frame(&nine, MAX),
            Ok(HocusFrame::Doc {
                message: HocusMessage::QueryAwareness,
                ..
            })
        ));
    }

    #[test]
    fn reads_signed_varints_as_lib0_writes_them() {
        let status = |body: &[u8]| {
            decode_frame(&[&[1, b'a', 8][..], body].concat(), MAX).map(|f| match f {
                HocusFrame::Doc {
                    message: HocusMessage::SyncStatus { applied },
                    ..
                } => applied,
                other => panic!("decoded as {other:?}"),
            })
        };
        assert_eq!(status(&[1]), Ok(true));
        assert_eq!(status(&[0x41]), Ok(false), "-1");
        // 65 = 0b1_000001: six bits in the first byte, then one more.
        assert_eq!(status(&[0x81, 0x01]), Ok(false));
        assert!(matches!(
            status(&[0xff; 12]),
            Err(HocusDecodeError::Frame(YDecodeError::VarintOverflow { .. }))
        ));
        assert!(matches!(
            status(&[0x80]),
            Err(HocusDecodeError::Frame(YDecodeError::Truncated { .. }))
        ));
    }

    #[test]
    fn refuses_bad_frames() {
        assert_eq!(
            decode_frame(&[], MAX),
            Err(HocusDecodeError::Frame(YDecodeError::Empty))
        );
        assert_eq!(
            decode_frame(&[3; 10], 4),
            Err(HocusDecodeError::Frame(YDecodeError::FrameTooLarge {
                len: 10,
                max: 4
            }))
        );
        // A name longer than the frame.
        assert!(matches!(
            decode_frame(&[0x7f, b'a'], MAX),
            Err(HocusDecodeError::Frame(YDecodeError::Truncated { .. }))
        ));
        // A name that is not UTF-8.
        assert!(matches!(
            decode_frame(&[1, 0xff, 3], MAX),
            Err(HocusDecodeError::Frame(YDecodeError::NotUtf8 { .. }))
        ));
        // No message type; unknown types, server-internal ones included.
        assert!(matches!(
            decode_frame(&[1, b'a'], MAX),
            Err(HocusDecodeError::Frame(YDecodeError::Truncated { .. }))
        ));
        for kind in [4, 6, 9, 10, 11, 100] {
            assert_eq!(
                decode_frame(&[1, b'a', kind], MAX),
                Err(HocusDecodeError::UnknownMessageType {
                    kind: u64::from(kind)
                })
            );
        }
        assert_eq!(
            decode_frame(&[1, b'a', 2, 3], MAX),
            Err(HocusDecodeError::UnknownAuthType { kind: 3 })
        );
        assert_eq!(
            decode_frame(&[1, b'a', 3, 0], MAX),
            Err(HocusDecodeError::TrailingBytes { left: 1 })
        );
        // The allocation bomb as an update body, and a billion awareness entries.
        assert!(matches!(
            decode_frame(&[1, b'a', 0, 2, 4, 0x9f, 0x9e, 0x97, 0x31], MAX),
            Err(HocusDecodeError::Frame(YDecodeError::Update(
                UpdateCheckError::CountTooLarge { .. }
            )))
        ));
        assert!(matches!(
            decode_frame(&[1, b'a', 1, 5, 0x80, 0x94, 0xeb, 0xdc, 0x03], MAX),
            Err(HocusDecodeError::Frame(YDecodeError::TooManyEntries { .. }))
        ));
        // A frame that is a ping followed by anything is a document name of length 9.
        assert!(decode_frame(&[9, 0], MAX).is_err());
    }
}
