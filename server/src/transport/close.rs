//! WebSocket close codes, documented in docs/protocol.md, the metric each counts under, and
//! the close frame each becomes.

use tokio_tungstenite::tungstenite::protocol::CloseFrame;

use crate::metrics::CloseKind;
use crate::transport::outbox::Message;

/// Why the server closes a WebSocket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseCode {
    /// 1000: the peer is gone or asked to close.
    Normal,
    /// 1001: the server is shutting down; reconnect elsewhere or later.
    GoingAway,
    /// 1003: a text frame; the protocol is binary MessagePack.
    UnsupportedData,
    /// 1009: a frame above the size limit.
    FrameTooLarge,
    /// 1013: the server has no room for another connection (its authenticated slots are all
    /// taken); retry with backoff.
    TryAgainLater,
    /// 4000: malformed frame (not a message), or a message before `hello`.
    Protocol,
    /// 4001: the client's protocol version is not supported.
    UnsupportedVersion,
    /// 4002: no `hello` within the deadline.
    HelloTimeout,
    /// 4008: the outbox was full; the client reads too slowly and must resync.
    SlowConsumer,
    /// 4009: nothing received within the idle timeout.
    IdleTimeout,
    /// 4011: the document's room stopped or cannot start: the store failed to commit or to
    /// load it, it was deleted, or the room's inbox closed. Reconnect with backoff and resync
    /// (a deleted document is then refused).
    DocumentUnavailable,
    /// 4029: over the rate limit, or too many failed authentication attempts from this
    /// address; reconnect with backoff.
    RateLimited,
    /// 4401: no token, or a token that does not verify (bad signature, unknown key, expired,
    /// malformed); get a new token.
    Unauthorized,
    /// 4401: the token expired during the session; reconnect with a fresh token.
    TokenExpired,
    /// 4403: the token does not allow this connection's one document (endpoints bound to a
    /// single document, such as the Yjs endpoint). `/v1/sync` refuses a single `subscribe`
    /// instead and stays open.
    Forbidden,
}

impl CloseCode {
    pub fn code(self) -> u16 {
        match self {
            CloseCode::Normal => 1000,
            CloseCode::GoingAway => 1001,
            CloseCode::UnsupportedData => 1003,
            CloseCode::FrameTooLarge => 1009,
            CloseCode::TryAgainLater => 1013,
            CloseCode::Protocol => 4000,
            CloseCode::UnsupportedVersion => 4001,
            CloseCode::HelloTimeout => 4002,
            CloseCode::SlowConsumer => 4008,
            CloseCode::IdleTimeout => 4009,
            CloseCode::DocumentUnavailable => 4011,
            CloseCode::RateLimited => 4029,
            CloseCode::Unauthorized | CloseCode::TokenExpired => 4401,
            CloseCode::Forbidden => 4403,
        }
    }

    pub fn reason(self) -> &'static str {
        match self {
            CloseCode::Normal => "bye",
            CloseCode::GoingAway => "server shutting down",
            CloseCode::UnsupportedData => "binary frames only",
            CloseCode::FrameTooLarge => "frame too large",
            CloseCode::TryAgainLater => "try again later",
            CloseCode::Protocol => "protocol error",
            CloseCode::UnsupportedVersion => "unsupported protocol version",
            CloseCode::HelloTimeout => "hello timeout",
            CloseCode::SlowConsumer => "slow consumer",
            CloseCode::IdleTimeout => "idle timeout",
            CloseCode::DocumentUnavailable => "document unavailable, resync",
            CloseCode::RateLimited => "rate limited",
            CloseCode::Unauthorized => "unauthorized",
            CloseCode::TokenExpired => "token expired",
            CloseCode::Forbidden => "forbidden",
        }
    }
}

/// The `lattice_closes_total` reason a close with `code` counts under.
pub(crate) fn close_kind(code: CloseCode) -> CloseKind {
    match code {
        CloseCode::Normal => CloseKind::Normal,
        CloseCode::GoingAway => CloseKind::Shutdown,
        CloseCode::SlowConsumer => CloseKind::SlowConsumer,
        CloseCode::IdleTimeout => CloseKind::IdleTimeout,
        CloseCode::RateLimited | CloseCode::TryAgainLater => CloseKind::RateLimited,
        CloseCode::FrameTooLarge => CloseKind::FrameTooLarge,
        CloseCode::DocumentUnavailable => CloseKind::DocumentUnavailable,
        CloseCode::UnsupportedData
        | CloseCode::Protocol
        | CloseCode::UnsupportedVersion
        | CloseCode::HelloTimeout => CloseKind::Protocol,
        CloseCode::Unauthorized | CloseCode::TokenExpired | CloseCode::Forbidden => CloseKind::Auth,
    }
}

/// The close frame for `code`.
pub(crate) fn close_message(code: CloseCode) -> Message {
    Message::Close(Some(CloseFrame {
        code: code.code().into(),
        reason: code.reason().into(),
    }))
}
