//! The bytes of the downstream loop: which request heads it serves ([`parse`]), the request head
//! it writes upstream, and the response heads it writes to the app.

use std::io::Write as _;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Method, Response, StatusCode};

use super::super::h1::{self, field, Framing, Head};
use super::super::{headers, pool, route, ForwardError, Proxy, ServiceHandle};
use crate::cache::Target;

/// Most fields in a request head served here; more go to hyper (which allows 100).
const MAX_HEADERS: usize = 64;

/// What the front of the read buffer holds.
pub(super) enum Parsed {
    /// Not a whole head yet.
    Partial,
    /// Something for hyper to serve (see the module docs of `downstream`).
    Hyper,
    /// A bodiless HTTP/1.x request this loop serves.
    Request(Request),
}

/// A request head checked and routed, ready to go upstream.
pub(super) struct Request {
    /// Length of the head in the read buffer.
    pub len: usize,
    /// The service it names, or why it names none.
    pub target: Result<Arc<Target<ServiceHandle>>, ForwardError>,
    /// A HEAD request (its response has no body).
    pub head_request: bool,
    /// Safe to send twice (RFC 9110 §9.2.2).
    pub idempotent: bool,
    /// What the response must say about the connection.
    pub reply: Reply,
}

/// The declared service the last request on a connection named, by the `Host` bytes that
/// named it. A connection nearly always names the same service again, and a declared target
/// never goes away (nor expires), so routing and the cache lookup are skipped when the bytes
/// match. On-demand targets, which can expire, are looked up every time.
#[derive(Default)]
pub(super) struct LastRoute {
    host: Vec<u8>,
    target: Option<Arc<Target<ServiceHandle>>>,
}

/// What a request's response must say about the connection.
#[derive(Clone, Copy)]
pub(super) struct Reply {
    /// The connection closes after the response: the app asked (HTTP/1.1 `Connection: close`,
    /// or HTTP/1.0 without `Connection: keep-alive`).
    pub close: bool,
    /// An HTTP/1.0 request: its response cannot be chunked, and keep-alive must be said.
    pub http10: bool,
    /// The app accepts trailer fields (`TE: trailers`); hyper sends none otherwise either.
    pub trailers: bool,
}

/// Parses the request head at the front of `buf` and routes it: a bodiless HTTP/1.x request
/// with an origin-form or `http://` absolute-form target, no `Transfer-Encoding`, `Expect` or
/// `Upgrade`, no `Content-Length` but 0, and a `Connection` header that names no other field.
/// For such a request, `head` receives the head to write upstream: origin-form target,
/// hop-by-hop fields left out, and a `Host` if the app sent none (the absolute-form target's
/// authority, or the service name).
pub(super) fn parse(
    buf: &[u8],
    proxy: &Proxy,
    listener: &route::Listener,
    last: &mut LastRoute,
    head: &mut Vec<u8>,
) -> Parsed {
    // Slots httparse fills: left uninitialized, which saves writing all of them per request.
    let mut slots = [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(buf, &mut slots) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Hyper,
    };
    let (Some(method), Some(target), Some(minor)) = (req.method, req.path, req.version) else {
        return Parsed::Hyper;
    };
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        return Parsed::Hyper;
    };
    // hyper refuses targets with other bytes (and answers 400 itself).
    if method == Method::CONNECT || !target.bytes().all(|b| (b'!'..=b'~').contains(&b)) {
        return Parsed::Hyper;
    }
    let absolute;
    let (path, authority) = if target.starts_with('/') {
        (target, None)
    } else {
        // Absolute form (apps with HTTP_PROXY set): only http://, as the hyper path.
        match target.parse::<http::Uri>() {
            Ok(uri) if uri.scheme_str() == Some("http") && uri.authority().is_some() => {
                absolute = uri;
                let path = absolute.path_and_query().map_or("/", |p| p.as_str());
                (path, absolute.authority())
            }
            _ => return Parsed::Hyper,
        }
    };
    let (mut host, mut close, mut keep_alive, mut has_length) = (None, false, false, false);
    let mut trailers = false;
    for h in req.headers.iter() {
        let name = h.name.as_bytes();
        let is = |n: &str| name.eq_ignore_ascii_case(n.as_bytes());
        match name.len() {
            // Two Host fields: hyper answers 400.
            4 if is("host") && host.replace(h.value).is_some() => return Parsed::Hyper,
            2 if is("te") => {
                trailers |= headers::tokens(h.value)
                    .map(|t| t.split(|&b| b == b';').next().unwrap_or_default())
                    .any(|t| t.eq_ignore_ascii_case(b"trailers"));
            }
            6 if is("expect") => return Parsed::Hyper,
            7 if is("upgrade") => return Parsed::Hyper,
            10 if is("connection") => {
                for token in headers::tokens(h.value) {
                    if token.eq_ignore_ascii_case(b"close") {
                        close = true;
                    } else if token.eq_ignore_ascii_case(b"keep-alive") {
                        keep_alive = true;
                    } else {
                        return Parsed::Hyper;
                    }
                }
            }
            14 if is("content-length") => {
                if has_length || h.value.trim_ascii() != b"0" {
                    return Parsed::Hyper;
                }
                has_length = true;
            }
            17 if is("transfer-encoding") => return Parsed::Hyper,
            _ => {}
        }
    }
    let target = match (authority, &last.target) {
        (None, Some(t)) if last.host == host.unwrap_or_default() => Ok(t.clone()),
        _ => {
            let name = route::named(authority.map(|a| (Some("http"), a.host())), host, listener);
            let target = proxy.lookup(name);
            if let (None, Ok(t)) = (authority, &target) {
                if t.is_declared() {
                    last.host.clear();
                    last.host.extend_from_slice(host.unwrap_or_default());
                    last.target = Some(t.clone());
                }
            }
            target
        }
    };
    head.clear();
    h1::request_line(head, &method, path);
    for h in req.headers.iter() {
        if !headers::is_hop_by_hop_bytes(h.name.as_bytes()) {
            field(head, h.name.as_bytes(), h.value);
        }
    }
    if host.is_none() {
        let host = match (authority, &target) {
            (Some(a), _) => a.as_str(),
            (None, Ok(t)) => t.name(),
            (None, Err(_)) => "",
        };
        field(head, b"host", host.as_bytes());
    }
    if !has_length && h1::defines_body(&method) {
        head.extend_from_slice(b"content-length: 0\r\n");
    }
    head.extend_from_slice(b"\r\n");
    Parsed::Request(Request {
        len,
        target,
        head_request: method == Method::HEAD,
        idempotent: pool::idempotent(&method),
        reply: Reply {
            close: close || (minor == 0 && !keep_alive),
            http10: minor == 0,
            trailers,
        },
    })
}

/// Writes the head of the response to `req` forwarded from `head` into `out`, and returns how
/// its body is framed towards the app: as the upstream framed it, except that a chunked body is
/// chunked again here (sent as is, close-delimited, to an HTTP/1.0 app), and a close-delimited
/// one stays close-delimited (`Connection: close`).
pub(super) fn response_head(out: &mut Vec<u8>, head: &Head, req: Reply) -> Framing {
    out.clear();
    status_line(out, head.status, req);
    let framing = match head.framing {
        Framing::Chunked if req.http10 => Framing::Close,
        other => other,
    };
    for (name, value) in head.fields() {
        if head.framing == Framing::Chunked && name.eq_ignore_ascii_case(b"transfer-encoding") {
            continue;
        }
        field(out, name, value);
    }
    if let Some(n) = head.content_length {
        out.extend_from_slice(b"content-length: ");
        decimal(out, n);
        out.extend_from_slice(b"\r\n");
    }
    if framing == Framing::Chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    if req.close || framing == Framing::Close {
        out.extend_from_slice(b"connection: close\r\n");
    } else if req.http10 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
    framing
}

/// Writes the head of a response waypost generated (its body is `resp`'s, whole) into `out`.
pub(super) fn error_head(out: &mut Vec<u8>, resp: &Response<Bytes>, req: Reply) {
    out.clear();
    status_line(out, resp.status(), req);
    for (name, value) in resp.headers() {
        field(out, name.as_str().as_bytes(), value.as_bytes());
    }
    let _ = write!(out, "content-length: {}\r\n", resp.body().len());
    if req.close {
        out.extend_from_slice(b"connection: close\r\n");
    } else if req.http10 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// The chunk-size line for `len` bytes of chunk data, written into `scratch`.
pub(super) fn chunk_size(scratch: &mut [u8; 18], len: usize) -> &[u8] {
    let mut cursor = &mut scratch[..];
    let _ = write!(cursor, "{len:x}\r\n");
    let left = cursor.len();
    &scratch[..18 - left]
}

/// The last chunk and the trailer section (RFC 9112 §7.1.2).
pub(super) fn last_chunk(out: &mut Vec<u8>, trailers: Option<&HeaderMap>) {
    out.extend_from_slice(b"0\r\n");
    for (name, value) in trailers.into_iter().flatten() {
        field(out, name.as_str().as_bytes(), value.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
}

/// `n` in decimal digits (what `write!` does, without the formatting machinery).
fn decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// The status line, in the app's own version (as hyper answers HTTP/1.0 apps).
fn status_line(out: &mut Vec<u8>, status: StatusCode, reply: Reply) {
    out.extend_from_slice(if reply.http10 {
        b"HTTP/1.0 "
    } else {
        b"HTTP/1.1 "
    });
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
}
