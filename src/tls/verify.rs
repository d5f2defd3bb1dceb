//! What a failed handshake is called ([`Reason`], a bounded metric label and the words of a
//! 502's body), and the verifier behind `insecure_skip_verify` ([`AcceptAny`]).

use std::fmt;
use std::io;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{AlertDescription, CertificateError, DigitallySignedStruct, Error, SignatureScheme};

/// The class of a failed TLS handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The peer's certificate chains to no trusted CA (or the peer said so of ours).
    UnknownCa,
    /// A certificate is expired or not yet valid.
    Expired,
    /// The certificate is not valid for the name asked for.
    BadName,
    /// A client certificate was required and none was presented.
    NoClientCert,
    /// The peer broke the protocol or offers nothing in common (versions, ciphers, ALPN), or
    /// does not speak TLS at all.
    Protocol,
    /// Anything else (the connection reset mid-handshake, a revoked certificate…).
    Other,
}

impl Reason {
    /// The label value (`reason` of `waypost_tls_handshake_failures_total`).
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::UnknownCa => "unknown_ca",
            Reason::Expired => "expired",
            Reason::BadName => "bad_name",
            Reason::NoClientCert => "no_client_cert",
            Reason::Protocol => "protocol",
            Reason::Other => "other",
        }
    }

    /// The class of a handshake (or first read) that failed with `e`, when it carries a rustls
    /// error; anything else is [`Reason::Other`].
    pub fn of(e: &io::Error) -> Reason {
        Self::of_tls(e).unwrap_or(Reason::Other)
    }

    /// The class of `e` when it carries a rustls error (tokio-rustls wraps them in
    /// `io::Error`), else nothing.
    pub fn of_tls(e: &io::Error) -> Option<Reason> {
        let tls = e.get_ref()?.downcast_ref::<Error>()?;
        Some(match tls {
            Error::InvalidCertificate(c) => match c {
                CertificateError::UnknownIssuer | CertificateError::BadSignature => {
                    Reason::UnknownCa
                }
                CertificateError::Expired
                | CertificateError::ExpiredContext { .. }
                | CertificateError::NotValidYet
                | CertificateError::NotValidYetContext { .. } => Reason::Expired,
                CertificateError::NotValidForName
                | CertificateError::NotValidForNameContext { .. } => Reason::BadName,
                _ => Reason::Other,
            },
            Error::NoCertificatesPresented => Reason::NoClientCert,
            Error::AlertReceived(alert) => match alert {
                AlertDescription::UnknownCA | AlertDescription::BadCertificate => Reason::UnknownCa,
                AlertDescription::CertificateExpired => Reason::Expired,
                AlertDescription::CertificateRequired => Reason::NoClientCert,
                _ => Reason::Protocol,
            },
            Error::InappropriateMessage { .. }
            | Error::InappropriateHandshakeMessage { .. }
            | Error::InvalidMessage(_)
            | Error::PeerIncompatible(_)
            | Error::PeerMisbehaved(_)
            | Error::NoApplicationProtocol
            | Error::DecryptError => Reason::Protocol,
            _ => Reason::Other,
        })
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Accepts any server certificate (`insecure_skip_verify`), while still checking that the
/// peer holds the key of the certificate it sent (the handshake signature), so a garbled
/// handshake still fails.
#[derive(Debug)]
pub struct AcceptAny(Arc<CryptoProvider>);

impl AcceptAny {
    /// A verifier checking signatures with `provider`'s algorithms.
    pub fn new(provider: Arc<CryptoProvider>) -> Self {
        Self(provider)
    }
}

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
