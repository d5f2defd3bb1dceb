//! The framing decision (RFC 9112 §6.1–6.3): which bytes after a head are its body. It is made
//! once per message, from the parsed head, by the pure functions here — [`FramingFields`]
//! gathers the `Content-Length` and `Transfer-Encoding` fields while the head is walked, and
//! [`FramingFields::request`] / [`FramingFields::response`] decide. Everything later (the
//! decoders, the head waypost writes on) uses that decision; nothing re-derives framing from
//! header fields.
//!
//! The request rules refuse every ambiguity before anything goes upstream (README, "HTTP/1
//! policy"); the response rules are RFC 9112 §6.3's, strict where a response could desync the
//! connection it came on.

use super::fields::{is_token, tokens, trim_ows};

/// How a message's body is delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body at all.
    Empty,
    /// Exactly this many bytes (`Content-Length`).
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
    /// Everything until the connection closes (responses only).
    Close,
}

/// Why a request's framing is refused: every variant is a 400, but for
/// [`FramingError::UnsupportedCoding`] (501).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FramingError {
    /// Both `Content-Length` and `Transfer-Encoding`.
    LengthAndEncoding,
    /// A `Content-Length` value that is not 1 to 19 digits.
    BadLength,
    /// `Content-Length` values that disagree.
    ConflictingLengths,
    /// `Transfer-Encoding` in an HTTP/1.0 message.
    EncodingInHttp10,
    /// A `Transfer-Encoding` element that is not a coding, or a field with none.
    BadEncoding,
    /// `chunked` more than once.
    ChunkedTwice,
    /// A final coding other than `chunked`: the body's end cannot be known.
    NotChunked,
    /// A coding before the final `chunked`: waypost does not forward codings it does not decode.
    UnsupportedCoding,
}

impl FramingError {
    /// The rule broken, as a static message (what [`std::fmt::Display`] writes).
    pub fn rule(self) -> &'static str {
        match self {
            FramingError::LengthAndEncoding => "both Content-Length and Transfer-Encoding",
            FramingError::BadLength => "Content-Length is not a number",
            FramingError::ConflictingLengths => "conflicting Content-Length values",
            FramingError::EncodingInHttp10 => "Transfer-Encoding in an HTTP/1.0 request",
            FramingError::BadEncoding => "malformed Transfer-Encoding",
            FramingError::ChunkedTwice => "chunked applied more than once",
            FramingError::NotChunked => "final transfer coding is not chunked",
            FramingError::UnsupportedCoding => "transfer coding other than chunked",
        }
    }
}

impl std::fmt::Display for FramingError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.rule())
    }
}

impl std::error::Error for FramingError {}

/// What the framing fields of one head said, folded field by field.
#[derive(Debug, Clone, Copy, Default)]
pub struct FramingFields {
    /// Every `Content-Length` value folded: `None` when there was none.
    length: Option<Result<u64, FramingError>>,
    /// Whether a `Transfer-Encoding` field was present.
    encoded: bool,
    /// How many elements were `chunked`.
    chunked: u8,
    /// Whether the last element of the last field was `chunked`.
    last_chunked: bool,
    /// Whether any element was another coding.
    other: bool,
    /// Whether an element was not a coding at all, or a field had no element.
    malformed: bool,
}

impl FramingFields {
    /// Folds in one `Content-Length` value: repeated fields and comma lists are accepted when
    /// every value is the same number (RFC 9110 §8.6).
    pub fn content_length(&mut self, value: &[u8]) {
        if let Some(Err(_)) = self.length {
            return;
        }
        // The usual value, one plain number, without the list machinery.
        if self.length.is_none()
            && !value.is_empty()
            && value.len() <= 19
            && value.iter().all(u8::is_ascii_digit)
        {
            let n = value.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
            self.length = Some(Ok(n));
            return;
        }
        let mut found = self.length.map(|l| l.unwrap_or(0));
        let mut any = false;
        for part in value.split(|&b| b == b',') {
            let digits = trim_ows(part);
            if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
                self.length = Some(Err(FramingError::BadLength));
                return;
            }
            let n = digits
                .iter()
                .fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
            if found.is_some_and(|f| f != n) {
                self.length = Some(Err(FramingError::ConflictingLengths));
                return;
            }
            found = Some(n);
            any = true;
        }
        self.length = match (any, found) {
            (true, Some(n)) => Some(Ok(n)),
            _ => Some(Err(FramingError::BadLength)),
        };
    }

    /// Folds in one `Transfer-Encoding` value: its codings, in order.
    pub fn transfer_encoding(&mut self, value: &[u8]) {
        self.encoded = true;
        let mut any = false;
        for element in tokens(value) {
            any = true;
            // A coding may carry parameters (`gzip;q=1`): then it is not plain `chunked`.
            let name = element.split(|&b| b == b';').next().unwrap_or_default();
            if !is_token(trim_ows(name)) {
                self.malformed = true;
            }
            let chunked = element.eq_ignore_ascii_case(b"chunked");
            if chunked {
                self.chunked = self.chunked.saturating_add(1);
            } else {
                self.other = true;
            }
            self.last_chunked = chunked;
        }
        if !any {
            self.malformed = true;
        }
    }

    /// The framing of a request (README, "HTTP/1 policy", Framing): `http10` for HTTP/1.0.
    pub fn request(&self, http10: bool) -> Result<Framing, FramingError> {
        if self.encoded {
            if http10 {
                return Err(FramingError::EncodingInHttp10);
            }
            if self.length.is_some() {
                return Err(FramingError::LengthAndEncoding);
            }
            if self.malformed {
                return Err(FramingError::BadEncoding);
            }
            if self.chunked > 1 {
                return Err(FramingError::ChunkedTwice);
            }
            if !self.last_chunked {
                return Err(FramingError::NotChunked);
            }
            if self.other {
                return Err(FramingError::UnsupportedCoding);
            }
            return Ok(Framing::Chunked);
        }
        match self.length {
            None => Ok(Framing::Empty),
            Some(Ok(n)) => Ok(Framing::Length(n)),
            Some(Err(e)) => Err(e),
        }
    }

    /// The framing of a response to a request, RFC 9112 §6.3: `bodiless` for a response that
    /// has no body whatever its fields say (to HEAD, 1xx, 204, 304). `Ok((framing, reusable))`:
    /// `reusable` is false when the framing leaves the connection's state in doubt (both
    /// fields, a body delimited by close). `Err` is a response waypost cannot forward (502).
    pub fn response(&self, bodiless: bool, http10: bool) -> Result<(Framing, bool), FramingError> {
        if bodiless {
            return Ok((Framing::Empty, true));
        }
        if self.encoded {
            // Both fields may be a smuggling attempt: the coding wins, and the connection is
            // not reused. HTTP/1.0 has no transfer codings: its framing is faulty, read to the
            // close (RFC 9112 §6.1).
            let doubtful = self.length.is_some();
            if http10 || self.malformed || !self.last_chunked {
                return Ok((Framing::Close, false));
            }
            if self.chunked > 1 {
                return Err(FramingError::ChunkedTwice);
            }
            if self.other {
                return Err(FramingError::UnsupportedCoding);
            }
            return Ok((Framing::Chunked, !doubtful));
        }
        match self.length {
            None => Ok((Framing::Close, false)),
            Some(Ok(n)) => Ok((Framing::Length(n), true)),
            Some(Err(e)) => Err(e),
        }
    }
}

impl FramingFields {
    /// Whether a response's `Transfer-Encoding` field may pass to the app on a body delimited by
    /// close: only a well-formed list of codings waypost does not decode, on HTTP/1.1, that
    /// names no `chunked` — the app then reads to the close as waypost does. A faulty one
    /// (HTTP/1.0, malformed, or naming `chunked`) is dropped: an app might decode chunks out of
    /// bytes waypost forwards as they are.
    pub fn coding_passes(&self, http10: bool) -> bool {
        !http10 && !self.malformed && self.chunked == 0
    }
}

/// The framing fields of `fields` (name, value), folded: what a head walk does, as one call.
pub fn fold<'a>(fields: impl IntoIterator<Item = (&'a [u8], &'a [u8])>) -> FramingFields {
    let mut f = FramingFields::default();
    for (name, value) in fields {
        if name.eq_ignore_ascii_case(b"content-length") {
            f.content_length(value);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            f.transfer_encoding(value);
        }
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;
    use Framing::*;
    use FramingError::*;

    fn fields(spec: &[(&'static str, &'static str)]) -> FramingFields {
        fold(spec.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())))
    }

    const CL: &str = "content-length";
    const TE: &str = "transfer-encoding";

    #[test]
    fn request_rules() {
        type Row = (
            &'static [(&'static str, &'static str)],
            bool,
            Result<Framing, FramingError>,
        );
        let table: &[Row] = &[
            (&[], false, Ok(Empty)),
            (&[("x-other", "1")], false, Ok(Empty)),
            (&[(CL, "5")], false, Ok(Length(5))),
            (&[(CL, "0")], false, Ok(Length(0))),
            (&[(CL, " 5\t")], false, Ok(Length(5))),
            (&[(CL, "5"), (CL, "5")], false, Ok(Length(5))),
            (&[(CL, "5, 5")], false, Ok(Length(5))),
            (&[(CL, "5,5"), (CL, "5")], false, Ok(Length(5))),
            (
                &[(CL, "9999999999999999999")],
                false,
                Ok(Length(9_999_999_999_999_999_999)),
            ),
            (&[(CL, "10000000000000000000")], false, Err(BadLength)),
            (&[(CL, "5"), (CL, "6")], false, Err(ConflictingLengths)),
            (&[(CL, "5, 6")], false, Err(ConflictingLengths)),
            (&[(CL, "+5")], false, Err(BadLength)),
            (&[(CL, "-1")], false, Err(BadLength)),
            (&[(CL, "0x5")], false, Err(BadLength)),
            (&[(CL, "5a")], false, Err(BadLength)),
            (&[(CL, "")], false, Err(BadLength)),
            (&[(CL, "1 2")], false, Err(BadLength)),
            (&[(CL, "5,")], false, Err(BadLength)),
            (&[(CL, ",")], false, Err(BadLength)),
            (&[(CL, "5"), (CL, "x")], false, Err(BadLength)),
            (&[(CL, "x"), (CL, "5")], false, Err(BadLength)),
            (&[(TE, "chunked")], false, Ok(Chunked)),
            (&[(TE, "CHUNKED")], false, Ok(Chunked)),
            (&[(TE, " chunked ")], false, Ok(Chunked)),
            (&[(TE, "\tchunked")], false, Ok(Chunked)),
            (&[(TE, "chunked,")], false, Ok(Chunked)),
            (&[(TE, "chunked"), (CL, "5")], false, Err(LengthAndEncoding)),
            (&[(CL, "5"), (TE, "chunked")], false, Err(LengthAndEncoding)),
            (&[(CL, "x"), (TE, "gzip")], false, Err(LengthAndEncoding)),
            (&[(TE, "chunked")], true, Err(EncodingInHttp10)),
            (&[(TE, "chunked, chunked")], false, Err(ChunkedTwice)),
            (
                &[(TE, "chunked"), (TE, "chunked")],
                false,
                Err(ChunkedTwice),
            ),
            (&[(TE, "chunked, gzip")], false, Err(NotChunked)),
            (&[(TE, "gzip")], false, Err(NotChunked)),
            (&[(TE, "identity")], false, Err(NotChunked)),
            (&[(TE, "xchunked")], false, Err(NotChunked)),
            (&[(TE, "chunked;q=1")], false, Err(NotChunked)),
            (&[(TE, "\"chunked\"")], false, Err(BadEncoding)),
            (&[(TE, "")], false, Err(BadEncoding)),
            (&[(TE, " , ")], false, Err(BadEncoding)),
            (&[(TE, "chunked"), (TE, "")], false, Err(BadEncoding)),
            (&[(TE, "gz ip, chunked")], false, Err(BadEncoding)),
            (&[(TE, "gzip, chunked")], false, Err(UnsupportedCoding)),
            (
                &[(TE, "gzip"), (TE, "chunked")],
                false,
                Err(UnsupportedCoding),
            ),
            (&[(TE, "gzip;q=1, chunked")], false, Err(UnsupportedCoding)),
            // Only the two framing names count: look-alikes are other fields.
            (&[("transfer_encoding", "chunked")], false, Ok(Empty)),
            (&[("content-lengths", "5")], false, Ok(Empty)),
        ];
        for (spec, http10, want) in table {
            assert_eq!(
                fields(spec).request(*http10),
                *want,
                "{spec:?} http10={http10}"
            );
        }
    }

    #[test]
    fn response_rules() {
        type Row = (
            &'static [(&'static str, &'static str)],
            bool,
            bool,
            Result<(Framing, bool), FramingError>,
        );
        let table: &[Row] = &[
            // (fields, bodiless, http10, decision)
            (&[], false, false, Ok((Close, false))),
            (&[(CL, "5")], false, false, Ok((Length(5), true))),
            (&[(CL, "5"), (CL, "5")], false, false, Ok((Length(5), true))),
            (
                &[(CL, "5"), (CL, "6")],
                false,
                false,
                Err(ConflictingLengths),
            ),
            (&[(CL, "x")], false, false, Err(BadLength)),
            (&[(TE, "chunked")], false, false, Ok((Chunked, true))),
            // Both: chunked wins, the connection is not reused.
            (
                &[(TE, "chunked"), (CL, "3")],
                false,
                false,
                Ok((Chunked, false)),
            ),
            (
                &[(CL, "3"), (TE, "chunked")],
                false,
                false,
                Ok((Chunked, false)),
            ),
            // Final coding not chunked: read until close.
            (&[(TE, "gzip")], false, false, Ok((Close, false))),
            (&[(TE, "chunked, gzip")], false, false, Ok((Close, false))),
            (&[(TE, "")], false, false, Ok((Close, false))),
            (&[(TE, "chunked")], false, true, Ok((Close, false))),
            (&[(TE, "chunked, chunked")], false, false, Err(ChunkedTwice)),
            (
                &[(TE, "gzip, chunked")],
                false,
                false,
                Err(UnsupportedCoding),
            ),
            // No body whatever the fields say (HEAD, 1xx, 204, 304).
            (&[(CL, "10")], true, false, Ok((Empty, true))),
            (&[(TE, "chunked")], true, false, Ok((Empty, true))),
            (&[(CL, "5"), (CL, "6")], true, false, Ok((Empty, true))),
        ];
        for (spec, bodiless, http10, want) in table {
            assert_eq!(
                fields(spec).response(*bodiless, *http10),
                *want,
                "{spec:?} bodiless={bodiless} http10={http10}"
            );
        }
    }
}
