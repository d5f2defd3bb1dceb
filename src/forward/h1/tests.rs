//! Unit tests of the HTTP/1.1 client codec: request heads and their framing, response heads and
//! theirs, and response bodies read from a real loopback socket written in small pieces.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request};
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

use super::body::Recycle;
use super::*;

fn head_of<B: http_body::Body>(req: Request<B>) -> (String, Framing) {
    let (mut parts, body) = req.into_parts();
    let mut head = Vec::new();
    let framing = encode_request(&mut parts, &body, &mut head);
    (String::from_utf8(head).unwrap(), framing)
}

#[test]
fn request_heads_say_how_their_body_is_framed() {
    let get = Request::get("/a?b=1")
        .header("host", "echo")
        .body(Empty::<Bytes>::new())
        .unwrap();
    assert_eq!(
        head_of(get),
        (
            "GET /a?b=1 HTTP/1.1\r\nhost: echo\r\n\r\n".into(),
            Framing::Empty
        )
    );
    // A method that defines a body gets `Content-Length: 0` when it has none.
    let post = Request::post("/").body(Empty::<Bytes>::new()).unwrap();
    assert_eq!(
        head_of(post),
        (
            "POST / HTTP/1.1\r\ncontent-length: 0\r\n\r\n".into(),
            Framing::Empty
        )
    );
    // A known length wins over the app's own chunked framing.
    let sized = Request::put("/")
        .header("transfer-encoding", "chunked")
        .body(Full::new(Bytes::from_static(b"hello")))
        .unwrap();
    let (head, framing) = head_of(sized);
    assert_eq!(framing, Framing::Length(5));
    assert_eq!(head, "PUT / HTTP/1.1\r\ncontent-length: 5\r\n\r\n");
    // An unknown length is chunked.
    let chunks = futures_util::stream::iter(vec![Ok::<_, std::io::Error>(http_body::Frame::data(
        Bytes::from_static(b"x"),
    ))]);
    let streamed = Request::post("/")
        .header("content-length", "1")
        .body(StreamBody::new(chunks))
        .unwrap();
    let (head, framing) = head_of(streamed);
    assert_eq!(framing, Framing::Chunked);
    assert_eq!(
        head,
        "POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n"
    );
}

#[test]
fn hop_by_hop_headers_cross_in_neither_direction() {
    // Request: the fixed hop-by-hop names and those `Connection` names are left out; an
    // HTTP/2 request with an absolute URI goes out in origin form as HTTP/1.1.
    let req = Request::get("http://echo:80/a?b=1")
        .version(http::Version::HTTP_2)
        .header("connection", "keep-alive, x-private")
        .header("keep-alive", "timeout=5")
        .header("x-private", "1")
        .header("upgrade", "websocket")
        .header("te", "trailers")
        .header("x-keep", "1")
        .body(Empty::<Bytes>::new())
        .unwrap();
    assert_eq!(head_of(req).0, "GET /a?b=1 HTTP/1.1\r\nx-keep: 1\r\n\r\n");
    // Response: the same rules while the head is parsed; `Trailer` is end to end and stays.
    let head = parse(
        "HTTP/1.1 200 OK\r\nconnection: x-private\r\nx-private: 1\r\nkeep-alive: timeout=5\r\n\
         proxy-connection: x\r\ntrailer: x-sum\r\nx-keep: 1\r\ncontent-length: 0\r\n\r\n",
        false,
    )
    .unwrap();
    assert_eq!(names(&head), ["trailer", "x-keep"]);
    assert_eq!(head.content_length, Some(0));
    assert!(
        head.reusable,
        "a Connection header without close keeps the connection"
    );
    let parts = head.into_parts().unwrap();
    let names: Vec<&str> = parts.headers.keys().map(|n| n.as_str()).collect();
    assert_eq!(names, ["trailer", "x-keep", "content-length"]);
}

/// The forwarded fields' names of `head`, as received.
fn names(head: &Head) -> Vec<String> {
    head.fields()
        .map(|(n, _)| String::from_utf8_lossy(n).into_owned())
        .collect()
}

/// Parses `raw` as one response head (to a GET, or a HEAD when `head_request`).
fn parse(raw: &str, head_request: bool) -> Result<Head, ProtoError> {
    let mut buf = BytesMut::from(raw);
    loop {
        match parse_head(&mut buf, head_request)? {
            Parsed::Final(head) => return Ok(head),
            Parsed::Interim => continue,
            Parsed::Partial => panic!("partial head: {raw:?}"),
        }
    }
}

#[test]
fn response_framing_follows_rfc_9112() {
    let framing = |raw: &str, head: bool| {
        let h = parse(raw, head).unwrap();
        (h.framing, h.reusable)
    };
    let ok = "HTTP/1.1 200 OK\r\n";
    assert_eq!(
        framing(&format!("{ok}content-length: 5\r\n\r\n"), false),
        (Framing::Length(5), true)
    );
    assert_eq!(
        framing(&format!("{ok}content-length: 5\r\n\r\n"), true),
        (Framing::Empty, true)
    );
    assert_eq!(
        framing("HTTP/1.1 204 No Content\r\n\r\n", false),
        (Framing::Empty, true)
    );
    assert_eq!(
        framing(
            "HTTP/1.1 304 Not Modified\r\ncontent-length: 9\r\n\r\n",
            false
        ),
        (Framing::Empty, true)
    );
    assert_eq!(
        framing(&format!("{ok}transfer-encoding: chunked\r\n\r\n"), false),
        (Framing::Chunked, true)
    );
    // Close-delimited bodies, and anything HTTP/1.0 or `Connection: close`, end the connection.
    assert_eq!(
        framing(&format!("{ok}\r\n"), false),
        (Framing::Close, false)
    );
    assert_eq!(
        framing(&format!("{ok}transfer-encoding: gzip\r\n\r\n"), false),
        (Framing::Close, false)
    );
    assert_eq!(
        framing("HTTP/1.0 200 OK\r\ncontent-length: 1\r\n\r\n", false),
        (Framing::Length(1), false)
    );
    assert_eq!(
        framing(
            &format!("{ok}connection: Close\r\ncontent-length: 1\r\n\r\n"),
            false
        ),
        (Framing::Length(1), false)
    );
    // Both framings: chunked wins, the length is not forwarded, the connection is not reused.
    let both = parse(
        &format!("{ok}content-length: 3\r\ntransfer-encoding: chunked\r\n\r\n"),
        false,
    )
    .unwrap();
    assert_eq!((both.framing, both.reusable), (Framing::Chunked, false));
    assert_eq!(both.content_length, None);
    assert_eq!(names(&both), ["transfer-encoding"]);
    // Repeated equal lengths collapse into one; different ones are an error.
    let twice = parse(
        &format!("{ok}content-length: 7, 7\r\ncontent-length: 7\r\n\r\n"),
        false,
    )
    .unwrap();
    assert_eq!(twice.framing, Framing::Length(7));
    let parts = twice.into_parts().unwrap();
    assert_eq!(parts.headers.get_all("content-length").iter().count(), 1);
    assert_eq!(parts.headers["content-length"], "7");
    for bad in ["7, 8", "-1", "", "0x10", "99999999999999999999"] {
        let err = parse(&format!("{ok}content-length: {bad}\r\n\r\n"), false).err();
        assert!(
            matches!(err, Some(ProtoError::Invalid(_))),
            "{bad:?}: {err:?}"
        );
    }
}

#[test]
fn interim_heads_are_skipped_and_upgrades_refused() {
    let head = parse("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 0\r\n\r\n", false).unwrap();
    assert_eq!(head.status, 201);
    assert_eq!(names(&head), Vec::<String>::new());
    let upgrade = parse(
        "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\r\n",
        false,
    );
    assert!(matches!(upgrade, Err(ProtoError::Invalid(_))));
    assert!(matches!(
        parse("garbage\r\n\r\n", false),
        Err(ProtoError::Parse(_))
    ));
    let mut partial = BytesMut::from("HTTP/1.1 200 OK\r\ncontent-len");
    assert!(matches!(
        parse_head(&mut partial, false),
        Ok(Parsed::Partial)
    ));
}

/// Records whether the connection came back.
struct Flag(Arc<AtomicBool>);

impl Recycle for Flag {
    fn recycle(self, _conn: Conn) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Sends a GET over a real socket to a peer that answers with `pieces`, written one by one with
/// a pause between them; returns the head, the body's data, its trailers, and whether the
/// connection was recycled.
async fn fetch(
    pieces: &[&'static [u8]],
) -> Result<(Head, Vec<u8>, Option<HeaderMap>, bool), ProtoError> {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let pieces = pieces.to_vec();
    let peer = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        // Read the request first: closing a socket with unread bytes resets it.
        let mut req = [0u8; 64];
        let _ = tokio::io::AsyncReadExt::read(&mut s, &mut req).await;
        for p in pieces {
            s.write_all(p).await.unwrap();
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        // Hold the connection open a moment so a reusable one is not closed under the body.
        tokio::time::sleep(Duration::from_millis(50)).await;
    });
    let mut conn = Conn::new(TcpStream::connect(addr).await.unwrap(), 8192);
    conn.write_head(b"GET / HTTP/1.1\r\n\r\n").await?;
    let head = conn.read_head(false).await?;
    let recycled = Arc::new(AtomicBool::new(false));
    let home = Flag(recycled.clone());
    let mut body = Body::new(conn, head.framing, head.reusable, home);
    let (mut data, mut trailers) = (Vec::new(), None);
    while let Some(frame) = body.frame().await {
        let frame = frame?;
        if let Some(d) = frame.data_ref() {
            data.extend_from_slice(d);
        } else {
            trailers = frame.into_trailers().ok();
        }
    }
    peer.abort();
    Ok((head, data, trailers, recycled.load(Ordering::SeqCst)))
}

#[tokio::test]
async fn chunked_bodies_decode_across_split_reads_with_extensions_and_trailers() {
    let (head, data, trailers, recycled) = fetch(&[
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
        b"5;ext=1\r",
        b"\nhel",
        b"lo\r",
        b"\n1",
        b"0\r\n0123456789abcdef\r\n",
        b"0\r\nx-sum: 9\r\n",
        b"\r\n",
    ])
    .await
    .unwrap();
    assert_eq!(head.framing, Framing::Chunked);
    assert_eq!(data, b"hello0123456789abcdef");
    assert_eq!(trailers.unwrap()["x-sum"], "9");
    assert!(
        recycled,
        "a cleanly ended chunked body gives its connection back"
    );
}

#[tokio::test]
async fn length_bodies_stream_and_recycle_only_when_complete() {
    let (_, data, _, recycled) = fetch(&[
        b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n01234",
        b"56789",
    ])
    .await
    .unwrap();
    assert_eq!((data.as_slice(), recycled), (&b"0123456789"[..], true));
    // The whole body with the head: recycled at once.
    let (_, data, _, recycled) = fetch(&[b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"])
        .await
        .unwrap();
    assert_eq!((data.as_slice(), recycled), (&b"ok"[..], true));
    // Close-delimited: read to the end, never recycled.
    let (_, data, _, recycled) = fetch(&[b"HTTP/1.0 200 OK\r\n\r\nuntil ", b"close"])
        .await
        .unwrap();
    assert_eq!((data.as_slice(), recycled), (&b"until close"[..], false));
}

#[tokio::test]
async fn truncated_and_malformed_bodies_are_errors() {
    let short = fetch(&[b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly ten.."]).await;
    assert!(
        matches!(short, Err(ProtoError::Truncated)),
        "{:?}",
        short.err()
    );
    let bad = fetch(&[b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n"]).await;
    assert!(
        matches!(bad, Err(ProtoError::Invalid(_))),
        "{:?}",
        bad.err()
    );
    let no_crlf = fetch(&[b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nabXY"]).await;
    assert!(
        matches!(no_crlf, Err(ProtoError::Invalid(_))),
        "{:?}",
        no_crlf.err()
    );
    let closed = fetch(&[]).await;
    assert!(
        matches!(closed, Err(ProtoError::Closed)),
        "{:?}",
        closed.err()
    );
    let big = fetch(&[b"HTTP/1.1 200 OK\r\nx: ", &[b'a'; 9000]]).await;
    assert!(
        matches!(big, Err(ProtoError::HeadTooLarge(8192))),
        "{:?}",
        big.err()
    );
}
