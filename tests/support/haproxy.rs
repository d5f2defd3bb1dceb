//! HAProxy (Debian `haproxy`, 2.6) as a child process, for differential tests: the same raw
//! requests through HAProxy and through waypost. One frontend per backend, each on a loopback
//! port of its own, so the requests of one case can only ever reach that case's upstream —
//! HAProxy's server-connection reuse cannot mix cases, exactly as waypost's pool cannot when
//! each case has its own service.
//!
//! The test binds the frontends' sockets itself and HAProxy inherits them (`bind fd@N`): with
//! a hundred or more ports, picking free ones for HAProxy to bind later races every other test
//! binding ports meanwhile, and one lost port stops HAProxy.

use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::external::{require, wait_until, Proc};

/// The command that installs HAProxy (named when it is missing).
pub const INSTALL: &str = "sudo apt-get install -y haproxy (or scripts/install-deps.sh)";

/// A running HAProxy. Killed when dropped.
pub struct Haproxy {
    /// Frontend `i` listens here and forwards to backend `i`.
    pub addrs: Vec<SocketAddr>,
    proc: Proc,
    log: PathBuf,
    /// The frontends' sockets, HAProxy's by inheritance; kept so their fds stay valid.
    _sockets: Vec<TcpListener>,
}

/// HAProxy's config: `mode http`, HAProxy's defaults for everything about parsing and
/// keep-alive, finite timeouts, and one `frontend`/`backend` pair per `(listening fd,
/// upstream)`.
pub fn render(pairs: &[(RawFd, SocketAddr)]) -> String {
    let mut cfg = String::from(
        "global\n    nbthread 1\n    maxconn 4096\n\n\
         defaults\n    mode http\n    timeout connect 2s\n    timeout client 10s\n\
         \x20   timeout server 10s\n    timeout http-request 5s\n    timeout http-keep-alive 5s\n",
    );
    for (i, (fd, up)) in pairs.iter().enumerate() {
        cfg.push_str(&format!(
            "\nfrontend f{i}\n    bind fd@{fd}\n    default_backend b{i}\n\
             backend b{i}\n    server up {up}\n"
        ));
    }
    cfg
}

impl Haproxy {
    /// Starts HAProxy in front of `upstreams` (one frontend each) with its config and log in
    /// `dir`, and waits until it serves.
    pub fn start(upstreams: &[SocketAddr], dir: &Path) -> Haproxy {
        let bin = require("haproxy", INSTALL);
        // Beside the recorders, away from the ports other tests pick on 127.0.0.1.
        let sockets: Vec<TcpListener> = upstreams
            .iter()
            .map(|_| TcpListener::bind((super::recorder::IP, 0)).expect("bind a frontend socket"))
            .collect();
        let addrs: Vec<SocketAddr> = sockets.iter().map(|s| s.local_addr().unwrap()).collect();
        let fds: Vec<RawFd> = sockets.iter().map(AsRawFd::as_raw_fd).collect();
        let pairs: Vec<(RawFd, SocketAddr)> = fds.iter().copied().zip(upstreams.to_vec()).collect();
        let cfg = dir.join("haproxy.cfg");
        std::fs::write(&cfg, render(&pairs)).unwrap();
        // The check opens the inherited sockets too.
        let check = inherit(Command::new(&bin).arg("-c").arg("-f").arg(&cfg), &fds)
            .output()
            .unwrap();
        assert!(
            check.status.success(),
            "haproxy -c rejects {}: {}",
            cfg.display(),
            String::from_utf8_lossy(&check.stderr)
        );
        let mut cmd = Command::new(&bin);
        let mut proc = Proc::spawn(
            "haproxy",
            inherit(cmd.arg("-db").arg("-f").arg(&cfg), &fds),
            dir,
        );
        let log = dir.join("haproxy.log");
        // The sockets accept (into their backlog) from the start: wait for HAProxy itself, by
        // an answer to a request it must refuse (400) without asking any upstream.
        let probe = *addrs.last().expect("an upstream");
        wait_until(
            Duration::from_secs(10),
            || {
                assert!(
                    proc.child.try_wait().unwrap().is_none(),
                    "haproxy exited: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
                answers(probe)
            },
            || "haproxy does not answer".into(),
        );
        Haproxy {
            addrs,
            proc,
            log,
            _sockets: sockets,
        }
    }

    /// HAProxy's process id.
    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// What HAProxy wrote to stdout and stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// `cmd`, set to leave `fds` open in the child (they are close-on-exec here).
fn inherit<'a>(cmd: &'a mut Command, fds: &[RawFd]) -> &'a mut Command {
    let fds = fds.to_vec();
    // SAFETY: runs in the child between fork and exec, and only calls fcntl (async-signal
    // safe) on descriptors this process owns, so they survive the exec.
    unsafe {
        cmd.pre_exec(move || {
            for &fd in &fds {
                let flags = libc::fcntl(fd, libc::F_GETFD);
                if flags < 0 || libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        })
    }
}

/// Whether a proxy at `addr` answers an invalid request (with anything).
fn answers(addr: SocketAddr) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
    let mut buf = [0u8; 16];
    s.write_all(b"BAD\r\n\r\n").is_ok() && matches!(s.read(&mut buf), Ok(n) if n > 0)
}
