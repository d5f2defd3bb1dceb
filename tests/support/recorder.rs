//! The recording upstream of the conformance suite: raw TCP on a loopback port that keeps every
//! byte each connection brought, parses each request with the strict parser in [`strict`], and
//! answers it with a canned `200` naming the request (its target in the body and in
//! `x-recorder-target`), optionally after a delay, so whoever reads the answer can tell which
//! request it belongs to.
//!
//! Anything the strict parser refuses is a *violation*: recorded, answered with a `400` marked
//! `x-recorder-violation`, and the connection closed, since nothing after it can be framed. So a
//! proxy that lets an ambiguous request through shows up as a violation, and one that smuggles a
//! second request shows up as an extra recorded request. Unlike [`super::raw::RawUpstream`]
//! (scripted answers, lenient reading, for the client side's tests) it answers every request
//! the same way and reads as strictly as it can.

pub mod strict;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use strict::{Body, Framing, Head, Step};

/// How long one write to a proxy may take.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Where recorders listen: a loopback address of their own, so the ports they take can never be
/// ones a test picked on 127.0.0.1 for a proxy it is about to start (Linux routes all of
/// 127.0.0.0/8 to loopback).
pub const IP: &str = "127.0.0.2";

/// One request as the recorder received and decoded it.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// The connection it came on (1 for the first accepted).
    pub conn: usize,
    /// Its head.
    pub head: Head,
    /// Its framing, as [`strict::framing`] decided.
    pub framing: Framing,
    /// Its decoded body and trailers.
    pub body: Body,
}

/// Everything one connection brought.
#[derive(Debug, Clone, Default)]
pub struct ConnLog {
    /// 1 for the first accepted connection.
    pub id: usize,
    /// Every byte received, in order.
    pub bytes: Vec<u8>,
    /// Complete requests read.
    pub requests: usize,
    /// The violation that ended the connection, if one did.
    pub violation: Option<String>,
    /// Whether the peer closed (or reset) the connection.
    pub eof: bool,
    /// Bytes taken by complete requests (or up to a violation).
    pub used: usize,
}

impl ConnLog {
    /// Bytes received after the last complete request: the start of a request not (yet)
    /// complete — one that never will be once [`ConnLog::eof`] is set.
    pub fn pending(&self) -> usize {
        self.bytes.len() - self.used
    }
}

#[derive(Default)]
struct State {
    conns: Vec<ConnLog>,
    requests: Vec<Recorded>,
}

/// A running recorder. Stops, dropping its connections, when dropped.
pub struct Recorder {
    /// Where it listens.
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    accepted: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Recorder {
    /// A recorder answering at once.
    pub async fn start() -> Recorder {
        Recorder::with_delay(Duration::ZERO).await
    }

    /// A recorder that waits `delay` before answering each request (a slow upstream).
    pub async fn with_delay(delay: Duration) -> Recorder {
        let listener = TcpListener::bind((IP, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State::default()));
        let accepted = Arc::new(AtomicUsize::new(0));
        let (st, acc) = (state.clone(), accepted.clone());
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                let id = acc.fetch_add(1, Ordering::SeqCst) + 1;
                st.lock().unwrap().conns.push(ConnLog {
                    id,
                    ..ConnLog::default()
                });
                conns.spawn(serve(stream, id, delay, st.clone()));
            }
        });
        Recorder {
            addr,
            state,
            accepted,
            task,
        }
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Every complete request, in the order they completed.
    pub fn requests(&self) -> Vec<Recorded> {
        self.state.lock().unwrap().requests.clone()
    }

    /// Every connection's log, in the order they were accepted.
    pub fn conns(&self) -> Vec<ConnLog> {
        self.state.lock().unwrap().conns.clone()
    }

    /// Bytes received on all connections.
    pub fn bytes(&self) -> usize {
        let state = self.state.lock().unwrap();
        state.conns.iter().map(|c| c.bytes.len()).sum()
    }

    /// Every violation, as `conn N: what`.
    pub fn violations(&self) -> Vec<String> {
        let state = self.state.lock().unwrap();
        state
            .conns
            .iter()
            .filter_map(|c| c.violation.as_ref().map(|v| format!("conn {}: {v}", c.id)))
            .collect()
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        // Aborting the accept task drops its JoinSet, which aborts every connection task.
        self.task.abort();
    }
}

/// Where a connection is in its current request.
enum Want {
    Head,
    Body(Head, Framing),
}

async fn serve(mut stream: TcpStream, id: usize, delay: Duration, state: Arc<Mutex<State>>) {
    let _ = stream.set_nodelay(true);
    let log = |f: &mut dyn FnMut(&mut ConnLog)| {
        let mut s = state.lock().unwrap();
        if let Some(c) = s.conns.iter_mut().find(|c| c.id == id) {
            f(c);
        }
    };
    let mut buf = Vec::new();
    let mut used = 0;
    let mut want = Want::Head;
    // Whether `100 Continue` went out for the current request.
    let mut continued = false;
    let mut tmp = vec![0u8; 64 * 1024];
    loop {
        // Take every complete request out of what has arrived.
        loop {
            let step = match &want {
                Want::Head => match strict::head(&buf[used..]) {
                    Step::Partial => break,
                    Step::Bad(e) => Err(e),
                    Step::Done(head) => match strict::framing(&head) {
                        Err(e) => Err(e),
                        Ok(framing) => {
                            let body_started = buf.len() > used + head.len;
                            let expects = head
                                .all("expect")
                                .iter()
                                .any(|v| v.eq_ignore_ascii_case("100-continue"));
                            if expects && framing != Framing::None && !body_started && !continued {
                                continued = true;
                                if write(&mut stream, b"HTTP/1.1 100 Continue\r\n\r\n").await {
                                    return;
                                }
                            }
                            want = Want::Body(head, framing);
                            Ok(None)
                        }
                    },
                },
                Want::Body(head, framing) => {
                    match strict::body(*framing, &buf[used + head.len..]) {
                        Step::Partial => break,
                        Step::Bad(e) => Err(e),
                        Step::Done(body) => Ok(Some(body)),
                    }
                }
            };
            match step {
                Ok(None) => {}
                Ok(Some(body)) => {
                    let Want::Body(head, framing) = std::mem::replace(&mut want, Want::Head) else {
                        unreachable!("a body is read only after its head")
                    };
                    continued = false;
                    used += head.len + body.len;
                    let answer = answer(&head, id);
                    let close = closes(&head);
                    {
                        let mut s = state.lock().unwrap();
                        if let Some(c) = s.conns.iter_mut().find(|c| c.id == id) {
                            c.requests += 1;
                            c.used = used;
                        }
                        s.requests.push(Recorded {
                            conn: id,
                            head,
                            framing,
                            body,
                        });
                    }
                    if !delay.is_zero() {
                        tokio::time::sleep(delay).await;
                    }
                    if write(&mut stream, &answer).await || close {
                        return;
                    }
                }
                Err(e) => {
                    log(&mut |c| {
                        c.violation = Some(e.clone());
                        c.used = c.bytes.len();
                    });
                    let text = format!("recorder: {e}\n");
                    let resp = format!(
                        "HTTP/1.1 400 Bad Request\r\ncontent-length: {}\r\n\
                         x-recorder-violation: yes\r\nconnection: close\r\n\r\n{text}",
                        text.len()
                    );
                    write(&mut stream, resp.as_bytes()).await;
                    return;
                }
            }
        }
        match stream.read(&mut tmp).await {
            Ok(n @ 1..) => {
                buf.extend_from_slice(&tmp[..n]);
                log(&mut |c| c.bytes.extend_from_slice(&tmp[..n]));
            }
            _ => {
                log(&mut |c| c.eof = true);
                return;
            }
        }
    }
}

/// Writes `bytes`; `true` when the connection is gone.
async fn write(stream: &mut TcpStream, bytes: &[u8]) -> bool {
    !matches!(
        tokio::time::timeout(WRITE_TIMEOUT, stream.write_all(bytes)).await,
        Ok(Ok(()))
    )
}

/// Whether the connection closes after answering `head` (HTTP/1.0 without keep-alive, or
/// `Connection: close`).
fn closes(head: &Head) -> bool {
    let conn = head.elements("connection");
    let has = |t: &str| conn.iter().any(|c| c.eq_ignore_ascii_case(t));
    has("close") || (head.version == "HTTP/1.0" && !has("keep-alive"))
}

/// The canned answer to `head`: a 200 whose body (none for HEAD) and `x-recorder-target` are
/// the request target as received, plus the connection it came on.
fn answer(head: &Head, conn: usize) -> Vec<u8> {
    let target = &head.target;
    let mut out = format!(
        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nx-recorder-target: {target}\r\n\
         x-recorder-conn: {conn}\r\n",
        target.len()
    );
    if closes(head) {
        out.push_str("connection: close\r\n");
    }
    out.push_str("\r\n");
    if head.method != "HEAD" {
        out.push_str(target);
    }
    out.into_bytes()
}
