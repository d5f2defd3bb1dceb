//! Every response waypost generates itself comes from [`ForwardError::into_response`]: one place
//! maps each kind of failure to its status, a short plain-text body naming the service and the
//! reason, and the `x-waypost-error` header that tells the app the response came from waypost,
//! not from the upstream. Handlers never pick status codes.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};

/// Header set on every response waypost generates; its value is the error kind.
pub const ERROR_HEADER: &str = "x-waypost-error";

/// Why a request was not forwarded or got no upstream response.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// The request cannot be routed (no Host, bad authority…): 400.
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    /// CONNECT and other methods a service proxy does not tunnel: 405.
    #[error("method {0} is not supported by waypost")]
    MethodNotAllowed(http::Method),
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
        source: super::pool::SendError,
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
    /// The connection to the instance broke before a response: 502.
    #[error("upstream {addr} for service {service:?} failed: {source}")]
    Upstream {
        /// Service name.
        service: String,
        /// The instance.
        addr: std::net::SocketAddr,
        /// The cause.
        #[source]
        source: super::pool::SendError,
    },
}

impl ForwardError {
    /// The bounded kind label (also the `x-waypost-error` value).
    pub fn kind(&self) -> &'static str {
        match self {
            ForwardError::BadRequest(_) => "bad_request",
            ForwardError::MethodNotAllowed(_) => "method_not_allowed",
            ForwardError::UnknownService(_) => "unknown_service",
            ForwardError::NoInstances(_) => "no_instances",
            ForwardError::DiscoveryFailed { .. } => "discovery_failed",
            ForwardError::UpstreamConnect { .. } => "upstream_connect",
            ForwardError::UpstreamTimeout { .. } => "upstream_timeout",
            ForwardError::Upstream { .. } => "upstream_error",
        }
    }

    /// The status this error answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            ForwardError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ForwardError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ForwardError::UnknownService(_) => StatusCode::NOT_FOUND,
            ForwardError::NoInstances(_) | ForwardError::DiscoveryFailed { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ForwardError::UpstreamConnect { .. } | ForwardError::Upstream { .. } => {
                StatusCode::BAD_GATEWAY
            }
            ForwardError::UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_has_its_own_status_and_marker() {
        let cases = [
            (ForwardError::BadRequest("no host"), 400),
            (ForwardError::MethodNotAllowed(http::Method::CONNECT), 405),
            (ForwardError::UnknownService("x".into()), 404),
            (ForwardError::NoInstances("x".into()), 503),
            (
                ForwardError::DiscoveryFailed {
                    service: "x".into(),
                    reason: "dns".into(),
                },
                503,
            ),
            (
                ForwardError::UpstreamTimeout {
                    service: "x".into(),
                    addr: "127.0.0.1:1".parse().unwrap(),
                    timeout: Duration::from_secs(1),
                },
                504,
            ),
        ];
        for (err, status) in cases {
            let kind = err.kind();
            assert!(crate::metrics::ERROR_KINDS.contains(&kind), "{kind}");
            let resp = err.into_response();
            assert_eq!(resp.status().as_u16(), status);
            assert_eq!(resp.headers()[ERROR_HEADER], kind);
            // 503s tell clients when to try again; other statuses do not.
            let retry_after = resp.headers().get(http::header::RETRY_AFTER);
            assert_eq!(retry_after.is_some(), status == 503, "{kind}");
        }
    }
}
