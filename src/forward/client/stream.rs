//! What an upstream connection runs over: plain TCP, or TLS over TCP ([`Stream`]), and the
//! idle-liveness probe of each ([`Transport`]).
//!
//! One enum rather than a type parameter on the pool: a pool holds connections of one service,
//! which all speak the same, and a match per poll costs less than a second copy of the client
//! code (and of its instruction cache footprint) per stream type.

use std::io::{self, IoSlice, Read};
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// A stream an upstream connection can run over.
pub trait Transport: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// Whether an idle connection still looks open: no end of stream, error or unexpected
    /// bytes reported since its last response. Must not block, and should cost no system call
    /// in the common case (checked at every checkout).
    fn is_idle_open(&mut self) -> bool;
}

impl Transport for TcpStream {
    #[inline]
    fn is_idle_open(&mut self) -> bool {
        match readable(self) {
            None => false,
            Some(false) => true,
            // Readiness is left set after a read that filled the buffer exactly: one probe.
            Some(true) => {
                let mut probe = [0u8; 1];
                matches!(self.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
        }
    }
}

/// Whether `tcp` reports bytes (or an end) to read: `None` on a socket error.
fn readable(tcp: &TcpStream) -> Option<bool> {
    let mut cx = Context::from_waker(Waker::noop());
    match tcp.poll_read_ready(&mut cx) {
        Poll::Pending => Some(false),
        Poll::Ready(Err(_)) => None,
        Poll::Ready(Ok(())) => Some(true),
    }
}

impl Transport for TlsStream<TcpStream> {
    /// Bytes on an idle TLS connection may be no data at all: a TLS 1.3 server sends its
    /// session tickets after the handshake, whenever it likes. So the records that arrived are
    /// handed to rustls (never read as application data): tickets are absorbed, a
    /// `close_notify` or an end of stream marks the connection dead, and so does any
    /// application data (an HTTP/1 upstream has nothing to say between responses).
    #[inline]
    fn is_idle_open(&mut self) -> bool {
        let (tcp, tls) = self.get_mut();
        loop {
            match readable(tcp) {
                None => return false,
                Some(false) => break,
                Some(true) => {}
            }
            match tls.read_tls(&mut NonBlocking(tcp)) {
                Ok(0) => return false,
                Ok(_) => {
                    if tls.process_new_packets().is_err() {
                        return false;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => return false,
            }
        }
        let mut probe = [0u8; 1];
        matches!(tls.reader().read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }
}

/// A TCP stream read without waiting (tokio's `try_read`), for rustls's synchronous reads.
struct NonBlocking<'a>(&'a TcpStream);

impl Read for NonBlocking<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.try_read(buf)
    }
}

/// An upstream connection's stream: TCP, or TLS over TCP.
pub enum Stream {
    /// Plain TCP.
    Tcp(TcpStream),
    /// TLS over TCP (boxed: rustls's connection state is large, TCP streams are the many).
    Tls(Box<TlsStream<TcpStream>>),
}

impl Stream {
    /// The ALPN protocol the peer chose, if any (always none over TCP).
    pub fn alpn(&self) -> Option<&[u8]> {
        match self {
            Stream::Tcp(_) => None,
            Stream::Tls(s) => s.get_ref().1.alpn_protocol(),
        }
    }
}

impl Transport for Stream {
    #[inline]
    fn is_idle_open(&mut self) -> bool {
        match self {
            Stream::Tcp(s) => s.is_idle_open(),
            Stream::Tls(s) => s.is_idle_open(),
        }
    }
}

impl AsyncRead for Stream {
    #[inline]
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    #[inline]
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    #[inline]
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    #[inline]
    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Tcp(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }

    #[inline]
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
