//! Every response waypost generates itself comes from [`ForwardError::into_response`]: one place
//! maps each kind of failure to its status, a short plain-text body naming the service (or the
//! rule the request broke) and the reason, and the `x-waypost-error` header that tells the app
//! the response came from waypost, not from the upstream. Handlers never pick status codes.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};

use super::h1::framing::FramingError;
use super::h1::request::RequestError;

/// Header set on every response waypost generates; its value is the error kind.
pub const ERROR_HEADER: &str = "x-waypost-error";

/// Why a request was not forwarded or got no upstream response.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// The request breaks a rule of HTTP or of the HTTP/1 policy, or names no service: 400.
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    /// The request body breaks its framing (a malformed chunk, more than its length): 400.
    #[error("bad request body: {0}")]
    BadBody(&'static str),
    /// CONNECT: 405 (waypost tunnels nothing).
    #[error("method {0} is not supported by waypost")]
    MethodNotAllowed(http::Method),
    /// The request head or body did not arrive within the client timeouts: 408.
    #[error("request timeout: {0}")]
    RequestTimeout(&'static str),
    /// An `Expect` other than `100-continue`: 417.
    #[error("expectation failed: the only expectation waypost meets is 100-continue")]
    ExpectationFailed,
    /// A request head over `client.max_head_size` or `client.max_headers`: 431.
    #[error("request header fields too large: {0}")]
    HeaderTooLarge(RequestError),
    /// A transfer coding waypost does not decode: 501.
    #[error("not implemented: {0}")]
    NotImplemented(&'static str),
    /// An HTTP version other than 1.0 and 1.1 (over HTTP/1): 505.
    #[error("HTTP version not supported: only HTTP/1.0 and HTTP/1.1 are served over HTTP/1")]
    VersionNotSupported,
    /// No declared service and no on-demand rule has this name: 404.
    #[error("unknown service {0:?}: not declared and matching no on-demand rule")]
    UnknownService(String),
    /// The service resolved, but has no instance to pick: 503.
    #[error("no instances available for service {0:?}")]
    NoInstances(String),
    /// The service has never resolved successfully (the resolver fails): 503.
    #[error("service {service:?} cannot be resolved: {reason}")]
    DiscoveryFailed {
        /// Service name.
        service: String,
        /// Last resolver error.
        reason: String,
    },
    /// TCP connect to the picked instance failed: 502.
    #[error("cannot connect to {addr} for service {service:?}: {source}")]
    UpstreamConnect {
        /// Service name.
        service: String,
        /// The instance.
        addr: std::net::SocketAddr,
        /// The cause.
        #[source]
        source: super::client::SendError,
    },
    /// No response headers within the upstream timeout: 504.
    #[error("upstream {addr} for service {service:?} did not respond within {timeout:?}")]
    UpstreamTimeout {
        /// Service name.
        service: String,
        /// The instance.
        addr: std::net::SocketAddr,
        /// The timeout that ran out.
        timeout: Duration,
    },
    /// The service has `limits.max_concurrent` requests in flight already: 503 with
    /// `Retry-After`.
    #[error("service {0:?} has too many requests in flight")]
    Overloaded(String),
    /// The connection to the instance broke before a response, or its response cannot be
    /// forwarded: 502.
    #[error("upstream {addr} for service {service:?} failed: {source}")]
    Upstream {
        /// Service name.
        service: String,
        /// The instance.
        addr: std::net::SocketAddr,
        /// The cause.
        #[source]
        source: super::client::SendError,
    },
}

impl ForwardError {
    /// The bounded kind label (also the `x-waypost-error` value); every one is listed in
    /// `metrics::ERROR_KINDS`.
    pub fn kind(&self) -> &'static str {
        match self {
            ForwardError::BadRequest(_) | ForwardError::BadBody(_) => "bad_request",
            ForwardError::MethodNotAllowed(_) => "method_not_allowed",
            ForwardError::RequestTimeout(_) => "request_timeout",
            ForwardError::ExpectationFailed => "expectation_failed",
            ForwardError::HeaderTooLarge(_) => "header_too_large",
            ForwardError::NotImplemented(_) => "not_implemented",
            ForwardError::VersionNotSupported => "version_not_supported",
            ForwardError::UnknownService(_) => "unknown_service",
            ForwardError::NoInstances(_) => "no_instances",
            ForwardError::DiscoveryFailed { .. } => "discovery_failed",
            ForwardError::UpstreamConnect { .. } => "upstream_connect",
            ForwardError::UpstreamTimeout { .. } => "upstream_timeout",
            ForwardError::Upstream { .. } => "upstream_error",
            ForwardError::Overloaded(_) => "overloaded",
        }
    }

    /// The status this error answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            ForwardError::BadRequest(_) | ForwardError::BadBody(_) => StatusCode::BAD_REQUEST,
            ForwardError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ForwardError::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ForwardError::ExpectationFailed => StatusCode::EXPECTATION_FAILED,
            ForwardError::HeaderTooLarge(_) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ForwardError::NotImplemented(_) => StatusCode::NOT_IMPLEMENTED,
            ForwardError::VersionNotSupported => StatusCode::HTTP_VERSION_NOT_SUPPORTED,
            ForwardError::UnknownService(_) => StatusCode::NOT_FOUND,
            ForwardError::NoInstances(_)
            | ForwardError::DiscoveryFailed { .. }
            | ForwardError::Overloaded(_) => StatusCode::SERVICE_UNAVAILABLE,
            ForwardError::UpstreamConnect { .. } | ForwardError::Upstream { .. } => {
                StatusCode::BAD_GATEWAY
            }
            ForwardError::UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// Whether the app's connection closes after this answer: after every refusal of the
    /// request's syntax, framing or timing, as what follows on the connection cannot be trusted
    /// to start a request (README, "HTTP/1 policy"); routing and upstream failures keep it.
    pub fn closes_connection(&self) -> bool {
        matches!(
            self.status().as_u16(),
            400 | 405 | 408 | 417 | 431 | 501 | 505
        )
    }

    /// The response the app receives.
    pub fn into_response(self) -> Response<Bytes> {
        let status = self.status();
        let body = format!("waypost: {self}\n");
        let mut resp = Response::new(Bytes::from(body));
        *resp.status_mut() = status;
        let h = resp.headers_mut();
        h.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        h.insert(ERROR_HEADER, HeaderValue::from_static(self.kind()));
        if matches!(status, StatusCode::SERVICE_UNAVAILABLE) {
            // Tell well-behaved clients not to hammer a service that has nothing to offer.
            h.insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        resp
    }
}

impl From<RequestError> for ForwardError {
    fn from(e: RequestError) -> Self {
        match e {
            RequestError::Malformed(rule) => ForwardError::BadRequest(rule),
            RequestError::Framing(FramingError::UnsupportedCoding) => ForwardError::NotImplemented(
                "transfer codings other than chunked are not forwarded",
            ),
            RequestError::Framing(f) => ForwardError::BadRequest(f.rule()),
            RequestError::HeadTooLarge(_) | RequestError::TooManyFields(_) => {
                ForwardError::HeaderTooLarge(e)
            }
            RequestError::Version => ForwardError::VersionNotSupported,
            RequestError::Expectation => ForwardError::ExpectationFailed,
            RequestError::Connect => ForwardError::MethodNotAllowed(http::Method::CONNECT),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forward::h1::framing::FramingError;

    #[test]
    fn each_kind_has_its_own_status_and_marker() {
        let cases = [
            (ForwardError::BadRequest("no host"), 400, true),
            (ForwardError::BadBody("bad chunk size"), 400, true),
            (
                ForwardError::MethodNotAllowed(http::Method::CONNECT),
                405,
                true,
            ),
            (ForwardError::RequestTimeout("head"), 408, true),
            (ForwardError::ExpectationFailed, 417, true),
            (
                ForwardError::HeaderTooLarge(RequestError::TooManyFields(100)),
                431,
                true,
            ),
            (ForwardError::NotImplemented("gzip"), 501, true),
            (ForwardError::VersionNotSupported, 505, true),
            (ForwardError::UnknownService("x".into()), 404, false),
            (ForwardError::NoInstances("x".into()), 503, false),
            (ForwardError::Overloaded("x".into()), 503, false),
            (
                ForwardError::DiscoveryFailed {
                    service: "x".into(),
                    reason: "dns".into(),
                },
                503,
                false,
            ),
            (
                ForwardError::UpstreamTimeout {
                    service: "x".into(),
                    addr: "127.0.0.1:1".parse().unwrap(),
                    timeout: Duration::from_secs(1),
                },
                504,
                false,
            ),
        ];
        for (err, status, closes) in cases {
            let kind = err.kind();
            assert!(crate::metrics::ERROR_KINDS.contains(&kind), "{kind}");
            assert_eq!(err.closes_connection(), closes, "{kind}");
            let resp = err.into_response();
            assert_eq!(resp.status().as_u16(), status);
            assert_eq!(resp.headers()[ERROR_HEADER], kind);
            // 503s tell clients when to try again; other statuses do not.
            let retry_after = resp.headers().get(http::header::RETRY_AFTER);
            assert_eq!(retry_after.is_some(), status == 503, "{kind}");
        }
    }

    #[test]
    fn request_errors_map_to_their_statuses() {
        let cases = [
            (RequestError::Malformed("invalid field name"), 400),
            (RequestError::Framing(FramingError::ChunkedTwice), 400),
            (RequestError::Framing(FramingError::UnsupportedCoding), 501),
            (RequestError::HeadTooLarge(65536), 431),
            (RequestError::TooManyFields(100), 431),
            (RequestError::Version, 505),
            (RequestError::Expectation, 417),
            (RequestError::Connect, 405),
        ];
        for (e, status) in cases {
            let fe = ForwardError::from(e);
            assert_eq!(fe.status().as_u16(), status, "{e:?}");
            // The body says which rule was broken.
            let body = fe.into_response().into_body();
            let text = String::from_utf8_lossy(&body);
            assert!(text.starts_with("waypost: "), "{text}");
        }
        let text =
            ForwardError::from(RequestError::Framing(FramingError::ChunkedTwice)).to_string();
        assert!(text.contains("chunked applied more than once"), "{text}");
    }
}
