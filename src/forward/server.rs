//! The app side of forwarding: the listeners' accept loops and each connection's life — the
//! connection timeouts of every listener (README, "HTTP/1 policy"), HTTP/1 served by one loop
//! of our own ([`http1`]), HTTP/2 with prior knowledge (h2c) by hyper's h2 server ([`h2`]),
//! told apart once, at the connection's start, by its first bytes. There is no hand-over in
//! the middle of a connection.

pub(crate) mod h2;
pub(crate) mod http1;
pub(crate) mod io;
mod respond;
mod source;
mod timer;
mod tunnel;

pub use tunnel::Tunnels;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::h1::request::Limits;
use super::route::Listener;
use super::Proxy;
use crate::config::{ClientConfig, Http2Config, UpstreamConfig};
use crate::shutdown::Shutdown;
use crate::tls::{Acceptor, Reason, ALPN_H2};
use http1::{Http1, Stop};
use io::AppIo;
use timer::{Deadline, Drain};

/// The client preface of HTTP/2 with prior knowledge (RFC 9113 §3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How app connections are served: `client:` and the buffer size, parsed once.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `client.header_timeout`.
    pub header_timeout: Duration,
    /// `client.idle_timeout`.
    pub idle_timeout: Duration,
    /// `client.body_timeout`.
    pub body_timeout: Duration,
    /// `client.max_head_size` and `client.max_headers`.
    pub limits: Limits,
    /// `upstream.buffer_size`: the most one read of a body asks for.
    pub buffer_size: usize,
    /// `client.http2`.
    pub http2: Http2Config,
    /// `client.http2.max_header_list_size`, or `client.max_head_size`.
    pub http2_max_header_list_size: usize,
    /// Where upgraded connections are counted.
    pub tunnels: Tunnels,
}

impl Settings {
    /// The settings `client` and `upstream` describe.
    pub fn from_config(client: &ClientConfig, upstream: &UpstreamConfig) -> Self {
        Self {
            header_timeout: client.header_timeout.0,
            idle_timeout: client.idle_timeout.0,
            body_timeout: client.body_timeout.0,
            limits: Limits {
                max_head_size: client.max_head_size.0,
                max_headers: client.max_headers,
            },
            buffer_size: upstream.buffer_size,
            http2: client.http2.clone(),
            http2_max_header_list_size: client.http2_max_header_list_size(),
            tunnels: Tunnels::default(),
        }
    }
}

/// The app connections open on every listener, and the most since memory was last given back.
///
/// A flood of connections (10,000 silent ones, say) leaves the allocator's heap fragmented when
/// they close: a few allocations made meanwhile sit above the freed memory, so glibc cannot
/// shrink its heap, and the memory stays counted against the process. So when the open
/// connections have halved from a high-water mark of at least [`Self::FLOOD`], the connection
/// whose end made it so asks the allocator to return its free pages (`malloc_trim`, a few
/// milliseconds for a heap of tens of MiB). Steady traffic never comes near it.
#[derive(Default)]
pub(crate) struct OpenConnections {
    open: AtomicUsize,
    high: AtomicUsize,
}

impl OpenConnections {
    /// High-water marks below this are not worth a trim.
    const FLOOD: usize = 1024;

    fn opened(&self) {
        let open = self.open.fetch_add(1, Ordering::Relaxed) + 1;
        self.high.fetch_max(open, Ordering::Relaxed);
    }

    /// A connection ended; `true` when memory was given back because of it.
    fn closed(&self) -> bool {
        let open = self.open.fetch_sub(1, Ordering::Relaxed) - 1;
        let high = self.high.load(Ordering::Relaxed);
        let trim = high >= Self::FLOOD
            && open <= high / 2
            && self
                .high
                .compare_exchange(high, open, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok();
        if trim {
            give_memory_back();
        }
        trim
    }
}

/// Returns the allocator's free memory to the system, where the allocator can (glibc).
fn give_memory_back() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn malloc_trim(pad: usize) -> std::ffi::c_int;
        }
        // SAFETY: malloc_trim takes no pointer and has no precondition; it only releases free
        // pages of glibc's own heaps.
        unsafe {
            malloc_trim(0);
        }
    }
}

/// What every connection of one listener shares.
struct Shared {
    proxy: Arc<Proxy>,
    kind: Arc<Listener>,
    h2: h2::Builder,
    /// TLS termination, on a listener with `listen_tls`.
    tls: Option<Arc<Acceptor>>,
}

/// Accepts connections on `listener` until `stop` fires, serving each with `proxy`. Each
/// connection task holds a clone of `drained`; once every task has finished, the receiving end
/// sees the channel close. On `drain`, connections finish their in-flight requests and close.
pub async fn serve(
    listener: TcpListener,
    kind: Listener,
    tls: Option<Arc<Acceptor>>,
    proxy: Arc<Proxy>,
    mut stop: Shutdown,
    drain: Shutdown,
    drained: mpsc::Sender<()>,
) {
    let label = match &kind {
        Listener::Outbound(_) => "outbound".to_string(),
        Listener::Service(name, _) => format!("service:{name}"),
    };
    let open = proxy.metrics.connections(&label);
    let shared = Arc::new(Shared {
        h2: h2::builder(&proxy.settings),
        proxy,
        kind: Arc::new(kind),
        tls,
    });
    loop {
        // A slot first: at `limits.max_connections` accepting pauses (connections wait in the
        // backlog) until one closes.
        let slot = tokio::select! {
            biased;
            _ = stop.recv() => break,
            slot = shared.proxy.slots.take() => slot,
        };
        let (stream, _peer) = tokio::select! {
            biased;
            _ = stop.recv() => break,
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(listener = %label, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let (shared, drain, done, open) =
            (shared.clone(), drain.clone(), drained.clone(), open.clone());
        tokio::spawn(async move {
            open.inc();
            shared.proxy.open.opened();
            connection(stream, &shared, drain).await;
            shared.proxy.open.closed();
            open.dec();
            drop(slot);
            drop(done);
        });
    }
    tracing::debug!(listener = %label, "stopped accepting");
}

/// One app connection, from accept to close. Until its first bytes arrive it holds no buffer;
/// if none arrive within `client.header_timeout` (or the drain comes first), it closes
/// silently.
async fn connection(stream: TcpStream, shared: &Shared, drain: Shutdown) {
    if let Some(tls) = &shared.tls {
        return Box::pin(tls_connection(stream, tls, shared, drain)).await;
    }
    let settings = &shared.proxy.settings;
    let first = Instant::now() + settings.header_timeout;
    let mut timer = Deadline::default();
    let mut drain = Drain::new(drain);
    // Each protocol's future is allocated once bytes arrive: until then a connection costs
    // only this small one (10,000 silent connections must cost little).
    match sniff(&stream, &mut timer, first, Some(&mut drain)).await {
        None => {}
        Some(true) => Box::pin(h2::serve(stream, shared, drain)).await,
        Some(false) => Box::pin(http1(Http1::new(stream, timer), shared, first, drain)).await,
    }
}

/// One app connection on a TLS listener: the handshake under `client.header_timeout` (a
/// drain ends it too), then HTTP/2 when ALPN chose `h2`, else the HTTP/1 loop over the TLS
/// stream, whose first head has a `client.header_timeout` of its own.
async fn tls_connection(stream: TcpStream, tls: &Acceptor, shared: &Shared, drain: Shutdown) {
    let settings = &shared.proxy.settings;
    let mut drain = Drain::new(drain);
    let until = Instant::now() + settings.header_timeout;
    let stream = tokio::select! {
        accepted = tokio::time::timeout_at(until, tls.accept(stream)) => match accepted {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "TLS handshake with an app failed");
                return;
            }
            Err(_) => {
                tls.failed(Reason::Other);
                tracing::debug!("TLS handshake with an app did not finish in time");
                return;
            }
        },
        _ = drain.fired() => return,
    };
    if stream.get_ref().1.alpn_protocol() == Some(ALPN_H2) {
        return h2::serve(stream, shared, drain).await;
    }
    let first = Instant::now() + settings.header_timeout;
    http1(
        Http1::new(stream, Deadline::default()),
        shared,
        first,
        drain,
    )
    .await;
}

/// Serves HTTP/1 requests on `conn` until it closes.
async fn http1<S: AppIo>(mut conn: Http1<S>, shared: &Shared, first: Instant, mut drain: Drain) {
    let proxy = &shared.proxy;
    let mut first = Some(first);
    loop {
        let req = match conn
            .read_head(&proxy.settings, first.take(), &mut drain)
            .await
        {
            Ok(req) => req,
            Err(Stop::Quiet) => return,
            Err(Stop::Reject(e)) => return proxy.refuse(conn, e.into()).await,
            Err(Stop::HeadTimeout) => {
                let e =
                    super::ForwardError::RequestTimeout("the request head did not arrive in time");
                return proxy.refuse(conn, e).await;
            }
        };
        if !proxy.serve_h1(&mut conn, req, &shared.kind).await {
            return conn.close().await;
        }
    }
}

/// Whether a connection's first bytes start HTTP/2's preface (`Some(true)`), or anything else
/// (`Some(false)`); `None` when nothing came by `until` or the connection ended. Nothing is
/// consumed. For listeners outside forwarding (the admin one) that serve both protocols.
pub async fn sniff_h2c(stream: &TcpStream, until: Instant) -> Option<bool> {
    sniff(stream, &mut Deadline::default(), until, None).await
}

/// Waits for the connection's first bytes and tells whether they start HTTP/2's preface
/// (`Some(true)`), or anything else (`Some(false)`: HTTP/1, which the HTTP/1 loop checks);
/// `None` when nothing came in time, the app closed, or the drain fired. The bytes are peeked
/// at, not read: whichever server takes the connection reads them itself.
async fn sniff(
    stream: &TcpStream,
    timer: &mut Deadline,
    until: Instant,
    mut drain: Option<&mut Drain>,
) -> Option<bool> {
    let mut seen = [0u8; 24];
    // A preface split over several packets is rare: wait for the rest, backing off.
    let mut pause = Duration::from_millis(1);
    loop {
        let peeked = std::future::poll_fn(|cx| {
            let mut buf = tokio::io::ReadBuf::new(&mut seen);
            match stream.poll_peek(cx, &mut buf) {
                Poll::Ready(Ok(n)) => Poll::Ready(Some(n)),
                Poll::Ready(Err(_)) => Poll::Ready(None),
                Poll::Pending if timer.poll_at(cx, until).is_ready() => Poll::Ready(None),
                Poll::Pending if drain.as_mut().is_some_and(|d| d.poll(cx).is_ready()) => {
                    Poll::Ready(None)
                }
                Poll::Pending => Poll::Pending,
            }
        })
        .await;
        let n = match peeked {
            None | Some(0) => return None,
            Some(n) => n,
        };
        if seen[..n] != H2_PREFACE[..n] {
            return Some(false);
        }
        if n == H2_PREFACE.len() {
            return Some(true);
        }
        let later = Instant::now() + pause;
        if later >= until {
            return None;
        }
        tokio::time::sleep_until(later).await;
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_is_given_back_as_a_flood_of_connections_ends() {
        let c = OpenConnections::default();
        // Steady traffic under the flood mark never trims.
        for _ in 0..1000 {
            c.opened();
        }
        assert!(!(0..1000).any(|_| c.closed()));
        // 10,000 at once, then all closing: a trim at each halving while the mark is a flood.
        for _ in 0..10_000 {
            c.opened();
        }
        let trims: Vec<usize> = (0..10_000)
            .filter(|_| c.closed())
            .map(|_| c.open.load(Ordering::Relaxed))
            .collect();
        assert_eq!(trims, [5000, 2500, 1250, 625]);
    }
}
