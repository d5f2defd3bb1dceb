//! The cache's scheduling and acceptance rules as pure functions, unit-tested without a clock:
//! when to refresh next, how far to back off after failures, and whether a shrinking answer may
//! replace the current one yet.

use std::time::Duration;

use crate::config::DiscoveryConfig;

/// Everything the cache needs to decide when to refresh and what to accept.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// Base delay between refreshes of a healthy target.
    pub refresh_interval: Duration,
    /// Spread of every delay as a share of it (0.2 = ±20 %).
    pub jitter: f64,
    /// A target resolved on demand and unused this long is dropped.
    pub expire_interval: Duration,
    /// How long the last good table may be served while refreshes fail; `None` = forever.
    pub max_stale: Option<Duration>,
    /// First retry delay after a failure.
    pub backoff_initial: Duration,
    /// Longest retry delay after repeated failures.
    pub backoff_max: Duration,
    /// Consecutive answers needed before one that empties the table, or removes more than
    /// `max_removal` of its instances, is applied.
    pub confirm: u32,
    /// Share of instances one answer may remove without confirmation (0.5 = half).
    pub max_removal: f64,
    /// Time allowed for one resolve.
    pub resolve_timeout: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Self::from_config(&DiscoveryConfig::default())
    }
}

impl Policy {
    /// The policy described by `discovery:`.
    pub fn from_config(cfg: &DiscoveryConfig) -> Self {
        Self {
            refresh_interval: cfg.refresh_interval.0,
            jitter: cfg.jitter,
            expire_interval: cfg.expire_interval.0,
            max_stale: cfg.max_stale.map(|d| d.0),
            backoff_initial: cfg.backoff.initial.0,
            backoff_max: cfg.backoff.max.0,
            confirm: cfg.guard.confirm,
            max_removal: cfg.guard.max_removal,
            resolve_timeout: cfg.resolve_timeout.0,
        }
    }

    /// `base` spread by ±`jitter`, where `unit` is a uniform random number in [0, 1).
    pub fn jittered(&self, base: Duration, unit: f64) -> Duration {
        let factor = 1.0 - self.jitter + 2.0 * self.jitter * unit.clamp(0.0, 1.0);
        base.mul_f64(factor.max(0.0))
    }

    /// Delay before the next refresh after a success; `ttl` is the answer's own lifetime
    /// (DNS), which replaces the interval when the resolver gives one.
    pub fn next_refresh(&self, ttl: Option<Duration>, unit: f64) -> Duration {
        self.jittered(ttl.unwrap_or(self.refresh_interval), unit)
    }

    /// Delay before the next attempt after `failures` consecutive failures (≥ 1):
    /// `backoff_initial · 2^(failures-1)`, capped at `backoff_max`, jittered.
    pub fn next_retry(&self, failures: u32, unit: f64) -> Duration {
        let exp = failures.saturating_sub(1).min(20);
        let base = self
            .backoff_initial
            .saturating_mul(1u32 << exp)
            .min(self.backoff_max);
        self.jittered(base, unit)
    }

    /// Whether an answer going from `current` to `next` instances needs confirmation before it
    /// is applied: it empties a non-empty table, or removes more than `max_removal` of it.
    pub fn needs_confirmation(&self, current: usize, removed: usize, next: usize) -> bool {
        if current == 0 || self.confirm <= 1 {
            return false;
        }
        next == 0 || (removed as f64) > self.max_removal * current as f64
    }
}

/// The policy the cache tests use: 5s ±20 %, 60s expiry, backoff 1s..30s, confirm 3 of 50 %.
#[cfg(test)]
pub(crate) fn test_policy() -> Policy {
    Policy {
        refresh_interval: Duration::from_secs(5),
        jitter: 0.2,
        expire_interval: Duration::from_secs(60),
        max_stale: None,
        backoff_initial: Duration::from_secs(1),
        backoff_max: Duration::from_secs(30),
        confirm: 3,
        max_removal: 0.5,
        resolve_timeout: Duration::from_secs(5),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        test_policy()
    }

    #[test]
    fn refresh_is_jittered_within_bounds() {
        let p = policy();
        assert_eq!(p.next_refresh(None, 0.0), Duration::from_secs(4));
        assert_eq!(p.next_refresh(None, 0.5), Duration::from_secs(5));
        assert!(p.next_refresh(None, 0.999_999) <= Duration::from_secs(6));
        assert_eq!(
            p.next_refresh(Some(Duration::from_secs(10)), 0.5),
            Duration::from_secs(10)
        );
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let p = policy();
        let at = |n| p.next_retry(n, 0.5);
        assert_eq!(at(1), Duration::from_secs(1));
        assert_eq!(at(2), Duration::from_secs(2));
        assert_eq!(at(5), Duration::from_secs(16));
        assert_eq!(at(6), Duration::from_secs(30));
        assert_eq!(at(1000), Duration::from_secs(30));
    }

    #[test]
    fn guard_protects_against_emptying_and_mass_removal() {
        let p = policy();
        assert!(p.needs_confirmation(3, 3, 0));
        assert!(p.needs_confirmation(10, 6, 4));
        assert!(!p.needs_confirmation(10, 5, 5));
        assert!(!p.needs_confirmation(2, 1, 1));
        assert!(
            !p.needs_confirmation(0, 0, 0),
            "first answers are never held back"
        );
        assert!(!Policy { confirm: 1, ..p }.needs_confirmation(3, 3, 0));
    }
}
