//! Stage 1 — registration: announcing an instance in a service registry while it is alive.
//!
//! A [`Registrar`] is the write side of a registry (Hertz's `registry.Registry{Register,
//! Deregister}`, plus the keepalive every TTL-based registry needs). [`Registration::run`] is the
//! one loop that drives any registrar: register, renew on a jittered schedule derived from the TTL,
//! and deregister when shutdown fires. A failure never ends the loop: it is logged, and the next
//! renewal registers again.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::shutdown::Shutdown;
pub use crate::{BoxFuture, Tags};

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

/// When to renew a registration with time-to-live `ttl`: at a third of it, so two renewals can
/// be lost before the entry expires, never more often than every 100 ms. Pure, for tests.
pub fn renew_interval(ttl: Duration) -> Duration {
    (ttl / 3).max(Duration::from_millis(100))
}

impl Registration {
    /// Registers, renews every [`renew_interval`] (±10 % jitter so a fleet does not renew in
    /// lockstep) until `shutdown` fires, then deregisters. Failures are logged and retried at the
    /// next tick; a failed renewal re-registers.
    pub async fn run(self, registrar: Arc<dyn Registrar>, mut shutdown: Shutdown) {
        let mut registered = false;
        let every = registrar.renew_interval(&self);
        loop {
            let result = if registered {
                registrar.renew(&self).await
            } else {
                registrar.register(&self).await
            };
            match result {
                Ok(()) => {
                    if !registered {
                        tracing::info!(service = %self.service, address = %self.address, registry = registrar.name(), "registered");
                    }
                    registered = true;
                }
                Err(RegisterError::Lost(why)) if registered => {
                    tracing::warn!(service = %self.service, address = %self.address, reason = %why, "registration lost; registering again");
                    registered = false;
                    continue;
                }
                Err(e) => {
                    tracing::warn!(service = %self.service, address = %self.address, error = %e, "registration failed; retrying");
                    registered = false;
                }
            }
            let delay = every.mul_f64(0.9 + 0.2 * fastrand::f64());
            tokio::select! {
                biased;
                _ = shutdown.recv() => break,
                _ = tokio::time::sleep(delay) => {}
            }
        }
        match registrar.deregister(&self).await {
            Ok(()) => {
                tracing::info!(service = %self.service, address = %self.address, "deregistered")
            }
            Err(e) => {
                tracing::warn!(service = %self.service, address = %self.address, error = %e, "deregistration failed")
            }
        }
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
