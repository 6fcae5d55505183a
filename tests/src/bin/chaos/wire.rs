//! Connections for the chaos program that report failure instead of panicking: the server
//! they talk to is being killed, starved of its database or attacked, so a refused connection
//! or a close is an outcome to count, not a bug in the test.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use futures_util::{SinkExt, StreamExt};
use lattice_engine::protocol::{ClientMsg, PROTOCOL_VERSION, ServerMsg};
use lattice_engine::yws::{self, YMessage};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub(crate) type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Bound on connecting and on each HTTP exchange.
pub(crate) const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// What came off a socket.
#[derive(Debug)]
pub(crate) enum Frame {
    Native(ServerMsg),
    Yjs(Vec<YMessage>),
    /// The close code, if the server sent a close frame; `None` for a reset or EOF.
    Closed(Option<u16>),
}

/// Opens a WebSocket to `url`, with `Authorization: Bearer token` on the upgrade if given.
pub(crate) async fn connect(url: &str, bearer: Option<&str>) -> Result<Ws> {
    let mut request = url.into_client_request()?;
    if let Some(token) = bearer {
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {token}").parse()?);
    }
    let (ws, _) = tokio::time::timeout(IO_TIMEOUT, tokio_tungstenite::connect_async(request))
        .await
        .context("upgrade timed out")??;
    Ok(ws)
}

pub(crate) fn hello(token: Option<&str>, replica: Option<u32>) -> ClientMsg {
    ClientMsg::Hello {
        protocol: PROTOCOL_VERSION,
        token: token.map(str::to_owned),
        agent: Some("lattice-chaos".into()),
        replica,
    }
}

pub(crate) async fn send(ws: &mut Ws, msg: &ClientMsg) -> Result<()> {
    ws.send(Message::Binary(msg.encode().into())).await?;
    Ok(())
}

pub(crate) async fn send_bytes(ws: &mut Ws, bytes: Vec<u8>) -> Result<()> {
    ws.send(Message::Binary(bytes.into())).await?;
    Ok(())
}

/// The next native message or close, skipping pings (tungstenite answers them).
pub(crate) async fn read_native(ws: &mut Ws) -> Frame {
    loop {
        match ws.next().await {
            Some(Ok(Message::Binary(b))) => match ServerMsg::decode(&b, usize::MAX) {
                Ok(msg) => return Frame::Native(msg),
                Err(_) => return Frame::Closed(None),
            },
            Some(Ok(Message::Close(frame))) => return Frame::Closed(frame.map(|f| f.code.into())),
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return Frame::Closed(None),
        }
    }
}

/// The next y-websocket frame's messages or the close.
pub(crate) async fn read_yjs(ws: &mut Ws) -> Frame {
    loop {
        match ws.next().await {
            Some(Ok(Message::Binary(b))) => match yws::decode_frame(&b, usize::MAX) {
                Ok(messages) => return Frame::Yjs(messages),
                Err(_) => return Frame::Closed(None),
            },
            Some(Ok(Message::Close(frame))) => return Frame::Closed(frame.map(|f| f.code.into())),
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return Frame::Closed(None),
        }
    }
}

/// Reads until the server closes the connection (or `within` passes); the close code.
pub(crate) async fn closed_within(ws: &mut Ws, within: Duration) -> Option<Option<u16>> {
    tokio::time::timeout(within, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(frame))) => return frame.map(|f| f.code.into()),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return None,
            }
        }
    })
    .await
    .ok()
}

/// Connects to `/v1/sync` with the token on the upgrade and completes the hello.
pub(crate) async fn native_session(
    addr: SocketAddr,
    token: &str,
    replica: Option<u32>,
) -> Result<Ws> {
    let mut ws = connect(&format!("ws://{addr}/v1/sync"), Some(token)).await?;
    send(&mut ws, &hello(Some(token), replica)).await?;
    match tokio::time::timeout(IO_TIMEOUT, read_native(&mut ws)).await {
        Ok(Frame::Native(ServerMsg::Welcome { .. })) => Ok(ws),
        Ok(other) => bail!("expected welcome, got {other:?}"),
        Err(_) => bail!("no welcome within {IO_TIMEOUT:?}"),
    }
}

/// Connects to `/yjs/{doc}?token=…`.
pub(crate) async fn yjs_session(addr: SocketAddr, doc: &str, token: &str) -> Result<Ws> {
    connect(&format!("ws://{addr}/yjs/{doc}?token={token}"), None).await
}

/// One HTTP response.
#[derive(Debug)]
pub(crate) struct Response {
    pub status: u16,
    pub body: String,
}

impl Response {
    pub(crate) fn json(&self) -> Result<serde_json::Value> {
        serde_json::from_str(&self.body).with_context(|| format!("not JSON: {}", self.body))
    }
}

/// `GET path` over a fresh HTTP/1.1 connection, with an optional bearer token.
pub(crate) async fn http_get(
    addr: SocketAddr,
    path: &str,
    bearer: Option<&str>,
) -> Result<Response> {
    tokio::time::timeout(IO_TIMEOUT, async {
        let mut s = TcpStream::connect(addr).await?;
        let auth = bearer.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n");
        s.write_all(request.as_bytes()).await?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await?;
        parse_response(&raw)
    })
    .await
    .with_context(|| format!("GET {path}: no answer within {IO_TIMEOUT:?}"))?
}

fn parse_response(raw: &[u8]) -> Result<Response> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n").context("no HTTP head")?;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .context("no status line")?;
    let chunked = lines.any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let body = if chunked {
        dechunk(body)?
    } else {
        body.to_owned()
    };
    Ok(Response { status, body })
}

fn dechunk(mut rest: &str) -> Result<String> {
    let mut out = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).context("chunk size")?;
        if n == 0 {
            break;
        }
        out.push_str(after.get(..n).context("short chunk")?);
        rest = after[n..].trim_start_matches("\r\n");
    }
    Ok(out)
}

/// Waits until `GET /healthz` answers 200, or fails after `within`.
pub(crate) async fn wait_healthy(addr: SocketAddr, within: Duration) -> Result<()> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Ok(r) = http_get(addr, "/healthz", None).await
            && r.status == 200
        {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            bail!("{addr} did not answer /healthz within {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The value of metric `name` (exactly as written, labels included) in `/metrics`.
pub(crate) async fn metric(addr: SocketAddr, name: &str) -> Result<f64> {
    let text = http_get(addr, "/metrics", None).await?.body;
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            (key == name).then(|| value.parse().ok())?
        })
        .with_context(|| format!("no metric {name}"))
}
