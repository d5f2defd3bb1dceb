//! The double runs the HTTP and TCP checks registered with it, as the agent does: the first run
//! after a random stagger within the interval (`lib.RandomStagger`), then every interval, each
//! bounded by the check's timeout. HTTP: 2xx passing, 429 warning, anything else or no answer
//! critical (`check.mdx`). TCP: an accepted connection passes.

use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::state::Kind;
use super::Shared;

/// Starts the runner of check `id` (`kind` is HTTP or TCP); it ends once the check is gone or
/// was registered again with another definition.
pub fn spawn(shared: Arc<Shared>, id: String, kind: Kind) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let interval = match &kind {
            Kind::Http { interval, .. } | Kind::Tcp { interval, .. } => *interval,
            Kind::Ttl(_) => return,
        };
        tokio::time::sleep(interval.mul_f64(fastrand::f64())).await;
        loop {
            let (status, output) = run(&kind).await;
            {
                let mut state = shared.state();
                match state.checks.get(&id) {
                    Some(c) if c.kind == kind => {}
                    _ => return,
                }
                if let Some(c) = state.checks.get_mut(&id) {
                    c.output = output;
                }
                if state.set_status(&id, status, Instant::now()) {
                    shared.changed();
                }
            }
            tokio::time::sleep(interval).await;
        }
    })
}

/// Runs the check once: its status and output.
async fn run(kind: &Kind) -> (&'static str, String) {
    match kind {
        Kind::Tcp { addr, timeout, .. } => {
            match tokio::time::timeout(*timeout, TcpStream::connect(addr.as_str())).await {
                Ok(Ok(_)) => ("passing", format!("TCP connect {addr}: Success")),
                Ok(Err(e)) => ("critical", format!("dial tcp {addr}: {e}")),
                Err(_) => ("critical", format!("dial tcp {addr}: i/o timeout")),
            }
        }
        Kind::Http { url, timeout, .. } => {
            match tokio::time::timeout(*timeout, http_get(url)).await {
                Ok(Ok(code)) => {
                    let status = match code {
                        200..=299 => "passing",
                        429 => "warning",
                        _ => "critical",
                    };
                    (status, format!("HTTP GET {url}: {code}"))
                }
                Ok(Err(e)) => ("critical", format!("Get \"{url}\": {e}")),
                Err(_) => (
                    "critical",
                    format!("Get \"{url}\": context deadline exceeded"),
                ),
            }
        }
        Kind::Ttl(_) => ("critical", String::new()),
    }
}

/// `GET url` (`http://host:port/path`) on a fresh connection; the status code.
async fn http_get(url: &str) -> Result<u16, String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or("only http:// checks are run")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let mut s = TcpStream::connect(authority)
        .await
        .map_err(|e| e.to_string())?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: Consul Health Check\r\nAccept: text/plain, text/*, */*\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 512];
    loop {
        let n = s.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("EOF before a status line".into());
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        match resp.parse(&buf) {
            Ok(_) if resp.code.is_some() => return Ok(resp.code.unwrap_or(0)),
            Ok(_) if buf.len() < 16 * 1024 => continue,
            Ok(_) => return Err("response head too large".into()),
            Err(e) => return Err(e.to_string()),
        }
    }
}
