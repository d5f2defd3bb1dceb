//! What waypost learns about each instance from its own traffic: requests in flight, a decaying
//! latency estimate, consecutive failures, and its ejection. All atomics, written by the
//! requests that use the instance and read by picks; one [`InstanceState`] per address, carried
//! from table to table while the address stays (so a discovery refresh forgets nothing).
//!
//! Times are milliseconds since the balancer's epoch ([`Clock`]), taken from instants the
//! request path already has: the pick path reads no clock of its own.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::metrics::InstanceSeries;

/// Latency estimate of an instance nothing has been learned about yet (microseconds): a
/// localhost-scale guess, so a new instance is neither shunned nor flooded.
const DEFAULT_LATENCY_US: f64 = 1_000.0;
/// Weight of a new sample in the latency average when it is below the average (it decays
/// slowly); a sample above the average is taken whole (peak-EWMA: slowness is seen at once).
const DECAY: f64 = 0.1;

/// Milliseconds since a balancer's epoch.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    epoch: Instant,
}

impl Clock {
    /// A clock starting now.
    pub fn new() -> Self {
        Self {
            epoch: Instant::now(),
        }
    }

    /// `at` in milliseconds since the epoch (at least 1: 0 means "never").
    #[inline]
    pub fn ms(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.epoch).as_millis() as u64 + 1
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

/// The fields a p2c pick reads and every attempt writes, 16 bytes. A balancer keeps them for
/// all its instances in one contiguous slab ([`Slab`]), so that picking among 10,000 instances
/// reads 160 KB of memory rather than 10,000 scattered allocations.
#[derive(Debug, Default)]
pub struct Hot {
    /// Requests sent to it and not yet answered.
    pub(super) in_flight: AtomicU32,
    /// Latency estimate in microseconds, as `f32` bits (0: nothing learned yet).
    latency: AtomicU32,
    /// Connect failures, resets and timeouts in a row.
    pub(super) failures: AtomicU32,
    /// 5xx responses in a row.
    pub(super) errors_5xx: AtomicU32,
}

impl Hot {
    /// Latency estimate in microseconds.
    #[inline]
    pub fn latency_us(&self) -> f64 {
        f64::from(self.latency())
    }

    /// Latency estimate in microseconds, as stored (the default until something is learned).
    #[inline]
    fn latency(&self) -> f32 {
        match f32::from_bits(self.latency.load(Ordering::Relaxed)) {
            v if v > 0.0 => v,
            _ => DEFAULT_LATENCY_US as f32,
        }
    }

    /// Folds a response's latency into the estimate. A lost race between two updates drops
    /// one sample, which an average can afford.
    pub fn observe(&self, took: Duration) {
        let sample = took.as_secs_f64() * 1e6;
        let old = f64::from(f32::from_bits(self.latency.load(Ordering::Relaxed)));
        let new = if old <= 0.0 || sample >= old {
            sample
        } else {
            old + DECAY * (sample - old)
        };
        self.latency
            .store((new.max(1.0) as f32).to_bits(), Ordering::Relaxed);
    }

    /// The P2C score: lower is better. Load × latency, times a penalty for failures in a row,
    /// so an instance failing fast (low latency) still loses. In `f32`: a comparison needs no
    /// more, and the conversions are cheaper.
    #[inline]
    pub fn score(&self) -> f32 {
        let load = (self.in_flight.load(Ordering::Relaxed) + 1) as f32;
        let latency = self.latency();
        let worst = self
            .failures
            .load(Ordering::Relaxed)
            .max(self.errors_5xx.load(Ordering::Relaxed));
        if worst == 0 {
            return load * latency;
        }
        let penalty = 1.0 + 4.0 * worst.min(16) as f32;
        load * latency * penalty * penalty
    }

    /// What was learned (not the requests in flight, which finish on the slab they started
    /// on) copied from `other`.
    fn learn_from(&self, other: &Hot) {
        for (to, from) in [
            (&self.latency, &other.latency),
            (&self.failures, &other.failures),
            (&self.errors_5xx, &other.errors_5xx),
        ] {
            to.store(from.load(Ordering::Relaxed), Ordering::Relaxed);
        }
    }
}

/// A balancer's [`Hot`] fields, one slot per instance; slots are taken in order and never
/// reused while the slab lives (a request still in flight on an instance that left must not
/// count against a newcomer): when they run out, the instances left move to a new slab.
pub type Slab = Arc<[Hot]>;

/// A new slab of `n` slots.
pub fn slab(n: usize) -> Slab {
    (0..n).map(|_| Hot::default()).collect()
}

/// One instance's live state.
#[derive(Debug)]
pub struct InstanceState {
    /// Its hot fields: `slab[slot]`.
    slab: Slab,
    slot: u32,
    /// Ejected until this time (ms since the epoch); 0 when not ejected.
    pub(super) ejected_until: AtomicU64,
    /// Ejections in a row (each one twice as long as the one before).
    pub(super) ejections: AtomicU32,
    /// When an ejected instance's trial request went out (ms since the epoch); 0: none.
    pub(super) trial: AtomicU64,
    /// When it joined the table (ms since the epoch), for slow start; 0: from the start.
    pub(super) joined: u64,
    /// Its per-instance series (declared services only).
    pub(super) series: Option<InstanceSeries>,
}

impl Default for InstanceState {
    fn default() -> Self {
        Self::new(0, None)
    }
}

impl InstanceState {
    /// The state of an instance that joined the table at `joined` (ms; 0 for the first table),
    /// with a slab of its own.
    pub fn new(joined: u64, series: Option<InstanceSeries>) -> Self {
        Self::in_slab(slab(1), 0, joined, series)
    }

    /// The state of an instance whose hot fields are `slab[slot]`.
    pub fn in_slab(slab: Slab, slot: u32, joined: u64, series: Option<InstanceSeries>) -> Self {
        Self {
            slab,
            slot,
            ejected_until: AtomicU64::new(0),
            ejections: AtomicU32::new(0),
            trial: AtomicU64::new(0),
            joined,
            series,
        }
    }

    /// This state moved to `slab[slot]`: everything learned carried over.
    pub fn moved(&self, slab: Slab, slot: u32) -> Self {
        let s = Self::in_slab(slab, slot, self.joined, self.series.clone());
        s.hot().learn_from(self.hot());
        for (to, from) in [
            (&s.ejected_until, &self.ejected_until),
            (&s.trial, &self.trial),
        ] {
            to.store(from.load(Ordering::Relaxed), Ordering::Relaxed);
        }
        s.ejections
            .store(self.ejections.load(Ordering::Relaxed), Ordering::Relaxed);
        s
    }

    /// Its hot fields.
    #[inline]
    pub fn hot(&self) -> &Hot {
        &self.slab[self.slot as usize]
    }

    /// Whether its hot fields are in `slab`, and at which slot.
    pub fn slot_in(&self, slab: &Slab) -> Option<u32> {
        Arc::ptr_eq(&self.slab, slab).then_some(self.slot)
    }

    /// Requests in flight.
    pub fn in_flight(&self) -> u32 {
        self.hot().in_flight.load(Ordering::Relaxed)
    }

    /// Latency estimate in microseconds.
    #[inline]
    pub fn latency_us(&self) -> f64 {
        self.hot().latency_us()
    }

    /// Folds a response's latency into the estimate.
    pub fn observe(&self, took: Duration) {
        self.hot().observe(took);
    }

    /// Consecutive failures (connect, reset, timeout) and consecutive 5xx.
    pub fn consecutive(&self) -> (u32, u32) {
        let h = self.hot();
        (
            h.failures.load(Ordering::Relaxed),
            h.errors_5xx.load(Ordering::Relaxed),
        )
    }

    /// The P2C score (see [`Hot::score`]).
    #[inline]
    pub fn score(&self) -> f32 {
        self.hot().score()
    }

    /// Ejected until (ms since the epoch), or `None`.
    pub fn ejected_until(&self) -> Option<u64> {
        match self.ejected_until.load(Ordering::Relaxed) {
            0 => None,
            t => Some(t),
        }
    }

    /// When `joined` is within `window` of `now`: the share of its weight it has, from 10 %
    /// up (as Envoy's `min_weight_percent`), linear in time.
    pub fn ramp(&self, now: u64, window: u64) -> Option<f64> {
        if self.joined == 0 || window == 0 {
            return None;
        }
        let age = now.saturating_sub(self.joined);
        (age < window).then(|| (age as f64 / window as f64).max(0.1))
    }
}

/// Marks a request in flight on an instance until dropped.
pub(super) fn enter(state: &InstanceState) {
    state.hot().in_flight.fetch_add(1, Ordering::Relaxed);
    if let Some(s) = &state.series {
        s.requests.inc();
    }
}

/// The request [`enter`]ed has ended.
pub(super) fn leave(state: &InstanceState) {
    state.hot().in_flight.fetch_sub(1, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_rises_at_once_and_decays_slowly() {
        let s = InstanceState::default();
        assert_eq!(s.latency_us(), DEFAULT_LATENCY_US);
        s.observe(Duration::from_millis(100));
        assert_eq!(s.latency_us(), 100_000.0);
        s.observe(Duration::from_millis(1));
        assert!((s.latency_us() - 90_100.0).abs() < 10.0);
        for _ in 0..100 {
            s.observe(Duration::from_millis(1));
        }
        assert!(s.latency_us() < 1_100.0);
    }

    #[test]
    fn failures_in_a_row_make_a_fast_instance_lose() {
        let (fast_failing, slow_ok) = (InstanceState::default(), InstanceState::default());
        fast_failing.observe(Duration::from_micros(100));
        slow_ok.observe(Duration::from_millis(5));
        assert!(fast_failing.score() < slow_ok.score());
        fast_failing.hot().errors_5xx.store(3, Ordering::Relaxed);
        assert!(fast_failing.score() > slow_ok.score());
    }

    #[test]
    fn slow_start_ramps_linearly_from_ten_percent() {
        let s = InstanceState::new(1_000, None);
        assert_eq!(s.ramp(1_000, 10_000), Some(0.1));
        assert_eq!(s.ramp(6_000, 10_000), Some(0.5));
        assert_eq!(s.ramp(11_000, 10_000), None);
        assert_eq!(InstanceState::new(0, None).ramp(5, 10_000), None);
    }
}
