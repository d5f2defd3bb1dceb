//! Answers pushed by a resolver's watch: applied without resolving, counted like resolved ones,
//! held by the guard like them, ignored when behind the applied one; polling goes on beside the
//! watch, and a watch that ends falls back to polling until the next resolve reopens one.

use super::*;

/// A resolver whose `resolve` answers from a script at a revision the test sets, and whose
/// `watch` streams whatever the test pushes into the latest watch opened.
struct Pushing {
    inner: Arc<Scripted>,
    revision: std::sync::atomic::AtomicU64,
    /// The sending side of every watch opened so far; dropping one ends its stream.
    watches: Mutex<Vec<Option<tokio::sync::mpsc::UnboundedSender<Resolution>>>>,
}

impl Pushing {
    fn new(answers: Vec<Result<Vec<u16>, String>>, revision: u64) -> Arc<Self> {
        Arc::new(Self {
            inner: Scripted::new(answers),
            revision: revision.into(),
            watches: Mutex::new(Vec::new()),
        })
    }
    /// Pushes instances on `ports` at `revision` into the latest watch.
    fn push(&self, ports: &[u16], revision: u64) {
        let mut res = answer_of(ports);
        res.revision = Some(revision);
        let watches = self.watches.lock().unwrap();
        let tx = watches
            .last()
            .and_then(Option::as_ref)
            .expect("a watch is open");
        tx.send(res).unwrap();
    }
    /// Ends the latest watch's stream.
    fn end_watch(&self) {
        self.watches.lock().unwrap().last_mut().unwrap().take();
    }
    fn watches_opened(&self) -> usize {
        self.watches.lock().unwrap().len()
    }
}

impl Resolver for Pushing {
    fn name(&self) -> &'static str {
        "pushing"
    }
    fn target(&self, service: &str) -> String {
        service.to_string()
    }
    fn resolve<'a>(&'a self, target: &'a str) -> BoxFuture<'a, Result<Resolution, DiscoverError>> {
        Box::pin(async move {
            let mut res = self.inner.resolve(target).await?;
            res.revision = Some(self.revision.load(Ordering::Relaxed));
            Ok(res)
        })
    }
    fn watch(&self, _target: &str, _since: Option<u64>) -> Option<BoxStream<'static, Resolution>> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        self.watches.lock().unwrap().push(Some(tx));
        Some(Box::pin(futures_util::stream::unfold(
            rx,
            |mut rx| async move { rx.recv().await.map(|r| (r, rx)) },
        )))
    }
}

/// A cache with one declared service `echo` resolved by `r`.
fn pushing_harness(r: &Arc<Pushing>) -> Harness {
    start_cache(
        policy(),
        vec![("echo", r.clone() as Arc<dyn Resolver>)],
        None,
    )
}

#[tokio::test(start_paused = true)]
async fn pushed_answers_are_applied_without_resolving_and_polling_goes_on() {
    let r = Pushing::new(vec![Ok(vec![1])], 10);
    let h = pushing_harness(&r);
    let rec = h.recorder("echo");
    settle().await;
    assert_eq!((r.inner.calls(), rec.last().0), (1, 1));
    assert_eq!(r.watches_opened(), 1, "watched once ready");
    r.push(&[1, 2], 11);
    settle().await;
    assert_eq!(rec.last().0, 2, "the pushed answer is the table");
    assert_eq!(rec.last().1.revision, Some(11));
    assert_eq!(r.inner.calls(), 1, "no second request for a pushed change");
    // The poll still comes at its cadence (5s ±20 %), and the watch stays open across it.
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert_eq!(r.inner.calls(), 2);
    assert_eq!(r.watches_opened(), 1);
    let exported = String::from_utf8(h.metrics.encode()).unwrap();
    assert!(
        exported.contains(r#"waypost_discovery_refresh_total{result="changed",service="echo"} 3"#),
        "a pushed answer is counted like a resolved one:\n{exported}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_pushed_answer_behind_the_applied_one_is_ignored() {
    let r = Pushing::new(vec![Ok(vec![1, 2])], 10);
    let h = pushing_harness(&r);
    let rec = h.recorder("echo");
    settle().await;
    r.push(&[3], 9);
    settle().await;
    assert_eq!(
        rec.last().0,
        2,
        "revision 9 is older than the 10 being served"
    );
    assert_eq!(rec.published.lock().unwrap().len(), 1, "nothing published");
    r.push(&[1, 2, 3], 12);
    settle().await;
    assert_eq!(rec.last().0, 3);
}

#[tokio::test(start_paused = true)]
async fn pushed_answers_pass_the_guard() {
    let r = Pushing::new(vec![Ok(vec![1, 2, 3])], 10);
    let h = pushing_harness(&r);
    let rec = h.recorder("echo");
    settle().await;
    r.push(&[], 11);
    settle().await;
    assert_eq!(
        rec.last().0,
        3,
        "an emptying push is held like an emptying resolve"
    );
    assert_eq!(rec.last().1.held.as_ref().map(|h| h.confirmations), Some(1));
}

#[tokio::test(start_paused = true)]
async fn a_watch_that_ends_leaves_polling_until_the_next_resolve_then_reopens() {
    let r = Pushing::new(vec![Ok(vec![1])], 10);
    let _h = pushing_harness(&r);
    settle().await;
    assert_eq!(r.watches_opened(), 1);
    r.end_watch();
    settle().await;
    assert_eq!(r.watches_opened(), 1, "not reopened at once (no busy loop)");
    assert_eq!(r.inner.calls(), 1, "an ended watch is not a change");
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert_eq!(r.inner.calls(), 2, "polled meanwhile");
    assert_eq!(
        r.watches_opened(),
        2,
        "and watched again after that resolve"
    );
}
