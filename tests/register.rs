//! Registration of the local app through waypost (in-process, on the file registry in a temp
//! dir): the health gate (rise, fall, back, never healthy; HTTP and TCP checks), a registry
//! that fails and is retried until it works, an entry deleted behind waypost's back coming
//! back, and what `/ready`, `/debug/registrations` and `/metrics` say about it all.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use support::health::HealthEndpoint;
use support::*;
use tokio::net::TcpListener;

/// The address registered in these tests (nothing needs to listen there: peers are not asked).
const APP: &str = "127.0.0.1:18480";

/// waypost registering `shop` at [`APP`] in the file registry under `dir` (TTL 1s), gated by
/// `check` (YAML: `none`, or a flow mapping), not waiting for `/ready`.
async fn proxy(dir: &Path, check: &str) -> TestProxy {
    TestProxy::start_unready(&format!(
        "registry: {{file: {{dir: {}, ttl: 1s}}}}\nshutdown: {{deregister_wait: 0s}}\nregister:\n  - service: shop\n    address: {APP}\n    registry: file\n    tags: {{zone: a}}\n    check: {check}\n",
        dir.display()
    ))
    .await
}

/// A check of `target` (`http: URL` or `tcp: addr`) every 100ms, rise 2, fall 2.
fn fast(target: &str) -> String {
    format!("{{{target}, interval: 100ms, timeout: 80ms, rise: 2, fall: 2}}")
}

/// The file waypost writes for `shop` at [`APP`] under `dir`.
fn entry_path(dir: &Path) -> PathBuf {
    dir.join("shop")
        .join(format!("{}.json", APP.replace(':', "_")))
}

async fn registered(dir: &Path) -> bool {
    tokio::fs::try_exists(entry_path(dir))
        .await
        .unwrap_or(false)
}

/// The `/debug/registrations` entry of `shop`.
async fn debug_entry(proxy: &TestProxy) -> Value {
    let got = get(&format!("{}/debug/registrations", proxy.admin()), &[])
        .await
        .unwrap();
    assert_eq!(got.status, 200);
    assert_eq!(got.header("content-type"), "application/json");
    let doc: Value = serde_json::from_slice(&got.body).unwrap();
    doc["registrations"][0].clone()
}

async fn state_is(proxy: &TestProxy, want: &str) -> bool {
    debug_entry(proxy).await["state"] == want
}

async fn ready(proxy: &TestProxy) -> (u16, String) {
    let got = get(&format!("{}/ready", proxy.admin()), &[]).await.unwrap();
    (got.status, got.text())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_health_gate_registers_withdraws_and_registers_again() {
    within(Duration::from_secs(60), async {
        let dir = tempfile::tempdir().unwrap();
        let app = HealthEndpoint::start(200).await;
        let proxy = proxy(dir.path(), &fast(&format!("http: {}", app.url()))).await;
        // Healthy: registered after `rise` good checks, and ready from then on.
        eventually(SETTLE, || registered(dir.path())).await;
        eventually(SETTLE, || state_is(&proxy, "registered")).await;
        assert_eq!(ready(&proxy).await.0, 200);
        let entry: Value =
            serde_json::from_slice(&std::fs::read(entry_path(dir.path())).unwrap()).unwrap();
        assert_eq!(
            (entry["weight"].as_u64(), entry["tags"]["zone"].as_str()),
            (Some(10), Some("a"))
        );

        // Failing: withdrawn after `fall` bad checks.
        app.set(503);
        eventually(SETTLE, || async { !registered(dir.path()).await }).await;
        eventually(SETTLE, || state_is(&proxy, "withdrawn")).await;
        let e = debug_entry(&proxy).await;
        assert!(e["consecutive_bad"].as_u64().unwrap() >= 2, "{e}");
        assert_eq!(e["healthy"], false);
        let last = e["last_checks"].as_array().unwrap().last().unwrap().clone();
        assert_eq!(
            (last["ok"].clone(), last["error"].clone()),
            (Value::Bool(false), Value::from("status 503"))
        );
        assert_eq!(
            ready(&proxy).await.0,
            200,
            "registered once: an unhealthy app does not flap /ready"
        );

        // Back: registered again after `rise` good checks.
        app.set(204);
        eventually(SETTLE, || registered(dir.path())).await;
        eventually(SETTLE, || state_is(&proxy, "registered")).await;
        let text = metrics(&proxy).await;
        let good = metric(
            &text,
            "waypost_register_health_checks_total",
            &[("service", "shop"), ("result", "good")],
        )
        .unwrap();
        let bad = metric(
            &text,
            "waypost_register_health_checks_total",
            &[("service", "shop"), ("result", "bad")],
        )
        .unwrap();
        assert!(good >= 4.0 && bad >= 2.0, "good {good}, bad {bad}");
        assert_eq!(
            metric(
                &text,
                "waypost_register_state",
                &[
                    ("state", "registered"),
                    ("registry", "file"),
                    ("address", APP)
                ]
            ),
            Some(1.0)
        );
        assert_eq!(
            metric(&text, "waypost_register_state", &[("state", "withdrawn")]),
            Some(0.0)
        );

        // Shutdown removes it.
        proxy.stop().await;
        assert!(!registered(dir.path()).await);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_that_never_becomes_healthy_is_never_registered_and_keeps_waypost_unready() {
    within(Duration::from_secs(60), async {
        let dir = tempfile::tempdir().unwrap();
        let app = HealthEndpoint::start(500).await;
        let proxy = proxy(dir.path(), &fast(&format!("http: {}", app.url()))).await;
        // Many checks, all bad.
        eventually(SETTLE, || async {
            debug_entry(&proxy).await["consecutive_bad"].as_u64() >= Some(5)
        })
        .await;
        assert!(!registered(dir.path()).await);
        let e = debug_entry(&proxy).await;
        assert_eq!(
            (e["state"].as_str(), e["ever_registered"].as_bool()),
            (Some("checking"), Some(false))
        );
        let (status, why) = ready(&proxy).await;
        assert_eq!(status, 503);
        assert!(
            why.contains(
                "waiting for the first registration of: shop at 127.0.0.1:18480 (checking)"
            ),
            "{why}"
        );
        // Forwarding does not wait for the app: a native sidecar's startup probe uses this.
        let outbound = get(&format!("{}/ready/outbound", proxy.admin()), &[])
            .await
            .unwrap();
        assert_eq!(
            (outbound.status, outbound.text().as_str()),
            (200, "ready\n")
        );
        proxy.stop().await;
        assert!(
            !dir.path().join("shop").exists(),
            "nothing was ever written"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_check_follows_the_listener() {
    within(Duration::from_secs(60), async {
        let dir = tempfile::tempdir().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let proxy = proxy(dir.path(), &fast(&format!("tcp: \"{addr}\""))).await;
        eventually(SETTLE, || registered(dir.path())).await;
        // The app stops listening: connections are refused, the entry is withdrawn.
        drop(listener);
        eventually(SETTLE, || async { !registered(dir.path()).await }).await;
        let e = debug_entry(&proxy).await;
        assert_eq!(e["check"]["kind"], "tcp");
        let last = e["last_checks"].as_array().unwrap().last().unwrap().clone();
        assert!(
            last["error"].as_str().unwrap_or("").starts_with("connect"),
            "{e}"
        );
        // It listens again: registered again.
        let _listener = TcpListener::bind(addr).await.unwrap();
        eventually(SETTLE, || registered(dir.path())).await;
        proxy.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_registry_is_retried_until_it_works() {
    within(Duration::from_secs(60), async {
        let root = tempfile::tempdir().unwrap();
        // The registry directory cannot be created: a file stands where it should be.
        let dir = root.path().join("registry");
        std::fs::write(&dir, b"not a directory").unwrap();
        let proxy = proxy(&dir, "none").await;
        eventually(SETTLE, || state_is(&proxy, "failing")).await;
        eventually(SETTLE, || async {
            let text = metrics(&proxy).await;
            metric(
                &text,
                "waypost_register_failures_total",
                &[("op", "register"), ("kind", "io")],
            ) >= Some(2.0)
        })
        .await;
        let e = debug_entry(&proxy).await;
        assert_eq!(
            (
                e["last_error"]["op"].as_str(),
                e["last_error"]["kind"].as_str()
            ),
            (Some("register"), Some("io")),
            "{e}"
        );
        let (status, why) = ready(&proxy).await;
        assert_eq!(status, 503);
        assert!(why.contains("(failing)"), "{why}");
        // The directory becomes usable: the next retry registers.
        std::fs::remove_file(&dir).unwrap();
        eventually(SETTLE, || registered(&dir)).await;
        eventually(SETTLE, || state_is(&proxy, "registered")).await;
        assert_eq!(ready(&proxy).await.0, 200);
        proxy.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_deleted_behind_waypost_s_back_comes_back() {
    within(Duration::from_secs(60), async {
        let dir = tempfile::tempdir().unwrap();
        let proxy = proxy(dir.path(), "none").await;
        eventually(SETTLE, || registered(dir.path())).await;
        proxy.wait_ready().await;
        std::fs::remove_file(entry_path(dir.path())).unwrap();
        // The next renewal (TTL 1s: every ~333ms) finds it gone and registers it again at once.
        eventually(SETTLE, || registered(dir.path())).await;
        eventually(SETTLE, || async {
            debug_entry(&proxy).await["reregistrations"] == 1
        })
        .await;
        let text = metrics(&proxy).await;
        assert_eq!(
            metric(
                &text,
                "waypost_register_reregistrations_total",
                &[("service", "shop")]
            ),
            Some(1.0)
        );
        assert_eq!(
            metric(
                &text,
                "waypost_register_failures_total",
                &[("op", "renew"), ("kind", "lost")]
            ),
            Some(1.0)
        );
        let e = debug_entry(&proxy).await;
        assert_eq!(e["state"], "registered");
        assert_eq!(
            e["registry_state"]["path"],
            entry_path(dir.path()).display().to_string()
        );
        assert_eq!(e["check"], Value::Null);
        assert_eq!(e["ttl_seconds"], 1.0);
        proxy.stop().await;
    })
    .await;
}
