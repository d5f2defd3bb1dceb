//! Stage 5 — forwarding: the listeners apps call on localhost, and the walk every request takes,
//! each step in its own module, entered once:
//!
//! 1. **parse → frame** — `server` reads a head under the connection's timeouts, and the one
//!    HTTP/1 framing module ([`h1`]) parses it, checks it against the HTTP/1 policy (README),
//!    decides its framing once and encodes the head the upstream will get from that decision;
//! 2. **route** — [`route`] names the service (Host, absolute-form authority, or the listener);
//! 3. **pick** — the service's weighted table (`balance`) picks an instance;
//! 4. **send** — [`client`] sends the request over a pooled connection, its body streaming
//!    from the app while the response comes back;
//! 5. **respond** — `server` writes the response to the app, framed from the response's own
//!    framing decision.
//!
//! A request is only ever sent to an address picked from a service's current table, which only
//! discovery fills: waypost is never an open proxy. Every failure becomes a [`ForwardError`],
//! answered in one place ([`rescue`]). HTTP/2 (h2c) requests take the same walk through
//! hyper's h2 server ([`Proxy::handle_h2`]).

mod attempt;
pub mod client;
pub mod h1;
pub mod limits;
pub mod rescue;
pub mod retry;
pub mod route;
mod server;
mod service;

use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body::Body as _;
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use tokio::time::Instant;

pub use client::Pool;
pub use rescue::ForwardError;
pub use route::Listener;
pub use server::{serve, sniff_h2c, Settings, Tunnels};
pub use service::{ServiceHandle, ServicePolicy};

use crate::balance::{InstanceState, Outcome, Picked};
use crate::cache::{Cache, Lookup, State, Status, Target};
use crate::metrics::{ForwardMetrics, ServiceMetrics};
use attempt::Attempts;
use client::{First, Outgoing, SendError, SourceError};
use h1::framing::Framing;
use retry::{Attempted, Plan};
use server::h2::H2Body;
use server::http1::{Failure, Http1};
use server::io::AppIo;

/// The body of a response to an HTTP/2 app: the upstream's, streamed (from an HTTP/1 or an
/// HTTP/2 upstream), or one waypost wrote.
pub type ResponseBody = Either<Either<client::Body<H2Body>, client::H2ResponseBody>, Full<Bytes>>;

/// The declared service the last request on a connection named, by the `Host` bytes that
/// named it. A connection nearly always names the same service again, and a declared target
/// never goes away (nor expires), so routing and the cache lookup are skipped when the bytes
/// match. On-demand targets, which can expire, are looked up every time.
#[derive(Default)]
pub(crate) struct LastRoute {
    host: Vec<u8>,
    target: Option<Arc<Target<ServiceHandle>>>,
}

/// The shared state of every listener.
pub struct Proxy {
    cache: Cache<ServiceHandle>,
    metrics: ForwardMetrics,
    /// Series for requests that name no known service (one bounded label value).
    unrouted: ServiceMetrics,
    /// How app connections are served.
    settings: Settings,
    /// App connections open on every listener (for giving memory back after a flood).
    open: server::OpenConnections,
    /// `limits.max_connections`, over every forwarding listener.
    slots: limits::ConnectionSlots,
}

impl Proxy {
    /// A proxy over `cache`, serving app connections as `settings` say.
    pub fn new(cache: Cache<ServiceHandle>, metrics: ForwardMetrics, settings: Settings) -> Self {
        Self {
            unrouted: metrics.service("_unknown"),
            cache,
            metrics,
            settings,
            open: server::OpenConnections::default(),
            slots: limits::ConnectionSlots::new(
                crate::config::LimitsConfig::default().max_connections,
            ),
        }
    }

    /// At most `max` app connections open at once over every listener (accepting pauses at
    /// the cap).
    pub fn limit_connections(mut self, max: usize) -> Self {
        self.slots = limits::ConnectionSlots::new(max);
        self
    }

    /// The walk of one HTTP/1 request whose head `conn` just read and parsed (steps 1–2 done):
    /// route → pick → send → respond. Returns whether the connection stays open.
    async fn serve_h1<S: AppIo>(
        &self,
        conn: &mut Http1<S>,
        req: h1::request::Request,
        listener: &Listener,
    ) -> bool {
        let started = Instant::now();
        conn.consume(req.len);
        let routed = {
            let (head, last) = conn.head_and_route();
            match route::by_prefix_h1(head, listener) {
                Some(service) => self.lookup(Ok(service.into())),
                None => {
                    let host = req.host.map(|(s, e)| &head[s as usize..e as usize]);
                    last.route(self, host, listener)
                }
            }
        };
        let target = match routed {
            Ok(t) => t,
            Err(e) => {
                let body_done = conn.skip_body(&req);
                return self.reply(conn, None, e, &req, started, body_done).await;
            }
        };
        let svc = target.publisher();
        let picked = match svc.admit(started) {
            Ok(slot) => self.pick(&target, started).await.map(|p| (slot, p)),
            Err(e) => Err(e),
        };
        let (_slot, (first, state)) = match picked {
            Ok(p) => p,
            Err(e) => {
                let body_done = conn.skip_body(&req);
                return self
                    .reply(conn, Some(svc), e, &req, started, body_done)
                    .await;
            }
        };
        h1::request::finish(conn.head_and_route().0, &req, target.name());
        let mut plan = Attempts::new(svc, first, state, started, req.is_idempotent());
        let sent = conn
            .exchange(&req, &svc.pool, &mut plan, &self.settings)
            .await;
        let (err, body_done) = match sent {
            Ok(done) => {
                plan.finish(outcome(done.status.as_u16()), done.head_at);
                svc.record(done.status.as_u16(), done.head_at - started);
                conn.idle_since = done.ended;
                return !done.close;
            }
            Err(Failure::Send(e, body_done)) => {
                plan.finish(Outcome::Failure, Instant::now());
                (svc.failed(plan.addr(), e), body_done)
            }
            Err(Failure::Timeout(body_done)) => {
                plan.finish(Outcome::Failure, Instant::now());
                (plan.timed_out(), body_done)
            }
            Err(Failure::Upstream(e)) => {
                plan.finish(Outcome::Failure, Instant::now());
                (svc.failed(plan.addr(), SendError::Upstream(e)), false)
            }
            Err(Failure::Request(e @ (SourceError::Truncated | SourceError::Io(_)))) => {
                tracing::debug!(service = %target.name(), error = %e, "app connection ended mid-request");
                return false;
            }
            Err(Failure::Request(e)) => (e.into(), false),
            Err(Failure::Closed) => return false,
        };
        drop(plan);
        self.reply(conn, Some(svc), err, &req, started, body_done)
            .await
    }

    /// Writes waypost's answer to `req`; the connection stays open only after a routing or
    /// upstream failure on a well-framed request whose body was read whole (`body_done`; one
    /// answered before anything was sent skips its body when it is whole in the buffer) —
    /// README, "HTTP/1 policy".
    async fn reply<S: AppIo>(
        &self,
        conn: &mut Http1<S>,
        svc: Option<&ServiceHandle>,
        err: ForwardError,
        req: &h1::request::Request,
        started: Instant,
        body_done: bool,
    ) -> bool {
        let close = req.close || !body_done || err.closes_connection();
        let resp = self.reject(svc, err, started);
        conn.answer(resp, req.http10, close).await.is_ok() && !close
    }

    /// Answers a connection whose head could not be accepted (`err`), and closes it.
    async fn refuse<S: AppIo>(&self, mut conn: Http1<S>, err: ForwardError) {
        let resp = self.reject(None, err, Instant::now());
        if conn.answer(resp, false, true).await.is_ok() {
            conn.close().await;
        }
    }

    /// Serves one request that arrived over HTTP/2 (through hyper): the same walk.
    pub async fn handle_h2(
        self: Arc<Self>,
        req: Request<Incoming>,
        listener: &Listener,
    ) -> Response<ResponseBody> {
        let started = Instant::now();
        let (mut parts, body) = req.into_parts();
        let target = match self.lookup(route::service_name(&mut parts, listener)) {
            Ok(t) => t,
            Err(e) => return wrote(self.reject(None, e, started)),
        };
        let svc = target.publisher();
        let picked = match svc.admit(started) {
            Ok(slot) => self.pick(&target, started).await.map(|p| (slot, p)),
            Err(e) => Err(e),
        };
        // The slot is held until the response head: the body streams after this returns.
        let (_slot, (first, state)) = match picked {
            Ok(p) => p,
            Err(e) => return wrote(self.reject(Some(svc), e, started)),
        };
        let idempotent = h1::request::idempotent(&parts.method);
        let mut plan = Attempts::new(svc, first, state, started, idempotent);
        // The send step: HTTP/2 end to end when the instance speaks it (gRPC), else HTTP/1.
        // HTTP/2 upstream exchanges are not retried: the body streams with the first attempt.
        let (parts, body) = if svc.pool.h2_for(plan.addr()) {
            let addr = plan.addr();
            let (_, until) = plan.target();
            let sent = svc.pool.send_h2(addr, parts, body, target.name());
            match tokio::time::timeout_at(until, sent).await {
                Ok(client::H2Sent::Response(resp)) => {
                    let now = Instant::now();
                    plan.finish(outcome(resp.status().as_u16()), now);
                    svc.record(resp.status().as_u16(), now - started);
                    return resp.map(|b| Either::Left(Either::Right(b)));
                }
                Ok(client::H2Sent::Failed(e)) => {
                    plan.finish(Outcome::Failure, Instant::now());
                    return wrote(self.reject(Some(svc), svc.failed(addr, e), started));
                }
                Ok(client::H2Sent::Http1(parts, body)) => (parts, body),
                Err(_) => {
                    plan.finish(Outcome::Failure, Instant::now());
                    return wrote(self.reject(Some(svc), plan.timed_out(), started));
                }
            }
        } else {
            (parts, body)
        };
        let mut head = Vec::with_capacity(256);
        let framing =
            match h1::request::encode_h2(&parts, body.is_end_stream(), target.name(), &mut head) {
                Ok(framing) => framing,
                Err(e) => return wrote(self.reject(Some(svc), e.into(), started)),
            };
        let out = Outgoing {
            head: &head,
            framing,
            head_request: parts.method == Method::HEAD,
            replayable: framing == Framing::Empty && idempotent,
            relay_continue: false,
            upgrade: false,
        };
        // An HTTP/2 request body streams straight from hyper and goes with the first attempt:
        // only bodiless requests are retried.
        let bodiless = framing == Framing::Empty;
        let mut source = (!bodiless).then_some(H2Body(body));
        let (ex, head) = loop {
            let (addr, until) = plan.target();
            let sent = tokio::time::timeout_at(until, svc.pool.send(addr, &out, source.take()));
            let failed = match sent.await {
                Ok(Ok((ex, First::Final(head)))) => {
                    let status = head.status;
                    if status.is_server_error()
                        && bodiless
                        && plan.again(Attempted::Status(status.as_u16()), true)
                    {
                        continue;
                    }
                    break (ex, head);
                }
                // Not asked for (`relay_continue` is off): never reported.
                Ok(Ok((_, First::Continue))) => {
                    svc.failed(addr, SendError::Upstream(client::ProtoError::Truncated))
                }
                Ok(Err(SendError::Request(e))) => {
                    return wrote(self.reject(Some(svc), e.into(), started))
                }
                Ok(Err(e)) => {
                    if bodiless && plan.again(Attempted::of(&e), true) {
                        continue;
                    }
                    svc.failed(addr, e)
                }
                Err(_) => {
                    if bodiless && plan.again(Attempted::Timeout, true) {
                        continue;
                    }
                    plan.timed_out()
                }
            };
            plan.finish(Outcome::Failure, Instant::now());
            return wrote(self.reject(Some(svc), failed, started));
        };
        let now = Instant::now();
        plan.finish(outcome(head.status.as_u16()), now);
        svc.record(head.status.as_u16(), now - started);
        let body = ex.into_body(&head, now);
        match head.into_parts() {
            Ok(parts) => Response::from_parts(parts, Either::Left(Either::Left(body))),
            Err(e) => {
                let e = SendError::Upstream(e.into());
                wrote(self.reject(Some(svc), svc.failed(plan.addr(), e), started))
            }
        }
    }

    /// The target a routed name refers to: declared, or created by an on-demand rule. Touched,
    /// so it does not expire while used.
    fn lookup(
        &self,
        name: Result<std::borrow::Cow<'_, str>, ForwardError>,
    ) -> Result<Arc<Target<ServiceHandle>>, ForwardError> {
        let name = name?;
        let found = match self.cache.get(&name) {
            Lookup::Found(t) => Some(t),
            Lookup::OnDemand => self.cache.resolve_on_demand(&name),
            Lookup::Unknown => None,
        };
        let target = found.ok_or_else(|| ForwardError::UnknownService(name.into_owned()))?;
        target.touch();
        Ok(target)
    }

    /// An instance of `target` for the first attempt of a request that started at `started`,
    /// counted in flight there.
    async fn pick(
        &self,
        target: &Target<ServiceHandle>,
        started: Instant,
    ) -> Result<(Picked, Arc<InstanceState>), ForwardError> {
        let svc = target.publisher();
        // No snapshot yet: the first resolution is still in flight (the refresher publishes
        // before it marks a target resolved). Concurrent first requests all wait on that one,
        // which the refresher bounds by `resolve_timeout`; the same bound here covers a stuck one.
        if svc.balancer.load().is_none() {
            let wait = self.cache.policy().resolve_timeout;
            let _ = tokio::time::timeout(wait, target.first_resolve()).await;
        }
        let snapshot = svc.balancer.load();
        match &**snapshot {
            Some(snap) => match svc.balancer.pick(snap, started, None) {
                Some(p) => Ok((p, svc.balancer.start(snap, p))),
                None => Err(unavailable(target.name(), &snap.status)),
            },
            None => Err(ForwardError::NoInstances(target.name().to_string())),
        }
    }

    /// Counts and logs a request waypost answers itself, and writes that answer.
    fn reject(
        &self,
        svc: Option<&ServiceHandle>,
        err: ForwardError,
        started: Instant,
    ) -> Response<Bytes> {
        let (series, name): (&ServiceMetrics, &str) = match svc {
            Some(s) => (&s.metrics, &s.name),
            None => (&self.unrouted, "_unknown"),
        };
        let status = err.status();
        match status.as_u16() {
            500.. => tracing::warn!(service = name, error = %err, "request failed"),
            _ => tracing::debug!(service = name, error = %err, "request rejected"),
        }
        self.metrics
            .errors
            .with_label_values(&[name, err.kind()])
            .inc();
        series.count(status.as_u16());
        series.duration.observe(started.elapsed().as_secs_f64());
        err.into_response()
    }
}

impl LastRoute {
    /// The `Host` bytes of the last request routed (already found valid), or nothing.
    pub(crate) fn host(&self) -> &[u8] {
        &self.host
    }

    /// The target the `Host` value `host` (or the listener) names.
    fn route(
        &mut self,
        proxy: &Proxy,
        host: Option<&[u8]>,
        listener: &Listener,
    ) -> Result<Arc<Target<ServiceHandle>>, ForwardError> {
        if let (Some(host), Some(target)) = (host, &self.target) {
            if self.host == host {
                return Ok(target.clone());
            }
        }
        let target = proxy.lookup(route::named(host, listener));
        if let (Some(host), Ok(t)) = (host, &target) {
            if t.is_declared() {
                self.host.clear();
                self.host.extend_from_slice(host);
                self.target = Some(t.clone());
            }
        }
        target
    }
}

/// What a response head says about its instance: a 5xx counts against it.
fn outcome(status: u16) -> Outcome {
    if status >= 500 {
        Outcome::Error5xx
    } else {
        Outcome::Success
    }
}

/// A response waypost wrote, for hyper's h2 server.
fn wrote(resp: Response<Bytes>) -> Response<ResponseBody> {
    resp.map(|b| Either::Right(Full::new(b)))
}

/// Why a service with a snapshot has nothing to pick.
fn unavailable(name: &str, status: &Status) -> ForwardError {
    match (status.state, &status.last_error) {
        (State::Failed, Some(reason)) => ForwardError::DiscoveryFailed {
            service: name.into(),
            reason: reason.clone(),
        },
        _ => ForwardError::NoInstances(name.into()),
    }
}

impl From<SourceError> for ForwardError {
    fn from(e: SourceError) -> Self {
        match e {
            SourceError::Timeout(_) => {
                ForwardError::RequestTimeout("the request body did not arrive in time")
            }
            SourceError::Malformed(e) => ForwardError::BadBody(e.0),
            SourceError::TooLong => ForwardError::BadBody("longer than its Content-Length"),
            SourceError::Truncated | SourceError::Io(_) => {
                ForwardError::BadBody("the app's connection ended in the middle of it")
            }
        }
    }
}
