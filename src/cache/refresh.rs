//! The refresher: one task per target that resolves, applies the answer to the target's
//! [`TargetState`], publishes it, and sleeps — until the next jittered refresh, a watch event
//! from the registry, expiry, or shutdown, whichever comes first.

use std::sync::{Arc, Weak};
use std::time::SystemTime;

use tokio::time::Instant;

use super::policy::Policy;
use super::state::{Outcome, State, TargetState};
use super::{Publish, Target};
use crate::discover::{DiscoverError, Resolver};
use crate::metrics::DiscoveryMetrics;
use crate::shutdown::Shutdown;

/// Sleeps for `d`, or for ever when there is nothing to wait for.
async fn sleep_for(d: Option<std::time::Duration>) {
    match d {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

/// The cache side a refresher reports to (only to remove its expired target).
pub(super) trait Owner<P>: Send + Sync {
    /// Removes `target` from the on-demand map.
    fn remove(&self, target: &Arc<Target<P>>);
}

/// One target's refresh loop.
pub(super) struct Refresher<P> {
    pub cache: Weak<dyn Owner<P>>,
    pub target: Arc<Target<P>>,
    pub resolver: Arc<dyn Resolver>,
    pub policy: Policy,
    pub metrics: DiscoveryMetrics,
    pub shutdown: Shutdown,
}

impl<P: Publish> Refresher<P> {
    pub(super) async fn run(mut self) {
        let name = self.target.name().to_string();
        let key = self.resolver.target(&name);
        let mut state = TargetState::new(self.resolver.name(), &key);
        let series = self.metrics.series(&name, self.resolver.name());
        // The revision of the latest answer, accepted or held: watches wait for a change past
        // it. (Watching from the served revision would wake at once while an answer is held,
        // and confirm it in a few polls — defeating the guard.)
        let mut seen_revision = None;
        loop {
            let started = Instant::now();
            let answer = match tokio::time::timeout(
                self.policy.resolve_timeout,
                self.resolver.resolve(&key),
            )
            .await
            {
                Ok(r) => r,
                Err(_) => Err(DiscoverError::Unavailable(format!(
                    "resolve timed out after {:?}",
                    self.policy.resolve_timeout
                ))),
            };
            series.duration.observe(started.elapsed().as_secs_f64());
            let now = SystemTime::now();
            let ttl = answer.as_ref().ok().and_then(|r| r.ttl);
            if let Ok(r) = &answer {
                seen_revision = r.revision;
            }
            let outcome = match answer {
                Ok(res) => state.on_success(res, now, &self.policy),
                Err(e) => {
                    tracing::warn!(service = %name, resolver = self.resolver.name(), error = %e,
                        failures = state.status.consecutive_failures + 1, "resolve failed; keeping the last good instances");
                    state.on_failure(e.to_string(), now, &self.policy);
                    Outcome::Error
                }
            };
            if outcome == Outcome::Held {
                tracing::warn!(service = %name, held = ?state.status.held, current = state.current.instances.len(),
                    "answer would remove most instances; holding it until confirmed");
            }
            series.record(outcome, state.current.instances.len(), state.status.stale);
            self.target.publisher.publish(&state.current, &state.status);
            self.target.resolved.send_replace(true);

            // `None`: static answers never change; only expiry or shutdown wakes the loop.
            let delay = if outcome == Outcome::Error {
                Some(
                    self.policy
                        .next_retry(state.status.consecutive_failures, fastrand::f64()),
                )
            } else if self.resolver.refreshes() {
                Some(self.policy.next_refresh(ttl, fastrand::f64()))
            } else {
                None
            };
            let watch = if state.status.state == State::Ready {
                self.resolver.watch(&key, seen_revision)
            } else {
                None
            };
            let expires_in = (!self.target.is_declared()).then(|| {
                self.policy
                    .expire_interval
                    .saturating_sub(self.target.idle())
            });
            tokio::select! {
                biased;
                _ = self.shutdown.recv() => break,
                _ = sleep_for(delay) => {}
                _ = async { match watch { Some(w) => w.await, None => std::future::pending().await } } => {}
                _ = sleep_for(expires_in) => {}
            }
            if !self.target.is_declared() && self.target.idle() >= self.policy.expire_interval {
                tracing::info!(service = %name, idle = ?self.target.idle(), "dropping idle on-demand target");
                if let Some(cache) = self.cache.upgrade() {
                    cache.remove(&self.target);
                }
                self.target.publisher.retire();
                self.metrics.remove(&name);
                break;
            }
        }
    }
}
