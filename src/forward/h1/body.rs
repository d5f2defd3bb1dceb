//! The response body as it streams from an upstream connection to the app: frames are slices
//! of the connection's read buffer, never copies. When the body has ended cleanly on a reusable
//! connection, the connection goes straight back to its pool — before the app has even read the
//! last frame, when the whole body arrived with the head.

use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::HeaderMap;
use http_body::{Frame, SizeHint};

use super::{Conn, Framing, ProtoError};

/// Longest chunk-size line accepted (size, extensions and CRLF).
const MAX_CHUNK_LINE: usize = 4096;
/// Most trailer fields accepted after the last chunk.
const MAX_TRAILERS: usize = 32;

/// Where a connection goes when a response has ended cleanly: its pool (a test's stand-in in
/// unit tests). Generic rather than boxed, so a response costs no allocation for it.
pub trait Recycle: Send + Unpin + 'static {
    /// Takes back `conn`, whose last response has been read to the end.
    fn recycle(self, conn: Conn);
}

/// A response body read from an upstream connection; `R` takes the connection back.
pub struct Body<R> {
    state: State,
    conn: Option<Conn>,
    /// Set while the connection may be reused once the body ends.
    home: Option<R>,
}

enum State {
    /// The whole body, already read (it came with the head); the connection is back home.
    Buffered(Bytes),
    /// This many bytes still to read.
    Length(u64),
    /// Chunked coding, at this step.
    Chunked(Step),
    /// Until the upstream closes.
    Close,
    /// Nothing more.
    Done,
}

/// Where the chunked decoder is.
#[derive(Clone, Copy)]
enum Step {
    /// Expecting a chunk-size line.
    Size,
    /// Inside a chunk's data: this many bytes left.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer fields, then the final CRLF.
    Trailers,
}

impl<R: Recycle> Body<R> {
    /// The body of a response whose head was just read from `conn`. `home` takes the
    /// connection back once the body has ended, when `reusable`.
    pub fn new(mut conn: Conn, framing: Framing, reusable: bool, home: R) -> Self {
        let state = match framing {
            Framing::Empty | Framing::Length(0) => State::Done,
            Framing::Length(n) if conn.buf.len() as u64 >= n => {
                State::Buffered(conn.buf.split_to(n as usize).freeze())
            }
            Framing::Length(n) => State::Length(n),
            Framing::Chunked => State::Chunked(Step::Size),
            Framing::Close => State::Close,
        };
        let mut body = Body {
            state,
            conn: Some(conn),
            home: reusable.then_some(home),
        };
        if matches!(body.state, State::Done | State::Buffered(_)) {
            body.release();
        }
        body
    }

    /// The body has been read to its end: the connection goes home if it can be reused.
    fn release(&mut self) {
        let (Some(conn), Some(home)) = (self.conn.take(), self.home.take()) else {
            return;
        };
        if !conn.buf.is_empty() {
            // Bytes after the end of the response: the connection is out of step.
            return;
        }
        if let Some(conn) = conn.reclaim() {
            home.recycle(conn);
        }
    }

    fn conn(&mut self) -> Result<&mut Conn, ProtoError> {
        self.conn.as_mut().ok_or(ProtoError::Truncated)
    }

    /// Reads more from the connection; an end of stream is an error unless `eof_ok`.
    fn poll_more(&mut self, cx: &mut Context<'_>, eof_ok: bool) -> Poll<Result<bool, ProtoError>> {
        let conn = self.conn()?;
        let limit = conn.limit;
        match ready!(conn.poll_fill(cx, limit)) {
            Ok(0) if eof_ok => Poll::Ready(Ok(false)),
            Ok(0) => Poll::Ready(Err(ProtoError::Truncated)),
            Ok(_) => Poll::Ready(Ok(true)),
            Err(e) => Poll::Ready(Err(e.into())),
        }
    }

    fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ProtoError>>> {
        loop {
            match &mut self.state {
                State::Done => return Poll::Ready(None),
                State::Buffered(data) => {
                    let data = std::mem::take(data);
                    self.state = State::Done;
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                State::Length(left) => {
                    let left = *left;
                    let buf = &mut self.conn()?.buf;
                    if !buf.is_empty() {
                        let take = (buf.len() as u64).min(left);
                        let data = buf.split_to(take as usize).freeze();
                        if take == left {
                            self.state = State::Done;
                            self.release();
                        } else {
                            self.state = State::Length(left - take);
                        }
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    ready!(self.poll_more(cx, false))?;
                }
                State::Close => {
                    let buf = &mut self.conn()?.buf;
                    if !buf.is_empty() {
                        let data = buf.split().freeze();
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    if !ready!(self.poll_more(cx, true))? {
                        self.state = State::Done;
                        self.conn = None;
                    }
                }
                State::Chunked(step) => {
                    let step = *step;
                    let conn = self.conn()?;
                    let limit = conn.limit;
                    match decode(step, &mut conn.buf, limit)? {
                        Decoded::More(next) => {
                            self.state = State::Chunked(next);
                            ready!(self.poll_more(cx, false))?;
                        }
                        Decoded::Next(next) => self.state = State::Chunked(next),
                        Decoded::Data(data, next) => {
                            self.state = State::Chunked(next);
                            return Poll::Ready(Some(Ok(Frame::data(data))));
                        }
                        Decoded::End(trailers) => {
                            self.state = State::Done;
                            self.release();
                            if let Some(t) = trailers {
                                return Poll::Ready(Some(Ok(Frame::trailers(t))));
                            }
                            return Poll::Ready(None);
                        }
                    }
                }
            }
        }
    }
}

impl<R: Recycle> http_body::Body for Body<R> {
    type Data = Bytes;
    type Error = ProtoError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ProtoError>>> {
        let this = self.get_mut();
        let polled = this.poll_next(cx);
        if let Poll::Ready(Some(Err(_))) = &polled {
            this.state = State::Done;
            this.conn = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.state, State::Done)
    }

    fn size_hint(&self) -> SizeHint {
        match &self.state {
            State::Done => SizeHint::with_exact(0),
            State::Buffered(b) => SizeHint::with_exact(b.len() as u64),
            State::Length(n) => SizeHint::with_exact(*n),
            State::Chunked(_) | State::Close => SizeHint::default(),
        }
    }
}

/// One step of the chunked decoder.
enum Decoded {
    /// Need more bytes to go on from this step.
    More(Step),
    /// Moved on to this step; go on without reading.
    Next(Step),
    /// Chunk data, then this step.
    Data(Bytes, Step),
    /// The last chunk and its trailers (if any) have been consumed.
    End(Option<HeaderMap>),
}

/// Decodes chunked coding (RFC 9112 §7.1) from the front of `buf`, consuming what it used.
fn decode(step: Step, buf: &mut BytesMut, limit: usize) -> Result<Decoded, ProtoError> {
    match step {
        Step::Size => {
            let Some(lf) = buf.iter().position(|&b| b == b'\n') else {
                if buf.len() > MAX_CHUNK_LINE {
                    return Err(ProtoError::Invalid("chunk-size line too long"));
                }
                return Ok(Decoded::More(step));
            };
            let size = chunk_size(&buf[..lf])?;
            buf.advance(lf + 1);
            Ok(Decoded::Next(match size {
                0 => Step::Trailers,
                n => Step::Data(n),
            }))
        }
        Step::Data(left) => {
            if buf.is_empty() {
                return Ok(Decoded::More(step));
            }
            let take = (buf.len() as u64).min(left);
            let data = buf.split_to(take as usize).freeze();
            let next = match left - take {
                0 => Step::DataEnd,
                n => Step::Data(n),
            };
            Ok(Decoded::Data(data, next))
        }
        Step::DataEnd => match buf.get(..2) {
            None => Ok(Decoded::More(step)),
            Some(b"\r\n") => {
                buf.advance(2);
                Ok(Decoded::Next(Step::Size))
            }
            Some(_) => Err(ProtoError::Invalid("chunk data not followed by CRLF")),
        },
        Step::Trailers => {
            if buf.starts_with(b"\r\n") {
                buf.advance(2);
                return Ok(Decoded::End(None));
            }
            let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                if buf.len() >= limit {
                    return Err(ProtoError::Invalid("trailer section too large"));
                }
                return Ok(Decoded::More(step));
            };
            let mut slots = [httparse::EMPTY_HEADER; MAX_TRAILERS];
            let fields = match httparse::parse_headers(&buf[..end + 4], &mut slots) {
                Ok(httparse::Status::Complete((_, fields))) => fields,
                Ok(httparse::Status::Partial) | Err(_) => {
                    return Err(ProtoError::Invalid("malformed trailer section"))
                }
            };
            let mut trailers = HeaderMap::with_capacity(fields.len());
            for f in fields.iter() {
                let (Ok(name), Ok(value)) = (
                    http::HeaderName::from_bytes(f.name.as_bytes()),
                    http::HeaderValue::from_bytes(f.value),
                ) else {
                    return Err(ProtoError::Invalid("malformed trailer field"));
                };
                trailers.append(name, value);
            }
            buf.advance(end + 4);
            Ok(Decoded::End(Some(trailers)))
        }
    }
}

/// The size in a chunk-size line (without its LF): hex digits, then optional extensions
/// (`;name=value`, ignored) after optional whitespace, then CR.
fn chunk_size(line: &[u8]) -> Result<u64, ProtoError> {
    let line = line
        .strip_suffix(b"\r")
        .ok_or(ProtoError::Invalid("chunk-size line not ended by CRLF"))?;
    let digits = line
        .iter()
        .position(|b| !b.is_ascii_hexdigit())
        .unwrap_or(line.len());
    if digits == 0 || digits > 15 {
        return Err(ProtoError::Invalid("bad chunk size"));
    }
    let rest = line[digits..].trim_ascii_start();
    if !rest.is_empty() && rest[0] != b';' {
        return Err(ProtoError::Invalid("bad chunk size"));
    }
    let mut n = 0u64;
    for &d in &line[..digits] {
        let v = match d {
            b'0'..=b'9' => d - b'0',
            b'a'..=b'f' => d - b'a' + 10,
            _ => d - b'A' + 10,
        };
        n = n * 16 + u64::from(v);
    }
    Ok(n)
}
