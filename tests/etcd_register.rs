//! `register:` with `registry: etcd`, end to end: the real binary registering a real app (an
//! upstream on 127.0.0.1:0) in a real etcd (see `support/etcd.rs`), seen from outside — by
//! `etcdctl`, by a second waypost that routes to it, by `/debug/registrations` and `/metrics`.
//!
//! Two wayposts find and route to each other's apps; a lease revoked behind waypost's back is
//! put back and counted; SIGTERM deletes the key (and revokes the lease) before the listener
//! stops, and is cut short once waypost's own etcd resolver no longer sees the key; SIGKILL
//! leaves the key to its lease TTL and the peer stops routing to it; the health gate withdraws
//! and restores the key, and an app that never becomes healthy is never written; waypost started
//! while etcd is down, and an outage longer than the TTL, both end registered.
//!
//! Each test runs its own etcd, so they run in parallel; leases are 2 s so expiry is quick.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use support::binary::{connections_to, terminate_deregistering_first, Waypost};
use support::etcd::{cloudwego_value, Etcd};
use support::external::promtool_check;
use support::health::HealthEndpoint;
use support::*;
use waypost::registry::etcd::EtcdClient;

/// Every test finishes within this, or fails.
const DEADLINE: Duration = Duration::from_secs(90);
/// `registry.etcd.lease_ttl` here, unless a test says otherwise: renewed every ~0.67 s.
const TTL: Duration = Duration::from_secs(2);

/// A `register:` item: `service` at `app` in etcd, with `etcd` options (`""` for none), checked
/// over HTTP every 200 ms (rise 1).
fn entry(service: &str, app: SocketAddr, etcd: &str) -> String {
    format!(
        "  - service: {service}\n    address: \"{app}\"\n    registry: etcd\n{etcd}    check: {{http: \"http://{app}/healthz\", interval: 200ms, timeout: 100ms, rise: 1}}\n"
    )
}

/// The key Hertz (the default layout) reads `service` at `addr` from.
fn hertz_key(service: &str, addr: SocketAddr) -> String {
    format!("hertz/registry-etcd/{service}/{addr}")
}

/// The key `key` and its lease (hex), read through waypost's own client (fast enough to poll).
async fn lease(client: &EtcdClient, key: &str) -> Option<String> {
    let kv = client.get(key).await.unwrap()?;
    Some(format!("{:x}", kv.lease() as u64))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_wayposts_register_their_apps_in_etcd_and_route_to_each_other() {
    within(DEADLINE, async {
        let etcd = Etcd::start();
        let client = etcd.client();
        let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
        let dir = tempfile::tempdir().unwrap();
        // Both resolve both services (a mesh where every sidecar declares what it calls);
        // `alpha` is written in the Kitex layout, `beta` in the default (Hertz) one. Polls every
        // 200 ms confirm an emptying answer quickly (the guard waits for three).
        let config = |register: String| {
            format!(
                "{}discovery: {{refresh_interval: 200ms}}\nshutdown: {{grace: 1s, deregister_wait: 60s}}\nregister:\n{register}services:\n  alpha: {{resolver: {{etcd: {{layout: kitex}}}}}}\n  beta: {{resolver: {{etcd: {{}}}}}}\n",
                etcd.registry_yaml("    lease_ttl: 2s\n")
            )
        };
        let mut wa = Waypost::spawn(
            "waypost-a",
            dir.path(),
            &config(entry("alpha", a.addr, "    etcd: {layout: kitex}\n")),
        ).await;
        let wb = Waypost::spawn("waypost-b", dir.path(), &config(entry("beta", b.addr, ""))).await;
        wa.wait_ready().await;
        wb.wait_ready().await;
        for (w, host, want) in [(&wa, "beta", "b"), (&wb, "alpha", "a"), (&wa, "alpha", "a")] {
            eventually(SETTLE, || async move { w.routed(host).await == want }).await;
        }
        let key_a = format!("kitex/registry-etcd/alpha/{}", a.addr);
        assert_eq!(etcd.get(&key_a), Some(cloudwego_value(&a.addr.to_string(), 10)));
        let key_b = hertz_key("beta", b.addr);
        assert_eq!(etcd.get(&key_b), Some(cloudwego_value(&b.addr.to_string(), 10)));

        // One etcd client for both resolvers and the registrar: one connection to the member.
        let etcd_port: u16 = etcd.endpoints()[0].rsplit_once(':').unwrap().1.parse().unwrap();
        assert_eq!(connections_to(wa.proc.pid(), etcd_port), 1);

        // What waypost says of its registration is what etcd holds.
        let first = etcd.lease_of(&key_a).expect("a lease");
        let r = wa.registration("alpha").await;
        assert_eq!(r["registry"], "etcd", "{r}");
        assert_eq!(r["state"], "registered", "{r}");
        let s = &r["registry_state"];
        assert_eq!(s["key"].as_str(), Some(key_a.as_str()), "{r}");
        assert_eq!(s["lease"].as_str(), Some(first.as_str()), "{r}");
        assert_eq!(s["layout"], "kitex", "{r}");
        assert_eq!(s["lease_ttl_seconds"], 2, "{r}");
        let text = wa.metrics().await;
        let labels = [
            ("service", "alpha"),
            ("registry", "etcd"),
            ("state", "registered"),
        ];
        let registered = metric(&text, "waypost_register_state", &labels);
        assert_eq!(registered, Some(1.0), "{text}");
        promtool_check(text.as_bytes());

        // The lease revoked behind waypost's back takes the key with it: the next renewal finds
        // it gone and puts the key back under a new lease, counted; the peer routes there again.
        etcd.revoke(&first);
        let (client, key, first) = (&client, &key_a, &first);
        eventually(SETTLE, || async move {
            lease(client, key).await.is_some_and(|l| &l != first)
        })
        .await;
        // The counter moves just after the put lands.
        let wa_ref = &wa;
        eventually(SETTLE, || async move {
            let labels = [("service", "alpha"), ("registry", "etcd")];
            wa_ref.metric("waypost_register_reregistrations_total", &labels).await == 1.0
        })
        .await;
        let labels = [("service", "alpha"), ("op", "renew"), ("kind", "lost")];
        let lost = wa.metric("waypost_register_failures_total", &labels).await;
        assert_eq!(lost, 1.0, "the renewal that found the lease gone");
        assert_eq!(wa.registration("alpha").await["reregistrations"], 1);
        let wb = &wb;
        eventually(SETTLE, || async move { wb.routed("alpha").await == "a" }).await;

        // SIGTERM: deregister_wait is a minute, but waypost-a resolves `alpha` itself and goes on
        // as soon as its own table no longer holds the key (what its peers see as well).
        let second = etcd.lease_of(&key_a).unwrap();
        wa.proc.signal("TERM");
        let code = tokio::task::spawn_blocking(move || wa.proc.wait_exit(Duration::from_secs(20)))
            .await
            .unwrap();
        assert_eq!(code, Some(0), "exited long before deregister_wait, cleanly");
        assert_eq!(etcd.get(&key_a), None);
        assert!(!etcd.leases().contains(&second), "the lease was revoked");
        eventually(SETTLE, || async move {
            wb.routed("alpha").await == "error: no_instances"
        })
        .await;
        assert_eq!(wb.routed("beta").await, "b");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_deletes_the_key_and_revokes_the_lease_before_the_listener_stops_accepting() {
    within(DEADLINE, async {
        let etcd = Etcd::start();
        let app = Upstream::start("app").await;
        let dir = tempfile::tempdir().unwrap();
        let w = Waypost::spawn(
            "waypost",
            dir.path(),
            &format!(
                "{}shutdown: {{grace: 1s, deregister_wait: 3s}}\nregister:\n{}services:\n{}",
                etcd.registry_yaml("    lease_ttl: 2s\n"),
                entry("shop", app.addr, ""),
                static_service("echo", &[(app.addr, 1)])
            ),
        )
        .await;
        w.wait_ready().await;
        let key = hertz_key("shop", app.addr);
        let lease = etcd.lease_of(&key).expect("ready means registered");
        let Waypost { proc, port, .. } = w;
        let logs = dir.path().to_path_buf();
        // Nothing here resolves `shop`: the listener stops only after the whole 3 s.
        let (log, etcd) = tokio::task::spawn_blocking(move || {
            let gone = || etcd.get(&key).is_none();
            (terminate_deregistering_first(proc, port, &logs, gone), etcd)
        })
        .await
        .unwrap();
        assert!(
            !etcd.leases().contains(&lease),
            "deregistration revokes the lease"
        );
        assert!(log.contains("deregistered"), "{log}");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_leaves_the_key_to_its_lease_ttl_and_the_peer_stops_routing_to_it() {
    within(DEADLINE, async {
        let etcd = Etcd::start();
        let client = etcd.client();
        let (a1, a2) = (Upstream::start("a1").await, Upstream::start("a2").await);
        // A second instance, written as a Hertz server writes it.
        etcd.put(
            &hertz_key("alpha", a2.addr),
            &cloudwego_value(&a2.addr.to_string(), 10),
        );
        let dir = tempfile::tempdir().unwrap();
        let registry = etcd.registry_yaml("    lease_ttl: 2s\n");
        let wa = Waypost::spawn(
            "waypost-a",
            dir.path(),
            &format!("{registry}register:\n{}", entry("alpha", a1.addr, "")),
        )
        .await;
        let wb = Waypost::spawn(
            "waypost-b",
            dir.path(),
            &format!("{registry}services:\n  alpha: {{resolver: {{etcd: {{}}}}}}\n"),
        )
        .await;
        wa.wait_ready().await;
        wb.wait_ready().await;
        let wb = &wb;
        eventually(SETTLE, || async move {
            wb.answering("alpha", 30).await == ["a1", "a2"]
        })
        .await;

        let key = hertz_key("alpha", a1.addr);
        let held = lease(&client, &key).await.expect("registered");
        wa.proc.signal("KILL");
        // Nothing deleted it: it is still there (its lease has more than a second left)…
        assert_eq!(lease(&client, &key).await.as_deref(), Some(held.as_str()));
        // …until the lease expires; then the peer routes to the other instance only.
        let (client_ref, key_ref) = (&client, &key);
        eventually(SETTLE, || async move {
            lease(client_ref, key_ref).await.is_none()
        })
        .await;
        assert_eq!(etcd.granted_ttl(&held), None, "the lease expired");
        eventually(SETTLE, || async move {
            wb.answering("alpha", 30).await == ["a2"]
        })
        .await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_health_gate_withdraws_and_restores_the_key_and_a_never_healthy_app_is_never_written() {
    within(DEADLINE, async {
        let etcd = Etcd::start();
        let client = etcd.client();
        let shop = HealthEndpoint::start(200).await;
        let never = HealthEndpoint::start(500).await;
        let dir = tempfile::tempdir().unwrap();
        // Renewals every 2 s, checks every 300 ms: a withdrawal that waited for the next renewal
        // instead of acting on the verdict would show as several extra bad checks.
        const RISE: u32 = 2;
        const FALL: u32 = 2;
        let (rise, fall) = (f64::from(RISE), f64::from(FALL));
        let entry = |service: &str, app: &HealthEndpoint| {
            format!(
                "  - service: {service}\n    address: \"{}\"\n    registry: etcd\n    check: {{http: \"{}\", interval: 300ms, timeout: 200ms, rise: {RISE}, fall: {FALL}}}\n",
                app.addr,
                app.url()
            )
        };
        let body = format!(
            "{}register:\n{}{}",
            etcd.registry_yaml("    lease_ttl: 6s\n"),
            entry("shop", &shop),
            entry("never", &never)
        );
        let w = Waypost::spawn("waypost", dir.path(), &body).await;
        let key = hertz_key("shop", shop.addr);
        let (client, key_ref, w_ref) = (&client, &key, &w);
        let checks = |result: &'static str| async move {
            let labels = [("service", "shop"), ("result", result)];
            w_ref
                .metric("waypost_register_health_checks_total", &labels)
                .await
        };
        eventually(SETTLE, || async move { lease(client, key_ref).await.is_some() }).await;
        let first = lease(client, key_ref).await.unwrap();

        // Failing: the key goes after `fall` bad checks — not before, and not later than a
        // check or two after (the time it takes to see it go).
        shop.set(503);
        eventually(SETTLE, || async move { lease(client, key_ref).await.is_none() }).await;
        let bad = checks("bad").await;
        assert!((fall..=fall + 2.0).contains(&bad), "withdrawn after {bad} bad checks");
        w.await_state("shop", "withdrawn").await;

        // Healthy again: back after `rise` good checks, under a new lease (the withdrawal
        // revoked the old one).
        let good_before = checks("good").await;
        shop.set(200);
        eventually(SETTLE, || async move { lease(client, key_ref).await.is_some() }).await;
        let good = checks("good").await - good_before;
        assert!(
            (rise..=rise + 2.0).contains(&good),
            "registered again after {good} good checks"
        );
        assert_ne!(lease(client, key_ref).await.unwrap(), first);
        let value = cloudwego_value(&shop.addr.to_string(), 10);
        assert_eq!(etcd.get(&key), Some(value));

        // The app that never passed a check: never written, and it keeps waypost unready.
        eventually(SETTLE, || async move {
            w_ref.registration("never").await["consecutive_bad"].as_u64() >= Some(5)
        })
        .await;
        let n = w.registration("never").await;
        assert_eq!(n["state"], "checking", "{n}");
        assert_eq!(n["ever_registered"], false, "{n}");
        assert_eq!(n["registry_state"]["lease"], Value::Null, "{n}");
        let written = etcd.puts_since_start("hertz/registry-etcd/never/").await;
        assert_eq!(written, Vec::<String>::new());
        let ready = get(&format!("http://127.0.0.1:{}/ready", w.admin), &[])
            .await
            .unwrap();
        assert_eq!(ready.status, 503);
        assert!(ready.text().contains("never at"), "{}", ready.text());
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn started_while_etcd_is_down_then_an_outage_longer_than_the_ttl_it_ends_registered() {
    within(DEADLINE, async {
        let mut etcd = Etcd::start();
        let app = Upstream::start("app").await;
        let dir = tempfile::tempdir().unwrap();
        etcd.stop();
        let w = Waypost::spawn(
            "waypost",
            dir.path(),
            &format!(
                "{}register:\n{}",
                etcd.registry_yaml("    lease_ttl: 2s\n"),
                entry("shop", app.addr, "")
            ),
        )
        .await;
        let failures = |op: &'static str| {
            let w = &w;
            async move {
                w.metric(
                    "waypost_register_failures_total",
                    &[("op", op), ("kind", "unavailable")],
                )
                .await
            }
        };
        // Healthy, but etcd is down: retried with backoff, unready meanwhile.
        eventually(SETTLE, || async { failures("register").await >= 2.0 }).await;
        w.await_state("shop", "failing").await;
        let ready = get(&format!("http://127.0.0.1:{}/ready", w.admin), &[])
            .await
            .unwrap();
        assert_eq!(ready.status, 503);

        // etcd comes up: registered at the next retry. Retries back off from 0.5 s, doubling
        // (each delay drawn from the upper half of its step), up to 30 s: etcd is back here after
        // two or three failures, so the next try comes within 4 s and SETTLE bounds the wait.
        // After a longer outage the first registration may come up to 30 s after etcd's return.
        etcd.restart();
        let key = hertz_key("shop", app.addr);
        let etcd_ref = &etcd;
        let key_ref = &key;
        eventually(
            SETTLE,
            || async move { etcd_ref.lease_of(key_ref).is_some() },
        )
        .await;
        w.wait_ready().await;

        // etcd down for longer than the lease TTL, and for more failed renewals in a row than
        // Hertz and Kitex try before they give up for good (5): renewals are retried at least
        // every renewal interval, never backing off beyond it, so the registration is restored
        // as soon as etcd answers again — and holds: a registrar that gave up would let it
        // expire.
        etcd.stop();
        let down = tokio::time::Instant::now();
        let before = failures("renew").await;
        eventually(SETTLE, || async move {
            failures("renew").await >= before + 6.0 && down.elapsed() > TTL
        })
        .await;
        w.await_state("shop", "failing").await;
        etcd.restart();
        w.await_state("shop", "registered").await;
        let etcd_ref = &etcd;
        let until = tokio::time::Instant::now() + TTL * 3;
        eventually(SETTLE + TTL * 3, || async move {
            let alive = etcd_ref
                .lease_of(key_ref)
                .is_some_and(|l| etcd_ref.granted_ttl(&l).is_some());
            assert!(alive, "the registration lapsed after etcd came back");
            tokio::time::Instant::now() >= until
        })
        .await;
    })
    .await
}
