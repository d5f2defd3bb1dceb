//! Passive outlier ejection: an instance that fails `consecutive_failures` times in a row
//! (connect failures, resets, timeouts) or answers `consecutive_5xx` 5xx in a row is left out
//! of picks for `base_ejection`, doubled on each ejection in a row, capped at `max_ejection`.
//! When its time is up, one request is let through on trial: a success brings it back (and
//! forgets its ejections), a failure ejects it again for twice as long.
//!
//! Never more than `max_ejected_percent` of a service's instances are out at once: an instance
//! that would cross that line stays in (Envoy's `max_ejection_percent`), so when most instances
//! fail, traffic still spreads over all of them rather than piling on the few left.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::state::InstanceState;
use crate::config::OutlierConfig;

/// What a response (or its absence) says about an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A response below 500.
    Success,
    /// A 5xx response.
    Error5xx,
    /// No response: connect failure, reset, timeout.
    Failure,
}

/// What recording an outcome changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Nothing.
    None,
    /// The instance was ejected until this time (ms since the epoch).
    Ejected(u64),
    /// The instance should have been ejected, but that would cross `max_ejected_percent`.
    Capped,
    /// The instance passed its trial and is back.
    Returned,
}

/// A service's ejection policy, in milliseconds.
#[derive(Debug, Clone)]
pub struct Outlier {
    failures: u32,
    errors_5xx: u32,
    base: u64,
    max: u64,
    max_percent: u64,
}

impl Outlier {
    /// The policy `outlier:` describes.
    pub fn from_config(c: &OutlierConfig) -> Self {
        Self {
            failures: c.consecutive_failures,
            errors_5xx: c.consecutive_5xx,
            base: c.base_ejection.0.as_millis().max(1) as u64,
            max: c.max_ejection.0.as_millis().max(1) as u64,
            max_percent: u64::from(c.max_ejected_percent),
        }
    }

    /// Whether `state` may be picked at `now`: not ejected, or its ejection is over and this
    /// pick is its trial (one at a time; a trial unanswered for `base_ejection` is given up).
    #[inline]
    pub fn admits(&self, state: &InstanceState, now: u64) -> bool {
        let until = state.ejected_until.load(Ordering::Relaxed);
        until == 0 || self.trial(state, until, now)
    }

    #[cold]
    fn trial(&self, state: &InstanceState, until: u64, now: u64) -> bool {
        if now < until {
            return false;
        }
        let started = state.trial.load(Ordering::Relaxed);
        (started == 0 || now.saturating_sub(started) >= self.base)
            && state
                .trial
                .compare_exchange(started, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }

    /// Records `outcome` for `state` at `now`; `all` are the service's instances (for the cap).
    pub fn record(
        &self,
        state: &InstanceState,
        outcome: Outcome,
        now: u64,
        all: &[Arc<InstanceState>],
    ) -> Change {
        let (failures, errors) = match outcome {
            Outcome::Success => {
                state.hot().failures.store(0, Ordering::Relaxed);
                state.hot().errors_5xx.store(0, Ordering::Relaxed);
                let until = state.ejected_until.load(Ordering::Relaxed);
                if until != 0 && now >= until {
                    return self.back(state);
                }
                return Change::None;
            }
            Outcome::Failure => (state.hot().failures.fetch_add(1, Ordering::Relaxed) + 1, 0),
            Outcome::Error5xx => (
                0,
                state.hot().errors_5xx.fetch_add(1, Ordering::Relaxed) + 1,
            ),
        };
        let ejected = state.ejected_until.load(Ordering::Relaxed);
        if ejected != 0 {
            // A failure once the ejection is over is the trial's (or as good as): eject again.
            if now >= ejected {
                return self.eject(state, ejected, now);
            }
            return Change::None;
        }
        let tripped = (self.failures > 0 && failures >= self.failures)
            || (self.errors_5xx > 0 && errors >= self.errors_5xx);
        if !tripped {
            return Change::None;
        }
        let out = all
            .iter()
            .filter(|s| s.ejected_until.load(Ordering::Relaxed) != 0)
            .count() as u64;
        if (out + 1) * 100 > self.max_percent * all.len() as u64 {
            return Change::Capped;
        }
        self.eject(state, 0, now)
    }

    fn eject(&self, state: &InstanceState, was: u64, now: u64) -> Change {
        let n = state.ejections.load(Ordering::Relaxed).min(31);
        let length = self.base.saturating_mul(1 << n).min(self.max);
        let until = now + length;
        if state
            .ejected_until
            .compare_exchange(was, until, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            return Change::None; // another request got there first
        }
        state.ejections.fetch_add(1, Ordering::Relaxed);
        state.trial.store(0, Ordering::Relaxed);
        state.hot().failures.store(0, Ordering::Relaxed);
        state.hot().errors_5xx.store(0, Ordering::Relaxed);
        Change::Ejected(until)
    }

    fn back(&self, state: &InstanceState) -> Change {
        let was = state.ejected_until.swap(0, Ordering::Relaxed);
        state.trial.store(0, Ordering::Relaxed);
        state.ejections.store(0, Ordering::Relaxed);
        if was == 0 {
            Change::None
        } else {
            Change::Returned
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Dur;

    fn policy() -> Outlier {
        Outlier::from_config(&OutlierConfig {
            consecutive_failures: 3,
            consecutive_5xx: 2,
            base_ejection: Dur::from_secs(10),
            max_ejection: Dur::from_secs(35),
            max_ejected_percent: 50,
        })
    }

    fn service(n: usize) -> Vec<Arc<InstanceState>> {
        (0..n).map(|_| Arc::new(InstanceState::default())).collect()
    }

    #[test]
    fn consecutive_failures_eject_and_a_success_in_between_resets() {
        let (p, all) = (policy(), service(4));
        let s = &all[0];
        for _ in 0..2 {
            assert_eq!(p.record(s, Outcome::Failure, 1, &all), Change::None);
        }
        assert_eq!(p.record(s, Outcome::Success, 1, &all), Change::None);
        assert_eq!(p.record(s, Outcome::Error5xx, 1, &all), Change::None);
        assert_eq!(
            p.record(s, Outcome::Error5xx, 1, &all),
            Change::Ejected(10_001)
        );
        assert!(!p.admits(s, 10_000));
        assert!(p.admits(&all[1], 10_000));
    }

    #[test]
    fn a_trial_brings_it_back_or_doubles_the_ejection_up_to_the_cap() {
        let (p, all) = (policy(), service(2));
        let s = &all[0];
        for _ in 0..3 {
            p.record(s, Outcome::Failure, 0, &all);
        }
        assert_eq!(s.ejected_until(), Some(10_000));
        // Over: one trial at a time.
        assert!(p.admits(s, 10_000));
        assert!(!p.admits(s, 10_001), "one trial request at a time");
        // The trial fails: twice as long, then 40 s capped at 35 s.
        assert_eq!(
            p.record(s, Outcome::Failure, 10_002, &all),
            Change::Ejected(30_002)
        );
        assert!(p.admits(s, 30_002));
        assert_eq!(
            p.record(s, Outcome::Error5xx, 30_003, &all),
            Change::Ejected(65_003)
        );
        // An unanswered trial is given up after base_ejection.
        assert!(p.admits(s, 65_003));
        assert!(!p.admits(s, 70_000));
        assert!(p.admits(s, 75_003));
        // The trial succeeds: back, and its ejections are forgotten.
        assert_eq!(
            p.record(s, Outcome::Success, 75_004, &all),
            Change::Returned
        );
        assert!(p.admits(s, 75_004));
        for _ in 0..3 {
            p.record(s, Outcome::Failure, 80_000, &all);
        }
        assert_eq!(s.ejected_until(), Some(90_000), "base length again");
    }

    #[test]
    fn never_more_than_max_ejected_percent_out() {
        let (p, all) = (policy(), service(3));
        for s in &all[..2] {
            p.record(s, Outcome::Error5xx, 0, &all);
        }
        assert!(matches!(
            p.record(&all[0], Outcome::Error5xx, 0, &all),
            Change::Ejected(_)
        ));
        // A second of three would be 67 % > 50 %: it stays in.
        assert_eq!(
            p.record(&all[1], Outcome::Error5xx, 0, &all),
            Change::Capped
        );
        assert!(p.admits(&all[1], 1));
        let out = all.iter().filter(|s| s.ejected_until().is_some()).count();
        assert_eq!(out, 1);
    }

    #[test]
    fn zero_thresholds_never_eject() {
        let p = Outlier::from_config(&OutlierConfig {
            consecutive_failures: 0,
            consecutive_5xx: 0,
            ..OutlierConfig::default()
        });
        let all = service(2);
        for _ in 0..100 {
            assert_eq!(p.record(&all[0], Outcome::Failure, 0, &all), Change::None);
            assert_eq!(p.record(&all[0], Outcome::Error5xx, 0, &all), Change::None);
        }
    }
}
