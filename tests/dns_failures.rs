//! The DNS resolver's failure modes against a real dnsmasq, or a black-hole name server written
//! here: NXDOMAIN ("no instances") versus a dead or refusing name server (an error: a fast 503
//! before the first success, the stale table after it), and `dns.attempts` as the number of
//! queries per lookup.
//!
//! Every test owns its name server, upstreams and proxy, and runs under `within`'s deadline.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use http::Request;
use serde_json::Value;
use support::dnsmasq::Dnsmasq;
use support::dnstest::*;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nxdomain_is_a_definite_answer_with_no_instances() {
    within(TEST_DEADLINE, async {
        let dns = Dnsmasq::start(&[("echo.test", "127.0.0.2")], &[]);
        let yaml = config(
            &dns.nameserver(),
            "",
            "",
            &a_service("ghost", "ghost.test", 8080),
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

        expect_error(&proxy, "ghost", 503, "no_instances").await;

        dns.sync();
        assert!(
            !dns.queries("ghost.test").is_empty(),
            "waypost never asked dnsmasq:\n{}",
            dns.log()
        );
        assert_eq!(
            refreshes(&proxy, "ghost", "error").await,
            0.0,
            "NXDOMAIN is not an error"
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_answer_is_an_error_not_nxdomain() {
    within(TEST_DEADLINE, async {
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
            &a_service("echo", "echo.elsewhere", 8080),
        );
        let proxy = TestProxy::start_unready(&yaml).await;
        await_status(&proxy, "echo", "state", Value::from("failed")).await;
        expect_error(&proxy, "echo", 503, "discovery_failed").await;
        assert!(refreshes(&proxy, "echo", "error").await >= 1.0);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_nameserver_fails_fast_with_discovery_failed() {
    within(TEST_DEADLINE, async {
        // A name server that never answers: every lookup takes the full `dns.timeout` (3 s)
        // before it fails. That is what a request would wait for if it joined a resolve instead
        // of getting the cached failure — beyond the 2 s bound below.
        let hole = BlackHole::start().await;
        let yaml = config(
            &hole.addr.to_string(),
            ", timeout: 3s, attempts: 1",
            ", resolve_timeout: 5s, backoff: {initial: 1s, max: 5s}",
            &a_service("echo", "echo.test", 8080),
        );
        let proxy = TestProxy::start_unready(&yaml).await;
        await_status(&proxy, "echo", "state", Value::from("failed")).await;
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

        let errors_before = refreshes(&proxy, "echo", "error").await;
        assert!(errors_before >= 1.0, "the failed resolve is counted");
        // The failure is cached: requests do not wait for (or trigger) a resolve. Send them while
        // the first retry (due after the 1 s backoff) is in flight — a new query has reached the
        // black hole since the first lookup failed, and the retry cannot fail before the 3 s
        // `dns.timeout`: a request joining it would take seconds. The bound is behavioural,
        // not a benchmark.
        let first_lookup = hole.lookups("echo.test", support::dnsmasq::A);
        eventually(SETTLE, || async {
            hole.lookups("echo.test", support::dnsmasq::A) > first_lookup
        })
        .await;
        let lookups_before = hole.lookups("echo.test", support::dnsmasq::A);
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
        // Retries follow the backoff (1 s, 2 s…), not the request rate: with `dns.attempts: 1`
        // each resolve is one A lookup (one message ID, whatever UDP resends carry it), and the
        // in-flight retry cannot fail (and so schedule the next one) before its 3 s timeout, so
        // the 50 requests may overlap at most one more backoff retry — never a lookup of their
        // own. The pause lets any query a request set off reach the black hole before counting.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let lookups_after = hole.lookups("echo.test", support::dnsmasq::A);
        let seen = hole.seen.lock().unwrap().clone();
        assert!(
            lookups_after <= lookups_before + 1,
            "50 requests caused {} A lookups (more than the one backoff retry): {seen:?}",
            lookups_after - lookups_before
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nameserver_that_dies_leaves_the_stale_table_serving() {
    within(TEST_DEADLINE, async {
        let (port, _ups) = Upstream::start_on_shared_port(&[("127.0.0.2", "a")]).await;
        let mut dns = Dnsmasq::start(&[("echo.test", "127.0.0.2")], &[]);
        let yaml = config(
            &dns.nameserver(),
            ", timeout: 200ms, attempts: 1",
            ", backoff: {initial: 200ms, max: 1s}",
            &a_service("echo", "echo.test", port),
        );
        let proxy = TestProxy::start(&yaml).await;
        assert_eq!(spread(&proxy, "echo", 10).await.get("a"), Some(&10));

        dns.stop();
        await_status(&proxy, "echo", "stale", Value::from(true)).await;
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
        assert!(refreshes(&proxy, "echo", "error").await >= 1.0);
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
        await_status(&proxy, "echo", "stale", Value::from(false)).await;
        let text = metrics(&proxy).await;
        assert_eq!(
            metric(&text, "waypost_discovery_stale", &[("service", "echo")]),
            Some(0.0),
            "{text}"
        );
    })
    .await
}

/// `(transport, message ID, qtype, name)` of each query a [`BlackHole`] received.
type Seen = std::sync::Arc<std::sync::Mutex<Vec<(&'static str, u16, u16, String)>>>;

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
                    if let Some((id, t, name)) = question(&buf[..n]) {
                        s.lock().unwrap().push(("udp", id, t, name));
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
                            if let Some((id, t, name)) = question(&msg) {
                                s.lock().unwrap().push(("tcp", id, t, name));
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

    /// The transport of each query for `name`/`qtype` received, resends included.
    fn queries(&self, name: &str, qtype: u16) -> Vec<&'static str> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, _, t, n)| *t == qtype && n == name)
            .map(|(tr, _, _, _)| *tr)
            .collect()
    }

    /// How many lookups of `name`/`qtype` reached it: distinct message IDs, since a UDP client
    /// resends an unanswered query with its ID unchanged (hickory does, every ~333 ms, within
    /// `dns.timeout`) while every new lookup gets a fresh random ID.
    fn lookups(&self, name: &str, qtype: u16) -> usize {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, _, t, n)| *t == qtype && n == name)
            .map(|(_, id, _, _)| *id)
            .collect::<std::collections::HashSet<_>>()
            .len()
    }
}

impl Drop for BlackHole {
    fn drop(&mut self) {
        for t in &self._tasks {
            t.abort();
        }
    }
}

/// The (message ID, qtype, name) of a DNS message's first question.
fn question(msg: &[u8]) -> Option<(u16, u16, String)> {
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
        u16::from_be_bytes([*msg.first()?, *msg.get(1)?]),
        u16::from_be_bytes([*msg.get(i)?, *msg.get(i + 1)?]),
        labels.join("."),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_attempts_is_the_number_of_queries_sent() {
    within(TEST_DEADLINE, async {
        let hole = BlackHole::start().await;
        // One resolve only: the retry after it is 20 s away.
        let yaml = config(
            &hole.addr.to_string(),
            ", timeout: 300ms, attempts: 1",
            ", resolve_timeout: 5s, backoff: {initial: 20s, max: 20s}",
            &a_service("echo", "echo.test", 8080),
        );
        let proxy = TestProxy::start_unready(&yaml).await;
        await_status(&proxy, "echo", "state", Value::from("failed")).await;
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
