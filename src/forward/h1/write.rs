//! The writers of HTTP/1 lines and fields, shared by both sides: what waypost writes towards
//! upstreams (request heads, chunks) and towards apps (status lines, response heads) goes
//! through these few functions.

use std::io::Write as _;

use http::StatusCode;

use super::framing::Framing;

/// One `name: value` field line and its CRLF.
pub fn field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Field lines copied from the received bytes in runs: consecutive lines written the way waypost
/// writes them (`name: value` and CRLF) go out with one copy for the run, rather than four per
/// field; other lines are written with [`field`]. Its methods are always inlined: they run for
/// every field of every head, and a call each costs about 200 instructions per request
/// (callgrind).
pub struct Lines<'a> {
    raw: &'a [u8],
    /// The pending run: start and end in `raw`.
    run: (usize, usize),
}

impl<'a> Lines<'a> {
    /// Lines of `raw`, the bytes the fields were parsed from.
    #[inline]
    pub fn new(raw: &'a [u8]) -> Self {
        Self { raw, run: (0, 0) }
    }

    /// Adds the field whose name is `raw[name.0..name.1]` and value `raw[value.0..value.1]`.
    #[inline(always)]
    pub fn push(&mut self, out: &mut Vec<u8>, name: (usize, usize), value: (usize, usize)) {
        let raw = self.raw;
        let canonical = raw.get(name.1..value.0) == Some(b": ")
            && raw.get(value.1..value.1 + 2) == Some(b"\r\n");
        if !canonical {
            self.flush(out);
            field(out, &raw[name.0..name.1], &raw[value.0..value.1]);
        } else if self.run.1 == name.0 && self.run.1 != 0 {
            self.run.1 = value.1 + 2;
        } else {
            self.flush(out);
            self.run = (name.0, value.1 + 2);
        }
    }

    /// Copies the pending run, if any: before anything else is written to `out`.
    #[inline(always)]
    pub fn flush(&mut self, out: &mut Vec<u8>) {
        if self.run.1 > self.run.0 {
            out.extend_from_slice(&self.raw[self.run.0..self.run.1]);
        }
        self.run = (0, 0);
    }
}

/// The framing field for a body framed as `framing`: `content-length` or
/// `transfer-encoding: chunked` (nothing for no body, or one delimited by close). Written last,
/// from the decision, on both sides.
#[inline(always)]
pub fn framing_field(out: &mut Vec<u8>, framing: Framing) {
    match framing {
        Framing::Length(n) => {
            out.extend_from_slice(b"content-length: ");
            decimal(out, n);
            out.extend_from_slice(b"\r\n");
        }
        Framing::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        Framing::Empty | Framing::Close => {}
    }
}

/// `n` in decimal digits (what `write!` does, without the formatting machinery).
pub fn decimal(out: &mut Vec<u8>, mut n: u64) {
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

/// The status line of a response to an HTTP/1.0 app (`http10`) or an HTTP/1.1 one: apps are
/// answered in their own version, as hyper's server does.
pub fn status_line(out: &mut Vec<u8>, status: StatusCode, http10: bool) {
    // The usual line, whole.
    if status == StatusCode::OK {
        out.extend_from_slice(if http10 {
            b"HTTP/1.0 200 OK\r\n"
        } else {
            b"HTTP/1.1 200 OK\r\n"
        });
        return;
    }
    out.extend_from_slice(if http10 { b"HTTP/1.0 " } else { b"HTTP/1.1 " });
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// The chunk-size line for `len` bytes of chunk data (hex and CRLF), written into `scratch`.
pub fn chunk_size(scratch: &mut [u8; 18], len: usize) -> &[u8] {
    let mut cursor = &mut scratch[..];
    // 16 hex digits and CRLF always fit in 18 bytes.
    let _ = write!(cursor, "{len:x}\r\n");
    let left = cursor.len();
    &scratch[..18 - left]
}

/// The last chunk, the trailer fields (already filtered) and the final CRLF (RFC 9112 §7.1.2).
pub fn last_chunk(out: &mut Vec<u8>, trailers: Option<&http::HeaderMap>) {
    out.extend_from_slice(b"0\r\n");
    for (name, value) in trailers.into_iter().flatten() {
        field(out, name.as_str().as_bytes(), value.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_lines() {
        let mut out = Vec::new();
        for n in [0u64, 7, 10, 1234567890, u64::MAX] {
            out.clear();
            decimal(&mut out, n);
            assert_eq!(out, n.to_string().as_bytes());
        }
        let mut scratch = [0u8; 18];
        assert_eq!(chunk_size(&mut scratch, 0), b"0\r\n");
        assert_eq!(chunk_size(&mut scratch, 4096), b"1000\r\n");
        assert_eq!(
            chunk_size(&mut scratch, usize::MAX),
            b"ffffffffffffffff\r\n"
        );
        out.clear();
        status_line(&mut out, StatusCode::NOT_FOUND, true);
        assert_eq!(out, b"HTTP/1.0 404 Not Found\r\n");
        out.clear();
        let mut t = http::HeaderMap::new();
        t.insert("x-sum", "42".parse().unwrap());
        last_chunk(&mut out, Some(&t));
        assert_eq!(out, b"0\r\nx-sum: 42\r\n\r\n");
    }
}
