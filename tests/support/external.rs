//! Child processes for tests: the waypost binary, the example upstream, and the external tools
//! (promtool, etcd, dnsmasq) — each killed when its handle drops. A missing tool fails the test
//! with the command that installs it; it never passes silently.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The waypost binary cargo built for this test run, or the one `WAYPOST_BIN` names: so the
/// same tests can be pointed at another build (main's, a branch's) to compare them.
pub fn waypost_bin() -> PathBuf {
    match std::env::var_os("WAYPOST_BIN") {
        Some(bin) => {
            let bin = PathBuf::from(bin);
            assert!(bin.is_file(), "WAYPOST_BIN={} is not a file", bin.display());
            bin
        }
        None => PathBuf::from(env!("CARGO_BIN_EXE_waypost")),
    }
}

/// The example upstream (`examples/upstream.rs`), which `cargo test` builds alongside.
pub fn upstream_bin() -> PathBuf {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_waypost"));
    let dir = bin.parent().expect("binary has a directory");
    let path = dir.join("examples").join("upstream");
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --examples` (make test does)",
        path.display()
    );
    path
}

/// Finds `tool` on PATH, or fails naming the package that provides it.
pub fn require(tool: &str, install: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in
        std::env::split_paths(&path).chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
    {
        let candidate = dir.join(tool);
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!("`{tool}` is not installed: run `{install}` (make test installs it)");
}

/// A child process killed (SIGKILL) and reaped when dropped.
pub struct Proc {
    pub child: Child,
    pub name: String,
}

impl Proc {
    /// Spawns `cmd`, with stdout/stderr captured to files under `log_dir`.
    pub fn spawn(name: &str, cmd: &mut Command, log_dir: &Path) -> Proc {
        let out = std::fs::File::create(log_dir.join(format!("{name}.log"))).unwrap();
        let err = out.try_clone().unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Proc {
            child,
            name: name.to_string(),
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` (e.g. libc-free: "TERM", "KILL") with the `kill` command.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal} {} failed", self.pid());
    }

    /// Waits up to `timeout` for the process to exit; its exit code, or `None` if it is still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status.code().unwrap_or(-1));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// A field from `/proc/<pid>/status` in KiB (`VmRSS`, `VmHWM`).
    pub fn status_kib(&self, field: &str) -> u64 {
        let text = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        text.lines()
            .find_map(|l| {
                l.strip_prefix(field)
                    .and_then(|r| r.trim_start_matches(':').split_whitespace().next())
            })
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {field} in /proc status"))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free loopback port (bound, then released; the tiny race is acceptable in tests).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A free TCP port below 32768 on 127.0.0.1 (bound, then released), for servers the tests start:
/// the range above is Linux's for outgoing connections, and a server can fail to bind a port an
/// earlier client connection still holds.
pub fn low_port() -> u16 {
    loop {
        let port = fastrand::u16(20_000..32_000);
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// `n` distinct free ports on 127.0.0.1: each stays bound until all are found, so none repeats
/// (separate [`free_port`] calls may get the same port back).
pub fn free_ports(n: usize) -> Vec<u16> {
    free_ports_on("127.0.0.1", n)
}

/// [`free_ports`] on another loopback address (any 127.x.y.z): tests running at once that
/// pick ports on different addresses can never be handed the same one.
pub fn free_ports_on(ip: &str, n: usize) -> Vec<u16> {
    let held: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind((ip, 0)).unwrap())
        .collect();
    held.iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

/// Starts the waypost binary with the config text `yaml` written under `dir`.
pub fn spawn_waypost(name: &str, yaml: &str, dir: &Path) -> Proc {
    let cfg = dir.join(format!("{name}.yaml"));
    std::fs::write(&cfg, yaml).unwrap();
    Proc::spawn(
        name,
        Command::new(waypost_bin())
            .args(["run", "--config"])
            .arg(&cfg)
            .env("RUST_LOG", "info"),
        dir,
    )
}

/// Blocks until `cond` holds, checking every 10 ms; fails the test with `msg()` (evaluated
/// only then) when `timeout` passes first.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool, msg: impl FnOnce() -> String) {
    let deadline = std::time::Instant::now() + timeout;
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "not within {timeout:?}: {}",
            msg()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Runs `promtool check metrics` (Debian `prometheus`) on the exposition `text`; fails the test
/// with promtool's complaints.
pub fn promtool_check(text: &[u8]) {
    use std::io::Write;
    let promtool = require("promtool", "apt-get install -y prometheus");
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(text).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
