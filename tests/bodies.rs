//! Request bodies through the one HTTP/1 pipeline: `Expect: 100-continue` relayed, a large body
//! echoed with both directions moving at once, pipelined requests with bodies, chunked uploads
//! re-chunked by waypost, a broken chunk answered with a 400 whose upstream connection is
//! dropped, not blamed; and the HTTP/2 inbound limits.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use support::raw::*;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// An upstream that answers every request's head with `100 Continue`, reads its
/// `Content-Length` body, and answers `200` with that body. Counts the connections it accepts.
async fn continuing_upstream() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let conns = Arc::new(AtomicUsize::new(0));
    let counted = conns.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let end = loop {
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break i + 4;
                    }
                    match s.read(&mut chunk).await {
                        Ok(n @ 1..) => buf.extend_from_slice(&chunk[..n]),
                        _ => return,
                    }
                };
                let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                assert!(
                    buf.len() == end,
                    "the body came before the 100 Continue was relayed"
                );
                s.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await.unwrap();
                let mut body = buf.split_off(end);
                while body.len() < len {
                    match s.read(&mut chunk).await {
                        Ok(n @ 1..) => body.extend_from_slice(&chunk[..n]),
                        _ => return,
                    }
                }
                let resp = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len());
                let _ = s.write_all(resp.as_bytes()).await;
                let _ = s.write_all(&body).await;
            });
        }
    });
    (addr, conns)
}

#[tokio::test]
async fn expect_100_continue_is_relayed_then_the_body_follows() {
    within(TEST_LIMIT, async {
        let (addr, _) = continuing_upstream().await;
        let proxy = TestProxy::in_front_of_with(addr, "upstream: {timeout: 3s}\n").await;
        let mut app = RawApp::connect(&proxy).await;
        app.send(
            "PUT /doc HTTP/1.1\r\nHost: echo\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n",
        )
        .await;
        // The app waits for the 100 before sending its body, as curl does.
        let interim = app.response(true).await;
        assert_eq!(interim.line, "HTTP/1.1 100 Continue", "{interim:?}");
        app.send("hello").await;
        let resp = app.response(false).await;
        assert!(resp.line.starts_with("HTTP/1.1 200"), "{resp:?}");
        assert_eq!(resp.text(), "hello");
    })
    .await;
}

#[tokio::test]
async fn a_final_answer_before_the_body_closes_both_connections() {
    within(TEST_LIMIT, async {
        // The upstream refuses right after the head, without waiting for the body.
        let up = RawUpstream::start(|_| Reply {
            read_body: false,
            drain: true,
            ..Reply::close(vec![
                b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\n\r\n".to_vec(),
            ])
        })
        .await;
        let proxy = proxy_for(&up).await;
        let mut app = RawApp::connect(&proxy).await;
        app.send(
            "PUT /doc HTTP/1.1\r\nHost: echo\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n",
        )
        .await;
        let resp = app.response(false).await;
        assert!(resp.line.starts_with("HTTP/1.1 401"), "{resp:?}");
        assert_eq!(resp.header("connection"), Some("close"), "{resp:?}");
        assert!(
            app.closed().await,
            "the body that never came cannot be told from a request"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_1_mib_body_is_echoed_with_both_directions_moving() {
    within(Duration::from_secs(30), async {
        let up = Upstream::start("echo").await;
        let proxy = TestProxy::in_front_of(&up).await;
        let client = client();
        let big: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
        // A known length (Content-Length) and an unknown one (chunked, re-chunked by waypost).
        for body in [full(big.clone()), streamed_body(1 << 20)] {
            let req = Request::post(format!("{}/echo", proxy.url()))
                .header("host", "echo")
                .body(body)
                .unwrap();
            let got = send(&client, req).await.unwrap();
            assert_eq!(got.status, 200, "{}", got.header("x-waypost-error"));
            assert_eq!(got.body.len(), 1 << 20);
        }
        let req = Request::post(format!("{}/echo", proxy.url()))
            .header("host", "echo")
            .body(full(big.clone()))
            .unwrap();
        assert_eq!(send(&client, req).await.unwrap().body, Bytes::from(big));
    })
    .await;
}

#[tokio::test]
async fn pipelined_requests_with_bodies_are_answered_in_order() {
    within(TEST_LIMIT, async {
        let up = Upstream::start("echo").await;
        let proxy = TestProxy::in_front_of(&up).await;
        let mut app = RawApp::connect(&proxy).await;
        app.send(
            "POST /1 HTTP/1.1\r\nHost: echo\r\nContent-Length: 5\r\n\r\nhello\
             POST /2 HTTP/1.1\r\nHost: echo\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n\
             GET /3 HTTP/1.1\r\nHost: echo\r\n\r\n\
             PUT /4 HTTP/1.1\r\nHost: echo\r\nContent-Length: 2\r\n\r\nok",
        )
        .await;
        for want in ["hello", "abc", "", "ok"] {
            let resp = app.response(false).await;
            assert!(resp.line.starts_with("HTTP/1.1 200"), "{resp:?}");
            assert_eq!(resp.text(), want);
        }
        assert_eq!(up.hit_count(), 4);
    })
    .await;
}

#[tokio::test]
async fn a_chunked_upload_is_rechunked_without_extensions_or_forbidden_trailers() {
    within(TEST_LIMIT, async {
        let up = RawUpstream::start(|_| Reply::whole(ok("done"))).await;
        let proxy = proxy_for(&up).await;
        let mut app = RawApp::connect(&proxy).await;
        // Whole, with the head: re-chunked as it arrived.
        app.send(
            "POST /a HTTP/1.1\r\nHost: echo\r\nTransfer-Encoding: chunked\r\nTrailer: x-sum\r\n\r\n\
             5;ext=1\r\nhello\r\n6;a=\"b c\"\r\n world\r\n0\r\nX-Sum: 42\r\nContent-Length: 5\r\nHost: evil\r\n\r\n",
        )
        .await;
        assert_eq!(app.response(false).await.text(), "done");
        // In pieces: the rest streams after the head, each piece a chunk of its own.
        app.send("POST /b HTTP/1.1\r\nHost: echo\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel")
            .await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        app.send("lo\r\n6;x\r\n world\r\n").await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        app.send("0\r\n\r\n").await;
        assert_eq!(app.response(false).await.text(), "done");
        let seen = up.requests();
        assert_eq!(seen.len(), 2);
        for r in &seen {
            let head = r.head_text();
            assert_eq!(r.framing_error, None, "{head}");
            assert_eq!(r.all("transfer-encoding"), ["chunked"], "{head}");
            assert!(r.all("content-length").is_empty(), "{head}");
            assert_eq!(r.body, b"hello world");
            let raw = String::from_utf8_lossy(&r.raw_body);
            assert!(!raw.contains(';'), "an extension travelled: {raw:?}");
        }
        assert_eq!(
            String::from_utf8_lossy(&seen[0].raw_body),
            "5\r\nhello\r\n6\r\n world\r\n0\r\nx-sum: 42\r\n\r\n",
            "only the allowed trailer field follows the last chunk"
        );
        assert_eq!(seen[0].header("trailer"), Some("x-sum"), "Trailer is end to end");
    })
    .await;
}

#[tokio::test]
async fn a_bad_chunk_is_a_400_and_its_upstream_connection_is_dropped_not_blamed() {
    within(TEST_LIMIT, async {
        let up = RawUpstream::start(|_| Reply::whole(ok("done"))).await;
        let proxy = proxy_for(&up).await;
        // Found with the head: nothing goes upstream.
        let mut app = RawApp::connect(&proxy).await;
        app.send(
            "POST /a HTTP/1.1\r\nHost: echo\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloX\r\n",
        )
        .await;
        let resp = app.response(false).await;
        assert!(resp.line.starts_with("HTTP/1.1 400"), "{resp:?}");
        assert_eq!(resp.header("x-waypost-error"), Some("bad_request"));
        assert!(
            resp.text().contains("chunk data not followed by CRLF"),
            "{}",
            resp.text()
        );
        assert!(app.closed().await);
        assert_eq!(up.accepted(), 0);
        // Found while streaming, before any response byte: 400, and the upstream connection,
        // which got the head and a first chunk, is closed, not reused.
        let mut app = RawApp::connect(&proxy).await;
        app.send(
            "POST /b HTTP/1.1\r\nHost: echo\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
        )
        .await;
        eventually(SETTLE, || async { up.accepted() == 1 }).await;
        app.send("zz\r\n").await;
        let resp = app.response(false).await;
        assert!(resp.line.starts_with("HTTP/1.1 400"), "{resp:?}");
        assert!(resp.text().contains("bad chunk size"), "{}", resp.text());
        assert!(app.closed().await);
        eventually(SETTLE, || async { !up.requests().is_empty() }).await;
        assert_eq!(
            up.requests()[0].framing_error.as_deref(),
            Some("connection ended mid-body")
        );
        let mut next = RawApp::connect(&proxy).await;
        next.send("GET /c HTTP/1.1\r\nHost: echo\r\n\r\n").await;
        assert_eq!(next.response(false).await.text(), "done");
        assert_eq!(
            up.accepted(),
            2,
            "the broken body's upstream connection is not reused"
        );
        // Counted as the app's error, not the upstream's.
        let text = metrics(&proxy).await;
        let count = |kind| {
            metric(
                &text,
                "waypost_forward_errors_total",
                &[("service", "echo"), ("kind", kind)],
            )
        };
        assert_eq!(count("bad_request"), Some(2.0), "{text}");
        assert_eq!(count("upstream_error").unwrap_or(0.0), 0.0, "{text}");
    })
    .await;
}

/// An upstream that holds each request `ms` and records the most it held at once.
async fn concurrency_upstream(ms: u64) -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (now, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let seen = most.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let (now, most) = (now.clone(), most.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req| {
                    let (now, most) = (now.clone(), most.clone());
                    async move {
                        let n = now.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(n, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(ms)).await;
                        now.fetch_sub(1, Ordering::SeqCst);
                        Ok::<_, std::convert::Infallible>(http::Response::new(
                            http_body_util::Full::new(Bytes::from("ok")),
                        ))
                    }
                });
                let io = hyper_util::rt::TokioIo::new(s);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, svc)
                    .await;
            });
        }
    });
    (addr, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_inbound_limits_are_applied() {
    within(Duration::from_secs(20), async {
        let (addr, most) = concurrency_upstream(300).await;
        let limits = "client: {http2: {max_concurrent_streams: 2, max_header_list_size: 1KiB}}\n";
        let proxy = TestProxy::in_front_of_with(addr, limits).await;
        let tcp = tokio::net::TcpStream::connect(proxy.addrs.outbound)
            .await
            .unwrap();
        let (h2, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(tcp),
        )
        .await
        .unwrap();
        tokio::spawn(conn);
        let request = |extra: usize| {
            Request::get("http://echo/")
                .version(http::Version::HTTP_2)
                .header("x-pad", "a".repeat(extra))
                .body(empty())
                .unwrap()
        };
        // One first, so the client has the server's SETTINGS (a stream over the limit sent
        // before them is refused: REFUSED_STREAM).
        assert_eq!(
            h2.clone().send_request(request(1)).await.unwrap().status(),
            200
        );
        // Six at once over one connection: the server's two streams at a time reach the
        // upstream, the rest wait their turn.
        let calls: Vec<_> = (0..6)
            .map(|_| {
                let mut h2 = h2.clone();
                let req = request(1);
                tokio::spawn(async move { h2.send_request(req).await.map(|r| r.status().as_u16()) })
            })
            .collect();
        for call in calls {
            assert_eq!(call.await.unwrap().unwrap(), 200);
        }
        assert_eq!(most.load(Ordering::SeqCst), 2, "streams in flight at once");
        // A header list over the limit never reaches the upstream.
        let refused = h2.clone().send_request(request(2048)).await;
        assert!(
            refused.as_ref().map_or(true, |r| r.status() == 431),
            "{:?}",
            refused.map(|r| r.status())
        );
    })
    .await;
}
