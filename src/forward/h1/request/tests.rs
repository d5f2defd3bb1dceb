//! The request rules of the HTTP/1 policy as a table: raw head → what goes upstream, or the
//! error (and so the status) the app gets.

use super::*;
use crate::forward::h1::framing::FramingError;

const LIMITS: Limits = Limits {
    max_head_size: 1024,
    max_headers: 8,
};

/// `raw` parsed and finished (routed to `svc`): the request and the upstream head.
fn run(raw: &str) -> Result<(Request, String), RequestError> {
    let mut out = Vec::new();
    match parse(raw.as_bytes(), LIMITS, &mut out, b"")? {
        Parsed::Partial => panic!("partial head: {raw:?}"),
        Parsed::Complete(req) => {
            finish(&mut out, &req, "svc");
            Ok((req, String::from_utf8(out).unwrap()))
        }
    }
}

fn upstream(raw: &str) -> String {
    run(raw)
        .unwrap_or_else(|e| panic!("{raw:?} refused: {e}"))
        .1
}

fn refused(raw: &str) -> RequestError {
    match run(raw) {
        Ok((_, head)) => panic!("{raw:?} accepted, sent as {head:?}"),
        Err(e) => e,
    }
}

use RequestError::*;

#[test]
fn forwarded_heads_are_written_from_the_decision() {
    let table = [
        // Fields in arrival order, Host in its place; the request line is always HTTP/1.1.
        (
            "GET /a?b=1 HTTP/1.1\r\nHost: echo\r\nX-A: 1\r\nx-b:2\r\n\r\n",
            "GET /a?b=1 HTTP/1.1\r\nHost: echo\r\nX-A: 1\r\nx-b: 2\r\n\r\n",
        ),
        // LF line endings (as httparse accepts them), a leading empty line.
        (
            "\r\nGET / HTTP/1.1\nHost: echo\n\n",
            "GET / HTTP/1.1\r\nHost: echo\r\n\r\n",
        ),
        // Hop-by-hop fields and those Connection names stay here; Trailer is end to end.
        (
            "GET / HTTP/1.1\r\nHost: echo\r\nConnection: keep-alive, X-Private, te\r\nKeep-Alive: 5\r\n\
             X-Private: 1\r\nTE: trailers\r\nUpgrade: websocket\r\nProxy-Connection: x\r\nTrailer: x-sum\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: echo\r\nTrailer: x-sum\r\n\r\n",
        ),
        (
            "GET / HTTP/1.1\r\nProxy-Authorization: basic x\r\nHost: echo\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: echo\r\n\r\n",
        ),
        // Framing fields are written last, from the decision, never copied.
        (
            "POST /p HTTP/1.1\r\nContent-Length: 5\r\nHost: echo\r\nX-A: 1\r\n\r\n",
            "POST /p HTTP/1.1\r\nHost: echo\r\nX-A: 1\r\ncontent-length: 5\r\n\r\n",
        ),
        (
            "POST /p HTTP/1.1\r\nHost: echo\r\nContent-Length: 5\r\ncontent-length: 5, 5\r\n\r\n",
            "POST /p HTTP/1.1\r\nHost: echo\r\ncontent-length: 5\r\n\r\n",
        ),
        (
            "POST /p HTTP/1.1\r\nTransfer-Encoding:\tChunked\r\nHost: echo\r\n\r\n",
            "POST /p HTTP/1.1\r\nHost: echo\r\ntransfer-encoding: chunked\r\n\r\n",
        ),
        (
            "GET / HTTP/1.1\r\nHost: echo\r\nContent-Length: 0\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: echo\r\ncontent-length: 0\r\n\r\n",
        ),
        // An empty POST/PUT/PATCH is told its length.
        (
            "POST / HTTP/1.1\r\nHost: echo\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: echo\r\ncontent-length: 0\r\n\r\n",
        ),
        (
            "PATCH / HTTP/1.1\r\nHost: echo\r\n\r\n",
            "PATCH / HTTP/1.1\r\nHost: echo\r\ncontent-length: 0\r\n\r\n",
        ),
        // A look-alike of Transfer-Encoding is just another field.
        (
            "GET / HTTP/1.1\r\nHost: echo\r\nTransfer_Encoding: chunked\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: echo\r\nTransfer_Encoding: chunked\r\n\r\n",
        ),
        // Absolute form: origin form upstream, Host replaced by the authority as written.
        (
            "GET http://echo/p?q=1 HTTP/1.1\r\nHost: other\r\nX-A: 1\r\n\r\n",
            "GET /p?q=1 HTTP/1.1\r\nHost: echo\r\nX-A: 1\r\n\r\n",
        ),
        (
            "GET http://echo?x=1 HTTP/1.1\r\nHost: echo\r\n\r\n",
            "GET /?x=1 HTTP/1.1\r\nHost: echo\r\n\r\n",
        ),
        (
            "GET HTTP://Echo:8080 HTTP/1.1\r\nHost: e\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: Echo:8080\r\n\r\n",
        ),
        // HTTP/1.0 without Host: the authority, or the service name.
        (
            "GET http://echo:80/x HTTP/1.0\r\n\r\n",
            "GET /x HTTP/1.1\r\nhost: echo:80\r\n\r\n",
        ),
        ("GET /x HTTP/1.0\r\n\r\n", "GET /x HTTP/1.1\r\nhost: svc\r\n\r\n"),
        // Expect: 100-continue goes on over HTTP/1.1; HTTP/1.0 has no expectations.
        (
            "PUT / HTTP/1.1\r\nHost: echo\r\nExpect: 100-Continue\r\nContent-Length: 1\r\n\r\n",
            "PUT / HTTP/1.1\r\nHost: echo\r\nExpect: 100-Continue\r\ncontent-length: 1\r\n\r\n",
        ),
        (
            "GET / HTTP/1.0\r\nExpect: whatever\r\nHost: echo\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: echo\r\n\r\n",
        ),
        (
            "OPTIONS * HTTP/1.1\r\nHost: echo\r\n\r\n",
            "OPTIONS * HTTP/1.1\r\nHost: echo\r\n\r\n",
        ),
        // Visible ASCII is forwarded as is (percent-encoding is not checked).
        (
            "GET /a%zz\"{}|^` HTTP/1.1\r\nHost: echo\r\n\r\n",
            "GET /a%zz\"{}|^` HTTP/1.1\r\nHost: echo\r\n\r\n",
        ),
    ];
    for (raw, want) in table {
        assert_eq!(upstream(raw), want, "{raw:?}");
    }
}

#[test]
fn refused_heads_and_their_reasons() {
    let table: &[(&str, RequestError)] = &[
        // Request line.
        ("GET  / HTTP/1.1\r\nHost: e\r\n\r\n", Malformed("malformed request line")),
        ("GET / HTTP/1.1 \r\nHost: e\r\n\r\n", Malformed("malformed line ending")),
        ("G@T / HTTP/1.1\r\nHost: e\r\n\r\n", Malformed("malformed request line")),
        ("GET / HTTP/1.2\r\nHost: e\r\n\r\n", Version),
        ("GET / HTTP/2.0\r\nHost: e\r\n\r\n", Version),
        ("GET / HTTP/0.9\r\nHost: e\r\n\r\n", Version),
        ("GET / HTTP/1.10\r\nHost: e\r\n\r\n", Malformed("malformed line ending")),
        ("GET / http/1.1\r\nHost: e\r\n\r\n", Malformed("malformed HTTP version")),
        ("GET / HTTP/1\r\nHost: e\r\n\r\n", Malformed("malformed HTTP version")),
        ("CONNECT echo:443 HTTP/1.1\r\nHost: echo:443\r\n\r\n", Connect),
        // Targets.
        ("GET /a#b HTTP/1.1\r\nHost: e\r\n\r\n", Malformed("request target has a fragment or a byte outside visible ASCII")),
        ("GET echo:80 HTTP/1.1\r\nHost: e\r\n\r\n", Malformed("request target is not origin-form, absolute-form or OPTIONS *")),
        ("GET * HTTP/1.1\r\nHost: e\r\n\r\n", Malformed("asterisk-form target is only for OPTIONS")),
        ("GET http://u:p@echo/ HTTP/1.1\r\nHost: e\r\n\r\n", Malformed("userinfo in the request target")),
        ("GET https://echo/ HTTP/1.1\r\nHost: e\r\n\r\n", Malformed("only http:// absolute-form targets can be forwarded")),
        ("GET ftp://echo/ HTTP/1.1\r\nHost: e\r\n\r\n", Malformed("only http:// absolute-form targets can be forwarded")),
        ("GET http:///x HTTP/1.1\r\nHost: e\r\n\r\n", Malformed("invalid authority in the request target")),
        ("GET http://echo:x/ HTTP/1.1\r\nHost: e\r\n\r\n", Malformed("invalid authority in the request target")),
        // Host.
        ("GET / HTTP/1.1\r\n\r\n", Malformed("no Host field in an HTTP/1.1 request")),
        ("GET http://echo/ HTTP/1.1\r\n\r\n", Malformed("no Host field in an HTTP/1.1 request")),
        ("GET / HTTP/1.1\r\nHost: e\r\nHost: e\r\n\r\n", Malformed("more than one Host field")),
        ("GET / HTTP/1.1\r\nHost: a b\r\n\r\n", Malformed("invalid Host field")),
        ("GET / HTTP/1.1\r\nHost: u@echo\r\n\r\n", Malformed("invalid Host field")),
        ("GET / HTTP/1.1\r\nHost: echo:\r\n\r\n", Malformed("invalid Host field")),
        // Field syntax.
        ("GET / HTTP/1.1\r\nHost: e\r\nTransfer-Encoding : chunked\r\n\r\n", Malformed("invalid field name (or obs-fold)")),
        ("GET / HTTP/1.1\r\nHost: e\r\nX: a\r\n folded\r\n\r\n", Malformed("invalid field name (or obs-fold)")),
        ("GET / HTTP/1.1\r\nHost: e\r\n: a\r\n\r\n", Malformed("invalid field name (or obs-fold)")),
        ("GET / HTTP/1.1\r\nHost: e\r\nX: a\0b\r\n\r\n", Malformed("invalid field value")),
        ("GET / HTTP/1.1\r\nHost: e\r\nX: a\rb\r\n\r\n", Malformed("invalid field value")),
        ("GET / HTTP/1.1\r\nHost: e\r\nTransfer-Encoding: chunked\x0b\r\n\r\n", Malformed("invalid field value")),
        // Connection naming what frames or routes the request.
        ("POST / HTTP/1.1\r\nHost: e\r\nConnection: content-length\r\nContent-Length: 3\r\n\r\n", Malformed("Connection names a framing or routing field")),
        ("POST / HTTP/1.1\r\nHost: e\r\nConnection: close, Transfer-Encoding\r\nTransfer-Encoding: chunked\r\n\r\n", Malformed("Connection names a framing or routing field")),
        ("GET / HTTP/1.1\r\nHost: e\r\nConnection: host\r\n\r\n", Malformed("Connection names a framing or routing field")),
        // Framing.
        ("POST / HTTP/1.1\r\nHost: e\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", Framing(FramingError::LengthAndEncoding)),
        ("POST / HTTP/1.1\r\nHost: e\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", Framing(FramingError::ConflictingLengths)),
        ("POST / HTTP/1.1\r\nHost: e\r\nContent-Length: +5\r\n\r\n", Framing(FramingError::BadLength)),
        ("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", Framing(FramingError::EncodingInHttp10)),
        ("POST / HTTP/1.1\r\nHost: e\r\nTransfer-Encoding: chunked, chunked\r\n\r\n", Framing(FramingError::ChunkedTwice)),
        ("POST / HTTP/1.1\r\nHost: e\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", Framing(FramingError::ChunkedTwice)),
        ("POST / HTTP/1.1\r\nHost: e\r\nTransfer-Encoding: gzip\r\n\r\n", Framing(FramingError::NotChunked)),
        ("POST / HTTP/1.1\r\nHost: e\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", Framing(FramingError::UnsupportedCoding)),
        // Expectations.
        ("PUT / HTTP/1.1\r\nHost: e\r\nExpect: 200-ok\r\n\r\n", Expectation),
        // Limits.
        ("GET / HTTP/1.1\r\nHost: e\r\na: 1\r\nb: 1\r\nc: 1\r\nd: 1\r\ne: 1\r\nf: 1\r\ng: 1\r\nh: 1\r\n\r\n", TooManyFields(8)),
    ];
    for (raw, want) in table {
        assert_eq!(refused(raw), *want, "{raw:?}");
    }
}

#[test]
fn what_the_pipeline_learns_from_a_head() {
    let (req, _) =
        run("HEAD / HTTP/1.1\r\nHost: e\r\nConnection: close\r\nTE: trailers;q=1\r\n\r\n").unwrap();
    assert!(req.is_head() && req.is_idempotent() && req.close && req.trailers && !req.http10);
    let (req, head) = run("GET http://echo:1/ HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let (s, e) = req.host.unwrap();
    assert_eq!(
        &head[s as usize..e as usize],
        "echo:1",
        "routing reads the authority"
    );
    // HTTP/1.0 keeps its connection only when it asks.
    let (req, _) = run("GET / HTTP/1.0\r\nHost: e\r\n\r\n").unwrap();
    assert!(req.close && req.http10);
    let (req, _) = run("GET / HTTP/1.0\r\nHost: e\r\nConnection: Keep-Alive\r\n\r\n").unwrap();
    assert!(!req.close);
    let (req, _) =
        run("POST / HTTP/1.1\r\nHost: e\r\nExpect: 100-continue\r\nContent-Length: 9\r\n\r\n")
            .unwrap();
    assert!(req.expect_continue && !req.is_idempotent());
    assert_eq!(req.framing, super::Framing::Length(9));
    let raw = "GET / HTTP/1.1\r\nHost: e\r\n\r\nrest";
    let (req, _) = run(raw).unwrap();
    assert_eq!(
        req.len,
        raw.len() - 4,
        "the head's length, not the buffer's"
    );
}

#[test]
fn partial_heads_wait_until_the_size_limit() {
    let mut out = Vec::new();
    let partial = "GET / HTTP/1.1\r\nHost: e\r\n";
    assert!(matches!(
        parse(partial.as_bytes(), LIMITS, &mut out, b""),
        Ok(Parsed::Partial)
    ));
    // A partial head as large as the limit, and a complete head over it: 431.
    let big = format!("GET / HTTP/1.1\r\nHost: e\r\nX: {}", "a".repeat(1024));
    assert_eq!(
        parse(big.as_bytes(), LIMITS, &mut out, b"").unwrap_err(),
        HeadTooLarge(1024)
    );
    let over = format!(
        "GET / HTTP/1.1\r\nHost: e\r\nX: {}\r\n\r\n",
        "a".repeat(1000)
    );
    assert_eq!(
        parse(over.as_bytes(), LIMITS, &mut out, b"").unwrap_err(),
        HeadTooLarge(1024)
    );
    // A host already checked on the connection is not checked again; others are.
    let raw = b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n";
    assert!(parse(raw, LIMITS, &mut out, b"a b").is_ok());
    assert!(parse(raw, LIMITS, &mut out, b"a").is_err());
    // Nothing is parsed from a partial head that is already wrong.
    assert!(parse(b"GET /\x01", LIMITS, &mut out, b"").is_err());
}

#[test]
fn a_host_may_be_added_to_a_head_at_the_field_limit() {
    // The limits bound what the app sends: an HTTP/1.0 head with as many fields as allowed and
    // no Host passes, and goes upstream with the service's name as one more (found by the
    // request_head fuzz target, whose property allows for it).
    let fields: String = (0..LIMITS.max_headers)
        .map(|i| format!("X-{i}: {i}\r\n"))
        .collect();
    let (_, head) = run(&format!("GET / HTTP/1.0\r\n{fields}\r\n")).unwrap();
    assert_eq!(
        head.matches("\r\n").count() - 2,
        LIMITS.max_headers + 1,
        "{head}"
    );
    assert!(head.ends_with("host: svc\r\n\r\n"), "{head}");
}

#[test]
fn upgrades_pass_on_only_as_a_bodiless_http11_get_other_than_h2c() {
    let ws = "GET /ws HTTP/1.1\r\nHost: echo\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\r\n";
    let (req, head) = run(ws).unwrap();
    assert!(req.upgrade);
    assert_eq!(
        head,
        "GET /ws HTTP/1.1\r\nHost: echo\r\nSec-WebSocket-Version: 13\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n"
    );
    for plain in [
        // h2c, alone or among others: never forwarded.
        "GET / HTTP/1.1\r\nHost: echo\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: echo\r\nConnection: Upgrade\r\nUpgrade: websocket, H2C\r\n\r\n",
        // Connection does not name upgrade.
        "GET / HTTP/1.1\r\nHost: echo\r\nUpgrade: websocket\r\n\r\n",
        // Not a GET, or with a body.
        "POST / HTTP/1.1\r\nHost: echo\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: echo\r\nConnection: upgrade\r\nUpgrade: websocket\r\nContent-Length: 2\r\n\r\nhi",
        // HTTP/1.0 has no upgrades.
        "GET / HTTP/1.0\r\nHost: echo\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
        // Two Upgrade fields, or a value that is no protocol list.
        "GET / HTTP/1.1\r\nHost: echo\r\nConnection: upgrade\r\nUpgrade: websocket\r\nUpgrade: foo\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: echo\r\nConnection: upgrade\r\nUpgrade: web socket\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: echo\r\nConnection: upgrade\r\nUpgrade: ,\r\n\r\n",
    ] {
        let (req, head) = run(plain).unwrap();
        assert!(!req.upgrade, "{plain:?}");
        assert!(
            !head.to_ascii_lowercase().contains("upgrade"),
            "{plain:?} went up as {head:?}"
        );
    }
    let (req, _) =
        run("GET / HTTP/1.1\r\nHost: echo\r\nConnection: upgrade\r\nUpgrade: foo/1.1, bar\r\n\r\n")
            .unwrap();
    assert!(req.upgrade, "protocol/version lists pass");
}
