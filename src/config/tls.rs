//! The TLS part of the schema: `services.<name>.tls:` (TLS towards a service's instances).
//!
//! Validation checks the keys together (file, line, column and key on error). The PEM files
//! are read when the process builds its TLS configurations ([`read_certificates`],
//! [`read_private_key`], with `rustls-pki-types`), so a missing file or a key where a
//! certificate belongs fails start-up naming the key, never the first handshake — while
//! `waypost check` still passes on a machine without the pod's mounted secrets (as with
//! `registry.etcd.tls`).

use std::path::{Path, PathBuf};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde::Deserialize;

/// `services.<name>.tls:` — speak TLS to the service's instances. Present (even empty: `tls:
/// {}`) means TLS with verification against the webpki roots and the service's name.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTlsConfig {
    /// PEM file of the CA certificate(s) to trust instead of the webpki roots (Mozilla's set).
    pub ca: Option<PathBuf>,
    /// Name verified in the instances' certificates and sent as SNI (default: the service's
    /// name; an instance's `tls_server_name` tag overrides both).
    pub server_name: Option<String>,
    /// PEM client certificate chain presented to instances that ask for one (mTLS; with `key`).
    pub cert: Option<PathBuf>,
    /// PEM private key of `cert` (PKCS#8, PKCS#1 or SEC1).
    pub key: Option<PathBuf>,
    /// Accept any certificate: no chain, name or expiry check (handshake signatures are still
    /// verified). For tests and migrations only; logged as a warning at start-up.
    #[serde(default)]
    pub insecure_skip_verify: bool,
}

/// `services.<name>.protocol:` — what the instances speak.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// HTTP/1.1 only.
    Http1,
    /// HTTP/2 without TLS, with prior knowledge.
    H2c,
    /// Over TLS, what ALPN agrees (`h2` or `http/1.1`); HTTP/1.1 over plaintext.
    #[default]
    Auto,
}

/// `listen_tls:` / `services.<name>.listen_tls:` — the listener terminates TLS.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerTlsConfig {
    /// PEM certificate chain the listener presents.
    pub cert: PathBuf,
    /// PEM private key of `cert`.
    pub key: PathBuf,
    /// PEM CA certificate(s): when set, clients must present a certificate signed by one
    /// (mTLS).
    pub client_ca: Option<PathBuf>,
}

/// Reads the certificates in the PEM file at `path`: at least one, or why not.
pub fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let bytes = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: not PEM certificates: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: holds no PEM certificate", path.display()));
    }
    Ok(certs)
}

/// Reads the private key in the PEM file at `path`, or why not.
pub fn read_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let bytes = read(path)?;
    PrivateKeyDer::from_pem_slice(&bytes)
        .map_err(|e| format!("{}: not a PEM private key: {e}", path.display()))
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

impl UpstreamTlsConfig {
    /// Checks the keys together; `base` is the key path of this block.
    pub(super) fn validate(&self, base: &str) -> Result<(), (String, String)> {
        match (&self.cert, &self.key) {
            (Some(_), None) => return Err((format!("{base}.cert"), "needs `key` too".into())),
            (None, Some(_)) => return Err((format!("{base}.key"), "needs `cert` too".into())),
            _ => {}
        }
        if self.insecure_skip_verify && self.ca.is_some() {
            return Err((
                format!("{base}.insecure_skip_verify"),
                "a `ca` is given, so verification was meant: remove one of them".into(),
            ));
        }
        if let Some(name) = &self.server_name {
            if ServerName::try_from(name.as_str()).is_err() {
                return Err((
                    format!("{base}.server_name"),
                    format!("{name:?} is not a DNS name or an IP address"),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
