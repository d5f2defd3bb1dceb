//! Connection timeouts under an idle flood, through the real binary (issue 15): 10,000 silent
//! connections are closed at `client.header_timeout` without a byte of response while a new
//! request is still served; a partial head gets `408 request_timeout`; a kept-alive connection
//! closes at `client.idle_timeout`; a stalled body gets `408` at `client.body_timeout`; and
//! waypost's RSS comes back to where it was. Latency, close times and RSS are printed for the
//! bench notes — tests never assert on timings; every wait here is a bound, not a measurement.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use support::external::{free_ports_on, spawn_waypost, Proc};
use support::recorder::Recorder;
use support::{eventually, get, static_service, wait_child_ready};

/// Silent connections in the flood.
const FLOOD: usize = 10_000;
/// Connections opened at once while building the flood: well below a listen backlog of 128
/// (std's default, which waypost's listeners use), so bursts do not overflow it.
const BATCH: usize = 64;
/// The timeouts waypost runs with here (short, to keep the test short).
const HEADER_TIMEOUT: &str = "2s";
const IDLE_TIMEOUT: &str = "3s";
const BODY_TIMEOUT: &str = "2s";
/// Bound on how long any connection may take to be closed: far beyond every timeout above, so
/// only a connection waypost never closes fails it.
const CLOSE_LIMIT: Duration = Duration::from_secs(20);
/// How far waypost's RSS may stay above its level before the flood.
const RSS_SLACK_KIB: u64 = 2 * 1024;

/// Raises this process's soft `RLIMIT_NOFILE` to its hard limit (the waypost child inherits
/// it) and checks it leaves room for `need` descriptors.
fn raise_nofile(need: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed by pointer.
    let ok = unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0
        }
    };
    assert!(
        ok,
        "cannot raise RLIMIT_NOFILE: {}",
        std::io::Error::last_os_error()
    );
    assert!(
        lim.rlim_cur >= need,
        "RLIMIT_NOFILE hard limit is {}, the flood needs {need}: raise it (ulimit -Hn, or \
         LimitNOFILE in a container) to run this test",
        lim.rlim_cur
    );
}

/// waypost with the short timeouts, service `echo` on `rec`, listening on `ip` (each test its
/// own loopback address, so tests running at once never pick the same port); its process,
/// outbound and admin addresses.
async fn start(
    rec: &Recorder,
    ip: [u8; 4],
    dir: &std::path::Path,
) -> (Proc, SocketAddr, SocketAddr) {
    let at = |p: u16| SocketAddr::from((ip, p));
    let ports = free_ports_on(&at(0).ip().to_string(), 2);
    let (listen, admin) = (at(ports[0]), at(ports[1]));
    let yaml = format!(
        "listen: {listen}\nadmin: {{listen: {admin}}}\n\
         client: {{header_timeout: {HEADER_TIMEOUT}, idle_timeout: {IDLE_TIMEOUT}, \
         body_timeout: {BODY_TIMEOUT}}}\nservices:\n{}",
        static_service("echo", &[(rec.addr, 1)])
    );
    let mut proc = spawn_waypost("waypost", &yaml, dir);
    wait_child_ready(&mut proc, admin, dir).await;
    (proc, listen, admin)
}

/// Reads from `s` until the peer closes (or `CLOSE_LIMIT`): the bytes received, and how long
/// after `since` the close came (`None`: still open at the limit).
async fn until_closed(mut s: TcpStream, since: Instant) -> (Vec<u8>, Option<Duration>) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let limit = since + CLOSE_LIMIT;
    loop {
        match tokio::time::timeout_at(limit, s.read(&mut buf)).await {
            Err(_) => return (got, None),
            Ok(Ok(0)) | Ok(Err(_)) => return (got, Some(since.elapsed())),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// Reads one response with a `content-length` body from `s`: its bytes.
async fn one_response(s: &mut TcpStream) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&got).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().to_string())
                })
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(0);
            if body.len() >= len {
                return text;
            }
        }
        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
            Ok(Ok(n @ 1..)) => got.extend_from_slice(&buf[..n]),
            other => panic!(
                "no complete response ({other:?}): {:?}",
                String::from_utf8_lossy(&got)
            ),
        }
    }
}

/// Whether `resp` is a `status` answer carrying `x-waypost-error: kind`.
fn is_error(resp: &[u8], status: u16, kind: &str) -> bool {
    let text = String::from_utf8_lossy(resp).to_ascii_lowercase();
    text.starts_with(&format!("http/1.1 {status} "))
        && text.contains(&format!("\r\nx-waypost-error: {kind}\r\n"))
}

/// Connections waiting in the accept queue of the listener on `addr` (the `rx_queue`
/// of its LISTEN entry in `/proc/net/tcp`); 0 when there is no such listener. The kernel lists
/// listening sockets first, so the read stops at the first other state instead of walking the
/// flood's 20,000 entries.
fn accept_queue(addr: SocketAddr) -> usize {
    use std::io::BufRead;
    let Ok(file) = std::fs::File::open("/proc/net/tcp") else {
        return 0;
    };
    let std::net::IpAddr::V4(ip) = addr.ip() else {
        return 0;
    };
    // The kernel prints the address as a native-endian (here little-endian) u32.
    let [a, b, c, d] = ip.octets();
    let local = format!("{d:02X}{c:02X}{b:02X}{a:02X}:{:04X}", addr.port());
    for line in std::io::BufReader::new(file)
        .lines()
        .skip(1)
        .map_while(Result::ok)
    {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 5 || f[3] != "0A" {
            break;
        }
        if f[1] == local {
            return f[4]
                .split_once(':')
                .and_then(|(_, rx)| usize::from_str_radix(rx, 16).ok())
                .unwrap_or(0);
        }
    }
    0
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p) as usize]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_silent_connections_close_at_the_header_timeout() {
    raise_nofile(FLOOD as u64 + 1024);
    let rec = Recorder::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (proc, addr, admin) = start(&rec, [127, 0, 0, 1], dir.path()).await;
    // One request first, so what waypost sets up lazily (the pool, the first table) is in the
    // baseline.
    let url = format!("http://{addr}/warm");
    let warm = get(&url, &[("host", "echo")]).await.unwrap();
    assert_eq!(warm.status, 200, "{}", warm.text());
    let before = proc.status_kib("VmRSS");

    let open = Arc::new(AtomicUsize::new(0));
    let mut silent = Vec::with_capacity(FLOOD);
    let flood_start = Instant::now();
    while silent.len() < FLOOD {
        let n = BATCH.min(FLOOD - silent.len());
        let batch = futures_util::future::join_all((0..n).map(|_| TcpStream::connect(addr))).await;
        for conn in batch {
            let s = conn.expect("connect to the outbound listener");
            let (since, open) = (Instant::now(), open.clone());
            open.fetch_add(1, Ordering::SeqCst);
            silent.push(tokio::spawn(async move {
                let r = until_closed(s, since).await;
                open.fetch_sub(1, Ordering::SeqCst);
                r
            }));
        }
        // Let waypost take them off the accept queue before the next batch: a full queue drops
        // SYNs, and the client's retry a second later would stretch the flood past the timeout.
        let drained = Instant::now() + Duration::from_secs(5);
        while accept_queue(addr) > BATCH / 4 && Instant::now() < drained {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let connected_in = flood_start.elapsed();
    let held = proc.status_kib("VmRSS");

    // A new request while the flood is held.
    let t = Instant::now();
    let got = get(&format!("http://{addr}/during"), &[("host", "echo")])
        .await
        .unwrap();
    let latency = t.elapsed();
    let still_open = open.load(Ordering::SeqCst);
    assert_eq!(
        (got.status, got.text().as_str()),
        (200, "/during"),
        "the request during the flood"
    );
    let metrics = get(&format!("http://{admin}/metrics"), &[])
        .await
        .unwrap()
        .text();
    let gauge = support::metric(
        &metrics,
        "waypost_forward_open_connections",
        &[("listener", "outbound")],
    );

    // A partial head: 408, then close.
    let mut partial = TcpStream::connect(addr).await.unwrap();
    partial
        .write_all(b"GET /partial HTTP/1.1\r\nHost: echo\r\n")
        .await
        .unwrap();
    let partial = tokio::spawn(until_closed(partial, Instant::now()));
    // A connection idle after a response: closes without another byte.
    let mut idle = TcpStream::connect(addr).await.unwrap();
    idle.write_all(b"GET /idle HTTP/1.1\r\nHost: echo\r\n\r\n")
        .await
        .unwrap();
    let answer = one_response(&mut idle).await;
    assert!(
        answer.starts_with("HTTP/1.1 200") && answer.ends_with("/idle"),
        "{answer:?}"
    );
    let idle = tokio::spawn(until_closed(idle, Instant::now()));

    let mut closes = Vec::with_capacity(FLOOD);
    let (mut never, mut answered) = (0, 0);
    for h in silent {
        match h.await.unwrap() {
            (bytes, _) if !bytes.is_empty() => answered += 1,
            (_, Some(after)) => closes.push(after),
            (_, None) => never += 1,
        }
    }
    let (partial_bytes, partial_after) = partial.await.unwrap();
    let (idle_bytes, idle_after) = idle.await.unwrap();
    let peak = proc.status_kib("VmHWM");
    // Memory given back after the flood, if it is: settle with a bound, not a sleep.
    let mut after = proc.status_kib("VmRSS");
    let settle = Instant::now() + Duration::from_secs(10);
    while after > before + RSS_SLACK_KIB && Instant::now() < settle {
        tokio::time::sleep(Duration::from_millis(100)).await;
        after = proc.status_kib("VmRSS");
    }

    closes.sort();
    eprintln!(
        "idle flood: {FLOOD} connections opened in {connected_in:?}; open-connections gauge {gauge:?}, \
         {still_open} still open when the new request was served in {latency:?}"
    );
    if !closes.is_empty() {
        eprintln!(
            "idle flood: silent connections closed after min {:?} / median {:?} / max {:?} \
             (header_timeout {HEADER_TIMEOUT}); partial head closed after {partial_after:?}; \
             idle connection closed after {idle_after:?} (idle_timeout {IDLE_TIMEOUT})",
            closes[0],
            percentile(&closes, 0.5),
            closes[closes.len() - 1]
        );
    }
    eprintln!(
        "idle flood: waypost RSS before {before} KiB, with the flood held {held} KiB, peak (VmHWM) \
         {peak} KiB, after {after} KiB"
    );
    assert_eq!(
        answered, 0,
        "silent connections must be closed without a response byte"
    );
    assert_eq!(
        never, 0,
        "{never} silent connections still open after {CLOSE_LIMIT:?}"
    );
    assert!(
        is_error(&partial_bytes, 408, "request_timeout") && partial_after.is_some(),
        "a partial head gets 408 request_timeout then a close, got {:?} (closed after {partial_after:?})",
        String::from_utf8_lossy(&partial_bytes)
    );
    assert!(
        idle_bytes.is_empty() && idle_after.is_some(),
        "an idle kept-alive connection closes silently, got {:?} (closed after {idle_after:?})",
        String::from_utf8_lossy(&idle_bytes)
    );
    assert!(
        after <= before + RSS_SLACK_KIB,
        "RSS did not come back: {before} KiB before the flood, {after} KiB after (peak {peak} KiB)"
    );
    assert_eq!(rec.violations(), Vec::<String>::new());
    let targets: Vec<String> = rec
        .requests()
        .iter()
        .map(|r| r.head.target.clone())
        .collect();
    assert_eq!(
        targets,
        ["/warm", "/during", "/idle"],
        "only the complete requests reach the upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_body_gets_408_and_its_upstream_connection_is_dropped() {
    let rec = Recorder::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (_proc, addr, _admin) = start(&rec, [127, 0, 0, 4], dir.path()).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"POST /stall HTTP/1.1\r\nHost: echo\r\nContent-Length: 10\r\n\r\nhello")
        .await
        .unwrap();
    let (bytes, closed) = until_closed(s, Instant::now()).await;
    eprintln!("stalled body: answered and closed after {closed:?} (body_timeout {BODY_TIMEOUT})");
    assert!(
        is_error(&bytes, 408, "request_timeout") && closed.is_some(),
        "a stalled body gets 408 request_timeout then a close, got {:?}",
        String::from_utf8_lossy(&bytes)
    );
    // The upstream saw the start of the request, never its end, and is not left holding it.
    eventually(CLOSE_LIMIT, || async { rec.conns().iter().all(|c| c.eof) }).await;
    assert!(rec.requests().is_empty(), "no complete request upstream");
    assert_eq!(rec.violations(), Vec::<String>::new());
}
