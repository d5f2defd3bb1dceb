//! A real DNS server for tests: `dnsmasq` (Debian `dnsmasq-base`) as a child process on
//! `127.0.0.1` and a free port, serving only the records a test gives it, and logging every
//! query so a test can prove which names waypost asked for (and which it never did).
//!
//! - **A records** live in an `addn-hosts` file in the server's temp dir; [`Dnsmasq::set_hosts`]
//!   rewrites it and sends SIGHUP, which makes dnsmasq re-read it.
//! - **SRV records** are command-line options (`--srv-host`), which SIGHUP does not re-read, so
//!   [`Dnsmasq::set_srv`] restarts dnsmasq on the same port.
//! - Every answer carries TTL 1 (`--local-ttl=1`, which dnsmasq applies to SRV answers too), so
//!   waypost refreshes DNS targets at `dns.min_ttl`.
//! - Names under [`DOMAIN`] that have no record get NXDOMAIN (`--local=/test/`); any other name
//!   gets REFUSED (no upstream servers: `--no-resolv`).
//!
//! The process is killed when the handle drops; the temp dir (with the query log) goes with it.

use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use super::external::{free_port, require, wait_until, Proc};

/// The domain dnsmasq is authoritative for: unknown names under it are NXDOMAIN.
pub const DOMAIN: &str = "test";

/// DNS record types, as numbered on the wire.
pub const A: u16 = 1;
/// SRV record type.
pub const SRV: u16 = 33;

/// One SRV record: `name` → `target:port` with `priority` (lower is preferred) and `weight`.
#[derive(Debug, Clone)]
pub struct Srv {
    pub name: String,
    pub target: String,
    pub port: u16,
    pub priority: u16,
    pub weight: u16,
}

impl Srv {
    /// An SRV record.
    pub fn new(name: &str, target: &str, port: u16, priority: u16, weight: u16) -> Srv {
        Srv {
            name: name.into(),
            target: target.into(),
            port,
            priority,
            weight,
        }
    }
}

/// A running dnsmasq. Killed when dropped.
pub struct Dnsmasq {
    /// The process; `Proc` kills and reaps it when dropped. Declared first, so it is dropped
    /// (killed) before the temp dir it logs into is removed.
    proc: Option<Proc>,
    /// Where it answers, over UDP and TCP.
    pub addr: SocketAddr,
    dir: tempfile::TempDir,
    bin: PathBuf,
    srv: Vec<Srv>,
    /// How many times the hosts file has been (re)loaded, counted from the log.
    loads: usize,
}

impl Dnsmasq {
    /// Starts dnsmasq with A records `hosts` (`(name, ip)` pairs) and SRV records `srv`, and
    /// waits until it answers queries.
    pub fn start(hosts: &[(&str, &str)], srv: &[Srv]) -> Dnsmasq {
        let bin = require("dnsmasq", "apt-get install -y dnsmasq-base");
        let dir = tempfile::tempdir().unwrap();
        let mut dns = Dnsmasq {
            proc: None,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            dir,
            bin,
            srv: srv.to_vec(),
            loads: 0,
        };
        dns.write_hosts(hosts);
        // The port comes from a TCP probe; its UDP twin may be taken, in which case dnsmasq
        // exits at once and another port is tried.
        for _ in 0..10 {
            dns.addr.set_port(free_port());
            if dns.spawn() {
                return dns;
            }
        }
        panic!(
            "dnsmasq did not start on any port; last log:\n{}",
            dns.log()
        );
    }

    /// Replaces every A record with `hosts` and waits until dnsmasq has re-read them.
    pub fn set_hosts(&mut self, hosts: &[(&str, &str)]) {
        self.write_hosts(hosts);
        let proc = self.proc.as_ref().expect("dnsmasq is running");
        proc.signal("HUP");
        self.loads += 1;
        self.wait_loads();
    }

    /// Replaces every SRV record with `srv`, restarting dnsmasq on the same port (SIGHUP does
    /// not re-read command-line records). The A records are kept.
    pub fn set_srv(&mut self, srv: &[Srv]) {
        self.srv = srv.to_vec();
        self.restart();
    }

    /// Stops dnsmasq if it runs and starts it again on the same port, with the same records.
    pub fn restart(&mut self) {
        self.stop();
        // The port was ours a moment ago; another process taking it in between is unlikely.
        let (addr, log) = (self.addr, self.log_path());
        wait_until(
            Duration::from_secs(5),
            || self.spawn(),
            || {
                let log = std::fs::read_to_string(log).unwrap_or_default();
                format!("dnsmasq cannot restart on {addr}:\n{log}")
            },
        );
    }

    /// Kills dnsmasq (dropping its `Proc` kills and reaps it): from now on its port answers
    /// nothing (a dead name server). The query log stays readable.
    pub fn stop(&mut self) {
        self.proc = None;
    }

    /// `127.0.0.1:<port>`, as waypost's `dns.nameservers` wants it.
    pub fn nameserver(&self) -> String {
        self.addr.to_string()
    }

    /// The whole log: start-up messages and one line per query and answer.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The record types (`A`, `AAAA`, `SRV`…) of every query for `name` so far, in order.
    /// Call [`Dnsmasq::sync`] first so queries already answered are in the log.
    pub fn queries(&self, name: &str) -> Vec<String> {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        self.log()
            .lines()
            .filter_map(|l| {
                // `… dnsmasq[PID]: query[A] echo.test from 127.0.0.1`
                let rest = &l[l.find("query[")? + "query[".len()..];
                let (qtype, rest) = rest.split_once("] ")?;
                let (qname, _) = rest.split_once(" from ")?;
                (qname.trim_end_matches('.').to_ascii_lowercase() == name)
                    .then(|| qtype.to_string())
            })
            .collect()
    }

    /// Whether `name` appears anywhere in the log (as a query, answer or anything else).
    /// Call [`Dnsmasq::sync`] first.
    pub fn mentions(&self, name: &str) -> bool {
        self.log()
            .to_ascii_lowercase()
            .contains(&name.to_ascii_lowercase())
    }

    /// Waits until every query dnsmasq received before this call is in the log: asks for a
    /// fresh marker name and waits for its log line (dnsmasq handles queries one at a time,
    /// in order, and logs each as it handles it).
    pub fn sync(&self) {
        static N: AtomicU32 = AtomicU32::new(0);
        let marker = format!(
            "sync-{}-{}.marker.{DOMAIN}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        assert!(
            self.query(&marker, A).is_some(),
            "dnsmasq on {} does not answer:\n{}",
            self.addr,
            self.log()
        );
        wait_until(
            Duration::from_secs(5),
            || !self.queries(&marker).is_empty(),
            || format!("marker query {marker} never logged:\n{}", self.log()),
        );
    }

    /// Asks dnsmasq directly (one UDP query of type `qtype`): `Some((rcode, answer count))`,
    /// or `None` when nothing answered within 500 ms.
    pub fn query(&self, name: &str, qtype: u16) -> Option<(u8, u16)> {
        query(self.addr, name, qtype)
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("queries.log")
    }

    fn hosts_path(&self) -> PathBuf {
        self.dir.path().join("hosts")
    }

    fn write_hosts(&self, hosts: &[(&str, &str)]) {
        let text: String = hosts
            .iter()
            .map(|(name, ip)| format!("{ip} {name}\n"))
            .collect();
        // Write then rename, so dnsmasq never reads a half-written file.
        let tmp = self.dir.path().join("hosts.tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, self.hosts_path()).unwrap();
    }

    /// Spawns dnsmasq on `self.addr` and waits until it answers; false if it exited (port taken).
    fn spawn(&mut self) -> bool {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--keep-in-foreground")
            .arg("--no-resolv")
            .arg("--no-hosts")
            .arg("--bind-interfaces")
            .arg("--listen-address=127.0.0.1")
            .arg(format!("--port={}", self.addr.port()))
            .arg(format!("--addn-hosts={}", self.hosts_path().display()))
            .arg(format!("--local=/{DOMAIN}/"))
            .arg("--local-ttl=1")
            .arg("--log-queries")
            .arg(format!("--log-facility={}", self.log_path().display()))
            .arg(format!(
                "--pid-file={}",
                self.dir.path().join("dnsmasq.pid").display()
            ));
        for s in &self.srv {
            cmd.arg(format!(
                "--srv-host={},{},{},{},{}",
                s.name, s.target, s.port, s.priority, s.weight
            ));
        }
        if running_as_root() {
            // As root dnsmasq drops to `nobody`, who cannot read our 0700 temp dir when SIGHUP
            // asks it to re-read the hosts file; stay root (it only listens on loopback).
            cmd.arg("--user=root").arg("--group=root");
        }
        let mut proc = Proc::spawn("dnsmasq", &mut cmd, self.dir.path());
        let mut exited = false;
        wait_until(
            Duration::from_secs(5),
            || {
                exited = proc.child.try_wait().unwrap().is_some();
                exited || query(self.addr, &format!("ready.{DOMAIN}"), A).is_some()
            },
            || format!("dnsmasq on {} does not answer:\n{}", self.addr, self.log()),
        );
        if exited {
            return false;
        }
        self.proc = Some(proc);
        self.wait_loads();
        true
    }

    /// Waits until the log shows `self.loads + 1` reads of the hosts file (one per start,
    /// restart and SIGHUP).
    fn wait_loads(&self) {
        let needle = format!("read {}", self.hosts_path().display());
        wait_until(
            Duration::from_secs(5),
            || self.log().matches(&needle).count() >= self.loads + self.starts(),
            || format!("dnsmasq did not (re)load its hosts file:\n{}", self.log()),
        );
    }

    fn starts(&self) -> usize {
        self.log()
            .lines()
            .filter(|l| l.contains(": started, version"))
            .count()
    }
}

fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("Uid:")
                    .map(|r| r.split_whitespace().next() == Some("0"))
            })
        })
        .unwrap_or(false)
}

/// One DNS query over UDP: `Some((rcode, answer count))`, or `None` without an answer in 500 ms.
pub fn query(server: SocketAddr, name: &str, qtype: u16) -> Option<(u8, u16)> {
    static ID: AtomicU32 = AtomicU32::new(1);
    let id = (ID.fetch_add(1, Ordering::Relaxed) & 0xffff) as u16;
    // Header: id, flags (standard query, recursion desired), 1 question, 0 answer/authority/additional.
    let mut packet = Vec::with_capacity(64);
    for word in [id, 0x0100, 1, 0, 0, 0] {
        packet.extend_from_slice(&word.to_be_bytes());
    }
    for label in name.trim_end_matches('.').split('.') {
        packet.push(label.len() as u8);
        packet.extend_from_slice(label.as_bytes());
    }
    packet.push(0);
    packet.extend_from_slice(&qtype.to_be_bytes());
    packet.extend_from_slice(&1u16.to_be_bytes()); // class IN
    let socket = UdpSocket::bind("127.0.0.1:0").ok()?;
    socket
        .set_read_timeout(Some(Duration::from_millis(500)))
        .ok()?;
    socket.send_to(&packet, server).ok()?;
    let mut buf = [0u8; 1500];
    loop {
        let (n, _) = socket.recv_from(&mut buf).ok()?;
        if n >= 12 && buf[..2] == id.to_be_bytes() {
            return Some((buf[3] & 0x0f, u16::from_be_bytes([buf[6], buf[7]])));
        }
    }
}
