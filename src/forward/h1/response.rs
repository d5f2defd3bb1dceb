//! Response heads from upstreams: parsed once with httparse into the bytes received plus spans
//! of the fields that go on, framed by the one framing function (response rules, RFC 9112
//! §6.3), and written back to the app from that decision ([`encode`]) — or handed to hyper's h2
//! server as `http` types ([`Head::into_parts`]). The fields that describe a connection, the
//! ones `Connection` names, the framing fields and an upstream's `x-waypost-error` never reach
//! the app; the framing field the app gets is written from the decision.

use std::mem::MaybeUninit;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{response, Response, StatusCode, Version};

use super::fields::{is_hop_by_hop, named_by_connection, tokens};
use super::framing::{Framing, FramingError, FramingFields};
use super::write::{decimal, field, framing_field, status_line, Lines};

/// Most fields accepted in a response head (hyper's limit too).
pub const MAX_RESPONSE_FIELDS: usize = 100;
/// The field only waypost sets on responses (see `forward::rescue`).
const ERROR_FIELD: &[u8] = b"x-waypost-error";

/// A response head waypost cannot forward (the app gets a 502).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ResponseError {
    /// Not valid HTTP/1.x.
    #[error("invalid response head: {0}")]
    Syntax(httparse::Error),
    /// A response that parses but that waypost does not forward.
    #[error("invalid response: {0}")]
    Invalid(&'static str),
    /// Framing waypost refuses (conflicting lengths, codings it does not decode).
    #[error("invalid response framing: {0}")]
    Framing(#[from] FramingError),
}

/// A parsed final response head: the bytes as received, and which of its fields go on.
#[derive(Debug)]
pub struct Head {
    /// The status code.
    pub status: StatusCode,
    /// HTTP/1.0 or HTTP/1.1.
    pub version: Version,
    /// The head as it arrived; `fields` point into it.
    raw: Bytes,
    /// The fields to forward, in arrival order.
    fields: Vec<Span>,
    /// How its body is delimited.
    pub framing: Framing,
    /// Whether the connection may carry another request once the body has been read.
    pub reusable: bool,
}

/// Where a field's name and value sit in [`Head::raw`]: name start, name end, value start,
/// value end.
type Span = [u32; 4];

/// Tags on a span's name start while the head is parsed (heads are far below 2^30 bytes):
/// a `Content-Length` that may frame the body, and a `Transfer-Encoding`.
const LENGTH_TAG: u32 = 1 << 31;
const CODING_TAG: u32 = 1 << 30;

/// What [`parse`] found at the front of the buffer.
#[derive(Debug)]
pub enum Parsed {
    /// Not a whole head yet.
    Partial,
    /// An interim (1xx, not 101) head with this status, consumed.
    Interim(StatusCode),
    /// The final head, consumed; the body (if any) starts at the front of the buffer.
    Final(Head),
}

impl Head {
    /// The forwarded fields, as (name, value) bytes in arrival order.
    pub fn fields(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.fields.iter().map(|&[ns, ne, vs, ve]| {
            (
                &self.raw[ns as usize..ne as usize],
                &self.raw[vs as usize..ve as usize],
            )
        })
    }

    /// Status, version and fields as `http` types, for hyper's h2 server (which frames the
    /// body itself). Values are slices of the received head, not copies.
    pub fn into_parts(self) -> Result<response::Parts, ResponseError> {
        let mut headers = HeaderMap::with_capacity(self.fields.len() + 1);
        for &[ns, ne, vs, ve] in &self.fields {
            let name = HeaderName::from_bytes(&self.raw[ns as usize..ne as usize])
                .map_err(|_| ResponseError::Invalid("field name"))?;
            let value = HeaderValue::from_maybe_shared(self.raw.slice(vs as usize..ve as usize))
                .map_err(|_| ResponseError::Invalid("field value"))?;
            headers.append(name, value);
        }
        if let Framing::Length(n) = self.framing {
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
        }
        let mut resp = Response::new(());
        *resp.status_mut() = self.status;
        *resp.version_mut() = self.version;
        *resp.headers_mut() = headers;
        Ok(resp.into_parts().0)
    }
}

/// Parses (and consumes) one response head from the front of `buf`, to a request that was a
/// HEAD when `head_request`. The head is split off the buffer and frozen; fields are spans of
/// it.
pub fn parse(buf: &mut BytesMut, head_request: bool) -> Result<Parsed, ResponseError> {
    // Slots httparse fills: left uninitialized, which saves writing 100 of them per response.
    let mut slots = [const { MaybeUninit::uninit() }; MAX_RESPONSE_FIELDS];
    let mut resp = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut resp, buf, &mut slots);
    let len = match parsed {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
        Err(e) => return Err(ResponseError::Syntax(e)),
    };
    let status = StatusCode::from_u16(resp.code.unwrap_or(0))
        .map_err(|_| ResponseError::Invalid("status code"))?;
    let http10 = resp.version != Some(1);
    // A 101 ends the HTTP exchange: it is final here, bodiless, with its `Upgrade` passed on;
    // whether one was asked for is the caller's check.
    let switching = status == StatusCode::SWITCHING_PROTOCOLS;
    if status.is_informational() && !switching {
        buf.advance(len);
        return Ok(Parsed::Interim(status));
    }
    let base = buf.as_ptr() as usize;
    let span = |h: &httparse::Header<'_>| -> Span {
        let name = h.name.as_ptr() as usize - base;
        let value = h.value.as_ptr() as usize - base;
        [
            name as u32,
            (name + h.name.len()) as u32,
            value as u32,
            (value + h.value.len()) as u32,
        ]
    };
    let bodiless = head_request
        || switching
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let mut close = false;
    let mut named = false;
    let mut framing = FramingFields::default();
    let mut fields = Vec::with_capacity(resp.headers.len());
    // The framing fields are tagged, and dropped once the decision says which go.
    let mut tagged = false;
    for h in resp.headers.iter() {
        let name = h.name.as_bytes();
        let is = |n: &[u8]| name.eq_ignore_ascii_case(n);
        match name.len() {
            // A 101 has no body to frame: its framing fields go nowhere.
            14 | 17 if switching && (is(b"content-length") || is(b"transfer-encoding")) => {}
            14 if is(b"content-length") => {
                framing.content_length(h.value);
                // A bodiless response's length describes the representation: it passes.
                let mut s = span(h);
                if !bodiless {
                    s[0] |= LENGTH_TAG;
                    tagged = true;
                }
                fields.push(s);
            }
            17 if is(b"transfer-encoding") => {
                framing.transfer_encoding(h.value);
                let mut s = span(h);
                s[0] |= CODING_TAG;
                tagged = true;
                fields.push(s);
            }
            15 if is(ERROR_FIELD) => {}
            10 if is(b"connection") => {
                for token in tokens(h.value) {
                    if token.eq_ignore_ascii_case(b"close") {
                        close = true;
                    } else if !(token.eq_ignore_ascii_case(b"keep-alive")
                        || switching && token.eq_ignore_ascii_case(b"upgrade"))
                    {
                        named = true;
                    }
                }
            }
            7 if switching && is(b"upgrade") => fields.push(span(h)),
            _ if is_hop_by_hop(name) => {}
            _ => fields.push(span(h)),
        }
    }
    let coding_passes = framing.coding_passes(http10);
    let (framing, sound) = framing.response(bodiless, http10)?;
    if tagged {
        // The field a body is delimited by is written from the decision; a coding read to the
        // close passes as received when it cannot be mistaken for chunked.
        let drop_coding = match framing {
            Framing::Chunked => true,
            Framing::Close => !coding_passes,
            Framing::Empty | Framing::Length(_) => false,
        };
        fields.retain_mut(|s| {
            let keep = (s[0] & LENGTH_TAG == 0) && (s[0] & CODING_TAG == 0 || !drop_coding);
            s[0] &= !(LENGTH_TAG | CODING_TAG);
            keep
        });
    }
    if named {
        fields.retain(|&[ns, ne, ..]| {
            !named_by_connection(resp.headers, &buf[ns as usize..ne as usize])
        });
    }
    let raw = buf.split_to(len).freeze();
    Ok(Parsed::Final(Head {
        status,
        version: if http10 {
            Version::HTTP_10
        } else {
            Version::HTTP_11
        },
        raw,
        fields,
        framing,
        reusable: sound && !http10 && !close && !switching && framing != Framing::Close,
    }))
}

/// What a response to the app must say about its connection.
#[derive(Debug, Clone, Copy, Default)]
pub struct Reply {
    /// The connection closes after this response.
    pub close: bool,
    /// An HTTP/1.0 app: the status line says HTTP/1.0, a body cannot be chunked, and
    /// keep-alive must be said.
    pub http10: bool,
}

/// Writes the head of the response `head` to an app into `out` (cleared first), and returns
/// how its body is framed towards the app: as the upstream framed it, except that a chunked
/// body is sent to an HTTP/1.0 app decoded and delimited by close. A body delimited by close
/// closes the app connection too (`Connection: close`).
pub fn encode(out: &mut Vec<u8>, head: &Head, reply: Reply) -> Framing {
    out.clear();
    status_line(out, head.status, reply.http10);
    let framing = match head.framing {
        Framing::Chunked if reply.http10 => Framing::Close,
        other => other,
    };
    // Field lines the upstream wrote as waypost would are copied in runs.
    let mut lines = Lines::new(&head.raw);
    for &[ns, ne, vs, ve] in &head.fields {
        lines.push(out, (ns as usize, ne as usize), (vs as usize, ve as usize));
    }
    lines.flush(out);
    if head.status == StatusCode::SWITCHING_PROTOCOLS {
        out.extend_from_slice(b"connection: upgrade\r\n\r\n");
        return Framing::Empty;
    }
    framing_field(out, framing);
    connection(out, reply.close || framing == Framing::Close, reply.http10);
    out.extend_from_slice(b"\r\n");
    framing
}

/// Writes the head of a response waypost generated (status, `fields`, a body of `len` bytes)
/// into `out` (cleared first).
pub fn encode_own(
    out: &mut Vec<u8>,
    status: StatusCode,
    fields: &HeaderMap,
    len: usize,
    reply: Reply,
) {
    out.clear();
    status_line(out, status, reply.http10);
    for (name, value) in fields {
        field(out, name.as_str().as_bytes(), value.as_bytes());
    }
    out.extend_from_slice(b"content-length: ");
    decimal(out, len as u64);
    out.extend_from_slice(b"\r\n");
    connection(out, reply.close, reply.http10);
    out.extend_from_slice(b"\r\n");
}

/// The `Connection` field of a response: `close`, or `keep-alive` for an HTTP/1.0 app that
/// keeps its connection (HTTP/1.1 keeps it by default).
fn connection(out: &mut Vec<u8>, close: bool, http10: bool) {
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    } else if http10 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
}

#[cfg(test)]
#[path = "response/tests.rs"]
mod tests;
