//! The Consul agent misbehaving under a running waypost (the double's fault knobs, see
//! `support/consul.rs`): an index that goes backwards, an index of 0, waits that run out with no
//! change, 500s, an agent that goes away, a token the agent requires — and waypost's own exits,
//! SIGTERM (deregistered before the listener closes) and SIGKILL (critical within the TTL, peers
//! stop routing to it). In each blocking-loop case the requests the double counts stay within
//! the loop's rate bound, and the table converges.
//!
//! Services here poll an hour apart unless a test says otherwise: what changes reaches the table
//! through the blocking query, which is what these tests watch.

mod support;

use std::time::Duration;

use support::consul::{ConsulDouble, Rights};
use support::external::{free_port, spawn_waypost, Proc};
use support::*;
use tokio::time::Instant;

/// Every test finishes within this, or fails.
const DEADLINE: Duration = Duration::from_secs(60);

/// A passing instance of `echo` at `up`, registered directly in the double.
fn add(c: &ConsulDouble, up: &Upstream) {
    c.register_json(&format!(
        r#"{{"ID":"echo:{0}","Name":"echo","Address":"127.0.0.1","Port":{1},"Check":{{"TTL":"1h","Status":"passing"}}}}"#,
        up.addr,
        up.addr.port()
    ))
    .unwrap();
}

/// The setup of the blocking-loop cases: the double with `echo` at `a`, waypost resolving it,
/// and `b` ready to join.
struct Fleet {
    c: ConsulDouble,
    b: Upstream,
    proxy: TestProxy,
    _a: Upstream,
}

impl Fleet {
    /// `registry`: extra `registry.consul` lines; `discovery`: the content of the `discovery:`
    /// mapping (polls an hour apart when empty).
    async fn start(registry: &str, discovery: &str) -> Fleet {
        let c = ConsulDouble::start().await;
        let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
        add(&c, &a);
        let discovery = if discovery.is_empty() {
            "refresh_interval: 1h"
        } else {
            discovery
        };
        let proxy = TestProxy::start(&format!(
            "{}discovery: {{{discovery}}}\nservices:\n  echo: {{resolver: {{consul: {{}}}}}}\n",
            c.registry_yaml(registry)
        ))
        .await;
        Fleet { c, b, proxy, _a: a }
    }

    /// `b` registers in the double.
    fn b_joins(&self) {
        add(&self.c, &self.b);
    }

    /// Waits until waypost routes to both.
    async fn converged(&self) {
        eventually(SETTLE, || async {
            answering(&self.proxy, "echo", 20).await == ["a", "b"]
        })
        .await;
    }

    /// For `how_long`, every 100 ms, the instances answering five requests satisfy `ok`.
    async fn serving(&self, how_long: Duration, ok: impl Fn(&[String]) -> bool) {
        let since = Instant::now();
        while since.elapsed() < how_long {
            let names = answering(&self.proxy, "echo", 5).await;
            assert!(ok(&names), "{names:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The value of a sample of `/metrics` (0 when absent).
    async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metric(&metrics(&self.proxy).await, name, labels).unwrap_or(0.0)
    }

    /// Asserts the health requests since `since` stay within the watch's rate bound at
    /// `per_second` (its token bucket alone allows a burst of 2, then 10 a second).
    fn assert_bounded(&self, since: Instant, per_second: f64) {
        let requests = self.c.count_since("health", since);
        let secs = since.elapsed().as_secs_f64();
        let bound = 3.0 + secs * per_second;
        assert!(
            requests as f64 <= bound,
            "{requests} health requests in {secs:.1}s (bound {bound:.0})"
        );
    }
}

const RESETS: &str = "waypost_registry_consul_index_resets_total";
const ERRORS: &str = "waypost_registry_consul_request_errors_total";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_index_going_backwards_resets_the_watch_and_the_table_converges() {
    within(DEADLINE, async {
        let f = Fleet::start("", "").await;
        let c = Upstream::start("c").await;
        // A change first, so the cache holds a revision from the watch.
        f.b_joins();
        f.converged().await;
        let since = Instant::now();
        // Snapshot restores: each wakes the blocking query with a lower index than it asked
        // from (the instances unchanged); the watch starts over from 0 and then blocks from the
        // restored index.
        for low in (46..=50).rev() {
            f.c.restore_index(low);
            let blocking = format!("index={low}&");
            eventually(SETTLE, || async {
                f.c.requests()
                    .iter()
                    .any(|r| r.path_and_query.contains(&blocking))
            })
            .await;
        }
        assert_eq!(f.metric(RESETS, &[("reason", "backwards")]).await, 5.0);
        // A change after the restores, at an index below every one seen before them, still
        // reaches the table (polls are an hour apart).
        add(&f.c, &c);
        eventually(SETTLE, || async {
            answering(&f.proxy, "echo", 30).await == ["a", "b", "c"]
        })
        .await;
        f.assert_bounded(since, 10.0);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_index_of_zero_never_busy_loops_and_changes_still_arrive() {
    within(DEADLINE, async {
        let f = Fleet::start("", "").await;
        // Every answer now says index 0: a client that sends it back answers itself at once,
        // over and over. waypost waits for index 1 instead, and pauses a second each time.
        let since = Instant::now();
        f.c.set_knobs(|k| k.index_zero = true);
        // The change wakes the waiting query, whose answer says 0.
        f.b_joins();
        f.converged().await;
        eventually(SETTLE, || async {
            f.metric(RESETS, &[("reason", "zero")]).await >= 2.0
        })
        .await;
        // Every answer says 0 from now on: watch the loop for a while as requests flow.
        f.serving(Duration::from_secs(3), |names| {
            names.iter().all(|n| n == "a" || n == "b")
        })
        .await;
        // About one request a second (the pause), where the rate limit alone allows ten.
        f.assert_bounded(since, 2.0);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_running_out_with_no_change_asks_again_at_the_wait_s_pace() {
    within(DEADLINE, async {
        let f = Fleet::start("    wait: 200ms\n", "").await;
        let since = Instant::now();
        let changed = [("service", "echo"), ("result", "changed")];
        let before = f.metric("waypost_discovery_refresh_total", &changed).await;
        // Several waits run out with nothing new: each asks again, none reaches the cache.
        eventually(SETTLE, || async { f.c.count_since("health", since) >= 5 }).await;
        assert_eq!(
            f.metric("waypost_discovery_refresh_total", &changed).await,
            before,
            "an unchanged answer is not pushed"
        );
        // One request per 200ms wait (plus its jitter) at most.
        f.assert_bounded(since, 5.0);
        f.b_joins();
        f.converged().await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_500s_back_off_keep_the_table_and_it_converges_after() {
    within(DEADLINE, async {
        // Polls every 300ms here, so the failures show as a stale table.
        let f = Fleet::start(
            "",
            "refresh_interval: 300ms, backoff: {initial: 1s, max: 5s}",
        )
        .await;
        let since = Instant::now();
        f.c.set_knobs(|k| k.failing = true);
        let stale = [("service", "echo")];
        eventually(SETTLE, || async {
            f.metric("waypost_discovery_stale", &stale).await == 1.0
        })
        .await;
        f.b_joins(); // lands while the agent fails
        f.serving(Duration::from_secs(3), |names| names == ["a"])
            .await;
        // The watch backs off (250ms doubling) and the polls back off (1s doubling): far below
        // the 10 a second the rate limit alone would allow.
        f.assert_bounded(since, 4.0);
        assert!(
            f.metric(ERRORS, &[("op", "health"), ("kind", "server")])
                .await
                >= 2.0
        );
        f.c.set_knobs(|k| k.failing = false);
        f.converged().await;
        eventually(SETTLE, || async {
            f.metric("waypost_discovery_stale", &stale).await == 0.0
        })
        .await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_that_goes_away_leaves_the_table_in_place_and_the_watch_comes_back() {
    within(DEADLINE, async {
        let mut f = Fleet::start("    request_timeout: 500ms\n", "").await;
        f.c.go_away();
        f.serving(Duration::from_secs(2), |names| names == ["a"])
            .await;
        f.c.come_back().await;
        f.b_joins();
        // Only the watch can bring b: polls are an hour apart.
        f.converged().await;
        assert!(
            f.metric(ERRORS, &[("op", "health"), ("kind", "unavailable")])
                .await
                >= 1.0
        );
    })
    .await
}

/// waypost (the binary) registering `shop` at `app` in the double as `name`, with `env`; its
/// admin port, outbound port and process.
fn spawn_registering(
    c: &ConsulDouble,
    name: &str,
    app: &Upstream,
    registry: &str,
    extra: &str,
    dir: &std::path::Path,
    env: &[(&str, &str)],
) -> (Proc, u16, u16) {
    let (port, admin) = (free_port(), free_port());
    let yaml = format!(
        "listen: 127.0.0.1:{port}\nadmin: {{listen: 127.0.0.1:{admin}}}\n{}{extra}register:\n  - service: shop\n    address: \"{}\"\n    registry: consul\n    check: none\n",
        c.registry_yaml(registry),
        app.addr
    );
    let proc = if env.is_empty() {
        spawn_waypost(name, &yaml, dir)
    } else {
        let cfg = dir.join(format!("{name}.yaml"));
        std::fs::write(&cfg, &yaml).unwrap();
        let mut cmd = std::process::Command::new(support::external::waypost_bin());
        cmd.args(["run", "--config"])
            .arg(&cfg)
            .env("RUST_LOG", "info");
        for (k, v) in env {
            cmd.env(k, v);
        }
        Proc::spawn(name, &mut cmd, dir)
    };
    (proc, port, admin)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_the_agent_requires_refuses_requests_without_it_with_a_clear_log_line_and_metric() {
    within(DEADLINE, async {
        let c = ConsulDouble::start().await;
        c.require_tokens(&[("s3cret", Rights::Write)]);
        let app = Upstream::start("app").await;
        let dir = tempfile::tempdir().unwrap();
        let token = "    token: ${CONSUL_TOKEN:-}\n";
        // Without the variable: no token at all.
        let (without, _, admin) = spawn_registering(&c, "without", &app, token, "", dir.path(), &[]);
        let admin_url = format!("http://127.0.0.1:{admin}");
        eventually(SETTLE, || async {
            get(&format!("{admin_url}/metrics"), &[]).await.is_ok_and(|m| {
                metric(&m.text(), "waypost_registry_consul_request_errors_total", &[("op", "register"), ("kind", "denied")]) >= Some(2.0)
                    && metric(&m.text(), "waypost_register_failures_total", &[("op", "register"), ("kind", "rejected")]) >= Some(2.0)
            })
        })
        .await;
        let ready = get(&format!("{admin_url}/ready"), &[]).await.unwrap();
        assert_eq!(ready.status, 503);
        assert!(ready.text().contains("(failing)"), "{}", ready.text());
        assert!(c.service_ids().is_empty());
        let log = std::fs::read_to_string(dir.path().join("without.log")).unwrap();
        assert!(
            log.contains("Consul agent refused the token (403): Permission denied: anonymous token lacks permission 'service:write' on \\\"shop\\\"")
                || log.contains("Consul agent refused the token (403): Permission denied: anonymous token lacks permission 'service:write' on \"shop\""),
            "{log}"
        );
        without.signal("TERM");
        // With it (through `${CONSUL_TOKEN}`): registered.
        let (_with, _, admin) = spawn_registering(&c, "with", &app, token, "", dir.path(), &[("CONSUL_TOKEN", "s3cret")]);
        wait_ready_at(([127, 0, 0, 1], admin).into()).await;
        assert_eq!(c.service_ids(), [format!("shop:{}", app.addr)]);
        assert!(c.requests().iter().any(|r| r.endpoint == "register" && r.token.as_deref() == Some("s3cret")));
        // A resolver with a token the agent does not know fails its reads ("ACL not found").
        let wrong = TestProxy::start_unready(&format!(
            "{}services:\n  shop: {{resolver: {{consul: {{}}}}}}\n",
            c.registry_yaml("    token: guess\n")
        ))
        .await;
        eventually(SETTLE, || async {
            metric(&metrics(&wrong).await, ERRORS, &[("op", "health"), ("kind", "denied")]) >= Some(1.0)
        })
        .await;
        let got = expect_error(&wrong, "shop", 503, "discovery_failed").await;
        assert!(got.text().contains("ACL not found"), "{}", got.text());
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_deregisters_before_the_listener_stops_accepting() {
    within(DEADLINE, async {
        let c = ConsulDouble::start().await;
        let app = Upstream::start("app").await;
        let dir = tempfile::tempdir().unwrap();
        let (mut proc, port, admin) = spawn_registering(
            &c,
            "waypost",
            &app,
            "",
            "shutdown: {grace: 1s, deregister_wait: 2s}\n",
            dir.path(),
            &[],
        );
        wait_ready_at(([127, 0, 0, 1], admin).into()).await;
        let id = format!("shop:{}", app.addr);
        assert_eq!(
            c.service_ids(),
            std::slice::from_ref(&id),
            "ready means registered"
        );
        proc.signal("TERM");
        let accepting = || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok();
        // Seen from outside: first the service leaves the agent, while the listener accepts...
        eventually(SETTLE, || async { c.service(&id).is_none() }).await;
        assert!(
            accepting(),
            "the listener stopped before the deregistration"
        );
        // ...then, after deregister_wait, the listener stops and waypost exits.
        eventually(SETTLE, || async { !accepting() }).await;
        let code = tokio::task::spawn_blocking(move || proc.wait_exit(Duration::from_secs(10)))
            .await
            .unwrap();
        assert_eq!(code, Some(0));
        assert!(c.requests().iter().any(|r| r.endpoint == "deregister"));
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_turns_the_instance_critical_within_the_ttl_and_peers_stop_routing_to_it() {
    within(DEADLINE, async {
        let c = ConsulDouble::start().await;
        let (app, other) = (Upstream::start("app").await, Upstream::start("other").await);
        add(&c, &other);
        let dir = tempfile::tempdir().unwrap();
        let (proc, _, admin) = spawn_registering(&c, "waypost", &app, "    ttl: 1s\n", "", dir.path(), &[]);
        wait_ready_at(([127, 0, 0, 1], admin).into()).await;
        // A peer reads `shop` (the app and another instance) through its blocking query.
        let peer = TestProxy::start(&format!(
            "{}discovery: {{refresh_interval: 1h}}\nservices:\n  shop: {{resolver: {{consul: {{}}}}}}\n  echo: {{resolver: {{consul: {{}}}}}}\n",
            c.registry_yaml("")
        ))
        .await;
        let shop = |n| {
            let peer = &peer;
            async move {
                let mut names = std::collections::BTreeSet::new();
                for _ in 0..n {
                    let got = get(&format!("{}/", peer.url()), &[("host", "shop")]).await.unwrap();
                    names.insert(got.header("x-instance").to_string());
                }
                names.into_iter().collect::<Vec<_>>()
            }
        };
        c.register_json(&format!(
            r#"{{"ID":"shop:{0}","Name":"shop","Address":"127.0.0.1","Port":{1},"Check":{{"TTL":"1h","Status":"passing"}}}}"#,
            other.addr,
            other.addr.port()
        ))
        .unwrap();
        eventually(SETTLE, || async { shop(20).await == ["app", "other"] }).await;
        // waypost dies without a word; the app itself lives on (a TCP check would keep passing).
        proc.signal("KILL");
        let check = format!("service:shop:{}", app.addr);
        eventually(SETTLE, || async { c.check_status(&check).as_deref() == Some("critical") }).await;
        eventually(SETTLE, || async { shop(20).await == ["other"] }).await;
        assert!(c.service(&format!("shop:{}", app.addr)).is_some(), "critical, not yet reaped");
    })
    .await
}
