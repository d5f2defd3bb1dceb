//! Forwarding end to end on real sockets: weighted distribution, the three addressing modes,
//! h2c, header hygiene, and every error waypost generates (status + marker header).

mod support;

use std::time::Duration;

use http::Request;
use serde_json::Value;
use support::raw::{RawUpstream, Reply};
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
    let counts = spread(&proxy, "echo", 6000).await;
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
    // (b) absolute-form, as an HTTP_PROXY client sends it: connect to the proxy, ask for
    // http://echo/. The Host header names no service (a bare `Host: nope` is a 404), so only
    // the URI can route this request: the request target wins over Host (RFC 9112 §3.2.2).
    expect_error(&proxy, "nope", 404, "unknown_service").await;
    let mut conn = tokio::net::TcpStream::connect(proxy.addrs.outbound)
        .await
        .unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    conn.write_all(b"GET http://echo/abs HTTP/1.1\r\nHost: nope\r\nConnection: close\r\n\r\n")
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
    // --http2-prior-knowledge -H 'Host: echo'` sends), over a connection to the proxy; on the
    // service's own listener, whatever the authority says.
    for (listener, authority) in [(proxy.addrs.outbound, "echo"), (own, "whatever")] {
        h2c_twice(listener, authority).await;
    }
}

/// Two requests over one h2c (prior knowledge) connection to `listener`, naming `authority`;
/// both must reach the service's only instance over HTTP/2.
async fn h2c_twice(listener: std::net::SocketAddr, authority: &str) {
    let tcp = tokio::net::TcpStream::connect(listener).await.unwrap();
    let (mut h2, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    for path in ["/h2", "/h2-again"] {
        let req = Request::get(format!("http://{authority}{path}"))
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
    for (raw_req, want, kind) in [
        ("GET / HTTP/1.0\r\n\r\n", "HTTP/1.0 400", "bad_request"),
        (
            "CONNECT echo:443 HTTP/1.1\r\nHost: echo:443\r\n\r\n",
            "HTTP/1.1 405",
            "method_not_allowed",
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
        let marker = text
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("x-waypost-error")
                    .then(|| value.trim())
            })
            .unwrap_or_else(|| panic!("{raw_req:?}: no x-waypost-error in {text}"));
        assert_eq!(marker, kind, "{raw_req:?} → {text}");
    }
    // Successful responses never carry the marker.
    let got = get(&format!("{}/slow?ms=1", proxy.url()), &[("host", "slow")])
        .await
        .unwrap();
    assert_eq!(got.status, 200);
    assert_eq!(got.header("x-waypost-error"), "");
    // The errors are counted by kind.
    let text = metrics(&proxy).await;
    assert_eq!(
        metric(
            &text,
            "waypost_forward_errors_total",
            &[("kind", "upstream_timeout"), ("service", "slow")]
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            "waypost_forward_upstream_connect_errors_total",
            &[("service", "dead")]
        ),
        Some(1.0),
        "{text}"
    );
    // Requests that name no known service share one bounded series.
    assert_eq!(
        metric(
            &text,
            "waypost_forward_errors_total",
            &[("kind", "unknown_service"), ("service", "_unknown")]
        ),
        Some(1.0),
        "{text}"
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
        "registry: {{file: {{dir: {}}}}}\nservices:\n  blocked:\n    resolver: {{file: {{}}}}\n",
        blocked.display()
    );
    let proxy = TestProxy::start_unready(&yaml).await;
    // `/ready` is 503 from the start: wait until the resolver has actually failed, so the
    // answer below is about a failed service, not one still pending.
    await_status(&proxy, "blocked", "state", Value::from("failed")).await;
    let svc = debug_service(&proxy, "blocked").await.unwrap();
    assert!(svc["status"]["last_error"].is_string(), "{svc}");
    let got = get(&format!("{}/ready", proxy.admin()), &[]).await.unwrap();
    assert_eq!(
        got.status,
        503,
        "a failed service is not ready: {}",
        got.text()
    );
    assert!(got.text().contains("blocked"), "{}", got.text());
    proxy.stop().await;
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

#[tokio::test]
async fn a_pooled_connection_closed_by_the_upstream_is_replaced_transparently() {
    // Each connection's first request is answered with keep-alive, then the connection is
    // closed (FIN) 20 ms later — as upstreams with a short idle timeout do.
    let up = RawUpstream::start(|_| Reply {
        linger: Duration::from_millis(20),
        ..Reply::close(vec![
            b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\nconnection: keep-alive\r\n\r\nok\n".to_vec(),
        ])
    })
    .await;
    let proxy = TestProxy::in_front_of_with(up.addr, "").await;
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
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
    }
    let served = up.requests();
    assert_eq!(served.len(), 20, "each request answered exactly once");
    // Every connection closes after its one answer, so the 20 answers need 20 connections — and
    // no more: a connection opened and never used, or one more per retry, shows up here.
    assert_eq!(
        up.accepted(),
        20,
        "one upstream connection per answered request: {:?}",
        served.iter().map(|r| (r.seq, r.conn)).collect::<Vec<_>>()
    );
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
        ttl: Duration::from_secs(30),
    };
    waypost::registry::file::FileRegistrar::new(dir.path())
        .write_blocking(&registration)
        .unwrap();
    eventually(Duration::from_secs(5), || async {
        get(&format!("{}/", proxy.url()), &[("host", "echo")])
            .await
            .is_ok_and(|r| r.status == 200 && r.header("x-instance") == "watched")
    })
    .await;
}

#[tokio::test]
async fn idle_upstream_connections_are_closed_after_the_idle_timeout() {
    let up = Upstream::start("idle").await;
    let proxy = TestProxy::in_front_of_with(up.addr, "upstream: {idle_timeout: 200ms}\n").await;
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
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(once().await.unwrap().status, 200);
    assert_eq!(conns(), 2, "the idle connection was closed by the pool");
}
