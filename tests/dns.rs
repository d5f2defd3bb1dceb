//! The DNS resolver end to end against a real dnsmasq (see `support/dnsmasq.rs`): test upstreams
//! listen on 127.0.0.2, 127.0.0.3… (all of 127.0.0.0/8 is loopback on Linux) and dnsmasq's
//! A and SRV records point at them. Covered here: routing by A records and by SRV weights and
//! priorities, records changed at run time, and on-demand names — resolved once however many
//! first requests race, and names outside every rule refused without a single DNS query (proved
//! by dnsmasq's query log). Failure modes are in `dns_failures.rs`.
//!
//! Every test owns its dnsmasq, upstreams and proxy, and runs under `within`'s deadline. The
//! config sets `discovery.refresh_interval` to an hour (see `dnstest::config`): records changed
//! at run time are picked up within seconds only because the records' TTL (1 s) schedules the
//! refresh.

mod support;

use support::dnsmasq::{Dnsmasq, Srv};
use support::dnstest::*;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routed_by_a_records_to_every_address() {
    within(TEST_DEADLINE, async {
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
            &a_service("echo", "echo.test", port),
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
    within(TEST_DEADLINE, async {
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
        let yaml = config(&dns.nameserver(), "", "", &srv_service("echo", srv));
        let proxy = TestProxy::start(&yaml).await;

        let mut want = vec![(a.addr.to_string(), 3), (b.addr.to_string(), 1)];
        want.sort();
        assert_eq!(
            instance_weights(&proxy, "echo").await,
            want,
            "the priority-10 instances with their SRV weights, and not the backup"
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
async fn srv_records_whose_weights_are_all_zero_get_equal_shares() {
    within(TEST_DEADLINE, async {
        let a = Upstream::start_on("127.0.0.2:0".parse().unwrap(), "a").await;
        let b = Upstream::start_on("127.0.0.3:0".parse().unwrap(), "b").await;
        let srv = "_http._tcp.echo.test";
        let dns = Dnsmasq::start(
            &[("a.echo.test", "127.0.0.2"), ("b.echo.test", "127.0.0.3")],
            &[
                Srv::new(srv, "a.echo.test", a.addr.port(), 10, 0),
                Srv::new(srv, "b.echo.test", b.addr.port(), 10, 0),
            ],
        );
        let proxy = TestProxy::start(&config(
            &dns.nameserver(),
            "",
            "",
            &srv_service("echo", srv),
        ))
        .await;

        // RFC 2782: all-zero weights mean "no preference" — not "drain every instance".
        let weights = instance_weights(&proxy, "echo").await;
        assert_eq!(weights.len(), 2, "{weights:?}");
        assert!(
            weights[0].1 > 0 && weights[0].1 == weights[1].1,
            "equal, non-zero weights: {weights:?}"
        );

        const N: usize = 1000;
        let counts = spread(&proxy, "echo", N).await;
        // ±20 % (±10 points: 6 standard deviations at N = 1000).
        assert_shares(&counts, &[("a", 0.5), ("b", 0.5)], 0.2);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn srv_records_changed_at_run_time_are_picked_up() {
    within(TEST_DEADLINE, async {
        let a = Upstream::start_on("127.0.0.2:0".parse().unwrap(), "a").await;
        let b = Upstream::start_on("127.0.0.3:0".parse().unwrap(), "b").await;
        let srv = "_http._tcp.echo.test";
        let hosts = [("a.echo.test", "127.0.0.2"), ("b.echo.test", "127.0.0.3")];
        let mut dns = Dnsmasq::start(
            &hosts,
            &[Srv::new(srv, "a.echo.test", a.addr.port(), 10, 1)],
        );
        let yaml = config(&dns.nameserver(), "", "", &srv_service("echo", srv));
        let proxy = TestProxy::start(&yaml).await;
        assert_eq!(instance_addrs(&proxy, "echo").await, [a.addr.to_string()]);

        // b joins the preferred group; a moves to a less preferred one. With refresh_interval
        // at an hour, only the TTL (1 s) can bring the change in within SETTLE.
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
    within(TEST_DEADLINE, async {
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
            &a_service("echo", "echo.test", port),
        );
        let proxy = TestProxy::start(&yaml).await;
        assert_eq!(spread(&proxy, "echo", 20).await.get("a"), Some(&20));

        // A record added: picked up on the refresh the TTL (1 s) schedules, not the hour-long
        // refresh_interval.
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

        // The counters are bumped before the table is published, so both include the change
        // just seen (earlier refreshes between the changes may have counted "unchanged").
        let refreshes = |result| refreshes(&proxy, "echo", result);
        let changed = refreshes("changed").await;
        assert!(
            changed >= 3.0,
            "first answer + two changes: {changed}\n{}",
            metrics(&proxy).await
        );
        let unchanged = refreshes("unchanged").await;
        // The next refresh brings the same answer back: counted as unchanged, not applied.
        eventually(SETTLE, || async {
            refreshes("unchanged").await > unchanged
        })
        .await;
        assert_eq!(
            refreshes("changed").await,
            changed,
            "the same answer again is not a change"
        );
        assert_eq!(instance_addrs(&proxy, "echo").await, want);
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
    within(TEST_DEADLINE, async {
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
        expect_error(&proxy, "nope.svc.test", 503, "no_instances").await;

        // Outside every rule: refused, and never looked up.
        let refused = ["other.example", "svc.test", "echo.svc.test.evil.example"];
        for host in refused {
            expect_error(&proxy, host, 404, "unknown_service").await;
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
    within(TEST_DEADLINE, async {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aaaa_records_are_instances_too() {
    within(TEST_DEADLINE, async {
        // Documentation-prefix addresses (RFC 3849): the test reads the table, sends them nothing.
        let dns = Dnsmasq::start(
            &[
                ("v6.test", "2001:db8::6"),
                ("dual.test", "127.0.0.4"),
                ("dual.test", "2001:db8::4"),
            ],
            &[],
        );
        let services = a_service("v6", "v6.test", 8080) + &a_service("dual", "dual.test", 8080);
        let proxy = TestProxy::start(&config(&dns.nameserver(), "", "", &services)).await;
        assert_eq!(
            instance_addrs(&proxy, "v6").await,
            [addr("2001:db8::6", 8080)]
        );
        // A dual-stack name gives both families, each address one instance.
        assert_eq!(
            instance_addrs(&proxy, "dual").await,
            [addr("127.0.0.4", 8080), addr("2001:db8::4", 8080)]
        );
    })
    .await
}
