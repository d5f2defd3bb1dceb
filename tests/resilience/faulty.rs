//! An upstream whose behaviour the test switches while it runs: answers normally, answers 503
//! at once, answers slowly, or accepts and never answers (a black hole); and one that can be
//! killed outright — listener and every connection closed, as when its process dies.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinSet;

/// How a [`Faulty`] upstream answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Mode {
    /// 200, `x-instance: <name>`, the request body's length as the body.
    Ok = 0,
    /// 503 at once.
    Fail = 1,
    /// Reads the request, never answers.
    BlackHole = 2,
    /// 200 after 40 ms.
    Slow = 3,
    /// 503 for PUT, POST and GET with a body; 200 otherwise.
    FailWrites = 4,
}

/// A switchable upstream on a free loopback port. Stops (closing every connection) when
/// killed or dropped.
pub struct Faulty {
    pub addr: SocketAddr,
    pub name: String,
    pub hits: Arc<AtomicUsize>,
    mode: Arc<AtomicU8>,
    stop: Option<oneshot::Sender<()>>,
}

impl Faulty {
    pub async fn start(name: &str, mode: Mode) -> Faulty {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let mode = Arc::new(AtomicU8::new(mode as u8));
        let (tx, mut rx) = oneshot::channel::<()>();
        let (n, h, m) = (Arc::<str>::from(name), hits.clone(), mode.clone());
        tokio::spawn(async move {
            // Dropped with this task: every connection task is aborted, its socket closed.
            let mut conns = JoinSet::new();
            loop {
                let stream = tokio::select! {
                    _ = &mut rx => break,
                    r = listener.accept() => match r { Ok((s, _)) => s, Err(_) => continue },
                };
                let (name, h, m) = (n.clone(), h.clone(), m.clone());
                conns.spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let (name, h, m) = (name.clone(), h.clone(), m.clone());
                        async move {
                            h.fetch_add(1, Ordering::Relaxed);
                            let method = req.method().clone();
                            let body = req.into_body().collect().await.map(|b| b.to_bytes());
                            let len = body.map_or(0, |b| b.len());
                            let status = match m.load(Ordering::Relaxed) {
                                1 => StatusCode::SERVICE_UNAVAILABLE,
                                2 => std::future::pending().await,
                                3 => {
                                    tokio::time::sleep(Duration::from_millis(40)).await;
                                    StatusCode::OK
                                }
                                4 if method == http::Method::PUT
                                    || method == http::Method::POST =>
                                {
                                    StatusCode::SERVICE_UNAVAILABLE
                                }
                                _ => StatusCode::OK,
                            };
                            let mut resp = Response::new(Full::new(Bytes::from(len.to_string())));
                            *resp.status_mut() = status;
                            resp.headers_mut()
                                .insert("x-instance", name.parse().unwrap());
                            Ok::<_, std::convert::Infallible>(resp)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Faulty {
            addr,
            name: name.to_string(),
            hits,
            mode,
            stop: Some(tx),
        }
    }

    pub fn set(&self, mode: Mode) {
        self.mode.store(mode as u8, Ordering::Relaxed);
    }

    /// Closes the listener and every connection: the port refuses from now on.
    pub fn kill(&mut self) {
        self.stop.take();
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::Relaxed)
    }
}
