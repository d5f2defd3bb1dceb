//! A strict RFC 9112 request parser for the recording upstream: it accepts only what a careful
//! proxy should send, and names the first thing that is not. Written from the RFC rather than on
//! top of httparse, so a mistake waypost inherits from its parser is not inherited here too.
//!
//! Three pure steps over a byte buffer: [`head`] (request line and fields), [`framing`] (which
//! bytes are the body, plus the rules that make framing ambiguous for the next hop: `Host`,
//! `Connection` naming framing fields) and [`body`] (the body itself, chunked decoded strictly).
//! Each answers [`Step::Partial`] until it has all it needs; a violation is final.

/// Largest head the recorder reads (waypost's own limit is 64 KiB).
pub const MAX_HEAD: usize = 256 * 1024;
/// Largest body the recorder decodes (the conformance cases send a few bytes).
pub const MAX_BODY: usize = 16 * 1024 * 1024;
/// Most digits a chunk size may have: 16 hex digits already exceed any real body.
const MAX_CHUNK_DIGITS: usize = 16;

/// The outcome of one parsing step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step<T> {
    /// More bytes are needed.
    Partial,
    /// Parsed; the value records how many bytes it used.
    Done(T),
    /// Not valid: what is wrong. Nothing after it can be framed.
    Bad(String),
}

/// A request head as it arrived.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Head {
    /// The method token.
    pub method: String,
    /// The request target, as sent.
    pub target: String,
    /// `HTTP/1.1` or `HTTP/1.0`.
    pub version: String,
    /// Fields in wire order: names as sent (letter case kept), values without surrounding OWS.
    pub fields: Vec<(String, String)>,
    /// Bytes of the head, final empty line included.
    pub len: usize,
}

/// Every value of field `name` (any letter case) in `fields`, in order.
pub fn values<'a>(fields: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    fields
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
        .collect()
}

impl Head {
    /// Every value of field `name` (any letter case), in order.
    pub fn all(&self, name: &str) -> Vec<&str> {
        values(&self.fields, name)
    }

    /// The list elements of every `name` field (RFC 9110 §5.6.1), trimmed, empty ones skipped.
    pub fn elements(&self, name: &str) -> Vec<String> {
        self.all(name)
            .iter()
            .flat_map(|v| v.split(','))
            .map(|e| e.trim_matches([' ', '\t']).to_string())
            .filter(|e| !e.is_empty())
            .collect()
    }
}

/// How the body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    None,
    /// `Content-Length` bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// A decoded body.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Body {
    /// The payload.
    pub data: Vec<u8>,
    /// Trailer fields after a chunked body.
    pub trailers: Vec<(String, String)>,
    /// Chunk extensions seen (well-formed ones; a malformed one is a violation).
    pub extensions: usize,
    /// Bytes of the body on the wire, framing included.
    pub len: usize,
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Whether `s` is a token (RFC 9110 §5.6.2).
pub fn is_token(s: &[u8]) -> bool {
    !s.is_empty() && s.iter().all(|&b| is_tchar(b))
}

/// Finds the next line of `buf` from `at`: its content (without CRLF) and where the next one
/// starts. Lines must end in CRLF; a bare CR or LF is a violation. `None` when incomplete.
pub fn line(buf: &[u8], at: usize) -> Option<Result<(&[u8], usize), String>> {
    let nl = at + buf[at..].iter().position(|&b| b == b'\n')?;
    if nl == at || buf[nl - 1] != b'\r' {
        return Some(Err(format!("bare LF at byte {nl}")));
    }
    let content = &buf[at..nl - 1];
    if let Some(i) = content.iter().position(|&b| b == b'\r') {
        return Some(Err(format!("bare CR at byte {}", at + i)));
    }
    Some(Ok((content, nl + 1)))
}

/// Parses one field line: `name ":" OWS value OWS`, name a token, value free of CTLs but HTAB.
fn field(content: &[u8]) -> Result<(String, String), String> {
    let show = || String::from_utf8_lossy(content).into_owned();
    if content.first().is_some_and(|b| *b == b' ' || *b == b'\t') {
        return Err(format!(
            "obs-fold (line starts with whitespace): {:?}",
            show()
        ));
    }
    let colon = content
        .iter()
        .position(|&b| b == b':')
        .ok_or_else(|| format!("field line without a colon: {:?}", show()))?;
    let (name, value) = (&content[..colon], &content[colon + 1..]);
    if !is_token(name) {
        return Err(format!("field name is not a token: {:?}", show()));
    }
    let value = value.trim_ascii_start().trim_ascii_end();
    if let Some(b) = value
        .iter()
        .find(|&&b| (b < 0x20 && b != b'\t') || b == 0x7f)
    {
        return Err(format!(
            "control byte {b:#04x} in field value: {:?}",
            show()
        ));
    }
    Ok((
        String::from_utf8_lossy(name).into_owned(),
        String::from_utf8_lossy(value).into_owned(),
    ))
}

/// Reads field lines from `at` up to and including the empty line ending the section.
pub fn fields(buf: &[u8], mut at: usize) -> Step<(Vec<(String, String)>, usize)> {
    let mut out = Vec::new();
    loop {
        match line(buf, at) {
            None => return Step::Partial,
            Some(Err(e)) => return Step::Bad(e),
            Some(Ok((content, next))) => {
                at = next;
                if content.is_empty() {
                    return Step::Done((out, at));
                }
                match field(content) {
                    Ok(f) => out.push(f),
                    Err(e) => return Step::Bad(e),
                }
            }
        }
    }
}

/// Parses the request head at the start of `buf`.
pub fn head(buf: &[u8]) -> Step<Head> {
    let step = head_unbounded(buf);
    match step {
        Step::Partial if buf.len() > MAX_HEAD => Step::Bad(format!("head over {MAX_HEAD} bytes")),
        other => other,
    }
}

fn head_unbounded(buf: &[u8]) -> Step<Head> {
    let (content, next) = match line(buf, 0) {
        None => return Step::Partial,
        Some(Err(e)) => return Step::Bad(e),
        Some(Ok(l)) => l,
    };
    let show = String::from_utf8_lossy(content);
    let parts: Vec<&[u8]> = content.split(|&b| b == b' ').collect();
    let [method, target, version] = parts[..] else {
        return Step::Bad(format!(
            "request line is not `method SP target SP version`: {show:?}"
        ));
    };
    if !is_token(method) {
        return Step::Bad(format!("method is not a token: {show:?}"));
    }
    if target.is_empty() || target.iter().any(|&b| !(0x21..=0x7e).contains(&b)) {
        return Step::Bad(format!("target has a byte outside visible ASCII: {show:?}"));
    }
    if target.contains(&b'#') {
        return Step::Bad(format!("target carries a fragment: {show:?}"));
    }
    if version != b"HTTP/1.1" && version != b"HTTP/1.0" {
        return Step::Bad(format!("version is not HTTP/1.1 or HTTP/1.0: {show:?}"));
    }
    match fields(buf, next) {
        Step::Partial => Step::Partial,
        Step::Bad(e) => Step::Bad(e),
        Step::Done((fields, len)) => Step::Done(Head {
            method: String::from_utf8_lossy(method).into_owned(),
            target: String::from_utf8_lossy(target).into_owned(),
            version: String::from_utf8_lossy(version).into_owned(),
            fields,
            len,
        }),
    }
}

/// Whether `value` is a valid `Host`: `host [ ":" port ]` with host a reg-name, an IPv4
/// address or a bracketed IPv6 address, and port digits (RFC 9110 §7.2, RFC 3986 §3.2.2).
pub fn is_host(value: &str) -> bool {
    let digits = |p: &str| p.bytes().all(|b| b.is_ascii_digit());
    if let Some(rest) = value.strip_prefix('[') {
        let Some((v6, after)) = rest.split_once(']') else {
            return false;
        };
        let port_ok = after.is_empty() || after.strip_prefix(':').is_some_and(digits);
        return port_ok && v6.parse::<std::net::Ipv6Addr>().is_ok();
    }
    let (host, port) = value.rsplit_once(':').unwrap_or((value, ""));
    let reg_name = |b: u8| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=%".contains(&b);
    !host.is_empty() && host.bytes().all(reg_name) && digits(port)
}

/// The framing of a parsed head, refusing everything that could make two parsers disagree:
/// `Content-Length` with `Transfer-Encoding`, several or list-valued lengths, any coding but one
/// `chunked`, `Transfer-Encoding` in HTTP/1.0, a `Connection` field naming `Content-Length`,
/// `Transfer-Encoding` or `Host` (the next hop would drop it), a missing, doubled or invalid
/// `Host`, and targets a proxy should not send (authority-form, `*` with another method).
pub fn framing(head: &Head) -> Result<Framing, String> {
    let hosts = head.all("host");
    match (head.version.as_str(), hosts.len()) {
        ("HTTP/1.1", 0) => return Err("no Host in an HTTP/1.1 request".into()),
        (_, 2..) => return Err(format!("{} Host fields: {hosts:?}", hosts.len())),
        _ => {}
    }
    if let Some(bad) = hosts.iter().find(|h| !is_host(h)) {
        return Err(format!("invalid Host {bad:?}"));
    }
    let t = head.target.as_str();
    if t == "*" && head.method != "OPTIONS" {
        return Err(format!("asterisk-form with {}", head.method));
    }
    if !t.starts_with('/') && t != "*" && !t.contains("://") {
        return Err(format!("authority-form target {t:?}"));
    }
    for token in head.elements("connection") {
        if !is_token(token.as_bytes()) {
            return Err(format!("Connection element is not a token: {token:?}"));
        }
        let t = token.to_ascii_lowercase();
        if ["content-length", "transfer-encoding", "host"].contains(&t.as_str()) {
            return Err(format!("Connection names {token}"));
        }
    }
    let te = head.all("transfer-encoding");
    let cl = head.all("content-length");
    if !te.is_empty() {
        if !cl.is_empty() {
            return Err(format!(
                "both Transfer-Encoding {te:?} and Content-Length {cl:?}"
            ));
        }
        if head.version == "HTTP/1.0" {
            return Err("Transfer-Encoding in an HTTP/1.0 request".into());
        }
        if te.len() > 1 {
            return Err(format!("{} Transfer-Encoding fields: {te:?}", te.len()));
        }
        if !te[0].eq_ignore_ascii_case("chunked") {
            return Err(format!(
                "Transfer-Encoding is not exactly `chunked`: {:?}",
                te[0]
            ));
        }
        return Ok(Framing::Chunked);
    }
    match cl[..] {
        [] => Ok(Framing::None),
        [v] if (1..=19).contains(&v.len()) && v.bytes().all(|b| b.is_ascii_digit()) => v
            .parse()
            .map(Framing::Length)
            .map_err(|_| format!("Content-Length overflows: {v:?}")),
        [v] => Err(format!("Content-Length is not 1*DIGIT: {v:?}")),
        _ => Err(format!("{} Content-Length fields: {cl:?}", cl.len())),
    }
}

/// Parses a chunk-size line's content: `1*HEXDIG *( BWS ";" BWS name [ BWS "=" BWS value ] )`,
/// value a token or a quoted-string. Returns the size and the number of extensions.
fn chunk_size(content: &[u8]) -> Result<(u64, usize), String> {
    let show = || String::from_utf8_lossy(content).into_owned();
    let digits = content.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > MAX_CHUNK_DIGITS {
        return Err(format!("bad chunk size {:?}", show()));
    }
    let size = u64::from_str_radix(std::str::from_utf8(&content[..digits]).unwrap_or(""), 16)
        .map_err(|_| format!("chunk size overflows: {:?}", show()))?;
    let mut rest = &content[digits..];
    let mut extensions = 0;
    let skip_ws =
        |s: &[u8]| -> usize { s.iter().take_while(|&&b| b == b' ' || b == b'\t').count() };
    let token_len = |s: &[u8]| -> usize { s.iter().take_while(|&&b| is_tchar(b)).count() };
    loop {
        if rest.is_empty() {
            return Ok((size, extensions));
        }
        // BWS is allowed only before a `;` (RFC 9112 §7.1.1): `5 ` alone is not a chunk size.
        rest = &rest[skip_ws(rest)..];
        if rest.first() != Some(&b';') {
            return Err(format!("junk after chunk size: {:?}", show()));
        }
        rest = &rest[1..];
        rest = &rest[skip_ws(rest)..];
        let n = token_len(rest);
        if n == 0 {
            return Err(format!("chunk extension without a name: {:?}", show()));
        }
        rest = &rest[n..];
        extensions += 1;
        let ws = skip_ws(rest);
        if rest.get(ws) != Some(&b'=') {
            continue;
        }
        rest = &rest[ws + 1..];
        rest = &rest[skip_ws(rest)..];
        if rest.first() == Some(&b'"') {
            let mut i = 1;
            loop {
                match rest.get(i) {
                    None => return Err(format!("unterminated quoted string: {:?}", show())),
                    Some(b'"') => break,
                    Some(b'\\') => i += 2,
                    Some(&b) if b == b'\t' || (0x20..0x7f).contains(&b) || b >= 0x80 => i += 1,
                    Some(b) => {
                        return Err(format!("byte {b:#04x} in chunk extension: {:?}", show()))
                    }
                }
            }
            rest = &rest[i + 1..];
        } else {
            let n = token_len(rest);
            if n == 0 {
                return Err(format!("chunk extension without a value: {:?}", show()));
            }
            rest = &rest[n..];
        }
    }
}

/// Parses the body at the start of `buf` as `framing` says.
pub fn body(framing: Framing, buf: &[u8]) -> Step<Body> {
    match framing {
        Framing::None => Step::Done(Body::default()),
        Framing::Length(n) if n as usize > MAX_BODY => Step::Bad(format!("body of {n} bytes")),
        Framing::Length(n) if buf.len() < n as usize => Step::Partial,
        Framing::Length(n) => Step::Done(Body {
            data: buf[..n as usize].to_vec(),
            len: n as usize,
            ..Body::default()
        }),
        Framing::Chunked => chunked(buf),
    }
}

fn chunked(buf: &[u8]) -> Step<Body> {
    let mut out = Body::default();
    let mut at = 0;
    loop {
        let (content, next) = match line(buf, at) {
            None if buf.len() - at > 4096 => return Step::Bad("chunk size line over 4 KiB".into()),
            None => return Step::Partial,
            Some(Err(e)) => return Step::Bad(format!("in chunk size line: {e}")),
            Some(Ok(l)) => l,
        };
        let (size, ext) = match chunk_size(content) {
            Ok(s) => s,
            Err(e) => return Step::Bad(e),
        };
        out.extensions += ext;
        at = next;
        if size == 0 {
            return match fields(buf, at) {
                Step::Partial => Step::Partial,
                Step::Bad(e) => Step::Bad(format!("in trailer section: {e}")),
                Step::Done((trailers, end)) => {
                    out.trailers = trailers;
                    out.len = end;
                    Step::Done(out)
                }
            };
        }
        if out.data.len() as u64 + size > MAX_BODY as u64 {
            return Step::Bad(format!("chunked body over {MAX_BODY} bytes"));
        }
        let size = size as usize;
        if buf.len() < at + size + 2 {
            return Step::Partial;
        }
        if &buf[at + size..at + size + 2] != b"\r\n" {
            return Step::Bad(format!("chunk of {size} bytes not followed by CRLF"));
        }
        out.data.extend_from_slice(&buf[at..at + size]);
        at += size + 2;
    }
}
