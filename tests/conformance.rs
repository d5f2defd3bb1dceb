//! The HTTP/1 conformance suite (issue 15): a table of hostile and unusual HTTP/1.x requests
//! (tests/conformance/{framing,head,routing}.rs), each sent raw through the real waypost binary
//! to a recording upstream that parses strictly, and checked against the policy of
//! docs/http1-conformance.md: either waypost answers an error itself and nothing reaches the
//! upstream, or exactly the app's requests arrive with unambiguous framing and the app reads
//! exactly their answers. The same table runs through HAProxy, each case stating what HAProxy
//! does, so the documented differences are checked too. Plus the pooled-connection desync
//! attack of issue 15, and the recorder's own parser.
//!
//! Every case has a service (and a recorder) of its own, so cases run concurrently and a
//! pooled upstream connection never carries one case's bytes into another. `WAYPOST_BIN`
//! points the suite at another build.

mod support;

#[path = "conformance/app.rs"]
mod app;
#[path = "conformance/doc.rs"]
mod doc;
#[path = "conformance/framing.rs"]
mod framing;
#[path = "conformance/head.rs"]
mod head;
#[path = "conformance/model.rs"]
mod model;
#[path = "conformance/routing.rs"]
mod routing;
#[path = "conformance/run.rs"]
mod run;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use model::{Answer, Case, Via, Want};
use support::external::{free_ports, free_ports_on, spawn_waypost, Proc};
use support::haproxy::Haproxy;
use support::recorder::strict::{self, Framing, Step};
use support::recorder::Recorder;
use support::{static_service, wait_child_ready};

/// Cases run at once.
const PARALLEL: usize = 24;

/// The table, in groups as the document shows it.
fn groups() -> Vec<(&'static str, Vec<Case>)> {
    vec![
        (
            "Framing: lengths, codings, chunks, trailers",
            framing::cases(),
        ),
        (
            "The head: request line, fields, Connection, limits",
            head::cases(),
        ),
        (
            "Targets, Host, HTTP/1.0, Expect, Upgrade, pipelining",
            routing::cases(),
        ),
    ]
}

fn table() -> Vec<Case> {
    groups().into_iter().flat_map(|(_, c)| c).collect()
}

/// The four-letter service name of case `i` (replacing `echo` in its bytes).
fn service(i: usize) -> String {
    format!("s{i:03}")
}

/// Runs every case through the proxy whose listener for case `i` is `addrs[i]`, the
/// upstream being `recs[i]`, expecting one of `wants(case)`. Prints every failure; returns the ids
/// of the failing cases.
async fn run_table(
    proxy: &str,
    cases: &[Case],
    addrs: &[SocketAddr],
    recs: &[Recorder],
    wants: impl Fn(&Case) -> Vec<Want>,
) -> Vec<&'static str> {
    let gate = Arc::new(tokio::sync::Semaphore::new(PARALLEL));
    let runs = cases.iter().enumerate().map(|(i, c)| {
        let (gate, wants) = (gate.clone(), wants(c));
        async move {
            let _permit = gate.acquire().await.unwrap();
            (
                c.id,
                run::run(c, &wants, addrs[i], &recs[i], &service(i)).await,
            )
        }
    });
    let results = futures_util::future::join_all(runs).await;
    let mut failed = Vec::new();
    for (id, problems) in results {
        if !problems.is_empty() {
            eprintln!("FAIL {proxy} {id}:\n    {}", problems.join("\n    "));
            failed.push(id);
        }
    }
    eprintln!(
        "{proxy}: {} of {} cases as expected; failing: {failed:?}",
        cases.len() - failed.len(),
        cases.len()
    );
    failed
}

async fn recorders(n: usize) -> Vec<Recorder> {
    let mut recs = Vec::with_capacity(n);
    for _ in 0..n {
        recs.push(Recorder::start().await);
    }
    recs
}

/// waypost (the real binary) with one static service per upstream in `recs`, named
/// [`service`]; cases `via` a per-service listener get one. Returns the process, and each
/// case's address to send to.
async fn start_waypost(
    dir: &std::path::Path,
    cases: &[Case],
    recs: &[Recorder],
) -> (Proc, Vec<SocketAddr>) {
    let dedicated = cases.iter().filter(|c| c.via == Via::Service).count();
    let mut ports = free_ports(2 + dedicated).into_iter();
    let (port, admin) = (ports.next().unwrap(), ports.next().unwrap());
    let mut yaml = format!(
        "listen: 127.0.0.1:{port}\nadmin: {{listen: 127.0.0.1:{admin}}}\n\
         upstream: {{timeout: 5s}}\nservices:\n"
    );
    let mut addrs = Vec::new();
    for (i, (c, r)) in cases.iter().zip(recs).enumerate() {
        let mut svc = static_service(&service(i), &[(r.addr, 1)]);
        let at = match c.via {
            Via::Outbound => port,
            Via::Service => {
                let p = ports.next().unwrap();
                svc = svc.replacen('\n', &format!("\n    listen: 127.0.0.1:{p}\n"), 1);
                p
            }
        };
        addrs.push(SocketAddr::from(([127, 0, 0, 1], at)));
        yaml.push_str(&svc);
    }
    let mut proc = spawn_waypost("waypost", &yaml, dir);
    wait_child_ready(&mut proc, ([127, 0, 0, 1], admin).into(), dir).await;
    (proc, addrs)
}

#[test]
fn the_table_is_well_formed() {
    let cases = table();
    // README promises "more than 180" cases.
    assert!(
        cases.len() > 180,
        "only {} cases; README says more than 180",
        cases.len()
    );
    let mut ids = HashSet::new();
    for c in &cases {
        assert!(ids.insert(c.id), "duplicate id {}", c.id);
        assert!(
            c.id.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.'),
            "{}: ids are kebab-case",
            c.id
        );
        assert!(!c.why.is_empty(), "{}: says why", c.id);
        for w in std::iter::once(c.want.clone()).chain(c.haproxy_wants()) {
            let own = w.app.iter().filter(|a| matches!(a, Answer::Own)).count();
            assert_eq!(
                own,
                w.up.len(),
                "{}: one answer per forwarded request",
                c.id
            );
        }
        if let Some((w, why)) = &c.haproxy {
            assert!(
                !why.is_empty(),
                "{}: a difference from HAProxy says why",
                c.id
            );
            let same = format!("{:?}", c.want.as_haproxy());
            assert!(
                w.len() > 1 || format!("{:?}", w[0]) != same,
                "{}: the HAProxy outcome given is the same as waypost's",
                c.id
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_case_through_waypost() {
    let cases = table();
    let recs = recorders(cases.len()).await;
    let dir = tempfile::tempdir().unwrap();
    let (_proc, addrs) = start_waypost(dir.path(), &cases, &recs).await;
    let failed = run_table("waypost", &cases, &addrs, &recs, |c| vec![c.want.clone()]).await;
    assert!(
        failed.is_empty(),
        "{} case(s) fail through waypost: {failed:?}",
        failed.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_case_through_haproxy_as_documented() {
    let cases = table();
    let recs = recorders(cases.len()).await;
    let dir = tempfile::tempdir().unwrap();
    let ups: Vec<SocketAddr> = recs.iter().map(|r| r.addr).collect();
    let haproxy = Haproxy::start(&ups, dir.path());
    let failed = run_table(
        "haproxy",
        &cases,
        &haproxy.addrs,
        &recs,
        Case::haproxy_wants,
    )
    .await;
    assert!(
        failed.is_empty(),
        "HAProxy does not do what the table says for {} case(s): {failed:?} \
         (update the case's haproxy outcome and docs/http1-conformance.md); its log:\n{}",
        failed.len(),
        haproxy.log()
    );
}

/// The smuggling attempts of the desync test: each, on a pooled upstream connection that
/// forwarded it as is, leaves a request `/SMUGGLED` behind whose answer the next user of that
/// connection would read.
const ATTACKS: [(&str, &str); 5] = [
    ("Connection: content-length",
     "POST /p HTTP/1.1\r\nHost: echo\r\nConnection: content-length\r\nContent-Length: 38\r\n\r\nGET /SMUGGLED HTTP/1.1\r\nHost: echo\r\n\r\n"),
    ("Connection: transfer-encoding",
     "POST /p HTTP/1.1\r\nHost: echo\r\nConnection: transfer-encoding\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /SMUGGLED HTTP/1.1\r\nHost: echo\r\n\r\n"),
    ("CL.TE",
     "POST /p HTTP/1.1\r\nHost: echo\r\nContent-Length: 43\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /SMUGGLED HTTP/1.1\r\nHost: echo\r\n\r\n"),
    ("TE.CL",
     "POST /p HTTP/1.1\r\nHost: echo\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n26\r\nGET /SMUGGLED HTTP/1.1\r\nHost: echo\r\n\r\n\r\n0\r\n\r\n"),
    ("chunked, chunked",
     "POST /p HTTP/1.1\r\nHost: echo\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\nGET /SMUGGLED HTTP/1.1\r\nHost: echo\r\n\r\n"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pooled_connections_never_desync_across_apps() {
    // A slow upstream: the answer to a smuggled request would arrive after the attacker's own
    // answer, while the pooled connection already carries someone else's request.
    let rec = Recorder::with_delay(Duration::from_millis(150)).await;
    let dir = tempfile::tempdir().unwrap();
    // Ports on an address of this test's own: the table tests pick theirs on 127.0.0.1 at the
    // same time.
    let ports = free_ports_on("127.0.0.3", 2);
    let addr = SocketAddr::from(([127, 0, 0, 3], ports[0]));
    let admin = SocketAddr::from(([127, 0, 0, 3], ports[1]));
    let yaml = format!(
        "listen: {addr}\nadmin: {{listen: {admin}}}\nupstream: {{timeout: 5s}}\nservices:\n{}",
        static_service("echo", &[(rec.addr, 1)])
    );
    let mut proc = spawn_waypost("waypost", &yaml, dir.path());
    wait_child_ready(&mut proc, admin, dir.path()).await;
    let mut problems = Vec::new();
    for (round, (name, attack)) in ATTACKS.iter().enumerate() {
        // The attacker: its own answer, whatever it is, ends its part.
        let seen =
            app::exchange(addr, &[model::bytes(attack)], &[], 1, false, Duration::ZERO).await;
        let first = seen.responses.first().map(|r| r.status);
        // Victims right after, one at a time and then several at once, each on a connection
        // of its own, all through the pool towards the one instance.
        let one = |k: usize| async move {
            let target = format!("/victim-{round}-{k}");
            let req = format!("GET {target} HTTP/1.1\r\nHost: echo\r\n\r\n");
            let seen = app::exchange(
                addr,
                &[model::bytes(req)],
                &[false],
                1,
                false,
                Duration::ZERO,
            )
            .await;
            match seen.responses.first() {
                Some(r) if r.status == 200 && r.body == target.as_bytes() => None,
                Some(r) => Some(format!(
                    "{name}: {target} read {} {:?} (the attacker got {first:?})",
                    r.status,
                    String::from_utf8_lossy(&r.body)
                )),
                None => Some(format!(
                    "{name}: {target} got no answer: {:?}",
                    seen.trouble
                )),
            }
        };
        for k in 0..3 {
            problems.extend(one(k).await);
        }
        let together = futures_util::future::join_all((3..7).map(one)).await;
        problems.extend(together.into_iter().flatten());
    }
    for r in rec.requests() {
        if r.head.target.contains("SMUGGLED") {
            problems.push(format!(
                "the upstream received {} {} (conn {})",
                r.head.method, r.head.target, r.conn
            ));
        }
    }
    problems.extend(
        rec.violations()
            .into_iter()
            .map(|v| format!("upstream violation: {v}")),
    );
    assert!(problems.is_empty(), "desync:\n{}", problems.join("\n"));
}

#[test]
fn the_document_shows_the_table_and_every_difference() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/http1-conformance.md");
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    let generated = doc::render(&groups());
    let (before, after) = match text.split_once(doc::BEGIN) {
        Some((before, rest)) => (
            before,
            rest.split_once(doc::END).map(|(_, a)| a).unwrap_or(""),
        ),
        None => (text.as_str(), ""),
    };
    let current = format!("{before}{generated}{after}");
    if current == text {
        return;
    }
    if std::env::var_os("WAYPOST_UPDATE_DOC").is_some() {
        std::fs::write(&path, current).unwrap();
        return;
    }
    panic!(
        "{} is not what the table says: run `WAYPOST_UPDATE_DOC=1 cargo test --test conformance \
         the_document` and review the diff",
        path.display()
    );
}

/// What the strict parser says of `bytes` as one request: `Ok(framing)` or the violation.
fn strictly(bytes: &str) -> Result<(Framing, Vec<u8>), String> {
    let head = match strict::head(bytes.as_bytes()) {
        Step::Done(h) => h,
        Step::Bad(e) => return Err(e),
        Step::Partial => return Err("partial head".into()),
    };
    let framing = strict::framing(&head)?;
    match strict::body(framing, &bytes.as_bytes()[head.len..]) {
        Step::Done(b) if head.len + b.len == bytes.len() => Ok((framing, b.data)),
        Step::Done(b) => Err(format!(
            "{} bytes left after the request",
            bytes.len() - head.len - b.len
        )),
        Step::Bad(e) => Err(e),
        Step::Partial => Err("partial body".into()),
    }
}

#[test]
fn the_recorder_refuses_every_ambiguity() {
    let ok = [
        ("GET / HTTP/1.1\r\nHost: a\r\n\r\n", Framing::None, ""),
        ("POST / HTTP/1.1\r\nHost: a:80\r\nContent-Length: 2\r\n\r\nhi", Framing::Length(2), "hi"),
        ("POST / HTTP/1.1\r\nHost: [::1]:8\r\nTransfer-Encoding: Chunked\r\n\r\n2;a=\"b\"\r\nhi\r\n0\r\nX: y\r\n\r\n", Framing::Chunked, "hi"),
        ("GET / HTTP/1.0\r\n\r\n", Framing::None, ""),
        ("OPTIONS * HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, te\r\n\r\n", Framing::None, ""),
    ];
    for (req, framing, body) in ok {
        assert_eq!(
            strictly(req),
            Ok((framing, body.as_bytes().to_vec())),
            "{req:?}"
        );
    }
    let bad = [
        ("GET / HTTP/1.1\nHost: a\r\n\r\n", "bare LF"),
        ("GET / HTTP/1.1\r\nHost: a\rb\r\n\r\n", "bare CR"),
        ("GET  / HTTP/1.1\r\nHost: a\r\n\r\n", "request line"),
        ("GET /#f HTTP/1.1\r\nHost: a\r\n\r\n", "fragment"),
        ("GET / HTTP/1.2\r\nHost: a\r\n\r\n", "version"),
        ("GET a:80 HTTP/1.1\r\nHost: a\r\n\r\n", "authority-form"),
        ("GET * HTTP/1.1\r\nHost: a\r\n\r\n", "asterisk"),
        ("GET / HTTP/1.1\r\n\r\n", "no Host"),
        ("GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n", "2 Host"),
        ("GET / HTTP/1.1\r\nHost: u@a\r\n\r\n", "invalid Host"),
        ("GET / HTTP/1.1\r\nHost: a\r\nX: 1\r\n 2\r\n\r\n", "obs-fold"),
        ("GET / HTTP/1.1\r\nHost: a\r\nX : 1\r\n\r\n", "not a token"),
        ("GET / HTTP/1.1\r\nHost: a\r\nX: \x001\r\n\r\n", "control byte"),
        ("GET / HTTP/1.1\r\nHost: a\r\nConnection: Content-Length\r\n\r\n", "Connection names"),
        ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n", "both"),
        ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx", "2 Content-Length"),
        ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1, 1\r\n\r\nx", "not 1*DIGIT"),
        ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n", "not exactly"),
        ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", "2 Transfer-Encoding"),
        ("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", "HTTP/1.0"),
        ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n2 \r\nhi\r\n0\r\n\r\n", "junk after chunk size"),
        ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n2;\r\nhi\r\n0\r\n\r\n", "without a name"),
        ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nhi\r\n0\r\n\r\n", "not followed by CRLF"),
        ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n2\nhi\r\n0\r\n\r\n", "bare LF"),
        ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nBad Name: 1\r\n\r\n", "trailer section"),
    ];
    for (req, needle) in bad {
        match strictly(req) {
            Err(e) => assert!(
                e.contains(needle),
                "{req:?}: {e:?} should mention {needle:?}"
            ),
            Ok(f) => panic!("{req:?} accepted as {f:?}"),
        }
    }
}
