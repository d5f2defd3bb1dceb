//! One app connection on a forwarding listener.
//!
//! Bodiless HTTP/1.1 requests — the GETs that make up most of a sidecar's traffic — are served
//! by a loop of our own: the request head is checked and copied towards the upstream as bytes
//! (hop-by-hop fields left out), and the upstream's response head comes back the same way
//! ([`wire`]). No `http::Request`, no header map, no per-request task or timer: the response
//! timeout is a [`Deadline`] armed once per connection. This is what brought waypost's CPU per
//! request under HAProxy's (bench/FINDINGS.md).
//!
//! Everything else goes to hyper, from that request on, for the rest of the connection's life:
//! a request with a body, `Expect`, `Upgrade`, HTTP/1.0, a `Connection` header naming other
//! fields, the h2c preface, or a head httparse does not accept. hyper gets the bytes already
//! read ([`Rewind`]) and answers exactly as it would have from the first byte, errors included.

mod wire;

use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::Response;
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

use super::h1::Framing;
use super::route::Listener;
use super::Proxy;
use crate::shutdown::Shutdown;
use wire::Parsed;

/// How long the rest of a request head may take once its first bytes are in (hyper's
/// `header_read_timeout` on the connections it serves).
pub(super) const HEAD_TIMEOUT: Duration = Duration::from_secs(30);
/// Read buffer size asked for while waiting for a request head.
const READ: usize = 8 * 1024;
/// Bodies up to this size are copied behind the response head and sent with it in one piece.
const SMALL_BODY: usize = 4 * 1024;

/// What a connection needs from its listener.
pub(super) struct Shared {
    /// The proxy's state.
    pub proxy: Arc<Proxy>,
    /// The listener the connection arrived on.
    pub kind: Arc<Listener>,
    /// hyper's server, for connections handed over.
    pub hyper: Arc<auto::Builder<TokioExecutor>>,
}

/// Serves the app connection `stream` until it closes, fails, or `drain` fires while it is
/// idle (a request in flight is finished first).
pub(super) async fn serve(stream: TcpStream, shared: Shared, drain: Shutdown) {
    let probe = drain.clone();
    let mut drain = drain;
    let mut stopped = Drain {
        recv: pin!(async move { drain.recv().await }),
        probe,
        armed: false,
    };
    let mut conn = Downstream {
        stream,
        buf: BytesMut::with_capacity(READ),
        last: wire::LastRoute::default(),
        head: Vec::with_capacity(512),
        out: Vec::with_capacity(512),
        deadline: Deadline::default(),
    };
    let limit = shared.proxy.buffer_size;
    loop {
        let mut head_started = None;
        let req = loop {
            if !conn.buf.is_empty() {
                match wire::parse(
                    &conn.buf,
                    &shared.proxy,
                    &shared.kind,
                    &mut conn.last,
                    &mut conn.head,
                ) {
                    Parsed::Partial if conn.buf.len() < limit => {}
                    // Too large (hyper answers 431) or not ours to serve.
                    Parsed::Partial | Parsed::Hyper => {
                        let read = conn.buf.split().freeze();
                        return hand_over(conn.stream, read, &shared, stopped.recv).await;
                    }
                    Parsed::Request(req) => break req,
                }
            }
            if conn.buf.capacity() - conn.buf.len() < READ / 4 {
                conn.buf.reserve(READ);
            }
            let read = if conn.buf.is_empty() {
                // Idle between requests: the only place a drain closes the connection.
                let mut read = pin!(conn.stream.read_buf(&mut conn.buf));
                let next = std::future::poll_fn(|cx| match read.as_mut().poll(cx) {
                    Poll::Ready(r) => Poll::Ready(Some(r)),
                    Poll::Pending => stopped.poll(cx).map(|()| None),
                });
                match next.await {
                    Some(read) => read,
                    None => return,
                }
            } else {
                let at = *head_started.get_or_insert_with(|| Instant::now() + HEAD_TIMEOUT);
                match tokio::time::timeout_at(at, conn.stream.read_buf(&mut conn.buf)).await {
                    Ok(read) => read,
                    Err(_) => return,
                }
            };
            match read {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        };
        conn.buf.advance(req.len);
        if conn.exchange(&shared.proxy, req).await.is_err() {
            return;
        }
    }
}

/// The drain signal as the loop polls it: the `recv()` future is polled once to register the
/// task's waker, and after that only when the watch says something changed (an atomic load),
/// not on every request.
struct Drain<'a, F> {
    recv: Pin<&'a mut F>,
    probe: Shutdown,
    armed: bool,
}

impl<F: Future<Output = ()>> Drain<'_, F> {
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.armed && !self.probe.changed() {
            return Poll::Pending;
        }
        self.armed = true;
        self.recv.as_mut().poll(cx)
    }
}

/// The app connection served by our own loop.
struct Downstream {
    stream: TcpStream,
    /// Bytes read and not yet consumed: the next request head(s).
    buf: BytesMut,
    /// The service the last request named.
    last: wire::LastRoute,
    /// The request head for the upstream (reused from one request to the next).
    head: Vec<u8>,
    /// The response head being written (reused from one response to the next).
    out: Vec<u8>,
    /// The response timeout.
    deadline: Deadline,
}

impl Downstream {
    /// Forwards one request and writes its response. `Err`: the connection must close.
    async fn exchange(&mut self, proxy: &Proxy, req: wire::Request) -> Result<(), Close> {
        let started = Instant::now();
        let wire::Request {
            target,
            reply,
            head_request,
            idempotent,
            ..
        } = req;
        let target = match target {
            Ok(t) => t,
            Err(e) => return self.reject(proxy.reject(None, e, started), reply).await,
        };
        let svc = target.publisher();
        let addr = match proxy.pick(&target).await {
            Ok(addr) => addr,
            Err(e) => {
                return self
                    .reject(proxy.reject(Some(svc), e, started), reply)
                    .await
            }
        };
        let at = started + svc.timeout;
        let sent = {
            let send = svc
                .pool
                .send_head(addr, &self.head, head_request, idempotent);
            self.deadline.within(at, pin!(send)).await
        };
        let (head, mut body) = match svc.outcome(addr, sent) {
            Ok(resp) => resp,
            Err(e) => {
                return self
                    .reject(proxy.reject(Some(svc), e, started), reply)
                    .await
            }
        };
        svc.record(head.status.as_u16(), started);
        let framing = wire::response_head(&mut self.out, &head, reply);
        // A close-delimited body ends only when the connection does.
        let close = reply.close || framing == Framing::Close;
        // The head goes out with the first piece of the body, or alone if there is none.
        let mut head_out = true;
        let mut size = [0u8; 18];
        loop {
            let frame = match body.frame().await {
                None => break,
                Some(Ok(frame)) => frame,
                Some(Err(e)) => {
                    tracing::debug!(upstream = %addr, error = %e, "upstream response body failed");
                    return Err(Close);
                }
            };
            let head: &[u8] = if head_out { &self.out } else { &[] };
            match frame.into_data() {
                Ok(data) if framing == Framing::Chunked => {
                    let prefix = wire::chunk_size(&mut size, data.len());
                    write_all(&mut self.stream, &mut [head, prefix, &data, b"\r\n"]).await?;
                }
                // A small body joins the head: one `send`, no `writev`.
                Ok(data) if head_out && data.len() <= SMALL_BODY => {
                    self.out.extend_from_slice(&data);
                    write_all(&mut self.stream, &mut [&self.out]).await?;
                }
                Ok(data) => write_all(&mut self.stream, &mut [head, &data]).await?,
                Err(frame) => {
                    // Trailers come last, after the last chunk (only chunked bodies have them).
                    let Ok(trailers) = frame.into_trailers() else {
                        continue;
                    };
                    if framing != Framing::Chunked {
                        continue;
                    }
                    let mut last = Vec::with_capacity(64);
                    wire::last_chunk(&mut last, reply.trailers.then_some(&trailers));
                    write_all(&mut self.stream, &mut [head, &last]).await?;
                    return finish(close);
                }
            }
            head_out = false;
        }
        let last: &[u8] = if framing == Framing::Chunked {
            b"0\r\n\r\n"
        } else {
            &[]
        };
        let head: &[u8] = if head_out { &self.out } else { &[] };
        write_all(&mut self.stream, &mut [head, last]).await?;
        finish(close)
    }

    /// Writes a response waypost generated itself.
    async fn reject(&mut self, resp: Response<Bytes>, reply: wire::Reply) -> Result<(), Close> {
        wire::error_head(&mut self.out, &resp, reply);
        let body = resp.into_body();
        write_all(&mut self.stream, &mut [&self.out, &body]).await?;
        finish(reply.close)
    }
}

/// The connection ends after this response.
struct Close;

impl From<io::Error> for Close {
    fn from(_: io::Error) -> Self {
        Close
    }
}

fn finish(close: bool) -> Result<(), Close> {
    if close {
        Err(Close)
    } else {
        Ok(())
    }
}

/// Writes every byte of `parts`, in as few system calls as the kernel allows (one, normally):
/// a plain `send` for one part, `writev` for several.
async fn write_all(stream: &mut TcpStream, parts: &mut [&[u8]]) -> io::Result<()> {
    let mut slices: [IoSlice<'_>; 4] = [IoSlice::new(&[]); 4];
    let n = parts.len().min(4);
    for (slot, part) in slices.iter_mut().zip(parts.iter()) {
        *slot = IoSlice::new(part);
    }
    let mut slices = &mut slices[..n];
    IoSlice::advance_slices(&mut slices, 0);
    while !slices.is_empty() {
        let n = match slices {
            [one] => stream.write(one).await?,
            _ => stream.write_vectored(slices).await?,
        };
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut slices, n);
    }
    Ok(())
}

/// Serves the rest of the connection with hyper; `read` holds the bytes read and not consumed.
async fn hand_over(
    stream: TcpStream,
    read: Bytes,
    shared: &Shared,
    mut stopped: Pin<&mut impl Future<Output = ()>>,
) {
    let (proxy, kind) = (shared.proxy.clone(), shared.kind.clone());
    let service = hyper::service::service_fn(move |req| {
        let (proxy, kind) = (proxy.clone(), kind.clone());
        async move { Ok::<_, std::convert::Infallible>(proxy.handle(req, &kind).await) }
    });
    let io = TokioIo::new(Rewind {
        read,
        inner: stream,
    });
    let conn = shared.hyper.serve_connection(io, service);
    let mut conn = pin!(conn);
    tokio::select! {
        res = conn.as_mut() => if let Err(e) = res {
            tracing::debug!(error = %e, "connection ended with error");
        },
        _ = stopped.as_mut() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// A connection that first gives back bytes already read from it.
struct Rewind {
    read: Bytes,
    inner: TcpStream,
}

impl AsyncRead for Rewind {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.read.is_empty() {
            let n = self.read.len().min(buf.remaining());
            buf.put_slice(&self.read[..n]);
            self.read.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Rewind {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A per-connection timer for the response timeout, armed once and moved only when it fires.
///
/// Arming a tokio timer for every request costs about 1,500 instructions (callgrind). Each
/// request's deadline is later than the one before it, so the timer is left where it is; when it
/// fires before the current request's deadline, it is moved there. That is one timer operation
/// per timeout period instead of per request.
#[derive(Default)]
struct Deadline {
    sleep: Option<Pin<Box<Sleep>>>,
}

impl Deadline {
    /// `fut`'s output, or `None` if `at` passes first. (`fut` comes pinned, so a large future
    /// is not copied into this one.)
    async fn within<F: Future>(&mut self, at: Instant, mut fut: Pin<&mut F>) -> Option<F::Output> {
        let sleep = match &mut self.sleep {
            Some(sleep) => {
                if sleep.deadline() > at {
                    sleep.as_mut().reset(at);
                }
                sleep
            }
            None => self.sleep.insert(Box::pin(tokio::time::sleep_until(at))),
        };
        std::future::poll_fn(|cx| {
            if let Poll::Ready(out) = fut.as_mut().poll(cx) {
                return Poll::Ready(Some(out));
            }
            while sleep.as_mut().poll(cx).is_ready() {
                if Instant::now() >= at {
                    return Poll::Ready(None);
                }
                sleep.as_mut().reset(at);
            }
            Poll::Pending
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_deadline_cuts_each_request_off_at_its_own_time() {
        let mut d = Deadline::default();
        let secs = Duration::from_secs;
        let start = Instant::now();
        let done = async { 7 };
        assert_eq!(d.within(start + secs(1), pin!(done)).await, Some(7));
        // A later deadline: the timer, left at the first one, fires early and is moved on.
        let at = start + secs(3);
        let never = std::future::pending::<()>();
        assert_eq!(d.within(at, pin!(never)).await, None);
        assert_eq!(Instant::now(), at);
        // A request that finishes leaves the timer at its deadline (10 s from now)...
        let t = Instant::now();
        let quick = tokio::time::sleep(secs(1));
        assert_eq!(d.within(t + secs(10), pin!(quick)).await, Some(()));
        // ...and an earlier deadline than the timer's moves it back, not waiting for it.
        let at = Instant::now() + secs(2);
        let never = std::future::pending::<()>();
        assert_eq!(d.within(at, pin!(never)).await, None);
        assert_eq!(Instant::now(), at);
    }
}
