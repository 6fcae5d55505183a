//! Raw HTTP for the HTTP transports' tests: requests with any headers and a binary body, and
//! a Server-Sent Events reader that parses events as they arrive.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// How long a test waits for a response or an event.
const WAIT: Duration = Duration::from_secs(20);

/// A response, with its body as bytes.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    /// Header names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }
}

fn request_head(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body_len: usize,
) -> String {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str(&format!("Content-Length: {body_len}\r\n\r\n"));
    head
}

/// Reads a response head: the status and the headers (names lower-cased).
async fn read_head<R: AsyncBufReadExt + Unpin>(r: &mut R) -> (u16, Vec<(String, String)>) {
    let mut status_line = String::new();
    r.read_line(&mut status_line).await.expect("status line");
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("status line {status_line:?}"));
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        r.read_line(&mut line).await.expect("header line");
        let line = line.trim_end();
        if line.is_empty() {
            return (status, headers);
        }
        if let Some((n, v)) = line.split_once(':') {
            headers.push((n.trim().to_ascii_lowercase(), v.trim().to_owned()));
        }
    }
}

/// One request over a fresh connection (closed after it).
pub async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Answer {
    tokio::time::timeout(WAIT, async {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        let mut all = headers.to_vec();
        all.push(("Connection", "close"));
        let head = request_head(addr, method, path, &all, body.len());
        s.write_all(head.as_bytes()).await.expect("write head");
        s.write_all(body).await.expect("write body");
        let mut r = BufReader::new(s);
        let (status, headers) = read_head(&mut r).await;
        let chunked = headers
            .iter()
            .any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"));
        let mut body = Vec::new();
        if chunked {
            while let Some(chunk) = read_chunk(&mut r).await {
                body.extend(chunk);
            }
        } else {
            r.read_to_end(&mut body).await.expect("body");
        }
        Answer {
            status,
            headers,
            body,
        }
    })
    .await
    .expect("a response in time")
}

/// One chunk of a chunked body; `None` at its end.
async fn read_chunk<R: AsyncBufReadExt + Unpin>(r: &mut R) -> Option<Vec<u8>> {
    let mut size = String::new();
    if r.read_line(&mut size).await.ok()? == 0 {
        return None;
    }
    let n = usize::from_str_radix(size.trim(), 16).ok()?;
    if n == 0 {
        return None;
    }
    let mut chunk = vec![0; n + 2];
    r.read_exact(&mut chunk).await.ok()?;
    chunk.truncate(n);
    Some(chunk)
}

/// One Server-Sent Event.
#[derive(Debug, Clone, PartialEq)]
pub struct SseEvent {
    pub event: String,
    pub id: Option<u64>,
    pub data: serde_json::Value,
}

/// An open SSE stream.
pub struct Sse {
    reader: BufReader<TcpStream>,
    pending: Vec<u8>,
    pub status: u16,
    pub headers: Vec<(String, String)>,
}

impl std::fmt::Debug for Sse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sse")
    }
}

impl Sse {
    /// `GET path` as an event stream, with `headers`.
    pub async fn open(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Sse {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        let mut all = headers.to_vec();
        all.push(("Accept", "text/event-stream"));
        let head = request_head(addr, "GET", path, &all, 0);
        s.write_all(head.as_bytes()).await.expect("write");
        let mut reader = BufReader::new(s);
        let (status, headers) = tokio::time::timeout(WAIT, read_head(&mut reader))
            .await
            .expect("a response head in time");
        Sse {
            reader,
            pending: Vec::new(),
            status,
            headers,
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The next event (comments skipped) within `within`; `None` if none came or the stream
    /// ended.
    pub async fn next_within(&mut self, within: Duration) -> Option<SseEvent> {
        tokio::time::timeout(within, self.next_event()).await.ok()?
    }

    /// The next event, waiting as long as the test allows; panics if the stream ends.
    pub async fn next(&mut self) -> SseEvent {
        self.next_within(WAIT).await.expect("an event")
    }

    async fn next_event(&mut self) -> Option<SseEvent> {
        loop {
            if let Some(end) = self.pending.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = self.pending.drain(..end + 2).collect();
                let text = String::from_utf8(block).expect("UTF-8 events");
                let mut event = SseEvent {
                    event: "message".into(),
                    id: None,
                    data: serde_json::Value::Null,
                };
                let mut data = None;
                for line in text.lines() {
                    if let Some(v) = line.strip_prefix("event: ") {
                        event.event = v.to_owned();
                    } else if let Some(v) = line.strip_prefix("id: ") {
                        event.id = v.parse().ok();
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        data = Some(serde_json::from_str(v).expect("JSON data"));
                    }
                }
                match data {
                    Some(d) => {
                        event.data = d;
                        return Some(event);
                    }
                    None => continue,
                }
            }
            let chunk = read_chunk(&mut self.reader).await?;
            self.pending.extend(chunk);
        }
    }
}
