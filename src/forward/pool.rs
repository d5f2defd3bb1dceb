//! The upstream connection pool: keep-alive HTTP/1.1 connections per instance address, over
//! hyper's low-level `client::conn::http1`.
//!
//! Why not hyper-util's pooled client: it keys its pool by URI authority (so every request
//! formats and parses an `ip:port` string and SipHashes it), wraps each checkout in several
//! futures and moves them around — together about a fifth of waypost's per-request
//! instructions (see bench/RESULTS.md). Here a checkout is one short, uncontended mutex section
//! over a map keyed by `SocketAddr` with a cheap hash, and the request goes out in origin form
//! with no URI rewriting.
//!
//! A sender is put back into the pool as soon as the request is handed to its connection; it
//! reports itself not ready until that response's body has been read to the end, and checkout
//! skips it until then.
//!
//! Reused connections race with the upstream's own idle timeout. A request a pooled connection
//! did not accept is retried once on a fresh connection: it was never sent. A request that was
//! sent but whose connection closed before any response is retried once only when it is
//! idempotent and has no body (RFC 9110 §9.2.2 allows automatic retries of idempotent
//! requests), which is the common case of a GET on a connection the upstream just closed.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body::Body as _;
use http_body_util::{Either, Empty};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;

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
    /// The HTTP/1.1 handshake on a new connection failed.
    #[error("handshake failed: {0}")]
    Handshake(#[source] hyper::Error),
    /// The connection broke while the request was being sent or before the response head.
    #[error("{0}")]
    Upstream(#[source] hyper::Error),
}

impl SendError {
    /// Whether the failure happened while connecting (nothing was sent).
    pub fn is_connect(&self) -> bool {
        matches!(
            self,
            SendError::Connect(_) | SendError::ConnectTimeout(_) | SendError::Handshake(_)
        )
    }
}

/// The body of a request sent upstream: the app's, streamed, or empty for a replay.
pub type UpstreamBody = Either<Incoming, Empty<Bytes>>;

type Sender = http1::SendRequest<UpstreamBody>;

/// One pooled connection's sending half.
struct Pooled {
    tx: Sender,
    /// When it was last handed a request (for the idle timeout).
    used: Instant,
}

/// Settings of a [`Pool`].
#[derive(Debug, Clone, Copy)]
pub struct PoolConfig {
    /// TCP connect timeout.
    pub connect_timeout: Duration,
    /// Idle connections older than this are closed.
    pub idle_timeout: Duration,
    /// Connections kept per instance.
    pub max_per_instance: usize,
    /// Largest read buffer per connection.
    pub buffer_size: usize,
}

type Map = HashMap<SocketAddr, Vec<Pooled>, BuildHasherDefault<AddrHasher>>;

/// Keep-alive connections to upstream instances. Cheap to clone; clones share connections.
#[derive(Clone)]
pub struct Pool {
    /// Written at checkout and check-in by request tasks, and by [`Pool::sweep`]; held for a
    /// few instructions only, never across an await.
    conns: Arc<Mutex<Map>>,
    config: PoolConfig,
}

impl Pool {
    /// An empty pool.
    pub fn new(config: PoolConfig) -> Self {
        Self {
            conns: Arc::default(),
            config,
        }
    }

    /// A pool with `upstream:`'s settings and `connect_timeout` (global or a service's own).
    pub fn from_config(cfg: &UpstreamConfig, connect_timeout: Duration) -> Self {
        Self::new(PoolConfig {
            connect_timeout,
            idle_timeout: cfg.idle_timeout.0,
            max_per_instance: cfg.max_idle_per_instance,
            buffer_size: cfg.buffer_size,
        })
    }

    /// Sends `req` (origin-form URI, `Host` set) to `addr` and resolves to the response head.
    pub async fn send(
        &self,
        addr: SocketAddr,
        req: Request<Incoming>,
    ) -> Result<Response<Incoming>, SendError> {
        // A copy of the head, to replay a bodiless idempotent request once if a reused
        // connection turns out to be closing under us.
        let replay = replayable(&req).then(|| {
            let mut head = Request::new(());
            *head.method_mut() = req.method().clone();
            *head.uri_mut() = req.uri().clone();
            *head.version_mut() = req.version();
            *head.headers_mut() = req.headers().clone();
            head
        });
        let req = req.map(Either::Left);
        let req = match self.checkout(addr) {
            Some(mut tx) => {
                let sent = tx.try_send_request(req);
                self.checkin(addr, tx);
                match sent.await {
                    Ok(resp) => return Ok(resp),
                    Err(mut e) => match (e.take_message(), replay) {
                        // Not sent (the connection closed meanwhile): safe to send again.
                        (Some(req), _) => req,
                        // Sent, but the connection closed before any response.
                        (None, Some(head)) if closed_early(e.error()) => {
                            tracing::debug!(upstream = %addr, error = %e.error(), "reused connection closed; replaying once");
                            head.map(|()| Either::Right(Empty::new()))
                        }
                        (None, _) => return Err(SendError::Upstream(e.into_error())),
                    },
                }
            }
            None => req,
        };
        let mut tx = self.connect(addr).await?;
        let sent = tx.send_request(req);
        self.checkin(addr, tx);
        sent.await.map_err(SendError::Upstream)
    }

    /// A ready connection to `addr`, dropping closed ones on the way.
    fn checkout(&self, addr: SocketAddr) -> Option<Sender> {
        let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        let list = conns.get_mut(&addr)?;
        // From the back, where check-ins go: recently used connections first, the ones least
        // likely to have been closed by the upstream's idle timeout.
        let mut i = list.len();
        while i > 0 {
            i -= 1;
            if list[i].tx.is_closed() {
                list.swap_remove(i);
            } else if list[i].tx.is_ready() {
                return Some(list.swap_remove(i).tx);
            }
        }
        None
    }

    /// Returns `tx` to the pool (it may still be busy with a response), unless the instance
    /// already has `max_per_instance` connections, in which case it closes once its response
    /// is done.
    fn checkin(&self, addr: SocketAddr, tx: Sender) {
        let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        let list = conns.entry(addr).or_default();
        if list.len() < self.config.max_per_instance {
            list.push(Pooled {
                tx,
                used: Instant::now(),
            });
        }
    }

    async fn connect(&self, addr: SocketAddr) -> Result<Sender, SendError> {
        let stream = tokio::time::timeout(self.config.connect_timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| SendError::ConnectTimeout(self.config.connect_timeout))?
            .map_err(SendError::Connect)?;
        let _ = stream.set_nodelay(true);
        let (tx, conn) = http1::Builder::new()
            .max_buf_size(self.config.buffer_size)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(SendError::Handshake)?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(upstream = %addr, error = %e, "upstream connection ended with an error");
            }
        });
        Ok(tx)
    }

    /// Drops closed connections and idle ones older than the idle timeout.
    pub fn sweep(&self) {
        let now = Instant::now();
        let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        conns.retain(|_, list| {
            list.retain(|c| {
                let idle_too_long = c.tx.is_ready() && now - c.used > self.config.idle_timeout;
                !(c.tx.is_closed() || idle_too_long)
            });
            !list.is_empty()
        });
    }

    /// Sweeps every half idle timeout until `shutdown` fires.
    pub async fn run_sweeper(self, mut shutdown: Shutdown) {
        let every = (self.config.idle_timeout / 2).max(Duration::from_millis(100));
        loop {
            tokio::select! {
                biased;
                _ = shutdown.recv() => break,
                _ = tokio::time::sleep(every) => self.sweep(),
            }
        }
    }
}

/// Whether `req` may be sent a second time: an idempotent method and no body at all.
fn replayable(req: &Request<Incoming>) -> bool {
    matches!(
        *req.method(),
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::DELETE | Method::PUT
    ) && req.body().is_end_stream()
}

/// Whether a send failed because the connection closed before a response began: closed,
/// reset or a broken pipe (the upstream dropped it with our request unread).
fn closed_early(e: &hyper::Error) -> bool {
    use std::error::Error as _;
    let io_closed = e
        .source()
        .and_then(|s| s.downcast_ref::<std::io::Error>())
        .is_some_and(|io| {
            matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::ConnectionAborted
                    | std::io::ErrorKind::UnexpectedEof
            )
        });
    io_closed || e.is_incomplete_message() || e.is_closed() || e.is_canceled()
}

/// FxHash (rustc's hasher): a multiply and a rotate per word. Keys are socket addresses from
/// our own discovery, not attacker-chosen strings, so SipHash's flooding resistance buys
/// nothing here and costs ~100 instructions per lookup.
#[derive(Default)]
pub struct AddrHasher(u64);

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
