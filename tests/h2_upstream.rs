//! The HTTP/2 client: HTTP/2 apps reach HTTP/2 instances end to end — over h2c (`protocol:
//! h2c`) and over TLS by ALPN (`protocol: auto`) — on one shared connection per instance (100
//! concurrent requests, one accepted connection), and a second connection once the first has
//! the peer's stream limit open; an instance that chooses `http/1.1` by ALPN
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

/// An h2c upstream that allows `max_streams` concurrent streams per connection and answers
/// each request after `delay`; returns its address and the count of connections accepted.
async fn h2c_limited(
    max_streams: u32,
    delay: Duration,
) -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let conns = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = conns.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            seen.fetch_add(1, Ordering::Relaxed);
            let svc = hyper::service::service_fn(move |_req| async move {
                tokio::time::sleep(delay).await;
                let mut resp = http::Response::new(http_body_util::Full::new(Bytes::from("ok")));
                resp.headers_mut()
                    .insert("x-instance", http::HeaderValue::from_static("limited"));
                Ok::<_, std::convert::Infallible>(resp)
            });
            let mut b = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
            b.max_concurrent_streams(max_streams);
            tokio::spawn(async move {
                let _ = b.serve_connection(TokioIo::new(tcp), svc).await;
            });
        }
    });
    (addr, conns)
}

#[tokio::test]
async fn a_second_connection_opens_when_the_first_has_the_peers_stream_limit_open() {
    within(LIMIT, async {
        let (addr, conns) = h2c_limited(2, Duration::from_millis(500)).await;
        let proxy = TestProxy::start(&format!(
            "services:\n{}",
            service("grpc", addr, "    protocol: h2c\n")
        ))
        .await;
        // The peer's limit is read as requests are dispatched on the connection: two requests
        // in turn, and the second has seen the peer's SETTINGS.
        for _ in 0..2 {
            assert_eq!(concurrently(&proxy, "grpc", "/", 1).await, ["limited"]);
        }
        assert_eq!(conns.load(Ordering::Relaxed), 1);
        // Four at once, two streams per connection: the shared one, and one more.
        let got = concurrently(&proxy, "grpc", "/", 4).await;
        assert_eq!(got.len(), 4);
        assert_eq!(
            conns.load(Ordering::Relaxed),
            2,
            "a second connection only once the first is full"
        );
    })
    .await;
}
