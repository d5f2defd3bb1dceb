//! After a `101 Switching Protocols`: the app's connection and the upstream's, joined both ways
//! (WebSocket and other upgrades over HTTP/1.1). Bytes that came with the request head or with
//! the `101` go first; then each side's reads are written to the other until both have ended
//! (an end on one side is passed on as a write shutdown of the other, so a close handshake of
//! the new protocol completes), or until nothing moved for `client.idle_timeout`.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use prometheus::{IntCounter, IntGauge};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::Instant;

/// The upgraded-connection series: open now, and ever.
#[derive(Debug, Clone)]
pub struct Tunnels {
    /// `waypost_forward_upgrades_open`.
    pub open: IntGauge,
    /// `waypost_forward_upgrades_total`.
    pub total: IntCounter,
}

impl Default for Tunnels {
    /// Series registered nowhere (settings built without metrics, in tests).
    fn default() -> Self {
        Self {
            open: IntGauge::new("waypost_forward_upgrades_open", "unregistered").expect("valid"),
            total: IntCounter::new("waypost_forward_upgrades_total", "unregistered")
                .expect("valid"),
        }
    }
}

/// Joins `app` and `up` until both directions ended or `idle` passed without a byte moving.
/// `app_early`: what the app sent after its request head; `up_early`: what the upstream sent
/// after its `101`.
pub(super) async fn join<A, B>(
    app: &mut A,
    app_early: &[u8],
    up: &mut B,
    up_early: &[u8],
    idle: Duration,
    tunnels: &Tunnels,
) -> io::Result<()>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    tunnels.total.inc();
    tunnels.open.inc();
    let _open = Open(&tunnels.open);
    if !up_early.is_empty() {
        app.write_all(up_early).await?;
        app.flush().await?;
    }
    if !app_early.is_empty() {
        up.write_all(app_early).await?;
        up.flush().await?;
    }
    let last = LastRead::new();
    let mut a = Active {
        io: app,
        last: &last,
    };
    let mut b = Active {
        io: up,
        last: &last,
    };
    let copy = tokio::io::copy_bidirectional(&mut a, &mut b);
    tokio::pin!(copy);
    loop {
        let until = last.get() + idle;
        tokio::select! {
            done = &mut copy => return done.map(|_| ()),
            _ = tokio::time::sleep_until(until) => {
                if last.get() + idle <= Instant::now() {
                    return Err(io::Error::new(io::ErrorKind::TimedOut, "upgraded connection idle"));
                }
            }
        }
    }
}

/// When either side last read bytes, in milliseconds from the tunnel's start (an atomic: the
/// connection's future must be `Send`).
struct LastRead {
    start: Instant,
    ms: AtomicU64,
}

impl LastRead {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            ms: AtomicU64::new(0),
        }
    }

    fn get(&self) -> Instant {
        self.start + Duration::from_millis(self.ms.load(Ordering::Relaxed))
    }

    fn touch(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.ms.store(ms, Ordering::Relaxed);
    }
}

/// Takes one off the open gauge when the tunnel ends, however it ends.
struct Open<'a>(&'a IntGauge);

impl Drop for Open<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// A stream that notes when it last read bytes (for the idle timeout).
struct Active<'a, S> {
    io: &'a mut S,
    last: &'a LastRead,
}

impl<S: AsyncRead + Unpin> AsyncRead for Active<'_, S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut *self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.last.touch();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Active<'_, S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.io).poll_shutdown(cx)
    }
}
