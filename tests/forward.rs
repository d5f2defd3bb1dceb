//! Forwarding end to end on real sockets: weighted distribution, the three addressing modes,
//! h2c, header hygiene, and every error waypost generates (status + marker header).

mod support;

use std::collections::HashMap;

use http::Request;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_distribution_3_2_1_and_drained_zero() {
    let ups = [
        Upstream::start("a").await,
        Upstream::start("b").await,
        Upstream::start("c").await,
    ];
    let drained = Upstream::start("drained").await;
    let yaml = format!(
        "services:\n{}",
        static_service(
            "echo",
            &[
                (ups[0].addr, 3),
                (ups[1].addr, 2),
                (ups[2].addr, 1),
                (drained.addr, 0)
            ]
        )
    );
    let proxy = TestProxy::start(&yaml).await;
    let client = client();
    let mut counts: HashMap<String, usize> = HashMap::new();
    const N: usize = 6000;
    for _ in 0..N {
        let req = Request::get(format!("{}/", proxy.url()))
            .header("host", "echo")
            .body(empty())
            .unwrap();
        let got = send(&client, req).await.unwrap();
        assert_eq!(got.status, 200);
        *counts
            .entry(got.header("x-instance").to_string())
            .or_default() += 1;
    }
    assert_shares(
        &counts,
        &[("a", 3.0 / 6.0), ("b", 2.0 / 6.0), ("c", 1.0 / 6.0)],
        0.10,
    );
    assert_eq!(counts.get("drained"), None, "weight 0 must get no traffic");
    assert_eq!(drained.hits.load(std::sync::atomic::Ordering::Relaxed), 0);
}

#[tokio::test]
async fn three_addressing_modes_and_h2c() {
    let up = Upstream::start("only").await;
    let yaml = format!(
        "services:\n{}    listen: 127.0.0.1:0\n",
        static_service("echo", &[(up.addr, 1)])
    );
    let proxy = TestProxy::start(&yaml).await;
    // (a) Host header, with and without a port, any case.
    for host in ["echo", "echo:80", "ECHO"] {
        let got = get(&format!("{}/x", proxy.url()), &[("host", host)])
            .await
            .unwrap();
        assert_eq!(
            (got.status, got.header("x-instance")),
            (200, "only"),
            "Host: {host}"
        );
    }
    // (b) absolute-form, as an HTTP_PROXY client sends it: connect to the proxy, ask for http://echo/.
    let mut conn = tokio::net::TcpStream::connect(proxy.addrs.outbound)
        .await
        .unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    conn.write_all(b"GET http://echo/abs HTTP/1.1\r\nHost: echo\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut raw = String::new();
    conn.read_to_string(&mut raw).await.unwrap();
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    assert!(raw.contains("x-instance: only"), "{raw}");
    // (c) the service's own listener: no Host needed to name it.
    let own = proxy.addrs.services["echo"];
    let got = get(&format!("http://{own}/y"), &[("host", "whatever")])
        .await
        .unwrap();
    assert_eq!((got.status, got.header("x-instance")), (200, "only"));
    // h2c with prior knowledge: the service comes from :authority (what `curl
    // --http2-prior-knowledge -H 'Host: echo'` sends), over a connection to the proxy.
    let tcp = tokio::net::TcpStream::connect(proxy.addrs.outbound)
        .await
        .unwrap();
    let (mut h2, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    for path in ["/h2", "/h2-again"] {
        let req = Request::get(format!("http://echo{path}"))
            .version(http::Version::HTTP_2)
            .body(empty())
            .unwrap();
        let resp = h2.send_request(req).await.unwrap();
        assert_eq!(resp.version(), http::Version::HTTP_2);
        assert_eq!(
            (
                resp.status().as_u16(),
                resp.headers()["x-instance"].to_str().unwrap()
            ),
            (200, "only")
        );
    }
}

#[tokio::test]
async fn hop_by_hop_headers_are_dropped_and_host_kept() {
    let up = Upstream::start("h").await;
    let proxy = TestProxy::in_front_of(&up).await;
    let got = get(
        &format!("{}/headers", proxy.url()),
        &[
            ("host", "echo:8080"),
            ("connection", "x-secret"),
            ("x-secret", "1"),
            ("proxy-authorization", "t"),
            ("x-keep", "yes"),
        ],
    )
    .await
    .unwrap();
    let seen = got.text();
    assert!(seen.contains("host: echo:8080"), "{seen}");
    assert!(seen.contains("x-keep: yes"), "{seen}");
    assert!(!seen.contains("x-secret"), "{seen}");
    assert!(!seen.contains("proxy-authorization"), "{seen}");
}

#[tokio::test]
async fn every_failure_has_its_status_and_marker() {
    let slow = Upstream::start("slow").await;
    let dead = dead_addr().await;
    let yaml = format!(
        "services:\n{}{}{}    upstream: {{timeout: 300ms}}\n  empty:\n    resolver: {{file: {{}}}}\nregistry:\n  file: {{dir: {}}}\n",
        static_service("dead", &[(dead, 1)]),
        static_service("drained", &[(slow.addr, 0)]),
        static_service("slow", &[(slow.addr, 1)]),
        tempfile::tempdir().unwrap().keep().display(),
    );
    let proxy = TestProxy::start(&yaml).await;
    let cases = [
        ("nope", "/", 404, "unknown_service"),
        ("empty", "/", 503, "no_instances"),
        ("drained", "/", 503, "no_instances"),
        ("dead", "/", 502, "upstream_connect"),
        ("slow", "/slow?ms=3000", 504, "upstream_timeout"),
    ];
    for (host, path, status, kind) in cases {
        let got = get(&format!("{}{path}", proxy.url()), &[("host", host)])
            .await
            .unwrap();
        assert_eq!(got.status, status, "{host}: {}", got.text());
        assert_eq!(got.header("x-waypost-error"), kind, "{host}");
        assert!(
            got.text().starts_with("waypost: "),
            "{host}: {}",
            got.text()
        );
        if host != "nope" {
            assert!(
                got.text().contains(host),
                "body names the service: {}",
                got.text()
            );
        }
    }
    // A request that cannot name a service is a 400, CONNECT a 405.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    for (raw_req, want) in [
        ("GET / HTTP/1.0\r\n\r\n", "HTTP/1.0 400"),
        (
            "CONNECT echo:443 HTTP/1.1\r\nHost: echo:443\r\n\r\n",
            "HTTP/1.1 405",
        ),
    ] {
        let mut conn = tokio::net::TcpStream::connect(proxy.addrs.outbound)
            .await
            .unwrap();
        conn.write_all(raw_req.as_bytes()).await.unwrap();
        let mut buf = vec![0u8; 1024];
        let n = conn.read(&mut buf).await.unwrap();
        let text = String::from_utf8_lossy(&buf[..n]);
        assert!(text.starts_with(want), "{raw_req:?} → {text}");
        assert!(text.contains("x-waypost-error"), "{text}");
    }
    // Successful responses never carry the marker.
    let got = get(&format!("{}/slow?ms=1", proxy.url()), &[("host", "slow")])
        .await
        .unwrap();
    assert_eq!(got.status, 200);
    assert_eq!(got.header("x-waypost-error"), "");
    // The errors are counted by kind.
    let metrics = get(&format!("{}/metrics", proxy.admin()), &[])
        .await
        .unwrap()
        .text();
    assert!(
        metrics
            .contains(r#"waypost_forward_errors_total{kind="upstream_timeout",service="slow"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"waypost_forward_upstream_connect_errors_total{service="dead"} 1"#),
        "{metrics}"
    );
    // Requests that name no known service share one bounded series.
    assert!(
        metrics.contains(
            r#"waypost_forward_errors_total{kind="unknown_service",service="_unknown"} 1"#
        ),
        "{metrics}"
    );
}

#[tokio::test]
async fn never_an_open_proxy() {
    // An upstream that is not an instance of any service must never be contacted, whatever the
    // request names: a raw address, an absolute-form URI to it, or a Host header with its port.
    let bystander = Upstream::start("bystander").await;
    let up = Upstream::start("echo").await;
    let proxy = TestProxy::in_front_of(&up).await;
    let b = bystander.addr;
    for host in [
        b.to_string(),
        b.ip().to_string(),
        "localhost".into(),
        format!("localhost:{}", b.port()),
    ] {
        let got = get(&format!("{}/", proxy.url()), &[("host", &host)])
            .await
            .unwrap();
        assert_eq!(got.status, 404, "{host}");
    }
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(proxy.addrs.outbound)
        .await
        .unwrap();
    conn.write_all(
        format!("GET http://{b}/ HTTP/1.1\r\nHost: {b}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut raw = String::new();
    conn.read_to_string(&mut raw).await.unwrap();
    assert!(raw.starts_with("HTTP/1.1 404"), "{raw}");
    assert_eq!(bystander.hits.load(std::sync::atomic::Ordering::Relaxed), 0);
}

#[tokio::test]
async fn admin_endpoints() {
    let up = Upstream::start("a").await;
    let proxy = TestProxy::start(&format!(
        "services:\n{}",
        static_service("echo", &[(up.addr, 5)])
    ))
    .await;
    let live = get(&format!("{}/live", proxy.admin()), &[]).await.unwrap();
    assert_eq!(live.status, 200);
    let ready = get(&format!("{}/ready", proxy.admin()), &[]).await.unwrap();
    assert_eq!(ready.status, 200);
    let debug = get(&format!("{}/debug/services", proxy.admin()), &[])
        .await
        .unwrap();
    let doc: serde_json::Value = serde_json::from_slice(&debug.body).unwrap();
    let svc = &doc["services"][0];
    assert_eq!(svc["name"], "echo");
    assert_eq!(svc["resolver"], "static");
    assert_eq!(svc["instances"][0]["weight"], 5);
    assert_eq!(svc["instances"][0]["address"], up.addr.to_string());
    assert_eq!(svc["status"]["state"], "ready");
    assert!(svc["status"]["last_success"].as_f64().unwrap() > 0.0);
    let nf = get(&format!("{}/nope", proxy.admin()), &[]).await.unwrap();
    assert_eq!(nf.status, 404);
}

#[tokio::test]
async fn not_ready_until_every_declared_service_resolved() {
    // A file-registry service with nobody registered resolves (to zero instances) at once, so
    // readiness is reached; a service whose registry directory is unreadable never resolves.
    let dir = tempfile::tempdir().unwrap();
    let blocked = dir.path().join("blocked");
    std::fs::write(&blocked, b"not a directory").unwrap();
    let yaml = format!(
        "listen: 127.0.0.1:0\nadmin: {{listen: 127.0.0.1:0}}\nregistry: {{file: {{dir: {}}}}}\nservices:\n  blocked:\n    resolver: {{file: {{}}}}\n",
        blocked.display()
    );
    let config = waypost::config::load_str("t.yaml", &yaml, &|_| None).unwrap();
    let app = waypost::App::build(config).await.unwrap();
    let admin = app.addrs().admin;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(app.run(async move {
        let _ = rx.await;
    }));
    eventually(std::time::Duration::from_secs(5), || async {
        get(&format!("http://{admin}/ready"), &[])
            .await
            .map(|r| r.status == 503)
            .unwrap_or(false)
    })
    .await;
    let got = get(&format!("http://{admin}/ready"), &[]).await.unwrap();
    assert!(got.text().contains("blocked"), "{}", got.text());
    let _ = tx.send(());
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn upstream_connections_are_kept_alive_and_reused() {
    let up = Upstream::start("ka").await;
    let proxy = TestProxy::in_front_of(&up).await;
    let client = client();
    for _ in 0..200 {
        let req = Request::get(format!("{}/", proxy.url()))
            .header("host", "echo")
            .body(full("x"))
            .unwrap();
        assert_eq!(send(&client, req).await.unwrap().status, 200);
    }
    assert_eq!(
        up.conns.load(std::sync::atomic::Ordering::Relaxed),
        1,
        "sequential requests share one upstream connection"
    );
}

/// An upstream that answers each connection's first request with keep-alive, then closes the
/// connection shortly after — as upstreams with a short idle timeout do.
async fn closing_upstream() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let served = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = served.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let count = count.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\nconnection: keep-alive\r\n\r\nok\n").await;
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                // Dropping the socket closes the kept-alive connection under the pool.
            });
        }
    });
    (addr, served)
}

#[tokio::test]
async fn a_pooled_connection_closed_by_the_upstream_is_replaced_transparently() {
    let (addr, served) = closing_upstream().await;
    let proxy = TestProxy::start(&format!(
        "services:\n{}",
        static_service("echo", &[(addr, 1)])
    ))
    .await;
    for i in 0..20 {
        let got = get(&format!("{}/", proxy.url()), &[("host", "echo")])
            .await
            .unwrap();
        assert_eq!(
            (got.status, got.text().as_str()),
            (200, "ok\n"),
            "request {i}: {}",
            got.text()
        );
        // Alternate between reusing at once (closed under us, the request was never sent:
        // retried) and after the close is noticed (dropped at checkout).
        if i % 2 == 0 {
            tokio::time::sleep(std::time::Duration::from_millis(40)).await;
        }
    }
    assert_eq!(served.load(std::sync::atomic::Ordering::Relaxed), 20);
}

#[tokio::test]
async fn a_file_registration_is_applied_by_the_watch_not_the_next_refresh() {
    let dir = tempfile::tempdir().unwrap();
    let up = Upstream::start("watched").await;
    // Refresh once an hour: only the registry watch can bring the new instance in quickly.
    let yaml = format!(
        "registry: {{file: {{dir: {}}}}}\ndiscovery: {{refresh_interval: 1h}}\nservices:\n  echo:\n    resolver: {{file: {{}}}}\n",
        dir.path().display()
    );
    let proxy = TestProxy::start(&yaml).await;
    expect_error(&proxy, "echo", 503, "no_instances").await;
    let registration = waypost::register::Registration {
        service: "echo".into(),
        address: up.addr,
        weight: 1,
        tags: Default::default(),
        ttl: std::time::Duration::from_secs(30),
    };
    waypost::register::FileRegistrar::new(dir.path())
        .write_blocking(&registration)
        .unwrap();
    eventually(std::time::Duration::from_secs(5), || async {
        get(&format!("{}/", proxy.url()), &[("host", "echo")])
            .await
            .is_ok_and(|r| r.status == 200 && r.header("x-instance") == "watched")
    })
    .await;
}

#[tokio::test]
async fn idle_upstream_connections_are_closed_after_the_idle_timeout() {
    let up = Upstream::start("idle").await;
    let yaml = format!(
        "upstream: {{idle_timeout: 200ms}}\nservices:\n{}",
        static_service("echo", &[(up.addr, 1)])
    );
    let proxy = TestProxy::start(&yaml).await;
    let url = format!("{}/", proxy.url());
    let once = || get(&url, &[("host", "echo")]);
    assert_eq!(once().await.unwrap().status, 200);
    assert_eq!(once().await.unwrap().status, 200);
    let conns = || up.conns.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(
        conns(),
        1,
        "back-to-back requests share the pooled connection"
    );
    // Idle well past the timeout (the sweeper runs every half timeout): the next request
    // needs a new connection.
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    assert_eq!(once().await.unwrap().status, 200);
    assert_eq!(conns(), 2, "the idle connection was closed by the pool");
}
