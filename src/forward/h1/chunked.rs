//! The chunked transfer coding (RFC 9112 §7.1), decoded strictly: the one decoder that reads
//! app request bodies and upstream response bodies alike. Data comes out as slices of the
//! connection's read buffer (no copy); chunk extensions are checked and dropped; the trailer
//! section is parsed and filtered ([`super::fields::trailer_allowed`]). Anything a lenient
//! parser might read differently — a bare LF or CR, a size longer than 15 hex digits, data
//! longer than declared, whitespace where the grammar has none — is an error, so waypost never
//! forwards a body it framed differently from what the next hop will.

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue};

use super::fields::{is_tchar, trailer_allowed};

/// Longest chunk-size line accepted (size, extensions and CRLF).
pub const MAX_CHUNK_LINE: usize = 4096;
/// Most fields accepted in a trailer section.
pub const MAX_TRAILERS: usize = 64;
/// The most hex digits of a chunk size (a 60-bit size: ample, and no overflow).
const MAX_SIZE_DIGITS: usize = 15;

/// A chunked body that breaks the coding's rules (the rule is named).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed chunked body: {0}")]
pub struct ChunkError(pub &'static str);

/// Where the decoder is in a chunked body.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Decoder {
    step: Step,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum Step {
    /// Expecting a chunk-size line.
    #[default]
    Size,
    /// Inside a chunk's data: this many bytes left.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: the trailer section.
    Trailers,
    /// The body has ended.
    Done,
}

/// One step's worth of decoding.
#[derive(Debug, PartialEq)]
pub enum Decoded {
    /// The buffer holds no whole step: read more, then decode again.
    More,
    /// Chunk data (at most what the buffer held).
    Data(Bytes),
    /// The last chunk and the trailer section have been consumed; the allowed trailer fields,
    /// if there were any.
    End(Option<HeaderMap>),
}

impl Decoder {
    /// A decoder at the start of a body.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether the body has ended.
    pub fn is_done(&self) -> bool {
        self.step == Step::Done
    }

    /// Decodes from the front of `buf`, consuming what it used. `limit` bounds the trailer
    /// section (it must fit in the buffer).
    pub fn decode(&mut self, buf: &mut BytesMut, limit: usize) -> Result<Decoded, ChunkError> {
        loop {
            match self.step {
                Step::Done => return Ok(Decoded::End(None)),
                Step::Size => {
                    let Some(lf) = buf.iter().take(MAX_CHUNK_LINE).position(|&b| b == b'\n') else {
                        if buf.len() >= MAX_CHUNK_LINE {
                            return Err(ChunkError("chunk-size line too long"));
                        }
                        return Ok(Decoded::More);
                    };
                    let size = size_line(&buf[..lf])?;
                    buf.advance(lf + 1);
                    self.step = match size {
                        0 => Step::Trailers,
                        n => Step::Data(n),
                    };
                }
                Step::Data(left) => {
                    if buf.is_empty() {
                        return Ok(Decoded::More);
                    }
                    let take = (buf.len() as u64).min(left);
                    let data = buf.split_to(take as usize).freeze();
                    self.step = match left - take {
                        0 => Step::DataEnd,
                        n => Step::Data(n),
                    };
                    return Ok(Decoded::Data(data));
                }
                Step::DataEnd => match buf.get(..2) {
                    None if buf.first().is_some_and(|&b| b != b'\r') => {
                        return Err(ChunkError("chunk data not followed by CRLF"))
                    }
                    None => return Ok(Decoded::More),
                    Some(b"\r\n") => {
                        buf.advance(2);
                        self.step = Step::Size;
                    }
                    Some(_) => return Err(ChunkError("chunk data not followed by CRLF")),
                },
                Step::Trailers => {
                    let Some((len, trailers)) = trailer_section(buf, limit)? else {
                        return Ok(Decoded::More);
                    };
                    buf.advance(len);
                    self.step = Step::Done;
                    return Ok(Decoded::End(trailers));
                }
            }
        }
    }
}

/// The size in a chunk-size line (without its LF): 1 to 15 hex digits, then extensions
/// (`;name` or `;name=value`, with optional whitespace before `;` and around `=`), then CR.
fn size_line(line: &[u8]) -> Result<u64, ChunkError> {
    let line = line
        .strip_suffix(b"\r")
        .ok_or(ChunkError("chunk-size line not ended by CRLF"))?;
    let digits = line
        .iter()
        .position(|b| !b.is_ascii_hexdigit())
        .unwrap_or(line.len());
    if digits == 0 {
        return Err(ChunkError("bad chunk size"));
    }
    if digits > MAX_SIZE_DIGITS {
        return Err(ChunkError("chunk size longer than 15 hex digits"));
    }
    extensions(&line[digits..])?;
    let mut n = 0u64;
    for &d in &line[..digits] {
        let v = match d {
            b'0'..=b'9' => d - b'0',
            b'a'..=b'f' => d - b'a' + 10,
            _ => d - b'A' + 10,
        };
        n = n * 16 + u64::from(v);
    }
    Ok(n)
}

/// Checks `*( BWS ";" BWS name [ BWS "=" BWS value ] )`, value a token or a quoted string.
fn extensions(mut rest: &[u8]) -> Result<(), ChunkError> {
    const BAD: ChunkError = ChunkError("malformed chunk extension");
    let skip_ws =
        |s: &[u8]| -> usize { s.iter().take_while(|&&b| b == b' ' || b == b'\t').count() };
    // Garbage right after the digits makes a bad size; after an extension, a bad extension.
    let mut after = ChunkError("bad chunk size");
    loop {
        let ws = skip_ws(rest);
        rest = &rest[ws..];
        match rest.first() {
            None if ws == 0 => return Ok(()),
            Some(b';') => rest = &rest[1..],
            None | Some(_) => return Err(after),
        }
        after = BAD;
        rest = &rest[skip_ws(rest)..];
        let name = rest.iter().take_while(|&&b| is_tchar(b)).count();
        if name == 0 {
            return Err(BAD);
        }
        rest = &rest[name..];
        let ws = skip_ws(rest);
        if rest.get(ws) != Some(&b'=') {
            continue;
        }
        rest = &rest[ws + 1..];
        rest = &rest[skip_ws(rest)..];
        let value = if rest.first() == Some(&b'"') {
            quoted(rest).ok_or(BAD)?
        } else {
            rest.iter().take_while(|&&b| is_tchar(b)).count()
        };
        if value == 0 {
            return Err(BAD);
        }
        rest = &rest[value..];
    }
}

/// Length of the quoted string at the front of `s` (RFC 9110 §5.6.4), quotes included.
fn quoted(s: &[u8]) -> Option<usize> {
    let mut i = 1;
    while i < s.len() {
        match s[i] {
            b'"' => return Some(i + 1),
            b'\\' => {
                let next = *s.get(i + 1)?;
                if next != b'\t' && (next < b' ' || next == 0x7f) {
                    return None;
                }
                i += 2;
            }
            b'\t' | b' ' | 0x21 | 0x23..=0x5b | 0x5d..=0x7e | 0x80..=0xff => i += 1,
            _ => return None,
        }
    }
    None
}

/// The trailer section at the front of `buf`: its length and the fields that may travel, or
/// `None` when it is not complete yet.
fn trailer_section(
    buf: &[u8],
    limit: usize,
) -> Result<Option<(usize, Option<HeaderMap>)>, ChunkError> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_TRAILERS];
    let (len, fields) = match httparse::parse_headers(buf, &mut slots) {
        Ok(httparse::Status::Complete(parsed)) => parsed,
        Ok(httparse::Status::Partial) if buf.len() >= limit => {
            return Err(ChunkError("trailer section too large"))
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(ChunkError("too many trailer fields")),
        Err(_) => return Err(ChunkError("malformed trailer section")),
    };
    let mut trailers = HeaderMap::new();
    for f in fields.iter().filter(|f| trailer_allowed(f.name.as_bytes())) {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(f.name.as_bytes()),
            HeaderValue::from_bytes(f.value),
        ) else {
            return Err(ChunkError("malformed trailer field"));
        };
        trailers.append(name, value);
    }
    Ok(Some((len, (!trailers.is_empty()).then_some(trailers))))
}

#[cfg(test)]
#[path = "chunked/tests.rs"]
mod tests;
