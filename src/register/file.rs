//! The embedded file registry, write side — and the on-disk format both sides share.
//!
//! Layout: `<dir>/<service>/<ip>_<port>.json`, one small JSON [`FileEntry`] per instance. Every
//! write goes to a hidden temporary file in the same directory and is `rename`d into place, which
//! is atomic on POSIX file systems: a reader in another process sees the old entry or the new one,
//! never half of one. Entries carry their own heartbeat time and TTL, so an entry whose writer
//! died is ignored by readers once the TTL passes (and swept by the next registrar of the service).

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::{BoxFuture, RegisterError, Registrar, Registration};

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
    /// Last heartbeat, milliseconds since the Unix epoch.
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
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
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

    /// Writes the entry for `reg` now (blocking; used by both register and renew).
    pub fn write_blocking(&self, reg: &Registration) -> Result<(), RegisterError> {
        write_entry(&service_dir(&self.root, &reg.service), &Self::entry(reg))
    }

    /// Removes the entry for `reg` (blocking). A missing entry is not an error.
    pub fn remove_blocking(&self, reg: &Registration) -> Result<(), RegisterError> {
        let path = service_dir(&self.root, &reg.service).join(entry_file(&reg.address));
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
        let dir = service_dir(&self.root, service);
        let Ok(read) = std::fs::read_dir(&dir) else {
            return;
        };
        let now = now_ms();
        for item in read.flatten() {
            let path = item.path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let Ok(bytes) = std::fs::read(&path) else {
                continue;
            };
            let Ok(entry) = serde_json::from_slice::<FileEntry>(&bytes) else {
                continue;
            };
            if now.saturating_sub(entry.heartbeat_ms) > entry.ttl_ms + grace.as_millis() as u64 {
                let _ = std::fs::remove_file(&path); // another sweeper may have won the race
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
        Box::pin(async move { blocking(move || this.write_blocking(&reg)).await })
    }

    fn deregister<'a>(&'a self, reg: &'a Registration) -> BoxFuture<'a, Result<(), RegisterError>> {
        let this = self.clone();
        let reg = reg.clone();
        Box::pin(async move { blocking(move || this.remove_blocking(&reg)).await })
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

#[cfg(test)]
mod tests {
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
}
