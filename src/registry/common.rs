//! What the backends' background loops share (etcd and ZooKeeper watches, the ZooKeeper session
//! supervisor, Consul's blocking queries): the retry delay after failures, and the memory of what
//! was already logged, so a bad entry is reported once rather than at every read.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::Duration;

/// Exponential backoff with jitter: `initial · 2^(failures-1)`, capped at `max`, spread
/// ±`spread` (0.2 = ±20 %). Each backend sets its own; the scheduling math is one pure function.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Backoff {
    /// The first delay.
    pub initial: Duration,
    /// The longest delay: the cache's own polls go on meanwhile, so there is no need to hammer
    /// a registry that is down.
    pub max: Duration,
    /// Spread of each delay as a share of it, so a fleet does not retry in lockstep.
    pub spread: f64,
}

impl Backoff {
    /// The delay before the `failures`-th retry (≥ 1), `unit` a uniform draw in [0, 1).
    pub fn delay(&self, failures: u32, unit: f64) -> Duration {
        let exp = failures.saturating_sub(1).min(16);
        self.initial
            .saturating_mul(1 << exp)
            .min(self.max)
            .mul_f64(1.0 - self.spread + 2.0 * self.spread * unit.clamp(0.0, 1.0))
    }
}

/// Delay before watching again after a failed watch (etcd, ZooKeeper) or before a new
/// ZooKeeper session: 100 ms doubling to 10 s, ±20 %.
pub(crate) const WATCH_BACKOFF: Backoff = Backoff {
    initial: Duration::from_millis(100),
    max: Duration::from_secs(10),
    spread: 0.2,
};

/// Entries remembered; forgotten all at once past this, so the memory stays bounded whatever a
/// registry holds (the worst case is one more log line per entry).
const REPORTED_MAX: usize = 10_000;

/// What was already reported (a key, at a version: a revision, or `()`), so each is logged and
/// counted once. Never held across an await.
pub(crate) struct Reported<K, V = ()> {
    seen: Mutex<HashMap<K, V>>,
}

impl<K: Hash + Eq, V: PartialEq> Reported<K, V> {
    /// Nothing reported yet.
    pub fn new() -> Self {
        Self {
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `key` at `version` was not reported yet (a new version counts as new);
    /// remembers it. The key is copied only when it is new.
    pub fn first<Q>(&self, key: &Q, version: V) -> bool
    where
        K: Borrow<Q>,
        Q: ToOwned<Owned = K> + Hash + Eq + ?Sized,
    {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.get(key) == Some(&version) {
            return false;
        }
        if seen.len() >= REPORTED_MAX {
            seen.clear();
        }
        seen.insert(key.to_owned(), version);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reported_once_per_key_and_version_and_bounded() {
        let r: Reported<String, i64> = Reported::new();
        assert!(r.first("a", 1));
        assert!(!r.first("a", 1));
        assert!(r.first("a", 2), "a new version is new");
        assert!(r.first("b", 2));
        for i in 0..REPORTED_MAX {
            r.first(&i.to_string(), 0);
        }
        assert!(r.seen.lock().unwrap().len() <= REPORTED_MAX);
        let unit: Reported<(String, String)> = Reported::new();
        assert!(unit.first(&("x".into(), "y".into()), ()));
        assert!(!unit.first(&("x".into(), "y".into()), ()));
    }
}
