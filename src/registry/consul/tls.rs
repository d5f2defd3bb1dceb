//! TLS towards the agent: a rustls client configuration (ring, the project's one crypto
//! provider) from PEM files, read and checked at start-up so a wrong file fails there, naming
//! its config key, rather than at the first handshake.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::TlsConnector;

use crate::config::ConsulTlsConfig;

/// The connector for `tls`, and the name to verify: `tls.server_name`, or `host` (the
/// address's host, a DNS name or an IP).
pub fn connector(
    tls: &ConsulTlsConfig,
    host: &str,
) -> Result<(TlsConnector, ServerName<'static>), String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in certificates(&tls.ca, "registry.consul.tls.ca")? {
        roots
            .add(cert)
            .map_err(|e| format!("registry.consul.tls.ca: {}: {e}", tls.ca.display()))?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| format!("registry.consul.tls: {e}"))?
    .with_root_certificates(roots);
    let config = match (&tls.cert, &tls.key) {
        (Some(cert), Some(key)) => {
            let chain = certificates(cert, "registry.consul.tls.cert")?;
            let key = PrivateKeyDer::from_pem_file(key).map_err(|e| {
                format!(
                    "registry.consul.tls.key: {}: no PEM private key: {e}",
                    key.display()
                )
            })?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("registry.consul.tls.cert/key: {e}"))?
        }
        _ => builder.with_no_client_auth(),
    };
    let name = tls.server_name.as_deref().unwrap_or(host);
    let server = ServerName::try_from(name.to_string()).map_err(|e| {
        format!("registry.consul.tls.server_name: {name:?} is not a DNS name or IP: {e}")
    })?;
    Ok((TlsConnector::from(Arc::new(config)), server))
}

/// The certificates in the PEM file at `path` (config key `key`): at least one.
fn certificates(path: &Path, key: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{key}: {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{key}: {}: no PEM certificate in it",
            path.display()
        ));
    }
    Ok(certs)
}
