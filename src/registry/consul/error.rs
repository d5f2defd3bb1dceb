//! What can go wrong talking to the agent, sorted by status code — never by the agent's text —
//! into what the caller can do about it: a token refused (403), something gone (404), a request
//! refused (other 4xx), the agent failing (5xx) or unreachable. And the bounded labels of the
//! `waypost_registry_consul_request_errors_total` family.

use http::StatusCode;

use crate::discover::DiscoverError;
use crate::register::RegisterError;

/// Longest agent message kept in an error (the agent's 4xx/5xx bodies are one line of text).
const MAX_MESSAGE: usize = 512;

/// Why an agent request failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ConsulError {
    /// The agent could not be reached or did not answer in time.
    #[error("Consul agent unavailable: {0}")]
    Unavailable(String),
    /// The agent answered 5xx (no cluster leader, an RPC to the servers failed…).
    #[error("Consul agent error {status}: {message}")]
    Server {
        /// The status code.
        status: u16,
        /// The agent's message.
        message: String,
    },
    /// The agent refused the ACL token (403: missing, unknown, or without the permission).
    #[error("Consul agent refused the token (403): {0}")]
    Denied(String),
    /// What the request is about does not exist (404).
    #[error("Consul agent: not found (404): {0}")]
    NotFound(String),
    /// The agent refused the request as invalid (another 4xx).
    #[error("Consul agent refused the request ({status}): {message}")]
    Rejected {
        /// The status code.
        status: u16,
        /// The agent's message.
        message: String,
    },
}

impl ConsulError {
    /// The error's kind, the bounded `kind` label.
    pub fn kind(&self) -> &'static str {
        match self {
            ConsulError::Unavailable(_) => "unavailable",
            ConsulError::Server { .. } => "server",
            ConsulError::Denied(_) => "denied",
            ConsulError::NotFound(_) => "not_found",
            ConsulError::Rejected { .. } => "rejected",
        }
    }
}

impl From<ConsulError> for RegisterError {
    fn from(e: ConsulError) -> Self {
        match e {
            ConsulError::Unavailable(_) | ConsulError::Server { .. } => {
                RegisterError::Unavailable(e.to_string())
            }
            ConsulError::Denied(_) | ConsulError::Rejected { .. } => {
                RegisterError::Rejected(e.to_string())
            }
            ConsulError::NotFound(_) => RegisterError::Lost(e.to_string()),
        }
    }
}

impl From<ConsulError> for DiscoverError {
    fn from(e: ConsulError) -> Self {
        DiscoverError::Unavailable(e.to_string())
    }
}

/// An agent operation, the bounded `op` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `PUT /v1/agent/service/register`.
    Register,
    /// `PUT /v1/agent/service/deregister/<id>`.
    Deregister,
    /// `PUT /v1/agent/check/pass/<id>`.
    CheckPass,
    /// `GET /v1/agent/service/<id>`.
    Service,
    /// `GET /v1/health/service/<name>`.
    Health,
}

impl Op {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Register => "register",
            Op::Deregister => "deregister",
            Op::CheckPass => "check_pass",
            Op::Service => "service",
            Op::Health => "health",
        }
    }
}

/// The error an agent answer with a non-2xx `status` means; the body is its message.
pub fn status_error(status: StatusCode, body: &[u8]) -> ConsulError {
    let mut message = String::from_utf8_lossy(body).trim().to_string();
    if message.len() > MAX_MESSAGE {
        let mut end = MAX_MESSAGE;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
        message.push('…');
    }
    match status.as_u16() {
        403 => ConsulError::Denied(message),
        404 => ConsulError::NotFound(message),
        s @ 400..=499 => ConsulError::Rejected { status: s, message },
        s => ConsulError::Server { status: s, message },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_sort_into_kinds() {
        let e = |s: u16, b: &str| status_error(StatusCode::from_u16(s).unwrap(), b.as_bytes());
        assert_eq!(e(403, "Permission denied").kind(), "denied");
        assert_eq!(e(403, "ACL not found").kind(), "denied");
        assert_eq!(e(404, "Unknown check ID").kind(), "not_found");
        assert_eq!(e(400, "Invalid service address").kind(), "rejected");
        assert_eq!(e(429, "slow down").kind(), "rejected");
        assert_eq!(e(500, "No cluster leader").kind(), "server");
        assert_eq!(e(503, "").kind(), "server");
        assert!(matches!(
            RegisterError::from(e(404, "x")),
            RegisterError::Lost(_)
        ));
        assert!(matches!(
            RegisterError::from(e(403, "x")),
            RegisterError::Rejected(_)
        ));
        assert!(matches!(
            RegisterError::from(e(500, "x")),
            RegisterError::Unavailable(_)
        ));
        let long = e(500, &"x".repeat(10_000)).to_string();
        assert!(long.len() < 700, "messages are bounded: {}", long.len());
    }
}
