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

use std::borrow::Cow;
use std::io::Cursor;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::{Delta, DocId, DocState, Value};

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// Default limit on one frame, checked before decoding.
pub const DEFAULT_MAX_FRAME_BYTES: usize = 1024 * 1024;

/// Deepest MessagePack nesting a decoder accepts; far above what any message needs and far below
/// what would strain a stack.
pub const MAX_NESTING: usize = 64;

/// Messages a client sends.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMsg {
    /// First message on a connection.
    Hello {
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
        doc: DocId,
        #[serde(default)]
        state: DocState,
    },
    Unsubscribe {
        doc: DocId,
    },
    /// A change made by this client. `seq` increases by one per delta per connection and document;
    /// the server acknowledges it once the delta is durable.
    Delta {
        doc: DocId,
        seq: u64,
        delta: Delta,
    },
    /// Ephemeral state of this client on `doc` (name, colour, cursor…), never persisted.
    /// A `null` state leaves. Renew it within the presence TTL (30 s by default) or it expires;
    /// `typing` expires after a few seconds unless renewed.
    Presence {
        doc: DocId,
        #[serde(default)]
        state: Value,
        #[serde(default)]
        typing: bool,
    },
    /// Application-level heartbeat (browsers cannot see WebSocket pings).
    Ping {
        nonce: u64,
    },
}

/// Messages the server sends.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMsg {
    /// Answer to `hello`.
    Welcome {
        protocol: u32,
        /// Server name and version.
        server: String,
    },
    /// Answer to `subscribe`: what the client lacks, and what the server holds so the client can
    /// send back what the server lacks.
    Sync {
        doc: DocId,
        delta: Delta,
        state: DocState,
    },
    /// A change from another replica, already durable.
    Delta {
        doc: DocId,
        delta: Delta,
    },
    /// Every delta this client sent for `doc` with a sequence number up to `seq` is durable.
    Ack {
        doc: DocId,
        seq: u64,
    },
    Error {
        code: ErrorCode,
        message: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        doc: Option<DocId>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        seq: Option<u64>,
    },
    /// Another connection's presence on `doc` joined or changed (`state` set) or left
    /// (`state` is `null`). `peer` identifies the connection for as long as it lives.
    Presence {
        doc: DocId,
        peer: u64,
        #[serde(default)]
        state: Value,
        #[serde(default)]
        typing: bool,
    },
    Pong {
        nonce: u64,
    },
}

/// Stable error codes carried by [`ServerMsg::Error`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    UnsupportedVersion,
    FrameTooLarge,
    MalformedMessage,
    UnknownMessage,
    InvalidDelta,
    NotSubscribed,
    RateLimited,
    TooManyDocuments,
    Unauthorized,
    Forbidden,
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

    /// The code as it appears on the wire (`snake_case`).
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
    #[error("frame is {len} bytes, the limit is {max}")]
    FrameTooLarge { len: usize, max: usize },
    #[error("frame is empty")]
    Empty,
    #[error("frame is not a MessagePack map")]
    NotAMap,
    #[error("message has no \"type\" field")]
    MissingKind,
    #[error("unknown message type {kind:?}")]
    UnknownKind { kind: String },
    #[error("protocol version {got} is not supported (this build speaks {supported})")]
    UnsupportedVersion { got: u32, supported: u32 },
    #[error("malformed {kind:?} message: {reason}")]
    Malformed { kind: String, reason: String },
    /// A `delta` message whose `doc` and `seq` read fine but whose `delta` does not (a counter
    /// keyed by a string, a register without a stamp…): only that delta is refused.
    #[error("delta {seq} for {doc} is malformed: {reason}")]
    InvalidDelta {
        doc: DocId,
        seq: u64,
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

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<Cow<'a, str>>,
}

fn is_map_marker(b: u8) -> bool {
    matches!(b, 0x80..=0x8f | 0xde | 0xdf)
}

fn decode_frame<T: DeserializeOwned>(
    bytes: &[u8],
    max_frame_bytes: usize,
    kinds: &[&str],
) -> Result<T, DecodeError> {
    if bytes.len() > max_frame_bytes {
        return Err(DecodeError::FrameTooLarge {
            len: bytes.len(),
            max: max_frame_bytes,
        });
    }
    let first = *bytes.first().ok_or(DecodeError::Empty)?;
    if !is_map_marker(first) {
        return Err(DecodeError::NotAMap);
    }
    let mut de = rmp_serde::Deserializer::from_read_ref(bytes);
    de.set_max_depth(MAX_NESTING);
    let envelope = Envelope::deserialize(&mut de).map_err(|e| DecodeError::Malformed {
        kind: String::new(),
        reason: e.to_string(),
    })?;
    let kind = envelope.kind.ok_or(DecodeError::MissingKind)?;
    if !kinds.contains(&kind.as_ref()) {
        return Err(DecodeError::UnknownKind {
            kind: kind.chars().take(64).collect(),
        });
    }
    let malformed = |reason: String| DecodeError::Malformed {
        kind: kind.to_string(),
        reason,
    };
    let mut de = rmp_serde::Deserializer::new(Cursor::new(bytes));
    de.set_max_depth(MAX_NESTING);
    let msg = T::deserialize(&mut de).map_err(|e| malformed(e.to_string()))?;
    let used = usize::try_from(de.position()).unwrap_or(usize::MAX);
    if used != bytes.len() {
        return Err(malformed(format!(
            "{} trailing bytes after the message",
            bytes.len().saturating_sub(used)
        )));
    }
    Ok(msg)
}

/// The `doc` and `seq` of a `delta` message whose `delta` field did not decode.
fn delta_envelope(bytes: &[u8]) -> Option<(DocId, u64)> {
    #[derive(Deserialize)]
    struct Envelope {
        doc: DocId,
        seq: u64,
    }
    let mut de = rmp_serde::Deserializer::new(Cursor::new(bytes));
    de.set_max_depth(MAX_NESTING);
    let envelope = Envelope::deserialize(&mut de).ok()?;
    // A frame with bytes after the message is malformed as a whole.
    (usize::try_from(de.position()).ok()? == bytes.len()).then_some((envelope.doc, envelope.seq))
}

fn encode_frame<T: Serialize>(msg: &T) -> Vec<u8> {
    // Serializing these types into a Vec cannot fail: every map key is a string and no
    // serializer error path is reachable; an empty frame would be refused by the peer.
    rmp_serde::to_vec_named(msg).unwrap_or_default()
}

impl ClientMsg {
    /// Decodes one frame, refusing frames over `max_frame_bytes` before reading them, and a
    /// `hello` whose protocol version this build does not speak.
    pub fn decode(bytes: &[u8], max_frame_bytes: usize) -> Result<Self, DecodeError> {
        let msg: ClientMsg = match decode_frame(bytes, max_frame_bytes, CLIENT_KINDS) {
            Ok(msg) => msg,
            Err(DecodeError::Malformed { kind, reason }) if kind == "delta" => {
                return Err(delta_envelope(bytes)
                    .map(|(doc, seq)| DecodeError::InvalidDelta {
                        doc,
                        seq,
                        reason: reason.clone(),
                    })
                    .unwrap_or(DecodeError::Malformed { kind, reason }));
            }
            Err(e) => return Err(e),
        };
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

    pub fn encode(&self) -> Vec<u8> {
        encode_frame(self)
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
    pub fn decode(bytes: &[u8], max_frame_bytes: usize) -> Result<Self, DecodeError> {
        decode_frame(bytes, max_frame_bytes, SERVER_KINDS)
    }

    pub fn encode(&self) -> Vec<u8> {
        encode_frame(self)
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
