//! The listener side: an [`Acceptor`] built from a `listen_tls:` block, its rustls server
//! configuration swapped whole when the files change (handshakes under way keep the one they
//! started with).

use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio::net::TcpStream;
use tokio_rustls::{server, TlsAcceptor};

use super::{provider, HandshakeError, Reason, Reload, TlsConfigError, ALPN_H2, ALPN_HTTP1};
use crate::config::{read_certificates, read_private_key, ListenerTlsConfig};
use crate::metrics::TlsMetrics;

/// Terminates TLS on a listener: its certificate, the client CA when clients must show a
/// certificate, ALPN `h2` and `http/1.1`.
pub struct Acceptor {
    config: ArcSwap<ServerConfig>,
    cfg: ListenerTlsConfig,
    key: String,
    metrics: TlsMetrics,
}

impl Acceptor {
    /// The acceptor a `listen_tls:` block describes (`key`: the block's key path, for errors).
    pub fn from_config(
        cfg: &ListenerTlsConfig,
        key: &str,
        metrics: TlsMetrics,
    ) -> Result<Self, TlsConfigError> {
        Ok(Self {
            config: ArcSwap::from_pointee(server_config(cfg, key)?),
            cfg: cfg.clone(),
            key: key.to_string(),
            metrics,
        })
    }

    /// Runs the handshake with an app or peer over `tcp`; a failure is counted by its reason.
    pub async fn accept(
        &self,
        tcp: TcpStream,
    ) -> Result<server::TlsStream<TcpStream>, HandshakeError> {
        let acceptor = TlsAcceptor::from(self.config.load_full());
        acceptor.accept(tcp).await.map_err(|source| {
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

impl Reload for Acceptor {
    fn files(&self) -> Vec<(String, PathBuf)> {
        let mut files = vec![
            (format!("{}.cert", self.key), self.cfg.cert.clone()),
            (format!("{}.key", self.key), self.cfg.key.clone()),
        ];
        if let Some(ca) = &self.cfg.client_ca {
            files.push((format!("{}.client_ca", self.key), ca.clone()));
        }
        files
    }

    fn reload(&self) -> Result<(), TlsConfigError> {
        self.config
            .store(Arc::new(server_config(&self.cfg, &self.key)?));
        Ok(())
    }
}

/// The server configuration a `listen_tls:` block (at `key`) describes, its files read now.
fn server_config(cfg: &ListenerTlsConfig, key: &str) -> Result<ServerConfig, TlsConfigError> {
    let err = |k: &str, message: String| TlsConfigError::at(key, k, message);
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| err("", e.to_string()))?;
    let builder = match &cfg.client_ca {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            let certs = read_certificates(ca).map_err(|m| err("client_ca", m))?;
            roots.add_parsable_certificates(certs);
            let verifier = WebPkiClientVerifier::builder_with_provider(roots.into(), provider())
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
    Ok(config)
}
