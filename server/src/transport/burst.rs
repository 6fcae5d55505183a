//! Reading a connection's bytes in bursts, with no buffer held while it is idle.
//!
//! The WebSocket library reads through a buffer of its own that it allocates up front and keeps
//! for the connection's life, and each read asks for at most that buffer's size. A large one
//! (its default is 128 KiB) is most of what an idle connection costs; a small one alone would
//! mean a system call per few hundred bytes under load. So its buffer is kept small
//! (`WS_READ_CHUNK_BYTES` in `server.rs`) and [`ReadBurst`], under it, reads ahead: when a
//! read fills the library's buffer, more is probably waiting, and up to [`BURST_BYTES`] more
//! are read in the same call into a buffer that lives only until they are handed on. An idle
//! connection, having handed on everything, holds nothing here.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes read ahead at most, when a read filled the caller's buffer.
pub(crate) const BURST_BYTES: usize = 16 * 1024;

/// An IO stream whose reads fill a small caller's buffer from bursts read ahead (see the
/// module docs). Writes pass through.
#[derive(Debug)]
pub(crate) struct ReadBurst<T> {
    inner: T,
    /// Bytes read ahead and not handed on yet, and how many of them were.
    held: Option<(Vec<u8>, usize)>,
    /// An error met while reading ahead, for the next read (the bytes before it went first).
    failed: Option<io::Error>,
}

impl<T> ReadBurst<T> {
    pub(crate) fn new(inner: T) -> ReadBurst<T> {
        ReadBurst {
            inner,
            held: None,
            failed: None,
        }
    }

    #[cfg(test)]
    fn holds(&self) -> usize {
        self.held.as_ref().map_or(0, |(bytes, _)| bytes.capacity())
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for ReadBurst<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some((bytes, at)) = &mut this.held {
            let n = (bytes.len() - *at).min(buf.remaining());
            buf.put_slice(&bytes[*at..*at + n]);
            *at += n;
            if *at == bytes.len() {
                this.held = None;
            }
            return Poll::Ready(Ok(()));
        }
        if let Some(e) = this.failed.take() {
            return Poll::Ready(Err(e));
        }
        if buf.remaining() >= BURST_BYTES {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        if buf.remaining() > 0 || buf.filled().len() == before {
            // A short read (or the end): the socket had no more for now.
            return Poll::Ready(Ok(()));
        }
        let mut bytes = vec![0u8; BURST_BYTES];
        let mut ahead = ReadBuf::new(&mut bytes);
        match Pin::new(&mut this.inner).poll_read(cx, &mut ahead) {
            Poll::Ready(Ok(())) => {
                let n = ahead.filled().len();
                if n > 0 {
                    bytes.truncate(n);
                    this.held = Some((bytes, 0));
                }
            }
            Poll::Ready(Err(e)) => this.failed = Some(e),
            // Nothing more yet; the waker is registered, and a spurious wake-up is harmless.
            Poll::Pending => {}
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for ReadBurst<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
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

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn small_reads_are_served_from_one_burst_then_nothing_is_held() {
        let (mut peer, io) = tokio::io::duplex(64 * 1024);
        let sent: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        peer.write_all(&sent).await.unwrap();
        let mut reader = ReadBurst::new(io);
        let mut got = Vec::new();
        let mut chunk = [0u8; 512];
        let n = reader.read(&mut chunk).await.unwrap();
        got.extend_from_slice(&chunk[..n]);
        assert!(reader.holds() > 0, "a full first read reads ahead");
        while got.len() < sent.len() {
            let n = reader.read(&mut chunk).await.unwrap();
            got.extend_from_slice(&chunk[..n]);
        }
        assert_eq!(got, sent);
        assert_eq!(reader.holds(), 0, "everything handed on: no buffer held");
    }

    #[tokio::test]
    async fn the_end_of_the_stream_comes_after_the_bytes_read_ahead() {
        let (mut peer, io) = tokio::io::duplex(64 * 1024);
        peer.write_all(&[7u8; 3_000]).await.unwrap();
        drop(peer);
        let mut reader = ReadBurst::new(io);
        let mut all = Vec::new();
        reader.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, vec![7u8; 3_000]);
    }
}
