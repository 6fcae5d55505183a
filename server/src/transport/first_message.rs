//! A limit on a WebSocket connection's first message, enforced on the bytes as they arrive.
//!
//! A connection that has not authenticated yet may send one message, the `hello`, of at most
//! [`Limits::max_hello_bytes`](crate::config::Limits::max_hello_bytes). The WebSocket library
//! buffers a whole message before handing it over, and its own limit applies to every message
//! alike, so the first message is limited here, below it: [`FirstMessageLimit`] reads the
//! frame headers of the byte stream until the first data message is complete, and fails the
//! read as soon as a header declares more than the limit or the bytes before the end of that
//! message exceed it (plus a small allowance for frame headers and control frames). After the
//! first message it passes everything through untouched.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes of frame headers and control frames (pings, a close) allowed before the first message
/// is complete, on top of the message's own limit.
pub(crate) const CONTROL_ALLOWANCE_BYTES: u64 = 8 * 1024;

/// Shared with the connection: whether the limit stopped the reads.
#[derive(Clone, Debug, Default)]
pub(crate) struct Tripped(Arc<AtomicBool>);

impl Tripped {
    pub(crate) fn is_set(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// Where the parser is in the frame it reads.
#[derive(Debug)]
struct Parser {
    limit: u64,
    /// Every byte read so far (headers, payloads).
    seen: u64,
    /// Payload declared by the data frames of the first message so far.
    data: u64,
    header: [u8; 14],
    header_len: usize,
    /// Payload bytes of the current frame still to pass.
    payload_left: u64,
    /// The current frame ends the first message.
    last: bool,
}

enum Feed {
    More,
    Done,
    Over,
}

impl Parser {
    fn new(limit: u64) -> Parser {
        Parser {
            limit,
            seen: 0,
            data: 0,
            header: [0; 14],
            header_len: 0,
            payload_left: 0,
            last: false,
        }
    }

    /// Counts `n` more bytes before the end of the first message; `false` past the bound.
    fn count(&mut self, n: usize) -> bool {
        self.seen += n as u64;
        self.seen <= self.limit + CONTROL_ALLOWANCE_BYTES
    }

    /// How long the header being read is, once its first two bytes are in.
    fn header_size(&self) -> usize {
        let ext = match self.header[1] & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let mask = if self.header[1] & 0x80 != 0 { 4 } else { 0 };
        2 + ext + mask
    }

    /// Reads `bytes`; bytes after the end of the first message are not looked at.
    fn feed(&mut self, mut bytes: &[u8]) -> Feed {
        while !bytes.is_empty() {
            if self.payload_left > 0 {
                let n = usize::try_from(self.payload_left)
                    .unwrap_or(usize::MAX)
                    .min(bytes.len());
                if !self.count(n) {
                    return Feed::Over;
                }
                self.payload_left -= n as u64;
                bytes = &bytes[n..];
                if self.payload_left == 0 && self.last {
                    return Feed::Done;
                }
                continue;
            }
            if !self.count(1) {
                return Feed::Over;
            }
            self.header[self.header_len] = bytes[0];
            self.header_len += 1;
            bytes = &bytes[1..];
            if self.header_len < 2 || self.header_len < self.header_size() {
                continue;
            }
            let len = match self.header[1] & 0x7f {
                126 => u64::from(u16::from_be_bytes([self.header[2], self.header[3]])),
                127 => {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(&self.header[2..10]);
                    u64::from_be_bytes(b)
                }
                n => u64::from(n),
            };
            let opcode = self.header[0] & 0x0f;
            let fin = self.header[0] & 0x80 != 0;
            self.header_len = 0;
            if opcode < 0x8 {
                self.data = self.data.saturating_add(len);
                if self.data > self.limit {
                    return Feed::Over;
                }
                self.last = fin;
            }
            self.payload_left = len;
            if len == 0 && self.last {
                return Feed::Done;
            }
        }
        Feed::More
    }
}

/// An IO stream whose first WebSocket message is limited (see the module docs). Writes pass
/// through.
#[derive(Debug)]
pub(crate) struct FirstMessageLimit<T> {
    inner: T,
    parser: Option<Parser>,
    tripped: Tripped,
}

impl<T> FirstMessageLimit<T> {
    /// `limit`: the first message's payload, in bytes; `None` passes everything through.
    pub(crate) fn new(inner: T, limit: Option<usize>) -> (Self, Tripped) {
        let tripped = Tripped::default();
        let io = FirstMessageLimit {
            inner,
            parser: limit.map(|l| Parser::new(l as u64)),
            tripped: tripped.clone(),
        };
        (io, tripped)
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for FirstMessageLimit<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let Some(parser) = &mut this.parser else {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        };
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        match parser.feed(&buf.filled()[before..]) {
            Feed::More => {}
            Feed::Done => this.parser = None,
            Feed::Over => {
                buf.set_filled(before);
                this.tripped.0.store(true, Ordering::Relaxed);
                return Poll::Ready(Err(io::Error::other(
                    "the first message is over the limit for a connection that has not \
                     authenticated",
                )));
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for FirstMessageLimit<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A masked client frame header for a payload of `len` bytes.
    fn header(fin: bool, opcode: u8, len: u64) -> Vec<u8> {
        let mut h = vec![if fin { 0x80 } else { 0 } | opcode];
        match len {
            0..=125 => h.push(0x80 | len as u8),
            126..=0xffff => {
                h.push(0x80 | 126);
                h.extend((len as u16).to_be_bytes());
            }
            _ => {
                h.push(0x80 | 127);
                h.extend(len.to_be_bytes());
            }
        }
        h.extend([1, 2, 3, 4]);
        h
    }

    #[test]
    fn a_small_first_message_passes_and_what_follows_is_not_counted() {
        let mut p = Parser::new(100);
        let mut bytes = header(true, 0x9, 4);
        bytes.extend([0; 4]);
        bytes.extend(header(false, 0x2, 60));
        bytes.extend([0; 60]);
        assert!(matches!(p.feed(&bytes), Feed::More));
        let mut rest = header(true, 0x0, 40);
        rest.extend([0; 40]);
        assert!(matches!(p.feed(&rest), Feed::Done));
    }

    #[test]
    fn a_header_declaring_too_much_is_refused_before_its_payload() {
        let mut p = Parser::new(64 * 1024);
        assert!(matches!(
            p.feed(&header(true, 0x2, 2 * 1024 * 1024)),
            Feed::Over
        ));
        let mut p = Parser::new(100);
        let mut bytes = header(false, 0x2, 80);
        bytes.extend([0; 80]);
        bytes.extend(header(true, 0x0, 30));
        assert!(matches!(p.feed(&bytes), Feed::Over));
    }

    #[test]
    fn endless_control_frames_before_the_message_are_refused() {
        let mut p = Parser::new(100);
        let ping = header(true, 0x9, 0);
        let mut result = Feed::More;
        for _ in 0..2_000 {
            result = p.feed(&ping);
            if !matches!(result, Feed::More) {
                break;
            }
        }
        assert!(matches!(result, Feed::Over));
    }

    #[test]
    fn headers_split_across_reads_are_reassembled() {
        let mut p = Parser::new(300);
        let mut bytes = header(true, 0x2, 200);
        bytes.extend([7; 200]);
        let mut last = Feed::More;
        for b in &bytes {
            last = p.feed(std::slice::from_ref(b));
        }
        assert!(matches!(last, Feed::Done));
    }
}
