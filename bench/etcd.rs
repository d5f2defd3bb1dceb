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

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use waypost::config::{Dur, EtcdRegistryConfig};
use waypost::metrics::EtcdMetrics;
use waypost::registry::etcd::EtcdClient;

#[path = "support.rs"]
mod support;
use support::{
    await_instances, low_port, measure, report, serve, spawn_waypost, Conn, Killed, CHANGES, LARGE,
};

/// etcd on a temp dir, killed on drop.
struct Etcd {
    _child: Killed,
    endpoint: String,
    _dir: tempfile::TempDir,
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
        _child: Killed(child),
        endpoint: format!("127.0.0.1:{c}"),
        _dir: dir,
    }
}

fn value(addr: std::net::SocketAddr, weight: u32) -> String {
    format!(r#"{{"network":"tcp","address":"{addr}","weight":{weight},"tags":null}}"#)
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

        let (proxy, admin) = spawn_waypost(&format!(
            "listen: 127.0.0.1:0\nadmin: {{listen: 127.0.0.1:0}}\nlog: {{level: warn}}\nregistry: {{etcd: {{endpoints: [{}]}}}}\ndiscovery: {{refresh_interval: 1h}}\nservices:\n  echo: {{resolver: {{etcd: {{}}}}}}\n",
            etcd.endpoint
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
