//! The app side of forwarding at the byte level: waypost's one HTTP/1 loop, which serves every
//! HTTP/1.x request on a connection, bodies included. Apps here are raw TCP clients writing
//! exact bytes (pipelined, HTTP/1.0, absolute-form, no `Host`); upstreams are scripted raw
//! servers ([`support::raw`]) that record what reached them. The HTTP/1 policy's own cases
//! (smuggling shapes, timeouts, limits, bodies) are in `tests/http1.rs`.

mod support;

use std::time::Duration;

use support::raw::*;
use support::*;

/// An upstream whose body names the request it answers (`GET /a HTTP/1.1`).
async fn echo_line() -> RawUpstream {
    RawUpstream::start(|r: &RawRequest| Reply::whole(ok(&r.line))).await
}

#[tokio::test]
async fn pipelined_requests_with_and_without_bodies_and_hop_by_hop_fields() {
    within(TEST_LIMIT, async {
        let up = echo_line().await;
        let proxy = proxy_for(&up).await;
        let mut app = RawApp::connect(&proxy).await;
        // Two requests in one write: answered in order on the same connection.
        app.send(
            "GET /a HTTP/1.1\r\nHost: echo\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\n\
             TE: trailers\r\nX-Custom: 1\r\n\r\nGET /b?q=1 HTTP/1.1\r\nhost: ECHO:80\r\n\r\n",
        )
        .await;
        assert_eq!(app.response(false).await.text(), "GET /a HTTP/1.1");
        assert_eq!(app.response(false).await.text(), "GET /b?q=1 HTTP/1.1");
        // A request with a body, and the next one, on the same loop and connection.
        app.send("POST /c HTTP/1.1\r\nHost: echo\r\nContent-Length: 5\r\n\r\nhello")
            .await;
        assert_eq!(app.response(false).await.text(), "POST /c HTTP/1.1");
        app.send("GET /d HTTP/1.1\r\nHost: echo\r\n\r\n").await;
        assert_eq!(app.response(false).await.text(), "GET /d HTTP/1.1");
        let seen = up.requests();
        assert_eq!(seen.len(), 4);
        let first = &seen[0];
        assert_eq!(first.header("x-custom"), Some("1"));
        assert_eq!(first.header("host"), Some("echo"));
        for hop in ["connection", "keep-alive", "te"] {
            assert_eq!(
                first.header(hop),
                None,
                "{hop} crossed: {}",
                first.head_text()
            );
        }
        assert_eq!(
            seen[1].header("host"),
            Some("ECHO:80"),
            "the app's Host passes"
        );
        assert_eq!(seen[2].body, b"hello");
        // One app connection, one upstream connection for all four.
        assert_eq!(up.accepted(), 1);
    })
    .await;
}

#[tokio::test]
async fn http_1_0_apps_keep_the_connection_only_when_they_ask() {
    within(TEST_LIMIT, async {
        let up = echo_line().await;
        let proxy = proxy_for(&up).await;
        let mut app = RawApp::connect(&proxy).await;
        for path in ["/x", "/y"] {
            app.send(&format!(
                "GET {path} HTTP/1.0\r\nHost: echo\r\nConnection: keep-alive\r\n\r\n"
            ))
            .await;
            let resp = app.response(false).await;
            assert!(resp.line.starts_with("HTTP/1.0 200"), "{resp:?}");
            assert_eq!(resp.header("connection"), Some("keep-alive"), "{resp:?}");
            // Upstream requests are HTTP/1.1 whatever the app spoke.
            assert_eq!(resp.text(), format!("GET {path} HTTP/1.1"));
        }
        app.send("GET /z HTTP/1.0\r\nHost: echo\r\n\r\n").await;
        let resp = app.response(false).await;
        assert_eq!(resp.header("connection"), Some("close"), "{resp:?}");
        assert!(app.closed().await, "HTTP/1.0 without keep-alive must close");
    })
    .await;
}

#[tokio::test]
async fn chunked_bodies_are_chunked_again_or_close_delimited_for_http_1_0() {
    within(TEST_LIMIT, async {
        let chunked = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntrailer: x-sum\r\n\r\n\
            5\r\nhello\r\n6\r\n world\r\n0\r\nx-sum: 42\r\n\r\n";
        let up = RawUpstream::start(move |_| Reply::keep(pieces(chunked, 7))).await;
        let proxy = proxy_for(&up).await;
        let mut app = RawApp::connect(&proxy).await;
        // Trailers reach apps that accept them (`TE: trailers`), as hyper's server does it.
        app.send("GET / HTTP/1.1\r\nHost: echo\r\nTE: trailers\r\n\r\n")
            .await;
        let resp = app.response(false).await;
        assert_eq!(resp.header("transfer-encoding"), Some("chunked"));
        assert_eq!(resp.text(), "hello world");
        assert_eq!(resp.trailers, [("x-sum".to_string(), "42".to_string())]);
        app.send("GET / HTTP/1.1\r\nHost: echo\r\n\r\n").await;
        let resp = app.response(false).await;
        assert_eq!(resp.text(), "hello world");
        assert!(resp.trailers.is_empty(), "{resp:?}");
        // HTTP/1.0 cannot take chunks: the decoded body, ended by closing.
        app.send("GET / HTTP/1.0\r\nHost: echo\r\nConnection: keep-alive\r\n\r\n")
            .await;
        let resp = app.response(false).await;
        assert_eq!(resp.header("transfer-encoding"), None, "{resp:?}");
        assert_eq!(resp.header("connection"), Some("close"), "{resp:?}");
        assert_eq!(resp.text(), "hello world");
        assert!(app.closed().await);
    })
    .await;
}

#[tokio::test]
async fn close_delimited_bodies_close_the_app_connection_too() {
    within(TEST_LIMIT, async {
        let up = RawUpstream::start(|_| {
            Reply::close(vec![
                b"HTTP/1.1 200 OK\r\n\r\nuntil".to_vec(),
                b" close".to_vec(),
            ])
        })
        .await;
        let proxy = proxy_for(&up).await;
        let mut app = RawApp::connect(&proxy).await;
        app.send("GET / HTTP/1.1\r\nHost: echo\r\n\r\n").await;
        let resp = app.response(false).await;
        assert_eq!(resp.header("connection"), Some("close"), "{resp:?}");
        assert_eq!(resp.text(), "until close");
        assert!(
            app.closed().await,
            "a close-delimited upstream body must close the app connection"
        );
    })
    .await;
}

#[tokio::test]
async fn bodiless_204_and_304_send_no_body_bytes_to_the_app() {
    within(TEST_LIMIT, async {
        let up = RawUpstream::start(|r: &RawRequest| match r.line.split(' ').nth(1) {
            Some("/204") => Reply::whole("HTTP/1.1 204 No Content\r\nx-n: 204\r\n\r\n"),
            // A 304 may announce the representation's length; it still has no body.
            Some("/304") => Reply::whole(
                "HTTP/1.1 304 Not Modified\r\netag: \"v1\"\r\ncontent-length: 10\r\n\r\n",
            ),
            _ => Reply::whole(ok(&r.line)),
        })
        .await;
        let proxy = proxy_for(&up).await;
        let mut app = RawApp::connect(&proxy).await;
        // On a fresh connection, then after a request with a body on the same connection.
        for phase in ["first", "after a body"] {
            if phase == "after a body" {
                app.send("POST /in HTTP/1.1\r\nHost: echo\r\nContent-Length: 2\r\n\r\nhi")
                    .await;
                assert_eq!(app.response(false).await.text(), "POST /in HTTP/1.1");
            }
            for (path, status) in [("/304", "304"), ("/204", "204")] {
                app.send(&format!("GET {path} HTTP/1.1\r\nHost: echo\r\n\r\n"))
                    .await;
                // Only the head: any body byte waypost wrote after it (a chunked terminator, a
                // body for the 304's content-length) would be read as the next response.
                let resp = app.response(true).await;
                assert!(
                    resp.line.starts_with(&format!("HTTP/1.1 {status} ")),
                    "{phase}: {resp:?}"
                );
                let next = format!("GET /after-{status} HTTP/1.1");
                app.send(&format!("{next}\r\nHost: echo\r\n\r\n")).await;
                let resp = app.response(false).await;
                let what = format!("{phase}: the response after the {status} (stray body bytes?)");
                assert!(resp.line.starts_with("HTTP/1.1 200 "), "{what}: {resp:?}");
                assert_eq!(resp.text(), next, "{what}");
            }
        }
        assert_eq!(up.accepted(), 1, "{:?}", up.requests());
    })
    .await;
}

#[tokio::test]
async fn absolute_form_head_requests_and_errors_keep_the_connection() {
    within(TEST_LIMIT, async {
        let up = RawUpstream::start(|r: &RawRequest| {
            if r.method() == "HEAD" {
                Reply::whole("HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n")
            } else {
                Reply::whole(ok(&r.line))
            }
        })
        .await;
        let proxy = proxy_for(&up).await;
        let mut app = RawApp::connect(&proxy).await;
        // Absolute form: origin form upstream, Host replaced by the authority.
        app.send("GET http://echo:8080/p?q=1 HTTP/1.1\r\nHost: other\r\n\r\n")
            .await;
        assert_eq!(app.response(false).await.text(), "GET /p?q=1 HTTP/1.1");
        // HEAD: the length is the upstream's, and no body follows.
        app.send("HEAD / HTTP/1.1\r\nHost: echo\r\n\r\n").await;
        let resp = app.response(true).await;
        assert_eq!(resp.header("content-length"), Some("10"), "{resp:?}");
        // An unknown service is waypost's own 404, on the same connection.
        app.send("GET / HTTP/1.1\r\nHost: nope\r\n\r\n").await;
        let resp = app.response(false).await;
        assert!(resp.line.starts_with("HTTP/1.1 404"), "{resp:?}");
        assert_eq!(resp.header("x-waypost-error"), Some("unknown_service"));
        // And the connection still serves.
        app.send("GET /after HTTP/1.1\r\nHost: echo\r\n\r\n").await;
        assert_eq!(app.response(false).await.text(), "GET /after HTTP/1.1");
        let seen = up.requests();
        assert_eq!(seen[0].header("host"), Some("echo:8080"));
        assert_eq!(seen.len(), 3, "the 404 never reached the upstream");
        // Absolute form without Host in HTTP/1.1 breaks RFC 9112 §3.2: 400, and the
        // connection closes.
        app.send("GET http://echo/ HTTP/1.1\r\n\r\n").await;
        let resp = app.response(false).await;
        assert!(resp.line.starts_with("HTTP/1.1 400"), "{resp:?}");
        assert_eq!(resp.header("x-waypost-error"), Some("bad_request"));
        assert!(app.closed().await, "a 400 closes the connection");
        assert_eq!(up.requests().len(), 3, "nothing of the 400 went upstream");
    })
    .await;
}

#[tokio::test]
async fn heads_split_across_reads_and_heads_with_many_fields() {
    within(TEST_LIMIT, async {
        let up = echo_line().await;
        let proxy = proxy_for(&up).await;
        let mut app = RawApp::connect(&proxy).await;
        // A head that arrives in pieces is waited for.
        app.send("GET /split HTTP/1.1\r\nHo").await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        app.send("st: echo\r\n\r\n").await;
        assert_eq!(app.response(false).await.text(), "GET /split HTTP/1.1");
        // Many fields (up to client.max_headers, 100 by default).
        let many: String = (0..80).map(|i| format!("x-f{i}: {i}\r\n")).collect();
        app.send(&format!("GET /many HTTP/1.1\r\nHost: echo\r\n{many}\r\n"))
            .await;
        assert_eq!(app.response(false).await.text(), "GET /many HTTP/1.1");
        assert_eq!(up.requests()[1].header("x-f79"), Some("79"));
    })
    .await;
}

#[tokio::test]
async fn idle_connections_close_when_waypost_drains() {
    within(TEST_LIMIT, async {
        let up = echo_line().await;
        let proxy = proxy_for(&up).await;
        let mut app = RawApp::connect(&proxy).await;
        app.send("GET / HTTP/1.1\r\nHost: echo\r\n\r\n").await;
        assert_eq!(app.response(false).await.text(), "GET / HTTP/1.1");
        // Idle on the own loop: the drain closes it, and waypost stops without waiting for it.
        let stopping = tokio::spawn(proxy.stop());
        assert!(app.closed().await, "an idle connection must close on drain");
        stopping.await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn expect_upgrade_and_malformed_heads_are_the_one_loops_too() {
    within(TEST_LIMIT, async {
        let up = echo_line().await;
        let proxy = proxy_for(&up).await;
        // Field names travel as the app wrote them: the loop never rebuilds a head from a map.
        let cases = [
            "GET /expect HTTP/1.1\r\nHost: echo\r\nExpect: 100-continue\r\nX-Case: 1\r\n\r\n",
            "GET /upgrade HTTP/1.1\r\nHost: echo\r\nConnection: upgrade\r\nUpgrade: websocket\r\nX-Case: 1\r\n\r\n",
        ];
        for (i, request) in cases.iter().enumerate() {
            let mut app = RawApp::connect(&proxy).await;
            app.send(request).await;
            let resp = app.response(false).await;
            let path = request.split(' ').nth(1).unwrap();
            assert_eq!(resp.text(), format!("GET {path} HTTP/1.1"), "{request:?}");
            let raw = String::from_utf8_lossy(&up.requests()[i].raw).into_owned();
            assert!(raw.contains("X-Case: 1"), "{raw}");
            // An upgrade goes up with its Upgrade and waypost's own `connection: upgrade`; a
            // non-101 answer is an ordinary response.
            let seen = &up.requests()[i];
            let want = match i {
                0 => (None, None),
                _ => (Some("websocket"), Some("upgrade")),
            };
            assert_eq!((seen.header("upgrade"), seen.header("connection")), want, "{raw}");
        }
        // A head httparse rejects (a field line without a colon): waypost's own 400.
        let mut app = RawApp::connect(&proxy).await;
        app.send("GET / HTTP/1.1\r\nHost echo\r\n\r\n").await;
        let resp = app.response(false).await;
        assert!(resp.line.starts_with("HTTP/1.1 400"), "{resp:?}");
        assert_eq!(resp.header("x-waypost-error"), Some("bad_request"), "{resp:?}");
        assert!(app.closed().await);
        assert_eq!(up.requests().len(), cases.len(), "the malformed request went nowhere");
    })
    .await;
}
