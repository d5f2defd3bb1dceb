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

pub mod client;
pub mod h1;
pub mod rescue;
pub mod route;
mod server;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

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

use crate::balance::Balancer;
use crate::cache::{Cache, Lookup, Publish, State, Status, Target};
use crate::discover::Resolution;
use crate::metrics::{ForwardMetrics, ServiceMetrics};
use client::{First, Outgoing, SendError, SourceError};
use h1::framing::Framing;
use server::h2::H2Body;
use server::http1::{Failure, Http1};
use server::io::AppIo;

/// The body of a response to an HTTP/2 app: the upstream's, streamed (from an HTTP/1 or an
/// HTTP/2 upstream), or one waypost wrote.
pub type ResponseBody = Either<Either<client::Body<H2Body>, client::H2ResponseBody>, Full<Bytes>>;

/// Everything forwarding keeps per service: its balancer and the handles a request needs.
/// The cache creates one per target and publishes into it.
pub struct ServiceHandle {
    /// The service's table, published by the cache.
    pub balancer: Balancer,
    metrics: ServiceMetrics,
    family: ForwardMetrics,
    name: Arc<str>,
    /// Time allowed from request sent to response headers.
    timeout: Duration,
    /// The upstream pool for this service (its own when it overrides the connect timeout).
    pool: Pool,
}

impl ServiceHandle {
    /// A handle for `name` with nothing published yet.
    pub fn new(name: &str, family: &ForwardMetrics, timeout: Duration, pool: Pool) -> Self {
        Self {
            balancer: Balancer::new(),
            metrics: family.service(name),
            family: family.clone(),
            name: name.into(),
            timeout,
            pool,
        }
    }

    /// The error for a request sent to `addr` that got no response.
    fn failed(&self, addr: SocketAddr, source: SendError) -> ForwardError {
        let service = self.name.to_string();
        match source {
            SendError::Request(e) => e.into(),
            source if source.is_connect() => {
                self.metrics.connect_errors.inc();
                ForwardError::UpstreamConnect {
                    service,
                    addr,
                    source,
                }
            }
            source => ForwardError::Upstream {
                service,
                addr,
                source,
            },
        }
    }

    /// The error for a request sent to `addr` whose response head did not come in time.
    fn timed_out(&self, addr: SocketAddr) -> ForwardError {
        ForwardError::UpstreamTimeout {
            service: self.name.to_string(),
            addr,
            timeout: self.timeout,
        }
    }

    /// Counts a forwarded response with `status`, whose head came `took` after the request.
    fn record(&self, status: u16, took: Duration) {
        self.metrics.count(status);
        self.metrics.duration.observe(took.as_secs_f64());
    }
}

impl Publish for ServiceHandle {
    fn publish(&self, resolution: &Arc<Resolution>, status: &Status) {
        if let Some(tls) = self.pool.connector() {
            tls.learn(&self.name, &resolution.instances);
        }
        self.balancer.publish(resolution, status);
    }

    fn retire(&self) {
        self.family.remove(&self.name);
    }
}

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
        }
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
        let addr = match self.pick(&target).await {
            Ok(addr) => addr,
            Err(e) => {
                let body_done = conn.skip_body(&req);
                return self
                    .reply(conn, Some(svc), e, &req, started, body_done)
                    .await;
            }
        };
        h1::request::finish(conn.head_and_route().0, &req, target.name());
        let deadline = started + svc.timeout;
        let sent = conn
            .exchange(&req, &svc.pool, addr, deadline, &self.settings)
            .await;
        let (err, body_done) = match sent {
            Ok(done) => {
                svc.record(done.status.as_u16(), done.head_at - started);
                conn.idle_since = done.ended;
                return !done.close;
            }
            Err(Failure::Send(e, body_done)) => (svc.failed(addr, e), body_done),
            Err(Failure::Timeout(body_done)) => (svc.timed_out(addr), body_done),
            Err(Failure::Upstream(e)) => (svc.failed(addr, SendError::Upstream(e)), false),
            Err(Failure::Request(e @ (SourceError::Truncated | SourceError::Io(_)))) => {
                tracing::debug!(service = %target.name(), error = %e, "app connection ended mid-request");
                return false;
            }
            Err(Failure::Request(e)) => (e.into(), false),
            Err(Failure::Closed) => return false,
        };
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
        let addr = match self.pick(&target).await {
            Ok(addr) => addr,
            Err(e) => return wrote(self.reject(Some(svc), e, started)),
        };
        // The send step: HTTP/2 end to end when the instance speaks it (gRPC), else HTTP/1.
        let (parts, body) = if svc.pool.h2_for(addr) {
            let sent = svc.pool.send_h2(addr, parts, body, target.name());
            match tokio::time::timeout(svc.timeout, sent).await {
                Ok(client::H2Sent::Response(resp)) => {
                    svc.record(resp.status().as_u16(), started.elapsed());
                    return resp.map(|b| Either::Left(Either::Right(b)));
                }
                Ok(client::H2Sent::Failed(e)) => {
                    return wrote(self.reject(Some(svc), svc.failed(addr, e), started))
                }
                Ok(client::H2Sent::Http1(parts, body)) => (parts, body),
                Err(_) => return wrote(self.reject(Some(svc), svc.timed_out(addr), started)),
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
            replayable: framing == Framing::Empty && h1::request::idempotent(&parts.method),
            relay_continue: false,
            upgrade: false,
        };
        let source = (framing != Framing::Empty).then_some(H2Body(body));
        let sent = tokio::time::timeout(svc.timeout, svc.pool.send(addr, &out, source)).await;
        let (ex, head) = match sent {
            Ok(Ok((ex, First::Final(head)))) => (ex, head),
            // Not asked for (`relay_continue` is off): never reported.
            Ok(Ok((_, First::Continue))) => {
                let e = SendError::Upstream(client::ProtoError::Truncated);
                return wrote(self.reject(Some(svc), svc.failed(addr, e), started));
            }
            Ok(Err(e)) => return wrote(self.reject(Some(svc), svc.failed(addr, e), started)),
            Err(_) => return wrote(self.reject(Some(svc), svc.timed_out(addr), started)),
        };
        svc.record(head.status.as_u16(), started.elapsed());
        let body = ex.into_body(&head);
        match head.into_parts() {
            Ok(parts) => Response::from_parts(parts, Either::Left(Either::Left(body))),
            Err(e) => {
                let e = SendError::Upstream(e.into());
                wrote(self.reject(Some(svc), svc.failed(addr, e), started))
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

    /// An instance of `target` to send a request to.
    async fn pick(&self, target: &Target<ServiceHandle>) -> Result<SocketAddr, ForwardError> {
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
            Some(snap) => snap
                .table
                .pick()
                .map(|i| i.address)
                .ok_or_else(|| unavailable(target.name(), &snap.status)),
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
