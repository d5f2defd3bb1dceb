//! The header surgery a proxy owes both directions: hop-by-hop headers (RFC 9110 §7.6.1, plus
//! the ones `Connection` names) are dropped, the request is turned into origin form for the
//! upstream, everything else passes untouched.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{Uri, Version};

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1 and the de-facto
/// `Proxy-Connection`/`Keep-Alive`).
static HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::UPGRADE,
];

/// Drops hop-by-hop headers, including any header the `Connection` header names.
/// `Transfer-Encoding` is left to hyper, which re-frames the body for the next hop.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the names (cheap comparisons) finds the few present, if any; only those
    // are hashed for removal. Most messages carry none, or only `Connection: keep-alive`.
    let mut present: [Option<&'static HeaderName>; HOP_BY_HOP.len()] = Default::default();
    let mut any = false;
    for name in headers.keys() {
        // Every hop-by-hop name is 2, 7, 10, 16, 18 or 19 bytes long: most names are ruled
        // out by their length alone, before any comparison.
        if !matches!(name.as_str().len(), 2 | 7 | 10 | 16 | 18 | 19) {
            continue;
        }
        if let Some(i) = HOP_BY_HOP.iter().position(|h| h == name) {
            present[i] = Some(&HOP_BY_HOP[i]);
            any = true;
        }
    }
    if !any {
        return;
    }
    // Headers named by `Connection` other than the usual tokens (rare): collected first, as
    // removing them needs the `Connection` value we are about to drop.
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| {
            !t.eq_ignore_ascii_case("keep-alive")
                && !t.eq_ignore_ascii_case("close")
                && !t.is_empty()
        })
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in present.into_iter().flatten() {
        headers.remove(name);
    }
}

/// Turns the app's request into the one sent upstream: origin-form URI (the path and query
/// only — absolute-form is for proxies), `Host` kept as the app sent it (or taken from the
/// URI's authority for HTTP/2 and absolute-form requests that had none, or the service name as
/// a last resort), hop-by-hop headers dropped, version 1.1.
pub fn prepare(parts: &mut http::request::Parts, service: &str) {
    if !parts.headers.contains_key(header::HOST) {
        let host = match parts.uri.authority() {
            Some(auth) => HeaderValue::from_str(auth.as_str()),
            None => HeaderValue::from_str(service),
        };
        if let Ok(v) = host {
            parts.headers.insert(header::HOST, v);
        }
    }
    strip_hop_by_hop(&mut parts.headers);
    if parts.uri.authority().is_some() || parts.uri.scheme().is_some() {
        let path = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        parts.uri = Uri::from(path);
    }
    parts.version = Version::HTTP_11;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_hop_by_hop_and_connection_named_headers() {
        let mut h = HeaderMap::new();
        h.insert("connection", "keep-alive, x-private".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("x-private", "1".parse().unwrap());
        h.insert("upgrade", "websocket".parse().unwrap());
        h.insert("te", "trailers".parse().unwrap());
        h.insert("x-keep", "1".parse().unwrap());
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-keep"));
    }

    #[test]
    fn the_length_filter_admits_every_hop_by_hop_name() {
        for name in &HOP_BY_HOP {
            let mut h = HeaderMap::new();
            h.insert(name.clone(), HeaderValue::from_static("x"));
            strip_hop_by_hop(&mut h);
            assert!(h.is_empty(), "{name} was not dropped");
        }
    }

    #[test]
    fn prepares_origin_form_keeping_host() {
        let req = http::Request::builder()
            .uri("http://echo:80/a?b=1")
            .version(Version::HTTP_2)
            .body(())
            .unwrap();
        let (mut parts, ()) = req.into_parts();
        prepare(&mut parts, "echo");
        assert_eq!(parts.uri, "/a?b=1");
        assert_eq!(parts.headers["host"], "echo:80");
        assert_eq!(parts.version, Version::HTTP_11);
        // HTTP/1.0 without Host on a per-service port: the service name stands in.
        let (mut parts, ()) = http::Request::builder()
            .uri("/x")
            .body(())
            .unwrap()
            .into_parts();
        prepare(&mut parts, "users");
        assert_eq!(parts.uri, "/x");
        assert_eq!(parts.headers["host"], "users");
    }
}
