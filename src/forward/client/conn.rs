//! One HTTP/1.1 connection to an upstream instance: its stream and its read buffer. The stream
//! is any [`Transport`] — TCP or TLS over TCP ([`Stream`]) — so nothing above this file knows
//! which one carries the bytes.

use std::future::Future as _;
use std::io;
use std::pin::{pin, Pin};
use std::task::{Context, Poll};

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::stream::{Stream, Transport};
use super::ProtoError;
use crate::forward::h1::response::{self, Parsed};

/// Bytes a read asks for while a head is expected; body reads ask for the buffer limit.
pub const HEAD_READ: usize = 8 * 1024;

/// One HTTP/1.1 connection to an upstream, with its read buffer.
pub struct Conn<S = Stream> {
    /// The stream.
    pub(super) io: S,
    /// Bytes read and not consumed yet.
    pub(super) buf: BytesMut,
    /// Largest read (and response head): `upstream.buffer_size`.
    pub(super) limit: usize,
}

impl<S: Transport> Conn<S> {
    /// A connection over `io` that reads at most `limit` bytes at a time and refuses response
    /// heads larger than that.
    pub fn new(io: S, limit: usize) -> Self {
        Self {
            io,
            buf: BytesMut::new(),
            limit,
        }
    }

    /// Whether an idle connection can take a request: nothing buffered, and still open.
    pub fn is_usable(&mut self) -> bool {
        self.buf.is_empty() && self.io.is_idle_open()
    }

    /// Lets go of a large read buffer before the connection idles in the pool, so idle
    /// connections hold at most a head-sized buffer each (body reads grow it to `limit`).
    pub fn shrink(&mut self) {
        if self.buf.is_empty() && self.buf.capacity() > 2 * HEAD_READ {
            self.buf = BytesMut::new();
        }
    }

    /// Writes every byte of `bytes`.
    pub async fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.io.write_all(bytes).await?;
        self.io.flush().await
    }

    /// Reads once into the buffer, asking for about `want` bytes; `Ok(0)` at end of stream.
    pub fn poll_fill(&mut self, cx: &mut Context<'_>, want: usize) -> Poll<io::Result<usize>> {
        let want = want.min(self.limit).max(1024);
        if self.buf.capacity() - self.buf.len() < want / 4 {
            self.buf.reserve(want);
        }
        // `read_buf` keeps no state between polls: a fresh one per poll is the same future.
        pin!(self.io.read_buf(&mut self.buf)).poll(cx)
    }

    /// The next response head, reading as needed; `received` is set once any byte of a
    /// response has arrived (so a close before it is told apart from a close within it).
    pub fn poll_head(
        &mut self,
        cx: &mut Context<'_>,
        head_request: bool,
        received: &mut bool,
    ) -> Poll<Result<Parsed, ProtoError>> {
        loop {
            if !self.buf.is_empty() {
                *received = true;
                match response::parse(&mut self.buf, head_request)? {
                    Parsed::Partial if self.buf.len() >= self.limit => {
                        return Poll::Ready(Err(ProtoError::HeadTooLarge(self.limit)))
                    }
                    Parsed::Partial => {}
                    done => return Poll::Ready(Ok(done)),
                }
            }
            match std::task::ready!(self.poll_fill(cx, HEAD_READ)) {
                Ok(0) if *received => return Poll::Ready(Err(ProtoError::Truncated)),
                Ok(0) => return Poll::Ready(Err(ProtoError::Closed)),
                Ok(_) => {}
                Err(e) => return Poll::Ready(Err(e.into())),
            }
        }
    }

    /// The stream, pinned, for the uploader's writes.
    pub(super) fn io(&mut self) -> Pin<&mut S> {
        Pin::new(&mut self.io)
    }
}
