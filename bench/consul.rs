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
#[path = "support.rs"]
mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use support::{await_instances, measure, report, serve, spawn_waypost, Conn, LARGE};
use tokio::net::TcpListener;

/// Changes measured per case.
const CHANGES: usize = 200;
/// Time between changes in the spaced cases: enough for the watch's rate limiter to refill.
const SPACING: Duration = Duration::from_millis(250);

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
async fn changes(
    c: &double::ConsulDouble,
    proxy: SocketAddr,
    new: SocketAddr,
    spacing: Duration,
) -> Vec<Duration> {
    measure(
        proxy,
        CHANGES,
        || async move {
            tokio::time::sleep(spacing).await;
            c.register_json(&body("echo-new", new, 65_535)).unwrap();
        },
        || async move {
            tokio::time::sleep(spacing).await;
            c.deregister("echo-new").unwrap();
        },
    )
    .await
}

fn main() {
    support::driver().block_on(async {
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
        let (proxy, admin) = spawn_waypost(&yaml);
        let mut conn = Conn::open(proxy).await;
        while conn.instance().await != "old" {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        report(
            "blocking query to table, 1 instance + 1",
            changes(&c, proxy, new_addr, SPACING).await,
        );
        report(
            "back to back (rate-limited), 1 instance + 1",
            changes(&c, proxy, new_addr, Duration::ZERO).await,
        );

        // The large case: 1,000 more instances, each a port of its own answered as "old".
        for i in 0..LARGE {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let a = l.local_addr().unwrap();
            serve(l, "old");
            c.register_json(&body(&format!("echo-{i}"), a, 1)).unwrap();
        }
        await_instances(admin, LARGE + 1).await;
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
            changes(&c, proxy, new_addr, SPACING).await,
        );
    });
}
