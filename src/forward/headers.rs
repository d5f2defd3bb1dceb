//! The header rules a proxy owes both directions: hop-by-hop headers (RFC 9110 §7.6.1, plus the
//! ones `Connection` names) do not cross waypost. The HTTP/1.1 client applies them where it
//! already walks every header anyway — while writing a request head and while parsing a
//! response head ([`h1`](super::h1)) — so no message is walked twice for them.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Whether `name` is hop-by-hop by itself (headers a `Connection` header names come on top):
/// the headers that describe one connection, not the message (RFC 9110 §7.6.1 and the de-facto
/// `Proxy-Connection`/`Keep-Alive`). `Trailer` is not one of them: it announces the trailer
/// fields end to end, and HTTP/1.1 servers send only the trailers it names.
pub fn is_hop_by_hop(name: &HeaderName) -> bool {
    is_hop_by_hop_bytes(name.as_str().as_bytes())
}

/// [`is_hop_by_hop`] for a name as it arrived on the wire (any letter case): every hop-by-hop
/// name is 2, 7, 10, 16, 18 or 19 bytes long, so one comparison at most, chosen by length.
pub fn is_hop_by_hop_bytes(name: &[u8]) -> bool {
    let is = |n: &str| name.eq_ignore_ascii_case(n.as_bytes());
    match name.len() {
        2 => is("te"),
        7 => is("upgrade"),
        10 => is("connection") || is("keep-alive"),
        16 => is("proxy-connection"),
        18 => is("proxy-authenticate"),
        19 => is("proxy-authorization"),
        _ => false,
    }
}

/// What `Connection` header values say: whether one lists `close`, and the other headers they
/// name (not `keep-alive`, which is hop-by-hop anyway). Allocates only when some are named.
pub fn connection_tokens<'a>(
    values: impl IntoIterator<Item = &'a [u8]>,
) -> (bool, Vec<HeaderName>) {
    let mut close = false;
    let mut named = Vec::new();
    for value in values {
        for token in tokens(value) {
            if token.eq_ignore_ascii_case(b"close") {
                close = true;
            } else if !token.eq_ignore_ascii_case(b"keep-alive") {
                if let Ok(name) = HeaderName::from_bytes(token) {
                    named.push(name);
                }
            }
        }
    }
    (close, named)
}

/// The elements of a comma-separated header value (RFC 9110 §5.6.1), trimmed, empty ones
/// skipped.
pub fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

/// Gives the request a `Host` when the app sent none: the URI's authority (HTTP/2 and
/// absolute-form requests), or the service name as a last resort. The app's own `Host` passes
/// unchanged; the request target goes out in origin form ([`h1::encode_request`]).
///
/// [`h1::encode_request`]: super::h1::encode_request
pub fn ensure_host(parts: &mut http::request::Parts, service: &str) {
    if parts.headers.contains_key(header::HOST) {
        return;
    }
    let host = match parts.uri.authority() {
        Some(auth) => HeaderValue::from_str(auth.as_str()),
        None => HeaderValue::from_str(service),
    };
    if let Ok(v) = host {
        parts.headers.insert(header::HOST, v);
    }
}

/// The `Connection` values of `headers`, as bytes (for [`connection_tokens`]).
pub fn connection_values(headers: &HeaderMap) -> impl Iterator<Item = &[u8]> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .map(HeaderValue::as_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_hop_by_hop_name_passes_the_length_filter_and_others_do_not() {
        let hop_by_hop = [
            header::CONNECTION,
            HeaderName::from_static("keep-alive"),
            HeaderName::from_static("proxy-connection"),
            header::PROXY_AUTHENTICATE,
            header::PROXY_AUTHORIZATION,
            header::TE,
            header::UPGRADE,
        ];
        for name in &hop_by_hop {
            assert!(is_hop_by_hop(name), "{name}");
            let upper = name.as_str().to_ascii_uppercase();
            assert!(is_hop_by_hop_bytes(upper.as_bytes()), "{name}");
        }
        for name in [
            "trailer",
            "x-keep",
            "content-length",
            "host",
            "user-agent",
            "tee",
        ] {
            assert!(!is_hop_by_hop(&HeaderName::from_static(name)), "{name}");
            assert!(!is_hop_by_hop_bytes(name.as_bytes()), "{name}");
        }
    }

    #[test]
    fn connection_tokens_find_close_and_named_headers() {
        let (close, named) = connection_tokens([&b"keep-alive, X-Private"[..], b" Close ,,"]);
        assert!(close);
        assert_eq!(named, [HeaderName::from_static("x-private")]);
        let (close, named) = connection_tokens([&b"keep-alive"[..]]);
        assert!(!close && named.is_empty());
    }

    #[test]
    fn host_comes_from_the_authority_or_the_service() {
        let req = http::Request::get("http://echo:80/a?b=1").body(()).unwrap();
        let (mut parts, ()) = req.into_parts();
        ensure_host(&mut parts, "echo");
        assert_eq!(parts.headers["host"], "echo:80");
        // HTTP/1.0 without Host on a per-service port: the service name stands in.
        let (mut parts, ()) = http::Request::get("/x").body(()).unwrap().into_parts();
        ensure_host(&mut parts, "users");
        assert_eq!(parts.headers["host"], "users");
        // The app's own Host is kept.
        let (mut parts, ()) = http::Request::get("http://a/")
            .header("host", "b")
            .body(())
            .unwrap()
            .into_parts();
        ensure_host(&mut parts, "c");
        assert_eq!(parts.headers["host"], "b");
    }
}
