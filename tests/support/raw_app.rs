//! The app side at the byte level: a raw client that writes exact bytes (pipelined, HTTP/1.0,
//! malformed) and reads responses strictly enough to find their ends.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::super::TestProxy;

/// One response as the app read it off the wire.
#[derive(Debug)]
pub struct RawResponse {
    /// The status line.
    pub line: String,
    /// The fields, in order, as written.
    pub headers: Vec<(String, String)>,
    /// The body, decoded.
    pub body: Vec<u8>,
    /// Trailer fields after a chunked body.
    pub trailers: Vec<(String, String)>,
}

impl RawResponse {
    /// The first value of field `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A raw app connection: exact bytes out, responses parsed strictly enough to find their ends.
pub struct RawApp {
    /// The connection.
    pub s: TcpStream,
    buf: Vec<u8>,
}

impl RawApp {
    /// A connection to `proxy`'s outbound listener.
    pub async fn connect(proxy: &TestProxy) -> RawApp {
        RawApp::to(proxy.addrs.outbound).await
    }

    /// A connection to `addr`.
    pub async fn to(addr: SocketAddr) -> RawApp {
        RawApp {
            s: TcpStream::connect(addr).await.unwrap(),
            buf: Vec::new(),
        }
    }

    /// Writes `bytes`.
    pub async fn send(&mut self, bytes: &str) {
        self.s.write_all(bytes.as_bytes()).await.unwrap();
    }

    /// Reads more bytes; false at end of stream.
    pub async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 16 * 1024];
        let n = tokio::time::timeout(Duration::from_secs(5), self.s.read(&mut chunk))
            .await
            .expect("no bytes from waypost within 5 s")
            .unwrap_or(0);
        self.buf.extend_from_slice(&chunk[..n]);
        n > 0
    }

    /// Up to and including the next CRLF.
    pub async fn line(&mut self) -> String {
        loop {
            if let Some(at) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line: Vec<u8> = self.buf.drain(..at + 2).collect();
                return String::from_utf8_lossy(&line[..at]).into_owned();
            }
            assert!(self.fill().await, "connection closed mid-line");
        }
    }

    /// Exactly `n` more bytes.
    pub async fn exactly(&mut self, n: usize) -> Vec<u8> {
        while self.buf.len() < n {
            assert!(self.fill().await, "connection closed mid-body");
        }
        self.buf.drain(..n).collect()
    }

    /// Field lines up to the empty line.
    pub async fn fields(&mut self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        loop {
            let line = self.line().await;
            if line.is_empty() {
                return out;
            }
            let (k, v) = line.split_once(':').expect("a field line");
            out.push((k.to_string(), v.trim().to_string()));
        }
    }

    /// The next response; `head_request`: it answers a HEAD (no body whatever it says).
    pub async fn response(&mut self, head_request: bool) -> RawResponse {
        let line = self.line().await;
        let headers = self.fields().await;
        let mut resp = RawResponse {
            line,
            headers,
            body: Vec::new(),
            trailers: Vec::new(),
        };
        if head_request {
            return resp;
        }
        if resp.header("transfer-encoding") == Some("chunked") {
            loop {
                let size = self.line().await;
                let n = usize::from_str_radix(size.split(';').next().unwrap(), 16).unwrap();
                if n == 0 {
                    resp.trailers = self.fields().await;
                    return resp;
                }
                resp.body.extend(self.exactly(n).await);
                assert_eq!(self.exactly(2).await, b"\r\n");
            }
        }
        if let Some(n) = resp.header("content-length") {
            let n = n.parse().unwrap();
            resp.body = self.exactly(n).await;
            return resp;
        }
        while self.fill().await {}
        resp.body = std::mem::take(&mut self.buf);
        resp
    }

    /// Whether waypost closed the connection (nothing more to read, then end of stream).
    pub async fn closed(&mut self) -> bool {
        self.buf.is_empty() && !self.fill().await
    }
}
