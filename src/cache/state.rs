//! What a target knows about itself between refreshes, and the acceptance rules applied to
//! each answer: stale beats empty, failures are counted, and answers that empty the table or
//! remove most of it wait for confirmation. Pure (no I/O, no clock reads) so it is unit-tested
//! directly; the refresher feeds it answers and the current time.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use super::Policy;
use crate::discover::Resolution;

/// Where a target stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// No resolve attempt has finished yet.
    Pending,
    /// A good answer is being served (possibly stale: see [`Status::stale`]).
    Ready,
    /// No good answer is available: every attempt so far failed, or the last good one is older
    /// than `max_stale`.
    Failed,
}

/// Everything about a target's freshness, published together with its instances.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// Resolver kind.
    pub resolver: &'static str,
    /// The resolver's cache key.
    pub target: Arc<str>,
    /// Where the target stands.
    pub state: State,
    /// The registry's revision of the answer being served, when it has one.
    pub revision: Option<u64>,
    /// When the last resolve attempt finished.
    #[serde(serialize_with = "unix_secs")]
    pub fetched_at: Option<SystemTime>,
    /// When the last successful resolve finished.
    #[serde(serialize_with = "unix_secs")]
    pub last_success: Option<SystemTime>,
    /// The last failure, kept until a success.
    pub last_error: Option<String>,
    /// Failures since the last success.
    pub consecutive_failures: u32,
    /// True while the served instances come from an earlier answer because refreshes fail.
    pub stale: bool,
    /// An answer held back by the guard: its instance count and how many answers confirmed it.
    pub held: Option<Held>,
}

/// An answer held back by the guard.
#[derive(Debug, Clone, Serialize)]
pub struct Held {
    /// Instances in the held answer.
    pub instances: usize,
    /// Consecutive answers that agreed with it so far.
    pub confirmations: u32,
}

fn unix_secs<S: serde::Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
    match t.and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok()) {
        Some(d) => s.serialize_some(&d.as_secs_f64()),
        None => s.serialize_none(),
    }
}

/// What an answer did, for metrics (`result` label) and the caller's next step. The label
/// enum belongs to `metrics`, which imports nothing from the stages.
pub use crate::metrics::Outcome;

/// A target's instances and status, updated by answers.
#[derive(Debug, Clone)]
pub struct TargetState {
    /// The instances being served.
    pub current: Arc<Resolution>,
    /// Their status.
    pub status: Status,
    held: Option<(Resolution, u32)>,
}

impl TargetState {
    /// A target nobody has resolved yet.
    pub fn new(resolver: &'static str, target: &str) -> Self {
        Self {
            current: Arc::new(Resolution::new(Vec::new())),
            status: Status {
                resolver,
                target: target.into(),
                state: State::Pending,
                revision: None,
                fetched_at: None,
                last_success: None,
                last_error: None,
                consecutive_failures: 0,
                stale: false,
                held: None,
            },
            held: None,
        }
    }

    /// Applies a successful answer received at `now`.
    pub fn on_success(&mut self, answer: Resolution, now: SystemTime, policy: &Policy) -> Outcome {
        let st = &mut self.status;
        st.fetched_at = Some(now);
        st.last_success = Some(now);
        st.last_error = None;
        st.consecutive_failures = 0;
        st.stale = false;
        let first = st.state != State::Ready;
        st.state = State::Ready;
        if !first && self.current.same_instances(&answer) {
            self.held = None;
            st.held = None;
            st.revision = answer.revision;
            return Outcome::Unchanged;
        }
        // Answers are sorted by address (`Resolution::new`): a binary search per current
        // instance, not a scan of the whole answer (10,000 instances would take 10^8 steps).
        let removed = self
            .current
            .instances
            .iter()
            .filter(|i| {
                answer
                    .instances
                    .binary_search_by(|n| n.address.cmp(&i.address))
                    .is_err()
            })
            .count();
        if !first
            && policy.needs_confirmation(
                self.current.instances.len(),
                removed,
                answer.instances.len(),
            )
        {
            let confirmations = match &self.held {
                Some((held, n)) if held.same_instances(&answer) => n + 1,
                _ => 1,
            };
            if confirmations < policy.confirm {
                st.held = Some(Held {
                    instances: answer.instances.len(),
                    confirmations,
                });
                self.held = Some((answer, confirmations));
                return Outcome::Held;
            }
        }
        self.held = None;
        st.held = None;
        st.revision = answer.revision;
        self.current = Arc::new(answer);
        Outcome::Changed
    }

    /// Applies a failed resolve at `now`. The served instances stay, unless `max_stale` ran out:
    /// then the stale table is dropped for an empty one.
    pub fn on_failure(&mut self, error: String, now: SystemTime, policy: &Policy) {
        let st = &mut self.status;
        st.fetched_at = Some(now);
        st.last_error = Some(error);
        st.consecutive_failures = st.consecutive_failures.saturating_add(1);
        match st.state {
            State::Ready => {
                st.stale = true;
                let age = st
                    .last_success
                    .and_then(|t| now.duration_since(t).ok())
                    .unwrap_or(Duration::ZERO);
                if policy.max_stale.is_some_and(|max| age > max) {
                    st.state = State::Failed;
                    st.stale = false;
                    self.current = Arc::new(Resolution::new(Vec::new()));
                }
            }
            State::Pending | State::Failed => st.state = State::Failed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discover::Instance;

    fn res(ports: &[u16]) -> Resolution {
        Resolution::new(
            ports
                .iter()
                .map(|p| Instance::new(format!("127.0.0.1:{p}").parse().unwrap(), 1))
                .collect(),
        )
    }

    /// Built explicitly, not from the config's defaults: confirm 3 of 50 %, max_stale 60s.
    fn policy() -> Policy {
        Policy {
            max_stale: Some(Duration::from_secs(60)),
            ..crate::cache::policy::test_policy()
        }
    }

    #[test]
    fn first_answer_is_accepted_even_if_empty() {
        let mut s = TargetState::new("static", "x");
        assert_eq!(
            s.on_success(res(&[]), SystemTime::now(), &policy()),
            Outcome::Changed
        );
        assert_eq!(s.status.state, State::Ready);
    }

    #[test]
    fn unchanged_answers_do_not_rebuild() {
        let mut s = TargetState::new("static", "x");
        let now = SystemTime::now();
        s.on_success(res(&[1, 2]), now, &policy());
        assert_eq!(
            s.on_success(res(&[2, 1]), now, &policy()),
            Outcome::Unchanged
        );
    }

    #[test]
    fn stale_beats_empty_until_max_stale() {
        let p = policy();
        let mut s = TargetState::new("dns", "x");
        let t0 = SystemTime::now();
        s.on_success(res(&[1]), t0, &p);
        let served = s.current.clone();
        s.on_failure("down".into(), t0 + Duration::from_secs(10), &p);
        assert!(Arc::ptr_eq(&s.current, &served), "the stale table is kept");
        assert!(s.status.stale);
        assert_eq!(s.current.instances.len(), 1);
        assert_eq!(s.status.consecutive_failures, 1);
        s.on_failure("down".into(), t0 + Duration::from_secs(61), &p);
        assert!(
            !Arc::ptr_eq(&s.current, &served),
            "past max_stale it is dropped"
        );
        assert_eq!(s.status.state, State::Failed);
        assert!(s.current.instances.is_empty());
        // Without max_stale the table is kept for ever.
        let forever = Policy {
            max_stale: None,
            ..policy()
        };
        let mut s = TargetState::new("dns", "x");
        s.on_success(res(&[1]), t0, &forever);
        let served = s.current.clone();
        s.on_failure("down".into(), t0 + Duration::from_secs(86_400), &forever);
        assert!(Arc::ptr_eq(&s.current, &served));
        assert_eq!(s.status.state, State::Ready);
    }

    #[test]
    fn failed_first_resolve_is_failed_not_pending() {
        let mut s = TargetState::new("dns", "x");
        s.on_failure("timeout".into(), SystemTime::now(), &policy());
        assert_eq!(s.status.state, State::Failed);
    }

    #[test]
    fn emptying_answer_needs_confirmation() {
        let p = policy(); // confirm = 3
        let now = SystemTime::now();
        let mut s = TargetState::new("file", "x");
        s.on_success(res(&[1, 2, 3]), now, &p);
        assert_eq!(s.on_success(res(&[]), now, &p), Outcome::Held);
        assert_eq!(s.on_success(res(&[]), now, &p), Outcome::Held);
        assert_eq!(s.current.instances.len(), 3);
        assert_eq!(s.status.held.as_ref().unwrap().confirmations, 2);
        assert_eq!(s.on_success(res(&[]), now, &p), Outcome::Changed);
        assert!(s.current.instances.is_empty());
    }

    #[test]
    fn a_recovering_answer_resets_the_guard() {
        let p = policy();
        let now = SystemTime::now();
        let mut s = TargetState::new("file", "x");
        s.on_success(res(&[1, 2, 3, 4]), now, &p);
        assert_eq!(s.on_success(res(&[1]), now, &p), Outcome::Held);
        assert_eq!(
            s.on_success(res(&[1, 2, 3, 4]), now, &p),
            Outcome::Unchanged
        );
        assert!(s.status.held.is_none());
        assert_eq!(s.on_success(res(&[1]), now, &p), Outcome::Held);
        assert_eq!(s.status.held.as_ref().unwrap().confirmations, 1);
        // Removing half is allowed without confirmation.
        assert_eq!(s.on_success(res(&[1, 2]), now, &p), Outcome::Changed);
    }
}
