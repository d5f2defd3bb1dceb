//! The app's side of a case: send the pieces (pausing between them, waiting for `100
//! Continue` or half-closing where the case says), read and parse every response, and see
//! whether the proxy closes the connection. Every read is bounded; an exchange never hangs.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::model::Piece;
use crate::support::recorder::strict::{self, Framing, Step};

/// Pause between two pieces, so the proxy reads them separately.
const GAP: Duration = Duration::from_millis(30);
/// After the expected responses, how long the app connection must stay quiet (no extra bytes:
/// an extra response would be a desync) before a kept-alive case is over.
pub const QUIET: Duration = Duration::from_millis(300);
/// After the expected responses, how long the proxy has to close a connection it must close.
const CLOSE_WAIT: Duration = Duration::from_secs(3);
/// Bound on a whole exchange.
const LIMIT: Duration = Duration::from_secs(8);

/// One response as the app read it.
#[derive(Debug, Clone)]
pub struct Resp {
    /// The status code.
    pub status: u16,
    /// The fields, in order.
    pub fields: Vec<(String, String)>,
    /// The decoded body.
    pub body: Vec<u8>,
    /// Interim (1xx) statuses that came before it.
    pub interim: Vec<u16>,
}

impl Resp {
    /// The first value of `name`, if any.
    pub fn field(&self, name: &str) -> Option<&str> {
        strict::values(&self.fields, name).first().copied()
    }

    /// Status, `x-waypost-error` and the start of the body, for reports.
    pub fn show(&self) -> String {
        let err = self.field("x-waypost-error").unwrap_or("-");
        format!("{} [{err}] {:?}", self.status, shorten(&self.body, 60))
    }
}

/// What the app saw.
#[derive(Debug, Default)]
pub struct Seen {
    /// Final responses, in order.
    pub responses: Vec<Resp>,
    /// Whether the proxy closed (or reset) the connection.
    pub eof: bool,
    /// What went wrong on the app's side (unparsable bytes, no answer in time).
    pub trouble: Vec<String>,
}

/// Bytes shown in a report: printable ASCII as is, the rest escaped, cut at `max`.
pub fn shorten(b: &[u8], max: usize) -> String {
    let text: String = b
        .iter()
        .flat_map(|&c| std::ascii::escape_default(c))
        .map(char::from)
        .collect();
    if text.len() > max {
        format!("{}…", &text[..max])
    } else {
        text
    }
}

/// Parses one response at the start of `buf`; `head` when it answers a HEAD request, `eof`
/// when no more bytes will come (a close-delimited body ends there).
fn response(buf: &[u8], head: bool, eof: bool) -> Step<(Resp, usize)> {
    let (line, next) = match strict::line(buf, 0) {
        None => return Step::Partial,
        Some(Err(e)) => return Step::Bad(e),
        Some(Ok(l)) => l,
    };
    let text = String::from_utf8_lossy(line);
    let mut parts = text.splitn(3, ' ');
    let (version, code) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let status = match code.parse::<u16>() {
        Ok(s) if (version == "HTTP/1.1" || version == "HTTP/1.0") && code.len() == 3 => s,
        _ => return Step::Bad(format!("bad status line {text:?}")),
    };
    let (fields, at) = match strict::fields(buf, next) {
        Step::Partial => return Step::Partial,
        Step::Bad(e) => return Step::Bad(e),
        Step::Done(f) => f,
    };
    let resp = |body: Vec<u8>| Resp {
        status,
        fields: fields.clone(),
        body,
        interim: Vec::new(),
    };
    if (100..200).contains(&status) || head || status == 204 || status == 304 {
        return Step::Done((resp(Vec::new()), at));
    }
    let get = |n: &str| {
        fields
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(n))
            .count()
    };
    let framing = if get("transfer-encoding") > 0 {
        Some(Framing::Chunked)
    } else if let Some((_, v)) = fields
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
    {
        match v.parse() {
            Ok(n) => Some(Framing::Length(n)),
            Err(_) => return Step::Bad(format!("response content-length {v:?}")),
        }
    } else {
        None
    };
    match framing {
        Some(f) => match strict::body(f, &buf[at..]) {
            Step::Partial => Step::Partial,
            Step::Bad(e) => Step::Bad(e),
            Step::Done(b) => Step::Done((resp(b.data), at + b.len)),
        },
        None if eof => Step::Done((resp(buf[at..].to_vec()), buf.len())),
        None => Step::Partial,
    }
}

/// Sends `send` to `addr` and reads responses until `finals` final responses came and then
/// either the connection closed (`close`) or it stayed quiet for `quiet`. `heads[i]` tells
/// whether final response `i` answers a HEAD request.
pub async fn exchange(
    addr: SocketAddr,
    send: &[Piece],
    heads: &[bool],
    finals: usize,
    close: bool,
    quiet: Duration,
) -> Seen {
    let mut seen = Seen::default();
    let stream = match tokio::time::timeout(LIMIT, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        other => {
            seen.trouble
                .push(format!("cannot connect to {addr}: {other:?}"));
            return seen;
        }
    };
    let _ = stream.set_nodelay(true);
    let (mut rd, mut wr) = stream.into_split();
    let continued = Arc::new(Notify::new());
    let sender = tokio::spawn({
        let (send, continued) = (send.to_vec(), continued.clone());
        async move {
            let mut first = true;
            for piece in send {
                match piece {
                    Piece::Bytes(b) => {
                        if !first {
                            tokio::time::sleep(GAP).await;
                        }
                        first = false;
                        if wr.write_all(&b).await.is_err() {
                            break;
                        }
                    }
                    Piece::Await100 => {
                        let _ = tokio::time::timeout(Duration::from_secs(2), continued.notified())
                            .await;
                    }
                    Piece::Shutdown => {
                        let _ = wr.shutdown().await;
                    }
                }
            }
            // Handed back so the sending side stays open until the case is over (dropping it
            // would half-close the connection).
            wr
        }
    });
    let limit = Instant::now() + LIMIT;
    let (mut buf, mut used, mut interim) = (Vec::new(), 0, Vec::new());
    let mut tmp = vec![0u8; 64 * 1024];
    let mut close_by = None;
    loop {
        loop {
            let head = heads.get(seen.responses.len()).copied().unwrap_or(false);
            match response(&buf[used..], head, seen.eof) {
                Step::Partial => break,
                Step::Bad(e) => {
                    seen.trouble.push(format!(
                        "unparsable response bytes ({e}): {}",
                        shorten(&buf[used..], 120)
                    ));
                    used = buf.len();
                    break;
                }
                Step::Done((mut r, n)) => {
                    used += n;
                    if (100..200).contains(&r.status) {
                        interim.push(r.status);
                        if r.status == 100 {
                            continued.notify_one();
                        }
                    } else {
                        r.interim = std::mem::take(&mut interim);
                        seen.responses.push(r);
                    }
                }
            }
        }
        if seen.eof {
            if used < buf.len() {
                seen.trouble.push(format!(
                    "incomplete response at close: {}",
                    shorten(&buf[used..], 120)
                ));
            }
            break;
        }
        let until = if seen.responses.len() >= finals {
            if close {
                *close_by.get_or_insert_with(|| (Instant::now() + CLOSE_WAIT).min(limit))
            } else {
                (Instant::now() + quiet).min(limit)
            }
        } else {
            limit
        };
        match tokio::time::timeout_at(until, rd.read(&mut tmp)).await {
            Err(_) => {
                if seen.responses.len() < finals {
                    seen.trouble.push(format!(
                        "no complete answer within {LIMIT:?}; pending bytes: {}",
                        shorten(&buf[used..], 120)
                    ));
                }
                break;
            }
            Ok(Ok(0)) | Ok(Err(_)) => seen.eof = true,
            Ok(Ok(n)) => buf.extend_from_slice(&tmp[..n]),
        }
    }
    sender.abort();
    seen
}
