//! A health endpoint for registration tests: answers every request with the status code the
//! test sets (`set`), so a test can make the local app healthy, failing, and healthy again.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A health endpoint whose status code the test sets; stops when dropped.
pub struct HealthEndpoint {
    /// Where it listens.
    pub addr: SocketAddr,
    status: Arc<AtomicU16>,
    task: tokio::task::JoinHandle<()>,
}

impl HealthEndpoint {
    /// Starts answering `status` on a free loopback port.
    pub async fn start(status: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let status = Arc::new(AtomicU16::new(status));
        let code = status.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let code = code.load(Ordering::Relaxed);
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 512];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let answer = format!(
                        "HTTP/1.1 {code} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    );
                    let _ = s.write_all(answer.as_bytes()).await;
                });
            }
        });
        Self { addr, status, task }
    }

    /// Answers `code` from the next request on.
    pub fn set(&self, code: u16) {
        self.status.store(code, Ordering::Relaxed);
    }

    /// The URL a check probes (`/healthz`; any path answers the same).
    pub fn url(&self) -> String {
        format!("http://{}/healthz", self.addr)
    }
}

impl Drop for HealthEndpoint {
    fn drop(&mut self) {
        self.task.abort();
    }
}
