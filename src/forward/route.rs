//! Which service a request is for. The app names it in one of three ways:
//!
//! - **Host header** on the outbound listener: `Host: echo` or `Host: echo:80` (the port is
//!   ignored: the instances carry their own).
//! - **Absolute-form URI** (apps with `HTTP_PROXY` set send `GET http://echo/path`): its
//!   authority replaced the `Host` field when the head was parsed, so it routes the same way;
//!   HTTP/2's `:authority`, which hyper exposes as the URI's authority.
//! - **A dedicated listener** per service (`services.<name>.listen`): everything arriving there is
//!   for that service.
//! - **A path prefix** on a listener (`routes:`, `services.<name>.routes:`), matched before the
//!   other ways: the longest matching prefix names the service, and `strip` removes the prefix
//!   from the path sent upstream ([`by_prefix`], [`PrefixRoute`]).
//!
//! Names are lowercase host names; an uppercase Host is folded (the only allocation, and only for
//! such requests).

use std::borrow::Cow;
use std::sync::Arc;

use http::request::Parts;
use http::uri::PathAndQuery;

use super::rescue::ForwardError;
use crate::config::RouteConfig;

/// Which listener a connection arrived on.
#[derive(Debug, Clone)]
pub enum Listener {
    /// The outbound listener: the request names its service.
    Outbound(Routes),
    /// A per-service listener.
    Service(Arc<str>, Routes),
}

/// A listener's path-prefix routes, longest prefix first (empty for most listeners).
pub type Routes = Arc<[PrefixRoute]>;

/// One path-prefix route.
#[derive(Debug, Clone)]
pub struct PrefixRoute {
    prefix: Box<str>,
    service: Arc<str>,
    strip: bool,
}

impl PrefixRoute {
    /// The service requests under the prefix go to.
    pub fn service(&self) -> &str {
        &self.service
    }

    /// `path` (and its query) without the prefix, keeping a leading `/`.
    fn stripped<'p>(&self, path: &'p [u8]) -> (bool, &'p [u8]) {
        let rest = &path[self.prefix.len()..];
        (!rest.starts_with(b"/"), rest)
    }
}

/// The routes of `configs`, longest prefix first (so the first match is the longest).
pub fn routes(configs: &[RouteConfig]) -> Routes {
    let mut routes: Vec<PrefixRoute> = configs
        .iter()
        .map(|r| PrefixRoute {
            prefix: r.prefix.as_str().into(),
            service: r.service.as_str().into(),
            strip: r.strip,
        })
        .collect();
    routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
    routes.into()
}

impl Listener {
    /// The outbound listener without routes.
    pub fn outbound() -> Self {
        Listener::Outbound(Arc::new([]))
    }

    #[inline]
    fn routes(&self) -> &[PrefixRoute] {
        match self {
            Listener::Outbound(r) | Listener::Service(_, r) => r,
        }
    }
}

/// The route of the longest prefix of `path` on `listener`, if any.
pub fn by_prefix<'l>(path: &[u8], listener: &'l Listener) -> Option<&'l PrefixRoute> {
    listener
        .routes()
        .iter()
        .find(|r| path.starts_with(r.prefix.as_bytes()))
}

/// Routes an HTTP/1 request by its path: `head` is the upstream head being built, whose
/// request line carries the origin-form target. On a match, a stripping route rewrites the
/// target in place. (The `Host` offsets of the request no longer hold after that; routing is
/// their only reader and it is done.)
#[inline]
pub fn by_prefix_h1<'l>(head: &mut Vec<u8>, listener: &'l Listener) -> Option<&'l str> {
    if listener.routes().is_empty() {
        return None;
    }
    strip_h1(head, listener)
}

/// [`by_prefix_h1`] on a listener with routes (kept out of line: most listeners have none).
#[inline(never)]
fn strip_h1<'l>(head: &mut Vec<u8>, listener: &'l Listener) -> Option<&'l str> {
    let start = head.iter().position(|&b| b == b' ')? + 1;
    let len = head[start..].iter().position(|&b| b == b' ')?;
    let route = by_prefix(&head[start..start + len], listener)?;
    if route.strip {
        let (slash, _) = route.stripped(&head[start..start + len]);
        let cut = start..start + route.prefix.len();
        if slash {
            head.splice(cut, *b"/");
        } else {
            head.drain(cut);
        }
    }
    Some(route.service())
}

/// [`by_prefix`] for an HTTP/2 request: on a match, a stripping route rewrites the URI's path.
fn by_prefix_h2<'l>(parts: &mut Parts, listener: &'l Listener) -> Option<&'l str> {
    if listener.routes().is_empty() {
        return None;
    }
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let route = by_prefix(target.as_bytes(), listener)?;
    if route.strip {
        let (slash, rest) = route.stripped(target.as_bytes());
        let mut new = Vec::with_capacity(rest.len() + 1);
        if slash {
            new.push(b'/');
        }
        new.extend_from_slice(rest);
        let mut uri = std::mem::take(&mut parts.uri).into_parts();
        uri.path_and_query = PathAndQuery::from_maybe_shared(bytes::Bytes::from(new)).ok();
        parts.uri = http::Uri::from_parts(uri).unwrap_or_default();
    }
    Some(route.service())
}

/// The service named by an HTTP/2 request `parts` arriving on `listener`: a path-prefix route
/// (whose `strip` rewrites the path), else its `:authority` (exposed as the URI's authority;
/// `http` only), else its `Host` field.
pub fn service_name<'a>(
    parts: &'a mut Parts,
    listener: &'a Listener,
) -> Result<Cow<'a, str>, ForwardError> {
    if parts.method == http::Method::CONNECT {
        return Err(ForwardError::MethodNotAllowed(http::Method::CONNECT));
    }
    if let Some(service) = by_prefix_h2(parts, listener) {
        return Ok(Cow::Borrowed(service));
    }
    if let Some(scheme) = parts.uri.scheme_str() {
        if !scheme.eq_ignore_ascii_case("http") {
            return Err(ForwardError::BadRequest(
                "only http:// requests can be forwarded",
            ));
        }
    }
    let host = match parts.uri.authority() {
        Some(authority) => Some(authority.as_str().as_bytes()),
        None => parts.headers.get(http::header::HOST).map(|v| v.as_bytes()),
    };
    named(host, listener)
}

/// The service named by a `Host` value (`host[:port]`, or an absolute-form authority, which
/// replaced it), unless `listener` is a service's own.
pub fn named<'a>(
    host: Option<&'a [u8]>,
    listener: &'a Listener,
) -> Result<Cow<'a, str>, ForwardError> {
    if let Listener::Service(name, _) = listener {
        return Ok(Cow::Borrowed(name));
    }
    let value = host.ok_or(ForwardError::BadRequest(
        "no Host: name the service in Host, use an absolute-form URI, or a per-service listener",
    ))?;
    let text = std::str::from_utf8(value)
        .map_err(|_| ForwardError::BadRequest("Host is not valid text"))?;
    let host = strip_port(text).ok_or(ForwardError::BadRequest("malformed Host"))?;
    if host.is_empty() {
        return Err(ForwardError::BadRequest("empty host"));
    }
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Ok(Cow::Owned(host.to_ascii_lowercase()))
    } else {
        Ok(Cow::Borrowed(host))
    }
}

/// `echo:80` → `echo`; `[::1]:80` → `[::1]`; rejects empty ports and stray colons.
fn strip_port(host: &str) -> Option<&str> {
    let host = host.trim();
    if host.starts_with('[') {
        let end = host.find(']')?;
        let rest = &host[end + 1..];
        return (rest.is_empty() || valid_port(rest.strip_prefix(':')?)).then_some(&host[..=end]);
    }
    match host.split_once(':') {
        None => Some(host),
        Some((name, port)) if valid_port(port) => Some(name),
        Some(_) => None,
    }
}

fn valid_port(p: &str) -> bool {
    !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(uri: &str, host: Option<&str>) -> Parts {
        let mut b = http::Request::builder().uri(uri);
        if let Some(h) = host {
            b = b.header("host", h);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn names_the_service_three_ways() {
        let out = Listener::outbound();
        let users = Listener::Service("users".into(), Arc::new([]));
        for (host, listener, want) in [
            (Some("echo"), &out, "echo"),
            (Some("echo:80"), &out, "echo"),
            (Some("ECHO"), &out, "echo"),
            (Some("[::1]:80"), &out, "[::1]"),
            // A per-service listener ignores the host, and needs none.
            (Some("anything"), &users, "users"),
            (None, &users, "users"),
        ] {
            let got = named(host.map(str::as_bytes), listener).unwrap();
            assert_eq!(got, want, "{host:?}");
        }
        // HTTP/2: the authority wins over Host.
        for (uri, host, want) in [
            ("http://echo/x", Some("other"), "echo"),
            ("http://echo:8080/x", None, "echo"),
            ("/x", Some("ECHO"), "echo"),
        ] {
            let mut head = parts(uri, host);
            assert_eq!(
                service_name(&mut head, &out).unwrap(),
                want,
                "{uri} {host:?}"
            );
        }
    }

    fn with_routes(routes: &[(&str, &str, bool)]) -> Listener {
        let configs: Vec<RouteConfig> = routes
            .iter()
            .map(|(prefix, service, strip)| RouteConfig {
                prefix: prefix.to_string(),
                service: crate::config::ServiceName::parse(service).unwrap(),
                strip: *strip,
            })
            .collect();
        Listener::Outbound(super::routes(&configs))
    }

    #[test]
    fn the_longest_prefix_wins_and_strip_keeps_a_leading_slash() {
        let l = with_routes(&[
            ("/api/", "api", false),
            ("/api/shop/", "shop", true),
            ("/api/shop", "shop-exact", true),
            ("/static", "files", false),
        ]);
        for (target, service, sent) in [
            ("/api/shop/items?id=1", Some("shop"), "/items?id=1"),
            ("/api/shop/", Some("shop"), "/"),
            ("/api/shop?x", Some("shop-exact"), "/?x"),
            ("/api/shopping", Some("shop-exact"), "/ping"),
            ("/api/users", Some("api"), "/api/users"),
            ("/static/a.css", Some("files"), "/static/a.css"),
            ("/other", None, "/other"),
            ("*", None, "*"),
        ] {
            let mut head = format!("GET {target} HTTP/1.1\r\nHost: x\r\n").into_bytes();
            assert_eq!(by_prefix_h1(&mut head, &l), service, "{target}");
            let want = format!("GET {sent} HTTP/1.1\r\nHost: x\r\n");
            assert_eq!(String::from_utf8(head).unwrap(), want);
            if target != "*" {
                let mut p = parts(&format!("http://x{target}"), None);
                let got = service_name(&mut p, &l).unwrap();
                assert_eq!(got, service.unwrap_or("x"), "{target}");
                assert_eq!(p.uri.path_and_query().unwrap().as_str(), sent, "{target}");
            }
        }
        // Without routes, nothing is looked at.
        let mut head = b"GET /api/shop/ HTTP/1.1\r\n".to_vec();
        assert_eq!(by_prefix_h1(&mut head, &Listener::outbound()), None);
    }

    #[test]
    fn rejects_what_cannot_be_routed() {
        let out = Listener::outbound();
        for host in [None, Some("echo:"), Some("a:b:c"), Some(""), Some(":80")] {
            let e = named(host.map(str::as_bytes), &out).unwrap_err();
            assert_eq!(e.kind(), "bad_request", "{host:?}");
        }
        let e = service_name(&mut parts("https://echo/x", None), &out).unwrap_err();
        assert_eq!(e.kind(), "bad_request");
        let mut connect = parts("/", Some("echo"));
        connect.method = http::Method::CONNECT;
        assert_eq!(
            service_name(&mut connect, &out).unwrap_err().kind(),
            "method_not_allowed"
        );
    }
}
