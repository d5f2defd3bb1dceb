//! The health gate, as SmartStack's Nerve has it: a probe of the local app (HTTP GET or TCP
//! connect) on its own timer, and a [`Gate`] that turns the stream of results into "healthy"
//! only after `rise` consecutive good checks and back into "unhealthy" after `fall` bad ones.
//! The registration loop ([`super::lifecycle`]) acts on the gate's transitions, never on a single
//! result, so one slow answer does not withdraw an instance and one lucky one does not announce
//! it.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

use super::lifecycle::Entry;
use crate::config::{HttpUrl, ProbeConfig};
use crate::shutdown::Shutdown;

/// What a check probes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// `GET` the URL; a 2xx or 3xx status is good.
    Http(HttpUrl),
    /// Connect; an accepted connection is good.
    Tcp(SocketAddr),
}

/// A health check: the probe, its schedule and its thresholds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// What to probe.
    pub probe: Probe,
    /// Time between the starts of two checks (jittered by ±10 %).
    pub interval: Duration,
    /// Time one check may take; longer is a bad check.
    pub timeout: Duration,
    /// Consecutive good checks that make the app healthy.
    pub rise: u32,
    /// Consecutive bad checks that make it unhealthy.
    pub fall: u32,
}

/// Largest response head an HTTP check reads: only the status line matters, and a health
/// endpoint that sends more than this before its blank line is not one.
const MAX_HEAD: usize = 8 * 1024;

/// Share of the interval by which each check is moved at random, so the checks of a fleet (and
/// of several entries of one app) do not hit in lockstep.
const JITTER: f64 = 0.1;

impl Check {
    /// The check `cfg` describes; `None` when it names no probe (validation refuses that).
    pub fn from_config(cfg: &ProbeConfig) -> Option<Self> {
        let probe = match (&cfg.http, cfg.tcp) {
            (Some(url), _) => Probe::Http(url.clone()),
            (None, Some(addr)) => Probe::Tcp(addr.0),
            (None, None) => return None,
        };
        Some(Self {
            probe,
            interval: cfg.interval.0,
            timeout: cfg.timeout.0,
            rise: cfg.rise,
            fall: cfg.fall,
        })
    }

    /// What `/debug/registrations` shows of the check.
    pub fn describe(&self) -> serde_json::Value {
        let (kind, target) = match &self.probe {
            Probe::Http(url) => ("http", url.to_string()),
            Probe::Tcp(addr) => ("tcp", addr.to_string()),
        };
        serde_json::json!({
            "kind": kind,
            "target": target,
            "interval_seconds": self.interval.as_secs_f64(),
            "timeout_seconds": self.timeout.as_secs_f64(),
            "rise": self.rise,
            "fall": self.fall,
        })
    }
}

impl Probe {
    /// Runs the probe once (unbounded: the caller applies the timeout). `Err` says why it failed.
    pub async fn run(&self) -> Result<(), String> {
        match self {
            Probe::Tcp(addr) => TcpStream::connect(addr)
                .await
                .map(drop)
                .map_err(|e| format!("connect {addr}: {e}")),
            Probe::Http(url) => http_get(url).await,
        }
    }
}

/// `GET url` on a fresh connection (`Connection: close`); good when the status is 2xx or 3xx.
/// Reads only the response head.
async fn http_get(url: &HttpUrl) -> Result<(), String> {
    let mut stream = TcpStream::connect(url.addr)
        .await
        .map_err(|e| format!("connect {}: {e}", url.addr))?;
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: waypost-health-check\r\nAccept: */*\r\nConnection: close\r\n\r\n",
        url.path, url.host
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("send: {e}"))?;
    let mut buf = Vec::with_capacity(1024);
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut response = httparse::Response::new(&mut headers);
        match response.parse(&buf) {
            Ok(httparse::Status::Complete(_)) => {
                let code = response.code.unwrap_or(0);
                return if (200..400).contains(&code) {
                    Ok(())
                } else {
                    Err(format!("status {code}"))
                };
            }
            Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => {}
            Ok(httparse::Status::Partial) => {
                return Err(format!("response head over {MAX_HEAD} bytes"))
            }
            Err(httparse::Error::TooManyHeaders) => {
                // The status line parsed; the header count does not matter to a health check.
                return match response.code {
                    Some(code) if (200..400).contains(&code) => Ok(()),
                    Some(code) => Err(format!("status {code}")),
                    None => Err("malformed response".into()),
                };
            }
            Err(e) => return Err(format!("malformed response: {e}")),
        }
        let n = stream
            .read_buf(&mut buf)
            .await
            .map_err(|e| format!("receive: {e}"))?;
        if n == 0 {
            return Err("connection closed before a response".into());
        }
    }
}

/// Nerve's rise/fall counting. Starts unhealthy; becomes healthy after `rise` consecutive good
/// results and unhealthy again after `fall` consecutive bad ones. Pure, for tests.
#[derive(Debug, Clone)]
pub struct Gate {
    rise: u32,
    fall: u32,
    good: u32,
    bad: u32,
    healthy: bool,
}

impl Gate {
    /// A gate that has seen nothing yet (unhealthy).
    pub fn new(rise: u32, fall: u32) -> Self {
        Self {
            rise: rise.max(1),
            fall: fall.max(1),
            good: 0,
            bad: 0,
            healthy: false,
        }
    }

    /// Records one result; `Some(healthy)` when it changes the verdict.
    pub fn record(&mut self, ok: bool) -> Option<bool> {
        if ok {
            self.good = self.good.saturating_add(1);
            self.bad = 0;
            (!self.healthy && self.good >= self.rise).then(|| {
                self.healthy = true;
                true
            })
        } else {
            self.bad = self.bad.saturating_add(1);
            self.good = 0;
            (self.healthy && self.bad >= self.fall).then(|| {
                self.healthy = false;
                false
            })
        }
    }

    /// The current verdict.
    pub fn healthy(&self) -> bool {
        self.healthy
    }

    /// Consecutive good results.
    pub fn good(&self) -> u32 {
        self.good
    }

    /// Consecutive bad results.
    pub fn bad(&self) -> u32 {
        self.bad
    }
}

/// One check's outcome, as `/debug/registrations` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct CheckResult {
    /// When it finished, seconds since the Unix epoch.
    pub at: f64,
    /// Whether it was good.
    pub ok: bool,
    /// How long it took.
    pub latency_seconds: f64,
    /// Why it was bad.
    pub error: Option<String>,
}

/// Delay from one check's start to the next one's: `interval` ±10 %, `unit` uniform in [0, 1).
pub fn next_check(interval: Duration, unit: f64) -> Duration {
    interval.mul_f64(1.0 - JITTER + 2.0 * JITTER * unit.clamp(0.0, 1.0))
}

/// Runs `check` against the app until `shutdown`: the first check at once, then every
/// interval; each result goes to `entry` (status and metrics), and every change of the gate's
/// verdict to `healthy`, which the registration loop watches.
pub(super) async fn run(
    entry: std::sync::Arc<Entry>,
    check: Check,
    healthy: watch::Sender<bool>,
    mut shutdown: Shutdown,
) {
    let mut gate = Gate::new(check.rise, check.fall);
    let mut next = Instant::now();
    loop {
        tokio::select! {
            biased;
            _ = shutdown.recv() => break,
            _ = tokio::time::sleep_until(next) => {}
        }
        let started = Instant::now();
        next = started + next_check(check.interval, fastrand::f64());
        let outcome = tokio::select! {
            biased;
            _ = shutdown.recv() => break,
            r = tokio::time::timeout(check.timeout, check.probe.run()) => {
                r.unwrap_or_else(|_| Err(format!("no answer within {:?}", check.timeout)))
            }
        };
        let latency = started.elapsed();
        let change = gate.record(outcome.is_ok());
        entry.checked(outcome, latency, &gate);
        if let Some(now_healthy) = change {
            healthy.send_replace(now_healthy);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rise_and_fall_need_consecutive_results() {
        let mut g = Gate::new(2, 3);
        assert!(!g.healthy(), "unhealthy until proven otherwise");
        assert_eq!(g.record(true), None);
        assert_eq!(g.record(false), None, "a bad result resets the good streak");
        assert_eq!(g.record(true), None);
        assert_eq!(g.record(true), Some(true), "two good in a row: healthy");
        assert_eq!(g.record(true), None, "already healthy");
        assert_eq!((g.good(), g.bad()), (3, 0));
        assert_eq!(g.record(false), None);
        assert_eq!(g.record(false), None);
        assert_eq!(g.record(true), None, "a good result resets the bad streak");
        assert_eq!(g.record(false), None);
        assert_eq!(g.record(false), None);
        assert_eq!(
            g.record(false),
            Some(false),
            "three bad in a row: unhealthy"
        );
        assert_eq!(g.record(false), None, "already unhealthy");
        assert_eq!(g.record(true), None);
        assert_eq!(g.record(true), Some(true), "back after rise good ones");
    }

    #[test]
    fn rise_and_fall_of_one_follow_every_result() {
        let mut g = Gate::new(1, 1);
        assert_eq!(g.record(false), None);
        assert_eq!(g.record(true), Some(true));
        assert_eq!(g.record(false), Some(false));
        assert_eq!(g.record(true), Some(true));
    }

    #[test]
    fn checks_are_jittered_by_ten_percent() {
        let i = Duration::from_secs(10);
        assert_eq!(next_check(i, 0.0), Duration::from_secs(9));
        assert_eq!(next_check(i, 0.5), Duration::from_secs(10));
        assert!(next_check(i, 0.999_999) <= Duration::from_secs(11));
    }

    async fn serve_once(response: &'static [u8]) -> SocketAddr {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            let _ = s.write_all(response).await;
        });
        addr
    }

    fn url(addr: SocketAddr) -> Probe {
        Probe::Http(HttpUrl::parse(&format!("http://{addr}/healthz")).unwrap())
    }

    #[tokio::test]
    async fn http_probe_takes_2xx_and_3xx_as_good() {
        let ok = serve_once(b"HTTP/1.1 204 No Content\r\n\r\n").await;
        assert_eq!(url(ok).run().await, Ok(()));
        let moved =
            serve_once(b"HTTP/1.1 302 Found\r\nLocation: /x\r\nContent-Length: 0\r\n\r\n").await;
        assert_eq!(url(moved).run().await, Ok(()));
        let down =
            serve_once(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n").await;
        assert_eq!(url(down).run().await, Err("status 503".into()));
        let garbage = serve_once(b"SSH-2.0-OpenSSH\r\n\r\n").await;
        assert!(url(garbage)
            .run()
            .await
            .unwrap_err()
            .starts_with("malformed"));
        let closed = serve_once(b"").await;
        assert!(url(closed).run().await.unwrap_err().contains("closed"));
    }

    #[tokio::test]
    async fn tcp_probe_connects() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        assert_eq!(Probe::Tcp(addr).run().await, Ok(()));
        drop(l);
        assert!(Probe::Tcp(addr)
            .run()
            .await
            .unwrap_err()
            .starts_with("connect"));
    }
}
