//! A request body on its way to the upstream, driven by the request's own task: the exchange
//! polls it while it waits for the response head, and the response body polls it while it is
//! read ([`super::Body`]), so an upstream that answers while it still reads (an echo) gets both
//! directions moving at once — without a task, a channel or a lock per request.
//!
//! The body comes from a [`Source`] (the app's HTTP/1 connection, decoded by the one framing
//! module, or an HTTP/2 stream) and goes out framed as the decision said: `Content-Length`
//! bytes as they are, or re-chunked by waypost (chunk extensions never travel), with the
//! allowed trailer fields after the last chunk.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::HeaderMap;
use tokio::io::AsyncWrite;

use crate::forward::h1::chunked::ChunkError;
use crate::forward::h1::framing::Framing;
use crate::forward::h1::write::{chunk_size, last_chunk};

/// Where a request body comes from.
pub trait Source {
    /// The next piece of the body: `Ok(None)` once it has ended. Registers `cx` to be woken
    /// when more may be ready (and when its own deadline passes).
    fn poll_piece(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Piece>, SourceError>>;
}

/// A body lent for one attempt: a request retried after a failed connect (nothing of its body
/// taken) lends it again.
impl<S: Source + ?Sized> Source for &mut S {
    fn poll_piece(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Piece>, SourceError>> {
        (**self).poll_piece(cx)
    }
}

/// A piece of a request body.
#[derive(Debug)]
pub enum Piece {
    /// Body bytes.
    Data(Bytes),
    /// The trailer fields that may travel (already filtered).
    Trailers(HeaderMap),
}

/// Why a request body could not be read from the app: never the upstream's fault.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The chunked coding was broken: 400 when no response byte went out yet.
    #[error(transparent)]
    Malformed(#[from] ChunkError),
    /// The app sent more than the length it declared (HTTP/2 streams).
    #[error("request body longer than its Content-Length")]
    TooLong,
    /// The app's connection ended in the middle of the body.
    #[error("the app's connection ended in the middle of the request body")]
    Truncated,
    /// No body bytes came within `client.body_timeout`: 408 when no response byte went out.
    #[error("no request body bytes within {0:?}")]
    Timeout(Duration),
    /// Reading from the app failed.
    #[error("reading the request body failed: {0}")]
    Io(#[source] io::Error),
}

/// How driving an upload failed.
#[derive(Debug)]
pub enum UploadError {
    /// The app's side.
    Source(SourceError),
    /// Writing to the upstream (it may have stopped reading, having answered already).
    Io(io::Error),
}

/// A request body being written to an upstream connection.
pub struct Upload<U> {
    source: U,
    /// [`Framing::Length`] or [`Framing::Chunked`].
    framing: Framing,
    /// For a length: bytes still to send.
    left: u64,
    /// The bytes being written now.
    out: Outbox,
    /// Trailer fields to send after the last chunk.
    trailers: Option<HeaderMap>,
    step: Step,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Moving pieces.
    Streaming,
    /// The last piece is in the outbox; then a flush.
    Finishing,
    /// Written whole and flushed.
    Done,
}

impl<U: Source> Upload<U> {
    /// An upload of `source`, framed as `framing` ([`Framing::Length`] with what is left of
    /// the length, or [`Framing::Chunked`]).
    pub fn new(source: U, framing: Framing) -> Self {
        Self {
            source,
            framing,
            left: match framing {
                Framing::Length(n) => n,
                _ => 0,
            },
            out: Outbox::default(),
            trailers: None,
            step: Step::Streaming,
        }
    }

    /// Whether the whole body has been written.
    pub fn is_done(&self) -> bool {
        self.step == Step::Done
    }

    /// Moves the body from the source to `io` as far as both allow. `Ready(Ok(()))` once the
    /// whole body is written; `Pending` while the source has nothing or the socket is full.
    pub fn poll_drive<S: AsyncWrite + ?Sized>(
        &mut self,
        mut io: Pin<&mut S>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), UploadError>> {
        loop {
            if !self.out.is_empty() {
                ready!(self.out.poll_write(io.as_mut(), cx)).map_err(UploadError::Io)?;
            }
            match self.step {
                Step::Done => return Poll::Ready(Ok(())),
                Step::Finishing => {
                    ready!(io.as_mut().poll_flush(cx)).map_err(UploadError::Io)?;
                    self.step = Step::Done;
                    return Poll::Ready(Ok(()));
                }
                Step::Streaming => {}
            }
            let piece = match self.source.poll_piece(cx) {
                Poll::Ready(piece) => piece.map_err(UploadError::Source)?,
                Poll::Pending => {
                    // About to wait for the app: what was written must be on its way.
                    ready!(io.as_mut().poll_flush(cx)).map_err(UploadError::Io)?;
                    return Poll::Pending;
                }
            };
            match piece {
                Some(Piece::Data(data)) if data.is_empty() => {}
                Some(Piece::Data(data)) => self.queue(data)?,
                Some(Piece::Trailers(t)) => self.trailers = Some(t),
                None => self.finish()?,
            }
        }
    }

    fn queue(&mut self, data: Bytes) -> Result<(), UploadError> {
        if self.framing == Framing::Chunked {
            let mut size = [0u8; 18];
            let line = chunk_size(&mut size, data.len());
            self.out.set(line, data, b"\r\n");
        } else {
            let len = data.len() as u64;
            if len > self.left {
                return Err(UploadError::Source(SourceError::TooLong));
            }
            self.left -= len;
            self.out.set(&[], data, &[]);
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<(), UploadError> {
        if self.framing == Framing::Chunked {
            let mut last = Vec::with_capacity(64);
            last_chunk(&mut last, self.trailers.as_ref());
            self.out.set(&[], Bytes::from(last), &[]);
        } else if self.left != 0 {
            return Err(UploadError::Source(SourceError::Truncated));
        }
        self.step = Step::Finishing;
        Ok(())
    }
}

/// Up to three slices on their way out, written with one vectored write where the stream
/// takes them: a chunk-size line, the data (a slice of the app's read buffer, not a copy), and
/// the CRLF after a chunk.
#[derive(Default)]
struct Outbox {
    head: [u8; 18],
    head_at: u8,
    head_len: u8,
    data: Bytes,
    tail: &'static [u8],
}

impl Outbox {
    fn is_empty(&self) -> bool {
        self.head_at == self.head_len && self.data.is_empty() && self.tail.is_empty()
    }

    fn set(&mut self, head: &[u8], data: Bytes, tail: &'static [u8]) {
        self.head[..head.len()].copy_from_slice(head);
        self.head_at = 0;
        self.head_len = head.len() as u8;
        self.data = data;
        self.tail = tail;
    }

    fn poll_write<S: AsyncWrite + ?Sized>(
        &mut self,
        mut io: Pin<&mut S>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        while !self.is_empty() {
            let head = &self.head[self.head_at as usize..self.head_len as usize];
            let slices = [
                IoSlice::new(head),
                IoSlice::new(&self.data),
                IoSlice::new(self.tail),
            ];
            let mut n = ready!(io.as_mut().poll_write_vectored(cx, &slices))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            let from_head = n.min(head.len());
            self.head_at += from_head as u8;
            n -= from_head;
            let from_data = n.min(self.data.len());
            let _ = self.data.split_to(from_data);
            n -= from_data;
            self.tail = &self.tail[n.min(self.tail.len())..];
        }
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A source handing out a fixed list of pieces.
    struct Pieces(std::collections::VecDeque<Piece>);

    impl Source for Pieces {
        fn poll_piece(&mut self, _: &mut Context<'_>) -> Poll<Result<Option<Piece>, SourceError>> {
            Poll::Ready(Ok(self.0.pop_front()))
        }
    }

    /// A writer taking at most `step` bytes per write.
    struct Trickle {
        out: Vec<u8>,
        step: usize,
    }

    impl AsyncWrite for Trickle {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let n = buf.len().min(self.step);
            self.out.extend_from_slice(&buf[..n]);
            Poll::Ready(Ok(n))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn upload(pieces: Vec<Piece>, framing: Framing, step: usize) -> Result<Vec<u8>, UploadError> {
        let mut up = Upload::new(Pieces(pieces.into()), framing);
        let mut w = Trickle {
            out: Vec::new(),
            step,
        };
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match up.poll_drive(Pin::new(&mut w), &mut cx) {
            Poll::Ready(Ok(())) => Ok(w.out),
            Poll::Ready(Err(e)) => Err(e),
            Poll::Pending => panic!("an in-memory upload never waits"),
        }
    }

    fn data(s: &'static str) -> Piece {
        Piece::Data(Bytes::from_static(s.as_bytes()))
    }

    #[test]
    fn rechunked_with_filtered_trailers_whatever_the_write_sizes() {
        let mut t = HeaderMap::new();
        t.insert("x-sum", "42".parse().unwrap());
        for step in [1, 2, 5, 1000] {
            let pieces = vec![
                data("hello"),
                data(""),
                data(" world!"),
                Piece::Trailers(t.clone()),
            ];
            let out = upload(pieces, Framing::Chunked, step).unwrap();
            assert_eq!(
                String::from_utf8(out).unwrap(),
                "5\r\nhello\r\n7\r\n world!\r\n0\r\nx-sum: 42\r\n\r\n",
                "writes of {step}"
            );
        }
    }

    #[test]
    fn a_length_is_sent_exactly() {
        let out = upload(vec![data("abc"), data("de")], Framing::Length(5), 2).unwrap();
        assert_eq!(out, b"abcde");
        assert!(matches!(
            upload(vec![data("abcdef")], Framing::Length(5), 9),
            Err(UploadError::Source(SourceError::TooLong))
        ));
        assert!(matches!(
            upload(vec![data("abc")], Framing::Length(5), 9),
            Err(UploadError::Source(SourceError::Truncated))
        ));
    }
}
