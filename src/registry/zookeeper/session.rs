//! The ZooKeeper session of the process, shared by every ZooKeeper registrar and resolver, and
//! the supervisor that replaces it when it ends.
//!
//! A ZooKeeper session outlives connections: `zookeeper-client` moves it from server to server
//! and keeps its ephemeral nodes and watches. But a session can end for good — the ensemble
//! expired it while waypost could not reach any server, or authentication failed — and a
//! `Client` whose session ended never works again. Here a supervisor task owns the session: it
//! establishes one (backing off with jitter while no server answers), publishes it as the
//! current [`Live`] session with a generation number, follows its state, and on a terminal state
//! withdraws it and establishes a new one at once. Users learn of a new session through
//! [`ZookeeperSession::subscribe`] (resolvers re-read and re-watch) or by comparing session ids
//! (the registrar reports its nodes lost, and the registration lifecycle creates them again
//! under the new session).
//!
//! The supervisor starts on first use and stops at shutdown; the session closes (and the
//! server drops anything ephemeral left) once the last `Client` clone is dropped.
//!
//! Every request is bounded by `request_timeout`, waiting for a session included: requests made
//! while the session is between servers queue in the client until it reconnects.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use zookeeper_client::{Client, Connector, Error as ZkCode, SessionState};

use crate::config::ZookeeperRegistryConfig;
use crate::discover::DiscoverError;
use crate::metrics::ZookeeperMetrics;
use crate::register::RegisterError;
use crate::registry::common::WATCH_BACKOFF;
use crate::shutdown::Shutdown;

/// After a failed authentication, wait as after this many failed connection attempts (≈ 1.6 s).
const AUTH_FAILED_ROUND: u32 = 5;

/// Why a ZooKeeper request failed.
#[derive(Debug, thiserror::Error)]
pub enum ZkError {
    /// No usable session within the request timeout (no server answered, or the last session
    /// ended and the next is not established yet).
    #[error("no ZooKeeper session: {0}")]
    NoSession(String),
    /// The request got no answer in time.
    #[error("ZooKeeper {what} of {path} got no answer within {after:?}")]
    Timeout {
        /// The operation.
        what: &'static str,
        /// The node.
        path: String,
        /// The request timeout.
        after: Duration,
    },
    /// ZooKeeper answered with an error.
    #[error("ZooKeeper {what} of {path}: {source}")]
    Op {
        /// The operation.
        what: &'static str,
        /// The node.
        path: String,
        /// ZooKeeper's answer.
        #[source]
        source: ZkCode,
    },
}

impl ZkError {
    /// ZooKeeper's error code, when it answered.
    pub fn code(&self) -> Option<&ZkCode> {
        match self {
            ZkError::Op { source, .. } => Some(source),
            _ => None,
        }
    }

    /// Whether the failure is the ensemble's or the connection's (worth retrying as it is),
    /// rather than a refusal of the request.
    pub fn is_unavailable(&self) -> bool {
        match self.code() {
            None => true,
            Some(code) => matches!(
                code,
                ZkCode::ConnectionLoss
                    | ZkCode::Timeout
                    | ZkCode::NoHosts
                    | ZkCode::SessionExpired
                    | ZkCode::SessionMoved
                    | ZkCode::ClientClosed
                    | ZkCode::Throttled
                    | ZkCode::NotReadOnly
            ),
        }
    }
}

impl From<ZkError> for RegisterError {
    fn from(e: ZkError) -> Self {
        if e.is_unavailable() {
            RegisterError::Unavailable(e.to_string())
        } else {
            RegisterError::Rejected(e.to_string())
        }
    }
}

impl From<ZkError> for DiscoverError {
    fn from(e: ZkError) -> Self {
        DiscoverError::Unavailable(e.to_string())
    }
}

/// A session that was established, as the supervisor published it.
#[derive(Clone, Debug)]
pub struct Live {
    /// The client of the session; clones share it.
    pub client: Client,
    /// 1 for the process's first session, one more for each that replaced a lost one.
    pub generation: u64,
}

impl Live {
    /// The session id (what ZooKeeper records as a node's ephemeral owner).
    pub fn id(&self) -> i64 {
        self.client.session_id().0
    }

    /// Whether the session ended for good.
    pub fn ended(&self) -> bool {
        self.client.state().is_terminated()
    }
}

/// The session id as ZooKeeper's tools print it (`0x…`).
pub fn session_hex(id: i64) -> String {
    format!("{:#x}", id as u64)
}

/// The shared session and its supervisor. Shared behind an `Arc`.
pub struct ZookeeperSession {
    /// The servers as one connect string (`a:2181,b:2181`).
    servers: String,
    session_timeout: Duration,
    connect_timeout: Option<Duration>,
    request_timeout: Duration,
    /// `user:password` for the `digest` scheme.
    auth: Option<Vec<u8>>,
    metrics: ZookeeperMetrics,
    /// Written by the supervisor only; read by registrars and resolvers. `None` while no session
    /// is usable: before the first, between a lost one and its replacement, after shutdown.
    current: watch::Sender<Option<Live>>,
    /// Why the last attempt to establish a session failed, for error messages.
    last_error: Mutex<String>,
    /// Set when the supervisor has been spawned.
    started: AtomicBool,
    shutdown: Shutdown,
}

impl ZookeeperSession {
    /// The session `registry.zookeeper` describes, supervised until `shutdown`. Connects to
    /// nothing until first used.
    pub fn new(
        cfg: &ZookeeperRegistryConfig,
        metrics: ZookeeperMetrics,
        shutdown: Shutdown,
    ) -> Arc<Self> {
        let auth = match (&cfg.username, &cfg.password) {
            (Some(u), Some(p)) => Some(format!("{u}:{p}").into_bytes()),
            _ => None,
        };
        Arc::new(Self {
            servers: cfg.servers.join(","),
            session_timeout: cfg.session_timeout.0,
            connect_timeout: cfg.connect_timeout.map(|d| d.0),
            request_timeout: cfg.request_timeout.0,
            auth,
            metrics,
            current: watch::channel(None).0,
            last_error: Mutex::new("not connected yet".into()),
            started: AtomicBool::new(false),
            shutdown,
        })
    }

    /// The servers, as configured.
    pub fn servers(&self) -> &str {
        &self.servers
    }

    /// The session timeout asked of the servers.
    pub fn session_timeout(&self) -> Duration {
        self.session_timeout
    }

    /// Whether the session authenticates (and what waypost creates is then restricted to its
    /// identity).
    pub fn authenticated(&self) -> bool {
        self.auth.is_some()
    }

    /// The metric handles.
    pub fn metrics(&self) -> &ZookeeperMetrics {
        &self.metrics
    }

    /// The current session, if one is usable now (no waiting).
    pub fn current(&self) -> Option<Live> {
        self.current.borrow().clone().filter(|l| !l.ended())
    }

    /// Follows the current session: the receiver changes when a session is established or lost.
    pub fn subscribe(self: &Arc<Self>) -> watch::Receiver<Option<Live>> {
        self.start();
        self.current.subscribe()
    }

    /// The current session, waiting up to `request_timeout` for one.
    pub async fn live(self: &Arc<Self>) -> Result<Live, ZkError> {
        let mut rx = self.subscribe();
        let usable = |c: &Option<Live>| c.as_ref().is_some_and(|l| !l.ended());
        let found = match tokio::time::timeout(self.request_timeout, rx.wait_for(usable)).await {
            Ok(Ok(live)) => live.clone(),
            _ => None,
        };
        found.ok_or_else(|| ZkError::NoSession(self.lock_error().clone()))
    }

    /// Runs `request` (a request of `live`'s client, already sent), bounded by `request_timeout`.
    pub async fn request<T>(
        &self,
        what: &'static str,
        path: &str,
        request: impl Future<Output = Result<T, ZkCode>>,
    ) -> Result<T, ZkError> {
        match tokio::time::timeout(self.request_timeout, request).await {
            Ok(Ok(t)) => Ok(t),
            Ok(Err(source)) => Err(ZkError::Op {
                what,
                path: path.to_string(),
                source,
            }),
            Err(_) => Err(ZkError::Timeout {
                what,
                path: path.to_string(),
                after: self.request_timeout,
            }),
        }
    }

    fn lock_error(&self) -> std::sync::MutexGuard<'_, String> {
        self.last_error.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Spawns the supervisor, once.
    fn start(self: &Arc<Self>) {
        if !self.started.swap(true, Ordering::AcqRel) {
            tokio::spawn(self.clone().supervise());
        }
    }

    fn connector(&self) -> Connector {
        // Fail eagerly: one pass over the servers, then our own backoff (with jitter, counted),
        // rather than the client's silent retries for a whole session timeout.
        let mut c = Client::connector()
            .with_session_timeout(self.session_timeout)
            .with_fail_eagerly();
        if let Some(t) = self.connect_timeout {
            c = c.with_connection_timeout(t);
        }
        if let Some(auth) = &self.auth {
            c = c.with_auth("digest", auth);
        }
        c
    }

    /// The supervisor: establish, publish, follow, replace — until shutdown.
    async fn supervise(self: Arc<Self>) {
        let mut shutdown = self.shutdown.clone();
        let mut generation = 0u64;
        let mut failures = 0u32;
        loop {
            let attempt = tokio::select! {
                biased;
                _ = shutdown.recv() => break,
                r = self.connector().connect(&self.servers) => r,
            };
            let client = match attempt {
                Ok(c) => c,
                Err(e) => {
                    failures = failures.saturating_add(1);
                    self.metrics.connect_failures.inc();
                    let delay = WATCH_BACKOFF.delay(failures, fastrand::f64());
                    tracing::warn!(servers = %self.servers, error = %e, failures, retry_in = ?delay, "cannot establish a ZooKeeper session");
                    *self.lock_error() = format!("{}: {e}", self.servers);
                    tokio::select! {
                        biased;
                        _ = shutdown.recv() => break,
                        _ = tokio::time::sleep(delay) => continue,
                    }
                }
            };
            failures = 0;
            generation += 1;
            let mut states = client.state_watcher();
            let mut state = client.state();
            self.metrics.sessions.inc();
            tracing::info!(session = %session_hex(client.session_id().0), timeout = ?client.session_timeout(), generation, "ZooKeeper session established");
            self.current.send_replace(Some(Live {
                client: client.clone(),
                generation,
            }));
            // Follow the session until it ends for good (or shutdown).
            while !state.is_terminated() {
                self.metrics.connected.set(i64::from(matches!(
                    state,
                    SessionState::SyncConnected | SessionState::ConnectedReadOnly
                )));
                state = tokio::select! {
                    biased;
                    _ = shutdown.recv() => break,
                    s = states.changed() => s,
                };
                match state {
                    SessionState::Disconnected => {
                        tracing::warn!(session = %session_hex(client.session_id().0), "ZooKeeper connection lost; reconnecting within the session")
                    }
                    SessionState::SyncConnected | SessionState::ConnectedReadOnly => {
                        tracing::info!(session = %session_hex(client.session_id().0), "ZooKeeper connection restored")
                    }
                    _ => {}
                }
            }
            self.current.send_replace(None);
            self.metrics.connected.set(0);
            if !state.is_terminated() {
                break; // shutdown
            }
            let reason = match state {
                SessionState::Expired => "expired",
                SessionState::AuthFailed => "auth_failed",
                _ => "closed",
            };
            self.metrics
                .session_losses
                .with_label_values(&[reason])
                .inc();
            *self.lock_error() = format!("session {} {reason}", session_hex(client.session_id().0));
            tracing::warn!(session = %session_hex(client.session_id().0), reason, "ZooKeeper session ended; establishing a new one");
            if state == SessionState::AuthFailed {
                // Credentials do not fix themselves: do not hammer the ensemble.
                let delay = WATCH_BACKOFF.delay(AUTH_FAILED_ROUND, fastrand::f64());
                tokio::select! {
                    biased;
                    _ = shutdown.recv() => break,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
        self.current.send_replace(None);
        self.metrics.connected.set(0);
        tracing::debug!("ZooKeeper session supervisor stopped");
    }
}
