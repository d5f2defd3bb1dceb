//! The DNS resolver end to end against a real dnsmasq (see `support/dnsmasq.rs`): test upstreams
//! listen on 127.0.0.2, 127.0.0.3… (all of 127.0.0.0/8 is loopback on Linux) and dnsmasq's
//! A and SRV records point at them. Covered: routing by A records and by SRV weights and
//! priorities, records changed at run time, NXDOMAIN ("no instances") versus a dead or refusing
//! name server (an error: fast 503 before the first success, the stale table after it),
//! `dns.attempts` as the number of queries per lookup (against a black-hole server that counts
//! them), and on-demand names — resolved once however many first requests race, and names
//! outside every rule refused without a single DNS query (proved by dnsmasq's query log).
//!
//! Every test owns its dnsmasq, upstreams and proxy, and runs under [`within`]'s deadline.

mod support;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use http::Request;
use serde_json::Value;
use support::dnsmasq::{Dnsmasq, Srv};
use support::external::free_port;
use support::*;

/// Every test finishes within this, or fails.
const TEST_DEADLINE: Duration = Duration::from_secs(20);
/// Deadline for one asynchronous change to settle (a refresh is due every ~1 s: the records'
/// TTL of 1 s, clamped to `dns.min_ttl`).
const SETTLE: Duration = Duration::from_secs(10);

async fn within<F: Future>(test: F) -> F::Output {
    tokio::time::timeout(TEST_DEADLINE, test)
        .await
        .expect("test did not finish within its deadline")
}

/// A config: `dns:` pointing at `nameserver` (plus `dns_extra` keys; TTL bounds 1s..30s unless
/// given), `discovery:` with a 1 s refresh interval plus `discovery` keys, and `rest` (services)
/// appended as is.
fn config(nameserver: &str, dns_extra: &str, discovery: &str, rest: &str) -> String {
    let ttl = if dns_extra.contains("min_ttl") {
        ""
    } else {
        ", min_ttl: 1s, max_ttl: 30s"
    };
    format!(
        "dns: {{nameservers: [\"{nameserver}\"]{ttl}{dns_extra}}}\n\
         discovery: {{refresh_interval: 1s{discovery}}}\n{rest}"
    )
}

/// The `/debug/services` entry of `name`, if cached.
async fn debug_service(proxy: &TestProxy, name: &str) -> Option<Value> {
    let got = get(&format!("{}/debug/services", proxy.admin()), &[])
        .await
        .ok()?;
    let json: Value = serde_json::from_slice(&got.body).ok()?;
    json["services"]
        .as_array()?
        .iter()
        .find(|s| s["name"] == name)
        .cloned()
}

/// The instance addresses `/debug/services` shows for `name`, sorted.
async fn instance_addrs(proxy: &TestProxy, name: &str) -> Vec<String> {
    let Some(svc) = debug_service(proxy, name).await else {
        return Vec::new();
    };
    let mut addrs: Vec<String> = svc["instances"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i["address"].as_str().map(String::from))
        .collect();
    addrs.sort();
    addrs
}

async fn metrics(proxy: &TestProxy) -> String {
    get(&format!("{}/metrics", proxy.admin()), &[])
        .await
        .unwrap()
        .text()
}

/// Sends `n` requests for `host` over one keep-alive connection; responses per `x-instance`.
fn addr(ip: &str, port: u16) -> String {
    SocketAddr::new(ip.parse().unwrap(), port).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routed_by_a_records_to_every_address() {
    within(async {
        let (port, _ups) =
            Upstream::start_on_shared_port(&[("127.0.0.2", "a"), ("127.0.0.3", "b")]).await;
        let dns = Dnsmasq::start(
            &[("echo.test", "127.0.0.2"), ("echo.test", "127.0.0.3")],
            &[],
        );
        let yaml = config(
            &dns.nameserver(),
            "",
            "",
            &format!(
                "services:\n  echo:\n    resolver: {{dns: {{name: echo.test, port: {port}}}}}\n"
            ),
        );
        let proxy = TestProxy::start(&yaml).await;

        assert_eq!(
            instance_addrs(&proxy, "echo").await,
            [addr("127.0.0.2", port), addr("127.0.0.3", port)]
        );
        let svc = debug_service(&proxy, "echo").await.unwrap();
        assert_eq!(svc["resolver"], "dns", "{svc}");
        assert_eq!(svc["status"]["state"], "ready", "{svc}");

        const N: usize = 1000;
        let counts = spread(&proxy, "echo", N).await;
        // Equal weights: each gets half, ±20 % (±10 points: 6 standard deviations at N = 1000).
        assert_shares(&counts, &[("a", 0.5), ("b", 0.5)], 0.2);
        assert!(
            !dns.queries("echo.test").is_empty(),
            "waypost never asked dnsmasq:\n{}",
            dns.log()
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routed_by_srv_weights_within_the_lowest_priority_group() {
    within(async {
        // Different targets and different ports; `backup` is in a less preferred group (higher
        // priority number) with a large weight: it must get nothing.
        let a = Upstream::start_on("127.0.0.2:0".parse().unwrap(), "a").await;
        let b = Upstream::start_on("127.0.0.3:0".parse().unwrap(), "b").await;
        let backup = Upstream::start_on("127.0.0.4:0".parse().unwrap(), "backup").await;
        let srv = "_http._tcp.echo.test";
        let dns = Dnsmasq::start(
            &[
                ("a.echo.test", "127.0.0.2"),
                ("b.echo.test", "127.0.0.3"),
                ("backup.echo.test", "127.0.0.4"),
            ],
            &[
                Srv::new(srv, "a.echo.test", a.addr.port(), 10, 3),
                Srv::new(srv, "b.echo.test", b.addr.port(), 10, 1),
                Srv::new(srv, "backup.echo.test", backup.addr.port(), 20, 100),
            ],
        );
        let yaml = config(
            &dns.nameserver(),
            "",
            "",
            &format!("services:\n  echo:\n    resolver: {{dns: {{srv: {srv}}}}}\n"),
        );
        let proxy = TestProxy::start(&yaml).await;

        let svc = debug_service(&proxy, "echo").await.unwrap();
        let weights: HashMap<String, u64> = svc["instances"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| {
                (
                    i["address"].as_str().unwrap().to_string(),
                    i["weight"].as_u64().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            weights,
            HashMap::from([(a.addr.to_string(), 3), (b.addr.to_string(), 1)]),
            "{svc}"
        );

        // 4000 requests: b's ±10 % band (0.225..0.275) is 3.6 standard deviations wide each side.
        const N: usize = 4000;
        let counts = spread(&proxy, "echo", N).await;
        assert_shares(&counts, &[("a", 0.75), ("b", 0.25)], 0.10);
        assert_eq!(
            backup.hit_count(),
            0,
            "a higher priority number must get nothing: {counts:?}"
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn srv_records_changed_at_run_time_are_picked_up() {
    within(async {
        let a = Upstream::start_on("127.0.0.2:0".parse().unwrap(), "a").await;
        let b = Upstream::start_on("127.0.0.3:0".parse().unwrap(), "b").await;
        let srv = "_http._tcp.echo.test";
        let hosts = [("a.echo.test", "127.0.0.2"), ("b.echo.test", "127.0.0.3")];
        let mut dns = Dnsmasq::start(
            &hosts,
            &[Srv::new(srv, "a.echo.test", a.addr.port(), 10, 1)],
        );
        let yaml = config(
            &dns.nameserver(),
            "",
            "",
            &format!("services:\n  echo:\n    resolver: {{dns: {{srv: {srv}}}}}\n"),
        );
        let proxy = TestProxy::start(&yaml).await;
        assert_eq!(instance_addrs(&proxy, "echo").await, [a.addr.to_string()]);

        // b joins the preferred group; a moves to a less preferred one.
        dns.set_srv(&[
            Srv::new(srv, "a.echo.test", a.addr.port(), 20, 1),
            Srv::new(srv, "b.echo.test", b.addr.port(), 10, 5),
        ]);
        let want = [b.addr.to_string()];
        eventually(SETTLE, || async {
            instance_addrs(&proxy, "echo").await == want
        })
        .await;
        let counts = spread(&proxy, "echo", 50).await;
        assert_eq!(counts.get("b"), Some(&50), "{counts:?}");
        let svc = debug_service(&proxy, "echo").await.unwrap();
        assert_eq!(svc["instances"][0]["weight"], 5, "{svc}");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_records_changed_at_run_time_are_picked_up_on_refresh() {
    within(async {
        let (port, ups) = Upstream::start_on_shared_port(&[
            ("127.0.0.2", "a"),
            ("127.0.0.3", "b"),
            ("127.0.0.4", "c"),
        ])
        .await;
        let mut dns = Dnsmasq::start(&[("echo.test", "127.0.0.2")], &[]);
        let yaml = config(
            &dns.nameserver(),
            "",
            "",
            &format!(
                "services:\n  echo:\n    resolver: {{dns: {{name: echo.test, port: {port}}}}}\n"
            ),
        );
        let proxy = TestProxy::start(&yaml).await;
        assert_eq!(spread(&proxy, "echo", 20).await.get("a"), Some(&20));

        // A record added.
        dns.set_hosts(&[("echo.test", "127.0.0.2"), ("echo.test", "127.0.0.3")]);
        let want = [addr("127.0.0.2", port), addr("127.0.0.3", port)];
        eventually(SETTLE, || async {
            instance_addrs(&proxy, "echo").await == want
        })
        .await;
        let counts = spread(&proxy, "echo", 200).await;
        assert!(
            counts.contains_key("a") && counts.contains_key("b"),
            "{counts:?}"
        );

        // One address changed (.3 → .4): removes half the instances, which the guard allows
        // without confirmation (it holds answers removing *more* than `max_removal`, 0.5).
        dns.set_hosts(&[("echo.test", "127.0.0.2"), ("echo.test", "127.0.0.4")]);
        let want = [addr("127.0.0.2", port), addr("127.0.0.4", port)];
        eventually(SETTLE, || async {
            instance_addrs(&proxy, "echo").await == want
        })
        .await;
        let b_before = ups[1].hit_count();
        let counts = spread(&proxy, "echo", 200).await;
        assert!(
            counts.contains_key("a") && counts.contains_key("c"),
            "{counts:?}"
        );
        assert_eq!(
            ups[1].hit_count(),
            b_before,
            "the removed address still gets traffic: {counts:?}"
        );

        let text = metrics(&proxy).await;
        let changed = metric(
            &text,
            "waypost_discovery_refresh_total",
            &[("service", "echo"), ("result", "changed")],
        );
        assert!(
            changed.unwrap_or(0.0) >= 3.0,
            "first answer + two changes: {changed:?}\n{text}"
        );
        // The next refresh brings the same answer back: counted as unchanged, not applied.
        eventually(SETTLE, || async {
            let text = metrics(&proxy).await;
            metric(
                &text,
                "waypost_discovery_refresh_total",
                &[("service", "echo"), ("result", "unchanged")],
            )
            .unwrap_or(0.0)
                >= 1.0
        })
        .await;
        assert_eq!(instance_addrs(&proxy, "echo").await, want);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nxdomain_is_a_definite_answer_with_no_instances() {
    within(async {
        let dns = Dnsmasq::start(&[("echo.test", "127.0.0.2")], &[]);
        let yaml = config(
            &dns.nameserver(),
            "",
            "",
            "services:\n  ghost:\n    resolver: {dns: {name: ghost.test, port: 8080}}\n",
        );
        // Readiness is reached: NXDOMAIN is a successful resolution to zero instances.
        let proxy = TestProxy::start(&yaml).await;
        assert_eq!(
            dns.query("ghost.test", support::dnsmasq::A),
            Some((3, 0)),
            "dnsmasq must say NXDOMAIN"
        );

        let svc = debug_service(&proxy, "ghost").await.unwrap();
        assert_eq!(svc["status"]["state"], "ready", "{svc}");
        assert_eq!(svc["status"]["last_error"], Value::Null, "{svc}");
        assert_eq!(svc["status"]["stale"], false, "{svc}");
        assert_eq!(svc["instances"].as_array().map(Vec::len), Some(0), "{svc}");

        let got = get(&format!("{}/", proxy.url()), &[("host", "ghost")])
            .await
            .unwrap();
        assert_eq!(
            (got.status, got.header("x-waypost-error")),
            (503, "no_instances"),
            "{}",
            got.text()
        );

        dns.sync();
        assert!(
            !dns.queries("ghost.test").is_empty(),
            "waypost never asked dnsmasq:\n{}",
            dns.log()
        );
        let text = metrics(&proxy).await;
        let errors = metric(
            &text,
            "waypost_discovery_refresh_total",
            &[("service", "ghost"), ("result", "error")],
        );
        assert_eq!(
            errors.unwrap_or(0.0),
            0.0,
            "NXDOMAIN is not an error\n{text}"
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_answer_is_an_error_not_nxdomain() {
    within(async {
        // dnsmasq answers REFUSED for names outside its domain: the server answered, but said
        // nothing about the name — that must not become "no instances".
        let dns = Dnsmasq::start(&[("echo.test", "127.0.0.2")], &[]);
        assert_eq!(
            dns.query("echo.elsewhere", support::dnsmasq::A)
                .map(|(rcode, _)| rcode),
            Some(5),
            "dnsmasq must say REFUSED"
        );
        let yaml = config(
            &dns.nameserver(),
            ", timeout: 200ms, attempts: 1",
            "",
            "services:\n  echo:\n    resolver: {dns: {name: echo.elsewhere, port: 8080}}\n",
        );
        let proxy = TestProxy::start_unready(&yaml).await;
        eventually(SETTLE, || async {
            debug_service(&proxy, "echo")
                .await
                .is_some_and(|s| s["status"]["state"] == "failed")
        })
        .await;
        let got = get(&format!("{}/", proxy.url()), &[("host", "echo")])
            .await
            .unwrap();
        assert_eq!(
            (got.status, got.header("x-waypost-error")),
            (503, "discovery_failed"),
            "{}",
            got.text()
        );
        assert!(refresh_errors(&proxy, "echo").await >= 1.0);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_nameserver_fails_fast_with_discovery_failed() {
    within(async {
        // A free port on which nothing listens: queries are refused or time out (200 ms).
        let dead = format!("127.0.0.1:{}", free_port());
        let yaml = config(
            &dead,
            ", timeout: 200ms, attempts: 1",
            ", resolve_timeout: 5s, backoff: {initial: 1s, max: 5s}",
            "services:\n  echo:\n    resolver: {dns: {name: echo.test, port: 8080}}\n",
        );
        let proxy = TestProxy::start_unready(&yaml).await;
        eventually(SETTLE, || async {
            debug_service(&proxy, "echo")
                .await
                .is_some_and(|s| s["status"]["state"] == "failed")
        })
        .await;
        let svc = debug_service(&proxy, "echo").await.unwrap();
        assert!(
            svc["status"]["consecutive_failures"].as_u64().unwrap_or(0) >= 1,
            "{svc}"
        );
        assert!(
            svc["status"]["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("echo.test")),
            "{svc}"
        );
        let ready = get(&format!("{}/ready", proxy.admin()), &[]).await.unwrap();
        assert_eq!(
            ready.status,
            503,
            "never resolved, so never ready: {}",
            ready.text()
        );

        let errors_before = refresh_errors(&proxy, "echo").await;
        assert!(errors_before >= 1.0, "the failed resolve is counted");
        // The failure is cached: requests do not wait for (or trigger) a resolve. The bound is
        // behavioural, not a benchmark: waiting on the resolver would take `resolve_timeout` (5 s).
        let client = client();
        for _ in 0..50 {
            let started = Instant::now();
            let req = Request::get(format!("{}/", proxy.url()))
                .header("host", "echo")
                .body(empty())
                .unwrap();
            let got = send(&client, req).await.unwrap();
            assert_eq!(
                (got.status, got.header("x-waypost-error")),
                (503, "discovery_failed"),
                "{}",
                got.text()
            );
            assert!(
                got.text().contains("echo.test"),
                "the body carries the resolver error: {}",
                got.text()
            );
            assert!(
                started.elapsed() < Duration::from_secs(2),
                "503 took {:?}",
                started.elapsed()
            );
        }
        // Retries follow the backoff (1 s, 2 s…), not the request rate.
        let errors_after = refresh_errors(&proxy, "echo").await;
        assert!(
            errors_after - errors_before <= 3.0,
            "50 requests caused {} resolves",
            errors_after - errors_before
        );
        let text = metrics(&proxy).await;
        assert_eq!(
            metric(&text, "waypost_discovery_instances", &[("service", "echo")]).unwrap_or(0.0),
            0.0,
            "{text}"
        );
    })
    .await
}

async fn refresh_errors(proxy: &TestProxy, service: &str) -> f64 {
    let text = metrics(proxy).await;
    metric(
        &text,
        "waypost_discovery_refresh_total",
        &[("service", service), ("result", "error")],
    )
    .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nameserver_that_dies_leaves_the_stale_table_serving() {
    within(async {
        let (port, _ups) = Upstream::start_on_shared_port(&[("127.0.0.2", "a")]).await;
        let mut dns = Dnsmasq::start(&[("echo.test", "127.0.0.2")], &[]);
        let yaml = config(
            &dns.nameserver(),
            ", timeout: 200ms, attempts: 1",
            ", backoff: {initial: 200ms, max: 1s}",
            &format!(
                "services:\n  echo:\n    resolver: {{dns: {{name: echo.test, port: {port}}}}}\n"
            ),
        );
        let proxy = TestProxy::start(&yaml).await;
        assert_eq!(spread(&proxy, "echo", 10).await.get("a"), Some(&10));

        dns.stop();
        eventually(SETTLE, || async {
            debug_service(&proxy, "echo")
                .await
                .is_some_and(|s| s["status"]["stale"] == true)
        })
        .await;
        let svc = debug_service(&proxy, "echo").await.unwrap();
        assert_eq!(
            svc["status"]["state"], "ready",
            "stale is still ready: {svc}"
        );
        assert!(
            svc["status"]["consecutive_failures"].as_u64().unwrap_or(0) >= 1,
            "{svc}"
        );
        assert!(svc["status"]["last_error"].is_string(), "{svc}");
        assert_eq!(svc["instances"].as_array().map(Vec::len), Some(1), "{svc}");
        let text = metrics(&proxy).await;
        assert_eq!(
            metric(&text, "waypost_discovery_stale", &[("service", "echo")]),
            Some(1.0),
            "{text}"
        );
        assert_eq!(
            metric(&text, "waypost_discovery_instances", &[("service", "echo")]),
            Some(1.0),
            "{text}"
        );
        assert!(refresh_errors(&proxy, "echo").await >= 1.0);
        assert_eq!(
            spread(&proxy, "echo", 20).await.get("a"),
            Some(&20),
            "the stale table keeps serving"
        );
        assert_eq!(
            get(&format!("{}/ready", proxy.admin()), &[])
                .await
                .unwrap()
                .status,
            200
        );

        // The name server comes back: the next refresh clears the stale mark.
        dns.restart();
        eventually(SETTLE, || async {
            debug_service(&proxy, "echo")
                .await
                .is_some_and(|s| s["status"]["stale"] == false)
        })
        .await;
        let text = metrics(&proxy).await;
        assert_eq!(
            metric(&text, "waypost_discovery_stale", &[("service", "echo")]),
            Some(0.0),
            "{text}"
        );
    })
    .await
}

/// The on-demand rule of the tests below: names under `.svc.test`, instances on `port`.
fn on_demand(nameserver: &str, port: u16, ttl: &str) -> String {
    config(
        nameserver,
        &format!(", min_ttl: {ttl}, max_ttl: {ttl}"),
        &format!(", on_demand: [{{suffix: .svc.test, resolver: {{dns: {{port: {port}}}}}}}]"),
        "",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_demand_names_resolve_on_first_use_and_others_are_refused_without_a_query() {
    within(async {
        let (port, _ups) = Upstream::start_on_shared_port(&[("127.0.0.2", "a")]).await;
        let dns = Dnsmasq::start(&[("echo.svc.test", "127.0.0.2")], &[]);
        let proxy = TestProxy::start(&on_demand(&dns.nameserver(), port, "1s")).await;
        assert!(
            debug_service(&proxy, "echo.svc.test").await.is_none(),
            "nothing is resolved before use"
        );

        let got = get(
            &format!("{}/hello", proxy.url()),
            &[("host", "echo.svc.test")],
        )
        .await
        .unwrap();
        assert_eq!(
            (got.status, got.header("x-instance")),
            (200, "a"),
            "{} {}",
            got.header("x-waypost-error"),
            got.text()
        );
        let svc = debug_service(&proxy, "echo.svc.test").await.unwrap();
        assert_eq!(svc["declared"], false, "{svc}");
        assert_eq!(svc["status"]["state"], "ready", "{svc}");

        // Under the suffix but without records: resolved (NXDOMAIN) to no instances.
        let got = get(&format!("{}/", proxy.url()), &[("host", "nope.svc.test")])
            .await
            .unwrap();
        assert_eq!(
            (got.status, got.header("x-waypost-error")),
            (503, "no_instances"),
            "{}",
            got.text()
        );

        // Outside every rule: refused, and never looked up.
        let refused = ["other.example", "svc.test", "echo.svc.test.evil.example"];
        for host in refused {
            let got = get(&format!("{}/", proxy.url()), &[("host", host)])
                .await
                .unwrap();
            assert_eq!(
                (got.status, got.header("x-waypost-error")),
                (404, "unknown_service"),
                "{host}: {}",
                got.text()
            );
        }
        dns.sync();
        assert!(
            !dns.queries("echo.svc.test").is_empty(),
            "the query log works:\n{}",
            dns.log()
        );
        assert!(!dns.queries("nope.svc.test").is_empty(), "{}", dns.log());
        assert!(
            !dns.mentions("other.example"),
            "a refused name was looked up:\n{}",
            dns.log()
        );
        assert!(
            !dns.mentions("evil.example"),
            "a refused name was looked up:\n{}",
            dns.log()
        );
        assert!(
            dns.queries("svc.test").is_empty(),
            "the bare suffix was looked up:\n{}",
            dns.log()
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_requests_cause_one_dns_query() {
    within(async {
        let (port, _ups) = Upstream::start_on_shared_port(&[("127.0.0.2", "a")]).await;
        let dns = Dnsmasq::start(&[("echo.svc.test", "127.0.0.2")], &[]);
        // A 20 s TTL (min = max) keeps refreshes out of the counting window.
        let proxy = TestProxy::start(&on_demand(&dns.nameserver(), port, "20s")).await;

        let url = proxy.url();
        let requests: Vec<_> = (0..100)
            .map(|_| {
                let url = url.clone();
                tokio::spawn(
                    async move { get(&format!("{url}/"), &[("host", "echo.svc.test")]).await },
                )
            })
            .collect();
        for r in requests {
            let got = r.await.unwrap().unwrap();
            assert_eq!(
                (got.status, got.header("x-instance")),
                (200, "a"),
                "{} {}",
                got.header("x-waypost-error"),
                got.text()
            );
        }
        dns.sync();
        let queries = dns.queries("echo.svc.test");
        let of = |t: &str| queries.iter().filter(|q| *q == t).count();
        assert_eq!(of("A"), 1, "{queries:?}\n{}", dns.log());
        assert!(of("AAAA") <= 1, "{queries:?}");
        assert_eq!(queries.len(), of("A") + of("AAAA"), "{queries:?}");
    })
    .await
}

/// `(transport, qtype, name)` of each query a [`BlackHole`] received.
type Seen = std::sync::Arc<std::sync::Mutex<Vec<(&'static str, u16, String)>>>;

/// A name server that reads queries over UDP and TCP on one port and never answers.
struct BlackHole {
    addr: SocketAddr,
    seen: Seen,
    _tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl BlackHole {
    async fn start() -> BlackHole {
        for _ in 0..20 {
            let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let addr = udp.local_addr().unwrap();
            let Ok(tcp) = tokio::net::TcpListener::bind(addr).await else {
                continue;
            };
            let seen = Seen::default();
            let s = seen.clone();
            let u = tokio::spawn(async move {
                let mut buf = [0u8; 1500];
                while let Ok((n, _)) = udp.recv_from(&mut buf).await {
                    if let Some((t, name)) = question(&buf[..n]) {
                        s.lock().unwrap().push(("udp", t, name));
                    }
                }
            });
            let s = seen.clone();
            let t = tokio::spawn(async move {
                while let Ok((mut conn, _)) = tcp.accept().await {
                    let s = s.clone();
                    tokio::spawn(async move {
                        use tokio::io::AsyncReadExt;
                        // Reads length-prefixed queries until the client hangs up; never answers.
                        while let Ok(len) = conn.read_u16().await {
                            let mut msg = vec![0; usize::from(len)];
                            if conn.read_exact(&mut msg).await.is_err() {
                                break;
                            }
                            if let Some((t, name)) = question(&msg) {
                                s.lock().unwrap().push(("tcp", t, name));
                            }
                        }
                    });
                }
            });
            return BlackHole {
                addr,
                seen,
                _tasks: vec![u, t],
            };
        }
        panic!("no port free for UDP and TCP");
    }

    fn queries(&self, name: &str, qtype: u16) -> Vec<&'static str> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, t, n)| *t == qtype && n == name)
            .map(|(tr, _, _)| *tr)
            .collect()
    }
}

impl Drop for BlackHole {
    fn drop(&mut self) {
        for t in &self._tasks {
            t.abort();
        }
    }
}

/// The (qtype, name) of a DNS message's first question.
fn question(msg: &[u8]) -> Option<(u16, String)> {
    let mut i = 12;
    let mut labels = Vec::new();
    loop {
        let len = usize::from(*msg.get(i)?);
        i += 1;
        if len == 0 {
            break;
        }
        labels.push(String::from_utf8_lossy(msg.get(i..i + len)?).to_ascii_lowercase());
        i += len;
    }
    Some((
        u16::from_be_bytes([*msg.get(i)?, *msg.get(i + 1)?]),
        labels.join("."),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_attempts_is_the_number_of_queries_sent() {
    within(async {
        let hole = BlackHole::start().await;
        // One resolve only: the retry after it is 20 s away.
        let yaml = config(
            &hole.addr.to_string(),
            ", timeout: 300ms, attempts: 1",
            ", resolve_timeout: 5s, backoff: {initial: 20s, max: 20s}",
            "services:\n  echo:\n    resolver: {dns: {name: echo.test, port: 8080}}\n",
        );
        let proxy = TestProxy::start_unready(&yaml).await;
        eventually(SETTLE, || async {
            debug_service(&proxy, "echo")
                .await
                .is_some_and(|s| s["status"]["state"] == "failed")
        })
        .await;
        let a = hole.queries("echo.test", support::dnsmasq::A);
        // `dns.attempts: 1` — "queries tried per lookup before it fails" — means one query.
        assert_eq!(
            a.len(),
            1,
            "A queries sent for one lookup with dns.attempts 1: {a:?}; all: {:?}",
            hole.seen.lock().unwrap()
        );
    })
    .await
}
