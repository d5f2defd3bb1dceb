//! The embedded file registry: the on-disk format both sides share, and the write side
//! ([`FileRegistrar`]); the read side is [`resolver`] ([`FileResolver`]).
//!
//! Layout: `<dir>/<service>/<ip>_<port>.json`, one small JSON [`FileEntry`] per instance. Every
//! write goes to a hidden temporary file in the same directory and is `rename`d into place, which
//! is atomic on POSIX file systems: a reader in another process sees the old entry or the new one,
//! never half of one. Entries carry their TTL and the heartbeat of their last write; a renewal
//! does not rewrite the entry but sets its file's modification time, and readers ([`entries`])
//! take the later of the two as the last heartbeat. So an entry whose writer died is ignored by
//! readers once the TTL passes (and swept by the next registrar of the service), while renewals
//! leave the service directory itself unchanged: its mtime, which resolvers watch, moves only
//! when an entry is written or removed.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::register::{BoxFuture, RegisterError, Registrar, Registration};

pub mod resolver;
pub use resolver::FileResolver;

/// One instance as stored in the file registry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Service name.
    pub service: String,
    /// `IP:port`.
    pub address: SocketAddr,
    /// Relative weight.
    pub weight: u32,
    /// Labels.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// Time-to-live of the heartbeat, in milliseconds.
    pub ttl_ms: u64,
    /// Last heartbeat, milliseconds since the Unix epoch. On disk: when the entry was written;
    /// as read by [`entries`]: the later of that and the file's modification time, which every
    /// renewal sets.
    pub heartbeat_ms: u64,
    /// Process id of the writer (informational).
    #[serde(default)]
    pub pid: u32,
}

impl FileEntry {
    /// Whether the entry's heartbeat is still within its TTL at `now_ms`.
    pub fn is_alive(&self, now_ms: u64) -> bool {
        now_ms.saturating_sub(self.heartbeat_ms) <= self.ttl_ms
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    unix_ms(SystemTime::now())
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// One entry file of a service directory, as [`entries`] yields it.
#[derive(Debug)]
pub struct EntryFile {
    /// Where it is.
    pub path: PathBuf,
    /// The entry, its heartbeat raised to the file's modification time; or why it does not parse.
    pub entry: Result<FileEntry, serde_json::Error>,
}

/// The entry files of the service directory `dir` (blocking): every visible `*.json` file, read
/// and parsed; hidden temporary files are skipped, and so are files removed between listing and
/// reading (deregistered). `NotFound` when the directory does not exist (nobody registered yet).
pub fn entries(dir: &Path) -> std::io::Result<impl Iterator<Item = std::io::Result<EntryFile>>> {
    let listing = std::fs::read_dir(dir)?;
    Ok(listing.filter_map(|item| {
        let path = match item {
            Ok(item) => item.path(),
            Err(e) => return Some(Err(e)),
        };
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with('.') || !name.ends_with(".json") {
            return None;
        }
        match read_entry(&path) {
            Ok(entry) => Some(Ok(EntryFile { path, entry })),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => Some(Err(e)),
        }
    }))
}

/// Reads and parses one entry file; its heartbeat is the later of the one written in it and the
/// file's modification time (both from one open file, so from the same version of the entry).
fn read_entry(path: &Path) -> std::io::Result<Result<FileEntry, serde_json::Error>> {
    let mut file = File::open(path)?;
    let touched = file.metadata()?.modified().map_or(0, unix_ms);
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    Ok(
        serde_json::from_slice::<FileEntry>(&bytes).map(|mut entry| {
            entry.heartbeat_ms = entry.heartbeat_ms.max(touched);
            entry
        }),
    )
}

/// The directory holding `service`'s entries.
pub fn service_dir(root: &Path, service: &str) -> PathBuf {
    root.join(service)
}

/// The file name of the entry for `address`.
fn entry_file(address: &SocketAddr) -> String {
    let ip = address.ip().to_string().replace(':', "-");
    format!("{ip}_{}.json", address.port())
}

/// Distinguishes temporary files written concurrently by threads of one process.
static TMP_SEQ: AtomicU64 = AtomicU64::new(0);

/// Writes `entry` atomically into `dir` (temp file + rename).
pub fn write_entry(dir: &Path, entry: &FileEntry) -> Result<(), RegisterError> {
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source| RegisterError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let target = dir.join(entry_file(&entry.address));
    let seq = TMP_SEQ.fetch_add(1, Ordering::Relaxed);
    let tmp = dir.join(format!(
        ".{}.{}.{seq}.tmp",
        entry_file(&entry.address),
        std::process::id()
    ));
    let body = serde_json::to_vec(entry).map_err(|e| RegisterError::Io {
        path: tmp.display().to_string(),
        source: std::io::Error::other(e),
    })?;
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&body)?;
        std::fs::rename(&tmp, &target)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp); // best effort: the temp file is hidden from readers anyway
    }
    result.map_err(io(&target))
}

/// The file registry's registrar.
#[derive(Debug, Clone)]
pub struct FileRegistrar {
    root: PathBuf,
}

impl FileRegistrar {
    /// A registrar writing under `root` (`registry.file.dir`).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    fn entry(reg: &Registration) -> FileEntry {
        FileEntry {
            service: reg.service.clone(),
            address: reg.address,
            weight: reg.weight,
            tags: (*reg.tags).clone(),
            ttl_ms: reg.ttl.as_millis() as u64,
            heartbeat_ms: now_ms(),
            pid: std::process::id(),
        }
    }

    fn path(&self, reg: &Registration) -> PathBuf {
        service_dir(&self.root, &reg.service).join(entry_file(&reg.address))
    }

    /// Writes the entry for `reg` now (blocking; used by register, and by renew when the entry
    /// is gone).
    pub fn write_blocking(&self, reg: &Registration) -> Result<(), RegisterError> {
        write_entry(&service_dir(&self.root, &reg.service), &Self::entry(reg))
    }

    /// Renews the entry for `reg` (blocking): sets its file's modification time to now, which
    /// readers take as its heartbeat. Not rewriting it leaves the service directory unchanged,
    /// so a renewal wakes no watching resolver. An entry that is gone (swept after a long
    /// pause, removed by hand) is [`RegisterError::Lost`]: the lifecycle registers it again.
    pub fn renew_blocking(&self, reg: &Registration) -> Result<(), RegisterError> {
        let path = self.path(reg);
        match touch(&path, SystemTime::now()) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(RegisterError::Lost(format!("{} is gone", path.display())))
            }
            Err(source) => Err(RegisterError::Io {
                path: path.display().to_string(),
                source,
            }),
        }
    }

    /// Removes the entry for `reg` (blocking). A missing entry is not an error.
    pub fn remove_blocking(&self, reg: &Registration) -> Result<(), RegisterError> {
        let path = self.path(reg);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(RegisterError::Io {
                path: path.display().to_string(),
                source,
            }),
        }
    }

    /// Removes entries of `service` whose heartbeat is older than their TTL plus `grace`: their
    /// writers are gone. Best effort; readers ignore such entries anyway.
    pub fn sweep_blocking(&self, service: &str, grace: Duration) {
        let Ok(files) = entries(&service_dir(&self.root, service)) else {
            return;
        };
        // Alive `grace` ago ⇔ heartbeat within TTL + grace of now.
        let horizon = now_ms().saturating_sub(grace.as_millis() as u64);
        for file in files.flatten() {
            if file.entry.is_ok_and(|e| !e.is_alive(horizon)) {
                let _ = std::fs::remove_file(&file.path); // another sweeper may have won the race
            }
        }
    }
}

impl Registrar for FileRegistrar {
    fn name(&self) -> &'static str {
        "file"
    }

    fn register<'a>(&'a self, reg: &'a Registration) -> BoxFuture<'a, Result<(), RegisterError>> {
        let this = self.clone();
        let reg = reg.clone();
        Box::pin(async move {
            blocking(move || {
                this.sweep_blocking(&reg.service, reg.ttl);
                this.write_blocking(&reg)
            })
            .await
        })
    }

    fn renew<'a>(&'a self, reg: &'a Registration) -> BoxFuture<'a, Result<(), RegisterError>> {
        let this = self.clone();
        let reg = reg.clone();
        Box::pin(async move { blocking(move || this.renew_blocking(&reg)).await })
    }

    fn deregister<'a>(&'a self, reg: &'a Registration) -> BoxFuture<'a, Result<(), RegisterError>> {
        let this = self.clone();
        let reg = reg.clone();
        Box::pin(async move { blocking(move || this.remove_blocking(&reg)).await })
    }

    fn describe(&self, reg: &Registration) -> serde_json::Value {
        serde_json::json!({ "path": self.path(reg).display().to_string() })
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, RegisterError> + Send + 'static,
) -> Result<T, RegisterError> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
        Err(RegisterError::Unavailable(format!(
            "registry task failed: {e}"
        )))
    })
}

/// Sets the modification time of the file at `path` (its heartbeat, for readers) to `at`.
fn touch(path: &Path, at: SystemTime) -> std::io::Result<()> {
    File::options().write(true).open(path)?.set_modified(at)
}

/// Test helpers shared with the file resolver's tests.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    /// A registration of service `echo` at `127.0.0.1:port`.
    pub fn registration(port: u16, ttl: Duration) -> Registration {
        Registration {
            service: "echo".into(),
            address: format!("127.0.0.1:{port}").parse().unwrap(),
            weight: 1,
            tags: Default::default(),
            ttl,
        }
    }

    /// Makes the entry at `path` (in `dir`) look written and last renewed `ago`.
    pub fn age(dir: &Path, path: &Path, ago: Duration) {
        let mut entry: FileEntry = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
        entry.heartbeat_ms -= ago.as_millis() as u64;
        write_entry(dir, &entry).unwrap();
        touch(path, SystemTime::now() - ago).unwrap();
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{age, registration};
    use super::*;

    #[test]
    fn writes_renews_and_removes_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let r = FileRegistrar::new(dir.path());
        let reg = Registration {
            service: "echo".into(),
            address: "127.0.0.1:7001".parse().unwrap(),
            weight: 2,
            tags: Default::default(),
            ttl: Duration::from_secs(5),
        };
        r.write_blocking(&reg).unwrap();
        let path = dir.path().join("echo").join("127.0.0.1_7001.json");
        let entry: FileEntry = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(entry.weight, 2);
        assert!(entry.is_alive(now_ms()));
        assert!(!entry.is_alive(entry.heartbeat_ms + 5_001));
        // No temporary files are left behind.
        assert_eq!(
            std::fs::read_dir(dir.path().join("echo")).unwrap().count(),
            1
        );
        r.remove_blocking(&reg).unwrap();
        assert!(!path.exists());
        r.remove_blocking(&reg).unwrap();
    }

    /// Ports of the entries of `dir` alive now, as a reader sees them.
    fn alive(dir: &Path) -> Vec<u16> {
        let now = now_ms();
        let mut ports: Vec<u16> = entries(dir)
            .unwrap()
            .filter_map(|f| f.unwrap().entry.ok())
            .filter(|e| e.is_alive(now))
            .map(|e| e.address.port())
            .collect();
        ports.sort();
        ports
    }

    #[test]
    fn a_renewal_touches_the_entry_and_leaves_the_directory_alone() {
        let root = tempfile::tempdir().unwrap();
        let r = FileRegistrar::new(root.path());
        let reg = registration(7001, Duration::from_secs(1));
        r.write_blocking(&reg).unwrap();
        let dir = root.path().join("echo");
        let path = dir.join("127.0.0.1_7001.json");
        age(&dir, &path, Duration::from_secs(10));
        assert_eq!(alive(&dir), [0u16; 0], "10s without a heartbeat, TTL 1s");

        let dir_mtime = std::fs::metadata(&dir).unwrap().modified().unwrap();
        let content = std::fs::read(&path).unwrap();
        // Well past the file system's timestamp granularity: a rewrite would show.
        std::thread::sleep(Duration::from_millis(20));
        r.renew_blocking(&reg).unwrap();
        assert_eq!(
            std::fs::metadata(&dir).unwrap().modified().unwrap(),
            dir_mtime,
            "a renewal does not change the directory"
        );
        assert_eq!(std::fs::read(&path).unwrap(), content, "nor the entry");
        // The heartbeat written in the entry is 10s old, its TTL 1s: the mtime keeps it alive.
        assert_eq!(alive(&dir), [7001]);
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
    }

    #[test]
    fn renewing_a_vanished_entry_reports_it_lost() {
        let root = tempfile::tempdir().unwrap();
        let r = FileRegistrar::new(root.path());
        let reg = registration(7001, Duration::from_secs(5));
        r.write_blocking(&reg).unwrap();
        std::fs::remove_file(root.path().join("echo").join("127.0.0.1_7001.json")).unwrap();
        let err = r.renew_blocking(&reg).unwrap_err();
        assert_eq!(err.kind(), "lost", "{err}");
        // Renewing does not bring it back behind the lifecycle's back: registering does.
        assert_eq!(alive(&root.path().join("echo")), [0u16; 0]);
    }

    #[test]
    fn sweeping_removes_only_entries_dead_for_longer_than_the_grace() {
        let root = tempfile::tempdir().unwrap();
        let r = FileRegistrar::new(root.path());
        let dir = root.path().join("echo");
        for (port, ago) in [(7001, 0), (7002, 3), (7003, 10)] {
            r.write_blocking(&registration(port, Duration::from_secs(1)))
                .unwrap();
            let path = dir.join(format!("127.0.0.1_{port}.json"));
            age(&dir, &path, Duration::from_secs(ago));
        }
        std::fs::write(dir.join("broken.json"), b"{nope").unwrap();
        // TTL 1s + grace 5s: 7002 (3s) is dead but kept, 7003 (10s) is swept; an unreadable file
        // is left alone.
        r.sweep_blocking("echo", Duration::from_secs(5));
        let mut left: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(
            left,
            ["127.0.0.1_7001.json", "127.0.0.1_7002.json", "broken.json"]
        );
        assert_eq!(alive(&dir), [7001]);
    }
}
