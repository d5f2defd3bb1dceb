//! The HTTP/1 side of an app connection: one loop serves every HTTP/1.x request on it — heads
//! read under the idle and header deadlines, bodies streamed both ways, interim `100 Continue`
//! relayed, responses written back in the app's own version (by [`super::respond`]). Request
//! heads are parsed and framed by the one framing module ([`h1::request`]); responses are
//! written from the response framing decision ([`h1::response`]). The walk from head to
//! response is `forward.rs`'s.
//!
//! Memory follows traffic: the read buffer and the two head buffers are taken from a small
//! per-thread stock when the first bytes of a request arrive and given back when the connection
//! goes idle with nothing buffered, so an idle connection holds no buffer at all.

use std::cell::RefCell;
use std::future::Future as _;
use std::io;
use std::pin::pin;
use std::task::Poll;

use bytes::BytesMut;
use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use super::io::AppIo;
use super::respond::{respond, write_all, Stopped, SMALL_BODY};
use super::source::AppBody;
use super::timer::{Deadline, Drain};
use super::tunnel;
use super::Settings;
use crate::forward::client::{First, Outgoing, Pool, ProtoError, SendError, SourceError};
use crate::forward::h1::framing::Framing;
use crate::forward::h1::request::{self, Parsed, Request, RequestError};
use crate::forward::h1::response::{self, Reply};
use crate::forward::retry::{Attempted, Plan};
use crate::forward::LastRoute;

/// What a read asks for while a head is expected.
const READ: usize = 8 * 1024;
/// Buffer sets kept per thread for connections that become busy (64 × ~9 KiB at most).
const SPARE: usize = 64;
/// The longest a closing connection reads (and drops) what the app still sends.
const LINGER: std::time::Duration = std::time::Duration::from_secs(2);

/// Why the head loop stopped.
pub(super) enum Stop {
    /// Close without a word: nothing of a request arrived (idle, drained, end of stream).
    Quiet,
    /// Answer with this error, then close.
    Reject(RequestError),
    /// The head did not complete within `client.header_timeout`: 408, then close.
    HeadTimeout,
}

/// How an exchange failed; `forward.rs` turns each into an answer (or a close).
pub(crate) enum Failure {
    /// No response from the upstream; `body_done`: the app's body was read whole.
    Send(SendError, bool),
    /// No response head within the service's timeout.
    Timeout(bool),
    /// The app's body could not be read, and no response byte went out.
    Request(SourceError),
    /// The upstream's body broke before any response byte went to the app.
    Upstream(ProtoError),
    /// Nothing can be said to the app any more: close.
    Closed,
}

/// A finished exchange.
pub(crate) struct Exchanged {
    /// The response status.
    pub status: StatusCode,
    /// When the response head arrived.
    pub head_at: Instant,
    /// When the exchange ended, when known without asking the clock: a response written
    /// whole in the same turn as its head ended at `head_at`.
    pub ended: Option<Instant>,
    /// The connection closes now.
    pub close: bool,
}

/// The buffers of a busy connection.
#[derive(Default)]
struct Buffers {
    /// Bytes read and not yet consumed: the next request head(s), or body bytes.
    read: BytesMut,
    /// The request head for the upstream.
    head: Vec<u8>,
    /// The response head being written.
    out: Vec<u8>,
}

thread_local! {
    /// Buffer sets given back by connections gone idle, for the next to become busy.
    static STOCK: RefCell<Vec<Buffers>> = const { RefCell::new(Vec::new()) };
}

impl Buffers {
    fn take() -> Self {
        STOCK
            .with(|s| s.borrow_mut().pop())
            .unwrap_or_else(|| Buffers {
                read: BytesMut::with_capacity(READ),
                head: Vec::with_capacity(512),
                out: Vec::with_capacity(512),
            })
    }

    /// Back to the stock if they are of the usual size; freed otherwise.
    fn give(mut self) {
        if self.read.capacity() == 0 {
            return;
        }
        // A consumed front is reclaimed by the next read's `reserve` (the buffer is empty).
        self.read.clear();
        if self.read.capacity() > 2 * READ
            || self.head.capacity() > 4096
            || self.out.capacity() > 4096
        {
            return;
        }
        STOCK.with(|s| {
            let mut s = s.borrow_mut();
            if s.len() < SPARE {
                s.push(self);
            }
        });
    }
}

/// An app connection served over HTTP/1, over TCP or TLS.
pub(crate) struct Http1<S = tokio::net::TcpStream> {
    stream: S,
    bufs: Buffers,
    /// Header, idle and body waits.
    timer: Deadline,
    /// The upstream response timeout.
    response: Deadline,
    /// The service the last request named (see [`LastRoute`]).
    pub(crate) last: LastRoute,
    /// When the last exchange ended, when known without asking the clock.
    pub(crate) idle_since: Option<Instant>,
}

impl<S: AppIo> Http1<S> {
    /// A connection over `stream`; no buffer is taken until bytes arrive.
    pub(super) fn new(stream: S, timer: Deadline) -> Self {
        Self {
            stream,
            bufs: Buffers::default(),
            timer,
            response: Deadline::default(),
            last: LastRoute::default(),
            idle_since: None,
        }
    }

    /// The upstream head being built, and the route memo (routing reads the `Host` in it).
    pub fn head_and_route(&mut self) -> (&mut Vec<u8>, &mut LastRoute) {
        (&mut self.bufs.head, &mut self.last)
    }

    /// Reads and parses the next request head. `first`: the deadline of a connection's first
    /// request (from accept); later requests may idle for `client.idle_timeout` and then have
    /// `client.header_timeout` from their first byte, counted from when the last exchange
    /// ended.
    pub(super) async fn read_head(
        &mut self,
        settings: &Settings,
        first: Option<Instant>,
        drain: &mut Drain,
    ) -> Result<Request, Stop> {
        let idle_until = match first {
            Some(at) => at,
            None => self.idle_since.take().unwrap_or_else(Instant::now) + settings.idle_timeout,
        };
        let mut head_until = first;
        let mut parse = true;
        loop {
            if !self.bufs.read.is_empty() {
                if parse {
                    let buf = &self.bufs.read;
                    let known = self.last.host();
                    match request::parse(buf, settings.limits, &mut self.bufs.head, known) {
                        Ok(Parsed::Complete(req)) => return Ok(req),
                        Ok(Parsed::Partial) => {}
                        Err(e) => return Err(Stop::Reject(e)),
                    }
                }
                head_until.get_or_insert_with(|| Instant::now() + settings.header_timeout);
            }
            let idle = self.bufs.read.is_empty();
            if idle {
                // Nothing buffered: the buffers go back until bytes arrive again.
                std::mem::take(&mut self.bufs).give();
            }
            let at = if idle {
                idle_until
            } else {
                head_until.unwrap_or(idle_until)
            };
            let before = self.bufs.read.len();
            let read = {
                let (stream, timer, bufs) = (&mut self.stream, &mut self.timer, &mut self.bufs);
                std::future::poll_fn(|cx| {
                    // Buffers are taken only once the socket is readable.
                    if bufs.read.capacity() == 0 {
                        match AppIo::poll_read_ready(&*stream, cx) {
                            Poll::Ready(Ok(())) => *bufs = Buffers::take(),
                            Poll::Ready(Err(e)) => return Poll::Ready(Some(Err(e))),
                            Poll::Pending => {
                                return waited(cx, timer, at, idle.then_some(&mut *drain))
                            }
                        }
                    }
                    let read = &mut bufs.read;
                    if read.capacity() - read.len() < READ / 4 {
                        read.reserve(READ);
                    }
                    // `read_buf` keeps no state between polls: a fresh one per poll is the same
                    // future. A short read clears the socket's readiness (no second syscall).
                    match pin!(stream.read_buf(read)).poll(cx) {
                        Poll::Ready(r) => Poll::Ready(Some(r)),
                        Poll::Pending => {
                            if read.is_empty() {
                                std::mem::take(bufs).give();
                            }
                            waited(cx, timer, at, idle.then_some(&mut *drain))
                        }
                    }
                })
                .await
            };
            match read {
                None if idle => return Err(Stop::Quiet),
                None => return Err(Stop::HeadTimeout),
                Some(Ok(0)) | Some(Err(_)) => return Err(Stop::Quiet),
                Some(Ok(_)) => {
                    // The first bytes of a head are parsed at once; after that, a head can only
                    // have completed if a line did (and one at the size limit is parsed to be
                    // refused), which spares re-parsing a slowly sent head at every read.
                    let read = &self.bufs.read;
                    parse = before == 0
                        || read[before..].contains(&b'\n')
                        || read.len() >= settings.limits.max_head_size;
                }
            }
        }
    }

    /// Takes `len` bytes (a head, or a bodiless request's head) off the read buffer.
    pub fn consume(&mut self, len: usize) {
        bytes::Buf::advance(&mut self.bufs.read, len);
    }

    /// Skips the body of `req` when it is already whole in the buffer (a request answered
    /// without being forwarded); `false` when it is not, or is malformed: the connection must
    /// then close after the answer, as the body's bytes cannot be told from the next request.
    pub fn skip_body(&mut self, req: &Request) -> bool {
        match req.framing {
            Framing::Empty => true,
            Framing::Length(n) if self.bufs.read.len() as u64 >= n => {
                bytes::Buf::advance(&mut self.bufs.read, n as usize);
                true
            }
            Framing::Chunked => {
                let mut probe = self.bufs.read.clone();
                let mut decoder = crate::forward::h1::chunked::Decoder::new();
                loop {
                    match decoder.decode(&mut probe, READ) {
                        Ok(crate::forward::h1::chunked::Decoded::Data(_)) => {}
                        Ok(crate::forward::h1::chunked::Decoded::End(_)) => {
                            self.bufs.read = probe;
                            return true;
                        }
                        _ => return false,
                    }
                }
            }
            _ => false,
        }
    }

    /// Writes a response waypost generated; the connection closes after it when `close`.
    pub async fn answer(
        &mut self,
        resp: http::Response<bytes::Bytes>,
        http10: bool,
        close: bool,
    ) -> io::Result<()> {
        let out = &mut self.bufs.out;
        let reply = Reply { close, http10 };
        response::encode_own(out, resp.status(), resp.headers(), resp.body().len(), reply);
        write_all(&mut self.stream, &mut [out, resp.body()]).await
    }

    /// Closes the connection after a last response: our side first, then what the app still
    /// sends (the rest of a body the upstream did not wait for, a pipelined request) is read
    /// and dropped until the app closes too, for at most [`LINGER`]. Closing with unread bytes
    /// would send a reset, which can destroy the response before the app reads it (RFC 9112
    /// §9.6).
    pub async fn close(mut self) {
        if self.stream.shutdown().await.is_err() {
            return;
        }
        let until = Instant::now() + LINGER;
        // On the heap: on the stack it would sit in every connection's future, closing or not.
        let mut sink = vec![0u8; 16 * 1024];
        while let Ok(Ok(1..)) = tokio::time::timeout_at(
            until,
            tokio::io::AsyncReadExt::read(&mut self.stream, &mut sink),
        )
        .await
        {}
    }

    /// Sends `req` (its head finished in the head buffer, its body after it in the read
    /// buffer and on the socket) to the instances `plan` names, attempt after attempt, and
    /// writes the last attempt's response to the app. A request that may be retried has its
    /// body read first, up to `plan.buffer()`, so it can be sent again; a response that is
    /// retried is dropped with its connection, never written.
    pub async fn exchange(
        &mut self,
        req: &Request,
        pool: &Pool,
        plan: &mut impl Plan,
        settings: &Settings,
    ) -> Result<Exchanged, Failure> {
        let Http1 {
            stream,
            bufs,
            timer,
            response,
            ..
        } = self;
        let Buffers { read, head, out } = bufs;
        let (rd, mut wr) = AppIo::split(&mut *stream);
        let mut source = AppBody::new(
            rd,
            read,
            req.framing,
            timer,
            settings.body_timeout,
            settings.buffer_size,
        );
        let mut whole = source.prefill(head).map_err(Failure::Request)?;
        // Only a body that could be replayed is worth holding back (never one the app sends
        // only after a `100 Continue`): a bodiless GET never comes here.
        let limit = plan.buffer();
        if !whole && limit > 0 && req.is_idempotent() && !req.expect_continue {
            let limit = head.len() + limit;
            whole = source.buffer(head, limit).await.map_err(Failure::Request)?;
        }
        let outgoing = Outgoing {
            head,
            framing: source.rest(),
            head_request: req.is_head(),
            replayable: whole && req.is_idempotent(),
            relay_continue: req.expect_continue,
            upgrade: req.upgrade,
        };
        let (ex, head, addr) = loop {
            let (addr, until) = plan.target();
            let sent = {
                let wr = &mut wr;
                let body = (!whole).then_some(&mut source);
                let send = async {
                    let (mut ex, mut first) =
                        pool.send(addr, &outgoing, body).await.map_err(Some)?;
                    loop {
                        match first {
                            First::Continue => {
                                write_all(wr, &mut [b"HTTP/1.1 100 Continue\r\n\r\n"])
                                    .await
                                    .map_err(|_| None)?;
                                first = ex.head().await.map_err(Some)?;
                            }
                            First::Final(head) => return Ok((ex, head)),
                        }
                    }
                };
                response.within(until, pin!(send)).await
            };
            match sent {
                None if plan.again(Attempted::Timeout, whole) => continue,
                None => return Err(Failure::Timeout(whole)),
                Some(Err(None)) => return Err(Failure::Closed),
                Some(Err(Some(SendError::Request(e)))) => return Err(Failure::Request(e)),
                Some(Err(Some(e))) => {
                    if plan.again(Attempted::of(&e), whole) {
                        continue;
                    }
                    return Err(Failure::Send(e, whole));
                }
                Some(Ok((ex, head))) => {
                    if head.status.is_server_error()
                        && plan.again(Attempted::Status(head.status.as_u16()), whole)
                    {
                        continue;
                    }
                    break (ex, head, addr);
                }
            }
        };
        let head_at = Instant::now();
        let status = head.status;
        if status == StatusCode::SWITCHING_PROTOCOLS {
            // Only ever an answer to an upgrade request (the exchange refuses any other).
            response::encode(out, &head, Reply::default());
            drop(head);
            let (mut up, up_early) = ex.into_upgraded();
            let written = write_all(&mut wr, &mut [out]).await;
            // Both halves of the app stream let go of it before the tunnel takes it whole.
            drop(wr);
            drop(source);
            if written.is_ok() {
                let app_early = read.split();
                let idle = settings.idle_timeout;
                let joined = tunnel::join(
                    stream,
                    &app_early,
                    &mut up,
                    &up_early,
                    idle,
                    &settings.tunnels,
                )
                .await;
                if let Err(e) = joined {
                    tracing::debug!(upstream = %addr, error = %e, "upgraded connection ended");
                }
            }
            return Ok(Exchanged {
                status,
                head_at,
                ended: None,
                close: true,
            });
        }
        let mut body = ex.into_body(&head, head_at);
        // A request body not sent whole when the response starts (the upstream answered
        // early) leaves bytes that cannot be told from a request: the connection closes after
        // this response, and says so.
        let close = req.close || !body.upload_finished();
        let framing = response::encode(
            out,
            &head,
            Reply {
                close,
                http10: req.http10,
            },
        );
        drop(head);
        // The usual small response came whole with its head: one write, no frame loop.
        let whole = match framing {
            Framing::Length(_) | Framing::Empty => body.take_whole(),
            _ => None,
        };
        if let Some(data) = whole {
            let written = if data.len() <= SMALL_BODY {
                out.extend_from_slice(&data);
                write_all(&mut wr, &mut [out]).await
            } else {
                write_all(&mut wr, &mut [out, &data]).await
            };
            return Ok(Exchanged {
                status,
                head_at,
                ended: Some(head_at),
                close: written.is_err() || close,
            });
        }
        let trailers = req.trailers && framing == Framing::Chunked;
        let written = respond(&mut wr, out, &mut body, framing, trailers).await;
        let close = match written {
            Ok(()) => close || framing == Framing::Close || !body.upload_finished(),
            Err(Stopped::Request(e, false)) => return Err(Failure::Request(e)),
            Err(Stopped::Upstream(e, false)) => return Err(Failure::Upstream(e)),
            Err(_) => true,
        };
        Ok(Exchanged {
            status,
            head_at,
            ended: None,
            close,
        })
    }
}

/// The end of a wait for bytes: `Ready(None)` once `at` passed or the drain fired (when one is
/// given: only idle connections close on drain; a head in progress finishes), else pending.
fn waited(
    cx: &mut std::task::Context<'_>,
    timer: &mut Deadline,
    at: Instant,
    drain: Option<&mut Drain>,
) -> Poll<Option<io::Result<usize>>> {
    if timer.poll_at(cx, at).is_ready() || drain.is_some_and(|d| d.poll(cx).is_ready()) {
        return Poll::Ready(None);
    }
    Poll::Pending
}
