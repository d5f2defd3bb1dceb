//! `retry:`, `outlier:`, `balancer:`, `slow_start:` and `limits:` — how forwarding survives
//! failing, slow and overloaded instances. Each is set globally and may be set again under
//! `services.<name>:`; a service's section replaces the global one whole (keys it leaves out
//! take the built-in defaults, not the global values), so what a service does can be read in
//! one place.

use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

use super::{Dur, Size};

/// The most attempts (first one included) `retry.attempts` may ask for.
pub const MAX_ATTEMPTS: u32 = 10;
/// The longest `retry.budget.window`: the budget keeps one bucket per second.
pub const MAX_BUDGET_WINDOW_SECS: u64 = 60;
/// The largest `retry.buffer`: a request body kept in memory for a replay.
pub const MAX_RETRY_BUFFER: usize = 16 * 1024 * 1024;

/// `retry:` — when a failed request is sent again, to another instance.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryConfig {
    /// Attempts per request, the first included (default 2; 1 turns retries off).
    pub attempts: u32,
    /// What is retried: `connect` (whatever the method), `reset` (the connection broke before
    /// any response byte), `timeout` (no response head in time) and response statuses; all but
    /// `connect` only for idempotent methods. Not `on`, which YAML 1.1 tools (Helm) read as
    /// `true`; the name is Envoy's.
    pub retry_on: Vec<RetryOn>,
    /// How many retries the service may spend.
    pub budget: BudgetConfig,
    /// A request body up to this size is read whole before it is sent, so it can be sent
    /// again (default 64 KiB; 0: bodies are never retried).
    pub buffer: Size,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            attempts: 2,
            retry_on: vec![
                RetryOn::Connect,
                RetryOn::Reset,
                RetryOn::Status(502),
                RetryOn::Status(503),
                RetryOn::Status(504),
            ],
            budget: BudgetConfig::default(),
            buffer: Size(64 * 1024),
        }
    }
}

/// `retry.budget:` — retries at most `ratio` × requests over `window`, plus `min_per_second`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BudgetConfig {
    /// Retries allowed per request sent (default 0.2).
    pub ratio: f64,
    /// Retries allowed per second whatever the traffic (default 10).
    pub min_per_second: u32,
    /// The sliding window the ratio is counted over (default 10s, whole seconds, 1s–60s).
    pub window: Dur,
}

impl Default for BudgetConfig {
    fn default() -> Self {
        Self {
            ratio: 0.2,
            min_per_second: 10,
            window: Dur::from_secs(10),
        }
    }
}

/// One entry of `retry.retry_on`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryOn {
    /// The TCP connect failed: nothing was sent.
    Connect,
    /// The connection closed or was reset before any byte of a response.
    Reset,
    /// No response head within `upstream.timeout`.
    Timeout,
    /// The upstream answered with this status (500–599).
    Status(u16),
}

impl<'de> Deserialize<'de> for RetryOn {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = RetryOn;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("connect, reset, timeout or a status from 500 to 599")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RetryOn, E> {
                match v {
                    "connect" => Ok(RetryOn::Connect),
                    "reset" => Ok(RetryOn::Reset),
                    "timeout" => Ok(RetryOn::Timeout),
                    _ => match v.parse::<u64>() {
                        Ok(n) => self.visit_u64(n),
                        Err(_) => Err(E::custom(format!(
                            "unknown retry condition {v:?}: expected connect, reset, timeout or a status from 500 to 599"
                        ))),
                    },
                }
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RetryOn, E> {
                match v {
                    500..=599 => Ok(RetryOn::Status(v as u16)),
                    _ => Err(E::custom(format!(
                        "status {v} is not retried: only 500 to 599 are"
                    ))),
                }
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RetryOn, E> {
                self.visit_u64(u64::try_from(v).unwrap_or(0))
            }
        }
        d.deserialize_any(V)
    }
}

/// `outlier:` — passive ejection of instances that keep failing.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OutlierConfig {
    /// Consecutive connect failures, resets and timeouts that eject (default 5; 0: never).
    pub consecutive_failures: u32,
    /// Consecutive 5xx responses that eject (default 5; 0: never).
    pub consecutive_5xx: u32,
    /// The first ejection's length (default 30s); it doubles on each repeat.
    pub base_ejection: Dur,
    /// The longest ejection (default 300s).
    pub max_ejection: Dur,
    /// The most of a service's instances ejected at once, in percent (default 50): beyond it
    /// an instance is not ejected, so traffic keeps reaching every instance left.
    pub max_ejected_percent: u32,
}

impl Default for OutlierConfig {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            consecutive_5xx: 5,
            base_ejection: Dur::from_secs(30),
            max_ejection: Dur::from_secs(300),
            max_ejected_percent: 50,
        }
    }
}

/// `balancer:` — how an instance is picked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BalancerKind {
    /// Weighted random (the alias table).
    #[default]
    Random,
    /// Smooth weighted round robin (nginx's interleaving).
    RoundRobin,
    /// Weighted power of two choices: two draws by weight, the less loaded and faster wins.
    P2c,
}

/// `limits:` (global).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// App connections open at once over every forwarding listener (default 10,000); at the
    /// cap, accepting pauses until one closes.
    pub max_connections: usize,
    /// Requests in flight per service (default: none); a service's own `limits` overrides it.
    pub max_concurrent: Option<u32>,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_connections: 10_000,
            max_concurrent: None,
        }
    }
}

/// `services.<name>.limits:`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServiceLimits {
    /// Requests in flight to this service; beyond it, 503 `overloaded` with `Retry-After`.
    pub max_concurrent: Option<u32>,
}

/// Checks `retry:` at `base`.
pub(super) fn validate_retry(r: &RetryConfig, base: &str) -> Result<(), (String, String)> {
    if !(1..=MAX_ATTEMPTS).contains(&r.attempts) {
        return Err((
            format!("{base}.attempts"),
            format!("must be between 1 and {MAX_ATTEMPTS}"),
        ));
    }
    let b = &r.budget;
    if !(0.0..=1.0).contains(&b.ratio) {
        return Err((
            format!("{base}.budget.ratio"),
            "must be between 0 and 1".into(),
        ));
    }
    let w = b.window.0;
    if w.subsec_nanos() != 0 || !(1..=MAX_BUDGET_WINDOW_SECS).contains(&w.as_secs()) {
        return Err((
            format!("{base}.budget.window"),
            format!("must be whole seconds from 1s to {MAX_BUDGET_WINDOW_SECS}s"),
        ));
    }
    if r.buffer.0 > MAX_RETRY_BUFFER {
        return Err((
            format!("{base}.buffer"),
            format!("must be at most {MAX_RETRY_BUFFER} bytes (16MiB)"),
        ));
    }
    Ok(())
}

/// Checks `outlier:` at `base`.
pub(super) fn validate_outlier(o: &OutlierConfig, base: &str) -> Result<(), (String, String)> {
    super::validate::positive(&format!("{base}.base_ejection"), Some(o.base_ejection))?;
    if o.max_ejection < o.base_ejection {
        return Err((
            format!("{base}.max_ejection"),
            format!("must be at least {base}.base_ejection"),
        ));
    }
    if o.max_ejected_percent > 100 {
        return Err((
            format!("{base}.max_ejected_percent"),
            "must be between 0 and 100".into(),
        ));
    }
    Ok(())
}

/// Checks `max_concurrent` at `key`.
pub(super) fn validate_concurrent(n: Option<u32>, key: &str) -> Result<(), (String, String)> {
    match n {
        Some(0) => Err((key.into(), "must be at least 1".into())),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{parse, rejects};
    use super::*;
    use crate::config::ServiceName;

    const SVC: &str =
        "services:\n  echo:\n    resolver: {static: {instances: [{address: 127.0.0.1:9}]}}\n";

    #[test]
    fn defaults_are_safe_without_tuning() {
        let c = parse("").unwrap();
        assert_eq!(c.retry, RetryConfig::default());
        assert_eq!(c.retry.attempts, 2);
        assert_eq!(c.outlier.max_ejected_percent, 50);
        assert_eq!(c.balancer, BalancerKind::Random);
        assert_eq!(c.slow_start, None);
        assert_eq!(c.limits.max_connections, 10_000);
        assert_eq!(c.upstream.deadline, None);
    }

    #[test]
    fn a_service_replaces_each_section_whole() {
        let text = format!(
            "retry: {{attempts: 3}}\nbalancer: p2c\n{SVC}    retry:\n      retry_on: [connect, timeout, 503]\n      buffer: 1KiB\n    balancer: round_robin\n    slow_start: 30s\n    limits: {{max_concurrent: 7}}\n    outlier: {{consecutive_5xx: 2}}\n"
        );
        let c = parse(&text).unwrap();
        assert_eq!(c.retry.attempts, 3);
        assert_eq!(c.balancer, BalancerKind::P2c);
        let s = &c.services[&ServiceName::parse("echo").unwrap()];
        let r = s.retry.as_ref().unwrap();
        assert_eq!(
            r.attempts, 2,
            "the service's section replaces the global one"
        );
        assert_eq!(
            r.retry_on,
            [RetryOn::Connect, RetryOn::Timeout, RetryOn::Status(503)]
        );
        assert_eq!(r.buffer, Size(1024));
        assert_eq!(s.balancer, Some(BalancerKind::RoundRobin));
        assert_eq!(s.slow_start, Some(Dur::from_secs(30)));
        assert_eq!(s.limits.max_concurrent, Some(7));
        assert_eq!(s.outlier.as_ref().unwrap().consecutive_5xx, 2);
    }

    #[test]
    fn rejects_bad_retry_settings() {
        rejects(
            "retry:\n  attempts: 0\n",
            2,
            "retry.attempts: must be between 1",
        );
        rejects("retry:\n  attempts: 11\n", 2, "must be between 1 and 10");
        rejects(
            "retry:\n  retry_on: [connect, 404]\n",
            2,
            "status 404 is not retried",
        );
        rejects(
            "retry:\n  retry_on: [sometimes]\n",
            2,
            "unknown retry condition",
        );
        rejects(
            "retry:\n  budget:\n    ratio: 1.5\n",
            3,
            "retry.budget.ratio: must be between 0 and 1",
        );
        rejects(
            "retry:\n  budget:\n    window: 1500ms\n",
            3,
            "retry.budget.window: must be whole seconds",
        );
        rejects(
            "retry:\n  budget:\n    window: 2m\n",
            3,
            "retry.budget.window",
        );
        rejects(
            "retry:\n  buffer: 32MiB\n",
            2,
            "retry.buffer: must be at most",
        );
        rejects("retry:\n  tries: 2\n", 2, "unknown field `tries`");
        let svc = format!("{SVC}    retry:\n      attempts: 0\n");
        rejects(&svc, 5, "services.echo.retry.attempts");
    }

    #[test]
    fn rejects_bad_outlier_settings() {
        rejects(
            "outlier:\n  base_ejection: 0s\n",
            2,
            "outlier.base_ejection: must be greater than 0",
        );
        rejects(
            "outlier:\n  base_ejection: 1m\n  max_ejection: 30s\n",
            3,
            "outlier.max_ejection: must be at least outlier.base_ejection",
        );
        rejects(
            "outlier:\n  max_ejected_percent: 101\n",
            2,
            "outlier.max_ejected_percent: must be between 0 and 100",
        );
        let svc = format!("{SVC}    outlier:\n      max_ejected_percent: 200\n");
        rejects(&svc, 5, "services.echo.outlier.max_ejected_percent");
    }

    #[test]
    fn rejects_bad_balancer_slow_start_and_limits() {
        rejects("balancer: least_conn\n", 1, "unknown variant `least_conn`");
        rejects("slow_start: 0s\n", 1, "slow_start: must be greater than 0");
        rejects(
            "limits:\n  max_connections: 0\n",
            2,
            "limits.max_connections: must be at least 1",
        );
        rejects(
            "limits:\n  max_concurrent: 0\n",
            2,
            "limits.max_concurrent: must be at least 1",
        );
        let svc = format!("{SVC}    limits:\n      max_concurrent: 0\n");
        rejects(&svc, 5, "services.echo.limits.max_concurrent");
        let svc = format!("{SVC}    limits:\n      max_connections: 5\n");
        rejects(&svc, 5, "unknown field `max_connections`");
        let svc = format!("{SVC}    slow_start: 0s\n");
        rejects(&svc, 4, "services.echo.slow_start");
        rejects(
            "upstream:\n  deadline: 0s\n",
            2,
            "upstream.deadline: must be greater than 0",
        );
    }
}
