//! Resilient forwarding end to end on real sockets: dead, black-holed, failing and slow
//! instances; the ejection cap; smooth weighted round robin; the retry budget; which bodies are
//! replayed; the per-service concurrency cap and the connection cap. Traffic is bounded in
//! count; nothing asserts on timings (counts and statuses only).

#[path = "resilience/faulty.rs"]
mod faulty;
mod support;

use std::net::SocketAddr;
use std::time::Duration;

use faulty::{Faulty, Mode};
use http::Request;
use support::*;

/// `n` GETs for `echo` from `clients` concurrent keep-alive clients that never retry; returns
/// the statuses seen, with the instance that answered (or the waypost error kind).
async fn load(proxy: &TestProxy, clients: usize, n: usize) -> Vec<(u16, String)> {
    let url = proxy.url();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let c = client();
            let mut seen = Vec::new();
            for _ in 0..n / clients {
                let req = Request::get(format!("{url}/"))
                    .header("host", "echo")
                    .body(empty())
                    .unwrap();
                let got = send(&c, req).await.unwrap();
                let who = match got.headers.get("x-waypost-error") {
                    Some(kind) => kind.to_str().unwrap().to_string(),
                    None => got.header("x-instance").to_string(),
                };
                seen.push((got.status, who));
            }
            seen
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}

fn failures(seen: &[(u16, String)]) -> Vec<&(u16, String)> {
    seen.iter().filter(|(s, _)| *s != 200).collect()
}

fn service(instances: &[(SocketAddr, u32)], extra: &str) -> String {
    format!("services:\n{}{extra}", static_service("echo", instances))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_killed_under_load_costs_the_client_nothing() {
    within(Duration::from_secs(60), async {
        let (a, b) = (
            Faulty::start("a", Mode::Ok).await,
            Faulty::start("b", Mode::Ok).await,
        );
        let mut c = Faulty::start("c", Mode::Ok).await;
        let proxy = TestProxy::start(&service(&[(a.addr, 1), (b.addr, 1), (c.addr, 1)], "")).await;
        let warm = load(&proxy, 4, 400).await;
        assert!(failures(&warm).is_empty());
        assert!(c.hits() > 50, "c served before it died");
        // Killed while the load goes on: pooled connections break, new ones are refused.
        let killer = async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            c.kill();
        };
        let (seen, ()) = tokio::join!(load(&proxy, 4, 1200), killer);
        assert!(failures(&seen).is_empty(), "{:?}", failures(&seen));
        assert!(seen.iter().any(|(_, who)| who == "a"));
        // The dead instance was ejected: later traffic does not even try it.
        let text = metrics(&proxy).await;
        let ejected = metric(
            &text,
            "waypost_balance_ejections_total",
            &[("service", "echo")],
        );
        assert_eq!(ejected, Some(1.0), "{text}");
        let retries = metric(
            &text,
            "waypost_forward_retries_total",
            &[("service", "echo"), ("reason", "connect")],
        );
        assert!(retries.is_some_and(|r| r >= 1.0), "{text}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_black_hole_costs_one_attempt_timeout_then_traffic_moves_away() {
    within(Duration::from_secs(60), async {
        let (a, b) = (Faulty::start("a", Mode::Ok).await, Faulty::start("b", Mode::Ok).await);
        let hole = Faulty::start("hole", Mode::BlackHole).await;
        let extra = "upstream: {timeout: 200ms, deadline: 2s}\nretry: {retry_on: [connect, reset, timeout, 503]}\noutlier: {consecutive_failures: 3}\n";
        let yaml = format!(
            "{extra}{}",
            service(&[(a.addr, 1), (b.addr, 1), (hole.addr, 1)], "")
        );
        let proxy = TestProxy::start(&yaml).await;
        let seen = load(&proxy, 4, 200).await;
        assert!(failures(&seen).is_empty(), "{:?}", failures(&seen));
        // Three timeouts in a row eject it (a fourth may be in flight meanwhile).
        assert!((3..=7).contains(&hole.hits()), "hole saw {}", hole.hits());
        let s = debug_service(&proxy, "echo").await.unwrap();
        let hole_view = s["instances"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["address"] == hole.addr.to_string())
            .unwrap()
            .clone();
        assert!(hole_view["ejected_for_seconds"].is_number(), "{s}");
    })
    .await;
}

#[tokio::test]
async fn the_total_deadline_answers_504_when_retries_are_off() {
    within(Duration::from_secs(20), async {
        let hole = Faulty::start("hole", Mode::BlackHole).await;
        let extra = "upstream: {timeout: 10s, deadline: 300ms}\nretry: {attempts: 1}\n";
        let proxy = TestProxy::in_front_of_with(hole.addr, extra).await;
        let got = expect_error(&proxy, "echo", 504, "upstream_timeout").await;
        assert!(got.text().contains("300ms"), "{}", got.text());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fast_503_instance_is_ejected_and_comes_back_after_it_recovers() {
    within(Duration::from_secs(60), async {
        let (a, b) = (
            Faulty::start("a", Mode::Ok).await,
            Faulty::start("b", Mode::Ok).await,
        );
        let bad = Faulty::start("bad", Mode::Fail).await;
        let extra = "outlier: {consecutive_5xx: 3, base_ejection: 1s}\n";
        let yaml = format!(
            "{extra}{}",
            service(&[(a.addr, 1), (b.addr, 1), (bad.addr, 1)], "")
        );
        let proxy = TestProxy::start(&yaml).await;
        // Its 503s are retried elsewhere: the client sees none.
        let first = load(&proxy, 1, 30).await;
        assert!(failures(&first).is_empty(), "{:?}", failures(&first));
        let before = bad.hits();
        let seen = load(&proxy, 2, 400).await;
        assert!(failures(&seen).is_empty());
        let share = (bad.hits() - before) as f64 / 400.0;
        assert!(share < 0.05, "ejected instance got {share:.3} of traffic");
        // It recovers: after its ejection a trial request succeeds and it is back.
        bad.set(Mode::Ok);
        eventually(Duration::from_secs(10), || async {
            let seen = load(&proxy, 1, 20).await;
            seen.iter().any(|(_, who)| who == "bad")
        })
        .await;
        let back = load(&proxy, 1, 300).await;
        let n = back.iter().filter(|(_, who)| who == "bad").count();
        assert!(n > 50, "back in rotation: {n} of 300");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_two_of_three_failing_at_most_half_are_ejected() {
    within(Duration::from_secs(60), async {
        let good = Faulty::start("good", Mode::Ok).await;
        let (x, y) = (
            Faulty::start("x", Mode::Fail).await,
            Faulty::start("y", Mode::Fail).await,
        );
        let extra =
            "retry: {attempts: 1}\noutlier: {consecutive_5xx: 2, max_ejected_percent: 50}\n";
        let yaml = format!(
            "{extra}{}",
            service(&[(good.addr, 1), (x.addr, 1), (y.addr, 1)], "")
        );
        let proxy = TestProxy::start(&yaml).await;
        let _ = load(&proxy, 1, 50).await;
        let seen = load(&proxy, 1, 400).await;
        let to = |n: &str| seen.iter().filter(|(_, w)| w == n).count();
        // One of the two failing instances is ejected, the other stays: traffic spreads over
        // two instances, not all on the one left.
        let (gx, gy) = (to("x"), to("y"));
        assert!(gx.min(gy) < 20 && gx.max(gy) > 120, "x {gx}, y {gy}");
        assert!(to("good") > 120 && to("good") < 280, "good {}", to("good"));
        let text = metrics(&proxy).await;
        let ejected = metric(
            &text,
            "waypost_balance_ejected_instances",
            &[("service", "echo")],
        );
        assert_eq!(ejected, Some(1.0));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p2c_moves_traffic_off_a_slow_instance_and_random_does_not() {
    within(Duration::from_secs(60), async {
        let mut shares = Vec::new();
        for kind in ["p2c", "random"] {
            let (a, b) = (
                Faulty::start("a", Mode::Ok).await,
                Faulty::start("b", Mode::Ok).await,
            );
            let slow = Faulty::start("slow", Mode::Slow).await;
            let yaml = format!(
                "balancer: {kind}\n{}",
                service(&[(a.addr, 1), (b.addr, 1), (slow.addr, 1)], "")
            );
            let proxy = TestProxy::start(&yaml).await;
            let seen = load(&proxy, 8, 480).await;
            assert!(failures(&seen).is_empty());
            let n = seen.iter().filter(|(_, w)| w == "slow").count();
            shares.push(n as f64 / seen.len() as f64);
        }
        let (p2c, random) = (shares[0], shares[1]);
        assert!(p2c < 0.15, "p2c gave the slow instance {p2c:.3}");
        assert!(random > 0.25, "random gave the slow instance {random:.3}");
    })
    .await;
}

#[tokio::test]
async fn smooth_weighted_round_robin_interleaves_exactly() {
    within(Duration::from_secs(30), async {
        for (weights, want) in [
            (&[3u32, 1][..], "aabaaabaaaba"),
            (&[5, 1, 1][..], "aabacaaaabacaa"),
        ] {
            // Ties go to the first in table order, which is by address: name the instances
            // a, b, c in that order.
            let mut ups = Vec::new();
            for i in 0..weights.len() {
                ups.push(Faulty::start(&i.to_string(), Mode::Ok).await);
            }
            ups.sort_by_key(|u| u.addr);
            let letter = |name: &str| {
                let rank = ups.iter().position(|u| u.name == name).unwrap();
                (b'a' + rank as u8) as char
            };
            let list: Vec<_> = ups.iter().zip(weights).map(|(u, &w)| (u.addr, w)).collect();
            let proxy =
                TestProxy::start(&format!("balancer: round_robin\n{}", service(&list, ""))).await;
            let seen = load(&proxy, 1, want.len()).await;
            let got: String = seen.iter().map(|(_, w)| letter(w)).collect();
            assert_eq!(got, want, "weights {weights:?}");
        }
    })
    .await;
}

#[tokio::test]
async fn the_budget_bounds_retries_when_every_instance_fails() {
    within(Duration::from_secs(30), async {
        let ups = [
            Faulty::start("a", Mode::Fail).await,
            Faulty::start("b", Mode::Fail).await,
            Faulty::start("c", Mode::Fail).await,
        ];
        let extra = "retry: {attempts: 3, budget: {ratio: 0.2, min_per_second: 1, window: 10s}}\noutlier: {consecutive_5xx: 0}\n";
        let list: Vec<_> = ups.iter().map(|u| (u.addr, 1)).collect();
        let proxy = TestProxy::start(&format!("{extra}{}", service(&list, ""))).await;
        let seen = load(&proxy, 1, 200).await;
        assert!(seen.iter().all(|(s, _)| *s == 503));
        let sent: usize = ups.iter().map(Faulty::hits).sum();
        // 200 requests, at most 0.2 × 200 + 1/s × 10 s retries (the window outlasts the test).
        assert!(sent > 200 && sent <= 200 + 40 + 10, "upstreams saw {sent}");
        let text = metrics(&proxy).await;
        let refused = metric(
            &text,
            "waypost_forward_retry_budget_exhausted_total",
            &[("service", "echo")],
        );
        assert!(refused.is_some_and(|r| r > 0.0), "{text}");
    })
    .await;
}

#[tokio::test]
async fn a_buffered_put_is_retried_and_a_streamed_one_or_a_post_is_not() {
    within(Duration::from_secs(30), async {
        let (bad, good) = (
            Faulty::start("bad", Mode::FailWrites).await,
            Faulty::start("good", Mode::Ok).await,
        );
        let extra =
            "balancer: round_robin\nretry: {buffer: 64KiB}\noutlier: {consecutive_5xx: 0}\n";
        let proxy = TestProxy::start(&format!(
            "{extra}{}",
            service(&[(bad.addr, 1), (good.addr, 1)], "")
        ))
        .await;
        let c = client();
        let send_one = |method: &str, body: TestBody| {
            Request::builder()
                .method(method)
                .uri(format!("{}/", proxy.url()))
                .header("host", "echo")
                .body(body)
                .unwrap()
        };
        // Round robin alternates: of every two requests, one goes to `bad` first.
        for _ in 0..4 {
            let got = send(&c, send_one("PUT", full(vec![b'x'; 10_000])))
                .await
                .unwrap();
            assert_eq!((got.status, got.text()), (200, "10000".to_string()));
        }
        let mut statuses = Vec::new();
        for _ in 0..4 {
            let got = send(&c, send_one("PUT", streamed_body(200_000)))
                .await
                .unwrap();
            statuses.push(got.status);
        }
        for _ in 0..4 {
            let got = send(&c, send_one("POST", full("small"))).await.unwrap();
            statuses.push(got.status);
        }
        assert_eq!(
            statuses.iter().filter(|&&s| s == 503).count(),
            4,
            "{statuses:?}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_concurrency_cap_answers_503_overloaded_with_retry_after() {
    within(Duration::from_secs(30), async {
        let hole = Faulty::start("hole", Mode::BlackHole).await;
        let yaml = format!(
            "upstream: {{timeout: 5s}}\nservices:\n{}    limits: {{max_concurrent: 2}}\n",
            static_service("echo", &[(hole.addr, 1)])
        );
        let proxy = TestProxy::start(&yaml).await;
        let url = proxy.url();
        let held: Vec<_> = (0..2)
            .map(|_| tokio::spawn(get_echo(url.clone())))
            .collect();
        eventually(SETTLE, || async { hole.hits() == 2 }).await;
        let got = expect_error(&proxy, "echo", 503, "overloaded").await;
        assert_eq!(got.header("retry-after"), "1");
        for h in held {
            h.abort();
        }
    })
    .await;
}

async fn get_echo(url: String) -> u16 {
    get(&format!("{url}/"), &[("host", "echo")])
        .await
        .map_or(0, |g| g.status)
}

#[tokio::test]
async fn connections_beyond_the_cap_wait_and_are_served_once_one_closes() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    within(Duration::from_secs(30), async {
        let up = Faulty::start("a", Mode::Ok).await;
        let proxy = TestProxy::in_front_of_with(up.addr, "limits: {max_connections: 2}\n").await;
        let request = b"GET / HTTP/1.1\r\nHost: echo\r\n\r\n";
        let mut open = Vec::new();
        for _ in 0..2 {
            let mut s = tokio::net::TcpStream::connect(proxy.addrs.outbound)
                .await
                .unwrap();
            s.write_all(request).await.unwrap();
            let mut buf = [0u8; 512];
            let n = s.read(&mut buf).await.unwrap();
            assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
            open.push(s);
        }
        // The third connects (the kernel's backlog holds it) but is not served...
        let mut third = tokio::net::TcpStream::connect(proxy.addrs.outbound)
            .await
            .unwrap();
        third.write_all(request).await.unwrap();
        let mut buf = [0u8; 512];
        let waiting = tokio::time::timeout(Duration::from_millis(300), third.read(&mut buf)).await;
        assert!(waiting.is_err(), "served beyond max_connections");
        // ...until one of the two closes.
        drop(open.pop());
        let n = third.read(&mut buf).await.unwrap();
        assert!(
            buf[..n].starts_with(b"HTTP/1.1 200"),
            "{:?}",
            String::from_utf8_lossy(&buf[..n])
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_instance_ramps_up_over_slow_start() {
    within(Duration::from_secs(60), async {
        let dir = tempfile::tempdir().unwrap();
        let (old, new) = (Faulty::start("old", Mode::Ok).await, Faulty::start("new", Mode::Ok).await);
        let registrar = waypost::registry::file::FileRegistrar::new(dir.path());
        let register = |addr: SocketAddr| {
            registrar
                .write_blocking(&registration("echo", &addr.to_string(), 1, &[]))
                .unwrap()
        };
        register(old.addr);
        let yaml = format!(
            "registry: {{file: {{dir: {}}}}}\nslow_start: 3s\nservices:\n  echo:\n    resolver: {{file: {{}}}}\n",
            dir.path().display()
        );
        let proxy = TestProxy::start(&yaml).await;
        register(new.addr);
        eventually(SETTLE, || async {
            load(&proxy, 1, 50).await.iter().any(|(_, w)| w == "new")
        })
        .await;
        // Buckets of 200 requests until the new instance has its full share (half).
        let mut shares = Vec::new();
        while shares.last().is_none_or(|&s: &f64| s < 0.4) {
            let seen = load(&proxy, 2, 200).await;
            assert!(failures(&seen).is_empty());
            shares.push(seen.iter().filter(|(_, w)| w == "new").count() as f64 / 200.0);
            assert!(shares.len() < 200, "never reached its share: {shares:?}");
        }
        assert!(shares.len() >= 3, "ramped in fewer than three buckets: {shares:?}");
        assert!(shares[0] < 0.3, "started near its full share: {shares:?}");
    })
    .await;
}
