//! A service as forwarding sees it: its policy from the config ([`ServicePolicy`]) and the
//! handle every request to it uses ([`ServiceHandle`]): the balancer the cache publishes into,
//! the pool, the timeouts, the retry policy and budget, the concurrency cap and the metrics.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::attempt::Slot;
use super::client::SendError;
use super::{retry, ForwardError, Pool};
use crate::balance::{self, Balancer, Outlier};
use crate::cache::{Publish, Status};
use crate::config::{BalancerKind, Config, OutlierConfig, RetryConfig, ServiceConfig};
use crate::discover::Resolution;
use crate::metrics::{ForwardMetrics, ServiceMetrics, ServiceResilience};

/// How one service is forwarded to, from the config: the global sections, or the service's
/// own where it sets them.
#[derive(Clone)]
pub struct ServicePolicy {
    /// Time allowed from request sent to response headers, per attempt.
    pub timeout: Duration,
    /// The total time a request may take, retries included.
    pub deadline: Option<Duration>,
    /// The upstream pool (the service's own when it overrides the connect timeout).
    pub pool: Pool,
    /// `retry:`.
    pub retry: RetryConfig,
    /// `outlier:`.
    pub outlier: OutlierConfig,
    /// `balancer:`.
    pub balancer: BalancerKind,
    /// `slow_start:`.
    pub slow_start: Option<Duration>,
    /// `limits.max_concurrent`.
    pub max_concurrent: Option<u32>,
    /// A declared service (its instances get their own series).
    pub declared: bool,
}

impl ServicePolicy {
    /// The policy of `service` (`None`: an on-demand target, which takes the globals).
    pub fn from_config(config: &Config, service: Option<&ServiceConfig>, pool: Pool) -> Self {
        let up = service.map(|s| &s.upstream);
        Self {
            timeout: up
                .and_then(|u| u.timeout)
                .unwrap_or(config.upstream.timeout)
                .0,
            deadline: up
                .and_then(|u| u.deadline)
                .or(config.upstream.deadline)
                .map(|d| d.0),
            pool,
            retry: service
                .and_then(|s| s.retry.clone())
                .unwrap_or_else(|| config.retry.clone()),
            outlier: service
                .and_then(|s| s.outlier.clone())
                .unwrap_or_else(|| config.outlier.clone()),
            balancer: service.and_then(|s| s.balancer).unwrap_or(config.balancer),
            slow_start: service
                .and_then(|s| s.slow_start)
                .or(config.slow_start)
                .map(|d| d.0),
            max_concurrent: service
                .and_then(|s| s.limits.max_concurrent)
                .or(config.limits.max_concurrent),
            declared: service.is_some(),
        }
    }
}

/// Everything forwarding keeps per service: its balancer and the handles a request needs.
/// The cache creates one per target and publishes into it.
pub struct ServiceHandle {
    /// The service's table, published by the cache.
    pub balancer: Balancer,
    pub(super) metrics: ServiceMetrics,
    pub(super) resilience: ServiceResilience,
    pub(super) family: ForwardMetrics,
    pub(super) name: Arc<str>,
    /// Time allowed from request sent to response headers, per attempt.
    pub(super) timeout: Duration,
    /// The total time a request may take, retries included.
    pub(super) deadline: Option<Duration>,
    /// The upstream pool for this service (its own when it overrides the connect timeout).
    pub(super) pool: Pool,
    pub(super) retry: retry::Policy,
    pub(super) budget: retry::Budget,
    pub(super) max_concurrent: Option<u32>,
    /// Requests in flight (bounded by `max_concurrent`).
    pub(super) in_flight: AtomicU32,
}

impl ServiceHandle {
    /// A handle for `name` with nothing published yet.
    pub fn new(name: &str, family: &ForwardMetrics, policy: ServicePolicy) -> Self {
        let resilience = family.resilience.service(name);
        let settings = balance::Settings {
            kind: policy.balancer,
            outlier: Outlier::from_config(&policy.outlier),
            slow_start: policy.slow_start,
            metrics: policy
                .declared
                .then(|| (name.to_string(), family.resilience.clone())),
            series: Some(resilience.clone()),
        };
        Self {
            balancer: Balancer::with_settings(settings),
            metrics: family.service(name),
            resilience,
            family: family.clone(),
            name: name.into(),
            timeout: policy.timeout,
            deadline: policy.deadline,
            pool: policy.pool,
            retry: retry::Policy::from_config(&policy.retry),
            budget: retry::Budget::from_config(&policy.retry),
            max_concurrent: policy.max_concurrent,
            in_flight: AtomicU32::new(0),
        }
    }

    /// Requests in flight now.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Takes a slot for a request that started at `started` (and counts it for the retry
    /// budget), or refuses it: `limits.max_concurrent` are in flight.
    pub(super) fn admit(&self, started: Instant) -> Result<Slot<'_>, ForwardError> {
        if self.retry.retries() {
            self.budget.request(started);
        }
        Slot::take(&self.in_flight, self.max_concurrent)
            .ok_or_else(|| ForwardError::Overloaded(self.name.to_string()))
    }

    /// The error for a request sent to `addr` that got no response.
    pub(super) fn failed(&self, addr: SocketAddr, source: SendError) -> ForwardError {
        let service = self.name.to_string();
        match source {
            SendError::Request(e) => e.into(),
            source if source.is_connect() => {
                self.metrics.connect_errors.inc();
                ForwardError::UpstreamConnect {
                    service,
                    addr,
                    source,
                }
            }
            source => ForwardError::Upstream {
                service,
                addr,
                source,
            },
        }
    }

    /// Counts a forwarded response with `status`, whose head came `took` after the request.
    pub(super) fn record(&self, status: u16, took: Duration) {
        self.metrics.count(status);
        self.metrics.duration.observe(took.as_secs_f64());
    }
}

impl Publish for ServiceHandle {
    fn publish(&self, resolution: &Arc<Resolution>, status: &Status) {
        if let Some(tls) = self.pool.connector() {
            tls.learn(&self.name, &resolution.instances);
        }
        self.balancer.publish(resolution, status);
    }

    fn retire(&self) {
        self.family.remove(&self.name);
    }
}
