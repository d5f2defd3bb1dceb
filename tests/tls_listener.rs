//! Listeners that terminate TLS (`listen_tls`): HTTP/1.1 and, by ALPN, HTTP/2 over TLS reach
//! the upstream; a listener with a client CA refuses a client without a certificate (counted
//! by reason) and serves one with; a handshake that never comes ends after
//! `client.header_timeout`. Certificates made with rcgen; 127.0.0.1 only.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::tls::{client_config, connect_tls, yaml_path, Ca, Pem};
use support::{eventually, get, metric, static_service, within, TestProxy, Upstream, SETTLE};
use tokio::io::AsyncReadExt;

const LIMIT: Duration = Duration::from_secs(30);

struct Setup {
    ca: Ca,
    _pem: Pem,
    _up: Upstream,
    proxy: TestProxy,
}

/// waypost with a TLS outbound listener (certificate for `waypost.local`), requiring client
/// certificates from `ca` when `mtls`, in front of one plain upstream `echo`.
async fn setup(mtls: bool) -> Setup {
    let ca = Ca::new("test ca");
    let pem = Pem::new();
    let leaf = ca.issue(&["waypost.local"]);
    let cert = yaml_path(&pem.write("tls.crt", &leaf.cert));
    let key = yaml_path(&pem.write("tls.key", &leaf.key));
    let client_ca = if mtls {
        format!(
            ", client_ca: {}",
            yaml_path(&pem.write("ca.crt", &ca.pem()))
        )
    } else {
        String::new()
    };
    let up = Upstream::start("plain").await;
    let proxy = TestProxy::start(&format!(
        "client: {{header_timeout: 500ms}}\nlisten_tls: {{cert: {cert}, key: {key}{client_ca}}}\nservices:\n{}",
        static_service("echo", &[(up.addr, 1)])
    ))
    .await;
    Setup {
        ca,
        _pem: pem,
        _up: up,
        proxy,
    }
}

async fn h1_get(
    tls: tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
) -> hyper::Result<http::Response<hyper::body::Incoming>> {
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
    tokio::spawn(conn);
    let req = Request::get("/")
        .header("host", "echo")
        .body(Empty::<Bytes>::new())
        .unwrap();
    send.send_request(req).await
}

#[tokio::test]
async fn http1_and_h2_by_alpn_over_a_tls_listener() {
    within(LIMIT, async {
        let s = setup(false).await;
        let addr = s.proxy.addrs.outbound;
        let tls = connect_tls(
            addr,
            "waypost.local",
            client_config(&s.ca, None, &[b"http/1.1"]),
        )
        .await
        .unwrap();
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
        let resp = h1_get(tls).await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["x-instance"], "plain");

        let tls = connect_tls(addr, "waypost.local", client_config(&s.ca, None, &[b"h2"]))
            .await
            .unwrap();
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        let (mut send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                .await
                .unwrap();
        tokio::spawn(conn);
        for _ in 0..3 {
            let req = Request::get("http://echo/")
                .body(Empty::<Bytes>::new())
                .unwrap();
            let resp = send.send_request(req).await.unwrap();
            assert_eq!(resp.status(), 200);
            assert_eq!(resp.version(), http::Version::HTTP_2);
            assert_eq!(resp.headers()["x-instance"], "plain");
            resp.into_body().collect().await.unwrap();
        }
    })
    .await;
}

#[tokio::test]
async fn a_listener_with_a_client_ca_refuses_a_client_without_a_certificate() {
    within(LIMIT, async {
        let s = setup(true).await;
        let addr = s.proxy.addrs.outbound;
        // TLS 1.3: the client's side of the handshake completes; the refusal comes on the
        // first read.
        let refused =
            match connect_tls(addr, "waypost.local", client_config(&s.ca, None, &[])).await {
                Err(_) => true,
                Ok(tls) => h1_get(tls).await.is_err(),
            };
        assert!(refused, "a client without a certificate was served");
        let admin = s.proxy.admin();
        eventually(SETTLE, || {
            let admin = admin.clone();
            async move {
                let m = get(&format!("{admin}/metrics"), &[]).await.unwrap().text();
                metric(
                    &m,
                    "waypost_tls_handshake_failures_total",
                    &[("direction", "listener"), ("reason", "no_client_cert")],
                ) == Some(1.0)
            }
        })
        .await;
        let me = s.ca.issue(&["app.local"]);
        let tls = connect_tls(addr, "waypost.local", client_config(&s.ca, Some(&me), &[]))
            .await
            .unwrap();
        let resp = h1_get(tls).await.unwrap();
        assert_eq!(resp.status(), 200);
    })
    .await;
}

#[tokio::test]
async fn a_handshake_that_never_comes_ends_after_the_header_timeout() {
    within(LIMIT, async {
        let s = setup(false).await;
        let mut tcp = tokio::net::TcpStream::connect(s.proxy.addrs.outbound)
            .await
            .unwrap();
        let mut buf = [0u8; 16];
        // Closed by waypost (0) or reset: either way, not left open.
        let n = tcp.read(&mut buf).await.unwrap_or(0);
        assert_eq!(n, 0);
        let m = support::metrics(&s.proxy).await;
        assert_eq!(
            metric(
                &m,
                "waypost_tls_handshake_failures_total",
                &[("direction", "listener"), ("reason", "other")]
            ),
            Some(1.0),
            "{m}"
        );
    })
    .await;
}
