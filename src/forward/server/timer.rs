//! The waits of an app connection that must cost (almost) nothing per request: its deadlines,
//! one timer per connection moved only when it fires ([`Deadline`]), and the drain signal,
//! polled only when it changed ([`Drain`]).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::time::{Instant, Sleep};

use crate::shutdown::Shutdown;

/// A per-connection timer, armed once and moved only when it fires.
///
/// Arming a tokio timer for every request costs about 1,500 instructions (callgrind). Each
/// wait's deadline is nearly always later than the one before it, so the timer is left where
/// it is; when it fires before the current deadline, it is moved there. That is one timer
/// operation per timeout period instead of one per request. The timer is allocated at the
/// first wait, not with the connection.
///
/// A `Deadline` belongs to one connection, so to one task: once its timer has been polled (and
/// so holds the task's waker), later waits only check whether it fired — an atomic load —
/// rather than polling it again.
#[derive(Default)]
pub(super) struct Deadline {
    sleep: Option<Pin<Box<Sleep>>>,
    /// The timer holds this task's waker for its current deadline.
    registered: bool,
}

impl Deadline {
    /// `Ready` once `at` has passed; otherwise registers `cx` to be woken by then.
    pub fn poll_at(&mut self, cx: &mut Context<'_>, at: Instant) -> Poll<()> {
        let sleep = match &mut self.sleep {
            Some(sleep) => {
                if sleep.deadline() > at {
                    sleep.as_mut().reset(at);
                    self.registered = false;
                }
                sleep
            }
            None => self.sleep.insert(Box::pin(tokio::time::sleep_until(at))),
        };
        if self.registered && !sleep.is_elapsed() {
            return Poll::Pending;
        }
        while sleep.as_mut().poll(cx).is_ready() {
            if Instant::now() >= at {
                self.registered = false;
                return Poll::Ready(());
            }
            sleep.as_mut().reset(at);
        }
        self.registered = true;
        Poll::Pending
    }

    /// `fut`'s output, or `None` if `at` passes first. (`fut` comes pinned, so a large future
    /// is not copied into this one.)
    pub async fn within<F: Future>(
        &mut self,
        at: Instant,
        mut fut: Pin<&mut F>,
    ) -> Option<F::Output> {
        std::future::poll_fn(|cx| {
            if let Poll::Ready(out) = fut.as_mut().poll(cx) {
                return Poll::Ready(Some(out));
            }
            self.poll_at(cx, at).map(|()| None)
        })
        .await
    }
}

/// The drain signal as a connection polls it while idle: the `recv()` future is polled once to
/// register the task's waker, and after that only when the watch says something changed (an
/// atomic load), not on every request.
pub(super) struct Drain {
    recv: Pin<Box<dyn Future<Output = ()> + Send>>,
    probe: Shutdown,
    armed: bool,
}

impl Drain {
    /// Watches `drain`.
    pub fn new(drain: Shutdown) -> Self {
        let probe = drain.clone();
        let mut drain = drain;
        Self {
            recv: Box::pin(async move { drain.recv().await }),
            probe,
            armed: false,
        }
    }

    /// `Ready` once the drain has fired.
    pub fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.armed && !self.probe.changed() {
            return Poll::Pending;
        }
        self.armed = true;
        self.recv.as_mut().poll(cx)
    }

    /// Completes once the drain has fired.
    pub async fn fired(&mut self) {
        std::future::poll_fn(|cx| self.poll(cx)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::pin::pin;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn the_deadline_cuts_each_wait_off_at_its_own_time() {
        let mut d = Deadline::default();
        let secs = Duration::from_secs;
        let start = Instant::now();
        let done = async { 7 };
        assert_eq!(d.within(start + secs(1), pin!(done)).await, Some(7));
        // A later deadline: the timer, left at the first one, fires early and is moved on.
        let at = start + secs(3);
        let never = std::future::pending::<()>();
        assert_eq!(d.within(at, pin!(never)).await, None);
        assert_eq!(Instant::now(), at);
        // A wait that finishes leaves the timer at its deadline (10 s from now)...
        let t = Instant::now();
        let quick = tokio::time::sleep(secs(1));
        assert_eq!(d.within(t + secs(10), pin!(quick)).await, Some(()));
        // ...and an earlier deadline than the timer's moves it back, not waiting for it.
        let at = Instant::now() + secs(2);
        let never = std::future::pending::<()>();
        assert_eq!(d.within(at, pin!(never)).await, None);
        assert_eq!(Instant::now(), at);
    }

    #[tokio::test]
    async fn the_drain_is_seen_once_fired() {
        let (trigger, drain) = crate::shutdown::channel();
        let mut d = Drain::new(drain);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(d.poll(&mut cx).is_pending());
        assert!(
            d.poll(&mut cx).is_pending(),
            "polled again only after a change"
        );
        trigger.fire();
        d.fired().await;
    }
}
