//! The `file` resolver: reads the embedded file registry (see [`crate::register::file`] for the
//! format). Entries whose heartbeat is older than their TTL, hidden temporary files and files that
//! do not parse are skipped — one bad file never hides the good ones.
//!
//! The service directory's modification time is the resolution's revision: every register,
//! renew and deregister renames or removes a file in it, which changes it. [`Resolver::watch`]
//! polls that one `stat` cheaply so a change is applied within [`WATCH_POLL`], while the
//! cache's regular refresh still notices entries that expire without any write.

use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use super::{BoxFuture, DiscoverError, Instance, Resolution, Resolver, Tags};
use crate::register::file::{now_ms, service_dir, FileEntry};

/// How often [`FileResolver::watch`] looks at the service directory: one `stat`, so cheap;
/// short enough that a registration is visible to other processes almost at once.
pub const WATCH_POLL: Duration = Duration::from_millis(200);

/// Resolves services from a registry directory.
#[derive(Debug, Clone)]
pub struct FileResolver {
    root: PathBuf,
    /// Registry name to read instead of the service's own name.
    name: Option<String>,
}

impl FileResolver {
    /// A resolver reading under `root` (`registry.file.dir`).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            name: None,
        }
    }

    /// Reads the registry entries of `name` instead of the service's own name.
    pub fn named(mut self, name: Option<&str>) -> Self {
        self.name = name.map(str::to_string);
        self
    }
}

/// The directory's modification time in nanoseconds, or 0 when it does not exist.
fn dir_revision(dir: &Path) -> u64 {
    std::fs::metadata(dir)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Reads every live entry of the directory `dir` (blocking).
pub fn read_dir_blocking(dir: &Path) -> Result<Resolution, DiscoverError> {
    let revision = dir_revision(dir);
    let read = match std::fs::read_dir(dir) {
        Ok(r) => r,
        // No directory yet: nobody registered. A definite, empty answer.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut res = Resolution::new(Vec::new());
            res.revision = Some(0);
            return Ok(res);
        }
        Err(e) => return Err(DiscoverError::Io(e)),
    };
    let now = now_ms();
    let mut instances = Vec::new();
    for item in read {
        let path = item?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with('.') || !name.ends_with(".json") {
            continue;
        }
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            // Deregistered between listing and reading.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(DiscoverError::Io(e)),
        };
        match serde_json::from_slice::<FileEntry>(&bytes) {
            Ok(entry) if entry.is_alive(now) => instances.push(Instance {
                address: entry.address,
                weight: entry.weight,
                tags: Tags::new(entry.tags),
            }),
            Ok(_) => {} // heartbeat older than its TTL: its writer is gone
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "skipping unreadable registry entry")
            }
        }
    }
    let mut res = Resolution::new(instances);
    res.revision = Some(revision);
    Ok(res)
}

impl Resolver for FileResolver {
    fn name(&self) -> &'static str {
        "file"
    }

    fn target(&self, service: &str) -> String {
        self.name.clone().unwrap_or_else(|| service.to_string())
    }

    fn resolve<'a>(&'a self, target: &'a str) -> BoxFuture<'a, Result<Resolution, DiscoverError>> {
        let dir = service_dir(&self.root, target);
        Box::pin(async move {
            tokio::task::spawn_blocking(move || read_dir_blocking(&dir))
                .await
                .unwrap_or_else(|e| {
                    Err(DiscoverError::Unavailable(format!(
                        "registry read task failed: {e}"
                    )))
                })
        })
    }

    fn watch<'a>(&'a self, target: &'a str, since: Option<u64>) -> Option<BoxFuture<'a, ()>> {
        let dir = service_dir(&self.root, target);
        Some(Box::pin(async move {
            loop {
                tokio::time::sleep(WATCH_POLL).await;
                if Some(dir_revision(&dir)) != since {
                    return;
                }
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::register::file::write_entry;

    fn entry(port: u16, heartbeat_ms: u64) -> FileEntry {
        FileEntry {
            service: "echo".into(),
            address: format!("127.0.0.1:{port}").parse().unwrap(),
            weight: 1,
            tags: Default::default(),
            ttl_ms: 1_000,
            heartbeat_ms,
            pid: 1,
        }
    }

    #[test]
    fn skips_expired_hidden_and_broken_entries() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("echo");
        write_entry(&dir, &entry(1, now_ms())).unwrap();
        write_entry(&dir, &entry(2, now_ms() - 10_000)).unwrap();
        std::fs::write(dir.join("broken.json"), b"{nope").unwrap();
        std::fs::write(dir.join(".x.tmp"), b"{}").unwrap();
        let res = read_dir_blocking(&dir).unwrap();
        assert_eq!(res.instances.len(), 1);
        assert_eq!(res.instances[0].address.port(), 1);
        assert!(res.revision.unwrap() > 0);
        let missing = read_dir_blocking(&root.path().join("nobody")).unwrap();
        assert!(missing.instances.is_empty());
    }
}
