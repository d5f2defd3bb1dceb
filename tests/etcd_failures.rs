//! etcd failing under a running waypost (see `support/etcd.rs`): an outage longer than the
//! lease TTL, a 3-member cluster losing the member in use, and a compaction that overtakes a
//! watch. In each, requests keep flowing on the last table, the registration is restored, and
//! the watch resumes by listing again — the three things the Go registries get wrong
//! (REGISTRIES.md §6: Kitex and Hertz stop re-registering after five failures; grpc-go's
//! resolver stops on a watch error).
//!
//! A service with `refresh_interval: 1h` sees later changes only through its watch: that is how
//! these tests prove a watch came back, rather than a poll.

mod support;

use std::sync::Arc;
use std::time::Duration;

use support::etcd::{cloudwego_value, Etcd};
use support::external::{free_port, spawn_waypost};
use support::*;
use waypost::config::EtcdLayout;
use waypost::register::{Registrar, Registration};
use waypost::registry::etcd::{Codec, EtcdRegistrar};
use waypost::shutdown;

/// Every test finishes within this, or fails.
const DEADLINE: Duration = Duration::from_secs(120);
/// Lease TTL of the registrations here.
const TTL: Duration = Duration::from_secs(2);

fn key(up: &Upstream) -> String {
    format!("hertz/registry-etcd/echo/{}", up.addr)
}

/// Registers `up` as `echo` (Hertz layout, lease [`TTL`]) in a registration loop until the
/// returned trigger fires.
fn register(etcd: &Etcd, up: &Upstream) -> (shutdown::Trigger, tokio::task::JoinHandle<()>) {
    let registrar = Arc::new(EtcdRegistrar::new(
        etcd.client(),
        Codec::new(EtcdLayout::Hertz, "hertz/registry-etcd"),
        TTL,
    ));
    let reg = Registration {
        service: "echo".into(),
        address: up.addr,
        weight: 10,
        tags: Default::default(),
        ttl: TTL,
    };
    let (trigger, stop) = shutdown::channel();
    let task = tokio::spawn(reg.run(registrar as Arc<dyn Registrar>, stop));
    (trigger, task)
}

/// Waits until `key` exists with a lease etcd still holds, and that stays so for three TTLs:
/// a registrar that gave up would let it expire.
async fn registration_holds(etcd: &Etcd, key: &str) {
    let until = tokio::time::Instant::now() + TTL * 3;
    eventually(SETTLE + TTL * 3, || async {
        let alive = etcd
            .lease_of(key)
            .is_some_and(|l| etcd.granted_ttl(&l).is_some());
        alive && tokio::time::Instant::now() >= until
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_longer_than_the_ttl_keeps_the_table_then_registration_and_watch_come_back() {
    within(DEADLINE, async {
        let mut etcd = Etcd::start();
        let a = Upstream::start("a").await;
        let b = Upstream::start("b").await;
        let (stop_a, task_a) = register(&etcd, &a);
        etcd.put(&key(&b), &cloudwego_value(&b.addr.to_string(), 10));
        // `echo` polls often (its staleness shows in the metrics); `watched` reads the same keys
        // and polls hourly.
        let proxy = TestProxy::start(&format!(
            "{}services:\n  echo: {{refresh_interval: 300ms, resolver: {{etcd: {{}}}}}}\n  watched: {{refresh_interval: 1h, resolver: {{etcd: {{name: echo}}}}}}\n",
            etcd.registry_yaml("")
        ))
        .await;
        for host in ["echo", "watched"] {
            let proxy = &proxy;
            eventually(SETTLE, || async move {
                answering(proxy, host, 20).await == ["a", "b"]
            })
            .await;
        }

        etcd.stop();
        let down = tokio::time::Instant::now();
        // Requests flow on the stale table all along, well past the lease TTL: every one is
        // answered by a or b, and both keep being picked (checked over the whole outage: ten
        // requests alone miss one of two equal instances once in 512).
        let mut seen = std::collections::BTreeSet::new();
        while down.elapsed() < TTL * 3 {
            for host in ["echo", "watched"] {
                for name in answering(&proxy, host, 10).await {
                    assert!(name == "a" || name == "b", "{host} answered by {name}");
                    seen.insert((host, name));
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(seen.len(), 4, "both instances of both services: {seen:?}");
        let stale = || async {
            metric(&metrics(&proxy).await, "waypost_discovery_stale", &[("service", "echo")])
        };
        assert_eq!(stale().await, Some(1.0), "the outage shows in the metrics");

        etcd.restart();
        eventually(SETTLE, || async { stale().await == Some(0.0) }).await;
        registration_holds(&etcd, &key(&a)).await;
        // The watch is back: a new instance reaches the hourly-polled service.
        let c = Upstream::start("c").await;
        etcd.put(&key(&c), &cloudwego_value(&c.addr.to_string(), 10));
        let proxy_ref = &proxy;
        eventually(SETTLE, || async move {
            answering(proxy_ref, "watched", 30).await == ["a", "b", "c"]
        })
        .await;
        let restarts = metrics(&proxy).await;
        assert!(
            restarts.contains("waypost_registry_etcd_watch_restarts_total{reason=\"failed\"}")
                || restarts.contains("waypost_registry_etcd_watch_restarts_total{reason=\"closed\"}"),
            "{restarts}"
        );
        stop_a.fire();
        task_a.await.unwrap();
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_losing_the_member_in_use_keeps_registration_and_watches_through_the_others() {
    within(DEADLINE, async {
        let mut etcd = Etcd::cluster(3);
        let a = Upstream::start("a").await;
        let (stop_a, task_a) = register(&etcd, &a);
        let proxy = TestProxy::start(&format!(
            "{}services:\n  echo: {{refresh_interval: 1h, resolver: {{etcd: {{}}}}}}\n",
            etcd.registry_yaml("")
        ))
        .await;
        let p = &proxy;
        eventually(
            SETTLE,
            || async move { answering(p, "echo", 10).await == ["a"] },
        )
        .await;

        // Both waypost's client and the registrar's talk to the first member: kill it.
        etcd.stop_member(0);
        let b = Upstream::start("b").await;
        etcd.put(&key(&b), &cloudwego_value(&b.addr.to_string(), 10));
        eventually(SETTLE, || async move {
            answering(p, "echo", 30).await == ["a", "b"]
        })
        .await;
        registration_holds(&etcd, &key(&a)).await;
        // Losing the lease is noticed and repaired through the others too.
        let lease = etcd.lease_of(&key(&a)).unwrap();
        etcd.revoke(&lease);
        let (etcd_ref, lease_ref, key_a) = (&etcd, &lease, key(&a));
        let key_ref = &key_a;
        eventually(SETTLE, || async move {
            etcd_ref.lease_of(key_ref).is_some_and(|l| &l != lease_ref)
        })
        .await;
        let text = metrics(&proxy).await;
        assert!(
            metric(&text, "waypost_registry_etcd_failovers_total", &[]).unwrap_or(0.0) >= 1.0,
            "{text}"
        );
        assert!(
            text.contains("waypost_registry_etcd_watch_restarts_total{"),
            "{text}"
        );
        support::external::promtool_check(text.as_bytes());
        stop_a.fire();
        task_a.await.unwrap();
        assert_eq!(etcd.get(&key(&a)), None, "deregistered through the others");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compaction_overtaking_the_watch_converges_to_what_a_fresh_read_shows() {
    within(DEADLINE, async {
        let etcd = Etcd::start();
        let a = Upstream::start("a").await;
        let b = Upstream::start("b").await;
        etcd.put(&key(&a), &cloudwego_value(&a.addr.to_string(), 10));
        let dir = tempfile::tempdir().unwrap();
        let (port, admin) = (free_port(), free_port());
        let yaml = format!(
            "listen: 127.0.0.1:{port}\nadmin: {{listen: 127.0.0.1:{admin}}}\n{}discovery: {{guard: {{confirm: 1}}}}\nservices:\n  echo: {{refresh_interval: 1h, resolver: {{etcd: {{}}}}}}\n",
            etcd.registry_yaml("")
        );
        let proc = spawn_waypost("waypost", &yaml, dir.path());
        wait_ready_at(([127, 0, 0, 1], admin).into()).await;
        let url = format!("http://127.0.0.1:{port}");
        let routed = |url: String| async move {
            get(&format!("{url}/"), &[("host", "echo")])
                .await
                .ok()
                .map(|g| g.header("x-instance").to_string())
        };
        assert_eq!(routed(url.clone()).await.as_deref(), Some("a"));

        // Frozen, waypost reads nothing: etcd's buffers for its watch fill up and the watch
        // falls behind, then the history it still needs is compacted away.
        proc.signal("STOP");
        let writer = etcd.client();
        // Instances nobody listens on, each rewritten many times: 12 MB of events, more than
        // the HTTP/2 windows (hyper's 2 MB per stream, 5 MB per connection) and etcd's buffers.
        let pad = "p".repeat(4000);
        for i in 0..3000 {
            let addr = format!("127.0.0.1:{}", 1000 + i % 50);
            let v = format!(
                r#"{{"network":"tcp","address":"{addr}","weight":10,"tags":{{"pad":"{pad}"}}}}"#
            );
            let k = format!("hertz/registry-etcd/echo/churn-{}", i % 50);
            writer.put(&k, v.as_bytes(), 0).await.unwrap();
        }
        for i in 0..50 {
            etcd.del(&format!("hertz/registry-etcd/echo/churn-{i}"));
        }
        etcd.del(&key(&a));
        etcd.put(&key(&b), &cloudwego_value(&b.addr.to_string(), 10));
        etcd.compact_all();
        proc.signal("CONT");

        // Polls are an hour apart: the table converges through the watch alone (the guard is
        // off: it would wait for confirming answers that only polls bring).
        eventually(SETTLE, || {
            let url = url.clone();
            async move { routed(url).await.as_deref() == Some("b") }
        })
        .await;
        let debug = get(&format!("http://127.0.0.1:{admin}/debug/services"), &[])
            .await
            .unwrap()
            .text();
        let json: serde_json::Value = serde_json::from_str(&debug).unwrap();
        let echo = json["services"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == "echo")
            .unwrap()
            .clone();
        assert_eq!(
            echo["instances"].as_array().unwrap().len(),
            1,
            "only b, as a fresh read shows: {echo}"
        );
        let text = get(&format!("http://127.0.0.1:{admin}/metrics"), &[])
            .await
            .unwrap()
            .text();
        assert_eq!(
            metric(&text, "waypost_registry_etcd_watch_restarts_total", &[("reason", "compacted")]),
            Some(1.0),
            "the watch was canceled by the compaction and listed again:\n{text}"
        );
    })
    .await
}
