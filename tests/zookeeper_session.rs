//! A ZooKeeper session really expiring under a running waypost (see `support/zookeeper.rs`):
//! waypost reaches the server only through a relay the test pauses until the server has
//! expired the session — restarting ZooKeeper would not, it reloads sessions with fresh
//! timeouts. Then a new session is established, the registration comes back under it (another
//! ephemeral owner, nothing left of the old session), the watch is re-established, and requests
//! kept flowing on the table meanwhile. A registration withdrawn for health stays withdrawn
//! through a session change: nothing but the health gate brings it back (Kitex's keepalive
//! re-creates nodes users withdrew, kitex-contrib/codec-dubbo#86).
//!
//! Services poll hourly here: whatever reaches their tables after the session change came
//! through the re-established watch. A connection lost and restored within the session is
//! followed by a full read and a new watch too: ZooKeeper does not replay what a persistent watch
//! missed, and the client does not restore persistent watches on reconnecting.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::zookeeper::{self as zk, cloudwego_data, Relay};
use support::*;

/// Every test finishes within this, or fails.
const DEADLINE: Duration = Duration::from_secs(90);
/// Longer than the server takes to expire a 2 s session nobody pings (it checks every tick).
const EXPIRY: Duration = Duration::from_secs(15);

/// The addresses in `host`'s table, sorted; and `n` requests for it, each of which must be
/// answered by an instance.
async fn table_serving(proxy: &TestProxy, host: &str, n: usize) -> Vec<String> {
    for name in answering(proxy, host, n).await {
        assert!(!name.starts_with("error"), "{host}: {name}");
    }
    support::dnstest::instance_weights(proxy, host)
        .await
        .into_iter()
        .map(|(address, _)| address)
        .collect()
}

/// `addrs` as sorted text.
fn sorted<const N: usize>(addrs: [std::net::SocketAddr; N]) -> Vec<String> {
    let mut v: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
    v.sort();
    v
}

/// The value of metric `name` (with `labels`) on `proxy`, 0 when absent.
async fn counter(proxy: &TestProxy, name: &str, labels: &[(&str, &str)]) -> f64 {
    metric(&metrics(proxy).await, name, labels).unwrap_or(0.0)
}

/// The session `/debug/registrations` shows for the first registration.
async fn described_session(proxy: &TestProxy) -> Value {
    let got = get(&format!("{}/debug/registrations", proxy.admin()), &[])
        .await
        .unwrap();
    let json: Value = serde_json::from_slice(&got.body).unwrap();
    json["registrations"][0]["registry_state"]["session"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_session_is_replaced_and_the_node_comes_back_under_the_new_one() {
    within(DEADLINE, async {
        let (zk, client, root) = zk::fixture().await;
        let relay = Relay::start(zk.address()).await;
        let app = Upstream::start("app").await;
        let peer = Upstream::start("peer").await;
        zk::create(&client, &format!("{root}/echo/{}", peer.addr), cloudwego_data(10).as_bytes()).await;
        let node = format!("{root}/echo/{}", app.addr);
        let proxy = TestProxy::start(&format!(
            "{}discovery: {{refresh_interval: 1h}}\nregister:\n  - {{service: echo, address: \"{}\", registry: zookeeper, check: none}}\nservices:\n  echo: {{resolver: {{zookeeper: {{}}}}}}\n",
            zk.registry_yaml_via(relay.addr, &format!("    root: {root}\n")),
            app.addr
        ))
        .await;
        let first = zk::owner(&client, &node).await.expect("ready means registered");
        assert_eq!(described_session(&proxy).await, format!("{:#x}", first as u64));
        assert!(zk.ephemerals().get(&first).is_some_and(|p| p.contains(&node)), "{:?}", zk.ephemerals());
        let p = &proxy;
        eventually(SETTLE, || async move { answering(p, "echo", 20).await == ["app", "peer"] }).await;

        // Cut off: the server expires the session and drops its node, while requests keep
        // flowing on the table waypost has.
        relay.pause();
        let cut = tokio::time::Instant::now();
        let both = sorted([app.addr, peer.addr]);
        while zk::owner(&client, &node).await.is_some() {
            assert!(cut.elapsed() < EXPIRY, "the server never expired the session");
            assert_eq!(table_serving(&proxy, "echo", 5).await, both);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(!zk.ephemerals().contains_key(&first), "nothing left of the old session");
        // A change waypost cannot see now: only a full read under the new session brings it.
        let during = Upstream::start("during").await;
        zk::create(&client, &format!("{root}/echo/{}", during.addr), cloudwego_data(10).as_bytes()).await;
        for _ in 0..10 {
            assert_eq!(table_serving(&proxy, "echo", 5).await, both, "served while cut off");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }

        // Back in reach: a new session, the node under it, the watch on it.
        relay.resume();
        let c = &client;
        let node_ref = &node;
        eventually(SETTLE, || async move {
            zk::owner(c, node_ref).await.is_some_and(|o| o != first && o != 0)
        })
        .await;
        let second = zk::owner(&client, &node).await.unwrap();
        assert_eq!(zk.ephemerals().get(&second), Some(&vec![node.clone()]));
        assert!(!zk.ephemerals().contains_key(&first));
        assert_eq!(described_session(&proxy).await, format!("{:#x}", second as u64));
        eventually(SETTLE, || async move {
            answering(p, "echo", 30).await == ["app", "during", "peer"]
        })
        .await;
        let late = Upstream::start("late").await;
        zk::create(&client, &format!("{root}/echo/{}", late.addr), cloudwego_data(10).as_bytes()).await;
        eventually(SETTLE, || async move {
            answering(p, "echo", 40).await == ["app", "during", "late", "peer"]
        })
        .await;

        let losses = [("reason", "expired")];
        assert_eq!(counter(&proxy, "waypost_registry_zookeeper_session_losses_total", &losses).await, 1.0);
        assert_eq!(counter(&proxy, "waypost_registry_zookeeper_sessions_total", &[]).await, 2.0);
        assert_eq!(counter(&proxy, "waypost_registry_zookeeper_connected", &[]).await, 1.0);
        let restarts = [("reason", "new_session")];
        assert!(counter(&proxy, "waypost_registry_zookeeper_watch_restarts_total", &restarts).await >= 1.0);
        assert!(counter(&proxy, "waypost_register_reregistrations_total", &[("registry", "zookeeper")]).await >= 1.0);
        support::external::promtool_check(metrics(&proxy).await.as_bytes());

        // Stopping deregisters under the new session.
        proxy.stop().await;
        assert_eq!(zk::owner(&client, &node).await, None);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registration_withdrawn_for_health_stays_withdrawn_through_a_session_change() {
    within(DEADLINE, async {
        let (zk, client, root) = zk::fixture().await;
        let relay = Relay::start(zk.address()).await;
        let app = Upstream::start("app").await;
        // The health check connects here; dropping the listener makes the app unhealthy.
        let health = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let health_addr = health.local_addr().unwrap();
        let node = format!("{root}/echo/{}", app.addr);
        let proxy = TestProxy::start(&format!(
            "{}register:\n  - service: echo\n    address: \"{}\"\n    registry: zookeeper\n    check: {{tcp: \"{health_addr}\", interval: 100ms, timeout: 50ms, rise: 1, fall: 1}}\n",
            zk.registry_yaml_via(relay.addr, &format!("    root: {root}\n")),
            app.addr
        ))
        .await;
        let first = zk::owner(&client, &node).await.expect("registered once healthy");
        drop(health);
        let c = &client;
        let n = &node;
        eventually(SETTLE, || async move { zk::owner(c, n).await.is_none() }).await;

        // The session expires and is replaced while the app is unhealthy.
        relay.pause();
        let cut = tokio::time::Instant::now();
        while zk.ephemerals().contains_key(&first) || cut.elapsed() < zk::SESSION * 2 {
            assert!(cut.elapsed() < EXPIRY, "the server never expired the session");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        relay.resume();
        let p = &proxy;
        eventually(SETTLE, || async move {
            counter(p, "waypost_registry_zookeeper_sessions_total", &[]).await == 2.0
                && counter(p, "waypost_registry_zookeeper_connected", &[]).await == 1.0
        })
        .await;
        // Many renewal periods under the new session (20 more failed checks at 100 ms): still
        // withdrawn.
        let bad = [("result", "bad")];
        let checks = || async move { counter(p, "waypost_register_health_checks_total", &bad).await };
        let before = checks().await;
        eventually(SETTLE, || async { checks().await >= before + 20.0 }).await;
        assert_eq!(zk::owner(&client, &node).await, None, "re-created by a session change");
        assert!(zk.ephemerals().values().all(|paths| !paths.contains(&node)));

        // Healthy again: registered again, under the new session.
        let _health = std::net::TcpListener::bind(health_addr).unwrap();
        eventually(SETTLE, || async move {
            zk::owner(c, n).await.is_some_and(|o| o != first)
        })
        .await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_lost_within_the_session_is_followed_by_a_full_read() {
    within(DEADLINE, async {
        let (zk, client, root) = zk::fixture().await;
        let relay = Relay::start(zk.address()).await;
        let a = Upstream::start("a").await;
        zk::create(&client, &format!("{root}/echo/{}", a.addr), cloudwego_data(10).as_bytes()).await;
        // A 20 s session: the connection comes back long before the server would expire it,
        // however busy the machine.
        let proxy = TestProxy::start(&format!(
            "{}discovery: {{refresh_interval: 1h}}\nservices:\n  echo: {{resolver: {{zookeeper: {{}}}}}}\n",
            zk.registry_yaml_via(relay.addr, &format!("    root: {root}\n    session_timeout: 20s\n"))
        ))
        .await;
        assert_eq!(answering(&proxy, "echo", 5).await, ["a"]);
        // Cut briefly; meanwhile b joins. ZooKeeper does not replay what a persistent watch
        // missed while disconnected (ZOOKEEPER-4698): only the read after reconnecting shows b.
        relay.pause();
        let p = &proxy;
        eventually(SETTLE, || async move {
            counter(p, "waypost_registry_zookeeper_connected", &[]).await == 0.0
        })
        .await;
        let b = Upstream::start("b").await;
        zk::create(&client, &format!("{root}/echo/{}", b.addr), cloudwego_data(10).as_bytes()).await;
        relay.resume();
        eventually(SETTLE, || async move { answering(p, "echo", 30).await == ["a", "b"] }).await;
        let text = metrics(&proxy).await;
        let zk_lines: Vec<&str> = text.lines().filter(|l| l.starts_with("waypost_registry_zookeeper")).collect();
        assert_eq!(
            metric(&text, "waypost_registry_zookeeper_sessions_total", &[]),
            Some(1.0),
            "the same session: {zk_lines:#?}"
        );
        let reconnected = [("reason", "reconnected")];
        let restarts = metric(&text, "waypost_registry_zookeeper_watch_restarts_total", &reconnected);
        assert!(restarts >= Some(1.0), "{zk_lines:#?}");
        // The watch works after the reconnection too (zookeeper-client 0.11 does not restore
        // persistent watches on reconnecting; waypost adds its watch again).
        let c = Upstream::start("c").await;
        zk::create(&client, &format!("{root}/echo/{}", c.addr), cloudwego_data(10).as_bytes()).await;
        eventually(SETTLE, || async move { answering(p, "echo", 40).await == ["a", "b", "c"] }).await;
    })
    .await
}
