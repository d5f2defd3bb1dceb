//! The response rules: framing by the one framing function, which fields reach the app, and the
//! head the app gets in its own version.

use super::*;

/// Parses `raw` as one final response head (skipping interim ones) to a GET, or a HEAD when
/// `head_request`.
fn head(raw: &str, head_request: bool) -> Result<Head, ResponseError> {
    let mut buf = BytesMut::from(raw);
    loop {
        match parse(&mut buf, head_request)? {
            Parsed::Final(head) => return Ok(head),
            Parsed::Interim(_) => continue,
            Parsed::Partial => panic!("partial head: {raw:?}"),
        }
    }
}

fn names(head: &Head) -> Vec<String> {
    head.fields()
        .map(|(n, _)| String::from_utf8_lossy(n).into_owned())
        .collect()
}

/// What the app gets for `raw`, as an HTTP/1.1 (or 1.0) app.
fn to_app(raw: &str, reply: Reply) -> (String, Framing) {
    let h = head(raw, false).unwrap();
    let mut out = Vec::new();
    let framing = encode(&mut out, &h, reply);
    (String::from_utf8(out).unwrap(), framing)
}

#[test]
fn hop_by_hop_named_and_marker_fields_stay_behind() {
    let h = head(
        "HTTP/1.1 200 OK\r\nconnection: x-private\r\nx-private: 1\r\nkeep-alive: timeout=5\r\n\
         proxy-connection: x\r\ntrailer: x-sum\r\nx-keep: 1\r\nX-Waypost-Error: spoof\r\ncontent-length: 0\r\n\r\n",
        false,
    )
    .unwrap();
    assert_eq!(names(&h), ["trailer", "x-keep"]);
    assert_eq!(h.framing, Framing::Length(0));
    assert!(
        h.reusable,
        "a Connection field without close keeps the connection"
    );
    let parts = h.into_parts().unwrap();
    let names: Vec<&str> = parts.headers.keys().map(|n| n.as_str()).collect();
    assert_eq!(names, ["trailer", "x-keep", "content-length"]);
}

#[test]
fn framing_of_responses() {
    let cases: &[(&str, bool, Framing, bool)] = &[
        // (head, to a HEAD, framing, reusable)
        (
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n",
            false,
            Framing::Length(5),
            true,
        ),
        (
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
            false,
            Framing::Chunked,
            true,
        ),
        (
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n",
            false,
            Framing::Chunked,
            false,
        ),
        (
            "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n",
            false,
            Framing::Close,
            false,
        ),
        ("HTTP/1.1 200 OK\r\n\r\n", false, Framing::Close, false),
        (
            "HTTP/1.0 200 OK\r\ncontent-length: 5\r\n\r\n",
            false,
            Framing::Length(5),
            false,
        ),
        (
            "HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 5\r\n\r\n",
            false,
            Framing::Length(5),
            false,
        ),
        // An upstream's Connection naming its own framing field changes nothing about framing.
        (
            "HTTP/1.1 200 OK\r\nconnection: content-length\r\ncontent-length: 5\r\n\r\n",
            false,
            Framing::Length(5),
            true,
        ),
        (
            "HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n",
            true,
            Framing::Empty,
            true,
        ),
        (
            "HTTP/1.1 204 No Content\r\ncontent-length: 10\r\n\r\n",
            false,
            Framing::Empty,
            true,
        ),
        (
            "HTTP/1.1 304 Not Modified\r\ntransfer-encoding: chunked\r\n\r\n",
            false,
            Framing::Empty,
            true,
        ),
        (
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n",
            false,
            Framing::Length(2),
            true,
        ),
    ];
    for (raw, head_request, framing, reusable) in cases {
        let h = head(raw, *head_request).unwrap_or_else(|e| panic!("{raw:?}: {e}"));
        assert_eq!((h.framing, h.reusable), (*framing, *reusable), "{raw:?}");
    }
    for raw in [
        "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\n",
        "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n",
        "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked, chunked\r\n\r\n",
        "SSH-2.0-OpenSSH_9.6\r\n\r\n",
        "HTTP/1.1 20 OK\r\n\r\n",
    ] {
        assert!(head(raw, false).is_err(), "{raw:?} must be a 502");
    }
}

#[test]
fn a_101_is_final_bodiless_not_reusable_and_keeps_its_upgrade() {
    let mut buf = BytesMut::from(
        &b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\ncontent-length: 5\r\n\r\n\x81\x02hi"[..],
    );
    let Ok(Parsed::Final(h)) = parse(&mut buf, false) else {
        panic!("a 101 is a final head")
    };
    assert_eq!((h.framing, h.reusable), (Framing::Empty, false));
    assert_eq!(
        &buf[..],
        b"\x81\x02hi",
        "what follows belongs to the new protocol"
    );
    let mut out = Vec::new();
    assert_eq!(encode(&mut out, &h, Reply::default()), Framing::Empty);
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nconnection: upgrade\r\n\r\n"
    );
}

#[test]
fn interim_heads_are_reported_and_consumed() {
    let mut buf = BytesMut::from("HTTP/1.1 100 Continue\r\nx: 1\r\n\r\nHTTP/1.1 200 OK\r\n");
    assert!(matches!(
        parse(&mut buf, false),
        Ok(Parsed::Interim(StatusCode::CONTINUE))
    ));
    assert!(matches!(parse(&mut buf, false), Ok(Parsed::Partial)));
    assert_eq!(&buf[..], b"HTTP/1.1 200 OK\r\n");
}

#[test]
fn heads_the_app_gets() {
    let http11 = Reply::default();
    let http10 = Reply {
        close: false,
        http10: true,
    };
    let (out, framing) = to_app(
        "HTTP/1.1 200 OK\r\nX-A: 1\r\ncontent-length: 5\r\n\r\n",
        http11,
    );
    assert_eq!(
        out,
        "HTTP/1.1 200 OK\r\nX-A: 1\r\ncontent-length: 5\r\n\r\n"
    );
    assert_eq!(framing, Framing::Length(5));
    // Chunked is re-chunked by waypost for HTTP/1.1 apps, sent decoded to HTTP/1.0 ones.
    let chunked = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\ncontent-length: 3\r\n\r\n";
    let (out, framing) = to_app(chunked, http11);
    assert_eq!(out, "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n");
    assert_eq!(framing, Framing::Chunked);
    let (out, framing) = to_app(chunked, http10);
    assert_eq!(out, "HTTP/1.0 200 OK\r\nconnection: close\r\n\r\n");
    assert_eq!(framing, Framing::Close);
    let (out, _) = to_app("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n", http10);
    assert_eq!(
        out,
        "HTTP/1.0 200 OK\r\ncontent-length: 0\r\nconnection: keep-alive\r\n\r\n"
    );
    // A coding waypost does not decode, read to the close, passes as received.
    let (out, framing) = to_app("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", http11);
    assert_eq!(
        out,
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nconnection: close\r\n\r\n"
    );
    assert_eq!(framing, Framing::Close);
    // Read to the close, a coding that names chunked, or comes from HTTP/1.0 (faulty framing),
    // is dropped: the app would decode chunks out of bytes forwarded as they are (found by the
    // response_head fuzz target).
    for raw in [
        "HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\nConnection: close, +-foo\r\nx-foo: 1\r\n\r\n",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: \"x\"\r\n\r\n",
    ] {
        let (out, framing) = to_app(raw, http11);
        assert_eq!(framing, Framing::Close, "{raw:?}");
        let lower = out.to_ascii_lowercase();
        assert!(!lower.contains("transfer-encoding") && !lower.contains("content-length"), "{raw:?} → {out:?}");
    }
    // A HEAD's length describes the representation: it passes.
    let h = head("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n", true).unwrap();
    let mut out = Vec::new();
    assert_eq!(encode(&mut out, &h, http11), Framing::Empty);
    assert_eq!(out, b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n");
    // waypost's own answers.
    let mut fields = HeaderMap::new();
    fields.insert("x-waypost-error", HeaderValue::from_static("bad_request"));
    encode_own(
        &mut out,
        StatusCode::BAD_REQUEST,
        &fields,
        12,
        Reply {
            close: true,
            http10: false,
        },
    );
    assert_eq!(
        out,
        b"HTTP/1.1 400 Bad Request\r\nx-waypost-error: bad_request\r\ncontent-length: 12\r\nconnection: close\r\n\r\n"
    );
}
