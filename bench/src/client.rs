//! Bench clients: connect, handshake until synced, encode updates, decode what servers send, for
//! the native protocol, y-websocket and Hocuspocus alike.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use futures_util::{SinkExt, StreamExt};
use lattice_engine::protocol::{ClientMsg, PROTOCOL_VERSION, ServerMsg};
use lattice_engine::{Delta, DocId, DocState};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use yrs::updates::decoder::Decode;

use crate::wire::{YEvent, YFraming};
use crate::ysweet;

pub(crate) type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How often a listening connection sends [`Codec::keepalive`].
pub(crate) const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);

/// How long a connection may take to open and sync before the bench fails.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// The wire protocol a target speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Protocol {
    /// Lattice's MessagePack protocol (docs/protocol.md).
    Native,
    /// y-websocket: one lib0 message per frame, the document in the URL path.
    YWebsocket,
    /// Hocuspocus: y-websocket messages behind a document-name prefix, auth first.
    Hocuspocus,
}

/// Where a y-websocket server takes a document's connections.
#[derive(Clone, Debug)]
pub(crate) enum YjsPath {
    /// `PREFIX/DOC`: `/yjs` on Lattice, empty on the reference server.
    Prefix(&'static str),
    /// Y-Sweet: `/d/NAME/ws/NAME`, each document created first (see [`crate::ysweet`]).
    YSweet(Arc<ysweet::Documents>),
}

/// Where a running server takes connections.
#[derive(Clone, Debug)]
pub(crate) struct Endpoint {
    pub protocol: Protocol,
    pub addr: SocketAddr,
    yjs_path: YjsPath,
}

impl Endpoint {
    pub(crate) fn new(protocol: Protocol, addr: SocketAddr, yjs_path: YjsPath) -> Self {
        Self {
            protocol,
            addr,
            yjs_path,
        }
    }

    fn url(&self, doc: &str) -> String {
        match (self.protocol, &self.yjs_path) {
            (Protocol::Native, _) => format!("ws://{}/v1/sync", self.addr),
            (Protocol::YWebsocket, YjsPath::Prefix(prefix)) => {
                format!("ws://{}{prefix}/{doc}", self.addr)
            }
            (Protocol::YWebsocket, YjsPath::YSweet(_)) => ysweet::socket_url(self.addr, doc),
            // Hocuspocus itself listens at `/`, Lattice at `/hocuspocus`; the document's name
            // travels in every message.
            (Protocol::Hocuspocus, YjsPath::Prefix(path)) if !path.is_empty() => {
                format!("ws://{}{path}", self.addr)
            }
            (Protocol::Hocuspocus, _) => format!("ws://{}/", self.addr),
        }
    }

    /// Whatever the server needs before a client may open `doc` (Y-Sweet: the document).
    async fn prepare(&self, doc: &str) -> Result<()> {
        match &self.yjs_path {
            YjsPath::YSweet(docs) => docs.ensure(self.addr, doc).await,
            YjsPath::Prefix(_) => Ok(()),
        }
    }
}

/// What a server frame means to a bench client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Event {
    /// A Yjs update (a relay, an echo, or what we lacked at subscription).
    Update(Vec<u8>),
    /// Native: every delta with `seq` ≤ this is durable. Y-Sweet: every update up to the sync
    /// status `seq` was applied (in memory; on disk at its next checkpoint).
    Acked(u64),
    /// Hocuspocus: one more update of ours was applied.
    Applied,
    Other,
}

/// Encodes and decodes frames for one document on one protocol.
#[derive(Clone, Debug)]
pub(crate) struct Codec {
    protocol: Protocol,
    doc: DocId,
    framing: YFraming,
}

impl Codec {
    pub(crate) fn new(protocol: Protocol, doc: &str) -> Result<Self> {
        Self::with_framing(
            protocol,
            doc,
            match protocol {
                Protocol::Hocuspocus => YFraming::Hocuspocus {
                    doc: doc.to_owned(),
                },
                _ => YFraming::Plain,
            },
        )
    }

    /// The codec for `doc` at `endpoint` (Y-Sweet's y-websocket has its sync status).
    fn for_endpoint(endpoint: &Endpoint, doc: &str) -> Result<Self> {
        match (&endpoint.yjs_path, endpoint.protocol) {
            (YjsPath::YSweet(_), Protocol::YWebsocket) => {
                Self::with_framing(endpoint.protocol, doc, YFraming::YSweet)
            }
            _ => Self::new(endpoint.protocol, doc),
        }
    }

    fn with_framing(protocol: Protocol, doc: &str, framing: YFraming) -> Result<Self> {
        Ok(Self {
            protocol,
            doc: DocId::new(doc).with_context(|| format!("bad document id {doc:?}"))?,
            framing,
        })
    }

    /// What to send after update `seq` (from 1), on protocols whose clients send one: Y-Sweet's
    /// sync status, which its server echoes as [`Event::Acked`] once it has handled the update.
    pub(crate) fn after_update(&self, seq: u64) -> Option<Message> {
        self.framing
            .after_update(seq)
            .map(|f| Message::Binary(f.into()))
    }

    /// Whether the server acknowledges this client's updates ([`Event::Acked`]): native Lattice
    /// once they are committed, Y-Sweet once it has applied them (before its checkpoint).
    pub(crate) fn acknowledges(&self) -> bool {
        self.protocol == Protocol::Native || self.framing == YFraming::YSweet
    }

    /// One Yjs update as a frame; `seq` numbers native deltas (from 1).
    pub(crate) fn update(&self, seq: u64, yjs: &[u8]) -> Message {
        let bytes = match self.protocol {
            Protocol::Native => ClientMsg::Delta {
                doc: self.doc.clone(),
                seq,
                delta: Delta {
                    yjs: yjs.to_vec(),
                    ..Delta::default()
                },
            }
            .encode(),
            _ => self.framing.update(yjs),
        };
        Message::Binary(bytes.into())
    }

    /// A frame to send now and then on a connection that otherwise only listens, for servers
    /// that close silent connections (Hocuspocus); `None` where pings suffice.
    pub(crate) fn keepalive(&self) -> Option<Message> {
        match self.protocol {
            Protocol::Native => None,
            _ => self.framing.keepalive().map(|f| Message::Binary(f.into())),
        }
    }

    fn handshake(&self) -> Vec<Vec<u8>> {
        match self.protocol {
            Protocol::Native => vec![
                ClientMsg::Hello {
                    protocol: PROTOCOL_VERSION,
                    token: None,
                    agent: Some("lattice-bench".into()),
                    replica: None,
                }
                .encode(),
                ClientMsg::Subscribe {
                    doc: self.doc.clone(),
                    state: DocState::default(),
                }
                .encode(),
            ],
            _ => self.framing.handshake(""),
        }
    }

    /// Decodes one server message; a refusal from the server is an error.
    pub(crate) fn decode(&self, msg: &Message) -> Result<Vec<Event>> {
        let bytes = match msg {
            Message::Binary(b) => b,
            Message::Close(c) => bail!("the server closed the connection: {c:?}"),
            _ => return Ok(Vec::new()),
        };
        if self.protocol == Protocol::Native {
            return Ok(match ServerMsg::decode(bytes, usize::MAX)? {
                ServerMsg::Delta { delta, .. } | ServerMsg::Sync { delta, .. } => {
                    if delta.yjs.is_empty() {
                        vec![Event::Other]
                    } else {
                        vec![Event::Update(delta.yjs)]
                    }
                }
                ServerMsg::Ack { seq, .. } => vec![Event::Acked(seq)],
                ServerMsg::Error { code, message, .. } => {
                    bail!("the server refused: {code:?}: {message}")
                }
                _ => vec![Event::Other],
            });
        }
        self.framing
            .decode(bytes)?
            .into_iter()
            .map(|e| match e {
                YEvent::Update(u) | YEvent::SyncStep2(u) => Ok(Event::Update(u)),
                YEvent::SyncStatus(true) => Ok(Event::Applied),
                YEvent::SyncStatus(false) => bail!("the server did not apply an update"),
                YEvent::Handled(seq) => Ok(Event::Acked(seq)),
                YEvent::PermissionDenied(reason) => bail!("permission denied: {reason}"),
                _ => Ok(Event::Other),
            })
            .collect()
    }

    /// Whether `msg` completes the handshake given what came before: native `sync`, sync step 2
    /// for y-websocket, and for Hocuspocus step 2 after `authenticated`.
    fn synced_by(&self, msg: &Message, authenticated: &mut bool) -> Result<bool> {
        let Message::Binary(bytes) = msg else {
            if let Message::Close(c) = msg {
                bail!("closed during the handshake: {c:?}");
            }
            return Ok(false);
        };
        match self.protocol {
            Protocol::Native => match ServerMsg::decode(bytes, usize::MAX)? {
                ServerMsg::Sync { .. } => Ok(true),
                ServerMsg::Error { code, message, .. } => {
                    bail!("refused during the handshake: {code:?}: {message}")
                }
                _ => Ok(false),
            },
            _ => {
                let mut synced = false;
                for e in self.framing.decode(bytes)? {
                    match e {
                        YEvent::Authenticated(_) => *authenticated = true,
                        YEvent::PermissionDenied(r) => bail!("permission denied: {r}"),
                        YEvent::SyncStep2(_) => synced = true,
                        _ => {}
                    }
                }
                Ok(synced
                    && (*authenticated || !matches!(self.framing, YFraming::Hocuspocus { .. })))
            }
        }
    }
}

/// Options for opening many connections.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct ConnectOptions {
    /// Small client-side buffers, for the idle scenario's thousands of sockets (the server's
    /// memory is what is measured, but the bench must fit beside it).
    pub small_buffers: bool,
}

/// Opens a connection to `doc` and returns it synced (the document was empty or the
/// subscription answered), with its codec.
pub(crate) async fn connect(
    endpoint: &Endpoint,
    doc: &str,
    opts: ConnectOptions,
) -> Result<(Ws, Codec)> {
    let (ws, codec, _) = connect_keeping(endpoint, doc, opts).await?;
    Ok((ws, codec))
}

/// [`connect`], also returning the frames the server sent until the client was synced (they
/// hold the document's state), undecoded: the caller decides whether decoding them is timed.
pub(crate) async fn connect_keeping(
    endpoint: &Endpoint,
    doc: &str,
    opts: ConnectOptions,
) -> Result<(Ws, Codec, Vec<Message>)> {
    let codec = Codec::for_endpoint(endpoint, doc)?;
    let url = endpoint.url(doc);
    let config = opts.small_buffers.then(|| {
        WebSocketConfig::default()
            .read_buffer_size(4096)
            .write_buffer_size(0)
    });
    let fut = async {
        endpoint.prepare(doc).await?;
        let (mut ws, _) = tokio_tungstenite::connect_async_with_config(&url, config, true)
            .await
            .with_context(|| format!("cannot connect to {url}"))?;
        for frame in codec.handshake() {
            ws.feed(Message::Binary(frame.into())).await?;
        }
        ws.flush().await?;
        let mut authenticated = false;
        let mut received = Vec::new();
        loop {
            let msg = ws
                .next()
                .await
                .context("the server closed the connection during the handshake")??;
            let synced = codec.synced_by(&msg, &mut authenticated)?;
            received.push(msg);
            if synced {
                return Ok::<_, anyhow::Error>((ws, received));
            }
        }
    };
    let (ws, received) = tokio::time::timeout(HANDSHAKE_TIMEOUT, fut)
        .await
        .with_context(|| format!("no sync within {HANDSHAKE_TIMEOUT:?} from {url} ({doc})"))??;
    Ok((ws, codec, received))
}

/// The clocks of `client` a Yjs update inserts, as ranges (empty if it has nothing of
/// `client`): for a writer that types one character per update, its update number k (from 1)
/// is the clock range k−1..k, so the ranges say exactly which updates a relay carries, merged
/// or not, and a repeated or skipped one shows.
pub(crate) fn clock_ranges(update: &[u8], client: u64) -> Result<Vec<std::ops::Range<u32>>> {
    let update = yrs::Update::decode_v1(update).context("undecodable Yjs update")?;
    let client = yrs::block::ClientID::new(client);
    Ok(update
        .insertions(true)
        .iter()
        .filter(|(c, _)| **c == client)
        .flat_map(|(_, ranges)| ranges.iter().cloned().collect::<Vec<_>>())
        .collect())
}

/// `n` keystrokes by Yjs client `client`: one character appended per update, each encoded on
/// its own (what an editor sends per key press).
pub(crate) fn keystrokes(n: usize, client: u64) -> Vec<Vec<u8>> {
    use yrs::{GetString as _, Text as _, Transact as _};
    let doc = yrs::Doc::with_options(yrs::Options {
        client_id: yrs::block::ClientID::new(client),
        offset_kind: yrs::OffsetKind::Utf16,
        ..yrs::Options::default()
    });
    let text = doc.get_or_insert_text("text");
    let out = (0..n)
        .map(|i| {
            let mut txn = doc.transact_mut();
            let at = text.len(&txn);
            let ch = char::from(b'a' + (i % 26) as u8).to_string();
            text.insert(&mut txn, at, &ch);
            txn.encode_update_v1()
        })
        .collect();
    debug_assert_eq!(text.get_string(&doc.transact()).len(), n);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keystroke_clocks_count_updates_even_merged() {
        let ups = keystrokes(10, 77);
        assert_eq!(clock_ranges(&ups[0], 77).expect("ranges"), vec![0..1]);
        assert_eq!(clock_ranges(&ups[9], 77).expect("ranges"), vec![9..10]);
        let merged = yrs::merge_updates_v1(&ups[3..7]).expect("merge");
        assert_eq!(clock_ranges(&ups[4], 77).expect("ranges"), vec![4..5]);
        let covered: Vec<u32> = clock_ranges(&merged, 77)
            .expect("ranges")
            .into_iter()
            .flatten()
            .collect();
        assert_eq!(covered, vec![3, 4, 5, 6]);
        assert!(clock_ranges(&ups[0], 78).expect("ranges").is_empty());
    }

    #[test]
    fn native_frames_decode_to_events() {
        let codec = Codec::new(Protocol::Native, "bench/x").expect("codec");
        let ack = ServerMsg::Ack {
            doc: DocId::new("bench/x").expect("doc"),
            seq: 5,
        };
        let msg = Message::Binary(ack.encode().into());
        assert_eq!(codec.decode(&msg).expect("decode"), vec![Event::Acked(5)]);
    }
}
