//! A real ZooKeeper for tests (Debian `zookeeper` 3.8), and a pausable TCP relay to keep a
//! client away from it until its session expires.
//!
//! - One standalone server per test binary, shared by its tests ([`ZooKeeper::shared`]): the
//!   JVM takes 0.4–1.4 s to start (more on a busy machine). Tests keep apart by using their own
//!   root ([`unique_root`]) or service names.
//! - Started as `java -cp <conf>:zookeeper.jar:<slf4j/log4j> ZooKeeperServerMain zoo.cfg` on a
//!   free loopback port below 32768 (the range above is Linux's for outgoing connections), with
//!   a temp data dir, the admin server off and `ruok`/`dump` allowed; ready when `ruok` answers
//!   `imok`.
//! - `tickTime` is 200 ms and `maxSessionTimeout` 30 s, so the server grants session timeouts
//!   between 400 ms and 30 s: tests ask for 2 s and see expiries within seconds, or for 20 s
//!   where a session must survive whatever stalls a busy machine brings.
//! - The JVM runs under a small shell that holds a pipe from the test process: when the test
//!   process ends, however it ends, the pipe closes and the shell kills the server and removes
//!   its directory. A static is never dropped; this is how the shared server is always stopped.
//! - A missing `java` or ZooKeeper jar fails the test with the install command.
//!
//! ZooKeeper restarts do not expire sessions (the server reloads them with fresh timeouts), so
//! expiry is forced with a [`Relay`] between waypost and the server: paused, it cuts every
//! relayed connection and refuses new ones; the server then expires the session.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use zookeeper_client::{Acls, Client, CreateMode, Stat};

use super::external::{low_port, require};

/// How long the server may take to answer `ruok`.
const READY: Duration = Duration::from_secs(40);
/// The server's tick: sessions get at least 2 ticks.
const TICK_MS: u64 = 200;
/// The longest session the server grants (its default would be 20 ticks, 4 s).
const MAX_SESSION_MS: u64 = 30_000;
/// The session timeout tests ask for.
pub const SESSION: Duration = Duration::from_secs(2);

const ZOOKEEPER_JAR: &str = "/usr/share/java/zookeeper.jar";
/// The logging jars that go with Debian's ZooKeeper (`/usr/share/java/*` would pull in
/// conflicting ones).
const LOG_JARS: [&str; 2] = [
    "/usr/share/java/slf4j-log4j12.jar",
    "/usr/share/java/log4j-1.2.jar",
];

/// A running ZooKeeper server.
pub struct ZooKeeper {
    port: u16,
    dir: PathBuf,
    /// The watchdog shell; the server goes when its stdin closes.
    _watchdog: Mutex<(Child, ChildStdin)>,
}

impl ZooKeeper {
    /// The server of this test binary, started by the first test that asks.
    pub fn shared() -> &'static ZooKeeper {
        static SHARED: OnceLock<ZooKeeper> = OnceLock::new();
        SHARED.get_or_init(ZooKeeper::start)
    }

    fn start() -> ZooKeeper {
        let java = require("java", "apt-get install -y zookeeper");
        assert!(
            Path::new(ZOOKEEPER_JAR).is_file(),
            "{ZOOKEEPER_JAR} is missing: run `apt-get install -y zookeeper` (make test installs it)"
        );
        // A port taken between the probe and the server's bind makes it exit: start over.
        for _ in 0..5 {
            let dir = tempfile::Builder::new()
                .prefix("waypost-zk-")
                .tempdir()
                .unwrap()
                .keep();
            let port = low_port();
            std::fs::create_dir_all(dir.join("data")).unwrap();
            std::fs::write(
                dir.join("zoo.cfg"),
                format!(
                    "tickTime={TICK_MS}\nmaxSessionTimeout={MAX_SESSION_MS}\ndataDir={}\nclientPort={port}\nclientPortAddress=127.0.0.1\n\
                     admin.enableServer=false\n4lw.commands.whitelist=ruok,dump,srvr\n\
                     maxClientCnxns=0\n",
                    dir.join("data").display()
                ),
            )
            .unwrap();
            std::fs::write(
                dir.join("log4j.properties"),
                "log4j.rootLogger=INFO, FILE\nlog4j.appender.FILE=org.apache.log4j.FileAppender\n\
                 log4j.appender.FILE.File=${zookeeper.log.file}\n\
                 log4j.appender.FILE.layout=org.apache.log4j.PatternLayout\n\
                 log4j.appender.FILE.layout.ConversionPattern=%d{ISO8601} %-5p [%t] %c{1} - %m%n\n",
            )
            .unwrap();
            let classpath = [dir.display().to_string(), ZOOKEEPER_JAR.into()]
                .into_iter()
                .chain(LOG_JARS.map(String::from))
                .collect::<Vec<_>>()
                .join(":");
            // The shell starts the server, waits for its stdin (our pipe) to close, then kills
            // the server and removes the directory.
            let script = r#"
                "$1" -Xshare:auto -XX:TieredStopAtLevel=1 -XX:+UseSerialGC -Xmx256m \
                  -Dzookeeper.log.file="$2/server.log" -cp "$3" \
                  org.apache.zookeeper.server.ZooKeeperServerMain "$2/zoo.cfg" >"$2/stdout.log" 2>&1 &
                pid=$!
                read -r _ || true
                kill -9 "$pid" 2>/dev/null
                wait "$pid" 2>/dev/null
                rm -rf "$2"
            "#;
            let mut child = Command::new("sh")
                .args(["-c", script, "zk-watchdog"])
                .arg(&java)
                .arg(&dir)
                .arg(&classpath)
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("cannot start sh");
            let stdin = child.stdin.take().unwrap();
            let zk = ZooKeeper {
                port,
                dir,
                _watchdog: Mutex::new((child, stdin)),
            };
            if zk.wait_ready() {
                return zk;
            }
            eprintln!("ZooKeeper did not start on port {port}:\n{}", zk.log());
        }
        panic!("ZooKeeper did not start (ports taken?)");
    }

    fn wait_ready(&self) -> bool {
        let deadline = Instant::now() + READY;
        while Instant::now() < deadline {
            if self.four_letters("ruok").as_deref() == Some("imok") {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Sends a four-letter command; its answer, or `None` if the server does not answer.
    pub fn four_letters(&self, cmd: &str) -> Option<String> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        s.write_all(cmd.as_bytes()).ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        Some(out)
    }

    /// The ephemeral nodes of every session, by session id (`dump`).
    pub fn ephemerals(&self) -> BTreeMap<i64, Vec<String>> {
        let dump = self.four_letters("dump").unwrap_or_default();
        let mut map = BTreeMap::new();
        let mut current = None;
        // "Sessions with Ephemerals (N):\n0x1000…:\n\t/path\n", then "Connections dump:".
        let section = dump
            .lines()
            .skip_while(|l| !l.starts_with("Sessions with Ephemerals"))
            .skip(1)
            .take_while(|l| !l.starts_with("Connections"));
        for line in section {
            if let Some(path) = line.strip_prefix('\t') {
                if let Some(s) = current {
                    map.entry(s)
                        .or_insert_with(Vec::new)
                        .push(path.trim().to_string());
                }
            } else if let Some(hex) = line
                .trim()
                .strip_suffix(':')
                .and_then(|l| l.strip_prefix("0x"))
            {
                current = u64::from_str_radix(hex, 16).ok().map(|v| v as i64);
            }
        }
        map
    }

    /// The server's log.
    pub fn log(&self) -> String {
        let read = |f: &str| std::fs::read_to_string(self.dir.join(f)).unwrap_or_default();
        let log = read("server.log") + &read("stdout.log");
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    /// `127.0.0.1:<port>`.
    pub fn address(&self) -> SocketAddr {
        ([127, 0, 0, 1], self.port).into()
    }

    /// `registry:` YAML for this server reached at `server` (itself, or a relay), with `extra`
    /// keys (`root: /t1`…) in its block; 1 s requests, and 2 s sessions unless `extra` says.
    pub fn registry_yaml_via(&self, server: SocketAddr, extra: &str) -> String {
        let session = if extra.contains("session_timeout:") {
            ""
        } else {
            "    session_timeout: 2s\n"
        };
        format!(
            "registry:\n  zookeeper:\n    servers: [\"{server}\"]\n{session}    request_timeout: 1s\n{extra}"
        )
    }

    /// [`ZooKeeper::registry_yaml_via`] straight to the server.
    pub fn registry_yaml(&self, extra: &str) -> String {
        self.registry_yaml_via(self.address(), extra)
    }

    /// A client of the test's own (a session apart from waypost's).
    pub async fn client(&self) -> Client {
        Client::connector()
            .with_session_timeout(SESSION)
            .connect(&self.address().to_string())
            .await
            .unwrap_or_else(|e| panic!("cannot connect to ZooKeeper: {e}\n{}", self.log()))
    }
}

/// A root of its own for one test (`/t-<random>`): tests sharing the server never meet.
pub fn unique_root() -> String {
    format!("/t-{:08x}", fastrand::u32(..))
}

/// What a test starts with: the shared server, a client of the test's own, a root of its own.
pub async fn fixture() -> (&'static ZooKeeper, Client, String) {
    let zk = ZooKeeper::shared();
    (zk, zk.client().await, unique_root())
}

/// The ephemeral owner of `path` (0 for a persistent node), if it exists.
pub async fn owner(client: &Client, path: &str) -> Option<i64> {
    get(client, path)
        .await
        .map(|(_, stat)| stat.ephemeral_owner)
}

/// Creates the persistent node `path` with `data`, and its parents (empty), as `zkCli.sh create`
/// and the Go registries do.
pub async fn create(client: &Client, path: &str, data: &[u8]) {
    create_as(client, path, data, CreateMode::Persistent).await
}

/// Creates `path` with `data` in `mode`, parents persistent and empty.
pub async fn create_as(client: &Client, path: &str, data: &[u8], mode: CreateMode) {
    let (parent, _) = path.rsplit_once('/').unwrap();
    if !parent.is_empty() {
        client
            .mkdir(
                parent,
                &CreateMode::Persistent.with_acls(Acls::anyone_all()),
            )
            .await
            .unwrap();
    }
    client
        .create(path, data, &mode.with_acls(Acls::anyone_all()))
        .await
        .unwrap_or_else(|e| panic!("create {path}: {e}"));
}

/// Sets the data of `path`.
pub async fn set(client: &Client, path: &str, data: &[u8]) {
    client.set_data(path, data, None).await.unwrap();
}

/// Deletes `path` (must exist).
pub async fn delete(client: &Client, path: &str) {
    client.delete(path, None).await.unwrap();
}

/// The children of `path`, sorted (none when it does not exist).
pub async fn children(client: &Client, path: &str) -> Vec<String> {
    let mut c = client.list_children(path).await.unwrap_or_default();
    c.sort();
    c
}

/// The data and stat of `path`, if it exists.
pub async fn get(client: &Client, path: &str) -> Option<(Vec<u8>, Stat)> {
    match client.get_data(path).await {
        Ok(found) => Some(found),
        Err(zookeeper_client::Error::NoNode) => None,
        Err(e) => panic!("get {path}: {e}"),
    }
}

/// The data Hertz and Kitex write for an instance of weight `weight` and no tags.
pub fn cloudwego_data(weight: i64) -> String {
    format!(r#"{{"Weight":{weight},"Tags":null}}"#)
}

/// A TCP relay to `target` that the test can pause: paused, it cuts every connection it relays
/// and closes new ones at once, so a client behind it reaches no server. Stops when dropped.
pub struct Relay {
    /// Where clients connect.
    pub addr: SocketAddr,
    paused: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    /// A relay to `target` on a free loopback port.
    pub async fn start(target: SocketAddr) -> Relay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (paused, rx) = watch::channel(false);
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut down, _)) = listener.accept().await else {
                    continue;
                };
                let mut paused = rx.clone();
                if *paused.borrow_and_update() {
                    continue; // dropped: closed at once
                }
                tokio::spawn(async move {
                    let Ok(mut up) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut down, &mut up) => {}
                        _ = paused.wait_for(|p| *p) => {}
                    }
                });
            }
        });
        Relay { addr, paused, task }
    }

    /// Cuts every relayed connection and refuses new ones until [`Relay::resume`].
    pub fn pause(&self) {
        self.paused.send_replace(true);
    }

    /// Relays again.
    pub fn resume(&self) {
        self.paused.send_replace(false);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.paused.send_replace(true);
        self.task.abort();
    }
}
