//! The pick and retry steps of one request ([`Attempts`]): the instance each attempt goes to,
//! its response deadline (the per-attempt `upstream.timeout`, never past the total
//! `upstream.deadline`), and, when an attempt fails, whether another goes out — the retry
//! policy's decision, then a token from the budget, then another instance (never the one just
//! tried). Every attempt's outcome feeds its instance's state (latency, ejection); the request
//! counts in flight on its instance until its response head.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::retry::{Attempted, Decision, Plan, Request};
use super::{ForwardError, ServiceHandle};
use crate::balance::{InstanceState, Outcome, Picked};

/// One request's attempts.
pub(crate) struct Attempts<'a> {
    svc: &'a ServiceHandle,
    current: Picked,
    /// The current attempt's instance, in flight until its outcome is recorded.
    state: Option<Arc<InstanceState>>,
    /// When the current attempt started.
    since: Instant,
    /// Attempts made, the current one included.
    made: u32,
    /// The total deadline, if the service has one.
    deadline: Option<Instant>,
    idempotent: bool,
}

impl<'a> Attempts<'a> {
    /// The first attempt of a request that started at `started`, to `first` (picked and
    /// counted in flight as `state`).
    pub fn new(
        svc: &'a ServiceHandle,
        first: Picked,
        state: Arc<InstanceState>,
        started: Instant,
        idempotent: bool,
    ) -> Self {
        Self {
            svc,
            current: first,
            state: Some(state),
            since: started,
            made: 1,
            deadline: svc.deadline.map(|d| started + d),
            idempotent,
        }
    }

    /// The current attempt's instance.
    pub fn addr(&self) -> SocketAddr {
        self.current.address
    }

    /// Records how the last attempt ended, its response head (or failure) at `at`.
    pub fn finish(&mut self, outcome: Outcome, at: Instant) {
        if let Some(s) = self.state.take() {
            let took = at.saturating_duration_since(self.since);
            self.svc.balancer.finish(&s, outcome, took, at);
        }
    }

    /// The error for the last attempt, whose response head did not come in time: the total
    /// deadline's when that is what ran out.
    pub fn timed_out(&self) -> ForwardError {
        let timeout = match self.deadline {
            Some(d) if Instant::now() >= d => self.svc.deadline.unwrap_or(self.svc.timeout),
            _ => self.svc.timeout,
        };
        ForwardError::UpstreamTimeout {
            service: self.svc.name.to_string(),
            addr: self.current.address,
            timeout,
        }
    }
}

impl Plan for Attempts<'_> {
    fn target(&self) -> (SocketAddr, Instant) {
        let until = self.since + self.svc.timeout;
        let until = self.deadline.map_or(until, |d| until.min(d));
        (self.current.address, until)
    }

    fn buffer(&self) -> usize {
        if self.svc.retry.retries() {
            self.svc.retry.buffer
        } else {
            0
        }
    }

    fn again(&mut self, what: Attempted, replayable: bool) -> bool {
        let now = Instant::now();
        let req = Request {
            idempotent: self.idempotent,
            replayable,
            attempts: self.made,
            left: self
                .deadline
                .map_or(Duration::MAX, |d| d.saturating_duration_since(now)),
        };
        if self.svc.retry.decide(what, req) != Decision::Retry {
            return false;
        }
        if !self.svc.budget.withdraw(now) {
            self.svc.resilience.budget_exhausted.inc();
            tracing::debug!(service = %self.svc.name, "retry budget spent: not retrying");
            return false;
        }
        let snap = self.svc.balancer.load();
        let Some(snap) = &**snap else { return false };
        let Some(next) = self
            .svc
            .balancer
            .pick(snap, now, Some(self.current.address))
        else {
            return false;
        };
        let outcome = match what {
            Attempted::Status(_) => Outcome::Error5xx,
            _ => Outcome::Failure,
        };
        self.finish(outcome, now);
        let reason = match what {
            Attempted::Connect => 0,
            Attempted::Reset => 1,
            Attempted::Timeout => 2,
            Attempted::Status(_) | Attempted::Other => 3,
        };
        self.svc.resilience.retries[reason].inc();
        tracing::debug!(service = %self.svc.name, from = %self.current.address, to = %next.address, reason = what.reason(), "retrying on another instance");
        self.state = Some(self.svc.balancer.start(snap, next));
        self.current = next;
        self.since = now;
        self.made += 1;
        true
    }
}

impl Drop for Attempts<'_> {
    fn drop(&mut self) {
        // Ended by the app's side (its body broke, it went away): nothing learned about the
        // instance, but the request is no longer in flight there.
        if let Some(s) = self.state.take() {
            self.svc.balancer.abandon(&s);
        }
    }
}

/// A request counted against its service's `limits.max_concurrent` until dropped.
pub(crate) struct Slot<'a>(&'a AtomicU32);

impl<'a> Slot<'a> {
    /// Takes a slot of `in_flight`, unless `max` are taken.
    pub fn take(in_flight: &'a AtomicU32, max: Option<u32>) -> Option<Self> {
        let now = in_flight.fetch_add(1, Ordering::Relaxed);
        if max.is_some_and(|m| now >= m) {
            in_flight.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(Self(in_flight))
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_stop_at_the_cap_and_come_back() {
        let n = AtomicU32::new(0);
        let a = Slot::take(&n, Some(2)).unwrap();
        let _b = Slot::take(&n, Some(2)).unwrap();
        assert!(Slot::take(&n, Some(2)).is_none());
        drop(a);
        assert!(Slot::take(&n, Some(2)).is_some());
        assert_eq!(n.load(Ordering::Relaxed), 1);
        let _unbounded: Vec<_> = (0..100).map(|_| Slot::take(&n, None).unwrap()).collect();
    }
}
