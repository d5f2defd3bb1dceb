//! A real etcd for tests (Debian `etcd-server` 3.4): one member or a cluster of several on
//! 127.0.0.1, each with its own temp data dir, driven with `etcdctl` (Debian `etcd-client`)
//! exactly as an operator — or a Go service's registry — would write to it.
//!
//! - Ports come from below 32768: the range above is Linux's for outgoing connections, and a
//!   member can fail to bind a port an earlier client connection still holds.
//! - Ready means every running member answers `etcdctl endpoint health` (a committed proposal)
//!   and, in a cluster, every one of them knows the leader: etcd 3.4 drops a put made during an
//!   election.
//! - Members can be stopped (SIGKILL) and started again on the same ports and data dir; every
//!   process is killed when the handle drops, and the temp dir goes with it.
//!
//! Every call blocks: tests using it run on a multi-threaded runtime, so waypost keeps running.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use waypost::config::{Dur, EtcdRegistryConfig};
use waypost::metrics::EtcdMetrics;
use waypost::registry::etcd::EtcdClient;

use super::external::{low_port, require, Proc};

pub mod secure;
pub use secure::Secure;

/// How long a member may take to come up and see a leader.
const READY: Duration = Duration::from_secs(20);

/// One member: its ports and, while it runs, its process.
struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    proc: Option<Proc>,
}

/// A running etcd (one member or a cluster). Every member is killed when dropped.
pub struct Etcd {
    members: Vec<Member>,
    dir: tempfile::TempDir,
    etcd: PathBuf,
    etcdctl: PathBuf,
    /// Set by [`Etcd::start_secure`].
    secure: Option<Secure>,
    /// The server's certificate and key, when secure.
    server_cert: Option<(PathBuf, PathBuf)>,
    /// The certificates' directory (secure only).
    certs: Option<tempfile::TempDir>,
    /// Whether authentication is on (etcdctl then logs in as `root`).
    auth: bool,
}

impl Etcd {
    /// A single-member etcd, ready.
    pub fn start() -> Etcd {
        Etcd::cluster(1)
    }

    /// A cluster of `n` members, ready with a leader.
    pub fn cluster(n: usize) -> Etcd {
        Etcd::build(n, None, std::path::Path::new("/"))
    }

    fn build(n: usize, secure: Option<Secure>, certs: &std::path::Path) -> Etcd {
        let etcd = require("etcd", "apt-get install -y etcd-server");
        let etcdctl = require("etcdctl", "apt-get install -y etcd-client");
        // A port taken between the probe and etcd's bind makes a member exit: start over.
        for _ in 0..5 {
            let mut e = Etcd {
                members: (0..n)
                    .map(|i| Member {
                        name: format!("m{i}"),
                        client_port: low_port(),
                        peer_port: low_port(),
                        proc: None,
                    })
                    .collect(),
                dir: tempfile::tempdir().unwrap(),
                etcd: etcd.clone(),
                etcdctl: etcdctl.clone(),
                secure: secure.clone(),
                server_cert: secure
                    .as_ref()
                    .map(|_| (certs.join("server.crt"), certs.join("server.key"))),
                certs: None,
                auth: false,
            };
            for i in 0..n {
                e.spawn(i);
            }
            if e.wait_ready() {
                return e;
            }
        }
        panic!("etcd did not start (ports taken?)");
    }

    /// What a secured etcd asks of its clients (see [`Etcd::start_secure`]).
    pub fn secure(&self) -> &Secure {
        self.secure.as_ref().expect("started with start_secure")
    }

    /// waypost's etcd client for this etcd (plain, without TLS), with 1 s timeouts.
    pub fn client(&self) -> Arc<EtcdClient> {
        let cfg = EtcdRegistryConfig {
            endpoints: self.endpoints(),
            request_timeout: Dur::from_secs(1),
            dial_timeout: Dur::from_secs(1),
            ..EtcdRegistryConfig::default()
        };
        Arc::new(EtcdClient::from_config(&cfg, EtcdMetrics::detached()).unwrap())
    }

    /// `127.0.0.1:<port>` of every member, running or not.
    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| format!("127.0.0.1:{}", m.client_port))
            .collect()
    }

    /// The endpoints as a YAML flow list, for `registry.etcd.endpoints`.
    pub fn yaml_endpoints(&self) -> String {
        format!("[{}]", self.endpoints().join(", "))
    }

    /// `registry:` YAML for this etcd, with `extra` keys (`lease_ttl: 2s`…) in its block.
    pub fn registry_yaml(&self, extra: &str) -> String {
        format!(
            "registry:\n  etcd:\n    endpoints: {}\n    request_timeout: 1s\n    dial_timeout: 1s\n{extra}",
            self.yaml_endpoints()
        )
    }

    /// Kills member `i` (SIGKILL): its clients see the connection drop. When the others still
    /// form a quorum, waits until they agree on a leader (a new one, if `i` led).
    pub fn stop_member(&mut self, i: usize) {
        self.members[i].proc = None;
        if self.running().len() * 2 > self.members.len() {
            assert!(
                self.wait_ready(),
                "the cluster did not recover from losing member {i}"
            );
        }
    }

    /// Starts member `i` again on its ports and data dir, and waits until the cluster is ready.
    pub fn start_member(&mut self, i: usize) {
        self.spawn(i);
        assert!(self.wait_ready(), "member {i} did not come back");
    }

    /// Kills every member.
    pub fn stop(&mut self) {
        for m in &mut self.members {
            m.proc = None;
        }
    }

    /// Starts every stopped member again and waits until ready.
    pub fn restart(&mut self) {
        for i in 0..self.members.len() {
            if self.members[i].proc.is_none() {
                self.spawn(i);
            }
        }
        assert!(self.wait_ready(), "etcd did not come back");
    }

    fn spawn(&mut self, i: usize) {
        let cluster: Vec<String> = self
            .members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect();
        let token = format!("waypost-test-{}", self.dir.path().display());
        let m = &self.members[i];
        let scheme = if self.secure.is_some() {
            "https"
        } else {
            "http"
        };
        let client = format!("{scheme}://127.0.0.1:{}", m.client_port);
        let peer = format!("http://127.0.0.1:{}", m.peer_port);
        let mut cmd = Command::new(&self.etcd);
        cmd.arg("--name")
            .arg(&m.name)
            .arg("--data-dir")
            .arg(self.dir.path().join(&m.name))
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &cluster.join(",")])
            .args(["--initial-cluster-token", &token])
            .args(["--initial-cluster-state", "new"]);
        if let (Some(s), Some((cert, key))) = (&self.secure, &self.server_cert) {
            cmd.arg("--cert-file")
                .arg(cert)
                .arg("--key-file")
                .arg(key)
                .arg("--trusted-ca-file")
                .arg(&s.ca)
                .arg("--client-cert-auth");
        }
        let proc = Proc::spawn(&m.name, &mut cmd, self.dir.path());
        self.members[i].proc = Some(proc);
    }

    /// Waits until every running member is healthy and knows the leader; false if a member
    /// exited (port taken).
    fn wait_ready(&mut self) -> bool {
        let deadline = std::time::Instant::now() + READY;
        loop {
            for m in &mut self.members {
                if let Some(p) = &mut m.proc {
                    if p.child.try_wait().unwrap().is_some() {
                        return false;
                    }
                }
            }
            if self.running().iter().all(|&i| self.member_ready(i)) {
                return true;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "etcd not ready within {READY:?}:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn member_ready(&self, i: usize) -> bool {
        let ep = &self.endpoints()[i];
        let healthy = self.run(&[ep], &["endpoint", "health"]).is_ok();
        healthy
            && self
                .run(&[ep], &["endpoint", "status", "-w", "json"])
                .ok()
                .and_then(|out| serde_json::from_str::<Value>(&out).ok())
                .is_some_and(|v| v[0]["Status"]["leader"].as_u64().unwrap_or(0) != 0)
    }

    /// Indexes of the running members.
    fn running(&self) -> Vec<usize> {
        (0..self.members.len())
            .filter(|&i| self.members[i].proc.is_some())
            .collect()
    }

    /// Every member's log.
    pub fn logs(&self) -> String {
        self.members
            .iter()
            .map(|m| {
                let log = std::fs::read_to_string(self.dir.path().join(format!("{}.log", m.name)))
                    .unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(30).collect();
                format!(
                    "--- {} (last lines) ---\n{}\n",
                    m.name,
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )
            })
            .collect()
    }

    fn run(&self, endpoints: &[&String], args: &[&str]) -> Result<String, String> {
        let eps: Vec<&str> = endpoints.iter().map(|s| s.as_str()).collect();
        let out = Command::new(&self.etcdctl)
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", eps.join(",")))
            .args(["--dial-timeout=1s", "--command-timeout=3s"])
            .args(self.secure.iter().flat_map(|s| {
                [
                    format!("--cacert={}", s.ca.display()),
                    format!("--cert={}", s.cert.display()),
                    format!("--key={}", s.key.display()),
                ]
            }))
            .args(
                self.secure
                    .iter()
                    .filter(|_| self.auth)
                    .map(|s| format!("--user=root:{}", s.password)),
            )
            .args(args)
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// Runs `etcdctl args` against the running members; its standard output. Panics on failure.
    pub fn etcdctl(&self, args: &[&str]) -> String {
        let eps = self.endpoints();
        let live: Vec<&String> = self.running().into_iter().map(|i| &eps[i]).collect();
        self.run(&live, args)
            .unwrap_or_else(|e| panic!("etcdctl {args:?} failed: {e}"))
    }

    /// `etcdctl put key value`: the exact bytes of `value`.
    pub fn put(&self, key: &str, value: &str) {
        // `--` so keys and values starting with `-` are not taken for flags.
        self.etcdctl(&["put", "--", key, value]);
    }

    /// Puts `key` = `value` attached to `lease` (hex, as `grant` returns it).
    pub fn put_with_lease(&self, key: &str, value: &str, lease: &str) {
        self.etcdctl(&["put", &format!("--lease={lease}"), "--", key, value]);
    }

    /// `etcdctl del key`.
    pub fn del(&self, key: &str) {
        self.etcdctl(&["del", "--", key]);
    }

    /// The value of `key`, exactly, if it exists.
    pub fn get(&self, key: &str) -> Option<String> {
        let v = self.get_json(key);
        let kv = v["kvs"].as_array()?.first()?.clone();
        Some(String::from_utf8(base64(kv["value"].as_str().unwrap_or(""))).unwrap())
    }

    /// The lease `key` is attached to, in hex as etcdctl prints it (`None`: no key, or no lease).
    pub fn lease_of(&self, key: &str) -> Option<String> {
        let v = self.get_json(key);
        let lease = v["kvs"].as_array()?.first()?["lease"].as_i64()?;
        (lease != 0).then(|| format!("{:x}", lease as u64))
    }

    fn get_json(&self, key: &str) -> Value {
        serde_json::from_str(&self.etcdctl(&["get", "-w", "json", "--", key])).unwrap()
    }

    /// The keys under `prefix`, sorted.
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        self.etcdctl(&["get", "--prefix", "--keys-only", "--", prefix])
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect()
    }

    /// Grants a lease of `ttl` seconds; its id in hex.
    pub fn grant(&self, ttl: u64) -> String {
        // `lease 694d7f5e4b0ab80c granted with TTL(10s)`
        let out = self.etcdctl(&["lease", "grant", &ttl.to_string()]);
        out.split_whitespace().nth(1).unwrap().to_string()
    }

    /// Revokes the lease `lease` (hex).
    pub fn revoke(&self, lease: &str) {
        self.etcdctl(&["lease", "revoke", lease]);
    }

    /// The leases that exist, in hex.
    pub fn leases(&self) -> Vec<String> {
        // `found 2 leases` then one id per line.
        self.etcdctl(&["lease", "list"])
            .lines()
            .skip(1)
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
            .collect()
    }

    /// The store's current revision.
    pub fn revision(&self) -> i64 {
        let v: Value =
            serde_json::from_str(&self.etcdctl(&["endpoint", "status", "-w", "json"])).unwrap();
        v[0]["Status"]["header"]["revision"].as_i64().unwrap()
    }

    /// The TTL a lease (hex) was granted with, in seconds; `None` once it is gone.
    pub fn granted_ttl(&self, lease: &str) -> Option<i64> {
        let v: Value =
            serde_json::from_str(&self.etcdctl(&["lease", "timetolive", lease, "-w", "json"]))
                .unwrap();
        let ttl = v["ttl"].as_i64()?;
        (ttl > 0).then(|| v["granted-ttl"].as_i64()).flatten()
    }

    /// The keys of every put under `prefix` since etcd started: its history, replayed by a watch
    /// from revision 1 up to a sentinel key put now.
    pub async fn puts_since_start(&self, prefix: &str) -> Vec<String> {
        let client = self.client();
        let sentinel = format!("{prefix}~sentinel");
        let mut watch = client.watch_prefix(prefix, 1).await.unwrap();
        client.put(&sentinel, b"", 0).await.unwrap();
        let mut keys = Vec::new();
        loop {
            let resp = watch
                .message()
                .await
                .unwrap()
                .expect("the watch stays open");
            for ev in resp.events() {
                if ev.event_type() != etcd_client::EventType::Put {
                    continue;
                }
                let key = ev.kv().unwrap().key_str().unwrap().to_string();
                if key == sentinel {
                    return keys;
                }
                keys.push(key);
            }
        }
    }

    /// Compacts the store up to the current revision.
    pub fn compact_all(&self) {
        let rev = self.revision();
        self.etcdctl(&["compact", &rev.to_string(), "--physical"]);
    }
}

/// Decodes standard base64 (etcdctl's JSON output encodes keys and values with it).
fn base64(text: &str) -> Vec<u8> {
    let val = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => (c - b'A') as u32,
            b'a'..=b'z' => (c - b'a' + 26) as u32,
            b'0'..=b'9' => (c - b'0' + 52) as u32,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {text:?}"),
        }
    };
    let bytes: Vec<u8> = text.bytes().filter(|&c| c != b'=').collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            n |= val(c) << (18 - 6 * i);
        }
        for i in 0..chunk.len().saturating_sub(1) {
            out.push((n >> (16 - 8 * i)) as u8);
        }
    }
    out
}

/// The value Hertz and Kitex write for an instance at `addr` with weight `weight` and no tags.
pub fn cloudwego_value(addr: &str, weight: i64) -> String {
    format!(r#"{{"network":"tcp","address":"{addr}","weight":{weight},"tags":null}}"#)
}
