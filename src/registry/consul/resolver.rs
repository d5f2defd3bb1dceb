//! The Consul resolver: `GET /v1/health/service/<name>?passing=1[&tag=…]` through the local
//! agent, and a watch made of blocking queries on the same endpoint that delivers each changed
//! answer to the cache as it comes — no second request per change.
//!
//! The watch loop follows Consul's rules for blocking clients (`blocking.mdx`), which go-kit
//! follows and Hertz and Kitex sidestep by polling:
//!
//! - the index of each answer is the next request's `index`; one that goes **backwards**
//!   (snapshot restore, a servers' reset) resets it to 0, so the next request answers at once
//!   with a fresh index;
//! - an index of **0** is never sent back as is (a client that does busy-loops): it is raised to
//!   1, and the loop pauses [`SUSPECT_PAUSE`] first — as it does after an answer that came back
//!   early with the index unchanged;
//! - the loop is **rate-limited** by a token bucket ([`BURST`] requests, then one per
//!   [`REFILL`]), so even an agent that answers every request at once costs a bounded rate;
//! - failures back off with jitter and never end the loop; meanwhile the cache's polls report
//!   them and keep the last table.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::BoxStream;
use tokio::time::Instant;

use super::client::ConsulClient;
use super::codec::{self, Skip};
use crate::discover::{BoxFuture, DiscoverError, Instance, Resolution, Resolver};
use crate::metrics::ConsulMetrics;
use crate::registry::common::{Backoff, Reported};

/// Requests the watch may make back to back before the rate limit applies.
const BURST: u32 = 2;
/// One more request allowed per this much time: 10 a second at most, per watched service.
const REFILL: Duration = Duration::from_millis(100);
/// Pause after a suspicious answer (index 0, or the same index answered well before the wait
/// ran out), on top of the rate limit: such answers mean a broken agent or server.
pub const SUSPECT_PAUSE: Duration = Duration::from_secs(1);
/// Delay before retrying a failed query: 250 ms doubling to 15 s, ±25 %.
const BACKOFF: Backoff = Backoff {
    initial: Duration::from_millis(250),
    max: Duration::from_secs(15),
    spread: 0.25,
};

/// Resolves services from Consul's health endpoint.
pub struct ConsulResolver {
    inner: Arc<Inner>,
}

/// What the resolver and its watch streams share.
struct Inner {
    client: Arc<ConsulClient>,
    /// Service name in Consul instead of the service's own.
    service: Option<String>,
    /// `&tag=…`, encoded, when one is required.
    tag: Option<String>,
    passing_only: bool,
    metrics: ConsulMetrics,
    /// What was already logged once: skipped entries by service ID and reason, and targets
    /// whose answers the agent filtered.
    reported: Reported<(String, String)>,
}

impl ConsulResolver {
    /// A resolver reading `service`'s (default: each service's own name) instances that carry
    /// `tag`, only those passing every check when `passing_only`.
    pub fn new(
        client: Arc<ConsulClient>,
        service: Option<String>,
        tag: Option<String>,
        passing_only: bool,
        metrics: ConsulMetrics,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                client,
                service,
                tag,
                passing_only,
                metrics,
                reported: Reported::new(),
            }),
        }
    }
}

impl Inner {
    /// One query of `target` from `index` (0: answer at once): the answer and its index.
    async fn query(
        &self,
        target: &str,
        index: u64,
    ) -> Result<(Resolution, Option<u64>), DiscoverError> {
        let reply = self.client.health(target, index).await?;
        if reply.filtered && self.report(target, "acl") {
            tracing::warn!(target, "the Consul agent left out entries the token may not read: give registry.consul.token service:read on them");
        }
        let entries = codec::decode_health(&reply.body).map_err(|e| {
            DiscoverError::Unavailable(format!(
                "Consul health answer for {target} is not valid JSON: {e}"
            ))
        })?;
        let mut entries = entries;
        // One instance per address, the lowest service ID's, whatever order the agent used.
        entries.sort_by(|a, b| a.service.id.cmp(&b.service.id));
        let mut seen = HashSet::with_capacity(entries.len());
        let mut instances: Vec<Instance> = Vec::with_capacity(entries.len());
        for entry in &entries {
            match codec::instance(entry) {
                Ok(i) => {
                    if seen.insert(i.address) {
                        instances.push(i);
                    }
                }
                // Expected without `?passing`: not worth a word.
                Err(Skip::Critical) => {}
                Err(skip) => self.skipped(target, &entry.service.id, &skip),
            }
        }
        let mut res = Resolution::new(instances);
        res.revision = reply.index.filter(|i| *i > 0);
        Ok((res, reply.index))
    }

    /// Counts an entry that names no usable address; logs it once.
    fn skipped(&self, target: &str, id: &str, why: &Skip) {
        self.metrics.skipped_entries.inc();
        let reason = match why {
            Skip::Address(a) => format!("address {a:?} is not an IP address"),
            Skip::Port(p) => format!("port {p} is not a port"),
            Skip::Critical => return,
        };
        if self.report(id, &reason) {
            tracing::warn!(target, service_id = id, %reason, "skipping a Consul entry waypost cannot connect to");
        }
    }

    /// Whether `(what, why)` is new, so worth a log line; remembers it.
    fn report(&self, what: &str, why: &str) -> bool {
        self.reported
            .first(&(what.to_string(), why.to_string()), ())
    }
}

impl Resolver for ConsulResolver {
    fn name(&self) -> &'static str {
        "consul"
    }

    /// `<name>[?passing=1][&tag=…]`: the health endpoint's path and query, encoded.
    fn target(&self, service: &str) -> String {
        let name = codec::encode(self.inner.service.as_deref().unwrap_or(service));
        let mut query = Vec::new();
        if self.inner.passing_only {
            query.push("passing=1".to_string());
        }
        if let Some(tag) = &self.inner.tag {
            query.push(format!("tag={}", codec::encode(tag)));
        }
        if query.is_empty() {
            name
        } else {
            format!("{name}?{}", query.join("&"))
        }
    }

    fn resolve<'a>(&'a self, target: &'a str) -> BoxFuture<'a, Result<Resolution, DiscoverError>> {
        Box::pin(async move { Ok(self.inner.query(target, 0).await?.0) })
    }

    fn watch(&self, target: &str, since: Option<u64>) -> Option<BoxStream<'static, Resolution>> {
        let watch = Watch {
            inner: self.inner.clone(),
            target: target.to_string(),
            index: since.unwrap_or(0),
            last: None,
            bucket: Bucket::new(Instant::now()),
            hold_until: None,
            failures: 0,
        };
        Some(Box::pin(futures_util::stream::unfold(
            watch,
            |mut w| async move {
                let next = w.next().await;
                Some((next, w))
            },
        )))
    }
}

/// One watched target: the state behind the stream [`ConsulResolver::watch`] returns. Dropping
/// it (the stream) cancels the query in flight.
struct Watch {
    inner: Arc<Inner>,
    target: String,
    /// The index of the next request (0: answer at once).
    index: u64,
    /// The instances last yielded: an answer with the same ones is not yielded again.
    last: Option<Vec<Instance>>,
    bucket: Bucket,
    /// No request before this (after a suspicious answer).
    hold_until: Option<Instant>,
    /// Failed queries in a row, for the backoff.
    failures: u32,
}

impl Watch {
    /// The next answer whose instances differ from the last one yielded. Never gives up.
    async fn next(&mut self) -> Resolution {
        loop {
            let now = Instant::now();
            let mut start = now + self.bucket.take(now);
            if let Some(hold) = self.hold_until.take() {
                start = start.max(hold);
            }
            if self.failures > 0 {
                start = start.max(now + BACKOFF.delay(self.failures, fastrand::f64()));
            }
            tokio::time::sleep_until(start).await;
            let asked = self.index;
            let sent = Instant::now();
            let (mut res, got) = match self.inner.query(&self.target, asked).await {
                Ok(answer) => answer,
                Err(e) => {
                    self.failures = self.failures.saturating_add(1);
                    tracing::warn!(target = %self.target, error = %e, failures = self.failures,
                        "Consul blocking query failed; retrying with backoff (polls keep the last table)");
                    continue;
                }
            };
            self.failures = 0;
            let step = next_step(asked, got, sent.elapsed(), self.inner.client.wait());
            if let Some(reset) = step.reset {
                self.inner
                    .metrics
                    .index_resets
                    .with_label_values(&[reset.as_str()])
                    .inc();
                tracing::warn!(target = %self.target, asked, index = ?got, reason = reset.as_str(),
                    "Consul index not usable for blocking; reset");
                // Not comparable with the indexes the cache has seen.
                res.revision = None;
            }
            self.index = step.index;
            if step.pause {
                self.hold_until = Some(Instant::now() + SUSPECT_PAUSE);
            }
            // After the index went backwards the answer goes to the cache even when its
            // instances are the same: its revision-less answer is what lets the cache take the
            // lower indexes that follow, instead of ignoring them as older than what it has.
            let backwards = step.reset == Some(Reset::Backwards);
            if backwards || self.last.as_ref() != Some(&res.instances) {
                self.last = Some(res.instances.clone());
                return res;
            }
        }
    }
}

/// Why the index of the next request was reset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reset {
    /// The answer's index was lower than the one asked for.
    Backwards,
    /// The answer's index was 0 or missing.
    Zero,
}

impl Reset {
    /// The `reason` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Reset::Backwards => "backwards",
            Reset::Zero => "zero",
        }
    }
}

/// What to do after an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    /// The index of the next request.
    pub index: u64,
    /// Whether (and why) it was reset.
    pub reset: Option<Reset>,
    /// Whether to pause [`SUSPECT_PAUSE`] before the next request.
    pub pause: bool,
}

/// The next request's index after asking from `asked` and getting index `got` back after
/// `elapsed`, the blocking wait being `wait` (`blocking.mdx`'s rules). Pure, for tests.
pub fn next_step(asked: u64, got: Option<u64>, elapsed: Duration, wait: Duration) -> Step {
    match got {
        // "It is always safe to use an index of 1 to wait for updates": never 0 again, which
        // would answer at once, over and over.
        None | Some(0) => Step {
            index: 1,
            reset: Some(Reset::Zero),
            pause: true,
        },
        Some(i) if i < asked => Step {
            index: 0,
            reset: Some(Reset::Backwards),
            pause: false,
        },
        Some(i) => Step {
            index: i,
            reset: None,
            // Unchanged long before the wait ran out: not a timeout, so something is off.
            pause: asked > 0 && i == asked && elapsed < wait / 2,
        },
    }
}

/// A token bucket: [`BURST`] requests at once, then one per [`REFILL`].
#[derive(Debug, Clone)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn new(now: Instant) -> Self {
        Self {
            tokens: f64::from(BURST),
            at: now,
        }
    }

    /// Takes a token; how long to wait before using it (zero when one was there).
    fn take(&mut self, now: Instant) -> Duration {
        let refilled = now.saturating_duration_since(self.at).as_secs_f64() / REFILL.as_secs_f64();
        self.tokens = (self.tokens + refilled).min(f64::from(BURST)) - 1.0;
        self.at = now;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            REFILL.mul_f64(-self.tokens)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WAIT: Duration = Duration::from_secs(300);

    #[test]
    fn the_index_moves_forward_resets_when_it_goes_back_and_is_never_zero() {
        let step = |asked, got, secs| next_step(asked, got, Duration::from_secs(secs), WAIT);
        // First request, then a change after a while.
        assert_eq!(
            step(0, Some(7), 0),
            Step {
                index: 7,
                reset: None,
                pause: false
            }
        );
        assert_eq!(
            step(7, Some(9), 30),
            Step {
                index: 9,
                reset: None,
                pause: false
            }
        );
        // The wait ran out with no change: ask again at once.
        assert_eq!(
            step(9, Some(9), 300),
            Step {
                index: 9,
                reset: None,
                pause: false
            }
        );
        // The same index answered early: suspicious, pause.
        assert_eq!(
            step(9, Some(9), 1),
            Step {
                index: 9,
                reset: None,
                pause: true
            }
        );
        // Backwards: start over from 0 (answers at once with a fresh index).
        assert_eq!(
            step(9, Some(3), 1),
            Step {
                index: 0,
                reset: Some(Reset::Backwards),
                pause: false
            }
        );
        // Zero or missing: 1, and pause.
        for got in [Some(0), None] {
            assert_eq!(
                step(9, got, 1),
                Step {
                    index: 1,
                    reset: Some(Reset::Zero),
                    pause: true
                }
            );
            assert_eq!(
                step(0, got, 0),
                Step {
                    index: 1,
                    reset: Some(Reset::Zero),
                    pause: true
                }
            );
        }
    }

    #[test]
    fn the_bucket_allows_a_burst_then_one_per_refill() {
        let t0 = Instant::now();
        let mut b = Bucket::new(t0);
        assert_eq!(b.take(t0), Duration::ZERO);
        assert_eq!(b.take(t0), Duration::ZERO);
        let third = b.take(t0);
        assert!(third > REFILL * 9 / 10 && third <= REFILL, "{third:?}");
        // A second later the bucket is full again, no fuller.
        let later = t0 + Duration::from_secs(1);
        assert_eq!(b.take(later), Duration::ZERO);
        assert_eq!(b.take(later), Duration::ZERO);
        assert!(b.take(later) > Duration::ZERO);
        // Sustained: n requests take at least (n - BURST) refills.
        let mut b = Bucket::new(t0);
        let mut at = t0;
        for _ in 0..102 {
            at += b.take(at);
        }
        let spent = at - t0;
        assert!(spent >= REFILL * 99 && spent <= REFILL * 101, "{spent:?}");
    }

    #[test]
    fn backoff_doubles_caps_and_spreads() {
        let backoff = |failures, unit| BACKOFF.delay(failures, unit);
        assert_eq!(backoff(1, 0.5), Duration::from_millis(250));
        assert_eq!(backoff(2, 0.5), Duration::from_millis(500));
        assert_eq!(backoff(10, 0.5), Duration::from_secs(15));
        assert_eq!(backoff(u32::MAX, 0.5), Duration::from_secs(15));
        assert!(backoff(1, 0.0) >= Duration::from_millis(187));
        assert!(backoff(1, 0.999) <= Duration::from_millis(313));
    }
}
