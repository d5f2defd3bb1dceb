//! The response head as it arrives from an upstream: parsed once with httparse, kept as the
//! bytes received with spans for the fields that go on, and its body framing settled (RFC 9112
//! §6.3). The downstream loop writes those bytes back to the app; hyper's server gets them as
//! `http` types ([`Head::into_parts`]).

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{response, Response, StatusCode, Version};

use super::{Framing, ProtoError, MAX_HEADERS};
use crate::forward::headers;

/// A parsed final response head: the bytes as received, and which of its fields go on.
pub struct Head {
    /// The status code.
    pub status: StatusCode,
    /// HTTP/1.0 or HTTP/1.1.
    pub version: Version,
    /// The head as it arrived; `fields` point into it.
    raw: Bytes,
    /// The fields to forward: all but hop-by-hop ones, those `Connection` names, an upstream's
    /// `x-waypost-error`, and a `Content-Length` that frames the body (that is `content_length`).
    fields: Vec<Span>,
    /// The one `Content-Length` to forward when the body is framed by it.
    pub content_length: Option<u64>,
    /// How its body is delimited.
    pub framing: Framing,
    /// Whether the connection may carry another request once the body has been read.
    pub reusable: bool,
}

/// Where a field's name and value sit in [`Head::raw`]: name start, name end, value start,
/// value end.
type Span = [u32; 4];

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

    /// Status, version and headers as `http` types, for hyper's server. Values are slices of
    /// the received head, not copies.
    pub fn into_parts(self) -> Result<response::Parts, ProtoError> {
        let mut headers = HeaderMap::with_capacity(self.fields.len() + 1);
        for &[ns, ne, vs, ve] in &self.fields {
            let name = HeaderName::from_bytes(&self.raw[ns as usize..ne as usize])
                .map_err(|_| ProtoError::Invalid("header name"))?;
            let value = HeaderValue::from_maybe_shared(self.raw.slice(vs as usize..ve as usize))
                .map_err(|_| ProtoError::Invalid("header value"))?;
            headers.append(name, value);
        }
        if let Some(n) = self.content_length {
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
        }
        let mut resp = Response::new(());
        *resp.status_mut() = self.status;
        *resp.version_mut() = self.version;
        *resp.headers_mut() = headers;
        Ok(resp.into_parts().0)
    }
}

/// What [`parse_head`] found at the front of the buffer.
pub(super) enum Parsed {
    /// Not a whole head yet.
    Partial,
    /// An interim (1xx) head, consumed.
    Interim,
    /// The final head, consumed; the body (if any) starts at the front of the buffer.
    Final(Head),
}

/// Parses (and consumes) one response head from the front of `buf`. Fields stay in the
/// buffer's memory: the head is split off, frozen, and the fields are spans of it.
pub(super) fn parse_head(buf: &mut BytesMut, head_request: bool) -> Result<Parsed, ProtoError> {
    // Slots httparse fills: left uninitialized, which saves writing 100 of them per response.
    let mut slots = [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut resp, buf, &mut slots);
    let len = match parsed {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
        Err(e) => return Err(ProtoError::Parse(e)),
    };
    let status = StatusCode::from_u16(resp.code.unwrap_or(0))
        .map_err(|_| ProtoError::Invalid("status code"))?;
    let version = match resp.version {
        Some(1) => Version::HTTP_11,
        _ => Version::HTTP_10,
    };
    if status.is_informational() {
        buf.advance(len);
        if status == StatusCode::SWITCHING_PROTOCOLS {
            return Err(ProtoError::Invalid(
                "101 Switching Protocols: upgrades are not forwarded",
            ));
        }
        return Ok(Parsed::Interim);
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
    let (close, named) = headers::connection_tokens(
        resp.headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("connection"))
            .map(|h| h.value),
    );
    let no_body =
        head_request || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED;
    let mut fields = Vec::with_capacity(resp.headers.len());
    let mut te = None;
    // Every Content-Length value folded into one (or the first reason it cannot be).
    let mut length: Option<Result<u64, &'static str>> = None;
    for h in resp.headers.iter() {
        let name = h.name.as_bytes();
        if headers::is_hop_by_hop_bytes(name)
            || name.eq_ignore_ascii_case(crate::forward::rescue::ERROR_HEADER.as_bytes())
            || named
                .iter()
                .any(|n| name.eq_ignore_ascii_case(n.as_str().as_bytes()))
        {
            continue;
        }
        if !no_body && name.eq_ignore_ascii_case(b"content-length") {
            length = Some(fold_length(length, h.value));
            continue;
        }
        if name.eq_ignore_ascii_case(b"transfer-encoding") {
            te = Some(h.value);
        }
        fields.push(span(h));
    }
    let mut reusable = version == Version::HTTP_11 && !close;
    let mut content_length = None;
    let framing = if no_body {
        Framing::Empty
    } else if let Some(last) = te {
        // Both framings at once may be a smuggling attempt: decode by Transfer-Encoding (RFC
        // 9112 §6.3), forward no Content-Length, and never reuse the connection.
        if length.is_some() {
            reusable = false;
        }
        if last_coding_is_chunked(last) {
            Framing::Chunked
        } else {
            reusable = false;
            Framing::Close
        }
    } else if let Some(n) = length {
        let n = n.map_err(ProtoError::Invalid)?;
        content_length = Some(n);
        Framing::Length(n)
    } else {
        reusable = false;
        Framing::Close
    };
    let raw = buf.split_to(len).freeze();
    Ok(Parsed::Final(Head {
        status,
        version,
        raw,
        fields,
        content_length,
        framing,
        reusable,
    }))
}

/// Whether the last transfer coding in the last `Transfer-Encoding` value is `chunked` (the
/// only way a response body so coded ends other than by close).
fn last_coding_is_chunked(last: &[u8]) -> bool {
    last.rsplit(|&b| b == b',')
        .next()
        .is_some_and(|t| t.trim_ascii().eq_ignore_ascii_case(b"chunked"))
}

/// Folds one `Content-Length` value into what the earlier ones said: every value (repeated
/// headers, comma lists) must be the same decimal number (RFC 9110 §8.6).
fn fold_length(acc: Option<Result<u64, &'static str>>, value: &[u8]) -> Result<u64, &'static str> {
    let mut found = match acc {
        Some(Err(e)) => return Err(e),
        Some(Ok(n)) => Some(n),
        None => None,
    };
    for part in value.split(|&b| b == b',') {
        let digits = part.trim_ascii();
        if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
            return Err("Content-Length is not a number");
        }
        let n = digits
            .iter()
            .fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
        if found.is_some_and(|f| f != n) {
            return Err("conflicting Content-Length values");
        }
        found = Some(n);
    }
    found.ok_or("Content-Length is not a number")
}
