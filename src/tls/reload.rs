//! Certificate reload: every few seconds the files of each TLS configuration are looked at (off
//! the async threads) — path, inode, size and mtime of what the path resolves to, so the
//! symlink swap Kubernetes does on a secret mount (`..data` pointing at a new directory) is a
//! change too. A change rebuilds that configuration from its files and swaps it in whole: new
//! handshakes use it, connections already made go on with what they started with. A bad new file
//! (half written, a key that does not match) keeps the old material, logged and counted; the
//! next change is tried again. Never a crash.
//!
//! The certificates' `notAfter` dates are kept in a gauge, at start and after each reload.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

use super::{not_after, TlsConfigError};
use crate::metrics::TlsMetrics;
use crate::shutdown::Shutdown;

/// A TLS configuration built from files, that can be built again.
pub trait Reload: Send + Sync {
    /// Its files, each with its config key.
    fn files(&self) -> Vec<(String, PathBuf)>;
    /// Builds it again from the files and swaps it in; on error the old one stays.
    fn reload(&self) -> Result<(), TlsConfigError>;
}

/// What a file looked like: device, inode, size and mtime of what its path resolves to.
type Fingerprint = Option<(u64, u64, u64, i64, i64)>;

fn fingerprint(path: &Path) -> Fingerprint {
    let m = std::fs::metadata(path).ok()?;
    Some((m.dev(), m.ino(), m.len(), m.mtime(), m.mtime_nsec()))
}

/// Watches TLS configurations' files and reloads them on change.
pub struct Reloader {
    items: Vec<Arc<dyn Reload>>,
    every: Duration,
    metrics: TlsMetrics,
}

impl Reloader {
    /// A reloader that looks at the files every `every`.
    pub fn new(every: Duration, metrics: TlsMetrics) -> Self {
        Self {
            items: Vec::new(),
            every,
            metrics,
        }
    }

    /// Watches `item` too.
    pub fn watch(&mut self, item: Arc<dyn Reload>) {
        self.items.push(item);
    }

    /// Whether there is nothing to watch.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Sets the expiry gauge of every certificate file now (at start-up).
    pub fn record_expiry(&self) {
        for item in &self.items {
            expiry(item.as_ref(), &self.metrics);
        }
    }

    /// Looks at the files every `every` until `shutdown` fires.
    pub async fn run(self, mut shutdown: Shutdown) {
        let items = Arc::new(self.items);
        let mut last = look(&items).await;
        loop {
            tokio::select! {
                biased;
                _ = shutdown.recv() => break,
                _ = tokio::time::sleep(self.every) => {}
            }
            let now = look(&items).await;
            for (i, item) in items.iter().enumerate() {
                if now[i] == last[i] {
                    continue;
                }
                let (item, metrics) = (item.clone(), self.metrics.clone());
                let done = tokio::task::spawn_blocking(move || {
                    let result = item.reload();
                    if result.is_ok() {
                        expiry(item.as_ref(), &metrics);
                    }
                    result
                })
                .await;
                match done {
                    Ok(Ok(())) => {
                        tracing::info!("TLS material reloaded");
                        self.metrics.reloaded("ok");
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "TLS files changed but cannot be used; keeping the previous material");
                        self.metrics.reloaded("error");
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "TLS reload task failed; keeping the previous material");
                        self.metrics.reloaded("error");
                    }
                }
            }
            last = now;
        }
    }
}

/// The fingerprints of every item's files, read on a blocking thread.
async fn look(items: &Arc<Vec<Arc<dyn Reload>>>) -> Vec<Vec<Fingerprint>> {
    let items = items.clone();
    tokio::task::spawn_blocking(move || {
        items
            .iter()
            .map(|i| i.files().iter().map(|(_, p)| fingerprint(p)).collect())
            .collect()
    })
    .await
    .unwrap_or_default()
}

/// Sets the expiry gauge of `item`'s certificate files (the earliest `notAfter` in each).
fn expiry(item: &dyn Reload, metrics: &TlsMetrics) {
    for (key, path) in item.files() {
        if key.ends_with(".key") {
            continue;
        }
        let Ok(bytes) = std::fs::read(&path) else {
            continue;
        };
        let earliest = CertificateDer::pem_slice_iter(&bytes)
            .filter_map(Result::ok)
            .filter_map(|c| not_after(&c))
            .min();
        if let Some(t) = earliest {
            metrics.expires(&key, t);
        }
    }
}
