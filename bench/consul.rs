//! How fast a Consul registration reaches the routing table (issue 11's measurement), end to
//! end: a service registered in the Consul double (`tests/support/consul.rs`, the same double the
//! tests use, over HTTP on 127.0.0.1) → the agent's blocking query answers → waypost's watch →
//! the cache → the table → a request through waypost answered by the new instance.
//!
//! 1. **Blocking query to table**: a service with one instance (weight 1); a second one (weight
//!    65,535, Consul's maximum, so the first request after the change lands on it) is registered,
//!    and requests go through waypost back to back until one is answered by it; then it is
//!    deregistered and the table settles. The time from the registration to that answer, over
//!    `CHANGES` changes. Changes are spaced [`SPACING`] apart, so each finds a token in the watch's
//!    rate limiter: this is the propagation time.
//! 2. **Back to back**: the same with no spacing — every change waits for the rate limiter's
//!    next token (10 a second after a burst of 2): what the limit costs a burst of changes.
//! 3. **1,000 instances**: case 1 with 1,000 more instances in the table, so each change is a
//!    1,001-entry health answer to decode and a 1,001-instance table to build.
//!
//! Polls are an hour apart: every change arrives through the blocking query. waypost runs
//! in-process on its own single-threaded runtime (as the binary runs by default); the double
//! and the driver run on another.
//!
//! Run: `cargo bench --bench consul` (prints p50/p90/p99/max; copy them to bench/RESULTS.md).

#[allow(dead_code)]
#[path = "../tests/support/consul.rs"]
mod double;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Changes measured per case.
const CHANGES: usize = 200;
/// Instances of the large case.
const LARGE: usize = 1_000;
/// Time between changes in the spaced cases: enough for the watch's rate limiter to refill.
const SPACING: Duration = Duration::from_millis(250);

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

/// The registration body of an instance of `echo` at `addr`, passing.
fn body(id: &str, addr: SocketAddr, weight: u32) -> String {
    format!(
        r#"{{"ID":"{id}","Name":"echo","Address":"{}","Port":{},"Weights":{{"Passing":{weight},"Warning":1}},"Check":{{"TTL":"1h","Status":"passing"}}}}"#,
        addr.ip(),
        addr.port()
    )
}

/// Registers and deregisters the instance `new` `CHANGES` times, `spacing` apart; the time from
/// each registration to the first request `new` answers.
async fn measure(
    c: &double::ConsulDouble,
    proxy: SocketAddr,
    new: SocketAddr,
    spacing: Duration,
) -> Vec<Duration> {
    let mut conn = Conn::open(proxy).await;
    let mut samples = Vec::with_capacity(CHANGES);
    for _ in 0..CHANGES {
        tokio::time::sleep(spacing).await;
        c.register_json(&body("echo-new", new, 65_535)).unwrap();
        let registered = Instant::now();
        while conn.instance().await != "new" {}
        samples.push(registered.elapsed());
        tokio::time::sleep(spacing).await;
        c.deregister("echo-new").unwrap();
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

fn main() {
    let driver = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    driver.block_on(async {
        let c = double::ConsulDouble::start().await;
        let old = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let new = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (old_addr, new_addr) = (old.local_addr().unwrap(), new.local_addr().unwrap());
        serve(old, "old");
        serve(new, "new");
        c.register_json(&body("echo-old", old_addr, 1)).unwrap();

        let yaml = format!(
            "listen: 127.0.0.1:0\nadmin: {{listen: 127.0.0.1:0}}\nlog: {{level: warn}}\n{}discovery: {{refresh_interval: 1h}}\nservices:\n  echo: {{resolver: {{consul: {{}}}}}}\n",
            c.registry_yaml("")
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
        report(
            "blocking query to table, 1 instance + 1",
            measure(&c, proxy, new_addr, SPACING).await,
        );
        report(
            "back to back (rate-limited), 1 instance + 1",
            measure(&c, proxy, new_addr, Duration::ZERO).await,
        );

        // The large case: 1,000 more instances, each a port of its own answered as "old".
        for i in 0..LARGE {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let a = l.local_addr().unwrap();
            serve(l, "old");
            c.register_json(&body(&format!("echo-{i}"), a, 1)).unwrap();
        }
        let want = format!("waypost_discovery_instances{{service=\"echo\"}} {}", LARGE + 1);
        let started = Instant::now();
        while !scrape(admin).await.contains(&want) {
            assert!(started.elapsed() < Duration::from_secs(30), "the table never reached {want}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // The double's own share of each sample: building and encoding the answer.
        let mut built: Vec<Duration> = (0..50)
            .map(|_| {
                let t = Instant::now();
                let text = serde_json::to_string(&c.health("echo", true)).unwrap();
                assert!(text.len() > 100_000);
                t.elapsed()
            })
            .collect();
        built.sort();
        println!(
            "the double builds and encodes a 1,001-entry health answer in {:.2?} (median of 50)",
            built[25]
        );
        // waypost's share of the answer: decoding it into the sorted, de-duplicated instances.
        let text = serde_json::to_string(&c.health("echo", true)).unwrap();
        let mut decoded: Vec<Duration> = (0..50)
            .map(|_| {
                let t = Instant::now();
                let entries = waypost::registry::consul::codec::decode_health(text.as_bytes()).unwrap();
                let instances: Vec<_> = entries
                    .iter()
                    .filter_map(|e| waypost::registry::consul::codec::instance(e).ok())
                    .collect();
                let res = waypost::discover::Resolution::new(instances);
                assert_eq!(res.instances.len(), LARGE + 1);
                t.elapsed()
            })
            .collect();
        decoded.sort();
        println!(
            "waypost decodes it ({} KiB) into 1,001 instances in {:.2?} (median of 50)",
            text.len() / 1024,
            decoded[25]
        );
        report(
            "blocking query to table, 1,001 instances, one registered",
            measure(&c, proxy, new_addr, SPACING).await,
        );
    });
}
