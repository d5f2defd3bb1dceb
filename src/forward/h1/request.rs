//! Request heads from apps: parsed with httparse, checked against the HTTP/1 policy (README),
//! framed once ([`super::framing`]), and encoded for the upstream from that decision — request
//! line in origin form, end-to-end fields in arrival order with `Host` (replaced by the
//! authority of an absolute-form target), then the framing field, written last by [`finish`].
//! Nothing of the app's own framing fields, hop-by-hop fields or the fields its `Connection`
//! names is ever copied upstream.

use std::mem::MaybeUninit;

use http::Method;

use super::fields::{
    is_framing_or_routing, is_hop_by_hop, is_token, is_valid_host, named_by_connection, tokens,
    trim_ows,
};
use super::framing::{Framing, FramingError, FramingFields};
use super::write::{field, framing_field, Lines};
use crate::config::MAX_HEADERS_LIMIT;
use target::Target;

/// The limits a request head must stay within (`client.max_head_size`, `client.max_headers`).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest head, request line and fields, in bytes.
    pub max_head_size: usize,
    /// Most fields (at most [`MAX_HEADERS_LIMIT`]).
    pub max_headers: usize,
}

/// What the front of the read buffer holds.
#[derive(Debug)]
pub enum Parsed {
    /// Not a whole head yet (and within the size limit so far).
    Partial,
    /// A whole, valid head; the upstream head is in the output buffer, but for [`finish`].
    Complete(Request),
}

/// A request head that passed every check, and what the rest of the pipeline needs of it.
#[derive(Debug, Clone)]
pub struct Request {
    /// Length of the head in the read buffer; the body, if any, follows it.
    pub len: usize,
    /// The method.
    pub method: Method,
    /// An HTTP/1.0 request (answered in HTTP/1.0; kept alive only when it asks).
    pub http10: bool,
    /// How its body is delimited: the one decision every later step uses.
    pub framing: Framing,
    /// Where the `Host` value sits in the encoded head (start, end): the absolute-form
    /// authority when there was one, else the app's `Host`. `None` for an HTTP/1.0 request
    /// without either; [`finish`] then writes the service name.
    pub host: Option<(u32, u32)>,
    /// The connection closes after the response: `Connection: close`, or HTTP/1.0 without
    /// `Connection: keep-alive`.
    pub close: bool,
    /// The app accepts trailer fields (`TE: trailers`).
    pub trailers: bool,
    /// `Expect: 100-continue` (HTTP/1.1): the upstream's `100 Continue` is relayed.
    pub expect_continue: bool,
    /// A bodiless HTTP/1.1 GET asking to switch protocols (`Connection: upgrade` and an
    /// `Upgrade` other than h2c): both fields went into the upstream head, and a `101` joins
    /// the two connections.
    pub upgrade: bool,
}

impl Request {
    /// A HEAD request: its response has no body, whatever its fields say.
    pub fn is_head(&self) -> bool {
        self.method == Method::HEAD
    }

    /// Safe to send twice (RFC 9110 §9.2.2).
    pub fn is_idempotent(&self) -> bool {
        idempotent(&self.method)
    }
}

/// Whether requests with `method` may be sent a second time (RFC 9110 §9.2.2).
pub fn idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::DELETE | Method::PUT
    )
}

/// Why a request head is refused; each maps to one status ([`super::super::rescue`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// The head breaks a syntax rule: 400, with the rule.
    #[error("{0}")]
    Malformed(&'static str),
    /// The framing is ambiguous or refused: 400, or 501 for a coding waypost does not decode.
    #[error("{0}")]
    Framing(#[from] FramingError),
    /// The head is larger than `client.max_head_size`: 431.
    #[error("request head larger than {0} bytes")]
    HeadTooLarge(usize),
    /// More fields than `client.max_headers`: 431.
    #[error("more than {0} header fields")]
    TooManyFields(usize),
    /// A well-formed `HTTP/x.y` other than 1.0 and 1.1: 505.
    #[error("only HTTP/1.0 and HTTP/1.1 are served over HTTP/1")]
    Version,
    /// An `Expect` other than `100-continue`: 417.
    #[error("the only expectation waypost meets is 100-continue")]
    Expectation,
    /// CONNECT: 405 (waypost tunnels nothing; it is never an open proxy).
    #[error("method CONNECT is not supported by waypost")]
    Connect,
}

/// Parses the request head at the front of `buf`. A complete, valid head is encoded into `out`
/// (cleared first) for the upstream: request line and end-to-end fields; [`finish`] adds the
/// rest once the request is routed. `known_host`: a `Host` value already found valid on this
/// connection (the last one routed; empty for none), whose check is not repeated.
pub fn parse(
    buf: &[u8],
    limits: Limits,
    out: &mut Vec<u8>,
    known_host: &[u8],
) -> Result<Parsed, RequestError> {
    // Slots httparse fills: left uninitialized, which saves writing all of them per request.
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS_LIMIT];
    let slots = &mut slots[..limits.max_headers.min(MAX_HEADERS_LIMIT)];
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(buf, slots) {
        Ok(httparse::Status::Complete(len)) if len > limits.max_head_size => {
            return Err(RequestError::HeadTooLarge(limits.max_head_size))
        }
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() >= limits.max_head_size => {
            return Err(RequestError::HeadTooLarge(limits.max_head_size))
        }
        Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(RequestError::TooManyFields(limits.max_headers))
        }
        Err(httparse::Error::Version) => return Err(version_error(buf)),
        Err(e) => return Err(RequestError::Malformed(syntax(e))),
    };
    let (Some(method), Some(target), Some(minor)) = (req.method, req.path, req.version) else {
        return Err(RequestError::Malformed("incomplete request line"));
    };
    let http10 = minor == 0;
    let method = Method::from_bytes(method.as_bytes())
        .map_err(|_| RequestError::Malformed("invalid method"))?;
    if method == Method::CONNECT {
        return Err(RequestError::Connect);
    }
    let target = Target::parse(&method, target)?;
    let seen = walk(buf, req.headers, &method, &target, http10, out)?;
    let framing = seen.framing.request(http10)?;
    if let Some(host) = seen.app_host {
        if host != known_host && !is_valid_host(host) {
            return Err(RequestError::Malformed("invalid Host field"));
        }
    } else if !http10 {
        return Err(RequestError::Malformed(
            "no Host field in an HTTP/1.1 request",
        ));
    }
    let upgrade = match seen.upgrade {
        Some(protocols)
            if seen.connection_upgrade
                && !http10
                && method == Method::GET
                && framing == Framing::Empty
                && upgradable(protocols) =>
        {
            field(out, b"connection", b"upgrade");
            field(out, b"upgrade", protocols);
            true
        }
        _ => false,
    };
    Ok(Parsed::Complete(Request {
        len,
        method,
        http10,
        framing,
        host: seen.host,
        close: seen.close || (http10 && !seen.keep_alive),
        trailers: seen.trailers,
        expect_continue: seen.expect_continue,
        upgrade,
    }))
}

/// Whether an `Upgrade` value is one waypost passes on: a list of `protocol[/version]` tokens
/// naming no `h2c` (an h2c upgrade is never forwarded: HTTP/2 from apps goes through hyper's h2
/// server, with prior knowledge).
fn upgradable(protocols: &[u8]) -> bool {
    let mut any = false;
    for p in tokens(protocols) {
        let mut parts = p.splitn(2, |&b| b == b'/');
        let name = parts.next().unwrap_or_default();
        if !is_token(name) || name.eq_ignore_ascii_case(b"h2c") {
            return false;
        }
        if parts.next().is_some_and(|v| !is_token(v)) {
            return false;
        }
        any = true;
    }
    any
}

/// Ends the upstream head in `out`: `Host` when the app sent none and the target named no
/// authority (`service`, the name it was routed to), then the framing field from the decision,
/// then the empty line.
pub fn finish(out: &mut Vec<u8>, req: &Request, service: &str) {
    let host = req.host.is_none().then_some(service.as_bytes());
    end(out, &req.method, req.framing, host);
}

/// The upstream head of a request that arrived over HTTP/2 (`parts`; `bodiless` when its
/// stream carries no body), under the same rules: origin-form target, hop-by-hop and framing
/// fields left out, `Host` from the `:authority` (else the app's `Host`, else `service`), and
/// the framing field last — `content-length` when the app declared one, chunked otherwise.
/// `Expect` is left out: hyper's h2 server answers it itself when the body is first read.
pub fn encode_h2(
    parts: &http::request::Parts,
    bodiless: bool,
    service: &str,
    out: &mut Vec<u8>,
) -> Result<Framing, RequestError> {
    let mut lengths = FramingFields::default();
    for value in parts.headers.get_all(http::header::CONTENT_LENGTH) {
        lengths.content_length(value.as_bytes());
    }
    let framing = match lengths.request(false)? {
        _ if bodiless => Framing::Empty,
        Framing::Empty => Framing::Chunked,
        declared => declared,
    };
    out.clear();
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    out.extend_from_slice(if target.is_empty() {
        b"/"
    } else {
        target.as_bytes()
    });
    out.extend_from_slice(b" HTTP/1.1\r\n");
    // HTTP/2 has no Connection field (hyper refuses one); a translated request might.
    let named: Vec<&[u8]> = parts
        .headers
        .get_all(http::header::CONNECTION)
        .iter()
        .flat_map(|v| tokens(v.as_bytes()))
        .collect();
    for (name, value) in &parts.headers {
        let name = name.as_str().as_bytes();
        let is = |n: &[u8]| name == n;
        let skip = is(b"host")
            || is(b"content-length")
            || is(b"transfer-encoding")
            || is(b"expect")
            || is_hop_by_hop(name)
            || named.iter().any(|n| n.eq_ignore_ascii_case(name));
        if !skip {
            field(out, name, value.as_bytes());
        }
    }
    let host = match parts.uri.authority() {
        Some(authority) => authority.as_str().as_bytes(),
        None => parts
            .headers
            .get(http::header::HOST)
            .map_or(service.as_bytes(), |h| h.as_bytes()),
    };
    field(out, b"host", host);
    end(out, &parts.method, framing, None);
    Ok(framing)
}

/// `Host` (when given), the framing field from the decision (`content-length: 0` for an empty
/// POST/PUT/PATCH, which some servers require: RFC 9110 §8.6), and the empty line.
fn end(out: &mut Vec<u8>, method: &Method, framing: Framing, host: Option<&[u8]>) {
    if let Some(host) = host {
        field(out, b"host", host);
    }
    framing_field(out, framing);
    if matches!(framing, Framing::Empty | Framing::Close)
        && matches!(*method, Method::POST | Method::PUT | Method::PATCH)
    {
        out.extend_from_slice(b"content-length: 0\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// The precise rule an httparse error broke.
fn syntax(e: httparse::Error) -> &'static str {
    match e {
        httparse::Error::Token => "malformed request line",
        httparse::Error::HeaderName => "invalid field name (or obs-fold)",
        httparse::Error::HeaderValue => "invalid field value",
        httparse::Error::NewLine => "malformed line ending",
        _ => "malformed request head",
    }
}

/// 505 for a well-formed `HTTP/x.y` other than 1.0/1.1, 400 for anything else in its place.
fn version_error(buf: &[u8]) -> RequestError {
    let line = buf.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let version = line.rsplit(|&b| b == b' ').next().unwrap_or_default();
    match version {
        [b'H', b'T', b'T', b'P', b'/', x, b'.', y] if x.is_ascii_digit() && y.is_ascii_digit() => {
            RequestError::Version
        }
        _ => RequestError::Malformed("malformed HTTP version"),
    }
}

/// What the walk over the fields found.
struct Seen<'a> {
    framing: FramingFields,
    /// The app's `Host` value.
    app_host: Option<&'a [u8]>,
    /// Where the `Host` value sits in the encoded head.
    host: Option<(u32, u32)>,
    close: bool,
    keep_alive: bool,
    trailers: bool,
    expect_continue: bool,
    /// `Connection` names fields that are not hop-by-hop by themselves: they are left out too.
    named: bool,
    /// The `Upgrade` value, when exactly one field came.
    upgrade: Option<&'a [u8]>,
    /// More than one `Upgrade` field: no upgrade.
    upgrades: u8,
    /// `Connection` names `upgrade`.
    connection_upgrade: bool,
}

/// Walks the fields once: checks them, folds the framing fields, reads `Host`, `Connection`,
/// `TE` and `Expect` — and encodes the request line and the fields that go on into `out`
/// (cleared first). Names are matched by length first (most names match no length). Field
/// lines the app wrote as waypost would (`name: value` and CRLF) are copied in runs, one copy
/// for consecutive lines, rather than field by field. In the rare case that `Connection`
/// names other fields, the fields are encoded again without them.
fn walk<'a>(
    buf: &'a [u8],
    headers: &[httparse::Header<'a>],
    method: &Method,
    target: &Target<'_>,
    http10: bool,
    out: &mut Vec<u8>,
) -> Result<Seen<'a>, RequestError> {
    let authority = request_line(out, method, target);
    let line_end = out.len();
    let mut seen = Seen {
        framing: FramingFields::default(),
        app_host: None,
        host: None,
        close: false,
        keep_alive: false,
        trailers: false,
        expect_continue: false,
        named: false,
        upgrade: None,
        upgrades: 0,
        connection_upgrade: false,
    };
    let base = buf.as_ptr() as usize;
    let mut lines = Lines::new(buf);
    for h in headers {
        let name = h.name.as_bytes();
        let is = |n: &[u8]| name.eq_ignore_ascii_case(n);
        let forward = match name.len() {
            4 if is(b"host") => {
                if seen.app_host.replace(h.value).is_some() {
                    return Err(RequestError::Malformed("more than one Host field"));
                }
                lines.flush(out);
                seen.host = Some(host_field(out, name, authority.unwrap_or(h.value)));
                continue;
            }
            14 if is(b"content-length") => {
                seen.framing.content_length(h.value);
                false
            }
            17 if is(b"transfer-encoding") => {
                seen.framing.transfer_encoding(h.value);
                false
            }
            10 if is(b"connection") => {
                for token in tokens(h.value) {
                    if token.eq_ignore_ascii_case(b"close") {
                        seen.close = true;
                    } else if token.eq_ignore_ascii_case(b"keep-alive") {
                        seen.keep_alive = true;
                    } else if token.eq_ignore_ascii_case(b"upgrade") {
                        seen.connection_upgrade = true;
                    } else if is_framing_or_routing(token) {
                        return Err(RequestError::Malformed(
                            "Connection names a framing or routing field",
                        ));
                    } else if !is_hop_by_hop(token) {
                        seen.named = true;
                    }
                }
                false
            }
            2 if is(b"te") => {
                seen.trailers |= tokens(h.value).any(|t| {
                    let coding = t.split(|&b| b == b';').next().unwrap_or_default();
                    trim_ows(coding).eq_ignore_ascii_case(b"trailers")
                });
                false
            }
            // Hop-by-hop: written again, after the walk, only for an upgrade waypost passes on.
            7 if is(b"upgrade") => {
                seen.upgrades = seen.upgrades.saturating_add(1);
                seen.upgrade = (seen.upgrades == 1).then_some(h.value);
                false
            }
            // HTTP/1.0 has no expectations: the field is dropped (RFC 9110 §10.1.1).
            6 if is(b"expect") => {
                if !http10 {
                    if !trim_ows(h.value).eq_ignore_ascii_case(b"100-continue") {
                        return Err(RequestError::Expectation);
                    }
                    seen.expect_continue = true;
                }
                !http10
            }
            _ => !is_hop_by_hop(name),
        };
        if !forward {
            lines.flush(out);
            continue;
        }
        let start = h.name.as_ptr() as usize - base;
        let value = h.value.as_ptr() as usize - base;
        lines.push(
            out,
            (start, start + name.len()),
            (value, value + h.value.len()),
        );
    }
    lines.flush(out);
    if seen.named {
        out.truncate(line_end);
        seen.host = None;
        for h in headers {
            let name = h.name.as_bytes();
            if name.eq_ignore_ascii_case(b"host") {
                seen.host = Some(host_field(out, name, authority.unwrap_or(h.value)));
                continue;
            }
            let dropped = is_hop_by_hop(name)
                || name.eq_ignore_ascii_case(b"content-length")
                || name.eq_ignore_ascii_case(b"transfer-encoding")
                || (http10 && name.eq_ignore_ascii_case(b"expect"))
                || named_by_connection(headers, name);
            if !dropped {
                field(out, name, h.value);
            }
        }
    }
    if let (None, Some(authority)) = (seen.host, authority) {
        seen.host = Some(host_field(out, b"host", authority));
    }
    Ok(seen)
}

/// Writes the request line (origin form, `*`, or the absolute form's path) into `out`
/// (cleared first); returns the absolute form's authority.
fn request_line<'t>(out: &mut Vec<u8>, method: &Method, target: &Target<'t>) -> Option<&'t [u8]> {
    out.clear();
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    let authority = match target {
        Target::Origin(path) => {
            out.extend_from_slice(path.as_bytes());
            None
        }
        Target::Asterisk => {
            out.push(b'*');
            None
        }
        Target::Absolute { authority, rest } => {
            if !rest.starts_with('/') {
                out.push(b'/');
            }
            out.extend_from_slice(rest.as_bytes());
            Some(authority.as_bytes())
        }
    };
    out.extend_from_slice(b" HTTP/1.1\r\n");
    authority
}

/// Writes a `Host` field; returns where its value sits in `out`.
fn host_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) -> (u32, u32) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    let start = out.len() as u32;
    out.extend_from_slice(value);
    let end = out.len() as u32;
    out.extend_from_slice(b"\r\n");
    (start, end)
}

#[path = "request/target.rs"]
mod target;
#[cfg(test)]
#[path = "request/tests.rs"]
mod tests;
