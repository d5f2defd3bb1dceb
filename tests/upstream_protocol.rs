//! The upstream side of forwarding at the byte level: how waypost's HTTP/1.1 client frames
//! requests and parses responses from upstreams that split their writes, use every body
//! framing, send interim responses, misbehave or lie. Each upstream here is a scripted raw TCP
//! server ([`support::raw`]), so the tests pin the wire behaviour, whatever client sits behind it.

mod support;

use std::time::Duration;

use bytes::Bytes;
use support::raw::*;
use support::*;

#[tokio::test]
async fn chunked_response_with_extension_and_trailer_in_tiny_pieces_then_reuse() {
    within(TEST_LIMIT, async {
        let resp = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntrailer: x-sum\r\n\r\n\
            5;ext=1\r\nhello\r\n7\r\n, world\r\n10\r\n and a 16-chunk!\r\n0\r\nx-sum: 42\r\n\r\n";
        // Two-byte pieces split the size lines, the extension, the data and every CRLF.
        let up = RawUpstream::start(move |_| Reply::keep(pieces(resp, 2))).await;
        let proxy = proxy_for(&up).await;
        let client = client();
        let body = "hello, world and a 16-chunk!";
        // `Trailer` is end to end: the upstream's trailer reaches an HTTP/1.1 app that asks
        // for trailers (`TE: trailers`, which HTTP/1.1 servers wait for before sending any).
        let mut ask = req(&proxy, "GET", "/", empty());
        ask.headers_mut()
            .insert("te", http::HeaderValue::from_static("trailers"));
        let first = call(&client, ask, "first chunked response").await.unwrap();
        assert_eq!(first.text(), body, "{first:?}");
        let trailer = first.trailers.as_ref().and_then(|t| t.get("x-sum"));
        assert_eq!(trailer.map(|v| v.as_bytes()), Some(&b"42"[..]), "{first:?}");
        get_ok(&proxy, &client, body, "second chunked response").await;
        assert_eq!(
            up.accepted(),
            1,
            "a complete chunked response (with trailer) must leave the connection reusable"
        );
    })
    .await
}

#[tokio::test]
async fn content_length_response_in_split_writes_keeps_one_connection() {
    within(TEST_LIMIT, async {
        let up = RawUpstream::start(nth(|n| {
            let resp = ok(&format!(
                "response number {n}, some letters abcdefghijklmnopqrst"
            ));
            let head = resp.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
            // Inside the status line, inside the head's final CRLFCRLF, inside the body.
            Reply::keep(split_at(
                resp,
                &[4, 20, head + 1, head + 3, head + 9, head + 30],
            ))
        }))
        .await;
        let proxy = proxy_for(&up).await;
        let client = client();
        for n in 1..=5 {
            let body = format!("response number {n}, some letters abcdefghijklmnopqrst");
            get_ok(&proxy, &client, &body, &format!("request {n}")).await;
        }
        assert_eq!(
            up.accepted(),
            1,
            "5 sequential requests must share one upstream connection"
        );
    })
    .await
}

#[tokio::test]
async fn connection_close_response_is_not_reused() {
    within(TEST_LIMIT, async {
        let up = RawUpstream::start(nth(|n| {
            let body = format!("close {n}");
            let resp = format!(
                "HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
            // The FIN comes up to 2 s late (the linger ends as soon as the proxy closes its
            // side): only `Connection: close` tells the proxy not to reuse.
            Reply {
                linger: Duration::from_secs(2),
                ..Reply::close(pieces(resp, 16))
            }
        }))
        .await;
        let proxy = proxy_for(&up).await;
        let client = client();
        get_ok(&proxy, &client, "close 1", "first request").await;
        get_ok(&proxy, &client, "close 2", "after Connection: close").await;
        assert_eq!(
            up.late_bytes(),
            0,
            "the proxy sent bytes on a connection whose response said Connection: close"
        );
        assert_eq!(
            up.accepted(),
            2,
            "the second request needs a new connection"
        );
    })
    .await
}

#[tokio::test]
async fn http10_response_delimited_by_close() {
    within(TEST_LIMIT, async {
        // Larger than the 32 KiB read buffer, so it takes several reads.
        let body = letters(50_000);
        let resp = format!("HTTP/1.0 200 OK\r\ncontent-type: text/plain\r\n\r\n{body}");
        let up = RawUpstream::start(move |_| Reply::close(pieces(&resp, 7000))).await;
        let proxy = proxy_for(&up).await;
        get_ok(&proxy, &client(), &body, "HTTP/1.0 close-delimited").await;
    })
    .await
}

#[tokio::test]
async fn http11_close_delimited_response_then_new_connection() {
    within(TEST_LIMIT, async {
        let body = letters(40_000);
        let b = body.clone();
        let up = RawUpstream::start(nth(move |n| match n {
            1 => Reply::close(pieces(
                format!("HTTP/1.1 200 OK\r\nx-a: 1\r\n\r\n{b}"),
                9000,
            )),
            _ => Reply::whole(ok("after")),
        }))
        .await;
        let proxy = proxy_for(&up).await;
        let client = client();
        get_ok(&proxy, &client, &body, "close-delimited HTTP/1.1 response").await;
        get_ok(&proxy, &client, "after", "after the close-delimited one").await;
        assert_eq!(
            up.accepted(),
            2,
            "a close-delimited response ends its connection"
        );
    })
    .await
}

#[tokio::test]
async fn interim_100_continue_is_skipped() {
    within(TEST_LIMIT, async {
        let up = RawUpstream::start(|_| {
            Reply::keep(vec![
                b"HTTP/1.1 100 Continue\r\n\r\n".to_vec(),
                ok("final body"),
            ])
        })
        .await;
        let proxy = proxy_for(&up).await;
        get_ok(&proxy, &client(), "final body", "after 100 Continue").await;
    })
    .await
}

#[tokio::test]
async fn head_response_has_no_body_and_connection_is_reused() {
    within(TEST_LIMIT, async {
        let up = RawUpstream::start(|r| match r.method() {
            "HEAD" => Reply::whole("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n"),
            _ => Reply::whole(ok("hello")),
        })
        .await;
        let proxy = proxy_for(&up).await;
        let client = client();
        let got = call(&client, req(&proxy, "HEAD", "/", empty()), "HEAD")
            .await
            .expect("HEAD through the proxy failed");
        assert_eq!(got.status, 200, "HEAD: {:?}", got.header("x-waypost-error"));
        get_ok(&proxy, &client, "hello", "GET after HEAD").await;
        assert_eq!(
            up.accepted(),
            1,
            "after a HEAD answered with content-length and no body, the connection is reusable"
        );
    })
    .await
}

#[tokio::test]
async fn bodiless_204_and_304_keep_the_connection() {
    within(TEST_LIMIT, async {
        let up = RawUpstream::start(nth(|n| match n {
            1 => Reply::whole("HTTP/1.1 204 No Content\r\nx-n: 1\r\n\r\n"),
            // A 304 may announce the representation's length; it still has no body.
            2 => Reply::whole(
                "HTTP/1.1 304 Not Modified\r\netag: \"v1\"\r\ncontent-length: 10\r\n\r\n",
            ),
            _ => Reply::whole(ok("third")),
        }))
        .await;
        let proxy = proxy_for(&up).await;
        let client = client();
        for (status, what) in [(204, "204"), (304, "304 with content-length")] {
            let got = call(&client, req(&proxy, "GET", "/", empty()), what)
                .await
                .unwrap_or_else(|e| panic!("{what}: {e:#}"));
            assert_eq!(
                got.status,
                status,
                "{what}: {:?}",
                got.header("x-waypost-error")
            );
        }
        get_ok(&proxy, &client, "third", "request after 204 and 304").await;
        assert_eq!(
            up.accepted(),
            1,
            "204 and 304 responses leave the connection reusable"
        );
    })
    .await
}

#[tokio::test]
async fn garbage_status_line_is_502_upstream_error() {
    within(TEST_LIMIT, async {
        let up = RawUpstream::start(|_| {
            Reply::close(vec![b"SSH-2.0-OpenSSH_9.6 junk\r\n\r\n".to_vec()])
        })
        .await;
        let proxy = proxy_for(&up).await;
        expect_error(&proxy, "echo", 502, "upstream_error").await;
    })
    .await
}

#[tokio::test]
async fn conflicting_content_lengths_are_502_upstream_error() {
    within(TEST_LIMIT, async {
        let up = RawUpstream::start(|_| {
            Reply::close(vec![
                b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello!".to_vec(),
            ])
        })
        .await;
        let proxy = proxy_for(&up).await;
        expect_error(&proxy, "echo", 502, "upstream_error").await;
    })
    .await
}

#[tokio::test]
async fn truncated_content_length_body_is_an_error_for_the_app() {
    within(TEST_LIMIT, async {
        let up = RawUpstream::start(|_| {
            Reply::close(vec![
                b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n".to_vec(),
                b"0123456789".to_vec(),
            ])
        })
        .await;
        let proxy = proxy_for(&up).await;
        let got = call(&client(), req(&proxy, "GET", "/", empty()), "truncated").await;
        match got {
            Err(_) => {} // The body broke off: the app knows the response is incomplete.
            Ok(got) if got.status == 502 && got.header("x-waypost-error") == "upstream_error" => {}
            Ok(got) => panic!(
                "the app got a complete-looking {} with {} body bytes ({:?}) from an upstream \
                 that sent 10 of 100",
                got.status,
                got.body.len(),
                got.text()
            ),
        }
    })
    .await
}

/// Sends a POST with `body` through a proxy in front of a recording upstream; returns what the
/// upstream read.
async fn post_and_record(body: TestBody) -> RawRequest {
    let up = RawUpstream::start(|_| Reply::whole(ok("ok"))).await;
    let proxy = proxy_for(&up).await;
    let got = call(&client(), req(&proxy, "POST", "/p", body), "POST")
        .await
        .expect("POST through the proxy failed");
    let reqs = up.requests();
    assert_eq!(reqs.len(), 1, "the upstream read {} requests", reqs.len());
    let r = reqs.into_iter().next().unwrap();
    let head = r.head_text();
    // Checked before the status: on bad framing the upstream hangs up without answering.
    assert_eq!(r.framing_error, None, "bad framing; head:\n{head}");
    assert_eq!((got.status, got.text().as_str()), (200, "ok"), "POST");
    r
}

#[tokio::test]
async fn request_body_with_known_length_is_sent_with_content_length() {
    within(TEST_LIMIT, async {
        let r = post_and_record(full("hello upstream")).await;
        let head = r.head_text();
        assert_eq!(r.all("content-length"), ["14"], "head:\n{head}");
        assert!(r.all("transfer-encoding").is_empty(), "head:\n{head}");
        assert_eq!(r.raw_body, b"hello upstream", "bytes after the head");
    })
    .await
}

#[tokio::test]
async fn streamed_request_body_is_sent_chunked() {
    within(TEST_LIMIT, async {
        let r = post_and_record(streamed_body(150_000)).await;
        let head = r.head_text();
        assert_eq!(r.all("transfer-encoding"), ["chunked"], "head:\n{head}");
        assert!(r.all("content-length").is_empty(), "head:\n{head}");
        assert!(
            r.raw_body.ends_with(b"\r\n0\r\n\r\n"),
            "no last-chunk/empty trailer at the end"
        );
        assert_eq!(r.body.len(), 150_000, "decoded body length");
        assert!(r.body.iter().all(|&b| b == b'z'), "decoded body content");
    })
    .await
}

#[tokio::test]
async fn empty_post_body_is_sent_with_content_length_zero() {
    within(TEST_LIMIT, async {
        // The app's client sends this POST with no framing header at all (a zero-length body
        // in HTTP/1.1); the upstream must still be told the length.
        let r = post_and_record(full(Bytes::new())).await;
        let head = r.head_text();
        assert_eq!(r.all("content-length"), ["0"], "empty POST; head:\n{head}");
        assert!(r.all("transfer-encoding").is_empty(), "head:\n{head}");
    })
    .await
}

#[tokio::test]
async fn oversized_response_head_is_502_and_proxy_keeps_working() {
    within(TEST_LIMIT, async {
        let mut head = String::from("HTTP/1.1 200 OK\r\n");
        for i in 0..200 {
            head.push_str(&format!("x-big-{i}: {}\r\n", "a".repeat(1024)));
        }
        head.push_str("content-length: 2\r\n\r\nok");
        let big = RawUpstream::start(move |_| Reply::close(pieces(&head, 16 * 1024))).await;
        let normal = Upstream::start("normal").await;
        let proxy = TestProxy::start(&format!(
            "upstream: {{timeout: 3s}}\nservices:\n{}{}",
            static_service("big", &[(big.addr, 1)]),
            static_service("echo", &[(normal.addr, 1)])
        ))
        .await;
        expect_error(&proxy, "big", 502, "upstream_error").await;
        let got = get(&format!("{}/", proxy.url()), &[("host", "echo")])
            .await
            .expect("request to a normal upstream after the oversized head failed");
        assert_eq!(
            (got.status, got.header("x-instance")),
            (200, "normal"),
            "after the oversized head"
        );
    })
    .await
}

/// POSTs 1 MiB to an upstream that answers 413 right after the head, without reading the
/// body, then closes — gracefully (`drain`) or abruptly; returns what the app got.
async fn post_to_early_413(drain: bool) -> anyhow::Result<Got> {
    let up = RawUpstream::start(move |_| Reply {
        read_body: false,
        drain,
        ..Reply::close(vec![
            b"HTTP/1.1 413 Content Too Large\r\nconnection: close\r\n\
            content-length: 8\r\n\r\ntoo big\n"
                .to_vec(),
        ])
    })
    .await;
    let proxy = proxy_for(&up).await;
    let body = full(vec![b'x'; 1 << 20]);
    call(&client(), req(&proxy, "POST", "/up", body), "1 MiB POST").await
}

#[tokio::test]
async fn early_413_then_graceful_close_reaches_the_app() {
    within(TEST_LIMIT, async {
        // The upstream FINs and discards the unread body: nothing stops the 413 from arriving.
        let got = post_to_early_413(true)
            .await
            .expect("the app got no response at all to its 1 MiB POST");
        assert_eq!(
            (got.status, got.text().as_str()),
            (413, "too big\n"),
            "the upstream's early 413 (x-waypost-error: {:?})",
            got.header("x-waypost-error")
        );
    })
    .await
}

#[tokio::test]
async fn early_413_then_abrupt_close_is_the_413_or_a_502() {
    within(TEST_LIMIT, async {
        // Dropping the socket with the body unread makes the upstream's kernel send RST, which
        // may destroy the 413 in the proxy's receive buffer (RFC 9112 §9.6): a 502 is then
        // all the proxy can say. Anything else (another status, no answer) is wrong.
        let got = post_to_early_413(false)
            .await
            .expect("the app got no response at all to its 1 MiB POST");
        let kind = got.header("x-waypost-error");
        assert!(
            (got.status, kind) == (413, "") || (got.status, kind) == (502, "upstream_error"),
            "expected the 413 or a 502 upstream_error, got {} {kind:?}: {}",
            got.status,
            got.text()
        );
    })
    .await
}

#[tokio::test]
async fn chunked_with_content_length_decodes_chunked_and_is_not_reused() {
    within(TEST_LIMIT, async {
        let up = RawUpstream::start(nth(|n| match n {
            1 => Reply::keep(pieces(
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n\
                 5\r\nhello\r\n0\r\n\r\n",
                11,
            )),
            _ => Reply::whole(ok("next")),
        }))
        .await;
        let proxy = proxy_for(&up).await;
        let client = client();
        get_ok(&proxy, &client, "hello", "TE + CL response (chunked wins)").await;
        get_ok(&proxy, &client, "next", "request after TE + CL").await;
        assert_eq!(
            up.accepted(),
            2,
            "a connection that carried a TE + CL response (a smuggling shape) must not be reused"
        );
    })
    .await
}

#[tokio::test]
async fn hop_by_hop_response_headers_do_not_reach_the_app() {
    within(TEST_LIMIT, async {
        let up = RawUpstream::start(|_| {
            Reply::whole(
                "HTTP/1.1 200 OK\r\nconnection: x-foo\r\nx-foo: 1\r\nkeep-alive: timeout=5\r\n\
                 x-bar: 2\r\ncontent-length: 2\r\n\r\nok",
            )
        })
        .await;
        let proxy = proxy_for(&up).await;
        let got = get_ok(&proxy, &client(), "ok", "response with hop-by-hop headers").await;
        assert_eq!(got.header("x-bar"), "2", "an end-to-end header was lost");
        assert!(
            !got.headers.contains_key("x-foo"),
            "x-foo (named by Connection) leaked"
        );
        assert!(!got.headers.contains_key("keep-alive"), "keep-alive leaked");
        assert!(
            !got.header("connection").contains("x-foo"),
            "the upstream's Connection header leaked: {:?}",
            got.header("connection")
        );
    })
    .await
}

#[tokio::test]
async fn an_upstreams_x_waypost_error_header_never_reaches_the_app() {
    within(TEST_LIMIT, async {
        // The marker says "waypost generated this response": an upstream's answer must not
        // carry it, whether it is a success or an error of the upstream's own.
        let up = RawUpstream::start(nth(|n| match n {
            1 => Reply::whole(
                "HTTP/1.1 200 OK\r\nx-waypost-error: spoof\r\nx-other: kept\r\n\
                 content-length: 2\r\n\r\nok",
            ),
            _ => Reply::whole(
                "HTTP/1.1 503 Service Unavailable\r\nX-Waypost-Error: no_instances\r\n\
                 x-waypost-error: spoof\r\ncontent-length: 5\r\n\r\nbusy\n",
            ),
        }))
        .await;
        let proxy = proxy_for(&up).await;
        let client = client();
        let got = get_ok(&proxy, &client, "ok", "200 carrying the marker").await;
        assert!(
            !got.headers.contains_key("x-waypost-error"),
            "the upstream's x-waypost-error reached the app: {:?}",
            got.headers
        );
        assert_eq!(got.header("x-other"), "kept", "other headers pass");

        let got = call(
            &client,
            req(&proxy, "GET", "/", empty()),
            "503 with the marker",
        )
        .await
        .expect("503 from the upstream did not reach the app");
        assert_eq!(
            (got.status, got.text().as_str()),
            (503, "busy\n"),
            "the upstream's own 503 passes through"
        );
        assert!(
            !got.headers.contains_key("x-waypost-error"),
            "the upstream's x-waypost-error values reached the app: {:?}",
            got.headers
        );
        assert_eq!(up.requests().len(), 2, "both requests reached the upstream");
    })
    .await
}

#[tokio::test]
async fn only_bodiless_idempotent_requests_are_replayed_after_a_silent_close() {
    within(TEST_LIMIT, async {
        // Each connection answers its first request, then closes on the second without a byte:
        // that request went out, and no answer came.
        let seen = std::sync::Mutex::new(std::collections::HashMap::<usize, usize>::new());
        let up = RawUpstream::start(move |r: &RawRequest| {
            let mut seen = seen.lock().unwrap();
            let n = seen.entry(r.conn).or_insert(0);
            *n += 1;
            if *n == 1 {
                Reply::whole(ok("first"))
            } else {
                Reply::close(Vec::new())
            }
        })
        .await;
        let proxy = proxy_for(&up).await;
        let client = client();
        get_ok(&proxy, &client, "first", "warm-up").await;
        // A GET on the pooled connection meets the silent close and is sent again, once.
        get_ok(
            &proxy,
            &client,
            "first",
            "GET replayed on a fresh connection",
        )
        .await;
        assert_eq!((up.requests().len(), up.accepted()), (3, 2));
        // A POST with a body on the next pooled connection is not: waypost's 502.
        let got = call(&client, req(&proxy, "POST", "/", full("data")), "POST")
            .await
            .unwrap();
        assert_eq!(got.status, 502, "{}", got.text());
        assert_eq!(got.header("x-waypost-error"), "upstream_error");
        assert_eq!(up.requests().len(), 4, "the POST was sent once");
    })
    .await;
}
