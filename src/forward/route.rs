//! Which service a request is for. The app names it in one of three ways:
//!
//! - **Host header** on the outbound listener: `Host: echo` or `Host: echo:80` (the port is
//!   ignored: the instances carry their own).
//! - **Absolute-form URI** (apps with `HTTP_PROXY` set send `GET http://echo/path`), and HTTP/2's
//!   `:authority`, which hyper also exposes as the URI's authority.
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

/// The service named by the request `parts` arriving on `listener`.
pub fn service_name<'a>(
    parts: &'a Parts,
    listener: &'a Listener,
) -> Result<Cow<'a, str>, ForwardError> {
    if parts.method == http::Method::CONNECT {
        return Err(ForwardError::MethodNotAllowed(http::Method::CONNECT));
    }
    let authority = parts
        .uri
        .authority()
        .map(|auth| (parts.uri.scheme_str(), auth.host()));
    let host = parts.headers.get(http::header::HOST).map(|v| v.as_bytes());
    named(authority, host, listener)
}

/// The service named by an absolute-form target's (scheme, host), else by the `Host` header's
/// bytes, unless `listener` is a service's own (CONNECT is ruled out by the caller).
pub fn named<'a>(
    authority: Option<(Option<&str>, &'a str)>,
    host: Option<&'a [u8]>,
    listener: &'a Listener,
) -> Result<Cow<'a, str>, ForwardError> {
    if let Listener::Service(name) = listener {
        return Ok(Cow::Borrowed(name));
    }
    let host = match authority {
        Some((scheme, host)) => {
            match scheme {
                Some("http") | None => {}
                Some(_) => {
                    return Err(ForwardError::BadRequest(
                        "only http:// absolute-form URIs can be forwarded",
                    ))
                }
            }
            host
        }
        None => {
            let value = host.ok_or(ForwardError::BadRequest(
                "no Host header: name the service in Host, use an absolute-form URI, or a per-service listener",
            ))?;
            // What `HeaderValue::to_str` accepts: visible ASCII, spaces and tabs (so UTF-8).
            if !value
                .iter()
                .all(|&b| b == b'\t' || (b' '..=b'~').contains(&b))
            {
                return Err(ForwardError::BadRequest("Host header is not valid text"));
            }
            let text = std::str::from_utf8(value)
                .map_err(|_| ForwardError::BadRequest("Host header is not valid text"))?;
            strip_port(text).ok_or(ForwardError::BadRequest("malformed Host header"))?
        }
    };
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
        for (uri, host, listener, want) in [
            ("/x", Some("echo"), &out, "echo"),
            ("/x", Some("echo:80"), &out, "echo"),
            ("/x", Some("ECHO"), &out, "echo"),
            // Absolute form wins over Host.
            ("http://echo/x", Some("other"), &out, "echo"),
            ("http://echo:8080/x", None, &out, "echo"),
            // A per-service listener ignores both.
            ("/x", Some("anything"), &users, "users"),
        ] {
            let head = parts(uri, host);
            assert_eq!(
                service_name(&head, listener).unwrap(),
                want,
                "{uri} {host:?}"
            );
        }
    }

    #[test]
    fn rejects_what_cannot_be_routed() {
        let out = Listener::Outbound;
        for (uri, host) in [
            ("/x", None),
            ("/x", Some("echo:")),
            ("/x", Some("a:b:c")),
            ("https://echo/x", None),
        ] {
            let e = service_name(&parts(uri, host), &out).unwrap_err();
            assert_eq!(e.kind(), "bad_request", "{uri} {host:?}");
        }
    }
}
