//! When a failed attempt is sent again ([`Policy::decide`]), and how many retries a service may
//! spend ([`Budget`]).
//!
//! The decision is a pure function of the policy, what went wrong and what is known of the
//! request: a failed connect sent nothing, so it is retried whatever the method or body; a
//! reset before any response byte, a timeout or a listed status is retried only for an
//! idempotent method whose body (if any) is still in hand — bodiless, or buffered whole within
//! `retry.buffer` (RFC 9110 §9.2.2). Every retry also needs attempts left, time left before
//! the total deadline, and a token from the budget.
//!
//! The budget keeps retries under `ratio` × requests over a sliding window plus a floor of
//! `min_per_second`, as linkerd's and Finagle's do, so a failing service is never hit by a
//! retry storm: requests and retries are counted in a ring of per-second buckets, each one
//! atomic word tagged with its second — lock-free, and a request costs one compare-and-swap.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use super::client::SendError;
use crate::config::{RetryConfig, RetryOn};

/// The attempts of one request, as the exchange sees them: where the current attempt goes,
/// and whether a failed one goes again (to another instance). `forward.rs` implements it with
/// the service's policy, budget and balancer.
pub(crate) trait Plan {
    /// The current attempt's instance, and when its response head is due.
    fn target(&self) -> (SocketAddr, Instant);
    /// The largest request body read whole to be replayable (0: bodies stream at once).
    fn buffer(&self) -> usize;
    /// The current attempt ended with `what`; `replayable`: the request's body (if any) is
    /// whole in hand. `true`: the attempt was recorded and another instance is now current;
    /// `false`: this attempt's result is the answer.
    fn again(&mut self, what: Attempted, replayable: bool) -> bool;
}

/// Buckets in the ring: one per second of the longest window, and one being filled.
const BUCKETS: usize = 64;

/// What an attempt ended with, as far as retrying goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempted {
    /// The TCP connect failed: nothing was sent.
    Connect,
    /// The connection closed or broke before any byte of a response.
    Reset,
    /// No response head within the attempt's time.
    Timeout,
    /// A response head with this status.
    Status(u16),
    /// Anything else (a malformed response, a break after response bytes): never retried.
    Other,
}

impl Attempted {
    /// What a send that got no response means.
    pub fn of(e: &SendError) -> Self {
        match e {
            SendError::Connect(_) | SendError::ConnectTimeout(_) => Attempted::Connect,
            SendError::Upstream(p) if p.closed_early() => Attempted::Reset,
            _ => Attempted::Other,
        }
    }

    /// The `reason` label of `waypost_forward_retries_total`.
    pub fn reason(self) -> &'static str {
        match self {
            Attempted::Connect => "connect",
            Attempted::Reset => "reset",
            Attempted::Timeout => "timeout",
            Attempted::Status(_) => "status",
            Attempted::Other => "other",
        }
    }
}

/// What is known of the request when an attempt failed.
#[derive(Debug, Clone, Copy)]
pub struct Request {
    /// Its method is idempotent.
    pub idempotent: bool,
    /// Its body (if any) is whole in hand, so it can be sent again.
    pub replayable: bool,
    /// Attempts made so far (1 after the first).
    pub attempts: u32,
    /// Time left before the total deadline.
    pub left: Duration,
}

/// Why a failed attempt is not retried, or that it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Send it again, to another instance.
    Retry,
    /// Not a condition the policy retries (or not safe for this request).
    NotRetryable,
    /// Every attempt was made.
    Exhausted,
    /// No time left before the deadline.
    NoTime,
}

/// A service's retry policy, from `retry:`.
#[derive(Debug, Clone)]
pub struct Policy {
    attempts: u32,
    on: Vec<RetryOn>,
    /// `retry.buffer`: the largest body read whole to be replayable.
    pub buffer: usize,
}

impl Policy {
    /// The policy `retry:` describes.
    pub fn from_config(c: &RetryConfig) -> Self {
        Self {
            attempts: c.attempts,
            on: c.retry_on.clone(),
            buffer: c.buffer.0,
        }
    }

    /// Whether a request may be attempted more than once (then its body is worth buffering).
    pub fn retries(&self) -> bool {
        self.attempts > 1
    }

    /// Whether a retry is allowed for `req` after `what`, before asking the budget.
    pub fn decide(&self, what: Attempted, req: Request) -> Decision {
        let listed = match what {
            Attempted::Connect => self.on.contains(&RetryOn::Connect),
            Attempted::Reset => self.on.contains(&RetryOn::Reset),
            Attempted::Timeout => self.on.contains(&RetryOn::Timeout),
            Attempted::Status(s) => self.on.contains(&RetryOn::Status(s)),
            Attempted::Other => false,
        };
        // Nothing was sent on a failed connect; anything else may have reached the app.
        let safe = what == Attempted::Connect || (req.idempotent && req.replayable);
        if !listed || !safe {
            Decision::NotRetryable
        } else if req.attempts >= self.attempts {
            Decision::Exhausted
        } else if req.left.is_zero() {
            Decision::NoTime
        } else {
            Decision::Retry
        }
    }
}

/// Retries allowed per request over a sliding window, plus a floor per second.
pub struct Budget {
    ratio: f64,
    /// `min_per_second` × window: the floor over the whole window.
    floor: f64,
    window: u64,
    epoch: Instant,
    requests: Ring,
    retries: Ring,
}

/// Per-second counts: each bucket is `second << 32 | count`, so a bucket from an older second
/// is recognised (and restarted) by whoever writes it next.
struct Ring([AtomicU64; BUCKETS]);

impl Ring {
    fn new() -> Self {
        Self(std::array::from_fn(|_| AtomicU64::new(0)))
    }

    fn add(&self, second: u64) {
        let slot = &self.0[second as usize % BUCKETS];
        let tag = second << 32;
        let mut cur = slot.load(Ordering::Relaxed);
        loop {
            let next = if cur >> 32 == second {
                // Counts stay far below 2^32 per second.
                cur + 1
            } else {
                tag | 1
            };
            match slot.compare_exchange_weak(cur, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return,
                Err(seen) => cur = seen,
            }
        }
    }

    /// The sum over the `window` seconds ending with `second`.
    fn sum(&self, second: u64, window: u64) -> u64 {
        let oldest = (second + 1).saturating_sub(window);
        self.0
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .filter(|v| (oldest..=second).contains(&(v >> 32)))
            .map(|v| v & 0xffff_ffff)
            .sum()
    }
}

impl Budget {
    /// A budget of `ratio` retries per request over `window` (whole seconds, at most 63),
    /// plus `min_per_second`.
    pub fn new(ratio: f64, min_per_second: u32, window: Duration) -> Self {
        let window = window.as_secs().clamp(1, BUCKETS as u64 - 1);
        Self {
            ratio,
            floor: f64::from(min_per_second) * window as f64,
            window,
            epoch: Instant::now(),
            requests: Ring::new(),
            retries: Ring::new(),
        }
    }

    /// The budget `retry.budget` describes.
    pub fn from_config(c: &RetryConfig) -> Self {
        Self::new(c.budget.ratio, c.budget.min_per_second, c.budget.window.0)
    }

    // The second 0 tag is also an empty bucket's: count from 1.
    fn second(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.epoch).as_secs() + 1
    }

    /// Counts a request that arrived at `at`.
    #[inline]
    pub fn request(&self, at: Instant) {
        self.requests.add(self.second(at));
    }

    /// Takes a retry from the budget at `now`; `false` when it is spent.
    pub fn withdraw(&self, now: Instant) -> bool {
        let second = self.second(now);
        let requests = self.requests.sum(second, self.window) as f64;
        let retries = self.retries.sum(second, self.window) as f64;
        if retries >= self.ratio * requests + self.floor {
            return false;
        }
        self.retries.add(second);
        true
    }

    /// Retries left in the window at `now` (for `/debug/services`).
    pub fn left(&self, now: Instant) -> u64 {
        let second = self.second(now);
        let requests = self.requests.sum(second, self.window) as f64;
        let retries = self.retries.sum(second, self.window) as f64;
        (self.ratio * requests + self.floor - retries).max(0.0) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(idempotent: bool, replayable: bool, attempts: u32) -> Request {
        Request {
            idempotent,
            replayable,
            attempts,
            left: Duration::from_secs(1),
        }
    }

    #[test]
    fn decisions_follow_the_policy_and_the_request() {
        let p = Policy::from_config(&RetryConfig::default());
        use Attempted::*;
        use Decision::*;
        // A failed connect sent nothing: any method, any body.
        assert_eq!(p.decide(Connect, req(false, false, 1)), Retry);
        // The rest only for idempotent requests whose body is in hand.
        assert_eq!(p.decide(Reset, req(true, true, 1)), Retry);
        assert_eq!(p.decide(Reset, req(false, true, 1)), NotRetryable);
        assert_eq!(p.decide(Reset, req(true, false, 1)), NotRetryable);
        assert_eq!(p.decide(Status(503), req(true, true, 1)), Retry);
        assert_eq!(p.decide(Status(500), req(true, true, 1)), NotRetryable);
        assert_eq!(
            p.decide(Timeout, req(true, true, 1)),
            NotRetryable,
            "not listed"
        );
        assert_eq!(p.decide(Other, req(true, true, 1)), NotRetryable);
        assert_eq!(p.decide(Status(502), req(true, true, 2)), Exhausted);
        let mut late = req(true, true, 1);
        late.left = Duration::ZERO;
        assert_eq!(p.decide(Connect, late), NoTime);
        let off = Policy::from_config(&RetryConfig {
            attempts: 1,
            ..RetryConfig::default()
        });
        assert!(!off.retries());
        assert_eq!(off.decide(Connect, req(true, true, 1)), Exhausted);
    }

    #[tokio::test(start_paused = true)]
    async fn the_budget_holds_the_ratio_plus_the_floor_over_the_window() {
        let b = Budget::new(0.2, 1, Duration::from_secs(10));
        let t0 = Instant::now();
        for _ in 0..100 {
            b.request(t0);
        }
        // 0.2 × 100 + 1/s × 10 s.
        let granted = (0..100).filter(|_| b.withdraw(t0)).count();
        assert_eq!(granted, 30);
        assert_eq!(b.left(t0), 0);
        // Still spent 9 s later: the window slides, it does not reset.
        tokio::time::advance(Duration::from_secs(9)).await;
        assert!(!b.withdraw(Instant::now()));
        // Once the first second leaves the window, its requests and retries leave with it.
        tokio::time::advance(Duration::from_secs(1)).await;
        let now = Instant::now();
        assert_eq!(b.left(now), 10);
        for _ in 0..50 {
            b.request(now);
        }
        assert_eq!((0..100).filter(|_| b.withdraw(now)).count(), 20);
    }

    #[tokio::test(start_paused = true)]
    async fn the_floor_alone_allows_a_few_retries_per_second() {
        let b = Budget::new(0.2, 2, Duration::from_secs(3));
        let mut granted = 0;
        for _ in 0..30 {
            granted += (0..10).filter(|_| b.withdraw(Instant::now())).count();
            tokio::time::advance(Duration::from_secs(1)).await;
        }
        // The window's floor (2/s × 3 s) may be spent at once; it comes back as the seconds
        // that spent it leave the window: 6 every 3 seconds.
        assert_eq!(granted, 60);
    }

    #[tokio::test(start_paused = true)]
    async fn buckets_from_an_older_lap_of_the_ring_are_not_counted() {
        let b = Budget::new(0.0, 0, Duration::from_secs(5));
        b.request(Instant::now());
        tokio::time::advance(Duration::from_secs(BUCKETS as u64)).await;
        // Same bucket, a lap later: the old request is not in the window.
        assert_eq!(b.requests.sum(b.second(Instant::now()), 5), 0);
        b.request(Instant::now());
        assert_eq!(b.requests.sum(b.second(Instant::now()), 5), 1);
    }
}
