//! A faithful double of the Consul agent's HTTP API, for tests. No Consul binary can be
//! installed here (not in Debian, PyPI, npm or crates.io), so waypost's Consul backend is tested
//! against this: the agent endpoints the Go frameworks and waypost use, with the rules Consul
//! documents and implements (`REGISTRIES.md` §3 lists each with its source):
//!
//! - `PUT /v1/agent/service/register` with Consul's validation and 400 messages, in Consul's
//!   order; checks start `critical`; `ID` defaults to `Name`, `Weights` to `{1, 1}`;
//! - `PUT /v1/agent/service/deregister/<id>` (404 for an unknown ID, as Consul ≥ 1.11 answers);
//! - `PUT /v1/agent/check/{pass,warn,fail,update}/<id>` for TTL checks, with their clock;
//! - HTTP and TCP checks run by the double at their interval; `DeregisterCriticalServiceAfter`
//!   (raised to 1 minute) reaped every 30 seconds;
//! - `GET /v1/agent/service/<id>`, `GET /v1/health/service/<name>` (`passing`, `tag`) and
//!   `GET /v1/catalog/service/<name>`, as blocking queries (`index`, `wait` capped at 10
//!   minutes plus jitter, `X-Consul-Index`/`KnownLeader`/`LastContact`, `[]` never `null`);
//! - ACL tokens (`X-Consul-Token`, `Authorization: Bearer`, `?token=`): an unknown token gets 403
//!   "ACL not found", a write without permission 403 "Permission denied: …", and reads filter
//!   what the token may not see;
//! - fault knobs: 500s, slow answers, an index reported as 0, an index that goes backwards (a
//!   snapshot restore, which wakes every blocking query), an agent restart that forgets
//!   everything, and the agent going away and coming back on the same port.
//!
//! It runs in-process on `127.0.0.1:0` (a real TCP port, so the waypost binary can use it too)
//! and stops when dropped.

// Explicit paths: the bench (`bench/consul.rs`) includes this file too, from another directory.
#[path = "consul/decode.rs"]
mod decode;
#[path = "consul/probe.rs"]
mod probe;
#[path = "consul/server.rs"]
mod server;
#[path = "consul/state.rs"]
pub mod state;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::watch;
use tokio::time::Instant;

use state::{Kind, Refusal, State};

/// How often the double's clock runs TTL expiry and the reaper.
const TICK: Duration = Duration::from_millis(20);
/// The index a fresh double starts at (a cluster that has seen some writes).
const FIRST_INDEX: u64 = 100;

/// What a token may do (on every service; prefix policies are beyond the double).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Rights {
    /// A known token without any service permission.
    Nothing,
    /// `service:read`.
    Read,
    /// `service:write` (and read).
    Write,
}

/// The fault knobs.
#[derive(Debug, Clone, Default)]
pub struct Knobs {
    /// Every request answers 500 ("No cluster leader").
    pub failing: bool,
    /// Every answer is delayed this long.
    pub slow: Option<Duration>,
    /// Blocking endpoints report `X-Consul-Index: 0`.
    pub index_zero: bool,
}

/// One request the double received.
#[derive(Debug, Clone)]
pub struct Logged {
    pub at: Instant,
    /// `register`, `deregister`, `service`, `pass`, `warn`, `fail`, `update`, `health`, `catalog`.
    pub endpoint: &'static str,
    pub path_and_query: String,
    pub token: Option<String>,
}

/// What the server, the check runners and the clock share.
pub struct Shared {
    state: Mutex<State>,
    /// Bumped on every change a blocking query may be waiting for; read by the waiters.
    changes: watch::Sender<u64>,
    /// Bumped when the state is abandoned (restore, restart): every blocking query answers.
    abandoned: watch::Sender<u64>,
    knobs: Mutex<Knobs>,
    /// `None`: ACLs off. Otherwise every known token and its rights; anonymous has none.
    acl: Mutex<Option<HashMap<String, Rights>>>,
    log: Mutex<Vec<Logged>>,
    /// The body of every registration received over HTTP, refused ones included.
    bodies: Mutex<Vec<String>>,
    /// The runner of each HTTP/TCP check, by check ID.
    runners: Mutex<HashMap<String, tokio::task::JoinHandle<()>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    pub fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// Wakes blocking queries to look at the index again.
    pub fn changed(&self) {
        self.changes.send_modify(|n| *n += 1);
    }

    pub fn knobs(&self) -> Knobs {
        lock(&self.knobs).clone()
    }

    fn log(&self, entry: Logged) {
        lock(&self.log).push(entry);
    }

    /// The rights of `token` (`Ok(None)`: anonymous, none); 403 "ACL not found" for a token the
    /// agent does not know. With ACLs off, everyone may do everything.
    fn rights(&self, token: Option<&str>) -> Result<Option<Rights>, Refusal> {
        let acl = lock(&self.acl);
        let Some(tokens) = acl.as_ref() else {
            return Ok(Some(Rights::Write));
        };
        match token {
            None => Ok(None),
            Some(t) => tokens
                .get(t)
                .copied()
                .map(Some)
                .ok_or_else(|| (403, "ACL not found".to_string())),
        }
    }

    /// Consul's 403 when `rights` fall short of `need` on `service`.
    fn allow(
        rights: Option<Rights>,
        need: Rights,
        service: &str,
        with_token: bool,
    ) -> Result<(), Refusal> {
        if rights.is_some_and(|r| r >= need) {
            return Ok(());
        }
        let perm = match need {
            Rights::Nothing | Rights::Read => "service:read",
            Rights::Write => "service:write",
        };
        let who = if with_token {
            "token with AccessorID 'b4ad6ba2-7f4e-4d0e-9a6b-5b8e3c1d2a90'"
        } else {
            "anonymous token"
        };
        Err((
            403,
            format!("Permission denied: {who} lacks permission '{perm}' on \"{service}\""),
        ))
    }

    /// (Re)starts the runner of check `id`, unless one runs for it already.
    fn run_check(self: &Arc<Self>, id: String, kind: Kind) {
        let mut runners = lock(&self.runners);
        if runners.get(&id).is_some_and(|h| !h.is_finished()) {
            return;
        }
        let handle = probe::spawn(self.clone(), id.clone(), kind);
        runners.insert(id, handle);
    }

    /// `PUT /v1/agent/service/register`: validate, then the ACL check (Consul's order), then
    /// apply and start the runners of the service's HTTP and TCP checks.
    fn register(
        self: &Arc<Self>,
        body: &[u8],
        rights: Option<Rights>,
        with_token: bool,
    ) -> Result<(), Refusal> {
        let mut state = self.state();
        let prepared = state.prepare(body)?;
        Self::allow(rights, Rights::Write, &prepared.name, with_token)?;
        let id = prepared.id.clone();
        state.register(prepared, Instant::now());
        let runners: Vec<_> = state
            .checks
            .values()
            .filter(|c| c.service_id == id && !matches!(c.kind, Kind::Ttl(_)))
            .map(|c| (c.id.clone(), c.kind.clone()))
            .collect();
        drop(state);
        for (check, kind) in runners {
            self.run_check(check, kind);
        }
        self.changed();
        Ok(())
    }

    /// Waits until the index passes `index`, the state is abandoned, or `deadline`.
    async fn wait_past(&self, index: u64, deadline: Instant) {
        let mut changes = self.changes.subscribe();
        let mut abandoned = self.abandoned.subscribe();
        abandoned.borrow_and_update();
        loop {
            changes.borrow_and_update();
            if self.state().index > index {
                return;
            }
            tokio::select! {
                _ = changes.changed() => {}
                _ = abandoned.changed() => return,
                _ = tokio::time::sleep_until(deadline) => return,
            }
        }
    }
}

/// A running double. Stops (server, clock, check runners) when dropped.
pub struct ConsulDouble {
    shared: Arc<Shared>,
    addr: SocketAddr,
    /// Set when the double serves HTTPS.
    tls: Option<tokio_rustls::TlsAcceptor>,
    server: Option<tokio::task::JoinHandle<()>>,
    clock: tokio::task::JoinHandle<()>,
}

impl ConsulDouble {
    /// A double on a free loopback port.
    pub async fn start() -> ConsulDouble {
        Self::start_with(None).await
    }

    /// A double serving HTTPS only, with the certificates [`super::etcd::secure::make_certificates`]
    /// made in `certs`: its own is `server.crt` (for 127.0.0.1), and clients must present one
    /// signed by `ca.crt` (the agent's `verify_incoming`).
    pub async fn start_tls(certs: &std::path::Path) -> ConsulDouble {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(certs.join("ca.crt")).unwrap() {
            roots.add(cert.unwrap()).unwrap();
        }
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .build()
        .unwrap();
        let chain = CertificateDer::pem_file_iter(certs.join("server.crt"))
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_file(certs.join("server.key")).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .unwrap();
        Self::start_with(Some(tokio_rustls::TlsAcceptor::from(Arc::new(config)))).await
    }

    async fn start_with(tls: Option<tokio_rustls::TlsAcceptor>) -> ConsulDouble {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            state: Mutex::new(State::new(FIRST_INDEX, Instant::now())),
            changes: watch::Sender::new(0),
            abandoned: watch::Sender::new(0),
            knobs: Mutex::new(Knobs::default()),
            acl: Mutex::new(None),
            log: Mutex::new(Vec::new()),
            bodies: Mutex::new(Vec::new()),
            runners: Mutex::new(HashMap::new()),
        });
        let server = tokio::spawn(server::serve(shared.clone(), listener, tls.clone()));
        let ticking = shared.clone();
        let clock = tokio::spawn(async move {
            let mut every = tokio::time::interval(TICK);
            loop {
                every.tick().await;
                let changed = ticking.state().tick(Instant::now());
                if changed {
                    ticking.changed();
                }
            }
        });
        ConsulDouble {
            shared,
            addr,
            tls,
            server: Some(server),
            clock,
        }
    }

    /// Where the double listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `registry:` YAML pointing waypost at the double, with `extra` lines under `consul:`
    /// (each indented by four spaces, e.g. `"    ttl: 2s\n"`).
    pub fn registry_yaml(&self, extra: &str) -> String {
        format!(
            "registry:\n  consul:\n    address: \"{}\"\n{extra}",
            self.addr
        )
    }

    /// Turns ACLs on: only `tokens` are known, anonymous may do nothing.
    pub fn require_tokens(&self, tokens: &[(&str, Rights)]) {
        *lock(&self.shared.acl) = Some(tokens.iter().map(|(t, r)| (t.to_string(), *r)).collect());
    }

    /// Changes the fault knobs.
    pub fn set_knobs(&self, f: impl FnOnce(&mut Knobs)) {
        f(&mut lock(&self.shared.knobs));
        self.shared.changed();
    }

    /// A snapshot restore: the index drops to `index` and every blocking query answers at once.
    pub fn restore_index(&self, index: u64) {
        self.shared.state().index = index;
        self.shared.abandoned.send_modify(|n| *n += 1);
    }

    /// The agent restarts with an empty state (it forgets every service and check); the index
    /// goes on (the servers' raft index).
    pub fn restart(&self) {
        {
            let mut state = self.shared.state();
            let index = state.index + 1;
            *state = State::new(index, Instant::now());
        }
        for (_, h) in lock(&self.shared.runners).drain() {
            h.abort();
        }
        self.shared.abandoned.send_modify(|n| *n += 1);
    }

    /// The agent goes away: the listener closes and every open connection drops.
    pub fn go_away(&mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }

    /// The agent comes back on the same port, with the state it had.
    pub async fn come_back(&mut self) {
        let listener = loop {
            match tokio::net::TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                // The old socket may take a moment to go.
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        self.server = Some(tokio::spawn(server::serve(
            self.shared.clone(),
            listener,
            self.tls.clone(),
        )));
    }

    /// Registers a service from a raw JSON body, as a Go client's `ServiceRegister` would (no
    /// HTTP: the same validation, no ACL).
    pub fn register_json(&self, body: &str) -> Result<(), Refusal> {
        self.shared
            .register(body.as_bytes(), Some(Rights::Write), false)
    }

    /// Removes a service directly (an operator's `consul services deregister`).
    pub fn deregister(&self, id: &str) -> Result<(), Refusal> {
        self.shared.state().deregister(id)?;
        self.shared.changed();
        Ok(())
    }

    /// Sets a check's status directly (the runner of an HTTP/TCP check, or a TTL update).
    pub fn set_status(&self, check_id: &str, status: &str) {
        if self
            .shared
            .state()
            .set_status(check_id, status, Instant::now())
        {
            self.shared.changed();
        }
    }

    /// The agent's view of service `id` (`GET /v1/agent/service/<id>`), if it knows it.
    pub fn service(&self, id: &str) -> Option<Value> {
        self.shared.state().agent_service(id).ok()
    }

    /// The IDs of every registered service.
    pub fn service_ids(&self) -> Vec<String> {
        self.shared.state().services.keys().cloned().collect()
    }

    /// The status of check `id`, if it exists.
    pub fn check_status(&self, id: &str) -> Option<String> {
        self.shared.state().checks.get(id).map(|c| c.status.clone())
    }

    /// The kind and definition of check `id`, if it exists.
    pub fn check_kind(&self, id: &str) -> Option<Kind> {
        self.shared.state().checks.get(id).map(|c| c.kind.clone())
    }

    /// `/v1/health/service/<name>` as the double would answer it now (no ACL, no blocking).
    pub fn health(&self, name: &str, passing: bool) -> Value {
        self.shared.state().health(name, None, passing)
    }

    /// The current index.
    pub fn index(&self) -> u64 {
        self.shared.state().index
    }

    /// The body of every registration received over HTTP so far.
    pub fn register_bodies(&self) -> Vec<String> {
        lock(&self.shared.bodies).clone()
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<Logged> {
        lock(&self.shared.log).clone()
    }

    /// Requests to `endpoint` received since `since`.
    pub fn count_since(&self, endpoint: &str, since: Instant) -> usize {
        lock(&self.shared.log)
            .iter()
            .filter(|l| l.endpoint == endpoint && l.at >= since)
            .count()
    }
}

impl Drop for ConsulDouble {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
        }
        self.clock.abort();
        for (_, h) in lock(&self.shared.runners).drain() {
            h.abort();
        }
    }
}
