//! The `file` resolver: reads the embedded file registry (see [`super`] for the
//! format). Entries whose last heartbeat (written in the entry, or the file's mtime, whichever is
//! later) is older than their TTL, hidden temporary files and files that do not parse are
//! skipped — one bad file never hides the good ones.
//!
//! The service directory's modification time is the resolution's revision: every register and
//! deregister renames or removes a file in it, which changes it; a renewal only touches its
//! entry's mtime, which does not. [`Resolver::watch`] polls that one `stat` cheaply (off the
//! async thread) so a change is applied within [`WATCH_POLL`], while the cache's regular
//! refresh still notices entries that expire without any write. When it moves, the watch reads
//! the directory itself and hands the cache the whole answer.

use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use super::{entries, now_ms, service_dir};
use crate::discover::{BoxFuture, BoxStream, DiscoverError, Instance, Resolution, Resolver, Tags};

/// How often [`FileResolver::watch`] looks at the service directory: one `stat`, run on the
/// blocking pool so a slow or network filesystem never stalls the proxy's thread (the hand-off
/// costs more than the `stat` on a local disk, and is the price of that); short enough that a
/// registration is visible to other processes almost at once.
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
    let files = match entries(dir) {
        Ok(files) => files,
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
    for file in files {
        let file = file?;
        match file.entry {
            Ok(entry) if entry.is_alive(now) => instances.push(Instance {
                address: entry.address,
                weight: entry.weight,
                tags: Tags::new(entry.tags),
            }),
            Ok(_) => {} // heartbeat older than its TTL: its writer is gone
            Err(e) => {
                tracing::warn!(file = %file.path.display(), error = %e, "skipping unreadable registry entry")
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

    fn watch(&self, target: &str, since: Option<u64>) -> Option<BoxStream<'static, Resolution>> {
        let dir = std::sync::Arc::<Path>::from(service_dir(&self.root, target));
        Some(Box::pin(futures_util::stream::unfold(
            (dir, since),
            |(dir, mut since)| async move {
                loop {
                    tokio::time::sleep(WATCH_POLL).await;
                    let d = dir.clone();
                    // A failed stat or read task is no news: the regular refresh is the fallback.
                    let Ok(now) = tokio::task::spawn_blocking(move || dir_revision(&d)).await
                    else {
                        continue;
                    };
                    if Some(now) == since {
                        continue;
                    }
                    let d = dir.clone();
                    if let Ok(Ok(res)) =
                        tokio::task::spawn_blocking(move || read_dir_blocking(&d)).await
                    {
                        since = res.revision;
                        return Some((res, (dir, since)));
                    }
                }
            },
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{age, registration};
    use super::super::{write_entry, FileEntry, FileRegistrar};
    use super::*;

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
        // Its writer died 10s ago: neither written nor renewed (touched) since.
        write_entry(&dir, &entry(2, now_ms())).unwrap();
        age(&dir, &dir.join("127.0.0.1_2.json"), Duration::from_secs(10));
        std::fs::write(dir.join("broken.json"), b"{nope").unwrap();
        std::fs::write(dir.join(".x.tmp"), b"{}").unwrap();
        let res = read_dir_blocking(&dir).unwrap();
        assert_eq!(res.instances.len(), 1);
        assert_eq!(res.instances[0].address.port(), 1);
        assert!(res.revision.unwrap() > 0);
        let missing = read_dir_blocking(&root.path().join("nobody")).unwrap();
        assert!(missing.instances.is_empty());
    }

    /// What `watch` pushes within `within`, if anything (on the paused clock: ten polls take no
    /// real time).
    async fn pushed(r: &FileResolver, since: Option<u64>, within: Duration) -> Option<Resolution> {
        use futures_util::StreamExt;
        let mut watch = r.watch("echo", since).unwrap();
        tokio::time::timeout(within, watch.next())
            .await
            .ok()
            .flatten()
    }

    #[tokio::test(start_paused = true)]
    async fn renewals_push_nothing_registrations_push_the_new_answer() {
        let root = tempfile::tempdir().unwrap();
        let registrar = FileRegistrar::new(root.path());
        let resolver = FileResolver::new(root.path());
        registrar
            .write_blocking(&registration(1, Duration::from_secs(30)))
            .unwrap();
        let before = resolver.resolve("echo").await.unwrap();
        assert_eq!(before.instances.len(), 1);

        // Real time, well past the file system's timestamp granularity: a rewrite would show.
        std::thread::sleep(std::time::Duration::from_millis(20));
        registrar
            .renew_blocking(&registration(1, Duration::from_secs(30)))
            .unwrap();
        let after = resolver.resolve("echo").await.unwrap();
        assert_eq!(after.revision, before.revision, "a renewal is not a change");
        assert_eq!(
            pushed(&resolver, before.revision, WATCH_POLL * 10).await,
            None,
            "a renewal woke the watch"
        );

        std::thread::sleep(std::time::Duration::from_millis(20));
        registrar
            .write_blocking(&registration(2, Duration::from_secs(30)))
            .unwrap();
        let joined = pushed(&resolver, before.revision, WATCH_POLL * 2)
            .await
            .expect("a registration is noticed by the next poll");
        assert_ne!(joined.revision, before.revision);
        assert_eq!(
            joined.instances.len(),
            2,
            "the watch delivers the new answer"
        );
        assert_eq!(joined, resolver.resolve("echo").await.unwrap());
    }
}
