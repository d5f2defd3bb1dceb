//! Which service a request is for. The app names it in one of three ways:
//!
//! - **Host header** on the outbound listener: `Host: echo` or `Host: echo:80` (the port is
//!   ignored: the instances carry their own).
//! - **Absolute-form URI** (apps with `HTTP_PROXY` set send `GET http://echo/path`): its
//!   authority replaced the `Host` field when the head was parsed, so it routes the same way;
//!   HTTP/2's `:authority`, which hyper exposes as the URI's authority.
//! - **A dedicated listener** per service (`services.<name>.listen`): everything arriving there is
//!   for that service.
//!
//! Names are lowercase host names; an uppercase Host is folded (the only allocation, and only for
//! such requests).

use std::borrow::Cow;

use http::request::Parts;

use super::rescue::ForwardError;

/// Which listener a connection arrived on.
#[derive(Debug, Clone)]
pub enum Listener {
    /// The outbound listener: the request names its service.
    Outbound,
    /// A per-service listener.
    Service(std::sync::Arc<str>),
}

/// The service named by an HTTP/2 request `parts` arriving on `listener`: its `:authority`
/// (exposed as the URI's authority; `http` only), else its `Host` field.
pub fn service_name<'a>(
    parts: &'a Parts,
    listener: &'a Listener,
) -> Result<Cow<'a, str>, ForwardError> {
    if parts.method == http::Method::CONNECT {
        return Err(ForwardError::MethodNotAllowed(http::Method::CONNECT));
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
    if let Listener::Service(name) = listener {
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
        let out = Listener::Outbound;
        let users = Listener::Service("users".into());
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
            let head = parts(uri, host);
            assert_eq!(service_name(&head, &out).unwrap(), want, "{uri} {host:?}");
        }
    }

    #[test]
    fn rejects_what_cannot_be_routed() {
        let out = Listener::Outbound;
        for host in [None, Some("echo:"), Some("a:b:c"), Some(""), Some(":80")] {
            let e = named(host.map(str::as_bytes), &out).unwrap_err();
            assert_eq!(e.kind(), "bad_request", "{host:?}");
        }
        let e = service_name(&parts("https://echo/x", None), &out).unwrap_err();
        assert_eq!(e.kind(), "bad_request");
        let mut connect = parts("/", Some("echo"));
        connect.method = http::Method::CONNECT;
        assert_eq!(
            service_name(&connect, &out).unwrap_err().kind(),
            "method_not_allowed"
        );
    }
}
