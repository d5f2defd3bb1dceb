//! The Consul double's clock and check runner (see `support/consul.rs`): the TTL clock and the
//! `DeregisterCriticalServiceAfter` reaper, driven on the double's state machine with an explicit
//! `now` (they count in seconds and minutes), default check IDs and re-registration, and the
//! HTTP and TCP checks the double runs itself against real sockets.

mod support;

use std::time::Duration;

use support::consul::state::{State, DEREGISTER_MIN, REAP_INTERVAL};
use support::consul::ConsulDouble;
use support::health::HealthEndpoint;
use support::*;
use tokio::time::Instant;

/// Every test finishes within this, or fails.
const DEADLINE: Duration = Duration::from_secs(30);

const TTL_SVC: &str = r#"{"ID":"shop-1","Name":"shop","Address":"10.0.0.7","Port":8080,"Tags":["zone:a"],"Weights":{"Passing":5,"Warning":1},"Check":{"CheckID":"shop-ttl","TTL":"10s","DeregisterCriticalServiceAfter":"1m"}}"#;

#[test]
fn ttl_clock_default_check_ids_and_re_registration() {
    let t0 = Instant::now();
    let mut s = State::new(100, t0);
    let prepared = s.prepare(TTL_SVC.as_bytes()).unwrap();
    s.register(prepared, t0);
    s.update_ttl("shop-ttl", "passing", "", t0).unwrap();
    assert!(
        !s.tick(t0 + Duration::from_millis(9_999)),
        "still within the TTL"
    );
    assert_eq!(s.checks["shop-ttl"].status, "passing");
    let before = s.index;
    assert!(s.tick(t0 + Duration::from_secs(10)), "the TTL ran out");
    assert_eq!(s.checks["shop-ttl"].status, "critical");
    assert!(s.checks["shop-ttl"].output.starts_with("TTL expired"));
    assert!(s.index > before, "a visible change moves the index");
    // A pass restarts the clock; passing again without a change does not move the index.
    let t1 = t0 + Duration::from_secs(11);
    s.update_ttl("shop-ttl", "passing", "", t1).unwrap();
    let idx = s.index;
    s.update_ttl("shop-ttl", "passing", "", t1 + Duration::from_secs(5))
        .unwrap();
    assert_eq!(s.index, idx);
    assert!(
        !s.tick(t1 + Duration::from_secs(14)),
        "the second pass restarted the clock"
    );
    // Registered again, the check keeps its status.
    let again = s.prepare(TTL_SVC.as_bytes()).unwrap();
    s.register(again, t1 + Duration::from_secs(14));
    assert_eq!(s.checks["shop-ttl"].status, "passing");
    // Default IDs and names: service:<id>, and :1, :2 when there are several.
    let two = r#"{"ID":"api-1","Name":"api","Checks":[{"TTL":"5s"},{"TTL":"6s"}]}"#;
    let p = s.prepare(two.as_bytes()).unwrap();
    s.register(p, t0);
    assert!(s.checks.contains_key("service:api-1:1") && s.checks.contains_key("service:api-1:2"));
    let one = r#"{"ID":"web-1","Name":"web","Check":{"TTL":"5s"}}"#;
    let p = s.prepare(one.as_bytes()).unwrap();
    s.register(p, t0);
    assert_eq!(s.checks["service:web-1"].name, "Service 'web' check");
    // A pass on a check without a TTL is Consul's 500.
    let tcp = r#"{"ID":"db-1","Name":"db","Check":{"TCP":"127.0.0.1:1","Interval":"5s"}}"#;
    let p = s.prepare(tcp.as_bytes()).unwrap();
    s.register(p, t0);
    let e = s.update_ttl("service:db-1", "passing", "", t0).unwrap_err();
    assert_eq!(e.0, 500);
}

#[test]
fn the_reaper_removes_services_critical_past_their_floor_raised_deadline() {
    let t0 = Instant::now();
    let mut s = State::new(100, t0);
    // Asks for 1s; Consul raises it to 1m.
    let body = r#"{"ID":"gone-1","Name":"gone","Check":{"TTL":"5s","DeregisterCriticalServiceAfter":"1s"}}"#;
    let p = s.prepare(body.as_bytes()).unwrap();
    s.register(p, t0);
    let kept = r#"{"ID":"kept-1","Name":"kept","Check":{"TTL":"5s","DeregisterCriticalServiceAfter":"1m"}}"#;
    let p = s.prepare(kept.as_bytes()).unwrap();
    s.register(p, t0);
    s.update_ttl("service:kept-1", "passing", "", t0).unwrap();
    // Reaper rounds every 30 s: at 30 s and 60 s the critical one is not yet past 1 minute.
    for secs in [30, 60] {
        s.tick(t0 + Duration::from_secs(secs));
        assert!(s.services.contains_key("gone-1"), "{secs}s");
    }
    // Keep `kept` passing; the round at 90 s removes `gone` (critical since registration).
    s.update_ttl(
        "service:kept-1",
        "passing",
        "",
        t0 + Duration::from_secs(89),
    )
    .unwrap();
    assert!(s.tick(t0 + REAP_INTERVAL * 3));
    assert!(!s.services.contains_key("gone-1"));
    assert!(!s.checks.contains_key("service:gone-1"), "with its checks");
    assert!(s.services.contains_key("kept-1"));
    assert_eq!(DEREGISTER_MIN, Duration::from_secs(60));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_and_tcp_checks_are_run_by_the_double() {
    within(DEADLINE, async {
        let c = ConsulDouble::start().await;
        let app = HealthEndpoint::start(200).await;
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let tcp_addr = tcp.local_addr().unwrap();
        c.register_json(&format!(r#"{{"ID":"h","Name":"h","Check":{{"HTTP":"http://{}/health","Interval":"50ms","Timeout":"1s"}}}}"#, app.addr)).unwrap();
        c.register_json(&format!(r#"{{"ID":"t","Name":"t","Check":{{"TCP":"{tcp_addr}","Interval":"50ms","Timeout":"1s"}}}}"#)).unwrap();
        let status = |id: &'static str| {
            let c = &c;
            move |want: &'static str| async move { c.check_status(id).as_deref() == Some(want) }
        };
        eventually(SETTLE, || status("service:h")("passing")).await;
        eventually(SETTLE, || status("service:t")("passing")).await;
        app.set(429);
        eventually(SETTLE, || status("service:h")("warning")).await;
        app.set(503);
        eventually(SETTLE, || status("service:h")("critical")).await;
        drop(tcp);
        eventually(SETTLE, || status("service:t")("critical")).await;
    })
    .await
}
