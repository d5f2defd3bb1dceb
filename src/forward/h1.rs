//! Our side of HTTP/1.1 towards upstreams (RFC 9112): one connection, the request head we write,
//! the response head we read and how its body is framed. [`body`] streams the response body
//! and hands the connection back to the pool when the body has ended cleanly; [`upload`]
//! streams a request body beside it.
//!
//! Why not hyper's `client::conn::http1`: it runs every connection as a task of its own and
//! passes each request and response through channels to it (an mpsc send, a oneshot, a body
//! channel and a task wake-up per request), and its connection becomes reusable only once that
//! task has finished the previous body. Here the request's own task writes the head, parses the
//! response head and reads the body; a connection is back in the pool the moment its body ends.
//! Callgrind put hyper's client half at about a third of waypost's instructions per request
//! (bench/FINDINGS.md).

pub mod body;
pub mod chunked;
pub mod fields;
pub mod framing;
mod head;
pub mod request;
pub mod response;
pub mod upload;
pub mod write;

use std::future::Future as _;
use std::io;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use bytes::BytesMut;
use http::header::{self, HeaderValue};
use http::Method;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub use body::Body;
pub use head::Head;
use head::{parse_head, Parsed};
use upload::Upload;

use super::headers;

/// Most headers accepted in a response head (hyper's limit too).
const MAX_HEADERS: usize = 100;
/// Bytes a read asks for while a head is expected; the body reads ask for the buffer limit.
const HEAD_READ: usize = 8 * 1024;

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
    /// The response head is not valid HTTP/1.x.
    #[error("invalid response head: {0}")]
    Parse(httparse::Error),
    /// The response head did not fit in the read buffer (`upstream.buffer_size`).
    #[error("response head larger than {0} bytes")]
    HeadTooLarge(usize),
    /// A response that parses but that HTTP/1.1 does not allow, or that we cannot forward.
    #[error("invalid response: {0}")]
    Invalid(&'static str),
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

/// How a message's body is delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body at all.
    Empty,
    /// `Content-Length` bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Everything until the upstream closes (responses only).
    Close,
}

/// The socket of an upstream connection: whole, or split while a request body is uploaded.
enum Io {
    Whole(TcpStream),
    Split(tokio::net::tcp::OwnedReadHalf, Upload),
    /// Only while switching between the two.
    Gone,
}

/// One HTTP/1.1 connection to an upstream instance, with its read buffer.
pub struct Conn {
    io: Io,
    buf: BytesMut,
    /// Largest read buffer (and response head): `upstream.buffer_size`.
    limit: usize,
}

impl Conn {
    /// A connection over `io` that reads at most `limit` bytes at a time and refuses response
    /// heads larger than that.
    pub fn new(io: TcpStream, limit: usize) -> Self {
        Self {
            io: Io::Whole(io),
            buf: BytesMut::new(),
            limit,
        }
    }

    /// Whether an idle connection can take a request: nothing buffered, and no readiness
    /// reported since its last response (an EOF, or bytes nobody asked for). Costs no system
    /// call unless the last read filled the buffer exactly, which leaves the readiness set.
    pub fn is_usable(&self) -> bool {
        let Io::Whole(io) = &self.io else {
            return false;
        };
        if !self.buf.is_empty() {
            return false;
        }
        let mut cx = Context::from_waker(Waker::noop());
        match io.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            Poll::Ready(Ok(())) => {
                let mut probe = [0u8; 1];
                matches!(io.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
        }
    }

    /// Lets go of a large read buffer before the connection idles in the pool, so idle
    /// connections hold at most a head-sized buffer each (body reads grow it to `limit`).
    pub fn shrink(&mut self) {
        if self.buf.is_empty() && self.buf.capacity() > 2 * HEAD_READ {
            self.buf = BytesMut::new();
        }
    }

    /// Writes a request head (and nothing else).
    pub async fn write_head(&mut self, head: &[u8]) -> io::Result<()> {
        match &mut self.io {
            Io::Whole(io) => io.write_all(head).await,
            _ => Err(io::Error::other("a request is already in flight")),
        }
    }

    /// Starts streaming `body` to the upstream beside the response, framed as `framing`.
    pub fn upload<B>(&mut self, body: B, framing: Framing)
    where
        B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        self.io = match std::mem::replace(&mut self.io, Io::Gone) {
            Io::Whole(io) => {
                let (rd, wr) = io.into_split();
                Io::Split(rd, Upload::spawn(wr, body, framing))
            }
            other => other,
        };
    }

    /// Reads the final response head, skipping interim (1xx) ones. `head_request`: the request
    /// was HEAD, so the response has no body whatever its headers say.
    pub async fn read_head(&mut self, head_request: bool) -> Result<Head, ProtoError> {
        let mut received = false;
        loop {
            if !self.buf.is_empty() {
                received = true;
                match parse_head(&mut self.buf, head_request)? {
                    Parsed::Final(head) => return Ok(head),
                    Parsed::Interim => continue,
                    Parsed::Partial if self.buf.len() >= self.limit => {
                        return Err(ProtoError::HeadTooLarge(self.limit))
                    }
                    Parsed::Partial => {}
                }
            }
            if self.fill(HEAD_READ).await? == 0 {
                return Err(if received {
                    ProtoError::Truncated
                } else {
                    ProtoError::Closed
                });
            }
        }
    }

    /// Reads once into the buffer, asking for about `want` bytes; `Ok(0)` at end of stream.
    async fn fill(&mut self, want: usize) -> io::Result<usize> {
        std::future::poll_fn(|cx| self.poll_fill(cx, want)).await
    }

    /// [`Conn::fill`] as a poll function, for the body.
    fn poll_fill(&mut self, cx: &mut Context<'_>, want: usize) -> Poll<io::Result<usize>> {
        let want = want.min(self.limit).max(1024);
        if self.buf.capacity() - self.buf.len() < want / 4 {
            self.buf.reserve(want);
        }
        // `read_buf` keeps no state between polls: a fresh one per poll is the same future.
        match &mut self.io {
            Io::Whole(io) => pin!(io.read_buf(&mut self.buf)).poll(cx),
            Io::Split(rd, _) => pin!(rd.read_buf(&mut self.buf)).poll(cx),
            Io::Gone => Poll::Ready(Err(io::Error::other("connection gone"))),
        }
    }

    /// This connection whole again once a response has ended, or `None` while its request body
    /// is still being uploaded (the upstream answered early): such a connection is not reused.
    fn reclaim(self) -> Option<Conn> {
        let io = match self.io {
            Io::Whole(io) => io,
            Io::Split(rd, upload) => rd.reunite(upload.finished()?).ok()?,
            Io::Gone => return None,
        };
        Some(Conn {
            io: Io::Whole(io),
            buf: self.buf,
            limit: self.limit,
        })
    }
}

/// Encodes the request head (origin-form target, HTTP/1.1, hop-by-hop headers left out) and
/// settles its body framing: `Content-Length` when the body's length is known,
/// `Transfer-Encoding: chunked` when it is not, nothing for no body — except
/// `Content-Length: 0` for methods that define a body, which some servers require (RFC 9110
/// §8.6). Framing headers from the app are replaced, as the app's framing belonged to its own
/// hop. The head goes into `head` (cleared first); the framing is returned.
pub fn encode_request<B: http_body::Body>(
    parts: &mut http::request::Parts,
    body: &B,
    head: &mut Vec<u8>,
) -> Framing {
    let framing = if body.is_end_stream() {
        Framing::Empty
    } else {
        match body.size_hint().exact() {
            Some(n) => Framing::Length(n),
            None => Framing::Chunked,
        }
    };
    let headers = &mut parts.headers;
    if framing != Framing::Chunked {
        headers.remove(header::TRANSFER_ENCODING);
    }
    match framing {
        Framing::Length(n) => {
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
        }
        Framing::Chunked => {
            headers.remove(header::CONTENT_LENGTH);
            if !headers.contains_key(header::TRANSFER_ENCODING) {
                headers.insert(
                    header::TRANSFER_ENCODING,
                    HeaderValue::from_static("chunked"),
                );
            }
        }
        Framing::Empty | Framing::Close => {
            if defines_body(&parts.method) && !headers.contains_key(header::CONTENT_LENGTH) {
                headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
            }
        }
    }
    let (_, named) = headers::connection_tokens(headers::connection_values(&parts.headers));
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    head.clear();
    request_line(head, &parts.method, target);
    for (name, value) in parts.headers.iter() {
        if !headers::is_hop_by_hop(name) && !named.contains(name) {
            field(head, name.as_str().as_bytes(), value.as_bytes());
        }
    }
    head.extend_from_slice(b"\r\n");
    framing
}

/// Whether a request with this method and no body still goes out with `Content-Length: 0`: the
/// methods that define a body, whose length some servers require (RFC 9110 §8.6).
pub fn defines_body(method: &Method) -> bool {
    matches!(*method, Method::POST | Method::PUT | Method::PATCH)
}

/// `METHOD target HTTP/1.1` and its CRLF: every request goes upstream as HTTP/1.1.
pub fn request_line(out: &mut Vec<u8>, method: &Method, target: &str) {
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
}

/// One `name: value` field line and its CRLF.
pub fn field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
#[path = "h1/tests.rs"]
mod tests;
