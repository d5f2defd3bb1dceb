//! The HTTP/2 client: connections to instances shared by every request at once (h2 multiplexes),
//! one per instance, a second one only when the first has as many streams open as the peer's
//! `SETTINGS_MAX_CONCURRENT_STREAMS` allows (as last seen: [`Shared::max`]). Each connection runs as a task of hyper's
//! `client::conn::http2` (frames, flow control, keep-alive PINGs that find a dead peer); a
//! request's body and its response's body stream through it in both directions at once, with
//! trailers, and dropping a response (the app reset its stream) resets the upstream stream.
//!
//! Connecting is single-flight per instance: concurrent first requests wait for the one
//! handshake rather than each opening a connection. [`Pool::h2_for`] tells whether an HTTP/2
//! app's request goes this way, [`Pool::send_h2`] sends it (falling back to HTTP/1 when TLS
//! agreed on `http/1.1`).

use std::collections::{HashMap, HashSet};
use std::future::Future as _;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http2::{Builder, SendRequest};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use prometheus::IntGauge;

use super::conn::Conn;
use super::stream::Stream;
use super::{Pool, ProtoError, SendError};
use crate::config::Protocol;
use crate::forward::h1::response::ResponseError;

/// The request body the HTTP/2 client sends: an HTTP/2 app's stream, as it comes.
pub type H2RequestBody = Incoming;

/// One shared connection and the streams open on it.
#[derive(Clone)]
struct Shared {
    send: SendRequest<H2RequestBody>,
    open: Arc<AtomicUsize>,
    /// The peer's `SETTINGS_MAX_CONCURRENT_STREAMS`, as the connection task last saw it: that
    /// task (hyper's dispatcher; the h2 connection itself runs in a task of its own) is polled
    /// as requests are handed to it, so the value lags one dispatch — until the connection's
    /// second batch of requests it is hyper's initial guess (100).
    max: Arc<AtomicUsize>,
}

impl Shared {
    /// Whether another stream may go on this connection now.
    fn has_room(&self) -> bool {
        !self.send.is_closed()
            && self.open.load(Ordering::Relaxed) < self.max.load(Ordering::Relaxed).max(1)
    }
}

/// HTTP/2 connections per instance address.
#[derive(Default)]
pub(super) struct H2Clients {
    conns: Mutex<HashMap<SocketAddr, Vec<Shared>>>,
    /// One handshake at a time per instance.
    connecting: Mutex<HashMap<SocketAddr, Arc<tokio::sync::Mutex<()>>>>,
}

/// A stream counted open until its response body ends or is dropped.
pub(super) struct Open {
    count: Arc<AtomicUsize>,
    gauge: Option<IntGauge>,
}

impl Drop for Open {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::Relaxed);
        if let Some(g) = &self.gauge {
            g.dec();
        }
    }
}

impl H2Clients {
    /// A connection to `addr` with room for one more stream, and that stream counted; `None`
    /// when there is none.
    fn take(
        &self,
        addr: SocketAddr,
        gauge: Option<&IntGauge>,
    ) -> Option<(SendRequest<H2RequestBody>, Open)> {
        let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        let list = conns.get_mut(&addr)?;
        list.retain(|c| !c.send.is_closed());
        let c = list.iter().find(|c| c.has_room())?;
        c.open.fetch_add(1, Ordering::Relaxed);
        if let Some(g) = gauge {
            g.inc();
        }
        let open = Open {
            count: c.open.clone(),
            gauge: gauge.cloned(),
        };
        Some((c.send.clone(), open))
    }

    /// Sends `req` to `addr` over a shared connection, opening one with `connect` (a
    /// connected stream) when none has room. Returns the response with its body counted open.
    pub(super) async fn send<F, Fut, E>(
        &self,
        addr: SocketAddr,
        req: Request<H2RequestBody>,
        settings: &H2Settings,
        gauge: Option<&IntGauge>,
        connect: F,
    ) -> Result<Response<H2ResponseBody>, H2Error<E>>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<Stream, E>>,
    {
        let (mut send, open) = match self.take(addr, gauge) {
            Some(got) => got,
            None => {
                let lock = {
                    let mut c = self.connecting.lock().unwrap_or_else(|p| p.into_inner());
                    c.entry(addr).or_default().clone()
                };
                let _one = lock.lock().await;
                match self.take(addr, gauge) {
                    Some(got) => got,
                    None => {
                        let stream = match connect().await {
                            Ok(s) => s,
                            Err(e) => return Err(H2Error::Connect(e, Box::new(req))),
                        };
                        let (send, max) =
                            settings.handshake(stream).await.map_err(H2Error::Http)?;
                        let shared = Shared {
                            send,
                            open: Arc::default(),
                            max,
                        };
                        self.conns
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .entry(addr)
                            .or_default()
                            .push(shared);
                        self.take(addr, gauge).ok_or(H2Error::Closed)?
                    }
                }
            }
        };
        send.ready().await.map_err(H2Error::Http)?;
        let resp = send.send_request(req).await.map_err(H2Error::Http)?;
        Ok(resp.map(|body| H2ResponseBody { body, _open: open }))
    }

    /// Drops connections that have closed, and the handshake locks no request holds (else
    /// one would stay for every instance address ever connected to).
    pub(super) fn sweep(&self) {
        let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        conns.retain(|_, list| {
            list.retain(|c| !c.send.is_closed());
            !list.is_empty()
        });
        drop(conns);
        let mut connecting = self.connecting.lock().unwrap_or_else(|p| p.into_inner());
        connecting.retain(|_, lock| Arc::strong_count(lock) > 1);
    }
}

/// Why a request sent over HTTP/2 got no response.
#[derive(Debug, thiserror::Error)]
pub enum H2Error<E> {
    /// Connecting (TCP, TLS) failed, or gave a connection that is not HTTP/2; the request,
    /// not sent, comes back.
    #[error("connect: {0}")]
    Connect(E, Box<Request<H2RequestBody>>),
    /// The HTTP/2 handshake or the stream failed.
    #[error("HTTP/2: {0}")]
    Http(hyper::Error),
    /// The new connection closed at once.
    #[error("HTTP/2 connection closed")]
    Closed,
}

/// How HTTP/2 connections to upstreams are set up.
#[derive(Debug, Clone)]
pub struct H2Settings {
    /// Interval of keep-alive PINGs (also while idle): a dead peer is found within
    /// `keep_alive_interval + keep_alive_timeout`.
    pub keep_alive_interval: Duration,
    /// How long a PING may go unanswered.
    pub keep_alive_timeout: Duration,
}

impl Default for H2Settings {
    fn default() -> Self {
        Self {
            keep_alive_interval: Duration::from_secs(20),
            keep_alive_timeout: Duration::from_secs(20),
        }
    }
}

impl H2Settings {
    /// A new connection over `stream`, run by a task of its own that also publishes the peer's
    /// stream limit each time it is polled (hyper shows it on the connection only; see
    /// [`Shared::max`] for when that is).
    async fn handshake(
        &self,
        stream: Stream,
    ) -> hyper::Result<(SendRequest<H2RequestBody>, Arc<AtomicUsize>)> {
        let mut b = Builder::new(TokioExecutor::new());
        b.timer(TokioTimer::new())
            .keep_alive_interval(self.keep_alive_interval)
            .keep_alive_timeout(self.keep_alive_timeout)
            .keep_alive_while_idle(true)
            .adaptive_window(true);
        let (send, mut conn) = b.handshake(TokioIo::new(stream)).await?;
        let max = Arc::new(AtomicUsize::new(conn.current_max_send_streams()));
        let seen = max.clone();
        tokio::spawn(async move {
            let ended = std::future::poll_fn(|cx| {
                let polled = Pin::new(&mut conn).poll(cx);
                seen.store(conn.current_max_send_streams(), Ordering::Relaxed);
                polled
            })
            .await;
            if let Err(e) = ended {
                tracing::debug!(error = %e, "upstream HTTP/2 connection ended");
            }
        });
        Ok((send, max))
    }
}

/// A response body from an HTTP/2 upstream, its stream counted open until it ends or is
/// dropped (dropping it resets the upstream stream).
pub struct H2ResponseBody {
    body: Incoming,
    _open: Open,
}

impl HttpBody for H2ResponseBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Pool {
    /// Whether requests from HTTP/2 apps to `addr` go over HTTP/2: `h2c`, or `auto` over TLS
    /// unless the instance chose `http/1.1` by ALPN before.
    pub fn h2_for(&self, addr: SocketAddr) -> bool {
        match (self.0.protocol, &self.0.tls) {
            (Protocol::H2c, _) => true,
            (Protocol::Auto, Some(_)) => !self.0.h1_only.load().contains(&addr),
            _ => false,
        }
    }

    /// Sends an HTTP/2 app's request (`parts`, `body`) to `addr` over a shared HTTP/2
    /// connection, both bodies streaming, trailers included. `service` names the authority
    /// when the request has none.
    pub async fn send_h2(
        &self,
        addr: SocketAddr,
        mut parts: http::request::Parts,
        body: hyper::body::Incoming,
        service: &str,
    ) -> H2Sent {
        // The app's URI, kept for a fallback to HTTP/1 (a cheap clone: its parts are shared
        // `Bytes`), and its parts reused for the upstream's: no copy of authority or path.
        let original_uri = parts.uri.clone();
        let mut uri = std::mem::take(&mut parts.uri).into_parts();
        uri.scheme = Some(if self.0.tls.is_some() {
            Scheme::HTTPS
        } else {
            Scheme::HTTP
        });
        if uri.authority.is_none() {
            let host = parts
                .headers
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .unwrap_or(service);
            uri.authority = Authority::try_from(host).ok();
        }
        if uri.path_and_query.is_none() {
            uri.path_and_query = Some(PathAndQuery::from_static("/"));
        }
        match http::Uri::from_parts(uri) {
            Ok(uri) => parts.uri = uri,
            Err(_) => {
                return H2Sent::Failed(SendError::Upstream(ProtoError::Response(
                    ResponseError::Invalid("request authority"),
                )));
            }
        }
        parts.headers.remove(http::header::HOST);
        parts.version = http::Version::HTTP_2;
        let req = http::Request::from_parts(parts, body);
        let connect = || async {
            let stream = self
                .connect_stream(addr, true)
                .await
                .map_err(H2Connect::Failed)?;
            match (&stream, self.0.protocol) {
                (Stream::Tls(_), Protocol::Auto) if stream.alpn() != Some(crate::tls::ALPN_H2) => {
                    Err(H2Connect::Http1(stream))
                }
                _ => Ok(stream),
            }
        };
        let gauge = self.0.h2_streams.as_ref();
        match self
            .0
            .h2
            .send(addr, req, &self.0.h2_settings, gauge, connect)
            .await
        {
            Ok(resp) => H2Sent::Response(resp),
            Err(H2Error::Connect(H2Connect::Failed(e), _)) => H2Sent::Failed(e),
            Err(H2Error::Connect(H2Connect::Http1(stream), req)) => {
                tracing::debug!(upstream = %addr, "instance chose http/1.1 by ALPN: HTTP/2 apps reach it over HTTP/1");
                self.0.h1_only.rcu(|set| {
                    let mut set = HashSet::clone(set);
                    set.insert(addr);
                    set
                });
                let conn = Conn::new(stream, self.0.config.buffer_size);
                self.checkin(addr, conn, tokio::time::Instant::now());
                let (mut parts, body) = req.into_parts();
                parts.uri = original_uri;
                parts.version = http::Version::HTTP_2;
                H2Sent::Http1(parts, body)
            }
            Err(H2Error::Http(e)) => H2Sent::Failed(SendError::Upstream(ProtoError::H2(e))),
            Err(H2Error::Closed) => H2Sent::Failed(SendError::Upstream(ProtoError::Closed)),
        }
    }
}

/// What [`Pool::send_h2`] did.
pub enum H2Sent {
    /// The response head came; its body streams.
    Response(http::Response<H2ResponseBody>),
    /// No response.
    Failed(SendError),
    /// The instance speaks only HTTP/1.1 (it said so by ALPN): the request, not sent (its
    /// URI as the app sent it, its `Host` removed), goes over HTTP/1 instead.
    Http1(http::request::Parts, hyper::body::Incoming),
}

/// How connecting for HTTP/2 ended short of an HTTP/2 connection.
pub(super) enum H2Connect {
    Failed(SendError),
    /// TLS agreed on `http/1.1`.
    Http1(Stream),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sweep_drops_handshake_locks_no_request_holds() {
        let h2 = H2Clients::default();
        let (idle, held) = (
            "127.0.0.1:1".parse().unwrap(),
            "127.0.0.1:2".parse().unwrap(),
        );
        let lock = {
            let mut c = h2.connecting.lock().unwrap();
            c.entry(idle).or_default();
            c.entry(held).or_default().clone()
        };
        h2.sweep();
        let c = h2.connecting.lock().unwrap();
        assert!(!c.contains_key(&idle));
        assert!(c.contains_key(&held));
        drop(lock);
    }
}
