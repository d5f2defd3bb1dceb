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

/// Why a registry operation failed.
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
    /// The registry could not be reached, or did not answer in time.
    #[error("registry unavailable: {0}")]
    Unavailable(String),
    /// The registry refused the request (authentication, permissions, an invalid request).
    #[error("registry refused the request: {0}")]
    Rejected(String),
    /// The registry no longer holds the entry (lease revoked or expired, session gone, key
    /// deleted behind our back): register again.
    #[error("registration lost: {0}")]
    Lost(String),
}

impl RegisterError {
    /// The bounded metric label of the error: `io`, `unavailable`, `rejected`, `lost`.
    pub fn kind(&self) -> &'static str {
        match self {
            RegisterError::Io { .. } => "io",
            RegisterError::Unavailable(_) => "unavailable",
            RegisterError::Rejected(_) => "rejected",
            RegisterError::Lost(_) => "lost",
        }
    }
}

/// The write side of a service registry.
pub trait Registrar: Send + Sync + 'static {
    /// The registry's kind (`"file"`, `"etcd"`…).
    fn name(&self) -> &'static str;
    /// Announces `reg`, replacing any earlier entry for the same instance.
    fn register<'a>(&'a self, reg: &'a Registration) -> BoxFuture<'a, Result<(), RegisterError>>;
    /// Renews `reg` before its TTL runs out.
    fn renew<'a>(&'a self, reg: &'a Registration) -> BoxFuture<'a, Result<(), RegisterError>>;
    /// Removes `reg`.
    fn deregister<'a>(&'a self, reg: &'a Registration) -> BoxFuture<'a, Result<(), RegisterError>>;
    /// How often `renew` runs for `reg` (default [`renew_interval`] of its TTL).
    fn renew_interval(&self, reg: &Registration) -> Duration {
        renew_interval(reg.ttl)
    }
    /// What `/debug/registrations` shows of `reg`'s state in the registry (key, lease…), as
    /// JSON; `Null` when there is nothing to say.
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
