//! A scripted raw-TCP HTTP/1.1 upstream for protocol tests: it reads each request off the wire
//! itself (head, then the body per `Content-Length` or chunked framing), records the exact
//! bytes, and writes back whatever bytes the test's script returns — in separate pieces with
//! small pauses, so the proxy sees split reads — instead of a well-behaved HTTP server's answer.
//! Loopback only; every read and write is bounded by a timeout, so a confused peer cannot hang
//! a test.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::Request;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::{empty, send, AppClient, Got, TestBody, TestProxy};

/// How long any single read or write on an upstream connection may take.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest request head accepted (the proxy never sends anything near this).
const MAX_HEAD: usize = 256 * 1024;

/// One request as the upstream received it.
#[derive(Debug, Clone, Default)]
pub struct RawRequest {
    /// Which accepted connection it came on (1 for the first).
    pub conn: usize,
    /// Its position among all requests this upstream read (1 for the first).
    pub seq: usize,
    /// The request line, e.g. `POST /x HTTP/1.1`.
    pub line: String,
    /// Header `(name, value)` pairs in wire order; names lowercased.
    pub headers: Vec<(String, String)>,
    /// Every byte read for this request: head and body framing exactly as sent.
    pub raw: Vec<u8>,
    /// The raw bytes after the head (body with its framing); empty when the body was not read.
    pub raw_body: Vec<u8>,
    /// The decoded body.
    pub body: Vec<u8>,
    /// A framing violation found while reading the body (chunked syntax, bad length...).
    pub framing_error: Option<String>,
}

impl RawRequest {
    /// The method from the request line.
    pub fn method(&self) -> &str {
        self.line.split(' ').next().unwrap_or("")
    }

    /// Every value of header `name` (case-insensitive).
    pub fn all(&self, name: &str) -> Vec<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .filter(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The first value of header `name`, if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.all(name).into_iter().next()
    }

    /// The head (request line and headers) as text, for assertion messages.
    pub fn head_text(&self) -> String {
        let end = self.raw.len() - self.raw_body.len();
        String::from_utf8_lossy(&self.raw[..end]).into_owned()
    }
}

/// What the upstream does with one request.
#[derive(Debug, Clone)]
pub struct Reply {
    /// Byte pieces written in order, each flushed separately with [`Reply::gap`] between them.
    pub chunks: Vec<Vec<u8>>,
    /// Close the connection (FIN, then drop) after writing.
    pub close: bool,
    /// Read the request body before answering. When false the answer goes out right after
    /// the head, the body is never read, and the connection is closed afterwards.
    pub read_body: bool,
    /// Pause between pieces.
    pub gap: Duration,
    /// When closing: keep the connection open this long first (FIN delayed, as a slow server
    /// that announced `Connection: close` does), counting any bytes the proxy still sends
    /// (see [`RawUpstream::late_bytes`]).
    pub linger: Duration,
    /// When closing: after the FIN, read and discard whatever the peer still sends until it
    /// closes too (at most 5 s) — a graceful "lingering close", so an unread request body
    /// does not turn the close into a reset. Without it the socket is dropped at once, and
    /// unread bytes make the kernel send RST.
    pub drain: bool,
}

impl Reply {
    /// Writes `chunks` and keeps the connection open for the next request.
    pub fn keep(chunks: Vec<Vec<u8>>) -> Reply {
        Reply {
            chunks,
            close: false,
            read_body: true,
            gap: Duration::from_millis(3),
            linger: Duration::ZERO,
            drain: false,
        }
    }

    /// Writes `chunks`, then closes the connection.
    pub fn close(chunks: Vec<Vec<u8>>) -> Reply {
        Reply {
            close: true,
            ..Reply::keep(chunks)
        }
    }

    /// The whole of `bytes` as one piece, connection kept open.
    pub fn whole(bytes: impl AsRef<[u8]>) -> Reply {
        Reply::keep(vec![bytes.as_ref().to_vec()])
    }
}

/// Splits `bytes` into pieces of `n` bytes (the last may be shorter).
pub fn pieces(bytes: impl AsRef<[u8]>, n: usize) -> Vec<Vec<u8>> {
    bytes.as_ref().chunks(n).map(<[u8]>::to_vec).collect()
}

/// Splits `bytes` at the given offsets (ascending, within bounds).
pub fn split_at(bytes: impl AsRef<[u8]>, offsets: &[usize]) -> Vec<Vec<u8>> {
    let bytes = bytes.as_ref();
    let mut out = Vec::new();
    let mut start = 0;
    for &at in offsets.iter().chain(std::iter::once(&bytes.len())) {
        if at > start {
            out.push(bytes[start..at].to_vec());
            start = at;
        }
    }
    out
}

// ---- Test-side helpers: a proxy in front of a `RawUpstream`, and bounded requests. ----

/// Bound on a whole test (run it under [`super::within`]), so a proxy waiting for bytes that
/// never come fails instead of hanging.
pub const TEST_LIMIT: Duration = Duration::from_secs(10);

/// waypost with service `echo` on `up`; an upstream that never answers gives a 504 in 3 s.
pub async fn proxy_for(up: &RawUpstream) -> TestProxy {
    TestProxy::in_front_of_with(up.addr, "upstream: {timeout: 3s}\n").await
}

/// A request for service `echo` through `proxy`.
pub fn req(proxy: &TestProxy, method: &str, path: &str, body: TestBody) -> Request<TestBody> {
    Request::builder()
        .method(method)
        .uri(format!("{}{path}", proxy.url()))
        .header("host", "echo")
        .body(body)
        .unwrap()
}

/// Sends `r` on `client`; panics naming `what` if no complete answer comes within 5 s.
pub async fn call(client: &AppClient, r: Request<TestBody>, what: &str) -> anyhow::Result<Got> {
    tokio::time::timeout(Duration::from_secs(5), send(client, r))
        .await
        .unwrap_or_else(|_| panic!("{what}: no complete response within 5 s"))
}

/// GET `/` for `echo`, expecting a 200 with `body`.
pub async fn get_ok(proxy: &TestProxy, client: &AppClient, body: &str, what: &str) -> Got {
    let got = call(client, req(proxy, "GET", "/", empty()), what)
        .await
        .unwrap_or_else(|e| panic!("{what}: request failed: {e:#}"));
    assert_eq!(
        (got.status, got.text().as_str()),
        (200, body),
        "{what}: wrong answer (x-waypost-error: {:?})",
        got.header("x-waypost-error")
    );
    got
}

/// A keep-alive `200` with `body` and its `content-length`.
pub fn ok(body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// A script answering the n-th request (from 1) with `f(n)`.
pub fn nth(f: impl Fn(usize) -> Reply + Send + Sync + 'static) -> impl Fn(&RawRequest) -> Reply {
    let n = AtomicUsize::new(0);
    move |_| f(n.fetch_add(1, Ordering::SeqCst) + 1)
}

/// A body of `n` bytes cycling through the alphabet.
pub fn letters(n: usize) -> String {
    (0..n).map(|i| (b'a' + (i % 26) as u8) as char).collect()
}

type Script = Arc<dyn Fn(&RawRequest) -> Reply + Send + Sync>;

/// A running scripted upstream on `127.0.0.1`. Stops (and drops its connections) when dropped.
pub struct RawUpstream {
    /// Where it listens.
    pub addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    late: Arc<AtomicUsize>,
    requests: Arc<Mutex<Vec<RawRequest>>>,
    task: tokio::task::JoinHandle<()>,
}

impl RawUpstream {
    /// Starts an upstream that answers every request with `script(&request)`. The script sees
    /// the request's head (its body is read afterwards, when [`Reply::read_body`] says so).
    pub async fn start<F>(script: F) -> RawUpstream
    where
        F: Fn(&RawRequest) -> Reply + Send + Sync + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let late = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let script: Script = Arc::new(script);
        let (acc, reqs, lt) = (accepted.clone(), requests.clone(), late.clone());
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                let conn = acc.fetch_add(1, Ordering::SeqCst) + 1;
                conns.spawn(serve(
                    stream,
                    conn,
                    script.clone(),
                    reqs.clone(),
                    lt.clone(),
                ));
            }
        });
        RawUpstream {
            addr,
            accepted,
            late,
            requests,
            task,
        }
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Bytes received on connections after a closing reply was written (during
    /// [`Reply::linger`]): a request sent on a connection the upstream said it would close.
    pub fn late_bytes(&self) -> usize {
        self.late.load(Ordering::SeqCst)
    }

    /// Every request read so far, in order.
    pub fn requests(&self) -> Vec<RawRequest> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for RawUpstream {
    fn drop(&mut self) {
        // Aborting the accept task drops its JoinSet, which aborts every connection task.
        self.task.abort();
    }
}

/// A connection with its unread bytes.
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    /// Reads more bytes into `buf`; `false` on EOF, error or timeout.
    async fn fill(&mut self) -> bool {
        let mut tmp = [0u8; 16 * 1024];
        match tokio::time::timeout(IO_TIMEOUT, self.stream.read(&mut tmp)).await {
            Ok(Ok(n)) if n > 0 => {
                self.buf.extend_from_slice(&tmp[..n]);
                true
            }
            _ => false,
        }
    }

    /// Takes bytes up to and including the first `delim`, reading as needed.
    async fn take_until(&mut self, delim: &[u8], max: usize) -> Option<Vec<u8>> {
        loop {
            if let Some(i) = self.buf.windows(delim.len()).position(|w| w == delim) {
                return Some(self.buf.drain(..i + delim.len()).collect());
            }
            if self.buf.len() > max || !self.fill().await {
                return None;
            }
        }
    }

    /// Takes exactly `n` bytes, reading as needed.
    async fn take(&mut self, n: usize) -> Option<Vec<u8>> {
        while self.buf.len() < n {
            if !self.fill().await {
                return None;
            }
        }
        Some(self.buf.drain(..n).collect())
    }
}

async fn serve(
    stream: TcpStream,
    conn: usize,
    script: Script,
    log: Arc<Mutex<Vec<RawRequest>>>,
    late: Arc<AtomicUsize>,
) {
    let _ = stream.set_nodelay(true);
    let mut c = Conn {
        stream,
        buf: Vec::new(),
    };
    loop {
        let Some(head) = c.take_until(b"\r\n\r\n", MAX_HEAD).await else {
            return;
        };
        let mut req = parse_head(&head, conn);
        let reply = script(&req);
        if reply.read_body && read_body(&mut c, &mut req).await.is_none() {
            req.framing_error = Some("connection ended mid-body".into());
        }
        req.raw.extend_from_slice(&req.raw_body);
        {
            let mut log = log.lock().unwrap();
            req.seq = log.len() + 1;
            log.push(req.clone());
        }
        if req.framing_error.is_some() {
            return;
        }
        for (i, piece) in reply.chunks.iter().enumerate() {
            if i > 0 {
                tokio::time::sleep(reply.gap).await;
            }
            let write = async {
                c.stream.write_all(piece).await?;
                c.stream.flush().await
            };
            match tokio::time::timeout(IO_TIMEOUT, write).await {
                Ok(Ok(())) => {}
                _ => return,
            }
        }
        if reply.close || !reply.read_body {
            if !reply.linger.is_zero() {
                late.fetch_add(c.buf.len(), Ordering::SeqCst);
                let until = tokio::time::Instant::now() + reply.linger;
                let mut tmp = [0u8; 4096];
                while let Ok(Ok(n @ 1..)) =
                    tokio::time::timeout_at(until, c.stream.read(&mut tmp)).await
                {
                    late.fetch_add(n, Ordering::SeqCst);
                }
            }
            let _ = tokio::time::timeout(IO_TIMEOUT, c.stream.shutdown()).await;
            if reply.drain {
                let mut tmp = [0u8; 16 * 1024];
                let until = tokio::time::Instant::now() + IO_TIMEOUT;
                while let Ok(Ok(1..)) =
                    tokio::time::timeout_at(until, c.stream.read(&mut tmp)).await
                {}
            }
            return;
        }
    }
}

fn parse_head(head: &[u8], conn: usize) -> RawRequest {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split("\r\n");
    let line = lines.next().unwrap_or("").to_string();
    let headers = lines
        .filter(|l| !l.is_empty())
        .map(|l| match l.split_once(':') {
            Some((k, v)) => (k.trim().to_ascii_lowercase(), v.trim().to_string()),
            None => (l.to_ascii_lowercase(), String::new()),
        })
        .collect();
    RawRequest {
        conn,
        line,
        headers,
        raw: head.to_vec(),
        ..RawRequest::default()
    }
}

/// Reads the body `req`'s head announces, strictly; records raw bytes, the decoded body and
/// any framing violation. `None` when the connection ended first.
async fn read_body(c: &mut Conn, req: &mut RawRequest) -> Option<()> {
    let te = req.all("transfer-encoding").join(",").to_ascii_lowercase();
    let lengths: Vec<String> = req
        .all("content-length")
        .into_iter()
        .map(String::from)
        .collect();
    if !te.is_empty() {
        if te.trim() != "chunked" {
            req.framing_error = Some(format!("unexpected transfer-encoding {te:?}"));
            return Some(());
        }
        if !lengths.is_empty() {
            req.framing_error = Some("both transfer-encoding and content-length".into());
            return Some(());
        }
        loop {
            let line = c.take_until(b"\r\n", 1024).await?;
            req.raw_body.extend_from_slice(&line);
            let text = String::from_utf8_lossy(&line[..line.len() - 2]).into_owned();
            let size = text.split(';').next().unwrap_or("").trim();
            let Ok(size) = usize::from_str_radix(size, 16) else {
                req.framing_error = Some(format!("bad chunk size line {text:?}"));
                break;
            };
            if size == 0 {
                // Trailer fields, then the empty line.
                loop {
                    let t = c.take_until(b"\r\n", 8192).await?;
                    req.raw_body.extend_from_slice(&t);
                    if t == b"\r\n" {
                        break;
                    }
                }
                break;
            }
            let data = c.take(size + 2).await?;
            req.raw_body.extend_from_slice(&data);
            if &data[size..] != b"\r\n" {
                req.framing_error = Some(format!("chunk of {size} bytes not followed by CRLF"));
                break;
            }
            req.body.extend_from_slice(&data[..size]);
        }
    } else if let Some(first) = lengths.first() {
        if lengths.iter().any(|l| l != first) {
            req.framing_error = Some(format!("conflicting content-length values {lengths:?}"));
            return Some(());
        }
        let Ok(n) = first.parse::<usize>() else {
            req.framing_error = Some(format!("bad content-length {first:?}"));
            return Some(());
        };
        let data = c.take(n).await?;
        req.raw_body.extend_from_slice(&data);
        req.body = data;
    }
    Some(())
}

// The app side, a raw client writing exact bytes: a file of its own.
#[path = "raw_app.rs"]
mod app;
#[allow(unused_imports)] // not every test crate uses the raw app
pub use app::{RawApp, RawResponse};
