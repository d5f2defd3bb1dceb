//! The files of a `tls:` block, read when the connector is built: each wrong one refused
//! naming its key; and the reason classes of rustls's errors.

use std::io;
use std::path::Path;

use super::*;
use crate::config::UpstreamTlsConfig;
use crate::metrics::Metrics;

/// A directory with `ca.pem` (a certificate), `key.pem` (its private key) and `junk.pem`.
fn files() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["ca.test".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    std::fs::write(dir.path().join("ca.pem"), cert.pem()).unwrap();
    std::fs::write(dir.path().join("key.pem"), key.serialize_pem()).unwrap();
    std::fs::write(dir.path().join("junk.pem"), "not pem at all\n").unwrap();
    dir
}

fn build(dir: &Path, ca: Option<&str>, pair: Option<(&str, &str)>) -> Result<(), String> {
    let cfg = UpstreamTlsConfig {
        ca: ca.map(|f| dir.join(f)),
        cert: pair.map(|(c, _)| dir.join(c)),
        key: pair.map(|(_, k)| dir.join(k)),
        ..UpstreamTlsConfig::default()
    };
    Connector::from_config(&cfg, "secure", "services.secure.tls", Metrics::new().tls)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

#[test]
fn builds_from_good_files() {
    let dir = files();
    build(dir.path(), Some("ca.pem"), Some(("ca.pem", "key.pem"))).unwrap();
    build(dir.path(), None, None).unwrap();
}

#[test]
fn refuses_files_that_are_missing_or_hold_the_wrong_thing() {
    let dir = files();
    let d = dir.path();
    for (got, want) in [
        (
            build(d, Some("missing.pem"), None),
            "services.secure.tls.ca: cannot read",
        ),
        (build(d, Some("junk.pem"), None), "services.secure.tls.ca: "),
        (build(d, Some("key.pem"), None), "holds no PEM certificate"),
        (
            build(d, None, Some(("key.pem", "key.pem"))),
            "services.secure.tls.cert: ",
        ),
        (
            build(d, None, Some(("ca.pem", "ca.pem"))),
            "services.secure.tls.key: ",
        ),
    ] {
        let e = got.expect_err(want);
        assert!(e.contains(want), "{e:?} should contain {want:?}");
    }
}

#[test]
fn classifies_rustls_errors() {
    use rustls::{AlertDescription, CertificateError, Error};
    let wrap = |e: Error| io::Error::new(io::ErrorKind::InvalidData, e);
    for (e, want) in [
        (
            Error::InvalidCertificate(CertificateError::UnknownIssuer),
            Reason::UnknownCa,
        ),
        (
            Error::InvalidCertificate(CertificateError::Expired),
            Reason::Expired,
        ),
        (
            Error::InvalidCertificate(CertificateError::NotValidForName),
            Reason::BadName,
        ),
        (Error::NoCertificatesPresented, Reason::NoClientCert),
        (
            Error::AlertReceived(AlertDescription::CertificateRequired),
            Reason::NoClientCert,
        ),
        (
            Error::AlertReceived(AlertDescription::ProtocolVersion),
            Reason::Protocol,
        ),
        (Error::NoApplicationProtocol, Reason::Protocol),
        (
            Error::InvalidCertificate(CertificateError::Revoked),
            Reason::Other,
        ),
    ] {
        assert_eq!(Reason::of(&wrap(e.clone())), want, "{e:?}");
    }
    let plain = io::Error::from(io::ErrorKind::ConnectionReset);
    assert_eq!(Reason::of_tls(&plain), None);
    assert_eq!(Reason::of(&plain), Reason::Other);
}

#[test]
fn listener_files_refused_naming_their_key() {
    let dir = files();
    let d = dir.path();
    let cfg = |cert: &str, key: &str, ca: Option<&str>| crate::config::ListenerTlsConfig {
        cert: d.join(cert),
        key: d.join(key),
        client_ca: ca.map(|c| d.join(c)),
    };
    let build = |c| {
        Acceptor::from_config(&c, "listen_tls", Metrics::new().tls)
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    build(cfg("ca.pem", "key.pem", Some("ca.pem"))).unwrap();
    for (c, want) in [
        (
            cfg("missing.pem", "key.pem", None),
            "listen_tls.cert: cannot read",
        ),
        (cfg("ca.pem", "ca.pem", None), "listen_tls.key: "),
        (
            cfg("ca.pem", "key.pem", Some("junk.pem")),
            "listen_tls.client_ca: ",
        ),
    ] {
        let e = build(c).expect_err(want);
        assert!(e.contains(want), "{e:?} should contain {want:?}");
    }
}
