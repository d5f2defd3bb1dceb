//! `services.<name>.tls:`: each rule refused with the line, column and key (the files it names
//! are read at start-up: `tls::tests`).

use super::super::tests::{parse, rejects};

/// A config with the service `secure` and its `tls:` block `tls` (the files it names are not
/// read here).
fn config(tls: &str) -> String {
    let tls = tls.replace("DIR", "/etc/waypost/tls");
    format!(
        "services:\n  secure:\n    resolver:\n      static:\n        instances:\n          - address: 127.0.0.1:9443\n    tls:\n{tls}"
    )
}

#[test]
fn accepts_a_full_block_and_an_empty_one() {
    let c = parse(&config(
        "      ca: DIR/ca.pem\n      server_name: secure.internal\n      cert: DIR/ca.pem\n      key: DIR/key.pem\n",
    ))
    .unwrap();
    let tls = c.services.values().next().unwrap().tls.clone().unwrap();
    assert_eq!(tls.server_name.as_deref(), Some("secure.internal"));
    assert!(!tls.insecure_skip_verify);
    let c = parse(&config("      {}\n")).unwrap();
    assert!(c.services.values().next().unwrap().tls.is_some());
}

#[test]
fn rejects_half_a_client_identity() {
    rejects(
        &config("      cert: DIR/ca.pem\n"),
        8,
        "services.secure.tls.cert: needs `key` too",
    );
    rejects(
        &config("      key: DIR/key.pem\n"),
        8,
        "services.secure.tls.key: needs `cert` too",
    );
}

#[test]
fn rejects_skipping_verification_with_a_ca() {
    rejects(
        &config("      ca: DIR/ca.pem\n      insecure_skip_verify: true\n"),
        9,
        "services.secure.tls.insecure_skip_verify",
    );
}

#[test]
fn rejects_a_server_name_that_is_no_name() {
    rejects(
        &config("      server_name: \"bad name!\"\n"),
        8,
        "is not a DNS name or an IP address",
    );
}

#[test]
fn rejects_unknown_keys() {
    let e = parse(&config("      verify: false\n")).unwrap_err();
    assert!(e.to_string().contains("unknown field `verify`"), "{e}");
    assert_eq!(e.line, Some(8));
}

#[test]
fn listener_tls_needs_a_listener() {
    let text = "listen_tls: {cert: /c.pem, key: /k.pem, client_ca: /ca.pem}\nservices:\n  secure:\n    listen_tls: {cert: /c.pem, key: /k.pem}\n    resolver:\n      static:\n        instances:\n          - address: 127.0.0.1:9443\n";
    rejects(
        text,
        4,
        "services.secure.listen_tls: TLS belongs to a listener",
    );
    let ok = text.replace(
        "    listen_tls:",
        "    listen: 127.0.0.1:18443\n    listen_tls:",
    );
    let c = parse(&ok).unwrap();
    assert!(c.listen_tls.unwrap().client_ca.is_some());
    let e = parse("listen_tls: {cert: /c.pem}\n").unwrap_err();
    assert!(e.to_string().contains("missing field `key`"), "{e}");
}

#[test]
fn protocol_is_http1_h2c_or_auto_and_h2c_is_not_tls() {
    let c = parse(&config("      {}\n    protocol: http1\n")).unwrap();
    assert_eq!(
        c.services.values().next().unwrap().protocol,
        super::Protocol::Http1
    );
    rejects(
        &config("      {}\n    protocol: h2c\n"),
        9,
        "services.secure.protocol: h2c is HTTP/2 without TLS",
    );
    let e = parse(&config("      {}\n    protocol: h3\n")).unwrap_err();
    assert!(e.to_string().contains("unknown variant `h3`"), "{e}");
}
