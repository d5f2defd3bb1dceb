//! HTTP/2 with prior knowledge (h2c) on a forwarding listener, served by hyper's h2 server with
//! explicit inbound limits (`client.http2`): concurrent streams, header list size, and the
//! rapid-reset guards (CVE-2023-44487). Each request goes through the same walk as an HTTP/1
//! one ([`super::super::Proxy::handle_h2`]); its body streams to the upstream as a [`Source`].

use std::task::{Context, Poll};

use http_body::Body as _;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};

use super::timer::Drain;
use super::{Settings, Shared};
use crate::forward::client::{Piece, Source, SourceError};
use crate::forward::h1::fields::trailer_allowed;

/// hyper's h2 server, configured once per listener.
pub(super) type Builder = hyper::server::conn::http2::Builder<TokioExecutor>;

/// The h2 server `settings` describe.
pub(super) fn builder(settings: &Settings) -> Builder {
    let h2 = &settings.http2;
    let mut b = Builder::new(TokioExecutor::new());
    b.timer(TokioTimer::new())
        .max_concurrent_streams(h2.max_concurrent_streams)
        .max_header_list_size(settings.http2_max_header_list_size as u32)
        .max_pending_accept_reset_streams(h2.max_pending_accept_reset_streams)
        .max_local_error_reset_streams(h2.max_local_error_reset_streams)
        .keep_alive_interval(h2.keep_alive_interval.map(|d| d.0))
        .keep_alive_timeout(h2.keep_alive_timeout.0);
    b
}

/// Serves the HTTP/2 connection `stream` (h2c, or h2 over TLS) until it closes; on drain,
/// hyper's graceful shutdown (GOAWAY, in-flight streams finish).
pub(super) async fn serve<S>(stream: S, shared: &Shared, mut drain: Drain)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (proxy, kind) = (shared.proxy.clone(), shared.kind.clone());
    let service = hyper::service::service_fn(move |req| {
        let (proxy, kind) = (proxy.clone(), kind.clone());
        async move { Ok::<_, std::convert::Infallible>(proxy.handle_h2(req, &kind).await) }
    });
    let conn = shared.h2.serve_connection(TokioIo::new(stream), service);
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        res = conn.as_mut() => if let Err(e) = res {
            tracing::debug!(error = %e, "h2 connection ended with error");
        },
        _ = drain.fired() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// An HTTP/2 request body as the upstream client reads it.
pub struct H2Body(pub Incoming);

impl Source for H2Body {
    fn poll_piece(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Piece>, SourceError>> {
        loop {
            let frame = match std::task::ready!(std::pin::Pin::new(&mut self.0).poll_frame(cx)) {
                None => return Poll::Ready(Ok(None)),
                Some(Err(e)) => return Poll::Ready(Err(SourceError::Io(std::io::Error::other(e)))),
                Some(Ok(frame)) => frame,
            };
            match frame.into_data() {
                Ok(data) => return Poll::Ready(Ok(Some(Piece::Data(data)))),
                Err(frame) => {
                    let Ok(mut trailers) = frame.into_trailers() else {
                        continue;
                    };
                    let refused: Vec<_> = trailers
                        .keys()
                        .filter(|n| !trailer_allowed(n.as_str().as_bytes()))
                        .cloned()
                        .collect();
                    for name in refused {
                        trailers.remove(name);
                    }
                    if trailers.is_empty() {
                        continue;
                    }
                    return Poll::Ready(Ok(Some(Piece::Trailers(trailers))));
                }
            }
        }
    }
}
