//! Writing a response to the app over HTTP/1: the head (already encoded from the response's
//! framing decision) goes out with the first piece of the body, the body is streamed framed as
//! decided (as it came, or chunked again by waypost), and the request body keeps moving while
//! the app's socket is written — both directions of an exchange in the request's own task.

use std::future::Future as _;
use std::io::{self, IoSlice};
use std::pin::pin;
use std::task::Poll;

use http_body_util::BodyExt;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::forward::client::{Body, BodyError, ProtoError, Source, SourceError};
use crate::forward::h1::framing::Framing;
use crate::forward::h1::write::{chunk_size, last_chunk};

/// Bodies up to this size are copied behind the response head and sent with it in one piece.
pub(super) const SMALL_BODY: usize = 4 * 1024;

/// Why writing a response stopped; `bool`: some of it had gone to the app.
pub(super) enum Stopped {
    Request(SourceError, bool),
    Upstream(ProtoError, bool),
    App,
}

/// Streams the response body to the app behind its head (in `out`), framed as `framing`,
/// moving the request body meanwhile. The head goes out with the first piece of the body.
pub(super) async fn respond<U: Source + Unpin, W: AsyncWrite + Unpin>(
    wr: &mut W,
    out: &mut Vec<u8>,
    body: &mut Body<U>,
    framing: Framing,
    trailers: bool,
) -> Result<(), Stopped> {
    let mut head_out = true;
    let mut size = [0u8; 18];
    loop {
        let frame = match body.frame().await {
            None => break,
            Some(Ok(frame)) => frame,
            Some(Err(BodyError::Request(e))) => return Err(Stopped::Request(e, !head_out)),
            Some(Err(BodyError::Upstream(e))) => {
                tracing::debug!(error = %e, "upstream response body failed");
                return Err(Stopped::Upstream(e, !head_out));
            }
        };
        let head: &[u8] = if head_out { out } else { &[] };
        match frame.into_data() {
            Ok(data) if framing == Framing::Chunked => {
                let prefix = chunk_size(&mut size, data.len());
                write_driving(wr, &mut [head, prefix, &data, b"\r\n"], body).await?;
            }
            // A small body joins the head: one `send`, no `writev`.
            Ok(data) if head_out && data.len() <= SMALL_BODY => {
                out.extend_from_slice(&data);
                write_driving(wr, &mut [out], body).await?;
            }
            Ok(data) => write_driving(wr, &mut [head, &data], body).await?,
            Err(frame) => {
                // Trailers come last, after the last chunk (only chunked bodies have them).
                let Ok(fields) = frame.into_trailers() else {
                    continue;
                };
                if framing != Framing::Chunked {
                    continue;
                }
                let mut last = Vec::with_capacity(64);
                last_chunk(&mut last, trailers.then_some(&fields));
                write_driving(wr, &mut [head, &last], body).await?;
                return Ok(());
            }
        }
        head_out = false;
    }
    let last: &[u8] = if framing == Framing::Chunked {
        b"0\r\n\r\n"
    } else {
        &[]
    };
    let head: &[u8] = if head_out { out } else { &[] };
    write_driving(wr, &mut [head, last], body).await
}

/// Writes `parts` to the app while the request body keeps moving.
async fn write_driving<U: Source + Unpin, W: AsyncWrite + Unpin>(
    wr: &mut W,
    parts: &mut [&[u8]],
    body: &mut Body<U>,
) -> Result<(), Stopped> {
    if !body.uploading() {
        return write_all(wr, parts).await.map_err(|_| Stopped::App);
    }
    let mut write = pin!(write_all(wr, parts));
    std::future::poll_fn(|cx| {
        if let Err(e) = body.poll_upload(cx) {
            return Poll::Ready(Err(Stopped::Request(e, true)));
        }
        write.as_mut().poll(cx).map_err(|_| Stopped::App)
    })
    .await
}

/// Writes every byte of `parts`, in as few system calls as the kernel allows (one, normally):
/// a plain `send` for one part, `writev` for several.
pub(super) async fn write_all<W: AsyncWrite + Unpin>(
    stream: &mut W,
    parts: &mut [&[u8]],
) -> io::Result<()> {
    let mut slices: [IoSlice<'_>; 4] = [IoSlice::new(&[]); 4];
    let n = parts.len().min(4);
    for (slot, part) in slices.iter_mut().zip(parts.iter()) {
        *slot = IoSlice::new(part);
    }
    let mut slices = &mut slices[..n];
    IoSlice::advance_slices(&mut slices, 0);
    while !slices.is_empty() {
        let n = match slices {
            [one] => stream.write(one).await?,
            _ => stream.write_vectored(slices).await?,
        };
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut slices, n);
    }
    Ok(())
}
