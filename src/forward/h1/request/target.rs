//! The request target, by form (RFC 9112 §3.2): which forms waypost forwards, and how.

use http::Method;

use super::super::fields::is_valid_host;
use super::RequestError;

/// The request target, by form (RFC 9112 §3.2).
pub(super) enum Target<'a> {
    /// `/path?query`: forwarded as is.
    Origin(&'a str),
    /// `OPTIONS *`.
    Asterisk,
    /// `http://authority/path?query`: routed by the authority, sent in origin form.
    Absolute {
        /// `host[:port]`, as written.
        authority: &'a str,
        /// What follows the authority: empty, `/…` or `?…`.
        rest: &'a str,
    },
}

impl<'a> Target<'a> {
    /// The target `target` of a request with `method`, or the rule it breaks.
    pub(super) fn parse(method: &Method, target: &'a str) -> Result<Self, RequestError> {
        // httparse leaves visible ASCII (and refuses controls and spaces); a fragment is never
        // sent by a client (RFC 9112 §3.2), so one here is refused rather than forwarded.
        if target
            .bytes()
            .any(|b| b == b'#' || !(b'!'..=b'~').contains(&b))
        {
            return Err(RequestError::Malformed(
                "request target has a fragment or a byte outside visible ASCII",
            ));
        }
        if target.starts_with('/') {
            return Ok(Target::Origin(target));
        }
        if target == "*" {
            return match *method {
                Method::OPTIONS => Ok(Target::Asterisk),
                _ => Err(RequestError::Malformed(
                    "asterisk-form target is only for OPTIONS",
                )),
            };
        }
        let Some((scheme, rest)) = target.split_once("://") else {
            return Err(RequestError::Malformed(
                "request target is not origin-form, absolute-form or OPTIONS *",
            ));
        };
        if !scheme.eq_ignore_ascii_case("http") {
            return Err(RequestError::Malformed(
                "only http:// absolute-form targets can be forwarded",
            ));
        }
        let end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, rest) = rest.split_at(end);
        if authority.contains('@') {
            return Err(RequestError::Malformed("userinfo in the request target"));
        }
        if authority.is_empty() || !is_valid_host(authority.as_bytes()) {
            return Err(RequestError::Malformed(
                "invalid authority in the request target",
            ));
        }
        Ok(Target::Absolute { authority, rest })
    }
}
