//! Frames of the three protocols the bench speaks, built on the engine's encoders where they fit.
//!
//! - Native (`/v1/sync`): `lattice_engine::protocol` as is.
//! - y-websocket (Lattice's `/yjs/{doc}`, the reference server, Y-Sweet): one lib0 message per
//!   frame, `engine::yws` encoders; the document is the URL path. Y-Sweet adds its sync status
//!   (`102`, a var-bytes payload it echoes once it has handled everything before it on the
//!   connection): its own client sends `102 <varBytes(varUint(localVersion))>` after every local
//!   update and counts the echoed version as acknowledged; the bench does the same.
//! - Hocuspocus: the same messages, each prefixed with the document name as a lib0 varstring
//!   (Hocuspocus multiplexes documents over one socket), plus its own message types: `2` auth
//!   (must come first for each document: `[doc] 2 0 <token>`; answered `[doc] 2 2 "read-write"`),
//!   `4` sync reply (a sync message that does not ask for another step 1) and `8` sync status
//!   (`[doc] 8 1` after every update it applied from this connection).
//!
//! Decoding is minimal and for our own loopback peers: enough to find the Yjs updates, the
//! handshake answers and the acknowledgements in a frame, with typed errors for truncation.

use lattice_engine::yws;

/// Message types of y-websocket, and Hocuspocus's additions.
const MSG_SYNC: u64 = 0;
const MSG_AWARENESS: u64 = 1;
const MSG_AUTH: u64 = 2;
const MSG_QUERY_AWARENESS: u64 = 3;
const MSG_SYNC_REPLY: u64 = 4;
const MSG_SYNC_STATUS: u64 = 8;
/// Y-Sweet's sync status (`MESSAGE_SYNC_STATUS` of its provider).
const MSG_YSWEET_SYNC_STATUS: u64 = 102;
/// Sync sub-types (y-protocols).
const SYNC_STEP1: u64 = 0;
const SYNC_STEP2: u64 = 1;
const SYNC_UPDATE: u64 = 2;
/// Hocuspocus auth sub-types (`@hocuspocus/common`'s `AuthMessageType`).
const AUTH_TOKEN: u64 = 0;
const AUTH_PERMISSION_DENIED: u64 = 1;
const AUTH_AUTHENTICATED: u64 = 2;

/// What a server frame (y-websocket or Hocuspocus) says, as far as the bench cares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum YEvent {
    /// The server's own state vector (sync step 1): the handshake went through.
    SyncStep1,
    /// What we lacked at subscription (sync step 2): the connection is synced.
    SyncStep2(Vec<u8>),
    /// A relayed change.
    Update(Vec<u8>),
    /// Hocuspocus: the document is open for this connection (`readonly` or `read-write`).
    Authenticated(String),
    PermissionDenied(String),
    /// Hocuspocus: an update from this connection was applied (`true`) or refused.
    SyncStatus(bool),
    /// Y-Sweet: the server handled everything this connection sent up to the sync status
    /// carrying this version.
    Handled(u64),
    /// Awareness and anything else the bench ignores.
    Other(u64),
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum WireError {
    #[error("frame holds no message")]
    Empty,
    #[error("truncated {what} at byte {at}")]
    Truncated { what: &'static str, at: usize },
    #[error("varint longer than 64 bits at byte {at}")]
    VarintOverflow { at: usize },
    #[error("{what} is not UTF-8")]
    NotUtf8 { what: &'static str },
    #[error("unknown sync sub-type {0}")]
    UnknownSyncType(u64),
    #[error("frame for document {got:?}, expected {want:?}")]
    WrongDocument { got: String, want: String },
}

/// A lib0 reader over one frame.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    pub(crate) fn is_done(&self) -> bool {
        self.pos >= self.buf.len()
    }

    pub(crate) fn var_uint(&mut self, what: &'static str) -> Result<u64, WireError> {
        let at = self.pos;
        let mut value = 0u64;
        let mut shift = 0u32;
        loop {
            let &byte = self
                .buf
                .get(self.pos)
                .ok_or(WireError::Truncated { what, at })?;
            self.pos += 1;
            if shift > 63 {
                return Err(WireError::VarintOverflow { at });
            }
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
            shift += 7;
        }
    }

    pub(crate) fn var_bytes(&mut self, what: &'static str) -> Result<&'a [u8], WireError> {
        let at = self.pos;
        let len = self.var_uint(what)?;
        let end = usize::try_from(len)
            .ok()
            .and_then(|len| self.pos.checked_add(len))
            .filter(|end| *end <= self.buf.len())
            .ok_or(WireError::Truncated { what, at })?;
        let bytes = &self.buf[self.pos..end];
        self.pos = end;
        Ok(bytes)
    }

    pub(crate) fn var_string(&mut self, what: &'static str) -> Result<&'a str, WireError> {
        std::str::from_utf8(self.var_bytes(what)?).map_err(|_| WireError::NotUtf8 { what })
    }
}

pub(crate) fn write_var_uint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

pub(crate) fn write_var_string(out: &mut Vec<u8>, s: &str) {
    write_var_uint(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

/// The encoding of an empty state vector: "I hold nothing".
pub(crate) const EMPTY_STATE_VECTOR: [u8; 1] = [0];

/// How y-websocket messages travel: bare, bare with Y-Sweet's sync status, or behind
/// Hocuspocus's document prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum YFraming {
    Plain,
    YSweet,
    Hocuspocus { doc: String },
}

impl YFraming {
    fn frame(&self, message: &[u8]) -> Vec<u8> {
        match self {
            Self::Plain | Self::YSweet => message.to_vec(),
            Self::Hocuspocus { doc } => {
                let mut out = Vec::with_capacity(doc.len() + 2 + message.len());
                write_var_string(&mut out, doc);
                out.extend_from_slice(message);
                out
            }
        }
    }

    /// The frames a fresh client sends first: (Hocuspocus: auth with `token`), sync step 1 of
    /// an empty document.
    pub(crate) fn handshake(&self, token: &str) -> Vec<Vec<u8>> {
        let step1 = self.frame(&yws::encode_sync_step1(&EMPTY_STATE_VECTOR));
        match self {
            Self::Plain | Self::YSweet => vec![step1],
            Self::Hocuspocus { .. } => {
                let mut auth = Vec::with_capacity(token.len() + 3);
                write_var_uint(&mut auth, MSG_AUTH);
                write_var_uint(&mut auth, AUTH_TOKEN);
                write_var_string(&mut auth, token);
                vec![self.frame(&auth), step1]
            }
        }
    }

    /// A message that changes nothing, sent now and then so that Hocuspocus does not close a
    /// connection that only listens (it closes with 4408 after `timeout`, 60 s, without a
    /// message; real providers renew their awareness every 15 s). An awareness query.
    pub(crate) fn keepalive(&self) -> Option<Vec<u8>> {
        match self {
            Self::Plain | Self::YSweet => None,
            Self::Hocuspocus { .. } => Some(self.frame(&yws::encode_query_awareness())),
        }
    }

    /// What a client sends after its update number `version` (from 1), if its protocol
    /// acknowledges: Y-Sweet's sync status, as its provider sends after every local update.
    pub(crate) fn after_update(&self, version: u64) -> Option<Vec<u8>> {
        match self {
            Self::YSweet => {
                let mut payload = Vec::with_capacity(10);
                write_var_uint(&mut payload, version);
                let mut out = Vec::with_capacity(payload.len() + 2);
                write_var_uint(&mut out, MSG_YSWEET_SYNC_STATUS);
                write_var_uint(&mut out, payload.len() as u64);
                out.extend_from_slice(&payload);
                Some(out)
            }
            Self::Plain | Self::Hocuspocus { .. } => None,
        }
    }

    /// One Yjs update as a y-websocket `update` message.
    pub(crate) fn update(&self, update: &[u8]) -> Vec<u8> {
        self.frame(&yws::encode_update(update))
    }

    /// Decodes a server frame. y-websocket frames may hold several messages (the reference
    /// server sends one each); a Hocuspocus frame is one message for one document.
    pub(crate) fn decode(&self, frame: &[u8]) -> Result<Vec<YEvent>, WireError> {
        let mut r = Reader::new(frame);
        if let Self::Hocuspocus { doc } = self {
            let got = r.var_string("document name")?;
            // Hocuspocus addresses may carry a session suffix after a NUL.
            let name = got.split('\0').next().unwrap_or(got);
            if name != doc {
                return Err(WireError::WrongDocument {
                    got: got.to_owned(),
                    want: doc.clone(),
                });
            }
        }
        let mut events = Vec::with_capacity(1);
        while !r.is_done() {
            let kind = r.var_uint("message type")?;
            let event = match kind {
                MSG_SYNC | MSG_SYNC_REPLY => match r.var_uint("sync type")? {
                    SYNC_STEP1 => {
                        r.var_bytes("state vector")?;
                        YEvent::SyncStep1
                    }
                    SYNC_STEP2 => YEvent::SyncStep2(r.var_bytes("update")?.to_vec()),
                    SYNC_UPDATE => YEvent::Update(r.var_bytes("update")?.to_vec()),
                    other => return Err(WireError::UnknownSyncType(other)),
                },
                MSG_AUTH => match r.var_uint("auth type")? {
                    AUTH_AUTHENTICATED => {
                        YEvent::Authenticated(r.var_string("auth scope")?.to_owned())
                    }
                    AUTH_PERMISSION_DENIED => {
                        YEvent::PermissionDenied(r.var_string("auth reason")?.to_owned())
                    }
                    other => YEvent::Other(MSG_AUTH << 8 | other),
                },
                MSG_SYNC_STATUS if matches!(self, Self::Hocuspocus { .. }) => {
                    YEvent::SyncStatus(r.var_uint("sync status")? == 1)
                }
                MSG_AWARENESS => {
                    r.var_bytes("awareness")?;
                    YEvent::Other(kind)
                }
                MSG_QUERY_AWARENESS => YEvent::Other(kind),
                MSG_YSWEET_SYNC_STATUS if matches!(self, Self::YSweet) => {
                    let payload = r.var_bytes("sync status")?;
                    YEvent::Handled(Reader::new(payload).var_uint("sync status version")?)
                }
                // Anything else: its length is unknown, so it ends the frame.
                other => {
                    events.push(YEvent::Other(other));
                    break;
                }
            };
            events.push(event);
            if matches!(self, Self::Hocuspocus { .. }) {
                break;
            }
        }
        if events.is_empty() {
            return Err(WireError::Empty);
        }
        Ok(events)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hocus() -> YFraming {
        YFraming::Hocuspocus {
            doc: "bench/doc-1".into(),
        }
    }

    #[test]
    fn varints_round_trip() {
        for v in [0u64, 1, 127, 128, 300, 1 << 32, u64::MAX] {
            let mut out = Vec::new();
            write_var_uint(&mut out, v);
            assert_eq!(Reader::new(&out).var_uint("v"), Ok(v));
        }
        assert!(matches!(
            Reader::new(&[0x80]).var_uint("v"),
            Err(WireError::Truncated { .. })
        ));
    }

    #[test]
    fn hocuspocus_handshake_is_auth_then_step1_behind_the_name() {
        let frames = hocus().handshake("tok");
        // varstring "bench/doc-1", Auth(2), Token(0), varstring "tok"
        let mut want = vec![11];
        want.extend_from_slice(b"bench/doc-1");
        want.extend_from_slice(&[2, 0, 3, b't', b'o', b'k']);
        assert_eq!(frames[0], want);
        // varstring, Sync(0), step 1 (0), varbytes [0] (empty state vector)
        let mut want = vec![11];
        want.extend_from_slice(b"bench/doc-1");
        want.extend_from_slice(&[0, 0, 1, 0]);
        assert_eq!(frames[1], want);
    }

    #[test]
    fn hocuspocus_keepalive_is_an_awareness_query() {
        let mut want = vec![11];
        want.extend_from_slice(b"bench/doc-1");
        want.push(3);
        assert_eq!(hocus().keepalive(), Some(want));
        assert_eq!(YFraming::Plain.keepalive(), None);
    }

    #[test]
    fn hocuspocus_update_round_trip() {
        let update = [1, 2, 3, 4];
        let frame = hocus().update(&update);
        assert_eq!(
            hocus().decode(&frame),
            Ok(vec![YEvent::Update(update.to_vec())])
        );
        // Plain y-websocket has no prefix.
        let plain = YFraming::Plain.update(&update);
        assert_eq!(plain, vec![0, 2, 4, 1, 2, 3, 4]);
        assert_eq!(
            YFraming::Plain.decode(&plain),
            Ok(vec![YEvent::Update(update.to_vec())])
        );
    }

    #[test]
    fn hocuspocus_server_messages() {
        let mut authed = vec![11];
        authed.extend_from_slice(b"bench/doc-1");
        authed.extend_from_slice(&[2, 2, 10]);
        authed.extend_from_slice(b"read-write");
        assert_eq!(
            hocus().decode(&authed),
            Ok(vec![YEvent::Authenticated("read-write".into())])
        );
        let mut status = vec![11];
        status.extend_from_slice(b"bench/doc-1");
        status.extend_from_slice(&[8, 1]);
        assert_eq!(hocus().decode(&status), Ok(vec![YEvent::SyncStatus(true)]));
        // Sync reply (4) carrying the server's step 1.
        let mut reply = vec![11];
        reply.extend_from_slice(b"bench/doc-1");
        reply.extend_from_slice(&[4, 0, 1, 0]);
        assert_eq!(hocus().decode(&reply), Ok(vec![YEvent::SyncStep1]));
        let other = YFraming::Hocuspocus {
            doc: "other".into(),
        };
        assert!(matches!(
            other.decode(&status),
            Err(WireError::WrongDocument { .. })
        ));
    }

    #[test]
    fn truncated_frames_are_errors() {
        let frame = hocus().update(&[1, 2, 3, 4]);
        for len in 0..frame.len() {
            assert!(hocus().decode(&frame[..len]).is_err(), "prefix of {len}");
        }
    }

    #[test]
    fn ysweet_sync_status_is_echoed_and_read_back() {
        // What its provider sends after local version 300: 102, varBytes(varUint(300)).
        let sent = YFraming::YSweet.after_update(300).expect("a sync status");
        assert_eq!(sent, vec![102, 2, 0xac, 0x02]);
        assert_eq!(YFraming::Plain.after_update(300), None);
        // The server answers with the same bytes.
        assert_eq!(
            YFraming::YSweet.decode(&sent),
            Ok(vec![YEvent::Handled(300)])
        );
        // On a plain y-websocket connection it is unknown and ends the frame.
        assert_eq!(YFraming::Plain.decode(&sent), Ok(vec![YEvent::Other(102)]));
    }

    #[test]
    fn plain_frames_may_hold_several_messages() {
        let mut frame = yws::encode_sync_step2(&[0, 0]);
        frame.extend(yws::encode_sync_step1(&EMPTY_STATE_VECTOR));
        assert_eq!(
            YFraming::Plain.decode(&frame),
            Ok(vec![YEvent::SyncStep2(vec![0, 0]), YEvent::SyncStep1])
        );
    }
}
