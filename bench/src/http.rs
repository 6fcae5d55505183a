//! Just enough HTTP/1.1 for the bench's HTTP readers (docs/http-api.md): `GET` on one
//! keep-alive TCP connection, bodies framed by `Content-Length` or chunked, a chunked body read
//! as it streams, and the Server-Sent Events blocks in it. Loopback only: no TLS, no redirects,
//! no compression.
//!
//! **Invariant:** every read of the network stamps the bytes it brings with the time it
//! returned, before any parsing, so what the caller measures is arrival, not parsing.

use std::net::SocketAddr;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Bytes asked of the socket per read.
const READ_BYTES: usize = 64 * 1024;
/// The largest response head accepted.
const MAX_HEAD_BYTES: usize = 16 * 1024;

/// One HTTP/1.1 connection, with the bytes read but not consumed yet.
#[derive(Debug)]
pub(crate) struct HttpConn {
    addr: SocketAddr,
    stream: TcpStream,
    raw: Vec<u8>,
    /// When the last read returned.
    read_at: Instant,
}

/// How a response's body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Framing {
    Empty,
    Length(usize),
    Chunked,
}

/// A response's status line and the headers the bench reads.
#[derive(Debug)]
pub(crate) struct Head {
    pub status: u16,
    pub content_type: String,
    framing: Framing,
}

impl HttpConn {
    pub(crate) async fn connect(addr: SocketAddr) -> Result<Self> {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("cannot connect to http://{addr}"))?;
        stream.set_nodelay(true)?;
        Ok(Self {
            addr,
            stream,
            raw: Vec::new(),
            read_at: Instant::now(),
        })
    }

    /// Sends `GET path` and reads the response's head. A connection the server closed while
    /// idle (keep-alive ended) is opened again once.
    pub(crate) async fn get(&mut self, path: &str, accept: &str) -> Result<Head> {
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nAccept: {accept}\r\nUser-Agent: lattice-bench\r\n\r\n",
            self.addr
        );
        for attempt in 0..2 {
            let sent = self.stream.write_all(request.as_bytes()).await;
            match sent {
                Ok(()) => match self.read_head().await? {
                    Some(head) => return Ok(head),
                    None if attempt == 0 && self.raw.is_empty() => {}
                    None => break,
                },
                Err(_) if attempt == 0 => {}
                Err(e) => return Err(e).context("sending the request"),
            }
            *self = Self::connect(self.addr).await?;
        }
        bail!("the server closed the connection before answering GET {path}")
    }

    /// Sends `POST path` with `body` on this (fresh) connection and reads the response's head.
    /// Not retried: a POST may not be idempotent.
    pub(crate) async fn post(
        &mut self,
        path: &str,
        content_type: &str,
        body: &[u8],
    ) -> Result<Head> {
        let mut request = format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nUser-Agent: lattice-bench\r\n\r\n",
            self.addr,
            body.len()
        )
        .into_bytes();
        request.extend_from_slice(body);
        self.stream
            .write_all(&request)
            .await
            .context("sending the request")?;
        self.read_head().await?.with_context(|| {
            format!("the server closed the connection before answering POST {path}")
        })
    }

    /// Reads more bytes into `raw` and stamps them; `Ok(0)` at the end of the stream.
    async fn fill(&mut self) -> Result<usize> {
        self.raw.reserve(READ_BYTES);
        let n = self
            .stream
            .read_buf(&mut self.raw)
            .await
            .context("reading the response")?;
        self.read_at = Instant::now();
        Ok(n)
    }

    /// The response head; `None` if the connection ended before one began.
    async fn read_head(&mut self) -> Result<Option<Head>> {
        let end = loop {
            if let Some(at) = find(&self.raw, b"\r\n\r\n") {
                break at;
            }
            if self.raw.len() > MAX_HEAD_BYTES {
                bail!("a response head over {MAX_HEAD_BYTES} bytes");
            }
            if self.fill().await? == 0 {
                if self.raw.is_empty() {
                    return Ok(None);
                }
                bail!("the connection ended inside a response head");
            }
        };
        let text = String::from_utf8_lossy(&self.raw[..end]).into_owned();
        self.raw.drain(..end + 4);
        let mut lines = text.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let status: u16 = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("not an HTTP status line: {status_line:?}"))?;
        let mut head = Head {
            status,
            content_type: String::new(),
            framing: Framing::Empty,
        };
        for line in lines {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim();
            match name.trim().to_ascii_lowercase().as_str() {
                "content-type" => head.content_type = value.to_owned(),
                "content-length" if head.framing != Framing::Chunked => {
                    let len = value.parse().context("a bad Content-Length")?;
                    head.framing = Framing::Length(len);
                }
                "transfer-encoding" if value.eq_ignore_ascii_case("chunked") => {
                    head.framing = Framing::Chunked;
                }
                _ => {}
            }
        }
        if status == 204 || status == 304 || status < 200 {
            head.framing = Framing::Empty;
        }
        Ok(Some(head))
    }

    /// The whole body of the response whose head was just read, and when its last byte came.
    pub(crate) async fn body(&mut self, head: &Head) -> Result<(Vec<u8>, Instant)> {
        match head.framing {
            Framing::Empty => Ok((Vec::new(), self.read_at)),
            Framing::Length(len) => {
                while self.raw.len() < len {
                    if self.fill().await? == 0 {
                        bail!("the connection ended inside a response body");
                    }
                }
                Ok((self.raw.drain(..len).collect(), self.read_at))
            }
            Framing::Chunked => {
                let mut body = Vec::new();
                while !dechunk(&mut self.raw, &mut body)? {
                    if self.fill().await? == 0 {
                        bail!("the connection ended inside a chunked body");
                    }
                }
                Ok((body, self.read_at))
            }
        }
    }

    /// The body of the response whose head was just read, as it streams.
    pub(crate) fn into_stream(self, head: &Head) -> Result<BodyStream> {
        if head.framing != Framing::Chunked {
            bail!("expected a chunked (streamed) body, got {:?}", head.framing);
        }
        Ok(BodyStream {
            conn: self,
            ended: false,
        })
    }
}

/// A chunked body read as it comes.
#[derive(Debug)]
pub(crate) struct BodyStream {
    conn: HttpConn,
    ended: bool,
}

impl BodyStream {
    /// The body bytes of the next read that completes at least one chunk, with the time that
    /// read returned; `None` once the body ended.
    pub(crate) async fn next(&mut self) -> Result<Option<(Vec<u8>, Instant)>> {
        let mut out = Vec::new();
        loop {
            if !self.ended {
                self.ended = dechunk(&mut self.conn.raw, &mut out)?;
            }
            if !out.is_empty() {
                return Ok(Some((out, self.conn.read_at)));
            }
            if self.ended {
                return Ok(None);
            }
            if self.conn.fill().await? == 0 {
                bail!("the connection ended inside a chunked body");
            }
        }
    }
}

/// Moves the complete chunks at the start of `raw` into `body`; `true` once the last chunk
/// (size 0, trailers, blank line) has been taken. An incomplete chunk stays in `raw`.
fn dechunk(raw: &mut Vec<u8>, body: &mut Vec<u8>) -> Result<bool> {
    let mut at = 0;
    let mut ended = false;
    while let Some(eol) = find(&raw[at..], b"\r\n") {
        let line = std::str::from_utf8(&raw[at..at + eol]).context("a bad chunk size line")?;
        let size_text = line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .with_context(|| format!("a bad chunk size {size_text:?}"))?;
        let data = at + eol + 2;
        if size == 0 {
            // Trailers, if any, end with a blank line.
            let rest = &raw[data..];
            let end = if rest.starts_with(b"\r\n") {
                Some(2)
            } else {
                find(rest, b"\r\n\r\n").map(|e| e + 4)
            };
            if let Some(end) = end {
                at = data + end;
                ended = true;
            }
            break;
        }
        if raw.len() < data + size + 2 {
            break;
        }
        body.extend_from_slice(&raw[data..data + size]);
        at = data + size + 2;
    }
    raw.drain(..at);
    Ok(ended)
}

/// Where `needle` (not empty) first occurs in `haystack`.
fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    let (first, rest) = needle.split_first()?;
    let mut from = 0;
    while let Some(at) = haystack[from..].iter().position(|b| b == first) {
        let at = from + at;
        if haystack[at + 1..].starts_with(rest) {
            return Some(at);
        }
        if haystack.len() - at <= rest.len() {
            return None;
        }
        from = at + 1;
    }
    None
}

/// One Server-Sent Events block: its `event:` (default `message`), `id:` and `data:` lines.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct SseEvent {
    pub event: String,
    pub id: Option<String>,
    pub data: String,
}

/// Splits a `text/event-stream` body into events as its bytes come. Consumed bytes are
/// dropped in bulk, and a partial event is scanned once, so a read that brings many events
/// costs linear time.
#[derive(Debug, Default)]
pub(crate) struct SseParser {
    buf: Vec<u8>,
    /// Where the next event starts.
    start: usize,
    /// How far from `start` the search for the blank line that ends it has got.
    scanned: usize,
}

impl SseParser {
    pub(crate) fn push(&mut self, bytes: &[u8]) {
        if self.start > 0 && self.start * 2 >= self.buf.len() {
            self.buf.drain(..self.start);
            self.scanned -= self.start;
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete event; comments and blocks without data are skipped.
    pub(crate) fn next_event(&mut self) -> Result<Option<SseEvent>> {
        loop {
            let from = self.scanned.max(self.start);
            let Some(at) = find(&self.buf[from..], b"\n\n") else {
                self.scanned = self.buf.len().saturating_sub(1).max(self.start);
                return Ok(None);
            };
            let end = from + at + 2;
            let block = &self.buf[self.start..end];
            self.start = end;
            self.scanned = end;
            let text = std::str::from_utf8(block).context("an event that is not UTF-8")?;
            let mut event = SseEvent::default();
            let mut has_data = false;
            for line in text.lines() {
                let line = line.strip_suffix('\r').unwrap_or(line);
                if line.is_empty() || line.starts_with(':') {
                    continue;
                }
                let (field, value) = line.split_once(':').unwrap_or((line, ""));
                let value = value.strip_prefix(' ').unwrap_or(value);
                match field {
                    "event" => event.event = value.to_owned(),
                    "id" => event.id = Some(value.to_owned()),
                    "data" => {
                        if has_data {
                            event.data.push('\n');
                        }
                        event.data.push_str(value);
                        has_data = true;
                    }
                    _ => {}
                }
            }
            if has_data {
                if event.event.is_empty() {
                    event.event = "message".into();
                }
                return Ok(Some(event));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_are_taken_whole_and_the_end_is_seen() {
        let mut raw = b"5\r\nhello\r\n6;x=1\r\n world\r\n3\r\nab".to_vec();
        let mut body = Vec::new();
        assert!(!dechunk(&mut raw, &mut body).expect("dechunk"));
        assert_eq!(body, b"hello world");
        assert_eq!(raw, b"3\r\nab");
        raw.extend_from_slice(b"c\r\n0\r\n\r\n");
        assert!(dechunk(&mut raw, &mut body).expect("dechunk"));
        assert_eq!(body, b"hello worldabc");
        assert!(raw.is_empty());
    }

    #[test]
    fn events_split_across_reads() {
        let mut p = SseParser::default();
        p.push(b": keep-alive\n\nevent: delta\nid: 4");
        assert_eq!(p.next_event().expect("parse"), None);
        p.push(b"2\ndata: {\"a\":1}\n\nevent: close\ndata: {}\n\n");
        let e = p.next_event().expect("parse").expect("an event");
        assert_eq!(
            e,
            SseEvent {
                event: "delta".into(),
                id: Some("42".into()),
                data: "{\"a\":1}".into()
            }
        );
        assert_eq!(
            p.next_event().expect("parse").expect("close").event,
            "close"
        );
        assert_eq!(p.next_event().expect("parse"), None);
        // The blank line that ends an event may come in the next read.
        p.push(b"data: x\n");
        assert_eq!(p.next_event().expect("parse"), None);
        p.push(b"\n");
        assert_eq!(p.next_event().expect("parse").expect("message").data, "x");
    }
}
