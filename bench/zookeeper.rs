//! How fast a ZooKeeper change reaches the routing table (issue 12's measurement), end to end: a
//! node created in a real ZooKeeper (Debian `zookeeper` 3.8, started here on 127.0.0.1) → the
//! persistent recursive watch's event → one read of that node → the cache → the table → a
//! request through waypost answered by the new instance.
//!
//! 1. **Watch to table**: a service with one instance (weight 1); a second node (weight
//!    1,000,000, so the first request after the change lands on it) is created, and requests go
//!    through waypost back to back until one is answered by it; then it is deleted and the table
//!    settles. The time from the create's acknowledgement to that answer, over `CHANGES` changes.
//! 2. **1,000 instances, one node**: the same with 1,000 instances in the table, so each change
//!    rebuilds a 1,001-instance table.
//!
//! Beside them, the floor: one `get_data` round trip, the read each change costs waypost (ZooKeeper's
//! events carry no data).
//!
//! Polls are an hour apart: every change arrives through the watch. waypost runs in-process on
//! its own single-threaded runtime (as the binary runs by default), the driver on another.
//!
//! Run: `cargo bench --bench zookeeper` (prints p50/p90/p99/max; copy them to bench/RESULTS.md).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use zookeeper_client::{Acls, Client, CreateMode};

#[path = "support.rs"]
mod support;
use support::{await_instances, measure, report, serve, spawn_waypost, Conn, CHANGES, LARGE};

/// The tests' ZooKeeper launcher: a standalone server on a temp dir, ready when `ruok` answers,
/// stopped with this process.
#[allow(dead_code)]
#[path = "../tests/support"]
mod launch {
    pub mod external;
    pub mod zookeeper;
}
use launch::zookeeper::{cloudwego_data, ZooKeeper};

/// Creates the node of `addr` under `/echo` with `weight`.
async fn create(client: &Client, addr: SocketAddr, weight: u32) {
    let opts = CreateMode::Persistent.with_acls(Acls::anyone_all());
    client
        .create(
            &format!("/echo/{addr}"),
            cloudwego_data(weight.into()).as_bytes(),
            &opts,
        )
        .await
        .unwrap();
}

/// Creates and deletes the node of `new` `CHANGES` times through waypost at `proxy`.
async fn changes(client: &Client, proxy: SocketAddr, new: SocketAddr) -> Vec<Duration> {
    measure(
        proxy,
        CHANGES,
        || create(client, new, 1_000_000),
        || async {
            client.delete(&format!("/echo/{new}"), None).await.unwrap();
        },
    )
    .await
}

fn main() {
    let zk = ZooKeeper::shared();
    support::driver().block_on(async {
        let server = zk.address().to_string();
        let client = Client::connect(&server).await.unwrap();
        let old = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let new = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (old_addr, new_addr) = (old.local_addr().unwrap(), new.local_addr().unwrap());
        serve(old, "old");
        serve(new, "new");
        let opts = CreateMode::Persistent.with_acls(Acls::anyone_all());
        client.create("/echo", b"", &opts).await.unwrap();
        create(&client, old_addr, 1).await;

        let (proxy, admin) = spawn_waypost(&format!(
            "listen: 127.0.0.1:0\nadmin: {{listen: 127.0.0.1:0}}\nlog: {{level: warn}}\nregistry: {{zookeeper: {{servers: [\"{server}\"]}}}}\ndiscovery: {{refresh_interval: 1h}}\nservices:\n  echo: {{resolver: {{zookeeper: {{}}}}}}\n"
        ));
        let mut conn = Conn::open(proxy).await;
        while conn.instance().await != "old" {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The floor: the one read each change costs waypost, from a client on the same machine
        // (the same client library, its own runtime).
        let node = format!("/echo/{old_addr}");
        let mut reads = Vec::with_capacity(CHANGES);
        for _ in 0..CHANGES {
            let started = Instant::now();
            client.get_data(&node).await.unwrap();
            reads.push(started.elapsed());
        }
        report("one read of a node (get_data round trip)", reads);
        report(
            "watch to table, 1 instance + 1",
            changes(&client, proxy, new_addr).await,
        );

        // The large case: 1,000 more instances, each a port of its own answered as "old".
        for _ in 0..LARGE {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let a = l.local_addr().unwrap();
            serve(l, "old");
            create(&client, a, 1).await;
        }
        await_instances(admin, LARGE + 1).await;
        report(
            "watch to table, 1,001 instances, one node changed",
            changes(&client, proxy, new_addr).await,
        );
    });
}
