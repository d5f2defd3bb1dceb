//! TLS to upstreams: a service with `tls:` reaches HTTPS instances verified against a test CA;
//! a wrong CA, an expired certificate and a name mismatch each end in a 502 whose body names
//! the TLS reason (and are counted by reason); the server name comes from config, the service
//! name or an instance's `tls_server_name` tag; mTLS is accepted with the right client
//! certificate and refused without; `insecure_skip_verify` accepts anything; an idle TLS
//! connection the upstream closed (close_notify) is never reused. Certificates are made here
//! with rcgen; everything runs on 127.0.0.1.

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use http::Request;
use support::tls::{server_config, tls_service, yaml_path, Ca, Pem, TlsUpstream};
use support::{client, eventually, full, get, metric, metrics, send, within, TestProxy, SETTLE};

const LIMIT: Duration = Duration::from_secs(30);

/// A CA, its PEM file, and an HTTPS upstream presenting a certificate for `names`.
async fn upstream_for(names: &[&str]) -> (Ca, Pem, TlsUpstream) {
    let ca = Ca::new("test ca");
    let pem = Pem::new();
    pem.write("ca.pem", &ca.pem());
    let leaf = ca.issue(names);
    let up = TlsUpstream::start("secure", server_config(&leaf, None, &[b"http/1.1"]), None).await;
    (ca, pem, up)
}

async fn proxy(svc: &str) -> TestProxy {
    TestProxy::start(&format!("services:\n{svc}")).await
}

/// GETs `/` for `host`, expecting waypost's 502 for a TLS failure naming `reason`.
async fn refused(proxy: &TestProxy, host: &str, reason: &str) {
    let got = get(&format!("{}/", proxy.url()), &[("host", host)])
        .await
        .unwrap();
    assert_eq!(got.status, 502, "{}", got.text());
    assert_eq!(got.header("x-waypost-error"), "upstream_connect");
    assert!(
        got.text()
            .contains(&format!("TLS handshake failed ({reason})")),
        "body should name {reason}: {}",
        got.text()
    );
    let m = metrics(proxy).await;
    let counted = metric(
        &m,
        "waypost_tls_handshake_failures_total",
        &[("direction", "upstream"), ("reason", reason)],
    );
    assert_eq!(counted, Some(1.0), "{m}");
    support::external::promtool_check(m.as_bytes());
}

#[tokio::test]
async fn https_upstream_verified_against_a_test_ca() {
    within(LIMIT, async {
        let (_ca, pem, up) = upstream_for(&["secure"]).await;
        let tls = format!("{{ca: {}}}", yaml_path(&pem.path("ca.pem")));
        let proxy = proxy(&tls_service("secure", up.addr, "", &tls)).await;
        let c = client();
        for i in 0..3 {
            let req = Request::post(format!("{}/echo", proxy.url()))
                .header("host", "secure")
                .body(full(format!("hello {i}")))
                .unwrap();
            let got = send(&c, req).await.unwrap();
            assert_eq!(got.status, 200, "{}", got.text());
            assert_eq!(got.header("x-instance"), "secure");
            assert_eq!(got.header("x-client-cert"), "no");
            assert_eq!(got.text(), format!("hello {i}"));
        }
        // One handshake: the connection (and whatever session tickets the server sent on it)
        // stayed usable between requests.
        assert_eq!(up.conns.load(Ordering::Relaxed), 1);
    })
    .await;
}

#[tokio::test]
async fn wrong_ca_is_a_502_naming_unknown_ca() {
    within(LIMIT, async {
        let (_ca, pem, up) = upstream_for(&["secure"]).await;
        pem.write("other.pem", &Ca::new("another ca").pem());
        let tls = format!("{{ca: {}}}", yaml_path(&pem.path("other.pem")));
        let proxy = proxy(&tls_service("secure", up.addr, "", &tls)).await;
        refused(&proxy, "secure", "unknown_ca").await;
    })
    .await;
}

#[tokio::test]
async fn webpki_roots_do_not_trust_a_private_ca() {
    within(LIMIT, async {
        let (_ca, _pem, up) = upstream_for(&["secure"]).await;
        let proxy = proxy(&tls_service("secure", up.addr, "", "{}")).await;
        refused(&proxy, "secure", "unknown_ca").await;
    })
    .await;
}

#[tokio::test]
async fn expired_certificate_is_a_502_naming_expired() {
    within(LIMIT, async {
        let ca = Ca::new("test ca");
        let pem = Pem::new();
        pem.write("ca.pem", &ca.pem());
        let leaf = ca.issue_expired(&["secure"]);
        let up = TlsUpstream::start("secure", server_config(&leaf, None, &[]), None).await;
        let tls = format!("{{ca: {}}}", yaml_path(&pem.path("ca.pem")));
        let proxy = proxy(&tls_service("secure", up.addr, "", &tls)).await;
        refused(&proxy, "secure", "expired").await;
    })
    .await;
}

#[tokio::test]
async fn name_mismatch_is_a_502_naming_bad_name() {
    within(LIMIT, async {
        let (_ca, pem, up) = upstream_for(&["someone-else.internal"]).await;
        let tls = format!("{{ca: {}}}", yaml_path(&pem.path("ca.pem")));
        let proxy = proxy(&tls_service("secure", up.addr, "", &tls)).await;
        refused(&proxy, "secure", "bad_name").await;
    })
    .await;
}

#[tokio::test]
async fn server_name_from_config_or_from_the_instance_tag() {
    within(LIMIT, async {
        let (_ca, pem, up) = upstream_for(&["secure.internal"]).await;
        let ca = yaml_path(&pem.path("ca.pem"));
        let named = tls_service(
            "named",
            up.addr,
            "",
            &format!("{{ca: {ca}, server_name: secure.internal}}"),
        );
        let tagged = tls_service(
            "tagged",
            up.addr,
            "tls_server_name: secure.internal",
            &format!("{{ca: {ca}}}"),
        );
        let proxy = proxy(&format!("{named}{tagged}")).await;
        for host in ["named", "tagged"] {
            let got = get(&format!("{}/", proxy.url()), &[("host", host)])
                .await
                .unwrap();
            assert_eq!(got.status, 200, "{host}: {}", got.text());
            assert_eq!(got.header("x-instance"), "secure");
        }
    })
    .await;
}

#[tokio::test]
async fn mtls_accepted_with_the_client_certificate_and_refused_without() {
    within(LIMIT, async {
        let server_ca = Ca::new("server ca");
        let client_ca = Ca::new("client ca");
        let pem = Pem::new();
        let ca = yaml_path(&pem.write("ca.pem", &server_ca.pem()));
        let me = client_ca.issue(&["app.internal"]);
        let cert = yaml_path(&pem.write("me.pem", &me.cert));
        let key = yaml_path(&pem.write("me.key", &me.key));
        let leaf = server_ca.issue(&["secure"]);
        let config = server_config(&leaf, Some(&client_ca), &[b"http/1.1"]);
        let up = TlsUpstream::start("secure", config, None).await;
        let with = tls_service(
            "with",
            up.addr,
            "tls_server_name: secure",
            &format!("{{ca: {ca}, cert: {cert}, key: {key}}}"),
        );
        let without = tls_service(
            "without",
            up.addr,
            "tls_server_name: secure",
            &format!("{{ca: {ca}}}"),
        );
        let proxy = proxy(&format!("{with}{without}")).await;
        let got = get(&format!("{}/", proxy.url()), &[("host", "with")])
            .await
            .unwrap();
        assert_eq!(got.status, 200, "{}", got.text());
        assert_eq!(got.header("x-client-cert"), "yes");
        refused(&proxy, "without", "no_client_cert").await;
        assert_eq!(up.failed.load(Ordering::Relaxed), 1);
    })
    .await;
}

#[tokio::test]
async fn insecure_skip_verify_accepts_any_certificate() {
    within(LIMIT, async {
        let (_ca, _pem, up) = upstream_for(&["someone-else.internal"]).await;
        let proxy = proxy(&tls_service(
            "secure",
            up.addr,
            "",
            "{insecure_skip_verify: true}",
        ))
        .await;
        let got = get(&format!("{}/", proxy.url()), &[("host", "secure")])
            .await
            .unwrap();
        assert_eq!(got.status, 200, "{}", got.text());
    })
    .await;
}

#[tokio::test]
async fn an_idle_connection_closed_with_close_notify_is_not_reused() {
    within(LIMIT, async {
        let ca = Ca::new("test ca");
        let pem = Pem::new();
        let path = yaml_path(&pem.write("ca.pem", &ca.pem()));
        let leaf = ca.issue(&["secure"]);
        let config = server_config(&leaf, None, &[b"http/1.1"]);
        let up = TlsUpstream::start("once", config, Some(Duration::from_millis(50))).await;
        let proxy = proxy(&tls_service(
            "secure",
            up.addr,
            "",
            &format!("{{ca: {path}}}"),
        ))
        .await;
        let c = client();
        for round in 1..=3 {
            // A POST is never replayed: had the pool handed out the closed connection, this
            // would be a 502.
            let req = Request::post(format!("{}/", proxy.url()))
                .header("host", "secure")
                .body(full("x"))
                .unwrap();
            let got = send(&c, req).await.unwrap();
            assert_eq!(got.status, 200, "round {round}: {}", got.text());
            let closed = up.closed.clone();
            eventually(SETTLE, || {
                let n = closed.load(Ordering::Relaxed);
                async move { n == round }
            })
            .await;
        }
        assert_eq!(up.conns.load(Ordering::Relaxed), 3);
    })
    .await;
}
