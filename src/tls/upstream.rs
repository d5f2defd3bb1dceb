//! The upstream side: a service's [`Connector`], its rustls client configurations (one
//! offering `http/1.1`, one offering `h2` too) rebuilt from the files on reload, and the server
//! name per instance.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, RootCertStore};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use super::{
    provider, verify, HandshakeError, Reason, Reload, TlsConfigError, ALPN_H2, ALPN_HTTP1,
    SERVER_NAME_TAG,
};
use crate::config::{read_certificates, read_private_key, UpstreamTlsConfig};
use crate::discover::Instance;
use crate::metrics::TlsMetrics;

/// The two client configurations of a service.
struct Configs {
    /// ALPN `http/1.1` only: for HTTP/1 apps.
    h1: Arc<ClientConfig>,
    /// ALPN `h2` then `http/1.1`: for HTTP/2 apps, on a service with `protocol: auto`.
    h2: Arc<ClientConfig>,
}

/// Opens TLS sessions to one service's instances over connected TCP streams.
pub struct Connector {
    /// The client configurations, swapped whole when the files change.
    configs: ArcSwap<Configs>,
    /// The `tls:` block, to build from again.
    cfg: UpstreamTlsConfig,
    /// Its key path, for errors.
    key: String,
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
        let err = |k: &str, message: String| TlsConfigError::at(key, k, message);
        let name = cfg.server_name.as_deref().unwrap_or(service);
        let server_name = ServerName::try_from(name.to_string()).map_err(|_| {
            err(
                "server_name",
                format!("{name:?} is not a DNS name or an IP"),
            )
        })?;
        if cfg.insecure_skip_verify {
            tracing::warn!(
                service,
                "TLS VERIFICATION IS OFF for this service (`{key}.insecure_skip_verify: true`): \
                 any certificate is accepted, so anyone on the path can read and change its traffic"
            );
        }
        Ok(Self {
            configs: ArcSwap::from_pointee(configs(cfg, key)?),
            cfg: cfg.clone(),
            key: key.to_string(),
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
        let configs = self.configs.load();
        let config = if h2 { &configs.h2 } else { &configs.h1 };
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

impl Reload for Connector {
    fn files(&self) -> Vec<(String, PathBuf)> {
        let mut files = Vec::new();
        for (k, p) in [
            ("ca", &self.cfg.ca),
            ("cert", &self.cfg.cert),
            ("key", &self.cfg.key),
        ] {
            if let Some(p) = p {
                files.push((format!("{}.{k}", self.key), p.clone()));
            }
        }
        files
    }

    fn reload(&self) -> Result<(), TlsConfigError> {
        self.configs.store(Arc::new(configs(&self.cfg, &self.key)?));
        Ok(())
    }
}

/// The client configurations a `tls:` block (at `key`) describes, its files read now.
fn configs(cfg: &UpstreamTlsConfig, key: &str) -> Result<Configs, TlsConfigError> {
    let err = |k: &str, message: String| TlsConfigError::at(key, k, message);
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| err("", e.to_string()))?;
    let builder = if cfg.insecure_skip_verify {
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
    Ok(Configs {
        h1: Arc::new(config),
        h2: Arc::new(config_h2),
    })
}
