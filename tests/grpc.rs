//! gRPC end to end through waypost: a real tonic client (over h2c to waypost) and a real tonic
//! server (an h2c instance, `protocol: h2c`), with a hand-written UTF-8 codec instead of
//! protobuf (no code generation). Unary, server streaming, client streaming and bidirectional
//! streaming calls with their messages and `grpc-status` intact; the bidirectional call proves
//! both directions stream at once (each reply comes before the next request is sent); a
//! deadline exceeded comes back as such; a cancelled call resets the stream up to the server.

mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BufMut};
use futures_util::StreamExt;
use http::uri::PathAndQuery;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::{eventually, metric, metrics, within, TestProxy, SETTLE};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::{Code, Request, Response, Status, Streaming};

const LIMIT: Duration = Duration::from_secs(60);

/// Messages are UTF-8 strings.
#[derive(Clone, Copy, Default)]
struct Text;

impl Codec for Text {
    type Encode = String;
    type Decode = String;
    type Encoder = Text;
    type Decoder = Text;
    fn encoder(&mut self) -> Text {
        Text
    }
    fn decoder(&mut self) -> Text {
        Text
    }
}

impl Encoder for Text {
    type Item = String;
    type Error = Status;
    fn encode(&mut self, item: String, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(item.as_bytes());
        Ok(())
    }
}

impl Decoder for Text {
    type Item = String;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<String>, Status> {
        let bytes = src.copy_to_bytes(src.remaining());
        String::from_utf8(bytes.to_vec())
            .map(Some)
            .map_err(|_| Status::internal("not UTF-8"))
    }
}

type Replies = futures_util::stream::BoxStream<'static, Result<String, Status>>;

/// What the server saw.
#[derive(Default)]
struct Seen {
    /// A cancelled call's reply stream was dropped (the stream was reset).
    cancelled: AtomicBool,
    calls: AtomicUsize,
}

/// Sets `cancelled` when the reply stream of the endless call is dropped before its end.
struct Cancelled(Arc<Seen>);

impl Drop for Cancelled {
    fn drop(&mut self) {
        self.0.cancelled.store(true, Ordering::SeqCst);
    }
}

/// A tonic server over h2c on 127.0.0.1, dispatching by path.
async fn server(seen: Arc<Seen>) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: http::Request<Incoming>| {
                    let seen = seen.clone();
                    async move { Ok::<_, std::convert::Infallible>(route(req, seen).await) }
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    addr
}

async fn route(req: http::Request<Incoming>, seen: Arc<Seen>) -> http::Response<tonic::body::Body> {
    seen.calls.fetch_add(1, Ordering::SeqCst);
    let mut grpc = tonic::server::Grpc::new(Text);
    match req.uri().path() {
        "/test.Echo/Unary" => {
            let svc = tower::service_fn(|r: Request<String>| async move {
                let msg = r.into_inner();
                if msg == "fail" {
                    return Err(Status::failed_precondition("asked to fail"));
                }
                Ok(Response::new(format!("unary:{msg}")))
            });
            grpc.unary(svc, req).await
        }
        "/test.Echo/Slow" => {
            // Honours the caller's deadline the way servers do: DEADLINE_EXCEEDED once it passed.
            let svc = tower::service_fn(|r: Request<String>| async move {
                let timeout = r
                    .metadata()
                    .get("grpc-timeout")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_suffix('m'))
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(1000);
                tokio::time::sleep(Duration::from_millis(timeout)).await;
                Err::<Response<String>, _>(Status::deadline_exceeded("too slow"))
            });
            grpc.unary(svc, req).await
        }
        "/test.Echo/ServerStream" => {
            let svc = tower::service_fn(|r: Request<String>| async move {
                let n: usize = r.into_inner().parse().unwrap_or(0);
                let s: Replies =
                    futures_util::stream::iter((0..n).map(|i| Ok(format!("item {i}")))).boxed();
                Ok(Response::new(s))
            });
            grpc.server_streaming(svc, req).await
        }
        "/test.Echo/Endless" => {
            let svc = tower::service_fn(move |_: Request<String>| {
                let guard = Cancelled(seen.clone());
                async move {
                    let s: Replies =
                        futures_util::stream::unfold((0u64, guard), |(i, g)| async move {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            Some((Ok(format!("tick {i}")), (i + 1, g)))
                        })
                        .boxed();
                    Ok(Response::new(s))
                }
            });
            grpc.server_streaming(svc, req).await
        }
        "/test.Echo/ClientStream" => {
            let svc = tower::service_fn(|r: Request<Streaming<String>>| async move {
                let mut s = r.into_inner();
                let mut all = Vec::new();
                while let Some(m) = s.message().await? {
                    all.push(m);
                }
                Ok(Response::new(all.join("+")))
            });
            grpc.client_streaming(svc, req).await
        }
        "/test.Echo/Bidi" => {
            let svc = tower::service_fn(|r: Request<Streaming<String>>| async move {
                let s: Replies = r
                    .into_inner()
                    .map(|m| m.map(|m| format!("echo:{m}")))
                    .boxed();
                Ok(Response::new(s))
            });
            grpc.streaming(svc, req).await
        }
        _ => Status::unimplemented("no such method").into_http(),
    }
}

/// A tonic client on one h2c connection to waypost's outbound listener, naming `service` as
/// the `:authority` (how gRPC clients name their target).
async fn client(
    proxy: &TestProxy,
    service: &str,
) -> tonic::client::Grpc<
    impl tonic::client::GrpcService<tonic::body::Body, ResponseBody = Incoming, Error = hyper::Error>
        + Clone,
> {
    let tcp = tokio::net::TcpStream::connect(proxy.addrs.outbound)
        .await
        .unwrap();
    let (send, conn) = hyper::client::conn::http2::handshake::<_, _, tonic::body::Body>(
        TokioExecutor::new(),
        TokioIo::new(tcp),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let svc = tower::service_fn(move |req: http::Request<tonic::body::Body>| {
        let mut send = send.clone();
        async move { send.send_request(req).await }
    });
    let origin = format!("http://{service}").parse().unwrap();
    tonic::client::Grpc::with_origin(svc, origin)
}

async fn setup() -> (Arc<Seen>, TestProxy) {
    let seen = Arc::new(Seen::default());
    let addr = server(seen.clone()).await;
    let proxy = TestProxy::start(&format!(
        "services:\n  echo:\n    protocol: h2c\n    resolver:\n      static:\n        instances:\n          - address: \"{addr}\"\n"
    ))
    .await;
    (seen, proxy)
}

fn path(p: &'static str) -> PathAndQuery {
    PathAndQuery::from_static(p)
}

#[tokio::test]
async fn unary_and_streaming_calls_with_their_status() {
    within(LIMIT, async {
        let (seen, proxy) = setup().await;
        let mut c = client(&proxy, "echo").await;
        c.ready().await.unwrap();
        let r = c
            .unary(
                Request::new("hi".to_string()),
                path("/test.Echo/Unary"),
                Text,
            )
            .await
            .unwrap();
        assert_eq!(r.into_inner(), "unary:hi");
        // An error status comes back in the trailers, message intact.
        let e = c
            .unary(
                Request::new("fail".to_string()),
                path("/test.Echo/Unary"),
                Text,
            )
            .await
            .unwrap_err();
        assert_eq!(
            (e.code(), e.message()),
            (Code::FailedPrecondition, "asked to fail")
        );
        // Server streaming.
        let mut s = c
            .server_streaming(
                Request::new("5".to_string()),
                path("/test.Echo/ServerStream"),
                Text,
            )
            .await
            .unwrap()
            .into_inner();
        let mut got = Vec::new();
        while let Some(m) = s.message().await.unwrap() {
            got.push(m);
        }
        assert_eq!(got, (0..5).map(|i| format!("item {i}")).collect::<Vec<_>>());
        // Client streaming.
        let parts = futures_util::stream::iter(["a", "b", "c"].map(String::from));
        let r = c
            .client_streaming(Request::new(parts), path("/test.Echo/ClientStream"), Text)
            .await
            .unwrap();
        assert_eq!(r.into_inner(), "a+b+c");
        assert_eq!(
            seen.calls.load(Ordering::SeqCst),
            4,
            "every call reached the server"
        );
    })
    .await;
}

#[tokio::test]
async fn bidirectional_streaming_moves_both_ways_at_once() {
    within(LIMIT, async {
        let (_seen, proxy) = setup().await;
        let mut c = client(&proxy, "echo").await;
        let (tx, rx) = mpsc::channel::<String>(1);
        let outbound =
            futures_util::stream::unfold(
                rx,
                |mut rx| async move { rx.recv().await.map(|m| (m, rx)) },
            );
        let mut replies = c
            .streaming(Request::new(outbound), path("/test.Echo/Bidi"), Text)
            .await
            .unwrap()
            .into_inner();
        // Each reply must arrive before the next message is sent: nothing is buffered whole.
        for i in 0..10 {
            tx.send(format!("m{i}")).await.unwrap();
            let reply = replies.message().await.unwrap().unwrap();
            assert_eq!(reply, format!("echo:m{i}"));
        }
        drop(tx);
        assert_eq!(
            replies.message().await.unwrap(),
            None,
            "the call ends with an OK status"
        );
    })
    .await;
}

#[tokio::test]
async fn a_deadline_exceeded_comes_back_and_a_cancelled_call_reaches_the_server() {
    within(LIMIT, async {
        let (seen, proxy) = setup().await;
        let mut c = client(&proxy, "echo").await;
        let mut req = Request::new("slow".to_string());
        req.set_timeout(Duration::from_millis(100));
        let e = c
            .unary(req, path("/test.Echo/Slow"), Text)
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::DeadlineExceeded, "{e:?}");

        let mut s = c
            .server_streaming(
                Request::new(String::new()),
                path("/test.Echo/Endless"),
                Text,
            )
            .await
            .unwrap()
            .into_inner();
        assert_eq!(s.message().await.unwrap().unwrap(), "tick 0");
        let m = metrics(&proxy).await;
        assert_eq!(
            metric(
                &m,
                "waypost_forward_upstream_h2_streams",
                &[("service", "echo")]
            ),
            Some(1.0),
            "{m}"
        );
        // The app gives up on the call: its stream is reset, and so is the upstream's.
        drop(s);
        let seen2 = seen.clone();
        eventually(SETTLE, || {
            let cancelled = seen2.cancelled.load(Ordering::SeqCst);
            async move { cancelled }
        })
        .await;
        let admin = proxy.admin();
        eventually(SETTLE, || {
            let admin = admin.clone();
            async move {
                let m = support::get(&format!("{admin}/metrics"), &[])
                    .await
                    .unwrap()
                    .text();
                metric(
                    &m,
                    "waypost_forward_upstream_h2_streams",
                    &[("service", "echo")],
                ) == Some(0.0)
            }
        })
        .await;
    })
    .await;
}
