//! The registration lifecycle on ZooKeeper through the real binary (see
//! `support/zookeeper.rs`): two wayposts register their apps and route to each other's; the
//! health gate decides when the node exists; SIGTERM removes the node before the listener
//! closes; SIGKILL leaves it to the session's expiry, after which the peer stops routing there;
//! a waypost restarted within the session timeout replaces its previous session's node — one
//! node, not two, and the old session's expiry does not take the new one.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use support::external::{free_port, spawn_waypost, Proc};
use support::zookeeper::{self as zk, cloudwego_data, ZooKeeper};
use support::*;

/// Every test finishes within this, or fails.
const DEADLINE: Duration = Duration::from_secs(90);

/// A waypost binary: its process and ports.
struct Binary {
    proc: Proc,
    port: u16,
    admin: u16,
}

impl Binary {
    /// Starts waypost named `name` with `body` (whole top-level keys) under `dir`, and waits
    /// until it is ready.
    async fn start(name: &str, body: &str, dir: &Path) -> Binary {
        let (port, admin) = (free_port(), free_port());
        let yaml =
            format!("listen: 127.0.0.1:{port}\nadmin: {{listen: 127.0.0.1:{admin}}}\n{body}");
        let proc = spawn_waypost(name, &yaml, dir);
        wait_ready_at(([127, 0, 0, 1], admin).into()).await;
        Binary { proc, port, admin }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

/// `registry:` for the shared server under `root`, with a session timeout of `session`.
fn registry(zk: &ZooKeeper, root: &str, session: &str) -> String {
    zk.registry_yaml(&format!(
        "    root: {root}\n    session_timeout: {session}\n"
    ))
}

/// A `register:` entry for `service` at `addr` without a health check, with `extra` keys.
fn entry(service: &str, addr: SocketAddr, extra: &str) -> String {
    format!("  - {{service: {service}, address: \"{addr}\", registry: zookeeper, check: none{extra}}}\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_wayposts_register_their_apps_and_route_to_each_others() {
    within(DEADLINE, async {
        let (zk, client, root) = zk::fixture().await;
        let dir = tempfile::tempdir().unwrap();
        let (app_a, app_b) = (
            Upstream::start("app-a").await,
            Upstream::start("app-b").await,
        );
        let config = |own: &str, addr: SocketAddr, other: &str, tags: &str| {
            format!(
                "{}register:\n{}services:\n  {other}: {{resolver: {{zookeeper: {{}}}}}}\n",
                registry(zk, &root, "2s"),
                entry(own, addr, tags)
            )
        };
        // Each becomes ready once its own registration is in and the other's service resolved
        // (an empty answer counts): start them together.
        let alpha = config("alpha", app_a.addr, "beta", ", weight: 3, tags: {zone: a}");
        let beta = config("beta", app_b.addr, "alpha", "");
        let (a, b) = tokio::join!(
            Binary::start("alpha", &alpha, dir.path()),
            Binary::start("beta", &beta, dir.path()),
        );
        eventually(SETTLE, || async {
            routed_to(&a.url(), "beta").await == "app-b"
        })
        .await;
        eventually(SETTLE, || async {
            routed_to(&b.url(), "alpha").await == "app-a"
        })
        .await;
        // What each wrote is what a Go server writes.
        let (data, _) = zk::get(&client, &format!("{root}/alpha/{}", app_a.addr))
            .await
            .unwrap();
        assert_eq!(
            String::from_utf8(data).unwrap(),
            r#"{"Weight":3,"Tags":{"zone":"a"}}"#
        );
        let (data, _) = zk::get(&client, &format!("{root}/beta/{}", app_b.addr))
            .await
            .unwrap();
        assert_eq!(String::from_utf8(data).unwrap(), cloudwego_data(10));
        let debug = get(
            &format!("http://127.0.0.1:{}/debug/registrations", a.admin),
            &[],
        )
        .await
        .unwrap();
        let json: serde_json::Value = serde_json::from_slice(&debug.body).unwrap();
        let state = &json["registrations"][0]["registry_state"];
        assert_eq!(
            state["path"],
            format!("{root}/alpha/{}", app_a.addr),
            "{json}"
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_health_gate_decides_when_the_node_exists() {
    within(DEADLINE, async {
        let (zk, client, root) = zk::fixture().await;
        let app = Upstream::start("app").await;
        let health_addr = dead_addr().await;
        let node = format!("{root}/shop/{}", app.addr);
        let proxy = TestProxy::start_unready(&format!(
            "{}register:\n  - service: shop\n    address: \"{}\"\n    registry: zookeeper\n    check: {{tcp: \"{health_addr}\", interval: 100ms, timeout: 50ms, rise: 2, fall: 2}}\n",
            registry(zk, &root, "2s"),
            app.addr
        ))
        .await;
        // Unhealthy from the start: never registered, however many checks fail.
        let bad = [("result", "bad")];
        let p = &proxy;
        eventually(SETTLE, || async move {
            metric(&metrics(p).await, "waypost_register_health_checks_total", &bad) >= Some(5.0)
        })
        .await;
        assert_eq!(zk::owner(&client, &node).await, None);
        let (c, n) = (&client, &node);
        let health = std::net::TcpListener::bind(health_addr).unwrap();
        eventually(SETTLE, || async move { zk::owner(c, n).await.is_some() }).await;
        drop(health);
        eventually(SETTLE, || async move { zk::owner(c, n).await.is_none() }).await;
        let _health = std::net::TcpListener::bind(health_addr).unwrap();
        eventually(SETTLE, || async move { zk::owner(c, n).await.is_some() }).await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_removes_the_node_before_the_listener_stops_accepting() {
    within(DEADLINE, async {
        let (zk, client, root) = zk::fixture().await;
        let dir = tempfile::tempdir().unwrap();
        let app = Upstream::start("app").await;
        let node = format!("{root}/shop/{}", app.addr);
        let Binary { mut proc, port, .. } = Binary::start(
            "waypost",
            &format!(
                "shutdown: {{grace: 1s, deregister_wait: 2s}}\n{}register:\n{}",
                registry(zk, &root, "4s"),
                entry("shop", app.addr, "")
            ),
            dir.path(),
        )
        .await;
        assert!(
            zk::owner(&client, &node).await.is_some(),
            "ready means registered"
        );
        proc.signal("TERM");
        let accepting = move || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok();
        // Seen from outside: first the node leaves ZooKeeper while the listener still accepts
        // (peers that have not noticed yet are served)...
        let (c, n) = (&client, &node);
        eventually(SETTLE, || async move { zk::owner(c, n).await.is_none() }).await;
        assert!(
            accepting(),
            "the listener stopped before the node was deleted"
        );
        // ...then, after deregister_wait, it stops, and the process exits cleanly.
        eventually(SETTLE, || async move { !accepting() }).await;
        let code = tokio::task::spawn_blocking(move || {
            let code = proc.wait_exit(Duration::from_secs(10));
            (code, proc)
        })
        .await
        .unwrap();
        assert_eq!(code.0, Some(0), "clean exit");
        let log = std::fs::read_to_string(dir.path().join("waypost.log")).unwrap();
        assert!(log.contains("deregistered"), "{log}");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_leaves_the_node_to_the_session_expiry_then_the_peer_stops_routing_there() {
    within(DEADLINE, async {
        let (zk, client, root) = zk::fixture().await;
        let dir = tempfile::tempdir().unwrap();
        let (doomed, other) = (Upstream::start("doomed").await, Upstream::start("other").await);
        zk::create(&client, &format!("{root}/shop/{}", other.addr), cloudwego_data(10).as_bytes()).await;
        let node = format!("{root}/shop/{}", doomed.addr);
        let registrant = Binary::start(
            "registrant",
            &format!("{}register:\n{}", registry(zk, &root, "4s"), entry("shop", doomed.addr, "")),
            dir.path(),
        )
        .await;
        let session = zk::owner(&client, &node).await.expect("registered");
        // The peer polls hourly: the node's deletion reaches it through its watch.
        let peer = TestProxy::start(&format!(
            "{}discovery: {{refresh_interval: 1h}}\nservices:\n  shop: {{resolver: {{zookeeper: {{}}}}}}\n",
            registry(zk, &root, "4s")
        ))
        .await;
        let p = &peer;
        eventually(SETTLE, || async move {
            let counts = spread(p, "shop", 30).await;
            counts.contains_key("doomed") && counts.contains_key("other")
        })
        .await;

        registrant.proc.signal("KILL");
        drop(registrant);
        // No deregistration ran: the node stays while the server keeps the session...
        assert_eq!(zk::owner(&client, &node).await, Some(session), "deleted without its session expiring");
        // ...and goes with it; the peer then routes only to the other instance.
        let (c, n) = (&client, &node);
        eventually(SETTLE, || async move { zk::owner(c, n).await.is_none() }).await;
        assert!(!zk.ephemerals().contains_key(&session));
        eventually(SETTLE, || async move { spread(p, "shop", 10).await.keys().all(|k| k == "other") }).await;
        for _ in 0..5 {
            let counts = spread(&peer, "shop", 20).await;
            assert_eq!(counts.get("other"), Some(&20), "{counts:?}");
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waypost_restarted_within_the_session_timeout_leaves_one_node() {
    within(DEADLINE, async {
        let (zk, client, root) = zk::fixture().await;
        let dir = tempfile::tempdir().unwrap();
        let app = Upstream::start("app").await;
        let node = format!("{root}/shop/{}", app.addr);
        let config = format!(
            "{}register:\n{}",
            registry(zk, &root, "4s"),
            entry("shop", app.addr, "")
        );
        let first = Binary::start("first", &config, dir.path()).await;
        let old = zk::owner(&client, &node).await.expect("registered");
        first.proc.signal("KILL");
        drop(first);
        // Restarted at once: the old session still holds its node, which Hertz fails on.
        let second = Binary::start("second", &config, dir.path()).await;
        let new = zk::owner(&client, &node).await.expect("registered again");
        assert_ne!(new, old, "the node belongs to the new session");
        // At the first attempt: not after failing until the old session expired.
        let text = get(&format!("http://127.0.0.1:{}/metrics", second.admin), &[])
            .await
            .unwrap()
            .text();
        let failures: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("waypost_register_failures_total{") && !l.ends_with(" 0"))
            .collect();
        assert!(failures.is_empty(), "{failures:?}");
        assert_eq!(
            zk::children(&client, &format!("{root}/shop")).await,
            [app.addr.to_string()]
        );
        // The old session's expiry takes nothing of the new one's.
        let z = &zk;
        eventually(SETTLE, || async move {
            let sessions = z.four_letters("dump").unwrap_or_default();
            !sessions.contains(&format!("{:#x}", old as u64))
        })
        .await;
        assert_eq!(zk::owner(&client, &node).await, Some(new));
        assert_eq!(
            zk::children(&client, &format!("{root}/shop")).await,
            [app.addr.to_string()]
        );
    })
    .await
}
