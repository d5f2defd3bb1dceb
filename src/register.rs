//! Stage 1 — registration: announcing the local app in a service registry while it is healthy.
//!
//! The seam is [`Registrar`], the write side of a registry (Hertz's `registry.Registry{Register,
//! Deregister}`, plus the keepalive every TTL-based registry needs): a backend knows *how* to
//! put, renew and remove an entry. The lifecycle here owns *when*:
//!
//! - [`health`] — the probe of the app and Nerve's rise/fall gate;
//! - [`lifecycle`] — one loop per `register:` entry: register once healthy, renew, withdraw when
//!   unhealthy, retry failures forever with capped jittered backoff, register again at once when
//!   the registry lost the entry, deregister at shutdown; [`Registrations`] holds every entry and
//!   [`RegistrationsView`] is what the admin endpoints read.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::shutdown::Shutdown;

pub use crate::{BoxFuture, Tags};

pub mod health;
pub mod lifecycle;

pub use health::Check;
pub use lifecycle::{Entry, State, DEREGISTER_TIMEOUT};

/// What to register: one instance of one service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    /// Service name in the registry.
    pub service: String,
    /// Address other proxies should connect to.
    pub address: SocketAddr,
    /// Relative weight.
    pub weight: u32,
    /// Labels.
    pub tags: Tags,
    /// How long the entry stays valid without a renewal.
    pub ttl: Duration,
}

/// Why a registry operation failed; [`RegisterError::kind`] is the bounded metric label.
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    /// Local I/O failed (file registry).
    #[error("i/o error on {path}: {source}")]
    Io {
        /// The file or directory.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The registry could not be reached or did not answer in time.
    #[error("registry unavailable: {0}")]
    Unavailable(String),
    /// The registry refused the request (authentication, permission, invalid request).
    #[error("registry rejected the request: {0}")]
    Rejected(String),
    /// The registry no longer holds the entry: its lease or session is gone, or the entry was
    /// removed behind our back. The lifecycle registers again at once.
    #[error("registration lost: {0}")]
    Lost(String),
}

impl RegisterError {
    /// Every value [`RegisterError::kind`] returns, for metric series created up front.
    pub const KINDS: [&'static str; 4] = ["io", "unavailable", "rejected", "lost"];

    /// The error's kind, a bounded metric label: `io`, `unavailable`, `rejected` or `lost`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Io { .. } => "io",
            Self::Unavailable(_) => "unavailable",
            Self::Rejected(_) => "rejected",
            Self::Lost(_) => "lost",
        }
    }
}

/// The write side of a service registry. One value per (registry, layout) combination; the
/// lifecycle calls it for each registration entry that names it. The lifecycle owns *when*
/// (health gate, backoff, lost → register again, shutdown); the registrar owns *how*.
pub trait Registrar: Send + Sync + 'static {
    /// The registry's kind (`"file"`, `"etcd"`…), for logs, metrics and /debug/registrations.
    fn name(&self) -> &'static str;
    /// Puts `reg` in the registry (creating the lease/session it needs), replacing any earlier
    /// entry for the same instance. Returns once the entry is in place.
    fn register<'a>(&'a self, reg: &'a Registration) -> BoxFuture<'a, Result<(), RegisterError>>;
    /// Keeps `reg` alive; the lifecycle calls it every `self.renew_interval(reg)` (jittered).
    /// `Err(RegisterError::Lost(_))` when the registry no longer holds the entry (lease revoked
    /// or expired, session gone, key deleted behind our back): the lifecycle registers again at
    /// once. Other errors: retried with capped, jittered backoff, forever.
    fn renew<'a>(&'a self, reg: &'a Registration) -> BoxFuture<'a, Result<(), RegisterError>>;
    /// Removes `reg` and releases what it held (etcd: delete the key and revoke the lease).
    fn deregister<'a>(&'a self, reg: &'a Registration) -> BoxFuture<'a, Result<(), RegisterError>>;
    /// How often `renew` runs for `reg` (default [`renew_interval`]`(reg.ttl)`, a third of the TTL).
    fn renew_interval(&self, reg: &Registration) -> Duration {
        renew_interval(reg.ttl)
    }
    /// What `/debug/registrations` shows of `reg`'s state in the registry (key, lease id,
    /// session…), as JSON; `Null` when there is nothing to say.
    fn describe(&self, _reg: &Registration) -> serde_json::Value {
        serde_json::Value::Null
    }
}

impl Registration {
    /// Registers with `registrar`, without a health gate, until `shutdown` fires, then
    /// deregisters: the lifecycle of one `check: none` entry (retries, lost entries put back),
    /// for tools and tests that run no waypost config. Its metrics go to a registry of its own.
    pub async fn run(self, registrar: Arc<dyn Registrar>, shutdown: Shutdown) {
        let metrics = crate::metrics::RegisterMetrics::new(&prometheus::Registry::new());
        let entry = Arc::new(Entry::new(self, registrar, None, &metrics));
        // Always healthy: the sender may go at once, the verdict stays.
        let (_, healthy) = watch::channel(true);
        entry.run(healthy, shutdown).await;
    }
}

/// When to renew a registration with time-to-live `ttl`: at a third of it, so two renewals can
/// be lost before the entry expires, never more often than every 100 ms. Pure, for tests.
pub fn renew_interval(ttl: Duration) -> Duration {
    (ttl / 3).max(Duration::from_millis(100))
}

/// Every entry of one process, its tasks, and the trigger that deregisters them.
pub struct Registrations {
    entries: Arc<[Arc<Entry>]>,
    trigger: crate::shutdown::Trigger,
    stop: Shutdown,
    checkers: Vec<tokio::task::JoinHandle<()>>,
    /// Each returns whether its entry may have been in the registry at shutdown.
    loops: Vec<tokio::task::JoinHandle<bool>>,
}

/// What the admin endpoints read of the registrations. Cheap to clone.
#[derive(Clone, Default)]
pub struct RegistrationsView {
    entries: Arc<[Arc<Entry>]>,
}

impl Registrations {
    /// The entries, not running yet.
    pub fn new(entries: Vec<Entry>) -> Self {
        let (trigger, stop) = crate::shutdown::channel();
        Self {
            entries: entries.into_iter().map(Arc::new).collect(),
            trigger,
            stop,
            checkers: Vec::new(),
            loops: Vec::new(),
        }
    }

    /// A read-only view for `/ready` and `/debug/registrations`.
    pub fn view(&self) -> RegistrationsView {
        RegistrationsView {
            entries: self.entries.clone(),
        }
    }

    /// Spawns each entry's health checker (when it has a check) and registration loop.
    pub fn start(&mut self) {
        for entry in self.entries.iter() {
            let (tx, rx) = watch::channel(entry.check().is_none());
            if let Some(check) = entry.check().cloned() {
                let checker = health::run(entry.clone(), check, tx, self.stop.clone());
                self.checkers.push(tokio::spawn(checker));
            }
            let registration = entry.clone().run(rx, self.stop.clone());
            self.loops.push(tokio::spawn(registration));
        }
    }

    /// Stops the checks and deregisters every entry at once, each within
    /// [`DEREGISTER_TIMEOUT`]; returns, when all are done, how many entries may have been in
    /// a registry and were removed (or left to their TTL when the registry did not answer).
    pub async fn deregister_all(self) -> usize {
        self.trigger.fire();
        for task in self.checkers {
            let _ = task.await; // a task only ends by returning; a panic was already logged
        }
        let mut removed = 0;
        for task in self.loops {
            removed += usize::from(task.await.unwrap_or(true));
        }
        removed
    }
}

impl RegistrationsView {
    /// Every entry, in config order.
    pub fn entries(&self) -> &[Arc<Entry>] {
        &self.entries
    }

    /// Why the registrations keep the process unready, or `None`: every entry must have been
    /// registered at least once since start. Later registry failures do not count, so a registry
    /// outage does not make a whole fleet unready at once.
    pub fn not_ready(&self) -> Option<String> {
        let waiting: Vec<String> = self
            .entries
            .iter()
            .filter_map(|e| {
                let s = e.status();
                (!s.ever_registered).then(|| {
                    format!(
                        "{} at {} ({})",
                        e.registration().service,
                        e.registration().address,
                        s.state.as_str()
                    )
                })
            })
            .collect();
        (!waiting.is_empty()).then(|| {
            format!(
                "waiting for the first registration of: {}",
                waiting.join(", ")
            )
        })
    }

    /// `/debug/registrations`.
    pub fn to_json(&self) -> serde_json::Value {
        let entries: Vec<_> = self.entries.iter().map(|e| e.to_json()).collect();
        serde_json::json!({ "registrations": entries })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renews_at_a_third_of_the_ttl() {
        assert_eq!(
            renew_interval(Duration::from_secs(9)),
            Duration::from_secs(3)
        );
        assert_eq!(
            renew_interval(Duration::from_millis(30)),
            Duration::from_millis(100)
        );
    }
}
