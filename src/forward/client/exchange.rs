//! One request on an upstream connection after its head went out: the response head
//! ([`Exchange`]) and the response body ([`Body`]), each driving the request body's upload
//! while it waits. The body's frames are slices of the connection's read buffer, never copies;
//! when the response has ended cleanly, the request body was sent whole and the connection is
//! reusable, the connection goes straight back to its pool — before the app has read the last
//! frame, when the whole body arrived with the head.

use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http::StatusCode;
use http_body::{Frame, SizeHint};
use tokio::time::Instant;

use super::conn::Conn;
use super::stream::Stream;
use super::upload::{Source, SourceError, Upload, UploadError};
use super::{Home, ProtoError, SendError};
use crate::forward::h1::chunked::{Decoded, Decoder};
use crate::forward::h1::framing::Framing;
use crate::forward::h1::response::{Head, Parsed, ResponseError};

/// What a response head read brought.
#[derive(Debug)]
pub enum First {
    /// `100 Continue`, to relay to an app that sent `Expect: 100-continue`.
    Continue,
    /// The final response head; its body follows ([`Exchange::into_body`]).
    Final(Head),
}

/// A request whose head went out, waiting for its response.
pub struct Exchange<U> {
    pub(super) conn: Conn,
    /// Boxed: requests without a body to stream (nearly all) move small values around.
    pub(super) upload: Option<Box<Upload<U>>>,
    /// Writing the request body failed (the upstream stopped reading): its response may still
    /// come, but the connection is done for after it.
    pub(super) upload_broken: bool,
    pub(super) home: Home,
    pub(super) head_request: bool,
    /// Interim `100 Continue` heads are reported ([`First::Continue`]) rather than skipped.
    pub(super) relay_continue: bool,
    /// The request asked to switch protocols: a `101` may answer it.
    pub(super) upgrade: bool,
    /// Some byte of a response arrived.
    pub(super) received: bool,
}

impl<U: Source> Exchange<U> {
    /// Reads the next response head, moving the request body meanwhile. Interim heads other
    /// than a relayed `100 Continue` are skipped.
    pub async fn head(&mut self) -> Result<First, SendError> {
        std::future::poll_fn(|cx| self.poll_head(cx)).await
    }

    fn poll_head(&mut self, cx: &mut Context<'_>) -> Poll<Result<First, SendError>> {
        loop {
            drive(
                &mut self.upload,
                &mut self.upload_broken,
                &mut self.conn,
                cx,
            )
            .map_err(SendError::Request)?;
            let parsed = ready!(self
                .conn
                .poll_head(cx, self.head_request, &mut self.received))
            .map_err(SendError::Upstream)?;
            match parsed {
                Parsed::Interim(StatusCode::CONTINUE) if self.relay_continue => {
                    return Poll::Ready(Ok(First::Continue))
                }
                Parsed::Interim(_) | Parsed::Partial => continue,
                Parsed::Final(head)
                    if head.status == StatusCode::SWITCHING_PROTOCOLS && !self.upgrade =>
                {
                    let e = ResponseError::Invalid(
                        "101 Switching Protocols to a request that asked for no upgrade",
                    );
                    return Poll::Ready(Err(SendError::Upstream(e.into())));
                }
                Parsed::Final(head) => return Poll::Ready(Ok(First::Final(head))),
            }
        }
    }

    /// The connection after a `101`: its stream, and the bytes of the new protocol that
    /// arrived with the head. It never goes back to the pool.
    pub fn into_upgraded(self) -> (Stream, bytes::BytesMut) {
        (self.conn.io, self.conn.buf)
    }

    /// The body of the response `head` just read, from this connection; `now`: when the head
    /// arrived (the connection's idle time starts there when the body came with it).
    pub fn into_body(self, head: &Head, now: Instant) -> Body<U> {
        let Exchange {
            mut conn,
            upload,
            upload_broken,
            home,
            ..
        } = self;
        let state = match head.framing {
            Framing::Empty | Framing::Length(0) => State::Done,
            Framing::Length(n) if conn.buf.len() as u64 >= n => {
                State::Buffered(conn.buf.split_to(n as usize).freeze())
            }
            Framing::Length(n) => State::Length(n),
            Framing::Chunked => State::Chunked(Decoder::new()),
            Framing::Close => State::Close,
        };
        let mut body = Body {
            state,
            conn: Some(conn),
            upload,
            upload_broken,
            home: (head.reusable && !upload_broken).then_some(home),
        };
        if matches!(body.state, State::Done | State::Buffered(_)) {
            body.release(now);
        }
        body
    }
}

/// Moves the request body on, if there is one still going. An error of the app's side stops
/// everything; a failed write to the upstream only stops the upload (the upstream may have
/// answered and stopped reading).
fn drive<U: Source>(
    upload: &mut Option<Box<Upload<U>>>,
    broken: &mut bool,
    conn: &mut Conn,
    cx: &mut Context<'_>,
) -> Result<(), SourceError> {
    let Some(up) = upload else { return Ok(()) };
    if up.is_done() || *broken {
        return Ok(());
    }
    match up.poll_drive(conn.io(), cx) {
        Poll::Ready(Err(UploadError::Source(e))) => Err(e),
        Poll::Ready(Err(UploadError::Io(e))) => {
            tracing::debug!(error = %e, "request body upload stopped: the upstream stopped reading");
            *broken = true;
            Ok(())
        }
        Poll::Ready(Ok(())) | Poll::Pending => Ok(()),
    }
}

/// Why a response body stopped short.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The upstream's side: the connection broke, or the body broke its framing.
    #[error(transparent)]
    Upstream(#[from] ProtoError),
    /// The app's side: its request body could not be read (see [`SourceError`]).
    #[error(transparent)]
    Request(#[from] SourceError),
}

/// A response body read from an upstream connection, and the request body still being sent.
pub struct Body<U> {
    state: State,
    conn: Option<Conn>,
    upload: Option<Box<Upload<U>>>,
    upload_broken: bool,
    /// Set while the connection may be reused once both bodies end.
    home: Option<Home>,
}

enum State {
    /// The whole body, already read (it came with the head).
    Buffered(Bytes),
    /// This many bytes still to read.
    Length(u64),
    /// Chunked coding, decoded by the one decoder.
    Chunked(Decoder),
    /// Until the upstream closes.
    Close,
    /// Nothing more.
    Done,
}

impl<U: Source> Body<U> {
    /// Whether the request body, if there was one, was written whole to the upstream. A
    /// response that ended before that closes the app's connection too (README, "HTTP/1
    /// policy").
    pub fn upload_finished(&self) -> bool {
        !self.upload_broken && self.upload.as_ref().is_none_or(|u| u.is_done())
    }

    /// Whether a request body is still being sent.
    pub fn uploading(&self) -> bool {
        self.conn.is_some() && !self.upload_finished()
    }

    /// The whole body, when it came with the head and nothing is left to do on the connection
    /// (no request body still going): the common small response, written without the frame
    /// loop. `None` otherwise, and the body is untouched.
    pub fn take_whole(&mut self) -> Option<Bytes> {
        if self.conn.is_some() || self.upload.is_some() {
            return None;
        }
        match &mut self.state {
            State::Buffered(data) => {
                let data = std::mem::take(data);
                self.state = State::Done;
                Some(data)
            }
            State::Done => Some(Bytes::new()),
            _ => None,
        }
    }

    /// Moves the request body on while the response waits to be written to the app; only the
    /// app's side can fail here.
    pub fn poll_upload(&mut self, cx: &mut Context<'_>) -> Result<(), SourceError> {
        match &mut self.conn {
            Some(conn) => drive(&mut self.upload, &mut self.upload_broken, conn, cx),
            None => Ok(()),
        }
    }

    /// The response has been read to its end (at `now`): the connection goes home if both
    /// bodies ended cleanly and it is reusable; otherwise it closes here (and the upload stops).
    fn release(&mut self, now: Instant) {
        let conn = self.conn.take();
        if !self.upload_finished() {
            self.upload = None;
            self.upload_broken = true;
            return;
        }
        let (Some(conn), Some(home)) = (conn, self.home.take()) else {
            return;
        };
        // Bytes after the end of the response: the connection is out of step.
        if conn.buf.is_empty() {
            home.recycle(conn, now);
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
                            self.release(Instant::now());
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
                State::Chunked(decoder) => {
                    let mut decoder = *decoder;
                    let conn = self.conn.as_mut().ok_or(ProtoError::Truncated)?;
                    let limit = conn.limit;
                    let decoded = decoder.decode(&mut conn.buf, limit)?;
                    self.state = State::Chunked(decoder);
                    match decoded {
                        Decoded::More => {
                            ready!(self.poll_more(cx, false))?;
                        }
                        Decoded::Data(data) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                        Decoded::End(trailers) => {
                            self.state = State::Done;
                            self.release(Instant::now());
                            return Poll::Ready(trailers.map(|t| Ok(Frame::trailers(t))));
                        }
                    }
                }
            }
        }
    }
}

impl<U: Source + Unpin> http_body::Body for Body<U> {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        if let Err(e) = this.poll_upload(cx) {
            this.state = State::Done;
            this.conn = None;
            return Poll::Ready(Some(Err(e.into())));
        }
        let polled = this.poll_next(cx);
        if let Poll::Ready(Some(Err(_))) = &polled {
            this.state = State::Done;
            this.conn = None;
        }
        polled.map(|p| p.map(|r| r.map_err(BodyError::Upstream)))
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
