//! A request body streamed to the upstream in a task of its own, beside the response: an
//! upstream may answer (and stream its answer) before it has read the whole request, and an
//! echo-like service needs both directions moving at once. Requests without a body, the common
//! case, never come here.

use std::future::Future as _;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use http_body_util::BodyExt;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::task::JoinHandle;

use super::Framing;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Chunks up to this size are copied next to their size line and written in one go; larger
/// ones are written as three slices in one vectored write.
const COALESCE: usize = 8 * 1024;

/// The task writing a request body. Dropping it stops the upload (and so closes the
/// connection once the read half goes too).
pub struct Upload(JoinHandle<Result<OwnedWriteHalf, BoxError>>);

impl Upload {
    /// Starts writing `body` to `wr`, framed as `framing` ([`Framing::Length`] or
    /// [`Framing::Chunked`]).
    pub fn spawn<B>(wr: OwnedWriteHalf, body: B, framing: Framing) -> Self
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        Upload(tokio::spawn(async move {
            let result = write_body(wr, body, framing).await;
            if let Err(e) = &result {
                tracing::debug!(error = %e, "request body upload stopped");
            }
            result
        }))
    }

    /// The write half back, if the whole body has been written.
    pub fn finished(mut self) -> Option<OwnedWriteHalf> {
        if !self.0.is_finished() {
            return None;
        }
        // A finished task's output is ready at once, whoever polls: no waker is needed.
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match std::pin::Pin::new(&mut self.0).poll(&mut cx) {
            Poll::Ready(Ok(Ok(wr))) => Some(wr),
            _ => None,
        }
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn write_body<B>(
    mut wr: OwnedWriteHalf,
    body: B,
    framing: Framing,
) -> Result<OwnedWriteHalf, BoxError>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let mut body = std::pin::pin!(body);
    let mut sent = 0u64;
    let mut trailers = None;
    loop {
        let frame = match body.frame().await {
            None => break,
            Some(frame) => frame.map_err(Into::into)?,
        };
        let data = match frame.into_data() {
            Ok(data) => data,
            Err(frame) => {
                trailers = frame.into_trailers().ok();
                continue;
            }
        };
        if data.is_empty() {
            continue;
        }
        sent += data.len() as u64;
        match framing {
            Framing::Length(n) if sent > n => {
                return Err("request body longer than its length".into())
            }
            Framing::Chunked => write_chunk(&mut wr, data).await?,
            _ => wr.write_all(&data).await?,
        }
    }
    match framing {
        Framing::Length(n) if sent != n => {
            return Err("request body shorter than its length".into())
        }
        Framing::Chunked => {
            let mut last = b"0\r\n".to_vec();
            for (name, value) in trailers.iter().flatten() {
                last.extend_from_slice(name.as_str().as_bytes());
                last.extend_from_slice(b": ");
                last.extend_from_slice(value.as_bytes());
                last.extend_from_slice(b"\r\n");
            }
            last.extend_from_slice(b"\r\n");
            wr.write_all(&last).await?;
        }
        _ => {}
    }
    Ok(wr)
}

/// One chunk: size line, data, CRLF.
async fn write_chunk(wr: &mut OwnedWriteHalf, data: Bytes) -> std::io::Result<()> {
    let size = format!("{:x}\r\n", data.len());
    if data.len() <= COALESCE {
        let mut chunk = Vec::with_capacity(size.len() + data.len() + 2);
        chunk.extend_from_slice(size.as_bytes());
        chunk.extend_from_slice(&data);
        chunk.extend_from_slice(b"\r\n");
        return wr.write_all(&chunk).await;
    }
    let mut parts = Bytes::from(size)
        .chain(data)
        .chain(Bytes::from_static(b"\r\n"));
    wr.write_all_buf(&mut parts).await
}
