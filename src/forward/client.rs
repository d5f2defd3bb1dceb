//! The upstream side: keep-alive HTTP/1.1 connections per instance address ([`Pool`]), over TCP
//! or TLS ([`Stream`]; a pool with a [`Connector`] speaks TLS to every instance), and one
//! request sent over them ([`Pool::send`]). A request comes in one shape whatever the app
//! spoke: its head already encoded by the framing module (with as much of its body as had
//! arrived), and a [`Source`] for the rest of the body.
//!
//! Why not hyper's client: it runs every connection as a task of its own and passes each request
//! and response through channels to it, and its connection becomes reusable only once that task
//! has finished the previous body. Here the request's own task writes the head, moves the body,
//! parses the response head and reads its body; a connection is back in the pool the moment both
//! bodies have ended (bench/FINDINGS.md).
//!
//! A checkout is one short, uncontended mutex section over a map keyed by `SocketAddr` with a
//! cheap hash; a connection is in the pool only while idle. Reused connections race with the
//! upstream's own idle timeout: a request whose head could not be written to a pooled connection
//! is sent again on a fresh one (none of it was taken), and a bodiless idempotent request whose
//! pooled connection closed before any response byte is replayed once (RFC 9110 §9.2.2).

mod conn;
mod exchange;
mod h2;
mod stream;
mod upload;

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpStream;
use tokio::time::Instant;

pub use conn::Conn;
pub use exchange::{Body, BodyError, Exchange, First};
pub use h2::{H2ResponseBody, H2Sent, H2Settings};
pub use stream::{Stream, Transport};
pub use upload::{Piece, Source, SourceError};

use super::h1::chunked::ChunkError;
use super::h1::framing::Framing;
use super::h1::response::ResponseError;
use crate::config::{Protocol, UpstreamConfig};
use crate::shutdown::Shutdown;
use crate::tls::{Connector, HandshakeError, Reason};
use upload::Upload;

/// What went wrong on an upstream connection.
#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    /// Reading or writing the socket failed.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The upstream closed the connection before sending a byte of a response.
    #[error("connection closed before a response")]
    Closed,
    /// The upstream closed the connection in the middle of a response.
    #[error("connection closed in the middle of the response")]
    Truncated,
    /// The response head is not one waypost forwards.
    #[error(transparent)]
    Response(#[from] ResponseError),
    /// The response head did not fit in the read buffer (`upstream.buffer_size`).
    #[error("response head larger than {0} bytes")]
    HeadTooLarge(usize),
    /// The response body broke the chunked coding.
    #[error(transparent)]
    Chunked(#[from] ChunkError),
    /// The HTTP/2 connection or stream failed.
    #[error("HTTP/2: {0}")]
    H2(hyper::Error),
    /// An HTTP/1 request for a service whose instances speak only h2c: translating HTTP/1
    /// requests to HTTP/2 is not done (yet).
    #[error(
        "the service speaks h2c; HTTP/1 requests are not translated to HTTP/2: call it over HTTP/2"
    )]
    Http1ToH2c,
}

impl ProtoError {
    /// Whether the connection closed (or was reset) before any byte of a response arrived: on
    /// a reused connection, the upstream's idle timeout raced our request.
    pub fn closed_early(&self) -> bool {
        match self {
            ProtoError::Closed => true,
            ProtoError::Io(e) => matches!(
                e.kind(),
                io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::BrokenPipe
            ),
            _ => false,
        }
    }
}

/// Why a request got no response from the upstream.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// TCP connect failed.
    #[error("connect failed: {0}")]
    Connect(#[source] io::Error),
    /// TCP connect (and the TLS handshake, if any) did not finish in time.
    #[error("connect timed out after {0:?}")]
    ConnectTimeout(Duration),
    /// The TLS handshake failed (or the server refused it right after: a TLS 1.3 server
    /// refuses a client certificate on the first read).
    #[error(transparent)]
    Tls(HandshakeError),
    /// The request could not be sent, or no valid response head came back.
    #[error("{0}")]
    Upstream(#[source] ProtoError),
    /// The app's request body could not be read: not the upstream's fault.
    #[error(transparent)]
    Request(SourceError),
}

impl SendError {
    /// Whether the failure happened while connecting (nothing was sent).
    pub fn is_connect(&self) -> bool {
        matches!(
            self,
            SendError::Connect(_) | SendError::ConnectTimeout(_) | SendError::Tls(_)
        )
    }
}

/// A request ready to go: the one shape [`Pool::send`] takes.
#[derive(Debug, Clone, Copy)]
pub struct Outgoing<'a> {
    /// The encoded head, followed by whatever of the body was at hand (kept, to be written
    /// again on a fresh connection if a reused one turns out closed).
    pub head: &'a [u8],
    /// How the rest of the body, from the [`Source`], is framed: [`Framing::Empty`] when it
    /// all went with the head.
    pub framing: Framing,
    /// The request was HEAD: its response has no body whatever its fields say.
    pub head_request: bool,
    /// Bodiless and idempotent: may be sent a second time if a reused connection closed
    /// before answering.
    pub replayable: bool,
    /// `100 Continue` is reported to the caller (the app sent `Expect: 100-continue`).
    pub relay_continue: bool,
    /// The request asks to switch protocols: a `101` is its final response (else a `101` is
    /// refused as an upstream error).
    pub upgrade: bool,
}

/// One idle connection.
struct Idle {
    conn: Conn,
    /// When it came back (for the idle timeout).
    since: Instant,
}

/// Settings of a [`Pool`].
#[derive(Debug, Clone, Copy)]
struct PoolConfig {
    connect_timeout: Duration,
    idle_timeout: Duration,
    max_per_instance: usize,
    buffer_size: usize,
}

type Map = HashMap<SocketAddr, Vec<Idle>, BuildHasherDefault<AddrHasher>>;

struct Inner {
    /// TLS to every instance, when the pool's service asks for it.
    tls: Option<Arc<Connector>>,
    /// What the instances speak.
    protocol: Protocol,
    /// Shared HTTP/2 connections (h2c, or h2 by ALPN).
    h2: h2::H2Clients,
    h2_settings: H2Settings,
    /// Instances that answered ALPN with `http/1.1` (on `protocol: auto`): HTTP/2 apps reach
    /// them over HTTP/1. Read by every HTTP/2 request ([`Pool::h2_for`]), lock-free; written
    /// (copied whole) only when an instance first answers so.
    h1_only: ArcSwap<HashSet<SocketAddr, BuildHasherDefault<AddrHasher>>>,
    /// `waypost_forward_upstream_h2_streams{service}` of the pool's service.
    h2_streams: Option<prometheus::IntGauge>,
    /// Written at checkout and check-in by request tasks, and by [`Pool::sweep`]; held for a
    /// few instructions only, never across an await.
    idle: Mutex<Map>,
    config: PoolConfig,
}

/// Keep-alive connections to upstream instances. Cheap to clone; clones share connections.
#[derive(Clone)]
pub struct Pool(Arc<Inner>);

/// Takes a connection back into its pool once its exchange has ended cleanly.
pub struct Home {
    pool: Pool,
    addr: SocketAddr,
}

impl Home {
    fn recycle(self, conn: Conn, since: Instant) {
        self.pool.checkin(self.addr, conn, since);
    }
}

impl Pool {
    /// An empty pool with `upstream:`'s settings and `connect_timeout` (global or a service's
    /// own).
    pub fn from_config(cfg: &UpstreamConfig, connect_timeout: Duration) -> Self {
        Self::for_service(cfg, connect_timeout, None, Protocol::Auto, None)
    }

    /// An empty pool like [`Pool::from_config`] for one service: its connections run TLS
    /// through `tls` when given, and speak `protocol`; `h2_streams` counts its HTTP/2 streams.
    pub fn for_service(
        cfg: &UpstreamConfig,
        connect_timeout: Duration,
        tls: Option<Arc<Connector>>,
        protocol: Protocol,
        h2_streams: Option<prometheus::IntGauge>,
    ) -> Self {
        Self(Arc::new(Inner {
            tls,
            protocol,
            h2: h2::H2Clients::default(),
            h2_settings: H2Settings::default(),
            h1_only: ArcSwap::default(),
            h2_streams,
            idle: Mutex::default(),
            config: PoolConfig {
                connect_timeout,
                idle_timeout: cfg.idle_timeout.0,
                max_per_instance: cfg.max_idle_per_instance,
                buffer_size: cfg.buffer_size,
            },
        }))
    }

    /// The TLS connector of this pool's connections, if they run TLS.
    pub fn connector(&self) -> Option<&Arc<Connector>> {
        self.0.tls.as_ref()
    }

    /// Sends `req` to `addr`, its remaining body from `body`, and reads the first response head
    /// (a relayed `100 Continue` or the final one). The request body keeps moving while the
    /// response is awaited and read.
    pub async fn send<U: Source>(
        &self,
        addr: SocketAddr,
        req: &Outgoing<'_>,
        body: Option<U>,
    ) -> Result<(Exchange<U>, First), SendError> {
        if self.0.protocol == Protocol::H2c {
            return Err(SendError::Upstream(ProtoError::Http1ToH2c));
        }
        let mut body = body.filter(|_| req.framing != Framing::Empty);
        if let Some(mut conn) = self.checkout(addr) {
            match conn.write_all(req.head).await {
                // Nothing of the request was taken: safe to send again.
                Err(e) => {
                    tracing::debug!(upstream = %addr, error = %e, "reused connection refused the request; sending it on a new one");
                }
                Ok(()) => {
                    let mut ex = self.exchange(addr, conn, req, body);
                    match ex.head().await {
                        Ok(first) => return Ok((ex, first)),
                        Err(SendError::Upstream(e)) if req.replayable && e.closed_early() => {
                            tracing::debug!(upstream = %addr, error = %e, "reused connection closed; replaying once");
                            // A replayable request is bodiless: nothing of a body to carry over.
                            body = None;
                        }
                        Err(e) => return Err(e),
                    }
                }
            }
        }
        // Boxed: most requests find a pooled connection, and the connect future is large.
        let mut conn = Box::pin(self.connect(addr)).await?;
        conn.write_all(req.head)
            .await
            .map_err(|e| SendError::Upstream(e.into()))?;
        let mut ex = self.exchange(addr, conn, req, body);
        let first = ex.head().await.map_err(|e| self.refused(e))?;
        Ok((ex, first))
    }

    /// A failure on a fresh connection that is TLS refusing us after our side of the
    /// handshake (a TLS 1.3 server checks a client certificate then): a handshake failure.
    fn refused(&self, e: SendError) -> SendError {
        let Some(tls) = &self.0.tls else { return e };
        match e {
            SendError::Upstream(ProtoError::Io(io)) => match Reason::of_tls(&io) {
                Some(reason) => {
                    tls.failed(reason);
                    SendError::Tls(HandshakeError { reason, source: io })
                }
                None => SendError::Upstream(ProtoError::Io(io)),
            },
            e => e,
        }
    }

    fn exchange<U: Source>(
        &self,
        addr: SocketAddr,
        conn: Conn,
        req: &Outgoing<'_>,
        body: Option<U>,
    ) -> Exchange<U> {
        Exchange {
            conn,
            upload: body.map(|b| Box::new(Upload::new(b, req.framing))),
            upload_broken: false,
            home: Home {
                pool: self.clone(),
                addr,
            },
            head_request: req.head_request,
            relay_continue: req.relay_continue,
            upgrade: req.upgrade,
            received: false,
        }
    }

    /// An idle connection to `addr` that still looks usable, dropping stale ones on the way.
    fn checkout(&self, addr: SocketAddr) -> Option<Conn> {
        let mut idle = self.0.idle.lock().unwrap_or_else(|p| p.into_inner());
        let list = idle.get_mut(&addr)?;
        // From the back, where check-ins go: the most recently used first, the least likely
        // to have been closed by the upstream's idle timeout. Age is the sweeper's business
        // (no clock read per request here); a connection closed under us is seen by
        // `is_usable`, or met by the replay rule.
        while let Some(mut c) = list.pop() {
            if c.conn.is_usable() {
                return Some(c.conn);
            }
        }
        None
    }

    /// Returns `conn`, idle since `since`, to the pool, unless the instance already has
    /// `max_per_instance` idle connections (then it closes). `since` comes from the caller, who
    /// has usually just read the clock (when the response head came): no clock read here.
    fn checkin(&self, addr: SocketAddr, mut conn: Conn, since: Instant) {
        conn.shrink();
        let mut idle = self.0.idle.lock().unwrap_or_else(|p| p.into_inner());
        let list = idle.entry(addr).or_default();
        if list.len() < self.0.config.max_per_instance {
            list.push(Idle { conn, since });
        }
    }

    /// A new connection to `addr`: TCP, then TLS when the pool speaks it, both within the
    /// connect timeout.
    async fn connect(&self, addr: SocketAddr) -> Result<Conn, SendError> {
        let stream = self.connect_stream(addr, false).await?;
        Ok(Conn::new(stream, self.0.config.buffer_size))
    }

    /// A connected stream to `addr` (TLS offering `h2` too when `h2`), within the connect
    /// timeout.
    async fn connect_stream(&self, addr: SocketAddr, h2: bool) -> Result<Stream, SendError> {
        let timeout = self.0.config.connect_timeout;
        tokio::time::timeout(timeout, async {
            let tcp = TcpStream::connect(addr).await.map_err(SendError::Connect)?;
            let _ = tcp.set_nodelay(true);
            match &self.0.tls {
                None => Ok(Stream::Tcp(tcp)),
                Some(tls) => match tls.connect(addr, tcp, h2).await {
                    Ok(s) => Ok(Stream::Tls(Box::new(s))),
                    Err(e) => Err(SendError::Tls(e)),
                },
            }
        })
        .await
        .map_err(|_| SendError::ConnectTimeout(timeout))?
    }

    /// Closes idle connections older than the idle timeout, or closed by the upstream.
    fn sweep(&self) {
        let timeout = self.0.config.idle_timeout;
        let mut idle = self.0.idle.lock().unwrap_or_else(|p| p.into_inner());
        idle.retain(|_, list| {
            list.retain_mut(|c| c.since.elapsed() < timeout && c.conn.is_usable());
            !list.is_empty()
        });
    }

    /// Sweeps every quarter of the idle timeout until `shutdown` fires: idle connections live
    /// at most 1.25 × `upstream.idle_timeout`.
    pub async fn run_sweeper(self, mut shutdown: Shutdown) {
        let every = (self.0.config.idle_timeout / 4).max(Duration::from_millis(50));
        loop {
            tokio::select! {
                biased;
                _ = shutdown.recv() => break,
                _ = tokio::time::sleep(every) => {
                    self.sweep();
                    self.0.h2.sweep();
                }
            }
        }
    }
}

/// FxHash (rustc's hasher): a multiply and a rotate per word. Keys are socket addresses from
/// our own discovery, not attacker-chosen strings, so SipHash's flooding resistance buys
/// nothing here and costs ~100 instructions per lookup.
#[derive(Default)]
struct AddrHasher(u64);

impl Hasher for AddrHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }
    fn write_u8(&mut self, i: u8) {
        self.write_u64(u64::from(i));
    }
    fn write_u16(&mut self, i: u16) {
        self.write_u64(u64::from(i));
    }
    fn write_u32(&mut self, i: u32) {
        self.write_u64(u64::from(i));
    }
    fn write_u64(&mut self, i: u64) {
        self.0 = (self.0.rotate_left(5) ^ i).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
    fn write_usize(&mut self, i: usize) {
        self.write_u64(i as u64);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}
