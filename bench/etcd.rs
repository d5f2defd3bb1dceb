//! How fast an etcd change reaches the routing table (issue 10's measurements), end to end: a
//! key put in a real etcd (Debian `etcd-server`, started here on 127.0.0.1) → waypost's watch →
//! the cache → the table → a request through waypost answered by the new instance.
//!
//! 1. **Watch to table**: a service with one instance (weight 1); a second one (weight 1,000,000,
//!    so the first request after the change lands on it) is put, and requests go through waypost
//!    back to back until one is answered by it; then it is deleted and the table settles. The
//!    time from the put's acknowledgement to that answer, over `CHANGES` changes.
//! 2. **1,000 instances, one key**: the same with 1,000 instances in the table (each its own
//!    port, all answered by one process), so each change rebuilds a 1,001-instance table.
//!
//! Polls are an hour apart: every change arrives through the watch. waypost runs in-process on
//! its own single-threaded runtime (as the binary runs by default), the driver on another.
//!
//! Run: `cargo bench --bench etcd` (prints p50/p90/p99/max; copy them to bench/RESULTS.md).

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use waypost::config::{Dur, EtcdRegistryConfig};
use waypost::metrics::EtcdMetrics;
use waypost::registry::etcd::EtcdClient;

/// Changes measured per case.
const CHANGES: usize = 300;
/// Instances of the large case.
const LARGE: usize = 1_000;

/// etcd on a temp dir, killed on drop.
struct Etcd {
    child: Child,
    endpoint: String,
    _dir: tempfile::TempDir,
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free port below 32768 (Linux gives outgoing connections the range above).
fn low_port() -> u16 {
    loop {
        let p = fastrand::u16(20_000..32_000);
        if std::net::TcpListener::bind(("127.0.0.1", p)).is_ok() {
            return p;
        }
    }
}

fn start_etcd() -> Etcd {
    let dir = tempfile::tempdir().unwrap();
    let (c, p) = (low_port(), low_port());
    let client = format!("http://127.0.0.1:{c}");
    let peer = format!("http://127.0.0.1:{p}");
    let child = Command::new("etcd")
        .args(["--name", "bench", "--data-dir"])
        .arg(dir.path().join("data"))
        .args([
            "--listen-client-urls",
            &client,
            "--advertise-client-urls",
            &client,
        ])
        .args([
            "--listen-peer-urls",
            &peer,
            "--initial-advertise-peer-urls",
            &peer,
        ])
        .args(["--initial-cluster", &format!("bench={peer}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("etcd is not installed: run `apt-get install -y etcd-server`");
    Etcd {
        child,
        endpoint: format!("127.0.0.1:{c}"),
        _dir: dir,
    }
}

/// Answers every request on `listener` with `x-instance: name`, keep-alive.
fn serve(listener: TcpListener, name: &'static str) {
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
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    async fn open(addr: SocketAddr) -> Conn {
        Conn {
            stream: TcpStream::connect(addr).await.unwrap(),
            buf: vec![0u8; 4096],
        }
    }

    /// GET / for `echo`; the `x-instance` of the answer ("" for waypost's own errors).
    async fn instance(&mut self) -> String {
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
async fn scrape(admin: SocketAddr) -> String {
    let mut s = TcpStream::connect(admin).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut text = Vec::new();
    s.read_to_end(&mut text).await.unwrap();
    String::from_utf8_lossy(&text).into_owned()
}

fn value(addr: SocketAddr, weight: u32) -> String {
    format!(r#"{{"network":"tcp","address":"{addr}","weight":{weight},"tags":null}}"#)
}

/// Adds and removes the instance `new` `CHANGES` times; the time from each add's
/// acknowledgement to the first request `new` answers.
async fn measure(client: &EtcdClient, proxy: SocketAddr, new: SocketAddr) -> Vec<Duration> {
    let mut conn = Conn::open(proxy).await;
    let key = format!("hertz/registry-etcd/echo/{new}");
    let mut samples = Vec::with_capacity(CHANGES);
    for _ in 0..CHANGES {
        client
            .put(&key, value(new, 1_000_000).as_bytes(), 0)
            .await
            .unwrap();
        let acked = Instant::now();
        while conn.instance().await != "new" {}
        samples.push(acked.elapsed());
        // The key carries no lease: "delete while its lease is 0" deletes it.
        client.delete_if_lease(&key, 0).await.unwrap();
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

fn report(case: &str, mut samples: Vec<Duration>) {
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

fn main() {
    let etcd = start_etcd();
    let driver = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    driver.block_on(async {
        let cfg = EtcdRegistryConfig {
            endpoints: vec![etcd.endpoint.clone()],
            request_timeout: Dur::from_secs(3),
            ..EtcdRegistryConfig::default()
        };
        let client = Arc::new(EtcdClient::from_config(&cfg, EtcdMetrics::detached()).unwrap());
        // etcd is up once a read succeeds.
        let up = Instant::now();
        while client.get_prefix("x").await.is_err() {
            assert!(up.elapsed() < Duration::from_secs(20), "etcd did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let old = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let new = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (old_addr, new_addr) = (old.local_addr().unwrap(), new.local_addr().unwrap());
        serve(old, "old");
        serve(new, "new");
        client
            .put(&format!("hertz/registry-etcd/echo/{old_addr}"), value(old_addr, 1).as_bytes(), 0)
            .await
            .unwrap();

        let yaml = format!(
            "listen: 127.0.0.1:0\nadmin: {{listen: 127.0.0.1:0}}\nlog: {{level: warn}}\nregistry: {{etcd: {{endpoints: [{}]}}}}\ndiscovery: {{refresh_interval: 1h}}\nservices:\n  echo: {{resolver: {{etcd: {{}}}}}}\n",
            etcd.endpoint
        );
        let config = waypost::config::load_str("bench.yaml", &yaml, &|_| None).unwrap();
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
        let (proxy, admin) = rx.recv().unwrap();
        let mut conn = Conn::open(proxy).await;
        while conn.instance().await != "old" {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        report("watch to table, 1 instance + 1", measure(&client, proxy, new_addr).await);

        // The large case: 1,000 more instances, each a port of its own answered as "old".
        for _ in 0..LARGE {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let a = l.local_addr().unwrap();
            serve(l, "old");
            client
                .put(&format!("hertz/registry-etcd/echo/{a}"), value(a, 1).as_bytes(), 0)
                .await
                .unwrap();
        }
        // Every one of them is in the table before measuring.
        let want = format!("waypost_discovery_instances{{service=\"echo\"}} {}", LARGE + 1);
        let started = Instant::now();
        while !scrape(admin).await.contains(&want) {
            assert!(started.elapsed() < Duration::from_secs(30), "the table never reached {want}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        report(
            "watch to table, 1,001 instances, one key changed",
            measure(&client, proxy, new_addr).await,
        );
    });
}
