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

use std::time::Duration;

use tokio::net::TcpListener;
use waypost::registry::etcd::EtcdClient;

#[path = "support.rs"]
mod support;
use support::{await_instances, measure, report, serve, spawn_waypost, Conn, CHANGES, LARGE};

/// The tests' etcd launcher: a member on a temp dir, ready when it answers, killed on drop.
#[allow(dead_code)]
#[path = "../tests/support"]
mod launch {
    pub mod etcd;
    pub mod external;
}
use launch::etcd::{cloudwego_value, Etcd};

fn value(addr: std::net::SocketAddr, weight: u32) -> String {
    cloudwego_value(&addr.to_string(), weight.into())
}

/// Puts and deletes the instance `new` `CHANGES` times through waypost at `proxy`.
async fn changes(
    client: &EtcdClient,
    proxy: std::net::SocketAddr,
    new: std::net::SocketAddr,
) -> Vec<Duration> {
    let key = format!("hertz/registry-etcd/echo/{new}");
    measure(
        proxy,
        CHANGES,
        || async {
            client
                .put(&key, value(new, 1_000_000).as_bytes(), 0)
                .await
                .unwrap()
        },
        // The key carries no lease: "delete while its lease is 0" deletes it.
        || async {
            client.delete_if_lease(&key, 0).await.unwrap();
        },
    )
    .await
}

fn main() {
    let etcd = Etcd::start();
    support::driver().block_on(async {
        let client = etcd.client();
        let old = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let new = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (old_addr, new_addr) = (old.local_addr().unwrap(), new.local_addr().unwrap());
        serve(old, "old");
        serve(new, "new");
        client
            .put(&format!("hertz/registry-etcd/echo/{old_addr}"), value(old_addr, 1).as_bytes(), 0)
            .await
            .unwrap();

        let (proxy, admin) = spawn_waypost(&format!(
            "listen: 127.0.0.1:0\nadmin: {{listen: 127.0.0.1:0}}\nlog: {{level: warn}}\nregistry: {{etcd: {{endpoints: {}}}}}\ndiscovery: {{refresh_interval: 1h}}\nservices:\n  echo: {{resolver: {{etcd: {{}}}}}}\n",
            etcd.yaml_endpoints()
        ));
        let mut conn = Conn::open(proxy).await;
        while conn.instance().await != "old" {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        report("watch to table, 1 instance + 1", changes(&client, proxy, new_addr).await);

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
        await_instances(admin, LARGE + 1).await;
        report(
            "watch to table, 1,001 instances, one key changed",
            changes(&client, proxy, new_addr).await,
        );
    });
}
