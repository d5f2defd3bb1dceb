//! The waypost binary as users run it: CLI and config errors (exit code 2 with file:line),
//! streaming without buffering (RSS bound), idle connections that hold no buffer, graceful
//! shutdown on SIGTERM (registrations removed before the listeners stop), the file registry
//! shared by several processes, and `promtool check metrics` on the live `/metrics`.

mod support;

use std::process::Command;
use std::time::Duration;

use support::binary::terminate_deregistering_first;
use support::external::*;
use support::*;
use tokio::io::AsyncWriteExt;

fn check(yaml: &str) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    std::fs::write(&path, yaml).unwrap();
    let out = Command::new(waypost_bin())
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn malformed_configs_exit_2_naming_file_line_and_key() {
    let cases = [
        (
            "unknown key",
            "listen: 127.0.0.1:1\nadmin:\n  listne: 127.0.0.1:2\n",
            ":3:",
            "unknown field `listne`",
        ),
        (
            "wrong type",
            "runtime:\n  workers: [1]\n",
            ":2:",
            "runtime.workers",
        ),
        (
            "bad duration",
            "shutdown:\n  grace: soon\n",
            ":2:",
            "shutdown.grace: invalid duration",
        ),
        (
            "bad address",
            "services:\n  echo:\n    listen: 127.0.0.1:99999\n    resolver: {file: {}}\n",
            ":3:",
            "services.echo.listen: invalid address",
        ),
        (
            "yaml syntax",
            "services:\n  echo:\n\t resolver: {}\n",
            ":3:",
            "cannot start any token",
        ),
        (
            "conflict",
            "listen: 127.0.0.1:7000\nadmin: {listen: 127.0.0.1:7000}\n",
            ":2:",
            "admin.listen",
        ),
        (
            "unspecified registration address",
            "register:\n  - service: shop\n    address: 0.0.0.0:8080\n    registry: file\n    check: none\n",
            ":3:",
            "register.0.address: 0.0.0.0 is not an address peers can connect to",
        ),
    ];
    for (what, yaml, line, needle) in cases {
        let (code, stderr) = check(yaml);
        assert_eq!(code, 2, "{what}: {stderr}");
        assert!(
            stderr.contains(&format!("bad.yaml{line}")),
            "{what}: no line in {stderr:?}"
        );
        assert!(
            stderr.contains(needle),
            "{what}: {stderr:?} should contain {needle:?}"
        );
    }
    let (code, stderr) = check("");
    assert_eq!(code, 0, "{stderr}");
    let out = Command::new(waypost_bin())
        .args(["check", "--config", "/nonexistent.yaml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent.yaml"));
}

#[test]
fn help_version_and_usage_errors() {
    let out = Command::new(waypost_bin())
        .arg("--version")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
    let out = Command::new(waypost_bin()).arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("run") && help.contains("check"), "{help}");
    let out = Command::new(waypost_bin())
        .arg("frobnicate")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// A config listening on `listen` (admin on `admin`) with `shutdown.grace` `grace` (`10s`, say).
fn proxy_yaml(listen: u16, admin: u16, grace: &str, services: &str) -> String {
    format!("listen: 127.0.0.1:{listen}\nadmin: {{listen: 127.0.0.1:{admin}}}\nshutdown: {{grace: {grace}}}\nservices:\n{services}")
}

/// The waypost binary in front of `up` as service `echo` with `shutdown.grace` `grace`, ready:
/// the process, its URL, its outbound port and its admin port.
async fn start_binary(
    up: &Upstream,
    dir: &std::path::Path,
    grace: &str,
) -> (Proc, String, u16, u16) {
    let (port, admin) = (free_port(), free_port());
    let proc = spawn_waypost(
        "waypost",
        &proxy_yaml(port, admin, grace, &static_service("echo", &[(up.addr, 1)])),
        dir,
    );
    wait_ready_at(([127, 0, 0, 1], admin).into()).await;
    (proc, format!("http://127.0.0.1:{port}"), port, admin)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_50_mb_both_ways_without_buffering() {
    let up = Upstream::start("big").await;
    let dir = tempfile::tempdir().unwrap();
    let (proc, url, _port, _admin) = start_binary(&up, dir.path(), "10s").await;
    // Warm up so allocator arenas and the connection pool exist before the baseline.
    for _ in 0..20 {
        assert_eq!(
            post_count(&url, "echo", streamed_body(256 * 1024))
                .await
                .unwrap(),
            (200, 256 * 1024)
        );
    }
    let baseline = proc.status_kib("VmRSS");
    const SIZE: usize = 50 * 1024 * 1024;
    // Upstream direction (and echoed back): 50 MB each way in one request.
    assert_eq!(
        post_count(&url, "echo", streamed_body(SIZE)).await.unwrap(),
        (200, SIZE)
    );
    // Downstream only: a 50 MB response.
    let req = http::Request::get(format!("{url}/bytes?n={SIZE}"))
        .header("host", "echo")
        .body(empty())
        .unwrap();
    let resp = client().request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut total = 0;
    use http_body_util::BodyExt;
    while let Some(frame) = body.frame().await {
        if let Ok(d) = frame.unwrap().into_data() {
            total += d.len();
        }
    }
    assert_eq!(total, SIZE);
    let peak = proc.status_kib("VmHWM");
    let growth_mib = peak.saturating_sub(baseline) as f64 / 1024.0;
    assert!(growth_mib <= 8.0, "RSS grew {growth_mib:.1} MiB (baseline {baseline} KiB, peak {peak} KiB) while streaming 2×50 MB");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_hold_no_buffers() {
    let up = Upstream::start("idle").await;
    let dir = tempfile::tempdir().unwrap();
    let (proc, _url, port, _admin) = start_binary(&up, dir.path(), "10s").await;
    let request = b"GET / HTTP/1.1\r\nHost: echo\r\n\r\n";
    // Warm up the allocator and the thread's buffer stock before the baseline.
    for _ in 0..50 {
        let mut app = support::raw::RawApp::to(([127, 0, 0, 1], port).into()).await;
        app.s.write_all(request).await.unwrap();
        let _ = app.response(false).await;
    }
    let baseline = proc.status_kib("VmRSS");
    // 1,000 connections, each served one request and then left open and idle (kept alive).
    const N: u64 = 1000;
    let mut open = Vec::new();
    for _ in 0..N {
        let mut app = support::raw::RawApp::to(([127, 0, 0, 1], port).into()).await;
        app.s.write_all(request).await.unwrap();
        assert!(app.response(false).await.line.starts_with("HTTP/1.1 200"));
        open.push(app);
    }
    let idle = proc.status_kib("VmRSS");
    let per_conn = idle.saturating_sub(baseline) * 1024 / N;
    // A connection that held its read buffer (8 KiB) and head buffers when idle would cost
    // over 9 KiB; without them it is its task, its future and the socket's registration.
    assert!(
        per_conn < 6 * 1024,
        "{per_conn} bytes per idle connection (RSS {baseline} → {idle} KiB for {N})"
    );
    drop(open);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests_and_refuses_new_connections() {
    let up = Upstream::start("slow").await;
    let dir = tempfile::tempdir().unwrap();
    let (mut proc, url, port, admin) = start_binary(&up, dir.path(), "10s").await;
    let in_flight = tokio::spawn({
        let url = url.clone();
        async move { get(&format!("{url}/slow?ms=1500"), &[("host", "echo")]).await }
    });
    // Let the slow request reach the upstream, then ask waypost to stop.
    eventually(Duration::from_secs(5), || async { up.hit_count() == 1 }).await;
    proc.signal("TERM");
    // Readiness fails first, while the admin listener still answers.
    eventually(Duration::from_secs(2), || async {
        get(&format!("http://127.0.0.1:{admin}/ready"), &[])
            .await
            .is_ok_and(|r| r.status == 503 && r.text().contains("shutting down"))
    })
    .await;
    // New connections are refused while the slow request is still being served.
    eventually(Duration::from_secs(2), || async {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
    })
    .await;
    assert!(
        proc.child.try_wait().unwrap().is_none(),
        "waypost exited before draining"
    );
    let got = in_flight
        .await
        .unwrap()
        .expect("in-flight request completes");
    assert_eq!((got.status, got.text().as_str()), (200, "slow\n"));
    let code = tokio::task::spawn_blocking(move || proc.wait_exit(Duration::from_secs(10)))
        .await
        .unwrap();
    assert_eq!(code, Some(0), "clean exit after draining");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_grace_cuts_off_a_request_that_runs_over_it() {
    let up = Upstream::start("slow").await;
    let dir = tempfile::tempdir().unwrap();
    let (mut proc, url, _port, _admin) = start_binary(&up, dir.path(), "300ms").await;
    let url = format!("{url}/slow?ms=8000");
    let in_flight = tokio::spawn(async move { get(&url, &[("host", "echo")]).await });
    eventually(Duration::from_secs(5), || async { up.hit_count() == 1 }).await;
    proc.signal("TERM");
    // waypost exits once the grace period is over, long before the slow request would end...
    let code = tokio::task::spawn_blocking(move || proc.wait_exit(Duration::from_secs(5)))
        .await
        .unwrap();
    assert_eq!(code, Some(0), "clean exit at the end of the grace period");
    // ...and the request that ran over it was cut off, not answered.
    let got = in_flight.await.unwrap();
    assert!(
        got.is_err(),
        "a request past the grace period got an answer: {got:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_registry_shared_by_processes_with_heartbeat_expiry() {
    let dir = tempfile::tempdir().unwrap();
    let registry = dir.path().join("registry");
    let ports = [free_port(), free_port()];
    let mut ups: Vec<Proc> = ports
        .iter()
        .enumerate()
        .map(|(i, p)| {
            Proc::spawn(
                &format!("up{i}"),
                Command::new(upstream_bin())
                    .args([
                        "--listen",
                        &format!("127.0.0.1:{p}"),
                        "--name",
                        &format!("up{i}"),
                        "--service",
                        "echo",
                    ])
                    .args(["--weight", "1", "--ttl-ms", "1000", "--registry-dir"])
                    .arg(&registry),
                dir.path(),
            )
        })
        .collect();
    let (port, admin) = (free_port(), free_port());
    let yaml = format!(
        "listen: 127.0.0.1:{port}\nadmin: {{listen: 127.0.0.1:{admin}}}\nregistry: {{file: {{dir: {}}}}}\ndiscovery: {{refresh_interval: 200ms}}\nservices:\n  echo:\n    resolver: {{file: {{}}}}\n",
        registry.display()
    );
    let _proxy = spawn_waypost("waypost", &yaml, dir.path());
    let url = format!("http://127.0.0.1:{port}");
    let seen = |want: usize| {
        let url = url.clone();
        async move {
            let mut names = std::collections::BTreeSet::new();
            for _ in 0..40 {
                match get(&format!("{url}/whoami"), &[("host", "echo")]).await {
                    Ok(r) if r.status == 200 => {
                        names.insert(r.text());
                    }
                    _ => return false,
                }
            }
            names.len() == want
        }
    };
    eventually(Duration::from_secs(10), || seen(2)).await;
    // up0 dies without deregistering: its entry stays on disk, but its heartbeat stops and
    // after the TTL every reader ignores it.
    ups[0].signal("KILL");
    assert!(registry
        .join("echo")
        .join(format!("127.0.0.1_{}.json", ports[0]))
        .exists());
    eventually(Duration::from_secs(10), || seen(1)).await;
    let got = get(&format!("{url}/whoami"), &[("host", "echo")])
        .await
        .unwrap();
    assert_eq!(got.text(), "up1\n");
    // up1 exits cleanly and removes its own entry; only the dead one's file is left.
    ups[1].signal("TERM");
    assert_eq!(ups[1].wait_exit(Duration::from_secs(5)), Some(0));
    assert!(!registry
        .join("echo")
        .join(format!("127.0.0.1_{}.json", ports[1]))
        .exists());
}

/// The file `register:` writes for `service` at `addr` under the registry `dir`.
fn registry_entry(
    dir: &std::path::Path,
    service: &str,
    addr: std::net::SocketAddr,
) -> std::path::PathBuf {
    dir.join(service)
        .join(format!("{}_{}.json", addr.ip(), addr.port()))
}

/// Config lines registering `up` as `shop` in the file registry `dir`, checked over HTTP every
/// 100ms.
fn register_yaml(dir: &std::path::Path, up: &Upstream) -> String {
    format!(
        "registry: {{file: {{dir: {}, ttl: 1s}}}}\nregister:\n  - service: shop\n    address: \"{}\"\n    registry: file\n    check: {{http: \"http://{}/\", interval: 100ms, timeout: 50ms, rise: 1}}\n",
        dir.display(),
        up.addr,
        up.addr
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_removes_the_registration_before_the_listener_stops_accepting() {
    let up = Upstream::start("app").await;
    let dir = tempfile::tempdir().unwrap();
    let registry = dir.path().join("registry");
    let (port, admin) = (free_port(), free_port());
    let yaml = format!(
        "listen: 127.0.0.1:{port}\nadmin: {{listen: 127.0.0.1:{admin}}}\nshutdown: {{grace: 1s, deregister_wait: 3s}}\n{}services:\n{}",
        register_yaml(&registry, &up),
        static_service("echo", &[(up.addr, 1)])
    );
    let proc = spawn_waypost("waypost", &yaml, dir.path());
    wait_ready_at(([127, 0, 0, 1], admin).into()).await;
    let entry = registry_entry(&registry, "shop", up.addr);
    assert!(entry.exists(), "ready means registered");
    let logs = dir.path().to_path_buf();
    // No own resolver observes `shop` here: the listener stops after the whole deregister_wait.
    let (log, entry) = tokio::task::spawn_blocking(move || {
        let gone = || !entry.exists();
        (
            terminate_deregistering_first(proc, port, &logs, gone),
            entry,
        )
    })
    .await
    .unwrap();
    assert!(!entry.exists());
    assert!(log.contains("deregistered"), "{log}");
    assert!(log.contains("since_deregistration"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_waits_only_until_its_own_resolver_no_longer_sees_the_registration() {
    let up = Upstream::start("app").await;
    let dir = tempfile::tempdir().unwrap();
    let registry = dir.path().join("registry");
    let (port, admin) = (free_port(), free_port());
    // waypost registers `shop` and resolves `shop` from the same registry: it can see its own
    // entry go, so it does not sit out the whole (minute-long) deregister_wait.
    let yaml = format!(
        "listen: 127.0.0.1:{port}\nadmin: {{listen: 127.0.0.1:{admin}}}\nshutdown: {{grace: 1s, deregister_wait: 60s}}\ndiscovery: {{refresh_interval: 200ms}}\n{}services:\n  shop:\n    resolver: {{file: {{}}}}\n",
        register_yaml(&registry, &up)
    );
    let mut proc = spawn_waypost("waypost", &yaml, dir.path());
    wait_ready_at(([127, 0, 0, 1], admin).into()).await;
    // It routes to the instance it registered itself.
    let url = format!("http://127.0.0.1:{port}/");
    eventually(SETTLE, || async {
        get(&url, &[("host", "shop")])
            .await
            .is_ok_and(|r| r.header("x-instance") == "app")
    })
    .await;
    proc.signal("TERM");
    let code = tokio::task::spawn_blocking(move || proc.wait_exit(Duration::from_secs(20)))
        .await
        .unwrap();
    assert_eq!(
        code,
        Some(0),
        "exited once its own table no longer held the entry"
    );
    assert!(!registry_entry(&registry, "shop", up.addr).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promtool_accepts_live_metrics() {
    let up = Upstream::start("a").await;
    let dir = tempfile::tempdir().unwrap();
    let extra = register_yaml(dir.path(), &up);
    let proxy = TestProxy::in_front_of_with(up.addr, &extra).await;
    for host in ["echo", "nope"] {
        let _ = get(&format!("{}/", proxy.url()), &[("host", host)])
            .await
            .unwrap();
    }
    let text = get(&format!("{}/metrics", proxy.admin()), &[])
        .await
        .unwrap()
        .body;
    for family in [
        "waypost_forward_requests_total",
        "waypost_forward_request_duration_seconds_bucket",
        "waypost_forward_upstream_connect_errors_total",
        "waypost_forward_open_connections",
        "waypost_forward_in_flight_requests",
        "waypost_forward_retries_total",
        "waypost_forward_retry_budget_exhausted_total",
        "waypost_balance_ejected_instances",
        "waypost_balance_ejections_total",
        "waypost_balance_instance_requests_total",
        "waypost_balance_instance_errors_total",
        "waypost_discovery_instances",
        "waypost_register_state",
        "waypost_register_health_checks_total",
        "waypost_register_health_check_duration_seconds_bucket",
        "waypost_register_failures_total",
        "waypost_register_reregistrations_total",
        "waypost_register_deregister_duration_seconds",
        "waypost_register_shutdown_duration_seconds",
        "waypost_build_info",
        "waypost_registry_etcd_failovers_total",
        "waypost_registry_consul_skipped_entries_total",
        "waypost_registry_zookeeper_connected",
        "waypost_registry_zookeeper_sessions_total",
        "waypost_registry_zookeeper_connect_failures_total",
        "waypost_registry_zookeeper_invalid_children_total",
        "process_resident_memory_bytes",
    ] {
        assert!(
            String::from_utf8_lossy(&text).contains(family),
            "missing {family}"
        );
    }
    promtool_check(&text);
}
