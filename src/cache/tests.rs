//! Cache semantics on a paused tokio clock: refresh cadence and jitter bounds, expiry only when
//! idle, stale-on-error, negative caching with backoff, the guard, singleflight, and answers
//! pushed by watches.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::*;
use crate::discover::{BoxFuture, BoxStream, DiscoverError, Instance};
use crate::metrics::Metrics;
use crate::shutdown;

/// An answer of instances on 127.0.0.1 at `ports`, weight 1.
fn answer_of(ports: &[u16]) -> Resolution {
    Resolution::new(
        ports
            .iter()
            .map(|p| Instance::new(format!("127.0.0.1:{p}").parse().unwrap(), 1))
            .collect(),
    )
}

/// A resolver that answers from a script (the last answer repeats) and records call times.
struct Scripted {
    answers: Mutex<Vec<Result<Vec<u16>, String>>>,
    calls: Mutex<Vec<Instant>>,
    delay: Duration,
}

impl Scripted {
    fn new(answers: Vec<Result<Vec<u16>, String>>) -> Arc<Self> {
        Arc::new(Self {
            answers: Mutex::new(answers),
            calls: Mutex::new(Vec::new()),
            delay: Duration::ZERO,
        })
    }
    fn slow(answers: Vec<Result<Vec<u16>, String>>, delay: Duration) -> Arc<Self> {
        Arc::new(Self {
            answers: Mutex::new(answers),
            calls: Mutex::new(Vec::new()),
            delay,
        })
    }
    fn calls(&self) -> usize {
        self.calls.lock().unwrap().len()
    }
}

impl Resolver for Scripted {
    fn name(&self) -> &'static str {
        "scripted"
    }
    fn target(&self, service: &str) -> String {
        service.to_string()
    }
    fn resolve<'a>(&'a self, _target: &'a str) -> BoxFuture<'a, Result<Resolution, DiscoverError>> {
        Box::pin(async move {
            self.calls.lock().unwrap().push(Instant::now());
            tokio::time::sleep(self.delay).await;
            let answer = {
                let mut a = self.answers.lock().unwrap();
                if a.len() > 1 {
                    a.remove(0)
                } else {
                    a[0].clone()
                }
            };
            answer
                .map(|ports| answer_of(&ports))
                .map_err(DiscoverError::Unavailable)
        })
    }
}

/// Records everything published to it.
#[derive(Default)]
struct Recorder {
    /// (instances, status, whether the resolution changed) per publish.
    published: Mutex<Vec<(usize, Status, bool)>>,
    last_resolution: Mutex<Option<Arc<Resolution>>>,
    retired: AtomicUsize,
}

impl Recorder {
    fn last(&self) -> (usize, Status, bool) {
        self.published
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("something was published")
    }
    fn rebuilds(&self) -> usize {
        self.published
            .lock()
            .unwrap()
            .iter()
            .filter(|p| p.2)
            .count()
    }
}

impl Publish for Arc<Recorder> {
    fn publish(&self, resolution: &Arc<Resolution>, status: &Status) {
        let mut last = self.last_resolution.lock().unwrap();
        let changed = !last.as_ref().is_some_and(|l| Arc::ptr_eq(l, resolution));
        *last = Some(resolution.clone());
        self.published
            .lock()
            .unwrap()
            .push((resolution.instances.len(), status.clone(), changed));
    }
    fn retire(&self) {
        self.retired.fetch_add(1, Ordering::Relaxed);
    }
}

fn policy() -> Policy {
    super::policy::test_policy()
}

type Recorders = Arc<Mutex<Vec<(String, Arc<Recorder>)>>>;

struct Harness {
    cache: Cache<Arc<Recorder>>,
    recorders: Recorders,
    metrics: Metrics,
    _trigger: shutdown::Trigger,
}

impl Harness {
    fn recorder(&self, name: &str) -> Arc<Recorder> {
        self.recorders
            .lock()
            .unwrap()
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, r)| r.clone())
            .expect("target exists")
    }
}

fn harness(
    policy: Policy,
    declared: Vec<(&str, Arc<Scripted>)>,
    rule: Option<Arc<Scripted>>,
) -> Harness {
    let declared = declared
        .into_iter()
        .map(|(n, r)| (n, r as Arc<dyn Resolver>))
        .collect();
    start_cache(policy, declared, rule)
}

/// A started cache over `declared` services and an on-demand `rule` for names ending `.svc`.
fn start_cache(
    policy: Policy,
    declared: Vec<(&str, Arc<dyn Resolver>)>,
    rule: Option<Arc<Scripted>>,
) -> Harness {
    let recorders: Recorders = Arc::default();
    let r2 = recorders.clone();
    let make: MakePublisher<Arc<Recorder>> = Box::new(move |name: &str| {
        let r = Arc::new(Recorder::default());
        r2.lock().unwrap().push((name.to_string(), r.clone()));
        r
    });
    let rules = rule
        .map(|resolver| Rule {
            description: "suffix .svc".into(),
            matches: Box::new(|n: &str| n.ends_with(".svc")),
            resolver: resolver as Arc<dyn Resolver>,
            refresh_interval: None,
        })
        .into_iter()
        .collect();
    let declared = declared
        .into_iter()
        .map(|(n, resolver)| Declared {
            name: n.into(),
            resolver,
            refresh_interval: None,
        })
        .collect();
    let (trigger, stop) = shutdown::channel();
    let metrics = Metrics::new();
    let (cache, pending) = Cache::new(
        policy,
        declared,
        rules,
        make,
        metrics.discovery.clone(),
        stop,
    );
    cache.start(pending);
    Harness {
        cache,
        recorders,
        metrics,
        _trigger: trigger,
    }
}

/// Lets spawned tasks run until they block on the (paused) clock.
async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn refreshes_on_a_jittered_cadence() {
    let r = Scripted::new(vec![Ok(vec![1])]);
    let _h = harness(policy(), vec![("echo", r.clone())], None);
    for _ in 0..200 {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let calls = r.calls.lock().unwrap().clone();
    assert!(
        calls.len() >= 100 / 6 && calls.len() <= 100 / 4 + 1,
        "{} calls in 100s",
        calls.len()
    );
    let gaps: Vec<Duration> = calls.windows(2).map(|w| w[1] - w[0]).collect();
    for g in &gaps {
        assert!(
            *g >= Duration::from_secs(4) && *g <= Duration::from_secs(6),
            "gap {g:?} outside 5s ±20 %"
        );
    }
    // Jitter really spreads the refreshes: they are not all equal.
    assert!(gaps.iter().any(|g| *g != gaps[0]), "no jitter: {gaps:?}");
}

#[tokio::test(start_paused = true)]
async fn unchanged_answers_do_not_rebuild() {
    let r = Scripted::new(vec![Ok(vec![1, 2])]);
    let h = harness(policy(), vec![("echo", r.clone())], None);
    tokio::time::sleep(Duration::from_secs(60)).await;
    let rec = h.recorder("echo");
    assert!(r.calls() > 5);
    assert_eq!(rec.rebuilds(), 1, "only the first answer changes the table");
}

#[tokio::test(start_paused = true)]
async fn unused_on_demand_target_expires_even_though_refreshes_succeed() {
    let r = Scripted::new(vec![Ok(vec![1])]);
    let h = harness(policy(), vec![], Some(r.clone()));
    let t = h.cache.resolve_on_demand("a.svc").unwrap();
    t.first_resolve().await;
    let exported = String::from_utf8(h.metrics.encode()).unwrap();
    assert!(
        exported.contains(r#"waypost_discovery_instances{service="a.svc"} 1"#),
        "{exported}"
    );
    assert!(matches!(h.cache.get("a.svc"), Lookup::Found(_)));
    tokio::time::sleep(Duration::from_secs(50)).await;
    assert!(
        matches!(h.cache.get("a.svc"), Lookup::Found(_)),
        "not idle long enough yet"
    );
    tokio::time::sleep(Duration::from_secs(20)).await;
    settle().await;
    assert!(
        matches!(h.cache.get("a.svc"), Lookup::OnDemand),
        "expired and dropped"
    );
    let exported = String::from_utf8(h.metrics.encode()).unwrap();
    assert!(
        !exported.contains("a.svc"),
        "its metric series are removed:\n{exported}"
    );
    assert_eq!(h.recorder("a.svc").retired.load(Ordering::Relaxed), 1);
    let calls = r.calls();
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(r.calls(), calls, "an expired target is no longer refreshed");
}

#[tokio::test(start_paused = true)]
async fn used_on_demand_target_stays() {
    let r = Scripted::new(vec![Ok(vec![1])]);
    let h = harness(policy(), vec![], Some(r.clone()));
    let t = h.cache.resolve_on_demand("a.svc").unwrap();
    t.first_resolve().await;
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_secs(10)).await;
        if let Lookup::Found(t) = h.cache.get("a.svc") {
            t.touch();
        } else {
            panic!("a used target expired");
        }
    }
    assert_eq!(h.recorder("a.svc").retired.load(Ordering::Relaxed), 0);
}

#[tokio::test(start_paused = true)]
async fn declared_services_never_expire() {
    let r = Scripted::new(vec![Ok(vec![1])]);
    let h = harness(policy(), vec![("echo", r.clone())], None);
    tokio::time::sleep(Duration::from_secs(300)).await;
    let halfway = r.calls();
    tokio::time::sleep(Duration::from_secs(300)).await;
    settle().await;
    // Never requested, ten expire intervals long: still in the map (it could not leave the
    // declared map anyway), never retired, still refreshed, its series still exported.
    assert!(matches!(h.cache.get("echo"), Lookup::Found(_)));
    assert_eq!(h.recorder("echo").retired.load(Ordering::Relaxed), 0);
    assert!(
        r.calls() >= halfway + 40,
        "refreshes stopped: {halfway} calls after 300s, {} after 600s",
        r.calls()
    );
    let exported = String::from_utf8(h.metrics.encode()).unwrap();
    assert!(
        exported.contains(r#"waypost_discovery_instances{service="echo"} 1"#),
        "{exported}"
    );
}

#[tokio::test(start_paused = true)]
async fn failed_refresh_keeps_the_stale_table() {
    let r = Scripted::new(vec![Ok(vec![1, 2]), Err("registry down".into())]);
    let h = harness(policy(), vec![("echo", r)], None);
    tokio::time::sleep(Duration::from_secs(20)).await;
    let (instances, status, _) = h.recorder("echo").last();
    assert_eq!(instances, 2, "stale beats empty");
    assert!(status.stale);
    assert_eq!(status.state, State::Ready);
    assert!(status.consecutive_failures >= 2);
    assert_eq!(
        status.last_error.as_deref(),
        Some("registry unavailable: registry down")
    );
}

#[tokio::test(start_paused = true)]
async fn dead_resolver_is_called_a_bounded_number_of_times() {
    let r = Scripted::new(vec![Err("connection refused".into())]);
    let h = harness(policy(), vec![], Some(r.clone()));
    // 1,000 requests over 100 seconds, all for the same unresolvable name.
    for _ in 0..1000 {
        let t = match h.cache.get("dead.svc") {
            Lookup::Found(t) => t,
            Lookup::OnDemand => h.cache.resolve_on_demand("dead.svc").unwrap(),
            Lookup::Unknown => unreachable!(),
        };
        t.touch();
        t.first_resolve().await;
        let (instances, status, _) = h.recorder("dead.svc").last();
        assert_eq!(
            (instances, status.state),
            (0, State::Failed),
            "a fast, clear failure"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Backoff 1, 2, 4, 8, 16, 30, 30… (±20 %) → about 8 calls in 100 s, never one per request.
    let calls = r.calls();
    assert!(
        (5..=12).contains(&calls),
        "{calls} resolver calls for 1,000 requests"
    );
}

#[tokio::test(start_paused = true)]
async fn an_emptying_answer_waits_for_confirmation() {
    let r = Scripted::new(vec![Ok(vec![1, 2, 3]), Ok(vec![])]);
    let h = harness(
        Policy {
            jitter: 0.0,
            ..policy()
        },
        vec![("echo", r)],
        None,
    );
    let rec = h.recorder("echo");
    tokio::time::sleep(Duration::from_millis(5100)).await;
    assert_eq!(rec.last().0, 3, "first empty answer is held");
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(rec.last().0, 3, "second empty answer is held");
    assert_eq!(rec.last().1.held.as_ref().map(|h| h.confirmations), Some(2));
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(rec.last().0, 0, "third confirms it");
}

#[tokio::test(start_paused = true)]
async fn concurrent_first_requests_share_one_resolution() {
    let r = Scripted::slow(vec![Ok(vec![1])], Duration::from_millis(100));
    let h = Arc::new(harness(policy(), vec![], Some(r.clone())));
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let h = h.clone();
        tasks.push(tokio::spawn(async move {
            let t = match h.cache.get("new.svc") {
                Lookup::Found(t) => t,
                Lookup::OnDemand => h.cache.resolve_on_demand("new.svc").unwrap(),
                Lookup::Unknown => unreachable!(),
            };
            t.first_resolve().await;
            t
        }));
    }
    let mut targets = Vec::new();
    for t in tasks {
        targets.push(t.await.unwrap());
    }
    assert!(targets.iter().all(|t| Arc::ptr_eq(t, &targets[0])));
    assert_eq!(r.calls(), 1);
    assert_eq!(h.recorder("new.svc").last().0, 1);
}

/// The race singleflight exists for: two requests both see `OnDemand` before either creates
/// the target, then both call `resolve_on_demand`. The second must join the first's target
/// (found again under the write lock), not start a second one with its own refresher.
#[tokio::test(start_paused = true)]
async fn requests_that_both_saw_on_demand_share_one_target() {
    let r = Scripted::slow(vec![Ok(vec![1])], Duration::from_millis(100));
    let h = harness(policy(), vec![], Some(r.clone()));
    assert!(matches!(h.cache.get("a.svc"), Lookup::OnDemand));
    assert!(matches!(h.cache.get("a.svc"), Lookup::OnDemand));
    let first = h.cache.resolve_on_demand("a.svc").unwrap();
    let second = h.cache.resolve_on_demand("a.svc").unwrap();
    assert!(Arc::ptr_eq(&first, &second), "two targets for one name");
    first.first_resolve().await;
    second.first_resolve().await;
    settle().await;
    assert_eq!(r.calls(), 1, "one resolution for both requests");
    assert_eq!(h.recorders.lock().unwrap().len(), 1, "one publisher built");
    match h.cache.get("a.svc") {
        Lookup::Found(t) => assert!(Arc::ptr_eq(&t, &first)),
        _ => panic!("a.svc is cached"),
    }
}

#[tokio::test(start_paused = true)]
async fn names_outside_every_rule_are_refused_without_resolving() {
    let r = Scripted::new(vec![Ok(vec![1])]);
    let h = harness(policy(), vec![], Some(r.clone()));
    assert!(matches!(h.cache.get("example.com"), Lookup::Unknown));
    assert!(h.cache.resolve_on_demand("example.com").is_none());
    settle().await;
    assert_eq!(r.calls(), 0);
}

#[test]
fn outcome_all_is_in_declaration_order_which_indexes_the_metric_series() {
    for (i, outcome) in state::Outcome::ALL.iter().enumerate() {
        assert_eq!(*outcome as usize, i, "{outcome:?}");
    }
}

mod watch;
