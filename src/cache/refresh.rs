//! The refresher: one task per target that resolves, applies the answer to the target's
//! [`TargetState`], publishes it, and sleeps — until the next jittered refresh, an answer pushed
//! by the resolver's watch (applied as it comes, without resolving again), expiry, or shutdown,
//! whichever comes first.

use std::sync::{Arc, Weak};
use std::time::SystemTime;

use futures_util::StreamExt;
use tokio::time::Instant;

use super::policy::Policy;
use super::state::{Outcome, State, TargetState};
use super::{Publish, Target};
use crate::discover::{BoxStream, DiscoverError, Resolution, Resolver};
use crate::metrics::DiscoveryMetrics;
use crate::shutdown::Shutdown;

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
        // The revision of the latest answer, accepted or held: watches deliver changes past
        // it. (Watching from the served revision would repeat a held answer at once and
        // confirm it in a few rounds — defeating the guard.)
        let mut seen_revision = None;
        // The resolver's stream of pushed answers, opened once the target is ready.
        let mut watch: Option<BoxStream<'static, Resolution>> = None;
        // False after a watch ended: polling only, until the next resolve.
        let mut may_watch = true;
        // When to resolve next; set by each resolve.
        let mut poll_at: Option<Instant> = None;
        let mut next = Next::Resolve;
        'run: loop {
            let resolved = matches!(next, Next::Resolve);
            let answer = match next {
                Next::Pushed(res) => Ok(res),
                Next::Resolve => {
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
                    answer
                }
            };
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

            // Pushed answers leave the polling schedule alone: polls go on at their cadence.
            if resolved {
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
                poll_at = delay.map(|d| Instant::now() + d);
                may_watch = true;
            }
            next = loop {
                if watch.is_none() && may_watch && state.status.state == State::Ready {
                    watch = self.resolver.watch(&key, seen_revision);
                }
                let expires_at = (!self.target.is_declared()).then(|| {
                    Instant::now()
                        + self
                            .policy
                            .expire_interval
                            .saturating_sub(self.target.idle())
                });
                tokio::select! {
                    biased;
                    _ = self.shutdown.recv() => break 'run,
                    _ = sleep_until(poll_at) => break Next::Resolve,
                    pushed = next_pushed(&mut watch) => match pushed {
                        // Behind an answer already applied (a poll overtook the stream).
                        Some(res) if matches!((res.revision, seen_revision), (Some(r), Some(s)) if r < s) => {}
                        Some(res) => break Next::Pushed(res),
                        None => {
                            tracing::debug!(service = %name, resolver = self.resolver.name(), "watch ended; polling until the next refresh");
                            watch = None;
                            may_watch = false;
                        }
                    },
                    _ = sleep_until(expires_at) => {
                        if self.target.idle() >= self.policy.expire_interval {
                            tracing::info!(service = %name, idle = ?self.target.idle(), "dropping idle on-demand target");
                            if let Some(cache) = self.cache.upgrade() {
                                cache.remove(&self.target);
                            }
                            self.target.publisher.retire();
                            self.metrics.remove(&name);
                            break 'run;
                        }
                    }
                }
            };
        }
    }
}

/// What the refresher does next.
enum Next {
    /// Ask the resolver.
    Resolve,
    /// Apply an answer the resolver's watch pushed.
    Pushed(Resolution),
}

/// Sleeps until `at`, or for ever when there is nothing to wait for.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The next answer of `watch`; pending for ever when there is no watch. Cancel-safe: a stream
/// keeps its own progress between polls.
async fn next_pushed(watch: &mut Option<BoxStream<'static, Resolution>>) -> Option<Resolution> {
    match watch {
        Some(w) => w.next().await,
        None => std::future::pending().await,
    }
}
