//! The HTTP/1 policy's connection rules through the running proxy: the connection timeouts
//! (on a paused clock: virtual seconds pass in an instant), the head limits, the smuggling
//! requests of issue 15, and which answers close a connection. Apps are raw TCP clients; the
//! upstream is a scripted raw server that records every byte it gets.

mod support;

use std::time::Duration;

use support::raw::*;
use support::*;
use tokio::io::AsyncWriteExt;

/// Timeouts short in virtual time, and shorter than the raw app's 5 s read deadline.
const TIMEOUTS: &str =
    "client: {header_timeout: 2s, idle_timeout: 3s, body_timeout: 2s}\nupstream: {timeout: 4s}\n";

async fn echo_line() -> RawUpstream {
    RawUpstream::start(|r: &RawRequest| Reply::whole(ok(&r.line))).await
}

#[tokio::test(start_paused = true)]
async fn silent_connections_close_quietly_and_partial_heads_get_408() {
    let up = echo_line().await;
    let proxy = TestProxy::in_front_of_with(up.addr, TIMEOUTS).await;
    // Nothing sent: after client.header_timeout the connection closes without a word.
    let mut silent = RawApp::connect(&proxy).await;
    assert!(silent.closed().await, "a silent connection must be closed");
    // Part of a head: 408, then close.
    let mut slow = RawApp::connect(&proxy).await;
    slow.send("GET / HTTP/1.1\r\nHo").await;
    let resp = slow.response(false).await;
    assert!(resp.line.starts_with("HTTP/1.1 408"), "{resp:?}");
    assert_eq!(resp.header("x-waypost-error"), Some("request_timeout"));
    assert_eq!(resp.header("connection"), Some("close"));
    assert!(slow.closed().await);
    // A head sent a byte at a time, slower than the timeout allows in total, is cut off too.
    let mut trickle = RawApp::connect(&proxy).await;
    for b in "GET / HTTP/1.1\r\nHost: echo\r\n".bytes() {
        trickle.s.write_u8(b).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let resp = trickle.response(false).await;
    assert!(resp.line.starts_with("HTTP/1.1 408"), "{resp:?}");
    assert!(up.requests().is_empty(), "nothing went upstream");
}

#[tokio::test(start_paused = true)]
async fn kept_alive_connections_close_quietly_after_the_idle_timeout() {
    let up = echo_line().await;
    let proxy = TestProxy::in_front_of_with(up.addr, TIMEOUTS).await;
    let mut app = RawApp::connect(&proxy).await;
    for (i, path) in ["/a", "/b", "/c"].iter().enumerate() {
        // The first request is due within client.header_timeout (2 s) of the accept; after a
        // response, the idle clock (3 s) starts again: 2.5 s between requests is within it.
        if i > 0 {
            tokio::time::sleep(Duration::from_millis(2500)).await;
        }
        app.send(&format!("GET {path} HTTP/1.1\r\nHost: echo\r\n\r\n"))
            .await;
        assert_eq!(
            app.response(false).await.text(),
            format!("GET {path} HTTP/1.1")
        );
    }
    // Then nothing: the connection closes silently (no 408 for a connection between requests).
    assert!(
        app.closed().await,
        "an idle kept-alive connection must be closed"
    );
}

#[tokio::test(start_paused = true)]
async fn a_body_that_stops_coming_gets_408_and_the_upstream_connection_is_dropped() {
    let up = echo_line().await;
    let proxy = TestProxy::in_front_of_with(up.addr, TIMEOUTS).await;
    let mut app = RawApp::connect(&proxy).await;
    app.send("POST /p HTTP/1.1\r\nHost: echo\r\nContent-Length: 10\r\n\r\nabc")
        .await;
    let resp = app.response(false).await;
    assert!(resp.line.starts_with("HTTP/1.1 408"), "{resp:?}");
    assert_eq!(resp.header("x-waypost-error"), Some("request_timeout"));
    assert!(app.closed().await);
    // The upstream saw the head and 3 bytes, then its connection ended: never a request of its
    // own framing, never reused.
    eventually(SETTLE, || async { !up.requests().is_empty() }).await;
    let seen = &up.requests()[0];
    assert_eq!(
        seen.framing_error.as_deref(),
        Some("connection ended mid-body"),
        "{}",
        seen.head_text()
    );
    let mut next = RawApp::connect(&proxy).await;
    next.send("GET /next HTTP/1.1\r\nHost: echo\r\n\r\n").await;
    assert_eq!(next.response(false).await.text(), "GET /next HTTP/1.1");
    assert_eq!(
        up.accepted(),
        2,
        "the upstream connection of the broken body is not reused"
    );
}

#[tokio::test]
async fn heads_over_the_limits_get_431() {
    within(TEST_LIMIT, async {
        let up = echo_line().await;
        let limits = "client: {max_head_size: 2KiB, max_headers: 10}\n";
        let proxy = TestProxy::in_front_of_with(up.addr, limits).await;
        let long = format!(
            "GET / HTTP/1.1\r\nHost: echo\r\nX-Big: {}\r\n\r\n",
            "a".repeat(2100)
        );
        let many: String = (0..11).map(|i| format!("X-{i}: {i}\r\n")).collect();
        let many = format!("GET / HTTP/1.1\r\nHost: echo\r\n{many}\r\n");
        // Exactly at the field limit is fine.
        let ten: String = (0..9).map(|i| format!("X-{i}: {i}\r\n")).collect();
        let ten = format!("GET /ten HTTP/1.1\r\nHost: echo\r\n{ten}\r\n");
        for (request, status) in [
            (long.as_str(), "431"),
            (many.as_str(), "431"),
            (ten.as_str(), "200"),
        ] {
            let mut app = RawApp::connect(&proxy).await;
            app.send(request).await;
            let resp = app.response(false).await;
            assert!(
                resp.line.starts_with(&format!("HTTP/1.1 {status}")),
                "{resp:?}"
            );
            if status == "431" {
                assert_eq!(resp.header("x-waypost-error"), Some("header_too_large"));
                assert!(app.closed().await);
            }
        }
        assert_eq!(
            up.requests().len(),
            1,
            "only the head within the limits went upstream"
        );
    })
    .await;
}

#[tokio::test]
async fn the_smuggling_requests_of_issue_15_never_reach_the_upstream() {
    within(TEST_LIMIT, async {
        let up = echo_line().await;
        let proxy = proxy_for(&up).await;
        let smuggled = "GET /SMUGGLED HTTP/1.1\r\nHost: echo\r\n\r\n";
        let cases = [
            format!(
                "POST /p HTTP/1.1\r\nHost: echo\r\nConnection: content-length\r\nContent-Length: {}\r\n\r\n{smuggled}",
                smuggled.len()
            ),
            format!(
                "POST /p HTTP/1.1\r\nHost: echo\r\nConnection: transfer-encoding\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}"
            ),
            format!("POST /p HTTP/1.1\r\nHost: echo\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n{smuggled}"),
            format!(
                "POST /p HTTP/1.1\r\nHost: echo\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}"
            ),
            format!("GET /p HTTP/1.1\r\nHost: echo\r\nConnection: host\r\n\r\n{smuggled}"),
            format!(
                "POST /p HTTP/1.1\r\nHost: echo\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}"
            ),
        ];
        for request in &cases {
            let mut app = RawApp::connect(&proxy).await;
            app.send(request).await;
            let resp = app.response(false).await;
            assert!(resp.line.starts_with("HTTP/1.1 400"), "{request:?} → {resp:?}");
            assert_eq!(resp.header("x-waypost-error"), Some("bad_request"));
            // The bytes after a refused head are never read as a request.
            assert!(app.closed().await, "{request:?}: the connection must close");
        }
        assert!(up.requests().is_empty(), "{:?}", up.requests());
        assert_eq!(up.accepted(), 0);
    })
    .await;
}

#[tokio::test]
async fn refusals_close_the_connection_and_routing_errors_keep_it() {
    within(TEST_LIMIT, async {
        let up = echo_line().await;
        let proxy = proxy_for(&up).await;
        // A 404 for a request whose body arrived whole: the body is skipped, the connection
        // serves the next request.
        let mut app = RawApp::connect(&proxy).await;
        app.send("POST /x HTTP/1.1\r\nHost: nope\r\nContent-Length: 5\r\n\r\nhelloGET /after HTTP/1.1\r\nHost: echo\r\n\r\n")
            .await;
        let resp = app.response(false).await;
        assert!(resp.line.starts_with("HTTP/1.1 404"), "{resp:?}");
        assert_eq!(resp.header("connection"), None, "{resp:?}");
        assert_eq!(app.response(false).await.text(), "GET /after HTTP/1.1");
        // A 404 whose body is still to come: the connection closes (its bytes could not be
        // told from a request).
        app.send("POST /x HTTP/1.1\r\nHost: nope\r\nContent-Length: 50\r\n\r\nhe").await;
        let resp = app.response(false).await;
        assert!(resp.line.starts_with("HTTP/1.1 404"), "{resp:?}");
        assert_eq!(resp.header("connection"), Some("close"), "{resp:?}");
        // Each refusal of syntax or framing closes, whatever was pipelined behind it.
        for (request, status, kind) in [
            ("GET / HTTP/1.1\r\nHost: echo\r\nExpect: nothing\r\n\r\n", "417", "expectation_failed"),
            ("GET / HTTP/1.2\r\nHost: echo\r\n\r\n", "505", "version_not_supported"),
            ("POST / HTTP/1.1\r\nHost: echo\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", "501", "not_implemented"),
            ("CONNECT echo:80 HTTP/1.1\r\nHost: echo:80\r\n\r\n", "405", "method_not_allowed"),
            ("GET /a#b HTTP/1.1\r\nHost: echo\r\n\r\n", "400", "bad_request"),
        ] {
            let mut app = RawApp::connect(&proxy).await;
            app.send(&format!("{request}GET /pipelined HTTP/1.1\r\nHost: echo\r\n\r\n")).await;
            let resp = app.response(false).await;
            assert!(resp.line.starts_with(&format!("HTTP/1.1 {status}")), "{request:?} → {resp:?}");
            assert_eq!(resp.header("x-waypost-error"), Some(kind), "{request:?}");
            assert!(app.closed().await, "{request:?}: the connection must close");
        }
        let paths: Vec<String> = up.requests().iter().map(|r| r.line.clone()).collect();
        assert_eq!(paths, ["GET /after HTTP/1.1"], "nothing refused went upstream");
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn the_admin_listener_cuts_off_slow_heads_too() {
    let up = echo_line().await;
    let proxy = TestProxy::in_front_of_with(up.addr, TIMEOUTS).await;
    // The admin port is reachable from the cluster in a pod: a head that never completes is
    // cut off after client.header_timeout, as on the forwarding listeners.
    let mut slow = RawApp::to(proxy.addrs.admin).await;
    slow.send("GET /live HTTP/1.1\r\nHo").await;
    while slow.fill().await {}
    let mut silent = RawApp::to(proxy.addrs.admin).await;
    assert!(
        silent.closed().await,
        "a silent admin connection must be closed"
    );
}
