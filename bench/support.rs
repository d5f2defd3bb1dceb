//! What the registry benches (`bench/etcd.rs`, `bench/zookeeper.rs`, `bench/consul.rs`) share:
//! the driver's runtime, upstreams that answer with their name, one keep-alive connection through
//! waypost, a `/metrics` scrape, the change-to-routed measuring loop and its report. Included
//! with `#[path]`; each bench uses its part. The registries themselves are the tests' launchers
//! and double (`tests/support/`).
#![allow(dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Changes measured per case.
pub const CHANGES: usize = 300;
/// Instances of the large case.
pub const LARGE: usize = 1_000;

/// The driver's runtime: one worker, apart from waypost's own (see [`spawn_waypost`]).
pub fn driver() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

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

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
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

/// Waits until waypost at `admin` holds `n` instances of `echo`.
pub async fn await_instances(admin: SocketAddr, n: usize) {
    let want = format!("waypost_discovery_instances{{service=\"echo\"}} {n}");
    let started = Instant::now();
    while !scrape(admin).await.contains(&want) {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the table never reached {want}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs `changes` rounds through waypost at `proxy`, where `echo` is served by instances
/// answering "old": `add` puts an instance answering "new" (weighted so that the next request
/// lands on it) and returns once the registry acknowledged it; the sample is the time from
/// then to the first request "new" answers. `remove` takes it away again, and the table settles
/// before the next round.
pub async fn measure<A, FA, R, FR>(
    proxy: SocketAddr,
    changes: usize,
    mut add: A,
    mut remove: R,
) -> Vec<Duration>
where
    A: FnMut() -> FA,
    FA: Future<Output = ()>,
    R: FnMut() -> FR,
    FR: Future<Output = ()>,
{
    let mut conn = Conn::open(proxy).await;
    let mut samples = Vec::with_capacity(changes);
    for _ in 0..changes {
        add().await;
        let acked = Instant::now();
        while conn.instance().await != "new" {}
        samples.push(acked.elapsed());
        remove().await;
        // Wait until the table has lost it (its weight makes it answer nearly every request
        // while it is there).
        let mut old = 0;
        while old < 20 {
            old = if conn.instance().await == "new" {
                0
            } else {
                old + 1
            };
        }
    }
    samples
}

/// Prints p50/p90/p99/max of `samples` under `case`.
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

/// Runs waypost built from `yaml` on a single-threaded runtime of its own thread (as the binary
/// runs by default); its outbound and admin addresses.
pub fn spawn_waypost(yaml: &str) -> (SocketAddr, SocketAddr) {
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
