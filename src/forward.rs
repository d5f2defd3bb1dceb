//! Stage 5 — forwarding: the listeners apps call on localhost, and the request path
//! route → look up → pick → send → respond.
//!
//! A request is only ever sent to an address picked from a service's current table, which only
//! discovery fills: waypost is never an open proxy. Failures become [`ForwardError`]s, turned into
//! responses in one place ([`rescue`]). Each connection starts on waypost's own HTTP/1.1 loop for
//! bodiless requests ([`downstream`]), which hands it to hyper-util's auto builder (HTTP/1.1 with
//! keep-alive, or h2c with prior knowledge) at the first request it does not serve; both paths
//! share [`Proxy`]'s routing, picking, errors and metrics, and drain gracefully on shutdown.

mod downstream;
pub mod h1;
pub mod headers;
pub mod pool;
pub mod rescue;
pub mod route;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::time::Instant;

pub use pool::Pool;
pub use rescue::ForwardError;
pub use route::Listener;

use crate::balance::Balancer;
use crate::cache::{Cache, Lookup, Publish, State, Status, Target};
use crate::discover::Resolution;
use crate::metrics::{ForwardMetrics, ServiceMetrics};
use crate::shutdown::Shutdown;

/// The body of a response to the app: the upstream's, streamed, or one waypost wrote.
pub type ResponseBody = Either<pool::UpstreamBody, Full<Bytes>>;

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
}

impl Publish for ServiceHandle {
    fn publish(&self, resolution: &Arc<Resolution>, status: &Status) {
        self.balancer.publish(resolution, status);
    }

    fn retire(&self) {
        self.family.remove(&self.name);
    }
}

/// The shared state of every listener.
pub struct Proxy {
    cache: Cache<ServiceHandle>,
    metrics: ForwardMetrics,
    /// Series for requests that name no known service (one bounded label value).
    unrouted: ServiceMetrics,
    /// Largest read buffer per downstream HTTP/1 connection (`upstream.buffer_size`).
    buffer_size: usize,
}

impl Proxy {
    /// A proxy over `cache`; `buffer_size` caps each downstream connection's read buffer.
    pub fn new(cache: Cache<ServiceHandle>, metrics: ForwardMetrics, buffer_size: usize) -> Self {
        Self {
            buffer_size,
            unrouted: metrics.service("_unknown"),
            cache,
            metrics,
        }
    }

    /// Serves one request that arrived on `listener` (through hyper).
    pub async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        listener: &Listener,
    ) -> Response<ResponseBody> {
        let started = Instant::now();
        let (mut parts, body) = req.into_parts();
        let target = match self.lookup(route::service_name(&parts, listener)) {
            Ok(t) => t,
            Err(e) => return self.reject(None, e, started).map(wrote),
        };
        let svc = target.publisher();
        let addr = match self.pick(&target).await {
            Ok(addr) => addr,
            Err(e) => return self.reject(Some(svc), e, started).map(wrote),
        };
        headers::ensure_host(&mut parts, target.name());
        let req = Request::from_parts(parts, body);
        let sent = tokio::time::timeout(svc.timeout, svc.pool.send(addr, req)).await;
        match svc.outcome(addr, sent.ok()) {
            Ok(resp) => {
                svc.record(resp.status().as_u16(), started);
                resp.map(Either::Left)
            }
            Err(e) => self.reject(Some(svc), e, started).map(wrote),
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

impl ServiceHandle {
    /// What became of a request sent to `addr`: `None` when the response head did not come
    /// within the service's timeout.
    fn outcome<T>(
        &self,
        addr: SocketAddr,
        sent: Option<Result<T, pool::SendError>>,
    ) -> Result<T, ForwardError> {
        let service = || self.name.to_string();
        match sent {
            Some(Ok(resp)) => Ok(resp),
            Some(Err(source)) if source.is_connect() => {
                self.metrics.connect_errors.inc();
                Err(ForwardError::UpstreamConnect {
                    service: service(),
                    addr,
                    source,
                })
            }
            Some(Err(source)) => Err(ForwardError::Upstream {
                service: service(),
                addr,
                source,
            }),
            None => Err(ForwardError::UpstreamTimeout {
                service: service(),
                addr,
                timeout: self.timeout,
            }),
        }
    }

    /// Counts a forwarded response with `status`, for a request that arrived at `started`.
    fn record(&self, status: u16, started: Instant) {
        self.metrics.count(status);
        self.metrics
            .duration
            .observe(started.elapsed().as_secs_f64());
    }
}

/// A body waypost wrote, as a [`ResponseBody`].
fn wrote(body: Bytes) -> ResponseBody {
    Either::Right(Full::new(body))
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

/// Accepts connections on `listener` until `stop` fires, serving each with `proxy`. Each
/// connection task holds a clone of `drained`; once every task has finished, the receiving end
/// sees the channel close. On `drain`, connections finish their in-flight requests and close.
pub async fn serve(
    listener: TcpListener,
    kind: Listener,
    proxy: Arc<Proxy>,
    mut stop: Shutdown,
    drain: Shutdown,
    drained: mpsc::Sender<()>,
) {
    let label = match &kind {
        Listener::Outbound => "outbound".to_string(),
        Listener::Service(name) => format!("service:{name}"),
    };
    let open = proxy.metrics.connections(&label);
    let kind = Arc::new(kind);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .keep_alive(true)
        .header_read_timeout(downstream::HEAD_TIMEOUT)
        .max_buf_size(proxy.buffer_size);
    builder.http2().timer(TokioTimer::new());
    let builder = Arc::new(builder);
    loop {
        let (stream, _peer) = tokio::select! {
            biased;
            _ = stop.recv() => break,
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(listener = %label, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let shared = downstream::Shared {
            proxy: proxy.clone(),
            kind: kind.clone(),
            hyper: builder.clone(),
        };
        let (drain, done, open) = (drain.clone(), drained.clone(), open.clone());
        tokio::spawn(async move {
            open.inc();
            downstream::serve(stream, shared, drain).await;
            open.dec();
            drop(done);
        });
    }
    tracing::debug!(listener = %label, "stopped accepting");
}
