//! The upstream side: one pooled hyper-util client shared by every request (keep-alive to each
//! instance), and the header surgery a proxy owes both directions — hop-by-hop headers (RFC 9110
//! §7.6.1, plus the ones `Connection` names) are dropped, everything else passes untouched and
//! bodies stream through without buffering.

use std::net::SocketAddr;
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri, Version};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::config::UpstreamConfig;

/// A pooled HTTP/1.1 client to upstream instances.
#[derive(Clone)]
pub struct Client {
    inner: hyper_util::client::legacy::Client<HttpConnector, Incoming>,
}

impl Client {
    /// Builds the client: TCP_NODELAY, the connect timeout, and a keep-alive pool of
    /// `max_idle_per_instance` connections per instance, closed after `idle_timeout`.
    pub fn new(cfg: &UpstreamConfig, connect_timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(connect_timeout));
        connector.set_keepalive(Some(Duration::from_secs(60)));
        let inner = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .pool_idle_timeout(cfg.idle_timeout.0)
            .pool_max_idle_per_host(cfg.max_idle_per_instance)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            // The app's Host header is passed on as sent; we add one only when it had none.
            .set_host(false)
            .build(connector);
        Self { inner }
    }

    /// Sends `req` (already prepared with [`prepare`]) and resolves to the response head.
    pub async fn send(&self, req: Request<Incoming>) -> Result<Response<Incoming>, hyper_util::client::legacy::Error> {
        self.inner.request(req).await
    }
}

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1 and the de-facto
/// `Proxy-Connection`/`Keep-Alive`).
const HOP_BY_HOP: [HeaderName; 8] = [
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
    // Most messages carry none: one pass comparing names (cheap for standard headers) is far
    // cheaper than hashing eight names for removal.
    if !headers.keys().any(|k| HOP_BY_HOP.contains(k)) {
        return;
    }
    if headers.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
}

/// Turns the app's request into the one sent to `addr`: origin path kept, authority set to the
/// instance (the pool key), `Host` kept as the app sent it (or set from the URI's authority for
/// HTTP/2 and absolute-form requests that had none), hop-by-hop headers dropped, version 1.1.
pub fn prepare(parts: &mut http::request::Parts, addr: SocketAddr) -> Result<(), http::Error> {
    if !parts.headers.contains_key(header::HOST) {
        if let Some(auth) = parts.uri.authority() {
            if let Ok(v) = HeaderValue::from_str(auth.as_str()) {
                parts.headers.insert(header::HOST, v);
            }
        }
    }
    strip_hop_by_hop(&mut parts.headers);
    let path = parts.uri.path_and_query().cloned().unwrap_or_else(|| PathAndQuery::from_static("/"));
    let authority = Authority::try_from(addr.to_string())?;
    parts.uri = Uri::builder().scheme(Scheme::HTTP).authority(authority).path_and_query(path).build()?;
    parts.version = Version::HTTP_11;
    Ok(())
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
    fn prepares_origin_form_to_the_instance() {
        let req = http::Request::builder().uri("http://echo:80/a?b=1").version(Version::HTTP_2).body(()).unwrap();
        let (mut parts, ()) = req.into_parts();
        prepare(&mut parts, "127.0.0.1:9000".parse().unwrap()).unwrap();
        assert_eq!(parts.uri, "http://127.0.0.1:9000/a?b=1");
        assert_eq!(parts.headers["host"], "echo:80");
        assert_eq!(parts.version, Version::HTTP_11);
    }
}
