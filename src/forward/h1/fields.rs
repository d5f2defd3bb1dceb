//! What waypost knows about field names and values, for both directions: which fields are
//! hop-by-hop (RFC 9110 §7.6.1), how a list value splits into elements, what a token and a valid
//! `Host` are, and which fields may travel in a trailer section.
//!
//! Names arrive in any letter case. Every check here compares by length first, so most names
//! are ruled out without a comparison: the hot path (a GET with a handful of fields) pays a
//! `match` on the length per field.

/// Whether `name` is hop-by-hop by itself — the fields that describe one connection, not the
/// message (RFC 9110 §7.6.1 and the de-facto `Proxy-Connection`/`Keep-Alive`). The fields a
/// `Connection` field names come on top. `Trailer` is not one of them: it announces trailer
/// fields end to end.
pub fn is_hop_by_hop(name: &[u8]) -> bool {
    let is = |n: &[u8]| name.eq_ignore_ascii_case(n);
    match name.len() {
        2 => is(b"te"),
        7 => is(b"upgrade"),
        10 => is(b"connection") || is(b"keep-alive"),
        16 => is(b"proxy-connection"),
        18 => is(b"proxy-authenticate"),
        19 => is(b"proxy-authorization"),
        _ => false,
    }
}

/// Whether `name` frames or routes a message (`Content-Length`, `Transfer-Encoding`, `Host`):
/// fields a `Connection` field may not name on a request (README, "HTTP/1 policy").
pub fn is_framing_or_routing(name: &[u8]) -> bool {
    let is = |n: &[u8]| name.eq_ignore_ascii_case(n);
    match name.len() {
        4 => is(b"host"),
        14 => is(b"content-length"),
        17 => is(b"transfer-encoding"),
        _ => false,
    }
}

/// The elements of a comma-separated list value (RFC 9110 §5.6.1), with the optional
/// whitespace around them trimmed and empty elements skipped.
pub fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(trim_ows)
        .filter(|t| !t.is_empty())
}

/// Whether a `Connection` field of `headers` names `name` (asked only when some field does
/// name another: a rare message).
pub fn named_by_connection(headers: &[httparse::Header<'_>], name: &[u8]) -> bool {
    headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("connection"))
        .flat_map(|h| tokens(h.value))
        .any(|t| t.eq_ignore_ascii_case(name))
}

/// `value` without leading and trailing optional whitespace (SP and HTAB).
pub fn trim_ows(value: &[u8]) -> &[u8] {
    let start = value
        .iter()
        .position(|&b| b != b' ' && b != b'\t')
        .unwrap_or(value.len());
    let end = value
        .iter()
        .rposition(|&b| b != b' ' && b != b'\t')
        .map_or(start, |i| i + 1);
    &value[start..end]
}

/// Whether `b` is a token character (RFC 9110 §5.6.2: visible ASCII but delimiters).
pub fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Whether `s` is a non-empty token.
pub fn is_token(s: &[u8]) -> bool {
    !s.is_empty() && s.iter().all(|&b| is_tchar(b))
}

/// Whether `value` is a valid `Host` / authority: `host[:port]`, where host is a reg-name
/// (unreserved, sub-delims, pct-encoded), an IPv4 address (a reg-name by its characters) or an
/// `[IPv6]` literal, and port is 1 to 5 digits (RFC 9110 §7.2, RFC 3986 §3.2). No userinfo.
pub fn is_valid_host(value: &[u8]) -> bool {
    let (host, port) = match value.first() {
        Some(b'[') => match value.iter().position(|&b| b == b']') {
            Some(end) => {
                let inside = &value[1..end];
                let ok = !inside.is_empty()
                    && inside
                        .iter()
                        .all(|&b| b.is_ascii_hexdigit() || b == b':' || b == b'.');
                if !ok {
                    return false;
                }
                match &value[end + 1..] {
                    [] => return true,
                    [b':', port @ ..] => (&value[..=end], Some(port)),
                    _ => return false,
                }
            }
            None => return false,
        },
        _ => match value.iter().rposition(|&b| b == b':') {
            Some(colon) => (&value[..colon], Some(&value[colon + 1..])),
            None => (value, None),
        },
    };
    if let Some(port) = port {
        if port.is_empty() || port.len() > 5 || !port.iter().all(u8::is_ascii_digit) {
            return false;
        }
    }
    if host.first() == Some(&b'[') {
        return true;
    }
    reg_name(host)
}

/// RFC 3986 reg-name: unreserved, sub-delims and `%HH`.
fn reg_name(host: &[u8]) -> bool {
    let mut i = 0;
    while i < host.len() {
        let b = host[i];
        if b == b'%' {
            let hex = host.get(i + 1..i + 3);
            if !hex.is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) {
                return false;
            }
            i += 3;
            continue;
        }
        if !REG_NAME[b as usize] {
            return false;
        }
        i += 1;
    }
    true
}

/// The bytes a reg-name may hold as they are: unreserved (`A-Z a-z 0-9 - . _ ~`) and
/// sub-delims (`! $ & ' ( ) * + , ; =`). One load per byte: this runs on every request's `Host`.
static REG_NAME: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = c.is_ascii_alphanumeric()
            || matches!(c, b'-' | b'.' | b'_' | b'~')
            || matches!(
                c,
                b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'='
            );
        b += 1;
    }
    t
};

/// Whether a trailer field named `name` may be forwarded (README, "HTTP/1 policy": never the
/// framing, routing, hop-by-hop, authentication, request-modifier, response-control or
/// content-handling fields — a recipient might merge trailers into the head, and none of those
/// may change after the head was acted on). `x-waypost-error` is refused too: only waypost
/// sets it.
pub fn trailer_allowed(name: &[u8]) -> bool {
    if name.len() > 3 && name[..3].eq_ignore_ascii_case(b"if-") {
        return false;
    }
    let is = |n: &[u8]| name.eq_ignore_ascii_case(n);
    let refused = match name.len() {
        2 => is(b"te"),
        3 => is(b"age"),
        4 => is(b"host") || is(b"date") || is(b"vary"),
        5 => is(b"range"),
        6 => is(b"cookie") || is(b"expect") || is(b"pragma"),
        7 => is(b"trailer") || is(b"upgrade") || is(b"expires") || is(b"warning"),
        8 => is(b"location"),
        10 => is(b"connection") || is(b"keep-alive") || is(b"set-cookie"),
        11 => is(b"retry-after"),
        12 => is(b"content-type") || is(b"max-forwards"),
        13 => is(b"authorization") || is(b"cache-control") || is(b"content-range"),
        14 => is(b"content-length"),
        15 => is(b"x-waypost-error"),
        16 => is(b"proxy-connection") || is(b"content-encoding") || is(b"www-authenticate"),
        17 => is(b"transfer-encoding"),
        18 => is(b"proxy-authenticate"),
        19 => is(b"proxy-authorization"),
        _ => false,
    };
    !refused
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_names_in_any_case_and_nothing_else() {
        for name in [
            "connection",
            "keep-alive",
            "proxy-connection",
            "proxy-authenticate",
            "proxy-authorization",
            "te",
            "upgrade",
        ] {
            assert!(is_hop_by_hop(name.as_bytes()), "{name}");
            assert!(
                is_hop_by_hop(name.to_ascii_uppercase().as_bytes()),
                "{name}"
            );
        }
        for name in [
            "trailer",
            "x-keep",
            "content-length",
            "host",
            "tee",
            "upgrades",
        ] {
            assert!(!is_hop_by_hop(name.as_bytes()), "{name}");
        }
    }

    #[test]
    fn list_elements_are_trimmed_and_empty_ones_skipped() {
        let got: Vec<&[u8]> = tokens(b" a ,\tb\t,, c,").collect();
        assert_eq!(got, [&b"a"[..], b"b", b"c"]);
        assert_eq!(tokens(b" , ").count(), 0);
        assert_eq!(trim_ows(b" \t x y\t "), b"x y");
        assert_eq!(trim_ows(b"  "), b"");
    }

    #[test]
    fn host_syntax() {
        for ok in [
            "echo",
            "echo:80",
            "ECHO:8080",
            "a.b-c_d~e",
            "127.0.0.1:1",
            "[::1]",
            "[::1]:80",
            "[fd00::10]:8080",
            "%41bc",
            "a!$&'()*+,;=b",
            "",
        ] {
            assert!(is_valid_host(ok.as_bytes()), "{ok:?} is valid");
        }
        for bad in [
            "echo:",
            "echo:80:80",
            "echo:123456",
            "echo:8a",
            "u@echo",
            "a b",
            "[::1",
            "[::1]x",
            "[]",
            "[g::1]",
            "%4",
            "%zz",
            "echo/x",
            "ech\"o",
        ] {
            assert!(!is_valid_host(bad.as_bytes()), "{bad:?} is invalid");
        }
    }

    #[test]
    fn trailer_fields_that_may_not_travel() {
        for name in [
            "Content-Length",
            "transfer-encoding",
            "trailer",
            "te",
            "host",
            "connection",
            "keep-alive",
            "upgrade",
            "proxy-authorization",
            "authorization",
            "www-authenticate",
            "cookie",
            "set-cookie",
            "cache-control",
            "expect",
            "max-forwards",
            "pragma",
            "range",
            "if-match",
            "If-None-Match",
            "age",
            "expires",
            "date",
            "location",
            "retry-after",
            "vary",
            "warning",
            "content-encoding",
            "content-type",
            "content-range",
            "x-waypost-error",
        ] {
            assert!(
                !trailer_allowed(name.as_bytes()),
                "{name} must not be forwarded"
            );
        }
        for name in ["x-checksum", "server-timing", "grpc-status", "etag", "if"] {
            assert!(trailer_allowed(name.as_bytes()), "{name} may be forwarded");
        }
    }

    #[test]
    fn tokens_and_framing_names() {
        assert!(is_token(b"chunked"));
        assert!(!is_token(b""));
        assert!(!is_token(b"\"chunked\""));
        assert!(!is_token(b"a b"));
        for name in ["Host", "content-length", "TRANSFER-ENCODING"] {
            assert!(is_framing_or_routing(name.as_bytes()), "{name}");
        }
        assert!(!is_framing_or_routing(b"te"));
    }
}
