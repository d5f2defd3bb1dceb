//! TLS with rustls and its one crypto provider, ring (as etcd-client uses; no OpenSSL, no
//! aws-lc): the upstream [`Connector`] built from a service's `tls:` block, and the reason
//! class of a failed handshake ([`Reason`]) that errors and metrics name.
//!
//! Trust comes from the service's `ca` file or, without one, from the webpki roots (Mozilla's
//! set compiled in): a sidecar image is often distroless, with no system store for
//! `rustls-platform-verifier` to read, and the roots then move only with a release, which is
//! what a reproducible proxy wants.

mod verify;

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::pki_types::ServerName;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::{server, TlsAcceptor, TlsConnector};

use crate::config::{read_certificates, read_private_key, ListenerTlsConfig, UpstreamTlsConfig};
use crate::discover::Instance;
use crate::metrics::TlsMetrics;

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

/// Opens TLS sessions to one service's instances over connected TCP streams.
pub struct Connector {
    /// ALPN `http/1.1` only: for HTTP/1 apps.
    config: Arc<ClientConfig>,
    /// ALPN `h2` then `http/1.1`: for HTTP/2 apps, on a service with `protocol: auto`.
    config_h2: Arc<ClientConfig>,
    /// The name verified when an instance has no `tls_server_name` tag.
    server_name: ServerName<'static>,
    /// Per-instance names from the `tls_server_name` tag, replaced whole with each resolution.
    names: ArcSwap<HashMap<SocketAddr, ServerName<'static>>>,
    metrics: TlsMetrics,
}

impl Connector {
    /// A connector for `service` as its `tls:` block says (`key` is the block's key path, for
    /// errors). Logs a warning when verification is off.
    pub fn from_config(
        cfg: &UpstreamTlsConfig,
        service: &str,
        key: &str,
        metrics: TlsMetrics,
    ) -> Result<Self, TlsConfigError> {
        let err = |k: &str, message: String| TlsConfigError {
            key: format!("{key}.{k}"),
            message,
        };
        let name = cfg.server_name.as_deref().unwrap_or(service);
        let server_name = ServerName::try_from(name.to_string()).map_err(|_| {
            err(
                "server_name",
                format!("{name:?} is not a DNS name or an IP"),
            )
        })?;
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| err("", e.to_string()))?;
        let builder = if cfg.insecure_skip_verify {
            tracing::warn!(
                service,
                "TLS VERIFICATION IS OFF for this service (`{key}.insecure_skip_verify: true`): \
                 any certificate is accepted, so anyone on the path can read and change its traffic"
            );
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(verify::AcceptAny::new(provider())))
        } else {
            let mut roots = RootCertStore::empty();
            match &cfg.ca {
                Some(ca) => {
                    let certs = read_certificates(ca).map_err(|m| err("ca", m))?;
                    let (added, _) = roots.add_parsable_certificates(certs);
                    if added == 0 {
                        return Err(err(
                            "ca",
                            format!("{}: no usable CA certificate", ca.display()),
                        ));
                    }
                }
                None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
            }
            builder.with_root_certificates(roots)
        };
        let mut config = match (&cfg.cert, &cfg.key) {
            (Some(cert), Some(key_path)) => {
                let chain = read_certificates(cert).map_err(|m| err("cert", m))?;
                let key_der = read_private_key(key_path).map_err(|m| err("key", m))?;
                builder
                    .with_client_auth_cert(chain, key_der)
                    .map_err(|e| err("key", e.to_string()))?
            }
            _ => builder.with_no_client_auth(),
        };
        let mut config_h2 = config.clone();
        config.alpn_protocols = vec![ALPN_HTTP1.to_vec()];
        config_h2.alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_HTTP1.to_vec()];
        Ok(Self {
            config: Arc::new(config),
            config_h2: Arc::new(config_h2),
            server_name,
            names: ArcSwap::default(),
            metrics,
        })
    }

    /// Takes the `tls_server_name` tags of a new resolution (an invalid one is logged and the
    /// service's name used instead).
    pub fn learn(&self, service: &str, instances: &[Instance]) {
        let mut names = HashMap::new();
        for i in instances {
            let Some(tag) = i.tags.get(SERVER_NAME_TAG) else {
                continue;
            };
            match ServerName::try_from(tag.clone()) {
                Ok(n) => {
                    names.insert(i.address, n);
                }
                Err(_) => tracing::warn!(
                    service,
                    instance = %i.address,
                    tag = %tag,
                    "ignoring a {SERVER_NAME_TAG} tag that is not a DNS name or an IP"
                ),
            }
        }
        if names.is_empty() && self.names.load().is_empty() {
            return;
        }
        self.names.store(Arc::new(names));
    }

    /// Runs the handshake with the instance at `addr` over `tcp`, offering `h2` too when
    /// `h2`. A failure is counted by its reason.
    pub async fn connect(
        &self,
        addr: SocketAddr,
        tcp: TcpStream,
        h2: bool,
    ) -> Result<TlsStream<TcpStream>, HandshakeError> {
        let name = match self.names.load().get(&addr) {
            Some(n) => n.clone(),
            None => self.server_name.clone(),
        };
        let config = if h2 { &self.config_h2 } else { &self.config };
        let connector = TlsConnector::from(config.clone());
        connector.connect(name, tcp).await.map_err(|source| {
            let reason = Reason::of(&source);
            self.failed(reason);
            HandshakeError { reason, source }
        })
    }

    /// Counts a handshake with an upstream that failed for `reason` (also when the failure only
    /// shows after the client's side finished: a TLS 1.3 server refuses a client certificate
    /// on the first read).
    pub fn failed(&self, reason: Reason) {
        self.metrics.failure("upstream", reason.as_str());
    }
}

/// Terminates TLS on a listener: its certificate, the client CA when clients must show a
/// certificate, ALPN `h2` and `http/1.1`.
pub struct Acceptor {
    inner: TlsAcceptor,
    metrics: TlsMetrics,
}

impl Acceptor {
    /// The acceptor a `listen_tls:` block describes (`key`: the block's key path, for errors).
    pub fn from_config(
        cfg: &ListenerTlsConfig,
        key: &str,
        metrics: TlsMetrics,
    ) -> Result<Self, TlsConfigError> {
        let err = |k: &str, message: String| TlsConfigError {
            key: format!("{key}.{k}"),
            message,
        };
        let builder = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| err("", e.to_string()))?;
        let builder = match &cfg.client_ca {
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                let certs = read_certificates(ca).map_err(|m| err("client_ca", m))?;
                roots.add_parsable_certificates(certs);
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(roots.into(), provider())
                        .build()
                        .map_err(|e| err("client_ca", e.to_string()))?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let chain = read_certificates(&cfg.cert).map_err(|m| err("cert", m))?;
        let key_der = read_private_key(&cfg.key).map_err(|m| err("key", m))?;
        let mut config = builder
            .with_single_cert(chain, key_der)
            .map_err(|e| err("key", e.to_string()))?;
        config.alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_HTTP1.to_vec()];
        Ok(Self {
            inner: TlsAcceptor::from(Arc::new(config)),
            metrics,
        })
    }

    /// Runs the handshake with an app or peer over `tcp`; a failure is counted by its reason.
    pub async fn accept(
        &self,
        tcp: TcpStream,
    ) -> Result<server::TlsStream<TcpStream>, HandshakeError> {
        self.inner.accept(tcp).await.map_err(|source| {
            let reason = Reason::of(&source);
            self.failed(reason);
            HandshakeError { reason, source }
        })
    }

    /// Counts a listener handshake that failed for `reason` (or did not finish in time).
    pub fn failed(&self, reason: Reason) {
        self.metrics.failure("listener", reason.as_str());
    }
}

#[cfg(test)]
mod tests;
