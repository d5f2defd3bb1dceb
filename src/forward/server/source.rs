//! An app's HTTP/1 request body as the upstream client reads it ([`Source`]): framed by the
//! request's one framing decision, decoded by the one chunked decoder, read from the app
//! connection's own buffer and socket, and bounded in time by `client.body_timeout`. Bytes
//! after the body (a pipelined request) stay in the buffer for the connection's next turn.

use std::future::Future as _;
use std::pin::pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::time::Instant;

use super::timer::Deadline;
use crate::forward::client::{Piece, Source, SourceError};
use crate::forward::h1::chunked::{ChunkError, Decoded, Decoder};
use crate::forward::h1::framing::Framing;
use crate::forward::h1::write::{chunk_size, last_chunk};

/// The request body of an app connection.
pub(super) struct AppBody<'a, R> {
    rd: R,
    /// The connection's read buffer: the body's first bytes are there already.
    buf: &'a mut BytesMut,
    state: State,
    /// The connection's timer, for `client.body_timeout`.
    timer: &'a mut Deadline,
    timeout: Duration,
    /// When the current wait for bytes gives up (set when a wait starts).
    until: Option<Instant>,
    /// How much one read asks for (`upstream.buffer_size`), and the trailer section's bound.
    read_size: usize,
}

enum State {
    /// This many bytes left.
    Length(u64),
    /// Chunked coding.
    Chunked(Decoder),
    /// The body has ended.
    Done,
}

impl<'a, R: AsyncRead + Unpin> AppBody<'a, R> {
    /// The body of a request framed as `framing`, its bytes so far at the front of `buf`.
    pub fn new(
        rd: R,
        buf: &'a mut BytesMut,
        framing: Framing,
        timer: &'a mut Deadline,
        timeout: Duration,
        read_size: usize,
    ) -> Self {
        let state = match framing {
            Framing::Length(n) if n > 0 => State::Length(n),
            Framing::Chunked => State::Chunked(Decoder::new()),
            _ => State::Done,
        };
        Self {
            rd,
            buf,
            state,
            timer,
            timeout,
            until: None,
            read_size,
        }
    }

    /// Moves the body bytes already read into `out`, behind the request head, framed for the
    /// upstream (a length's bytes as they are; chunks re-chunked, extensions dropped). `true`
    /// when the whole body was there: then it goes out with the head, in one write. A broken
    /// chunked coding is found here, before anything is sent upstream.
    pub fn prefill(&mut self, out: &mut Vec<u8>) -> Result<bool, SourceError> {
        loop {
            match &mut self.state {
                State::Done => return Ok(true),
                State::Length(left) => {
                    let take = (self.buf.len() as u64).min(*left) as usize;
                    out.extend_from_slice(&self.buf[..take]);
                    self.buf.advance(take);
                    *left -= take as u64;
                    if *left > 0 {
                        return Ok(false);
                    }
                    self.state = State::Done;
                }
                State::Chunked(decoder) => match decoder.decode(self.buf, self.read_size)? {
                    Decoded::More => return Ok(false),
                    Decoded::Data(data) => {
                        let mut size = [0u8; 18];
                        out.extend_from_slice(chunk_size(&mut size, data.len()));
                        out.extend_from_slice(&data);
                        out.extend_from_slice(b"\r\n");
                    }
                    Decoded::End(trailers) => {
                        last_chunk(out, trailers.as_ref());
                        self.state = State::Done;
                    }
                },
            }
        }
    }

    /// Reads the body from the app into `out` (as [`AppBody::prefill`] does) until it is
    /// whole or `out` would grow past `limit` bytes, so a request can be sent more than once.
    /// `true` when the body is whole in `out`; otherwise what was read goes out with the head
    /// and the rest streams.
    pub async fn buffer(&mut self, out: &mut Vec<u8>, limit: usize) -> Result<bool, SourceError> {
        loop {
            if self.prefill(out)? {
                return Ok(true);
            }
            let over = match self.state {
                State::Length(left) => out.len() as u64 + left > limit as u64,
                _ => out.len() >= limit,
            };
            if over {
                return Ok(false);
            }
            std::future::poll_fn(|cx| self.poll_read(cx)).await?;
        }
    }

    /// How what is left of the body is framed: the rest of a length, or chunks.
    pub fn rest(&self) -> Framing {
        match self.state {
            State::Length(left) => Framing::Length(left),
            State::Chunked(_) => Framing::Chunked,
            State::Done => Framing::Empty,
        }
    }

    /// Reads more of the body into the buffer: `Ready(Ok(()))` when bytes came.
    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), SourceError>> {
        if self.buf.capacity() - self.buf.len() < self.read_size / 4 {
            self.buf.reserve(self.read_size);
        }
        // `read_buf` keeps no state between polls: a fresh one per poll is the same future.
        match pin!(self.rd.read_buf(self.buf)).poll(cx) {
            // A chunked body cut short is a malformed one (a 400, if the app still reads: it
            // may only have shut down its sending side); a length cut short just ends both
            // connections (README, "HTTP/1 policy").
            Poll::Ready(Ok(0)) if matches!(self.state, State::Chunked(_)) => Poll::Ready(Err(
                SourceError::Malformed(ChunkError("the body ended before its last chunk")),
            )),
            Poll::Ready(Ok(0)) => Poll::Ready(Err(SourceError::Truncated)),
            Poll::Ready(Ok(_)) => {
                self.until = None;
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(SourceError::Io(e))),
            Poll::Pending => {
                let at = *self
                    .until
                    .get_or_insert_with(|| Instant::now() + self.timeout);
                match self.timer.poll_at(cx, at) {
                    Poll::Ready(()) => Poll::Ready(Err(SourceError::Timeout(self.timeout))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl<R: AsyncRead + Unpin + Send> Source for AppBody<'_, R> {
    fn poll_piece(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Piece>, SourceError>> {
        loop {
            match &mut self.state {
                State::Done => return Poll::Ready(Ok(None)),
                State::Length(left) => {
                    if !self.buf.is_empty() {
                        let take = (self.buf.len() as u64).min(*left);
                        *left -= take;
                        if *left == 0 {
                            self.state = State::Done;
                        }
                        let data = self.buf.split_to(take as usize).freeze();
                        return Poll::Ready(Ok(Some(Piece::Data(data))));
                    }
                }
                State::Chunked(decoder) => match decoder.decode(self.buf, self.read_size)? {
                    Decoded::More => {}
                    Decoded::Data(data) => return Poll::Ready(Ok(Some(Piece::Data(data)))),
                    Decoded::End(trailers) => {
                        self.state = State::Done;
                        if let Some(t) = trailers {
                            return Poll::Ready(Ok(Some(Piece::Trailers(t))));
                        }
                        return Poll::Ready(Ok(None));
                    }
                },
            }
            std::task::ready!(self.poll_read(cx))?;
        }
    }
}
