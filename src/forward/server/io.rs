//! What an app connection runs over ([`AppIo`]): plain TCP, or TLS over TCP on a listener with
//! `listen_tls`. The HTTP/1 loop is generic over it; TCP keeps its free borrowed halves and its
//! readiness check (which lets an idle connection hold no buffer), TLS splits through tokio's
//! lock (one uncontended lock per poll, in the connection's own task) and has its buffers
//! taken at once (rustls may hold plaintext already that the socket's readiness cannot show).

use std::io;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadHalf, WriteHalf};
use tokio::net::{tcp, TcpStream};
use tokio_rustls::server::TlsStream;

/// A stream an app connection is served over.
pub(crate) trait AppIo: AsyncRead + AsyncWrite + Unpin + Send {
    /// The read half of [`AppIo::split`].
    type Rd<'a>: AsyncRead + Unpin + Send
    where
        Self: 'a;
    /// The write half of [`AppIo::split`].
    type Wr<'a>: AsyncWrite + Unpin + Send
    where
        Self: 'a;

    /// Read and write halves usable at once in the connection's task.
    fn split(&mut self) -> (Self::Rd<'_>, Self::Wr<'_>);

    /// Ready once bytes may be read (a hint: a read may still find nothing).
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
}

impl AppIo for TcpStream {
    type Rd<'a> = tcp::ReadHalf<'a>;
    type Wr<'a> = tcp::WriteHalf<'a>;

    fn split(&mut self) -> (Self::Rd<'_>, Self::Wr<'_>) {
        TcpStream::split(self)
    }

    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        TcpStream::poll_read_ready(self, cx)
    }
}

impl AppIo for TlsStream<TcpStream> {
    type Rd<'a> = ReadHalf<&'a mut TlsStream<TcpStream>>;
    type Wr<'a> = WriteHalf<&'a mut TlsStream<TcpStream>>;

    fn split(&mut self) -> (Self::Rd<'_>, Self::Wr<'_>) {
        tokio::io::split(self)
    }

    fn poll_read_ready(&self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
