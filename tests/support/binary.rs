//! The waypost binary as a test drives it from outside: started from YAML on free ports, asked
//! through its outbound listener (which instance answered) and its admin listener
//! (`/debug/registrations`, `/metrics`), and looked at as a process (its TCP connections).

use std::path::Path;

use serde_json::Value;

use super::external::{free_port, spawn_waypost, wait_until, Proc};
use super::{eventually, get, metric, wait_ready_at, Got, SETTLE};

/// A waypost binary and its ports.
pub struct Waypost {
    /// The process.
    pub proc: Proc,
    /// The outbound listener's port.
    pub port: u16,
    /// The admin listener's port.
    pub admin: u16,
}

impl Waypost {
    /// Starts the binary on free ports with the config `body` (everything but the listeners),
    /// its config and log under `dir`; returns once its admin listener answers (`/live`).
    pub async fn spawn(name: &str, dir: &Path, body: &str) -> Waypost {
        let (port, admin) = (free_port(), free_port());
        let yaml =
            format!("listen: 127.0.0.1:{port}\nadmin: {{listen: 127.0.0.1:{admin}}}\n{body}");
        let proc = spawn_waypost(name, &yaml, dir);
        let live = format!("http://127.0.0.1:{admin}/live");
        let live = &live;
        eventually(SETTLE, || async move { get(live, &[]).await.is_ok() }).await;
        Waypost { proc, port, admin }
    }

    /// Waits until `/ready` answers 200.
    pub async fn wait_ready(&self) {
        wait_ready_at(([127, 0, 0, 1], self.admin).into()).await;
    }

    /// GETs `/` for `host` through it: the answering instance, or waypost's error marker.
    pub async fn routed(&self, host: &str) -> String {
        match get(
            &format!("http://127.0.0.1:{}/", self.port),
            &[("host", host)],
        )
        .await
        {
            Ok(got) if got.status == 200 => got.header("x-instance").to_string(),
            Ok(got) => format!("error: {}", got.header("x-waypost-error")),
            Err(e) => format!("failed: {e}"),
        }
    }

    /// The instances answering `host` over `n` requests, sorted and deduplicated.
    pub async fn answering(&self, host: &str, n: usize) -> Vec<String> {
        let mut names = std::collections::BTreeSet::new();
        for _ in 0..n {
            names.insert(self.routed(host).await);
        }
        names.into_iter().collect()
    }

    /// GETs `path` on the admin listener; it must answer 200.
    pub async fn admin_get(&self, path: &str) -> Got {
        let got = get(&format!("http://127.0.0.1:{}{path}", self.admin), &[])
            .await
            .unwrap();
        assert_eq!(got.status, 200, "{path}: {}", got.text());
        got
    }

    /// The `/debug/registrations` entry of `service`.
    pub async fn registration(&self, service: &str) -> Value {
        let doc: Value =
            serde_json::from_slice(&self.admin_get("/debug/registrations").await.body).unwrap();
        doc["registrations"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["service"] == service)
            .unwrap_or_else(|| panic!("no registration of {service}: {doc}"))
            .clone()
    }

    /// Waits until the registration of `service` is in `state`.
    pub async fn await_state(&self, service: &str, state: &str) {
        eventually(SETTLE, || async move {
            self.registration(service).await["state"] == state
        })
        .await;
    }

    /// The Prometheus text of `/metrics`.
    pub async fn metrics(&self) -> String {
        self.admin_get("/metrics").await.text()
    }

    /// The value of `name{labels…}` on `/metrics` (0 when there is no such series).
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metric(&self.metrics().await, name, labels).unwrap_or(0.0)
    }
}

/// How many established TCP connections process `pid` holds to 127.0.0.1:`port` (its socket
/// descriptors matched against the kernel's IPv4 TCP table by inode).
pub fn connections_to(pid: u32, port: u16) -> usize {
    let inodes: std::collections::HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .filter_map(|link| {
            let link = link.to_string_lossy().into_owned();
            Some(
                link.strip_prefix("socket:[")?
                    .strip_suffix(']')?
                    .to_string(),
            )
        })
        .collect();
    let remote = format!("0100007F:{port:04X}");
    std::fs::read_to_string("/proc/net/tcp")
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        // rem_address, state (01: established), inode
        .filter(|f| f[2] == remote && f[3] == "01" && inodes.contains(f[9]))
        .count()
}

/// Sends SIGTERM to `proc` (logging under `dir`), then checks the shutdown order from outside:
/// the registration leaves the registry (`gone` turns true) while the listener on `port` still
/// accepts — peers that have not noticed yet are served — then the listener stops and the
/// process exits 0. Returns its log. Blocks: run it on `spawn_blocking`.
pub fn terminate_deregistering_first(
    mut proc: Proc,
    port: u16,
    dir: &Path,
    gone: impl Fn() -> bool,
) -> String {
    proc.signal("TERM");
    let accepting = || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok();
    wait_until(std::time::Duration::from_secs(5), &gone, || {
        "still registered".into()
    });
    assert!(
        accepting(),
        "the listener stopped before the registration was removed"
    );
    // Then, after deregister_wait, it stops.
    wait_until(
        std::time::Duration::from_secs(10),
        || !accepting(),
        || "still accepting".into(),
    );
    let code = proc.wait_exit(std::time::Duration::from_secs(10));
    assert_eq!(code, Some(0), "clean exit");
    std::fs::read_to_string(dir.join(format!("{}.log", proc.name))).unwrap()
}
