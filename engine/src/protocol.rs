//! The wire protocol: [`ClientMsg`] and [`ServerMsg`], one MessagePack map per WebSocket frame.
//!
//! **Envelope.** Every frame is a MessagePack map with a `type` key naming the message kind
//! (`snake_case`) and the message's fields as further keys (`rmp_serde::to_vec_named`). Byte
//! payloads are MessagePack `bin`. Keys a reader does not know are ignored.
//!
//! **Versioning.** The first client message is `hello` with `protocol` = [`PROTOCOL_VERSION`];
//! the `hello` and `error` shapes never change. Within a version, changes are additive only: new
//! optional fields with defaults, new message kinds and new error codes. A peer that receives an
//! unknown kind answers with an `unknown_message` error and carries on; an unknown error code
//! reads as [`ErrorCode::Unknown`]. Anything incompatible bumps the version, and a server that
//! does not speak the client's version answers `unsupported_version` and closes.
//!
//! **Decoding** checks the frame size first, then the map shape and the kind, then the fields;
//! every failure is a typed [`DecodeError`], never a panic.
//!
//! **Implementation.** The serde derives on the messages define the encoding; the codec that
//! `encode` and `decode` run is written by hand (`protocol/codec.rs` over the MessagePack of
//! `protocol/msgpack.rs`) and writes and reads the same bytes, which `tests/protocol.rs` (golden
//! bytes) and `tests/protocol_codec.rs` (against rmp-serde, on generated and mutated frames)
//! check. Decoding walks the frame's map once, skipping every value (which checks that it is
//! complete and nested less than [`MAX_NESTING`] deep, without allocating) and noting where each
//! field starts; then it reads the message's fields from there, straight into the message, where
//! serde had to buffer every field of an internally tagged enum first. That is faster, and it
//! keeps rmp-serde and serde's buffering out of the browser client, about 38 KB (gzipped) of it.

use serde::{Deserialize, Serialize};

use crate::{Delta, DocId, DocState, Value};

mod codec;
mod msgpack;

use codec::{Frame, Refusal};
use msgpack::{Fault, Reader};

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// Default limit on one frame, checked before decoding.
pub const DEFAULT_MAX_FRAME_BYTES: usize = 1024 * 1024;

/// Bound on MessagePack nesting: a frame's arrays, maps and extension values, its own map
/// included, nest fewer than `MAX_NESTING` deep (the limit rmp-serde's `set_max_depth` applied,
/// kept). Far above what any message needs and far below what would strain a stack.
pub const MAX_NESTING: usize = 64;

/// Messages a client sends.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMsg {
    /// First message on a connection; the server answers [`ServerMsg::Welcome`]. A second
    /// `hello` is refused (`malformed_message`) and the connection stays open.
    Hello {
        /// The protocol version the client speaks; [`ClientMsg::decode`] refuses any other than
        /// [`PROTOCOL_VERSION`] ([`DecodeError::UnsupportedVersion`]).
        protocol: u32,
        /// Access token, for clients that cannot set headers or query parameters.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token: Option<String>,
        /// Free-form client name and version, for logs.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        agent: Option<String>,
        /// The client's replica id (its Yjs client id), recorded with its deltas in history.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        replica: Option<u32>,
    },
    /// Start receiving a document. `state` is what the client holds; the server answers with a
    /// `sync` carrying what the client lacks and the server's own state.
    Subscribe {
        /// The document to receive.
        doc: DocId,
        /// What the client already holds; omitted (the default) means nothing.
        #[serde(default)]
        state: DocState,
    },
    /// Stop receiving a document; the connection's presence on it is removed.
    Unsubscribe {
        /// The document to stop receiving.
        doc: DocId,
    },
    /// A change made by this client. The server acknowledges it ([`ServerMsg::Ack`]) once the
    /// delta is durable, or refuses it with a [`ServerMsg::Error`] carrying its `seq`.
    Delta {
        /// The document changed; the connection must be subscribed to it.
        doc: DocId,
        /// The client's sequence number of this delta, greater than the last one the server took
        /// on this connection for `doc` (gaps are fine; a refused delta does not count as taken).
        seq: u64,
        /// The change itself.
        delta: Delta,
    },
    /// Ephemeral state of this client on `doc` (name, colour, cursor…), never persisted.
    /// A `null` state leaves. Renew it within the presence TTL (30 s by default) or it expires;
    /// `typing` expires after a few seconds unless renewed.
    Presence {
        /// The document the presence is about; the connection must be subscribed to it.
        doc: DocId,
        /// The client's presence state; [`Value::Null`] (or omitted) leaves.
        #[serde(default)]
        state: Value,
        /// Whether the client is typing; expires unless renewed.
        #[serde(default)]
        typing: bool,
    },
    /// Application-level heartbeat (browsers cannot see WebSocket pings); the server answers
    /// [`ServerMsg::Pong`].
    Ping {
        /// Any number; the `pong` echoes it.
        nonce: u64,
    },
}

/// Messages the server sends.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMsg {
    /// Answer to `hello`.
    Welcome {
        /// The protocol version the server speaks on this connection ([`PROTOCOL_VERSION`]).
        protocol: u32,
        /// Server name and version.
        server: String,
    },
    /// Answer to `subscribe`: what the client lacks, and what the server holds so the client can
    /// send back what the server lacks. Also sent on its own, with an empty `delta`, after a
    /// [`ErrorCode::MissingDependencies`] refusal to ask for a resync. Holds only committed
    /// content.
    Sync {
        /// The document synced.
        doc: DocId,
        /// What the server holds that the client's `subscribe` state lacks; empty in a resync
        /// request.
        delta: Delta,
        /// The server's state; the client answers with a `delta` of what this state lacks
        /// ([`Document::diff_since`](crate::Document::diff_since)), if anything.
        state: DocState,
    },
    /// A change from another replica, already durable.
    Delta {
        /// The document changed.
        doc: DocId,
        /// The change; deltas of one sender committed together may arrive merged into one.
        delta: Delta,
    },
    /// Every delta this client sent for `doc` with a sequence number up to `seq` is durable,
    /// except those that were refused: a refused delta is never acknowledged.
    Ack {
        /// The document the acknowledged deltas changed.
        doc: DocId,
        /// The highest sequence number acknowledged; acks are cumulative and in commit order.
        seq: u64,
    },
    /// A refusal. Whether the connection stays open depends on the code (docs/protocol.md,
    /// *Errors and closes*); a refused delta was neither stored nor relayed.
    Error {
        /// What went wrong; stable, for programs.
        code: ErrorCode,
        /// What went wrong, for people.
        message: String,
        /// The document concerned, when there is one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        doc: Option<DocId>,
        /// The `seq` of the refused delta, when a delta was refused.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        seq: Option<u64>,
    },
    /// Another connection's presence on `doc` joined or changed (`state` set) or left
    /// (`state` is `null`). `peer` identifies the connection for as long as it lives.
    Presence {
        /// The document the presence is about.
        doc: DocId,
        /// The server's number for the other connection; not its replica id.
        peer: u64,
        /// The peer's presence state; [`Value::Null`] (or omitted) means it left.
        #[serde(default)]
        state: Value,
        /// Whether the peer is typing.
        #[serde(default)]
        typing: bool,
    },
    /// Answer to [`ClientMsg::Ping`].
    Pong {
        /// The `ping`'s nonce.
        nonce: u64,
    },
}

/// Stable error codes carried by [`ServerMsg::Error`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// `hello` with a protocol version the server does not speak (close 4001): upgrade.
    UnsupportedVersion,
    /// A frame over the frame limit (close 1009): split the change.
    FrameTooLarge,
    /// A frame that does not decode, an invalid `DocId`, a text frame, or a second `hello`.
    /// Close 4000 (a text frame: 1003); a second `hello` leaves the connection open.
    MalformedMessage,
    /// A message kind the receiver does not know; the connection stays open.
    UnknownMessage,
    /// A delta that can never be taken: its body does not decode, its Yjs update fails the
    /// checks, or a stamp is too far ahead of the server's clock. Nothing was stored; report it.
    InvalidDelta,
    /// A `delta` or `presence` for a document the connection is not subscribed to.
    NotSubscribed,
    /// Over a rate limit, or the server has no room for another connection (close 4029 or
    /// 1013): reconnect with backoff.
    RateLimited,
    /// A `subscribe` over the per-connection document limit; the connection stays open.
    TooManyDocuments,
    /// No token, one that does not verify, or one that expired (close 4401): get a fresh token.
    Unauthorized,
    /// The token does not cover the document, or is read-only and a delta was sent.
    Forbidden,
    /// The server failed: it cannot load the document, or could not commit a delta (nothing
    /// of it was stored). Reconnect with backoff and resync.
    Internal,
    /// A delta's Yjs update builds on content the server does not hold (or deletes such
    /// content). Nothing was stored; the server follows with a `sync` carrying its state, and
    /// the client answers with everything the server lacks (a resync).
    MissingDependencies,
    /// `subscribe` for a document this connection is already subscribed to.
    AlreadySubscribed,
    /// A delta's `seq` is not greater than the last `seq` the server took on this connection
    /// for the document. Nothing was stored.
    InvalidSeq,
    /// No `hello` arrived within the deadline after the connection opened (close 4002).
    HelloTimeout,
    /// The first message of a connection was not `hello` (close 4000).
    HelloRequired,
    /// Nothing arrived within the idle timeout (close 4009).
    IdleTimeout,
    /// A code this build does not know (sent by a newer peer).
    #[serde(other)]
    Unknown,
}

impl ErrorCode {
    /// Every code this build sends (all but [`ErrorCode::Unknown`]).
    pub const KNOWN: [ErrorCode; 17] = [
        ErrorCode::UnsupportedVersion,
        ErrorCode::FrameTooLarge,
        ErrorCode::MalformedMessage,
        ErrorCode::UnknownMessage,
        ErrorCode::InvalidDelta,
        ErrorCode::NotSubscribed,
        ErrorCode::RateLimited,
        ErrorCode::TooManyDocuments,
        ErrorCode::Unauthorized,
        ErrorCode::Forbidden,
        ErrorCode::Internal,
        ErrorCode::MissingDependencies,
        ErrorCode::AlreadySubscribed,
        ErrorCode::InvalidSeq,
        ErrorCode::HelloTimeout,
        ErrorCode::HelloRequired,
        ErrorCode::IdleTimeout,
    ];

    /// The code named `name` ([`ErrorCode::as_str`]), if this build knows it.
    pub fn from_name(name: &str) -> Option<ErrorCode> {
        ErrorCode::KNOWN.into_iter().find(|c| c.as_str() == name)
    }

    /// The code's name on the wire (`"invalid_delta"`).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::UnsupportedVersion => "unsupported_version",
            ErrorCode::FrameTooLarge => "frame_too_large",
            ErrorCode::MalformedMessage => "malformed_message",
            ErrorCode::UnknownMessage => "unknown_message",
            ErrorCode::InvalidDelta => "invalid_delta",
            ErrorCode::NotSubscribed => "not_subscribed",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::TooManyDocuments => "too_many_documents",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::Internal => "internal",
            ErrorCode::MissingDependencies => "missing_dependencies",
            ErrorCode::AlreadySubscribed => "already_subscribed",
            ErrorCode::InvalidSeq => "invalid_seq",
            ErrorCode::HelloTimeout => "hello_timeout",
            ErrorCode::HelloRequired => "hello_required",
            ErrorCode::IdleTimeout => "idle_timeout",
            ErrorCode::Unknown => "unknown",
        }
    }
}

/// Why a frame could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The frame is over the limit given to the decoder; nothing of it was read.
    #[error("frame is {len} bytes, the limit is {max}")]
    FrameTooLarge {
        /// The frame's length in bytes.
        len: usize,
        /// The limit in bytes.
        max: usize,
    },
    /// The frame has no bytes.
    #[error("frame is empty")]
    Empty,
    /// The frame's first byte is not a MessagePack map marker.
    #[error("frame is not a MessagePack map")]
    NotAMap,
    /// The map has no `type` key.
    #[error("message has no \"type\" field")]
    MissingKind,
    /// The `type` names a kind this build does not know; a server answers `unknown_message`
    /// and carries on.
    #[error("unknown message type {kind:?}")]
    UnknownKind {
        /// The kind as received, cut to its first 64 characters.
        kind: String,
    },
    /// A `hello` with a protocol version other than [`PROTOCOL_VERSION`].
    #[error("protocol version {got} is not supported (this build speaks {supported})")]
    UnsupportedVersion {
        /// The version the peer asked for.
        got: u32,
        /// The version this build speaks.
        supported: u32,
    },
    /// The map is not a valid message: a missing or mistyped field, nesting deeper than
    /// [`MAX_NESTING`], truncated MessagePack or bytes after the message.
    #[error("malformed {kind:?} message: {reason}")]
    Malformed {
        /// The message kind, empty when the envelope itself did not read.
        kind: String,
        /// What the MessagePack decoder reported.
        reason: String,
    },
    /// A `delta` message whose `doc` and `seq` read fine but whose `delta` does not (a counter
    /// keyed by a string, a register without a stamp…): only that delta is refused.
    #[error("delta {seq} for {doc} is malformed: {reason}")]
    InvalidDelta {
        /// The delta's document.
        doc: DocId,
        /// The delta's sequence number, to name it in the refusal.
        seq: u64,
        /// What the MessagePack decoder reported.
        reason: String,
    },
}

impl DecodeError {
    /// The error code to report to the peer.
    pub fn code(&self) -> ErrorCode {
        match self {
            DecodeError::FrameTooLarge { .. } => ErrorCode::FrameTooLarge,
            DecodeError::UnknownKind { .. } => ErrorCode::UnknownMessage,
            DecodeError::UnsupportedVersion { .. } => ErrorCode::UnsupportedVersion,
            DecodeError::InvalidDelta { .. } => ErrorCode::InvalidDelta,
            DecodeError::Empty
            | DecodeError::NotAMap
            | DecodeError::MissingKind
            | DecodeError::Malformed { .. } => ErrorCode::MalformedMessage,
        }
    }
}

const CLIENT_KINDS: &[&str] = &[
    "hello",
    "subscribe",
    "unsubscribe",
    "delta",
    "presence",
    "ping",
];
const SERVER_KINDS: &[&str] = &[
    "welcome", "sync", "delta", "ack", "error", "presence", "pong",
];

fn is_map_marker(b: u8) -> bool {
    matches!(b, 0x80..=0x8f | 0xde | 0xdf)
}

/// The checks before anything of a frame or a bare value is read: its size and a map marker.
fn check_frame(bytes: &[u8], max_bytes: usize) -> Result<(), DecodeError> {
    if bytes.len() > max_bytes {
        return Err(DecodeError::FrameTooLarge {
            len: bytes.len(),
            max: max_bytes,
        });
    }
    if !is_map_marker(*bytes.first().ok_or(DecodeError::Empty)?) {
        return Err(DecodeError::NotAMap);
    }
    Ok(())
}

fn malformed(kind: &str, fault: Fault) -> DecodeError {
    DecodeError::Malformed {
        kind: kind.to_owned(),
        reason: fault.to_string(),
    }
}

fn trailing(bytes: &[u8], used: usize, kind: &str, what: &str) -> Result<(), DecodeError> {
    if used == bytes.len() {
        return Ok(());
    }
    Err(DecodeError::Malformed {
        kind: kind.to_owned(),
        reason: format!("{} trailing bytes after the {what}", bytes.len() - used),
    })
}

/// Reads a frame's envelope: the map, complete and bounded, and its `type`, one of `kinds`.
fn open_frame<'a>(
    bytes: &'a [u8],
    max_frame_bytes: usize,
    kinds: &[&'static str],
) -> Result<(&'static str, Frame<'a>), DecodeError> {
    check_frame(bytes, max_frame_bytes)?;
    let frame = Frame::open(bytes).map_err(|f| malformed("", f))?;
    let kind = frame.kind.ok_or(DecodeError::MissingKind)?;
    let Some(kind) = kinds.iter().copied().find(|k| *k == kind) else {
        return Err(DecodeError::UnknownKind {
            kind: kind.chars().take(64).collect(),
        });
    };
    trailing(bytes, frame.end, kind, "message")?;
    Ok((kind, frame))
}

/// One MessagePack value that must fill `bytes` exactly, under the same bounds as a frame
/// (size, nesting); `kind` names it in errors.
fn decode_exact<T>(
    bytes: &[u8],
    max_bytes: usize,
    kind: &str,
    read: fn(&mut Reader<'_>, usize) -> Result<T, Fault>,
) -> Result<T, DecodeError> {
    check_frame(bytes, max_bytes)?;
    let mut r = Reader::new(bytes);
    r.skip(0).map_err(|f| malformed(kind, f))?;
    trailing(bytes, r.position(), kind, kind)?;
    read(&mut Reader::new(bytes), 0).map_err(|f| malformed(kind, f))
}

impl Delta {
    /// The delta on its own as MessagePack (the body of an HTTP write), as [`Delta::decode`]
    /// reads it.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = codec::buffer(self.yjs.len());
        codec::write_delta(&mut out, self);
        out
    }

    /// A MessagePack `Delta` on its own (the body of an HTTP write), bounded like a frame:
    /// at most `max_bytes`, nesting at most the protocol's limit, nothing after it.
    pub fn decode(bytes: &[u8], max_bytes: usize) -> Result<Delta, DecodeError> {
        decode_exact(bytes, max_bytes, "delta", codec::read_delta)
    }
}

impl DocState {
    /// The state on its own as MessagePack, as [`DocState::decode`] reads it.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = codec::buffer(self.yjs.len());
        codec::write_state(&mut out, self);
        out
    }

    /// A MessagePack `DocState` on its own (an HTTP reader's `?state=`), bounded like
    /// [`Delta::decode`].
    pub fn decode(bytes: &[u8], max_bytes: usize) -> Result<DocState, DecodeError> {
        decode_exact(bytes, max_bytes, "state", codec::read_state)
    }
}

impl ClientMsg {
    /// Decodes one frame, refusing frames over `max_frame_bytes` before reading them, and a
    /// `hello` whose protocol version this build does not speak.
    pub fn decode(bytes: &[u8], max_frame_bytes: usize) -> Result<Self, DecodeError> {
        let (kind, frame) = open_frame(bytes, max_frame_bytes, CLIENT_KINDS)?;
        let msg = codec::read_client(&frame, kind).map_err(|refusal| match refusal {
            Refusal::Malformed(fault) => malformed(kind, fault),
            Refusal::InvalidDelta { doc, seq, reason } => DecodeError::InvalidDelta {
                doc,
                seq,
                reason: reason.to_string(),
            },
        })?;
        if let ClientMsg::Hello { protocol, .. } = &msg
            && *protocol != PROTOCOL_VERSION
        {
            return Err(DecodeError::UnsupportedVersion {
                got: *protocol,
                supported: PROTOCOL_VERSION,
            });
        }
        Ok(msg)
    }

    /// Encodes the message as one frame: a MessagePack map with named fields.
    pub fn encode(&self) -> Vec<u8> {
        let payload = match self {
            ClientMsg::Delta { delta, .. } => delta.yjs.len(),
            ClientMsg::Subscribe { state, .. } => state.yjs.len(),
            _ => 0,
        };
        let mut out = codec::buffer(payload);
        codec::write_client(&mut out, self);
        out
    }

    /// The kind, as it appears in the `type` field.
    pub fn kind(&self) -> &'static str {
        match self {
            ClientMsg::Hello { .. } => "hello",
            ClientMsg::Subscribe { .. } => "subscribe",
            ClientMsg::Unsubscribe { .. } => "unsubscribe",
            ClientMsg::Delta { .. } => "delta",
            ClientMsg::Presence { .. } => "presence",
            ClientMsg::Ping { .. } => "ping",
        }
    }
}

impl ServerMsg {
    /// Decodes one frame, refusing frames over `max_frame_bytes` before reading them. Unlike
    /// [`ClientMsg::decode`], it checks no protocol version: a `welcome` decodes whatever its
    /// `protocol`.
    pub fn decode(bytes: &[u8], max_frame_bytes: usize) -> Result<Self, DecodeError> {
        let (kind, frame) = open_frame(bytes, max_frame_bytes, SERVER_KINDS)?;
        codec::read_server(&frame, kind).map_err(|fault| malformed(kind, fault))
    }

    /// Encodes the message as one frame: a MessagePack map with named fields.
    pub fn encode(&self) -> Vec<u8> {
        let payload = match self {
            ServerMsg::Sync { delta, state, .. } => delta.yjs.len() + state.yjs.len(),
            ServerMsg::Delta { delta, .. } => delta.yjs.len(),
            _ => 0,
        };
        let mut out = codec::buffer(payload);
        codec::write_server(&mut out, self);
        out
    }

    /// The kind, as it appears in the `type` field.
    pub fn kind(&self) -> &'static str {
        match self {
            ServerMsg::Welcome { .. } => "welcome",
            ServerMsg::Sync { .. } => "sync",
            ServerMsg::Delta { .. } => "delta",
            ServerMsg::Ack { .. } => "ack",
            ServerMsg::Error { .. } => "error",
            ServerMsg::Presence { .. } => "presence",
            ServerMsg::Pong { .. } => "pong",
        }
    }
}
