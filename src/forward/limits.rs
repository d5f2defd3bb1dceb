//! Limits on app connections: at most `limits.max_connections` open over every forwarding
//! listener at once (the accept loops take a slot before accepting, so at the cap they pause
//! and the kernel's backlog holds new connections until one closes — nothing is refused), and
//! a file-descriptor limit raised at start-up so the cap, not `EMFILE`, is what stops them.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Slots for open app connections, shared by every forwarding listener.
#[derive(Clone)]
pub struct ConnectionSlots {
    slots: Arc<Semaphore>,
    max: usize,
}

impl ConnectionSlots {
    /// `max` slots.
    pub fn new(max: usize) -> Self {
        let max = max.clamp(1, Semaphore::MAX_PERMITS);
        Self {
            slots: Arc::new(Semaphore::new(max)),
            max,
        }
    }

    /// A slot for the next connection, waiting while all are taken.
    pub async fn take(&self) -> OwnedSemaphorePermit {
        if self.slots.available_permits() == 0 {
            tracing::warn!(
                max_connections = self.max,
                "connection limit reached: accepting paused until a connection closes"
            );
        }
        // The semaphore is never closed.
        match self.slots.clone().acquire_owned().await {
            Ok(p) => p,
            Err(_) => unreachable!("the connection semaphore is never closed"),
        }
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.max - self.slots.available_permits()
    }
}

/// Raises the soft limit on open files to the hard limit, so a flood of connections meets
/// `limits.max_connections` (accepting pauses) before the process runs out of descriptors.
/// Returns the (soft) limit in force afterwards.
pub fn raise_fd_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit/setrlimit only read and write the struct passed by pointer.
        unsafe {
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
                return None;
            }
            if lim.rlim_cur < lim.rlim_max {
                let before = lim.rlim_cur;
                let raised = libc::rlimit {
                    rlim_cur: lim.rlim_max,
                    rlim_max: lim.rlim_max,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                    tracing::info!(
                        from = before,
                        to = lim.rlim_max,
                        "raised the open-file limit"
                    );
                    return Some(lim.rlim_max);
                }
            }
        }
        Some(lim.rlim_cur)
    }
    #[cfg(not(unix))]
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn at_the_cap_taking_a_slot_waits_for_one_to_come_back() {
        let slots = ConnectionSlots::new(2);
        let a = slots.take().await;
        let _b = slots.take().await;
        assert_eq!(slots.open(), 2);
        let waiting = tokio::spawn({
            let slots = slots.clone();
            async move { slots.take().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        drop(a);
        let _c = waiting.await.unwrap();
        assert_eq!(slots.open(), 2);
    }

    #[test]
    fn the_fd_limit_is_raised_to_the_hard_limit() {
        let now = raise_fd_limit().unwrap();
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: as above.
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
        assert_eq!(lim.rlim_cur, lim.rlim_max);
        assert_eq!(now, lim.rlim_cur);
    }
}
