//! The one shutdown primitive: a `watch` channel fanned out to every task.
//!
//! [`Trigger`] is held by `app.rs`, which fires it once; each task holds a [`Shutdown`] and puts
//! `shutdown.recv()` in the same `select!` as its timer. Waypost shuts down in stages (fail
//! `/ready`, stop accepting, drain, stop refreshers and pool sweepers, stop the admin listener),
//! so `app.rs` keeps one trigger per stage rather than one global flag.

use tokio::sync::watch;

/// Fires shutdown for every [`Shutdown`] made from it. Dropping it also fires.
#[derive(Debug)]
pub struct Trigger {
    tx: watch::Sender<bool>,
}

/// Listens for shutdown. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Shutdown {
    rx: watch::Receiver<bool>,
}

/// A new trigger and its first listener.
pub fn channel() -> (Trigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (Trigger { tx }, Shutdown { rx })
}

impl Trigger {
    /// Fires shutdown. Idempotent.
    pub fn fire(&self) {
        self.tx.send_replace(true);
    }

    /// Another listener.
    pub fn subscribe(&self) -> Shutdown {
        Shutdown {
            rx: self.tx.subscribe(),
        }
    }
}

impl Shutdown {
    /// Completes once shutdown has fired (at once if it already has, or if the trigger is gone).
    pub async fn recv(&mut self) {
        // An error means the trigger was dropped, which also means shut down.
        let _ = self.rx.wait_for(|fired| *fired).await;
    }

    /// Whether the trigger may have fired (or gone) since this listener was made: one atomic
    /// load, for loops that keep a `recv()` future registered and poll it only then.
    pub fn changed(&self) -> bool {
        self.rx.has_changed().unwrap_or(true)
    }
}

/// Completes on SIGINT or SIGTERM (Ctrl-C on other platforms).
pub async fn signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => tracing::info!("SIGTERM received"),
                    _ = int.recv() => tracing::info!("SIGINT received"),
                }
                return;
            }
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!(error = %e, "cannot install signal handlers; using ctrl-c")
            }
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}
