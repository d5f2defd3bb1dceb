//! The registration lifecycle of one `register:` entry: the loop that keeps the registry in
//! step with the app's health, and never gives up.
//!
//! It reconciles two facts: whether the app is healthy (the [`super::health`] gate's verdict,
//! or always when there is no check) and what the registry may hold. Healthy and not registered:
//! register. Registered: renew every [`Registrar::renew_interval`] (jittered). Unhealthy and
//! possibly present: deregister (withdraw). A failed operation is logged, counted and retried
//! with capped, jittered exponential backoff ([`retry_delay`]), forever — Hertz and Kitex stop
//! after 5 failures and the instance silently vanishes. A renewal answered with
//! [`RegisterError::Lost`] registers again at once. A withdrawal for health is never undone by
//! the retry path: only the gate's next "healthy" registers again. On shutdown the entry is
//! deregistered (bounded), whatever the loop was doing.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tokio::sync::watch;
use tokio::time::Instant;

use super::health::{Check, CheckResult, Gate};
use super::{RegisterError, Registrar, Registration};
use crate::metrics::register::{EntryLabels, EntrySeries, RegisterMetrics, Vocabulary};
use crate::shutdown::Shutdown;

/// Where an entry stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// The app has not passed its health gate yet; nothing is registered.
    Checking,
    /// Healthy and in the registry.
    Registered,
    /// Withdrawn from the registry because the app failed its health checks.
    Withdrawn,
    /// Healthy, but the registry refuses or cannot be reached; retried with backoff.
    Failing,
    /// Removed at shutdown.
    Deregistered,
}

impl State {
    /// Every state, the values of the `state` metric label.
    pub const ALL: [State; 5] = [
        State::Checking,
        State::Registered,
        State::Withdrawn,
        State::Failing,
        State::Deregistered,
    ];

    /// The label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            State::Checking => "checking",
            State::Registered => "registered",
            State::Withdrawn => "withdrawn",
            State::Failing => "failing",
            State::Deregistered => "deregistered",
        }
    }
}

/// A registry operation, the `op` metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Register,
    Renew,
    /// Deregistration, because of health or at shutdown.
    Deregister,
}

impl Op {
    const NAMES: [&'static str; 3] = ["register", "renew", "deregister"];

    fn as_str(self) -> &'static str {
        Self::NAMES[self as usize]
    }
}

const STATES: [&str; 5] = [
    State::Checking.as_str(),
    State::Registered.as_str(),
    State::Withdrawn.as_str(),
    State::Failing.as_str(),
    State::Deregistered.as_str(),
];

/// The stage's label values, for the metrics module.
const VOCABULARY: Vocabulary = Vocabulary {
    states: &STATES,
    ops: &Op::NAMES,
    kinds: &RegisterError::KINDS,
};

/// First retry delay after a failed registry operation; doubles per failure.
const RETRY_INITIAL: Duration = Duration::from_millis(500);
/// Longest retry delay: a registry that comes back is used again within this.
const RETRY_MAX: Duration = Duration::from_secs(30);
/// Backstop on one registry operation. Registrars bound their own calls more tightly (etcd's
/// request timeout); this only keeps a hung one from stalling the loop.
const OP_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on the deregistration at shutdown; past it the entry is left to its TTL.
pub const DEREGISTER_TIMEOUT: Duration = Duration::from_secs(5);
/// Check results kept for `/debug/registrations`.
const KEPT_CHECKS: usize = 5;

/// Delay before retrying after `failures` consecutive failures (≥ 1): 500ms doubling to 30s,
/// with "equal jitter" (a uniform draw in the upper half, `unit` in [0, 1)) so a fleet that lost
/// its registry at once does not come back in lockstep. Pure, for tests.
pub fn retry_delay(failures: u32, unit: f64) -> Duration {
    let exp = failures.saturating_sub(1).min(16);
    let base = RETRY_INITIAL.saturating_mul(1 << exp).min(RETRY_MAX);
    base.mul_f64(0.5 + 0.5 * unit.clamp(0.0, 1.0))
}

/// Delay before the next renewal: `every` ±10 %, `unit` in [0, 1), so a fleet does not renew in
/// lockstep. Pure, for tests.
pub fn renew_delay(every: Duration, unit: f64) -> Duration {
    every.mul_f64(0.9 + 0.2 * unit.clamp(0.0, 1.0))
}

/// What the loop does next, from the gate's verdict and what the registry holds: `registered`
/// when the last register or renewal took, `present` when the entry may be in the registry
/// (a register was tried and no deregistration has succeeded since). Pure, for tests.
fn next_op(healthy: bool, registered: bool, present: bool) -> Option<Op> {
    match (healthy, registered, present) {
        (true, true, _) => Some(Op::Renew),
        (true, false, _) => Some(Op::Register),
        (false, _, true) => Some(Op::Deregister),
        (false, _, false) => None,
    }
}

/// A failed registry operation, as `/debug/registrations` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct OpError {
    /// When, seconds since the Unix epoch.
    pub at: f64,
    /// `register`, `renew` or `deregister`.
    pub op: &'static str,
    /// [`RegisterError::kind`].
    pub kind: &'static str,
    /// The error.
    pub message: String,
}

/// What an entry's tasks publish about it.
#[derive(Debug, Clone, Serialize)]
pub struct EntryStatus {
    /// Where it stands.
    pub state: State,
    /// Whether it has been in the registry at least once since start (readiness).
    pub ever_registered: bool,
    /// The gate's verdict (always true without a check).
    pub healthy: bool,
    /// Consecutive good checks.
    pub consecutive_good: u32,
    /// Consecutive bad checks.
    pub consecutive_bad: u32,
    /// The latest check results, oldest first.
    pub last_checks: VecDeque<CheckResult>,
    /// The last failed registry operation (kept after later successes).
    pub last_error: Option<OpError>,
    /// Times it was registered again after the registry lost it.
    pub reregistrations: u64,
}

/// One `register:` entry: what to register, where, behind which check, and its live status.
pub struct Entry {
    reg: Registration,
    registrar: Arc<dyn Registrar>,
    check: Option<Check>,
    series: EntrySeries,
    /// Written by the entry's two tasks (checker, registration loop), read by the admin
    /// endpoints; never held across an await.
    status: Mutex<EntryStatus>,
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl Entry {
    /// An entry registering `reg` with `registrar`, gated by `check` (`None`: always healthy),
    /// its series created in `metrics`.
    pub fn new(
        reg: Registration,
        registrar: Arc<dyn Registrar>,
        check: Option<Check>,
        metrics: &RegisterMetrics,
    ) -> Self {
        let address = reg.address.to_string();
        let series = metrics.entry(
            EntryLabels {
                service: &reg.service,
                address: &address,
                registry: registrar.name(),
            },
            VOCABULARY,
        );
        series.set_state(State::Checking.as_str());
        Self {
            status: Mutex::new(EntryStatus {
                state: State::Checking,
                ever_registered: false,
                healthy: check.is_none(),
                consecutive_good: 0,
                consecutive_bad: 0,
                last_checks: VecDeque::with_capacity(KEPT_CHECKS),
                last_error: None,
                reregistrations: 0,
            }),
            reg,
            registrar,
            check,
            series,
        }
    }

    /// What is registered.
    pub fn registration(&self) -> &Registration {
        &self.reg
    }

    /// The health check, when there is one.
    pub fn check(&self) -> Option<&Check> {
        self.check.as_ref()
    }

    /// The registry's name.
    pub fn registry(&self) -> &'static str {
        self.registrar.name()
    }

    /// A copy of the current status.
    pub fn status(&self) -> EntryStatus {
        self.lock().clone()
    }

    fn lock(&self) -> MutexGuard<'_, EntryStatus> {
        self.status.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set_state(&self, state: State) {
        let mut s = self.lock();
        if s.state != state {
            s.state = state;
            self.series.set_state(state.as_str());
        }
        if state == State::Registered {
            s.ever_registered = true;
        }
    }

    /// Records one health check (called by the checker).
    pub(super) fn checked(&self, outcome: Result<(), String>, latency: Duration, gate: &Gate) {
        self.series.check(outcome.is_ok(), latency);
        let mut s = self.lock();
        if s.last_checks.len() == KEPT_CHECKS {
            s.last_checks.pop_front();
        }
        s.last_checks.push_back(CheckResult {
            at: unix_now(),
            ok: outcome.is_ok(),
            latency_seconds: latency.as_secs_f64(),
            error: outcome.err(),
        });
        s.consecutive_good = gate.good();
        s.consecutive_bad = gate.bad();
        s.healthy = gate.healthy();
    }

    fn failed(&self, op: Op, e: &RegisterError, retry_in: Option<Duration>) {
        self.series.failure(op.as_str(), e.kind());
        tracing::warn!(service = %self.reg.service, address = %self.reg.address, registry = self.registry(), op = op.as_str(), kind = e.kind(), error = %e, retry_in = ?retry_in, "registry operation failed");
        self.lock().last_error = Some(OpError {
            at: unix_now(),
            op: op.as_str(),
            kind: e.kind(),
            message: e.to_string(),
        });
    }

    /// The entry as `/debug/registrations` shows it.
    pub fn to_json(&self) -> serde_json::Value {
        let status = self.status();
        serde_json::json!({
            "service": self.reg.service,
            "address": self.reg.address.to_string(),
            "weight": self.reg.weight,
            "tags": &*self.reg.tags,
            "ttl_seconds": self.reg.ttl.as_secs_f64(),
            "registry": self.registry(),
            "state": status.state,
            "ever_registered": status.ever_registered,
            "healthy": status.healthy,
            "check": self.check.as_ref().map(Check::describe),
            "consecutive_good": status.consecutive_good,
            "consecutive_bad": status.consecutive_bad,
            "last_checks": status.last_checks,
            "last_error": status.last_error,
            "reregistrations": status.reregistrations,
            "registry_state": self.registrar.describe(&self.reg),
        })
    }

    /// Runs one registry operation, bounded by [`OP_TIMEOUT`].
    async fn perform(&self, op: Op) -> Result<(), RegisterError> {
        let call = match op {
            Op::Register => self.registrar.register(&self.reg),
            Op::Renew => self.registrar.renew(&self.reg),
            Op::Deregister => self.registrar.deregister(&self.reg),
        };
        tokio::time::timeout(OP_TIMEOUT, call)
            .await
            .unwrap_or_else(|_| {
                Err(RegisterError::Unavailable(format!(
                    "no answer within {OP_TIMEOUT:?}"
                )))
            })
    }

    /// The registration loop: follows `healthy` (the gate's verdict) until `shutdown`, then
    /// deregisters within [`DEREGISTER_TIMEOUT`]. Returns whether the entry may have been in the
    /// registry at shutdown (so it was deregistered).
    pub(super) async fn run(
        self: Arc<Self>,
        mut healthy: watch::Receiver<bool>,
        mut shutdown: Shutdown,
    ) -> bool {
        let (service, address, registry) = (&self.reg.service, self.reg.address, self.registry());
        let mut registered = false;
        let mut present = false;
        let mut ever_healthy = false;
        let mut lost = false;
        let mut failures = 0u32;
        let mut checks_live = true;
        let mut is_healthy = *healthy.borrow_and_update();
        let mut op = next_op(is_healthy, registered, present);
        let mut due = Instant::now();
        loop {
            ever_healthy |= is_healthy;
            if op.is_none() {
                self.set_state(if ever_healthy {
                    State::Withdrawn
                } else {
                    State::Checking
                });
            }
            let wait = async {
                match op {
                    Some(_) => tokio::time::sleep_until(due).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                _ = shutdown.recv() => break,
                changed = healthy.changed(), if checks_live => {
                    if changed.is_err() {
                        checks_live = false; // no checker (check: none): the verdict never changes
                        continue;
                    }
                    is_healthy = *healthy.borrow_and_update();
                    let next = next_op(is_healthy, registered, present);
                    if next != op {
                        // A new goal acts at once, with a fresh backoff: the retry path of the old
                        // one (a register after the app turned unhealthy) is dropped.
                        op = next;
                        due = Instant::now();
                        failures = 0;
                    }
                    continue;
                }
                _ = wait => {}
            }
            let Some(current) = op else { continue };
            // A register may land even if it fails or is cut short: from here the entry may be there.
            present |= current == Op::Register;
            let result = tokio::select! {
                biased;
                _ = shutdown.recv() => break,
                r = self.perform(current) => r,
            };
            let now = Instant::now();
            match (current, result) {
                (Op::Register, Ok(())) => {
                    registered = true;
                    failures = 0;
                    if std::mem::take(&mut lost) {
                        self.series.reregistered();
                        self.lock().reregistrations += 1;
                        tracing::info!(%service, %address, registry, "registered again after the registry lost the entry");
                    } else {
                        tracing::info!(%service, %address, registry, "registered");
                    }
                    self.set_state(State::Registered);
                    due = now
                        + renew_delay(self.registrar.renew_interval(&self.reg), fastrand::f64());
                }
                (Op::Renew, Ok(())) => {
                    failures = 0;
                    self.set_state(State::Registered);
                    due = now
                        + renew_delay(self.registrar.renew_interval(&self.reg), fastrand::f64());
                }
                // Lost: the entry is not there, which is what deregistering wants.
                (Op::Deregister, Ok(()) | Err(RegisterError::Lost(_))) => {
                    registered = false;
                    present = false;
                    failures = 0;
                    tracing::info!(%service, %address, registry, "withdrawn: the app failed its health checks");
                    due = now;
                }
                (Op::Renew, Err(e @ RegisterError::Lost(_))) => {
                    // The registry dropped the entry: put it back now, not after a backoff.
                    self.failed(current, &e, None);
                    registered = false;
                    lost = true;
                    failures = 0;
                    due = now;
                }
                (_, Err(e)) => {
                    failures = failures.saturating_add(1);
                    let mut delay = retry_delay(failures, fastrand::f64());
                    if current == Op::Renew {
                        // Never wait longer than a renewal would: the lease may still be alive,
                        // and a later try would let it lapse once the registry answers again.
                        delay = delay.min(self.registrar.renew_interval(&self.reg));
                    }
                    self.failed(current, &e, Some(delay));
                    if current != Op::Deregister {
                        self.set_state(State::Failing);
                    }
                    due = now + delay;
                }
            }
            let healthy_before = is_healthy;
            is_healthy = *healthy.borrow_and_update();
            op = next_op(is_healthy, registered, present);
            if is_healthy != healthy_before {
                // The verdict changed while the operation ran: act on it at once.
                due = now;
                failures = 0;
            }
        }
        if present || registered {
            let result =
                tokio::time::timeout(DEREGISTER_TIMEOUT, self.registrar.deregister(&self.reg))
                    .await
                    .unwrap_or_else(|_| {
                        Err(RegisterError::Unavailable(format!(
                        "no answer within {DEREGISTER_TIMEOUT:?}; the entry expires with its TTL"
                    )))
                    });
            match result {
                Ok(()) | Err(RegisterError::Lost(_)) => {
                    tracing::info!(%service, %address, registry, "deregistered")
                }
                Err(e) => self.failed(Op::Deregister, &e, None),
            }
        }
        self.set_state(State::Deregistered);
        present || registered
    }
}

#[cfg(test)]
mod tests;
