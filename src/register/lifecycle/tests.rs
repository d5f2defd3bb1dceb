//! The lifecycle on a paused clock, against a scripted registrar: the pure schedule functions,
//! and the loop's reactions to health verdicts, registry failures, lost entries and shutdown.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};

use super::*;
use crate::register::{renew_interval, BoxFuture};

#[test]
fn retries_back_off_exponentially_with_a_cap_and_jitter() {
    let at = |n, unit| retry_delay(n, unit);
    assert_eq!(at(1, 1.0), RETRY_INITIAL);
    assert_eq!(
        at(1, 0.0),
        Duration::from_millis(250),
        "jitter spans the upper half"
    );
    assert_eq!(at(2, 1.0), Duration::from_secs(1));
    assert_eq!(at(4, 0.0), Duration::from_secs(2));
    assert_eq!(at(7, 1.0), RETRY_MAX, "capped at 30s");
    assert_eq!(
        at(u32::MAX, 0.0),
        Duration::from_secs(15),
        "no overflow, ever"
    );
    for n in 1..100 {
        assert!(at(n, 0.5) <= RETRY_MAX && at(n, 0.5) >= RETRY_INITIAL / 2);
    }
}

#[test]
fn renewals_are_jittered_around_the_interval() {
    let every = Duration::from_secs(3);
    assert_eq!(renew_delay(every, 0.0), Duration::from_millis(2700));
    assert_eq!(renew_delay(every, 0.5), every);
    assert!(renew_delay(every, 0.999_999) <= Duration::from_millis(3300));
}

#[test]
fn the_next_operation_follows_health_and_what_the_registry_holds() {
    assert_eq!(next_op(true, false, false), Some(Op::Register));
    assert_eq!(
        next_op(true, false, true),
        Some(Op::Register),
        "a failed register is retried"
    );
    assert_eq!(next_op(true, true, true), Some(Op::Renew));
    assert_eq!(next_op(false, true, true), Some(Op::Deregister), "withdraw");
    assert_eq!(
        next_op(false, false, true),
        Some(Op::Deregister),
        "a register may have landed"
    );
    assert_eq!(
        next_op(false, false, false),
        None,
        "nothing to do while unhealthy"
    );
}

/// The answers scripted for one operation, in order.
type Answers = VecDeque<Result<(), RegisterError>>;

/// A registrar whose answers the test scripts: each operation pops its next answer from a queue
/// (`Ok` when empty). Every call is logged with the (paused) time it was made.
#[derive(Default)]
struct Scripted {
    answers: Mutex<Vec<(Op, Answers)>>,
    calls: Mutex<Vec<(Op, Instant)>>,
    /// While set, every register hangs (until the loop gives up on it).
    hang: AtomicBool,
}

impl Scripted {
    fn answer(&self, op: Op, result: Result<(), RegisterError>) {
        let mut a = self.answers.lock().unwrap();
        match a.iter_mut().find(|(o, _)| *o == op) {
            Some((_, q)) => q.push_back(result),
            None => a.push((op, Answers::from([result]))),
        }
    }

    fn call(&self, op: Op) -> BoxFuture<'_, Result<(), RegisterError>> {
        self.calls.lock().unwrap().push((op, Instant::now()));
        let result = self
            .answers
            .lock()
            .unwrap()
            .iter_mut()
            .find(|(o, _)| *o == op)
            .and_then(|(_, q)| q.pop_front())
            .unwrap_or(Ok(()));
        let hang = op == Op::Register && self.hang.load(Ordering::Relaxed);
        Box::pin(async move {
            if hang {
                std::future::pending::<()>().await;
            }
            result
        })
    }

    fn ops(&self) -> Vec<Op> {
        self.calls.lock().unwrap().iter().map(|(o, _)| *o).collect()
    }

    fn times(&self, op: Op) -> Vec<Instant> {
        let calls = self.calls.lock().unwrap();
        calls
            .iter()
            .filter(|(o, _)| *o == op)
            .map(|(_, t)| *t)
            .collect()
    }
}

impl Registrar for Scripted {
    fn name(&self) -> &'static str {
        "scripted"
    }
    fn register<'a>(&'a self, _: &'a Registration) -> BoxFuture<'a, Result<(), RegisterError>> {
        self.call(Op::Register)
    }
    fn renew<'a>(&'a self, _: &'a Registration) -> BoxFuture<'a, Result<(), RegisterError>> {
        self.call(Op::Renew)
    }
    fn deregister<'a>(&'a self, _: &'a Registration) -> BoxFuture<'a, Result<(), RegisterError>> {
        self.call(Op::Deregister)
    }
}

/// A running loop over a [`Scripted`] registrar with a 9s TTL (renewals every 3s ±10 %), whose
/// health verdict the test sets.
struct Harness {
    entry: Arc<Entry>,
    registrar: Arc<Scripted>,
    health: watch::Sender<bool>,
    stop: crate::shutdown::Trigger,
    task: tokio::task::JoinHandle<bool>,
    metrics: crate::metrics::Metrics,
}

const TTL: Duration = Duration::from_secs(9);

fn unavailable() -> Result<(), RegisterError> {
    Err(RegisterError::Unavailable("connection refused".into()))
}

impl Harness {
    /// Starts the loop with the verdict `healthy`, `registrar` prepared beforehand.
    fn start(healthy: bool, registrar: Scripted) -> Self {
        let metrics = crate::metrics::Metrics::new();
        let registrar = Arc::new(registrar);
        let reg = Registration {
            service: "shop".into(),
            address: "10.0.0.7:8080".parse().unwrap(),
            weight: 10,
            tags: Default::default(),
            ttl: TTL,
        };
        let entry = Arc::new(Entry::new(reg, registrar.clone(), None, &metrics.register));
        let (health, rx) = watch::channel(healthy);
        let (stop, shutdown) = crate::shutdown::channel();
        let task = tokio::spawn(entry.clone().run(rx, shutdown));
        Self {
            entry,
            registrar,
            health,
            stop,
            task,
            metrics,
        }
    }

    fn state(&self) -> State {
        self.entry.status().state
    }

    /// Lets the paused clock run for `d` (every timer due in it fires).
    async fn run_for(&self, d: Duration) {
        tokio::time::sleep(d).await;
    }

    /// Fires shutdown and waits for the loop; the registrar and whether the loop deregistered.
    async fn shut_down_reporting(self) -> (Arc<Scripted>, bool) {
        self.stop.fire();
        let removed = self.task.await.unwrap();
        (self.registrar, removed)
    }

    async fn shut_down(self) -> Arc<Scripted> {
        self.shut_down_reporting().await.0
    }

    fn metric(&self, name: &str, label: (&str, &str)) -> f64 {
        let text = String::from_utf8(self.metrics.encode()).unwrap();
        let want = format!("{}=\"{}\"", label.0, label.1);
        text.lines()
            .filter(|l| l.starts_with(name) && l.contains(&want))
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum()
    }
}

#[tokio::test(start_paused = true)]
async fn without_a_check_it_registers_at_once_renews_and_deregisters_at_shutdown() {
    let h = Harness::start(true, Scripted::default());
    h.run_for(Duration::from_millis(1)).await;
    assert_eq!(h.state(), State::Registered);
    assert!(h.entry.status().ever_registered);
    h.run_for(Duration::from_secs(10)).await;
    let renewals = h.registrar.times(Op::Renew);
    assert!(
        (3..=4).contains(&renewals.len()),
        "renewed every 3s ±10 % over 10s: {renewals:?}"
    );
    assert_eq!(
        h.metric("waypost_register_state", ("state", "registered")),
        1.0
    );
    let r = h.shut_down().await;
    assert_eq!(r.ops().first(), Some(&Op::Register));
    assert_eq!(r.ops().last(), Some(&Op::Deregister));
}

#[tokio::test(start_paused = true)]
async fn a_failing_registry_is_retried_with_backoff_forever() {
    let r = Scripted::default();
    for _ in 0..20 {
        r.answer(Op::Register, unavailable());
    }
    let h = Harness::start(true, r);
    h.run_for(Duration::from_secs(60)).await;
    assert_eq!(h.state(), State::Failing);
    assert!(!h.entry.status().ever_registered);
    let tries = h.registrar.times(Op::Register);
    assert!(tries.len() >= 6, "keeps trying: {}", tries.len());
    // Each gap lies within the jittered backoff of the failures before it.
    for (i, pair) in tries.windows(2).enumerate() {
        let gap = pair[1] - pair[0];
        let n = i as u32 + 1;
        assert!(
            gap >= retry_delay(n, 0.0) && gap <= retry_delay(n, 1.0),
            "gap {i}: {gap:?}"
        );
    }
    assert_eq!(
        h.metric("waypost_register_failures_total", ("kind", "unavailable")),
        tries.len() as f64
    );
    // Long after a Go registrar would have given up (5 tries), the registry comes back.
    h.run_for(Duration::from_secs(600)).await;
    assert_eq!(
        h.state(),
        State::Registered,
        "registered once the registry answers"
    );
    assert!(
        h.entry.status().last_error.is_some(),
        "the last failure stays visible"
    );
    h.shut_down().await;
}

#[tokio::test(start_paused = true)]
async fn a_renewal_failure_is_retried_and_a_lost_entry_is_registered_again_at_once() {
    let r = Scripted::default();
    r.answer(Op::Renew, unavailable());
    r.answer(
        Op::Renew,
        Err(RegisterError::Lost("lease 7 not found".into())),
    );
    let h = Harness::start(true, r);
    h.run_for(Duration::from_secs(8)).await;
    let renewals = h.registrar.times(Op::Renew);
    let registers = h.registrar.times(Op::Register);
    assert!(renewals.len() >= 2, "{renewals:?}");
    assert_eq!(registers.len(), 2, "registered, then again after the loss");
    assert_eq!(registers[1], renewals[1], "at once, with no backoff");
    assert_eq!(h.state(), State::Registered);
    assert_eq!(h.entry.status().reregistrations, 1);
    assert_eq!(
        h.metric(
            "waypost_register_reregistrations_total",
            ("service", "shop")
        ),
        1.0
    );
    assert_eq!(
        h.metric("waypost_register_failures_total", ("kind", "lost")),
        1.0
    );
    h.shut_down().await;
}

#[tokio::test(start_paused = true)]
async fn failed_renewals_are_retried_no_slower_than_renewals() {
    let r = Scripted::default();
    for _ in 0..30 {
        r.answer(Op::Renew, unavailable());
    }
    let h = Harness::start(true, r);
    h.run_for(Duration::from_secs(120)).await;
    let renewals = h.registrar.times(Op::Renew);
    assert!(renewals.len() >= 30, "{}", renewals.len());
    let every = renew_interval(TTL);
    // The 30 failed ones (the last gap is a regular, jittered renewal).
    for pair in renewals[..30].windows(2) {
        assert!(
            pair[1] - pair[0] <= every,
            "{:?} > {every:?}",
            pair[1] - pair[0]
        );
    }
    assert_eq!(
        h.registrar.times(Op::Register).len(),
        1,
        "renewed, not registered again"
    );
    assert_eq!(
        h.state(),
        State::Registered,
        "back once the registry answers"
    );
    h.shut_down().await;
}

#[tokio::test(start_paused = true)]
async fn health_withdraws_and_brings_back_the_entry() {
    let h = Harness::start(false, Scripted::default());
    h.run_for(Duration::from_secs(5)).await;
    assert_eq!(h.state(), State::Checking);
    assert!(
        h.registrar.ops().is_empty(),
        "never healthy: never registered"
    );

    h.health.send_replace(true);
    h.run_for(Duration::from_millis(1)).await;
    assert_eq!(h.state(), State::Registered);
    h.health.send_replace(false);
    h.run_for(Duration::from_millis(1)).await;
    assert_eq!(h.state(), State::Withdrawn);
    assert_eq!(h.registrar.ops(), [Op::Register, Op::Deregister]);
    h.run_for(Duration::from_secs(30)).await;
    assert_eq!(h.registrar.ops().len(), 2, "no renewals while withdrawn");
    h.health.send_replace(true);
    h.run_for(Duration::from_millis(1)).await;
    assert_eq!(h.state(), State::Registered);
    let r = h.shut_down().await;
    assert_eq!(
        r.ops(),
        [Op::Register, Op::Deregister, Op::Register, Op::Deregister]
    );
}

#[tokio::test(start_paused = true)]
async fn a_withdrawn_entry_is_not_registered_again_by_the_retry_path() {
    let r = Scripted::default();
    for _ in 0..3 {
        r.answer(Op::Register, unavailable());
    }
    let h = Harness::start(true, r);
    h.run_for(Duration::from_millis(100)).await;
    assert_eq!(h.state(), State::Failing);
    // The app turns unhealthy while the register is waiting for its retry.
    h.health.send_replace(false);
    h.run_for(Duration::from_secs(120)).await;
    assert_eq!(h.state(), State::Withdrawn);
    // The failed register may have landed, so it is removed, and nothing is tried after that.
    assert_eq!(h.registrar.ops(), [Op::Register, Op::Deregister]);
    h.shut_down().await;
}

#[tokio::test(start_paused = true)]
async fn a_failed_withdrawal_is_retried() {
    let r = Scripted::default();
    r.answer(Op::Deregister, unavailable());
    let h = Harness::start(true, r);
    h.run_for(Duration::from_millis(1)).await;
    h.health.send_replace(false);
    h.run_for(Duration::from_secs(5)).await;
    assert_eq!(
        h.registrar.ops(),
        [Op::Register, Op::Deregister, Op::Deregister]
    );
    assert_eq!(h.state(), State::Withdrawn);
    let r = h.shut_down().await;
    assert_eq!(r.ops().len(), 3, "nothing left to remove at shutdown");
}

#[tokio::test(start_paused = true)]
async fn withdrawing_an_entry_the_registry_already_lost_is_done() {
    let r = Scripted::default();
    r.answer(
        Op::Deregister,
        Err(RegisterError::Lost("lease 7 not found".into())),
    );
    let h = Harness::start(true, r);
    h.run_for(Duration::from_millis(1)).await;
    h.health.send_replace(false);
    h.run_for(Duration::from_secs(60)).await;
    assert_eq!(h.state(), State::Withdrawn);
    let r = h.shut_down().await;
    assert_eq!(
        r.ops(),
        [Op::Register, Op::Deregister],
        "not retried, nothing left at shutdown"
    );
}

#[tokio::test(start_paused = true)]
async fn shutdown_abandons_a_hung_operation_and_still_deregisters() {
    let r = Scripted::default();
    r.hang.store(true, Ordering::Relaxed);
    let h = Harness::start(true, r);
    h.run_for(Duration::from_millis(1)).await;
    let (r, removed) = h.shut_down_reporting().await;
    assert_eq!(r.ops(), [Op::Register, Op::Deregister]);
    assert!(removed);
}

#[tokio::test(start_paused = true)]
async fn an_entry_never_registered_is_not_deregistered_at_shutdown() {
    let h = Harness::start(false, Scripted::default());
    h.run_for(Duration::from_secs(1)).await;
    let state = h.entry.clone();
    let (r, removed) = h.shut_down_reporting().await;
    assert!(r.ops().is_empty());
    assert!(!removed);
    assert_eq!(state.status().state, State::Deregistered);
}
