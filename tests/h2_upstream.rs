//! The HTTP/2 client: HTTP/2 apps reach HTTP/2 instances end to end — over h2c (`protocol:
//! h2c`) and over TLS by ALPN (`protocol: auto`) — on one shared connection per instance (100
//! concurrent requests, one accepted connection); an instance that chooses `http/1.1` by ALPN
//! is reached over HTTP/1; an HTTP/1 app calling an h2c-only service gets a 502 that says why.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::tls::{server_config, tls_service, yaml_path, Ca, Pem, TlsUpstream};
use support::{get, metric, metrics, within, TestProxy, Upstream};

const LIMIT: Duration = Duration::from_secs(60);

/// An h2c connection to waypost's outbound listener.
async fn h2c_to(proxy: &TestProxy) -> hyper::client::conn::http2::SendRequest<Empty<Bytes>> {
    let tcp = tokio::net::TcpStream::connect(proxy.addrs.outbound)
        .await
        .unwrap();
    let (send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    send
}

/// `n` concurrent requests for `http://host/path` on one h2c connection to `proxy`; every
/// answer's instance.
async fn concurrently(proxy: &TestProxy, host: &str, path: &str, n: usize) -> Vec<String> {
    let send = h2c_to(proxy).await;
    let calls = (0..n).map(|_| {
        let mut send = send.clone();
        let req = Request::get(format!("http://{host}{path}"))
            .body(Empty::new())
            .unwrap();
        async move {
            let resp = send.send_request(req).await.unwrap();
            assert_eq!(resp.status(), 200);
            let instance = resp.headers()["x-instance"].to_str().unwrap().to_string();
            resp.into_body().collect().await.unwrap();
            instance
        }
    });
    futures_util::future::join_all(calls).await
}

fn service(name: &str, addr: SocketAddr, extra: &str) -> String {
    format!(
        "  {name}:\n    resolver:\n      static:\n        instances:\n          - address: \"{addr}\"\n{extra}"
    )
}

#[tokio::test]
async fn h2c_upstream_shares_one_connection_among_100_concurrent_requests() {
    within(LIMIT, async {
        let up = Upstream::start("h2c").await;
        let proxy = TestProxy::start(&format!(
            "services:\n{}",
            service("grpc", up.addr, "    protocol: h2c\n")
        ))
        .await;
        let got = concurrently(&proxy, "grpc", "/slow?ms=300", 100).await;
        assert!(got.iter().all(|i| i == "h2c"));
        assert_eq!(up.hit_count(), 100);
        assert_eq!(
            up.conns.load(Ordering::Relaxed),
            1,
            "one shared HTTP/2 connection"
        );
        let m = metrics(&proxy).await;
        assert_eq!(
            metric(
                &m,
                "waypost_forward_upstream_h2_streams",
                &[("service", "grpc")]
            ),
            Some(0.0),
            "{m}"
        );
        support::external::promtool_check(m.as_bytes());
        // An HTTP/1 app is told why it cannot reach this service.
        let got = get(&format!("{}/", proxy.url()), &[("host", "grpc")])
            .await
            .unwrap();
        assert_eq!(got.status, 502);
        assert!(
            got.text().contains("HTTP/1 requests are not translated"),
            "{}",
            got.text()
        );
    })
    .await;
}

#[tokio::test]
async fn h2_over_tls_by_alpn_and_http1_when_the_instance_chooses_it() {
    within(LIMIT, async {
        let ca = Ca::new("test ca");
        let pem = Pem::new();
        let path = yaml_path(&pem.write("ca.pem", &ca.pem()));
        let leaf = ca.issue(&["h2", "h1"]);
        let h2 = TlsUpstream::start(
            "h2",
            server_config(&leaf, None, &[b"h2", b"http/1.1"]),
            None,
        )
        .await;
        let h1 = TlsUpstream::start("h1", server_config(&leaf, None, &[b"http/1.1"]), None).await;
        let tls = format!("{{ca: {path}}}");
        let proxy = TestProxy::start(&format!(
            "services:\n{}{}",
            tls_service("h2", h2.addr, "", &tls),
            tls_service("h1", h1.addr, "", &tls)
        ))
        .await;
        let got = concurrently(&proxy, "h2", "/", 50).await;
        assert!(got.iter().all(|i| i == "secure" || i == "h2"), "{got:?}");
        assert_eq!(
            h2.conns.load(Ordering::Relaxed),
            1,
            "one shared HTTP/2 connection"
        );
        let got = concurrently(&proxy, "h1", "/", 5).await;
        assert_eq!(got.len(), 5);
        // HTTP/1 apps reach both over HTTP/1.1 (ALPN offers only http/1.1 for them).
        for host in ["h1", "h2"] {
            let got = get(&format!("{}/", proxy.url()), &[("host", host)])
                .await
                .unwrap();
            assert_eq!(got.status, 200, "{host}: {}", got.text());
        }
    })
    .await;
}
