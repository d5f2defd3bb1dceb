//! TLS with rustls and its one crypto provider, ring (as etcd-client uses; no OpenSSL, no
//! aws-lc): the upstream [`Connector`] built from a service's `tls:` block, the listener
//! [`Acceptor`] built from a `listen_tls:` block, the reason class of a failed handshake
//! ([`Reason`]) that errors and metrics name, and the [`Reloader`] that swaps in new
//! certificate material when files change.
//!
//! Trust comes from the service's `ca` file or, without one, from the webpki roots (Mozilla's
//! set compiled in): a sidecar image is often distroless, with no system store for
//! `rustls-platform-verifier` to read, and the roots then move only with a release, which is
//! what a reproducible proxy wants.

mod expiry;
mod listener;
mod reload;
mod upstream;
mod verify;

use std::io;
use std::sync::Arc;

pub use expiry::not_after;
pub use listener::Acceptor;
pub use reload::{Reload, Reloader};
pub use upstream::Connector;
pub use verify::Reason;

/// The instance tag that names the server name to verify for that instance.
pub const SERVER_NAME_TAG: &str = "tls_server_name";

/// ALPN protocol id of HTTP/1.1.
pub const ALPN_HTTP1: &[u8] = b"http/1.1";
/// ALPN protocol id of HTTP/2.
pub const ALPN_H2: &[u8] = b"h2";

/// The crypto provider of every TLS configuration: ring.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Why a TLS configuration could not be built from its files.
#[derive(Debug, thiserror::Error)]
#[error("{key}: {message}")]
pub struct TlsConfigError {
    /// The config key whose value is at fault.
    pub key: String,
    /// What is wrong.
    pub message: String,
}

/// A handshake with an upstream that failed.
#[derive(Debug, thiserror::Error)]
#[error("TLS handshake failed ({reason}): {source}")]
pub struct HandshakeError {
    /// Its class.
    pub reason: Reason,
    /// What rustls (or the socket) said.
    #[source]
    pub source: io::Error,
}

impl TlsConfigError {
    /// An error of the key `k` under `base` (`base` alone when `k` is empty).
    fn at(base: &str, k: &str, message: String) -> Self {
        let key = if k.is_empty() {
            base.to_string()
        } else {
            format!("{base}.{k}")
        };
        Self { key, message }
    }
}

#[cfg(test)]
mod tests;
