//! What the end-to-end benches (`etcd.rs`, `consul.rs`) share: upstreams that answer with their
//! name, a keep-alive client connection to waypost, a `/metrics` scrape, and the percentile
//! report. Included by each with `#[path]`.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Answers every request on `listener` with `x-instance: name`, keep-alive.
pub fn serve(listener: TcpListener, name: &'static str) {
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let resp =
                    format!("HTTP/1.1 200 OK\r\nx-instance: {name}\r\ncontent-length: 0\r\n\r\n");
                let mut have = 0;
                loop {
                    match s.read(&mut buf[have..]).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => have += n,
                    }
                    while let Some(end) = find(&buf[..have], b"\r\n\r\n") {
                        if s.write_all(resp.as_bytes()).await.is_err() {
                            return;
                        }
                        buf.copy_within(end + 4..have, 0);
                        have -= end + 4;
                    }
                }
            });
        }
    });
}

pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// One keep-alive connection to waypost's outbound listener.
pub struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    pub async fn open(addr: SocketAddr) -> Conn {
        Conn {
            stream: TcpStream::connect(addr).await.unwrap(),
            buf: vec![0u8; 4096],
        }
    }

    /// GET / for `echo`; the `x-instance` of the answer ("" for waypost's own errors).
    pub async fn instance(&mut self) -> String {
        self.stream
            .write_all(b"GET / HTTP/1.1\r\nHost: echo\r\n\r\n")
            .await
            .unwrap();
        let mut have = 0;
        loop {
            let n = self.stream.read(&mut self.buf[have..]).await.unwrap();
            assert!(n > 0, "waypost closed the connection");
            have += n;
            if let Some(end) = find(&self.buf[..have], b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..end]).to_ascii_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map_or(0, |v| v.trim().parse().unwrap());
                while have < end + 4 + len {
                    have += self.stream.read(&mut self.buf[have..]).await.unwrap();
                }
                return head
                    .lines()
                    .find_map(|l| l.strip_prefix("x-instance:"))
                    .map_or(String::new(), |v| v.trim().to_string());
            }
        }
    }
}

/// The admin listener's `/metrics` text.
pub async fn scrape(admin: SocketAddr) -> String {
    let mut s = TcpStream::connect(admin).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut text = Vec::new();
    s.read_to_end(&mut text).await.unwrap();
    String::from_utf8_lossy(&text).into_owned()
}

/// Prints the percentiles of `samples` for `case`.
pub fn report(case: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
    println!(
        "{case}: n={} p50={:.2?} p90={:.2?} p99={:.2?} max={:.2?}",
        samples.len(),
        at(0.50),
        at(0.90),
        at(0.99),
        samples[samples.len() - 1]
    );
}

/// Starts waypost from `yaml` in-process, on its own thread and single-threaded runtime (as the
/// binary runs by default); its outbound and admin addresses.
pub fn start_waypost(yaml: &str) -> (SocketAddr, SocketAddr) {
    let config = waypost::config::load_str("bench.yaml", yaml, &|_| None).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let app = waypost::App::build(config).await.unwrap();
            tx.send((app.addrs().outbound, app.addrs().admin)).unwrap();
            app.run(std::future::pending()).await.unwrap();
        });
    });
    rx.recv().unwrap()
}

/// Waits until a request for `echo` through `proxy` is answered by `instance`.
pub async fn until_answered_by(proxy: SocketAddr, instance: &str) {
    let mut conn = Conn::open(proxy).await;
    while conn.instance().await != instance {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits (30 s at most) until `echo`'s table holds `n` instances, as `/metrics` at `admin` says.
pub async fn until_instances(admin: SocketAddr, n: usize) {
    let want = format!("waypost_discovery_instances{{service=\"echo\"}} {n}");
    let started = std::time::Instant::now();
    while !scrape(admin).await.contains(&want) {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the table never reached {want}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
