//! The upstream connection pool: idle keep-alive HTTP/1.1 connections per instance address,
//! and the exchange of one request for one response head over them ([`h1`](super::h1)).
//!
//! A checkout is one short, uncontended mutex section over a map keyed by `SocketAddr` with a
//! cheap hash. A connection is in the pool only while idle: the request that took it owns it,
//! and its response body puts it back the moment the body ends.
//!
//! Reused connections race with the upstream's own idle timeout. A request whose head could not
//! be written to a pooled connection is retried once on a fresh connection: it was never sent.
//! A request that was sent but whose connection closed before any response byte is retried once
//! only when it is idempotent and has no body (RFC 9110 §9.2.2 allows automatic retries of
//! idempotent requests), which is the common case of a GET on a connection the upstream just
//! closed.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::h1::{self, body::Recycle, Conn, Framing, ProtoError};
use crate::config::UpstreamConfig;
use crate::shutdown::Shutdown;

/// Why a request got no response from the upstream.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// TCP connect failed.
    #[error("connect failed: {0}")]
    Connect(#[source] std::io::Error),
    /// TCP connect did not finish in time.
    #[error("connect timed out after {0:?}")]
    ConnectTimeout(Duration),
    /// The request could not be sent, or no valid response head came back.
    #[error("{0}")]
    Upstream(#[source] ProtoError),
}

impl SendError {
    /// Whether the failure happened while connecting (nothing was sent).
    pub fn is_connect(&self) -> bool {
        matches!(self, SendError::Connect(_) | SendError::ConnectTimeout(_))
    }
}

/// A response body from an upstream, whose connection returns to this pool.
pub type UpstreamBody = h1::Body<Home>;

/// One idle connection.
struct Idle {
    conn: Conn,
    /// When it came back (for the idle timeout).
    since: Instant,
}

/// Settings of a [`Pool`].
#[derive(Debug, Clone, Copy)]
struct PoolConfig {
    /// TCP connect timeout.
    pub connect_timeout: Duration,
    /// Idle connections older than this are closed.
    pub idle_timeout: Duration,
    /// Idle connections kept per instance.
    pub max_per_instance: usize,
    /// Largest read buffer per connection.
    pub buffer_size: usize,
}

type Map = HashMap<SocketAddr, Vec<Idle>, BuildHasherDefault<AddrHasher>>;

struct Inner {
    /// Written at checkout and check-in by request tasks, and by [`Pool::sweep`]; held for a
    /// few instructions only, never across an await.
    idle: Mutex<Map>,
    config: PoolConfig,
}

/// Keep-alive connections to upstream instances. Cheap to clone; clones share connections.
#[derive(Clone)]
pub struct Pool(Arc<Inner>);

/// Takes a connection back into its pool once its response body has ended.
pub struct Home {
    pool: Pool,
    addr: SocketAddr,
}

impl Recycle for Home {
    fn recycle(self, conn: Conn) {
        self.pool.checkin(self.addr, conn);
    }
}

impl Pool {
    /// An empty pool with `upstream:`'s settings and `connect_timeout` (global or a service's
    /// own).
    pub fn from_config(cfg: &UpstreamConfig, connect_timeout: Duration) -> Self {
        Self(Arc::new(Inner {
            idle: Mutex::default(),
            config: PoolConfig {
                connect_timeout,
                idle_timeout: cfg.idle_timeout.0,
                max_per_instance: cfg.max_idle_per_instance,
                buffer_size: cfg.buffer_size,
            },
        }))
    }

    /// Sends `req` (origin-form URI, `Host` set) to `addr` and resolves to the response head;
    /// its body streams from the connection.
    pub async fn send<B>(
        &self,
        addr: SocketAddr,
        req: Request<B>,
    ) -> Result<Response<UpstreamBody>, SendError>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let (mut parts, body) = req.into_parts();
        let mut head = Vec::with_capacity(256);
        let framing = h1::encode_request(&mut parts, &body, &mut head);
        let out = Outgoing {
            head: &head,
            framing,
        };
        let head_request = parts.method == Method::HEAD;
        let replayable = idempotent(&parts.method);
        let (head, body) = self
            .round_trip(addr, &out, Some(body), head_request, replayable)
            .await?;
        let parts = head.into_parts().map_err(SendError::Upstream)?;
        Ok(Response::from_parts(parts, body))
    }

    /// Sends a bodiless request whose head is already encoded and resolves to the response
    /// head, as received, and its body.
    pub async fn send_head(
        &self,
        addr: SocketAddr,
        head: &[u8],
        head_request: bool,
        idempotent: bool,
    ) -> Result<(h1::Head, UpstreamBody), SendError> {
        let none: Option<http_body_util::Empty<Bytes>> = None;
        let out = Outgoing {
            head,
            framing: Framing::Empty,
        };
        self.round_trip(addr, &out, none, head_request, idempotent)
            .await
    }

    /// One request on a pooled connection, or a fresh one if none is idle or the pooled one
    /// turned out closed (see the module docs for when a request is sent twice).
    async fn round_trip<B>(
        &self,
        addr: SocketAddr,
        out: &Outgoing<'_>,
        mut body: Option<B>,
        head_request: bool,
        idempotent: bool,
    ) -> Result<(h1::Head, UpstreamBody), SendError>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let replayable = out.framing == Framing::Empty && idempotent;
        if let Some(mut conn) = self.checkout(addr) {
            match exchange(&mut conn, out, &mut body, head_request).await {
                Ok(head) => return Ok(self.respond(addr, conn, head)),
                // The head never went out (the connection had closed): safe to send again.
                Err(Failed::NotSent(e)) => {
                    tracing::debug!(upstream = %addr, error = %e, "reused connection refused the request; retrying");
                }
                Err(Failed::Exchange(e)) if replayable && e.closed_early() => {
                    tracing::debug!(upstream = %addr, error = %e, "reused connection closed; replaying once");
                }
                Err(Failed::Exchange(e)) => return Err(SendError::Upstream(e)),
            }
        }
        let mut conn = self.connect(addr).await?;
        match exchange(&mut conn, out, &mut body, head_request).await {
            Ok(head) => Ok(self.respond(addr, conn, head)),
            Err(Failed::NotSent(e)) => Err(SendError::Upstream(e.into())),
            Err(Failed::Exchange(e)) => Err(SendError::Upstream(e)),
        }
    }

    fn respond(&self, addr: SocketAddr, conn: Conn, head: h1::Head) -> (h1::Head, UpstreamBody) {
        let home = Home {
            pool: self.clone(),
            addr,
        };
        let body = h1::Body::new(conn, head.framing, head.reusable, home);
        (head, body)
    }

    /// An idle connection to `addr` that still looks usable, dropping stale ones on the way.
    fn checkout(&self, addr: SocketAddr) -> Option<Conn> {
        let mut idle = self.0.idle.lock().unwrap_or_else(|p| p.into_inner());
        let list = idle.get_mut(&addr)?;
        // From the back, where check-ins go: the most recently used first, the least likely
        // to have been closed by the upstream's idle timeout.
        while let Some(c) = list.pop() {
            if c.since.elapsed() < self.0.config.idle_timeout && c.conn.is_usable() {
                return Some(c.conn);
            }
        }
        None
    }

    /// Returns an idle `conn` to the pool, unless the instance already has `max_per_instance`
    /// idle connections (then it closes).
    fn checkin(&self, addr: SocketAddr, mut conn: Conn) {
        conn.shrink();
        let mut idle = self.0.idle.lock().unwrap_or_else(|p| p.into_inner());
        let list = idle.entry(addr).or_default();
        if list.len() < self.0.config.max_per_instance {
            list.push(Idle {
                conn,
                since: Instant::now(),
            });
        }
    }

    async fn connect(&self, addr: SocketAddr) -> Result<Conn, SendError> {
        let timeout = self.0.config.connect_timeout;
        let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| SendError::ConnectTimeout(timeout))?
            .map_err(SendError::Connect)?;
        let _ = stream.set_nodelay(true);
        Ok(Conn::new(stream, self.0.config.buffer_size))
    }

    /// Closes idle connections older than the idle timeout, or closed by the upstream.
    fn sweep(&self) {
        let timeout = self.0.config.idle_timeout;
        let mut idle = self.0.idle.lock().unwrap_or_else(|p| p.into_inner());
        idle.retain(|_, list| {
            list.retain(|c| c.since.elapsed() < timeout && c.conn.is_usable());
            !list.is_empty()
        });
    }

    /// Sweeps every half idle timeout until `shutdown` fires.
    pub async fn run_sweeper(self, mut shutdown: Shutdown) {
        let every = (self.0.config.idle_timeout / 2).max(Duration::from_millis(100));
        loop {
            tokio::select! {
                biased;
                _ = shutdown.recv() => break,
                _ = tokio::time::sleep(every) => self.sweep(),
            }
        }
    }
}

/// An encoded request head and how its body follows.
struct Outgoing<'a> {
    /// The head, kept to write it again on a fresh connection if a reused one fails.
    head: &'a [u8],
    /// How the body is framed ([`Framing::Empty`]: nothing follows the head).
    framing: Framing,
}

/// How an exchange failed.
enum Failed {
    /// Writing the request head failed: nothing of the request reached the upstream.
    NotSent(std::io::Error),
    /// The request went out (or its body is streaming) but no valid response head came back.
    Exchange(ProtoError),
}

/// Writes the request head, starts the body upload if there is one, and reads the response
/// head. `body` stays untouched when the head could not be written.
async fn exchange<B>(
    conn: &mut Conn,
    out: &Outgoing<'_>,
    body: &mut Option<B>,
    head_request: bool,
) -> Result<h1::Head, Failed>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    conn.write_head(out.head).await.map_err(Failed::NotSent)?;
    if out.framing != Framing::Empty {
        if let Some(body) = body.take() {
            conn.upload(body, out.framing);
        }
    }
    conn.read_head(head_request).await.map_err(Failed::Exchange)
}

/// Methods whose requests may be sent a second time (RFC 9110 §9.2.2).
pub fn idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::DELETE | Method::PUT
    )
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
