//! HAProxy (Debian `haproxy`, 2.6) as a child process, for differential tests: the same raw
//! requests through HAProxy and through waypost. One frontend per backend, each on its own
//! free loopback port, so the requests of one case can only ever reach that case's upstream —
//! HAProxy's server-connection reuse cannot mix cases, exactly as waypost's pool cannot when
//! each case has its own service.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use super::external::{free_ports, require, wait_until, Proc};

/// The command that installs HAProxy (named when it is missing).
pub const INSTALL: &str = "sudo apt-get install -y haproxy (or scripts/install-deps.sh)";

/// A running HAProxy. Killed when dropped.
pub struct Haproxy {
    /// Frontend `i` listens here and forwards to backend `i`.
    pub ports: Vec<u16>,
    proc: Proc,
}

/// HAProxy's config: `mode http`, HAProxy's defaults for everything about parsing and
/// keep-alive, finite timeouts, and one `frontend`/`backend` pair per `(port, upstream)`.
pub fn render(pairs: &[(u16, SocketAddr)]) -> String {
    let mut cfg = String::from(
        "global\n    nbthread 1\n    maxconn 4096\n\n\
         defaults\n    mode http\n    timeout connect 2s\n    timeout client 10s\n\
         \x20   timeout server 10s\n    timeout http-request 5s\n    timeout http-keep-alive 5s\n",
    );
    for (i, (port, up)) in pairs.iter().enumerate() {
        cfg.push_str(&format!(
            "\nfrontend f{i}\n    bind 127.0.0.1:{port}\n    default_backend b{i}\n\
             backend b{i}\n    server up {up}\n"
        ));
    }
    cfg
}

impl Haproxy {
    /// Starts HAProxy in front of `upstreams` (one frontend each) with its config and log in
    /// `dir`, and waits until it accepts connections.
    pub fn start(upstreams: &[SocketAddr], dir: &Path) -> Haproxy {
        let bin = require("haproxy", INSTALL);
        let ports = free_ports(upstreams.len());
        let pairs: Vec<(u16, SocketAddr)> = ports.iter().copied().zip(upstreams.to_vec()).collect();
        let cfg = dir.join("haproxy.cfg");
        std::fs::write(&cfg, render(&pairs)).unwrap();
        let check = Command::new(&bin)
            .arg("-c")
            .arg("-f")
            .arg(&cfg)
            .output()
            .unwrap();
        assert!(
            check.status.success(),
            "haproxy -c rejects {}: {}",
            cfg.display(),
            String::from_utf8_lossy(&check.stderr)
        );
        let mut proc = Proc::spawn(
            "haproxy",
            Command::new(&bin).arg("-db").arg("-f").arg(&cfg),
            dir,
        );
        let log = dir.join("haproxy.log");
        // HAProxy binds every frontend before it serves any: the last one answering means all do.
        let last = *ports.last().expect("at least one upstream");
        wait_until(
            Duration::from_secs(10),
            || {
                assert!(
                    proc.child.try_wait().unwrap().is_none(),
                    "haproxy exited: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
                std::net::TcpStream::connect(("127.0.0.1", last)).is_ok()
            },
            || "haproxy is not listening".into(),
        );
        Haproxy { ports, proc }
    }

    /// HAProxy's process id.
    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }
}
