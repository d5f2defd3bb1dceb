//! The process's one client of the local Consul agent, shared by every Consul registrar and
//! resolver: HTTP/1.1 over hyper's client connection API, plain or TLS (rustls with ring), the
//! ACL token on every request, and a small keep-alive pool.
//!
//! Each request in flight holds a connection of its own (a blocking query holds one for its
//! whole wait), and at most [`MAX_IDLE`] idle ones are kept, so the connections to the agent are
//! bounded by the requests waypost's config can have in flight at once: one blocking query per
//! watched service plus one per registration. Every request has a deadline (a blocking one:
//! its wait, Consul's jitter on it, and `request_timeout`), and every body read is bounded by
//! [`MAX_BODY`]. Agent answers are sorted into [`ConsulError`]s by status code, never by text.

use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request};
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::error::{status_error, ConsulError, Op};
use crate::config::{ConsulRegistryConfig, ConsulScheme};
use crate::metrics::ConsulMetrics;

/// Idle keep-alive connections kept for reuse.
const MAX_IDLE: usize = 4;
/// Largest answer body read: a health answer is about 1 KiB per instance, so this holds tens
/// of thousands of instances while bounding what a broken agent can make waypost buffer.
pub const MAX_BODY: usize = 32 * 1024 * 1024;

/// A successful answer.
#[derive(Debug)]
pub struct Reply {
    /// `X-Consul-Index`, when the agent sent one that parses.
    pub index: Option<u64>,
    /// The body.
    pub body: Bytes,
    /// Whether the agent left entries out that the token may not read
    /// (`X-Consul-Results-Filtered-By-ACLs`; only ever sent to a request with a token).
    pub filtered: bool,
}

/// What a connection runs over: TCP, or TLS over TCP.
trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

type Sender = SendRequest<Full<Bytes>>;

/// The shared agent client. Every method is `&self`.
pub struct ConsulClient {
    /// `host:port` to connect to.
    address: String,
    /// The `Host` header.
    authority: HeaderValue,
    tls: Option<(
        tokio_rustls::TlsConnector,
        rustls::pki_types::ServerName<'static>,
    )>,
    token: Option<HeaderValue>,
    datacenter: Option<String>,
    request_timeout: Duration,
    wait: Duration,
    /// Idle connections; taken by a request, given back once its answer is read whole.
    idle: Mutex<Vec<Sender>>,
    metrics: ConsulMetrics,
}

impl ConsulClient {
    /// A client for `registry.consul`. Reads the TLS files (a missing or malformed one fails
    /// at start-up, naming its key) but connects to nothing yet.
    pub fn from_config(cfg: &ConsulRegistryConfig, metrics: ConsulMetrics) -> Result<Self, String> {
        let authority = HeaderValue::from_str(&cfg.address)
            .map_err(|_| format!("registry.consul.address: {:?} is not a host", cfg.address))?;
        let token = cfg
            .token()
            .map(HeaderValue::from_str)
            .transpose()
            .map_err(|_| "registry.consul.token: not a valid header value".to_string())?;
        let tls = match (cfg.scheme, &cfg.tls) {
            (ConsulScheme::Https, Some(tls)) => Some(super::tls::connector(tls, cfg.host())?),
            _ => None,
        };
        Ok(Self {
            address: cfg.address.clone(),
            authority,
            tls,
            token,
            datacenter: cfg.datacenter.clone(),
            request_timeout: cfg.request_timeout.0,
            wait: cfg.wait.0,
            idle: Mutex::new(Vec::new()),
            metrics,
        })
    }

    /// The agent's address, as configured.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// The longest a blocking query waits for a change.
    pub fn wait(&self) -> Duration {
        self.wait
    }

    /// `PUT /v1/agent/service/register` with `body`.
    pub async fn register(&self, body: Vec<u8>) -> Result<(), ConsulError> {
        let path = "/v1/agent/service/register";
        self.call(
            Op::Register,
            Method::PUT,
            path,
            Some(body.into()),
            self.request_timeout,
        )
        .await
        .map(drop)
    }

    /// `PUT /v1/agent/service/deregister/<id>`.
    pub async fn deregister(&self, service_id: &str) -> Result<(), ConsulError> {
        self.on_id(Op::Deregister, "/v1/agent/service/deregister/", service_id)
            .await
    }

    /// `PUT /v1/agent/check/pass/<id>`: the TTL check passes, its clock starts again.
    pub async fn pass(&self, check_id: &str) -> Result<(), ConsulError> {
        self.on_id(Op::CheckPass, "/v1/agent/check/pass/", check_id)
            .await
    }

    /// `GET /v1/agent/service/<id>`: `Ok` while the agent knows the service.
    pub async fn service(&self, service_id: &str) -> Result<(), ConsulError> {
        self.on_id(Op::Service, "/v1/agent/service/", service_id)
            .await
    }

    /// `op` on the agent's `prefix<id>` (GET for a look-up, PUT for a change), answer unread.
    async fn on_id(&self, op: Op, prefix: &str, id: &str) -> Result<(), ConsulError> {
        let method = if op == Op::Service {
            Method::GET
        } else {
            Method::PUT
        };
        let path = format!("{prefix}{}", super::codec::encode(id));
        self.call(op, method, &path, None, self.request_timeout)
            .await
            .map(drop)
    }

    /// `GET /v1/health/service/<name>?<query>` — `target` is `<name>[?<query>]`, already
    /// encoded — in the configured datacenter; a blocking query from `index` when it is > 0.
    pub async fn health(&self, target: &str, index: u64) -> Result<Reply, ConsulError> {
        let mut path = format!("/v1/health/service/{target}");
        let mut sep = if target.contains('?') { '&' } else { '?' };
        let mut param = |path: &mut String, kv: String| {
            path.push(sep);
            path.push_str(&kv);
            sep = '&';
        };
        if let Some(dc) = &self.datacenter {
            param(&mut path, format!("dc={}", super::codec::encode(dc)));
        }
        let mut timeout = self.request_timeout;
        if index > 0 {
            param(&mut path, format!("index={index}"));
            // The Go client's form: whole milliseconds.
            param(
                &mut path,
                format!("wait={}ms", self.wait.as_millis().max(1)),
            );
            // The agent answers within the wait plus its jitter (up to wait/16).
            timeout += self.wait + self.wait / 16;
        }
        self.call(Op::Health, Method::GET, &path, None, timeout)
            .await
    }

    /// One request, bounded by `timeout`, on an idle connection or a new one; a reused
    /// connection that turns out closed before answering is replaced once (every request here
    /// is idempotent). Failures are counted.
    async fn call(
        &self,
        op: Op,
        method: Method,
        path: &str,
        body: Option<Bytes>,
        timeout: Duration,
    ) -> Result<Reply, ConsulError> {
        let attempt = async {
            let first = self.take_idle().await;
            let reused = first.is_some();
            let sender = match first {
                Some(s) => s,
                None => self.connect().await?,
            };
            match self.exchange(sender, &method, path, body.clone()).await {
                Err(Failure::Stale(e)) if reused => {
                    tracing::debug!(error = %e, "idle Consul connection was closed; reconnecting");
                    let sender = self.connect().await?;
                    self.exchange(sender, &method, path, body.clone())
                        .await
                        .map_err(Failure::into_error)
                }
                other => other.map_err(Failure::into_error),
            }
        };
        let result = match tokio::time::timeout(timeout, attempt).await {
            Ok(r) => r,
            Err(_) => Err(ConsulError::Unavailable(format!(
                "{} {path}: no answer within {timeout:?}",
                method
            ))),
        };
        if let Err(e) = &result {
            self.metrics
                .request_errors
                .with_label_values(&[op.as_str(), e.kind()])
                .inc();
        }
        result
    }

    /// An idle connection that is still usable.
    async fn take_idle(&self) -> Option<Sender> {
        loop {
            let mut sender = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop()?;
            if sender.ready().await.is_ok() {
                return Some(sender);
            }
        }
    }

    fn put_idle(&self, sender: Sender) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < MAX_IDLE {
            idle.push(sender);
        }
    }

    /// A new connection (TLS when configured), its driver spawned.
    async fn connect(&self) -> Result<Sender, ConsulError> {
        let unavailable = |what: &str, e: &dyn std::fmt::Display| {
            ConsulError::Unavailable(format!("{what} {}: {e}", self.address))
        };
        let tcp = TcpStream::connect(&self.address)
            .await
            .map_err(|e| unavailable("connect", &e))?;
        let _ = tcp.set_nodelay(true);
        let io: Box<dyn Io> = match &self.tls {
            Some((connector, name)) => Box::new(
                connector
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(|e| unavailable("TLS handshake with", &e))?,
            ),
            None => Box::new(tcp),
        };
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(|e| unavailable("HTTP/1.1 handshake with", &e))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "Consul agent connection ended");
            }
        });
        Ok(sender)
    }

    /// Sends one request on `sender` and reads the whole answer; gives `sender` back to the
    /// pool when the answer was read to its end.
    async fn exchange(
        &self,
        mut sender: Sender,
        method: &Method,
        path: &str,
        body: Option<Bytes>,
    ) -> Result<Reply, Failure> {
        let mut req = Request::builder()
            .method(method.clone())
            .uri(path)
            .header(header::HOST, self.authority.clone())
            .header(
                header::USER_AGENT,
                concat!("waypost/", env!("CARGO_PKG_VERSION")),
            );
        if let Some(token) = &self.token {
            req = req.header("x-consul-token", token.clone());
        }
        if body.is_some() {
            req = req.header(header::CONTENT_TYPE, "application/json");
        }
        let req = req.body(Full::new(body.unwrap_or_default())).map_err(|e| {
            Failure::Other(ConsulError::Unavailable(format!("bad request {path}: {e}")))
        })?;
        let resp = sender.send_request(req).await.map_err(|e| {
            // Nothing came back: a reused connection the agent had closed, or a dead agent.
            if e.is_canceled() || e.is_closed() || e.is_incomplete_message() {
                Failure::Stale(e.to_string())
            } else {
                Failure::Other(ConsulError::Unavailable(format!("{method} {path}: {e}")))
            }
        })?;
        let status = resp.status();
        let index = resp
            .headers()
            .get("x-consul-index")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let filtered = resp
            .headers()
            .get("x-consul-results-filtered-by-acls")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"true"));
        let body = Limited::new(resp.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| {
                Failure::Other(ConsulError::Unavailable(format!(
                    "{method} {path}: reading the answer: {e} (at most {MAX_BODY} bytes)"
                )))
            })?
            .to_bytes();
        self.put_idle(sender);
        if status.is_success() {
            return Ok(Reply {
                index,
                body,
                filtered,
            });
        }
        Err(Failure::Other(status_error(status, &body)))
    }
}

/// How one exchange failed.
enum Failure {
    /// The connection was closed before an answer: worth one more try on a new one.
    Stale(String),
    /// Anything else.
    Other(ConsulError),
}

impl Failure {
    fn into_error(self) -> ConsulError {
        match self {
            Failure::Stale(m) => ConsulError::Unavailable(m),
            Failure::Other(e) => e,
        }
    }
}

impl std::fmt::Debug for ConsulClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsulClient")
            .field("address", &self.address)
            .field("tls", &self.tls.is_some())
            .field("token", &self.token.as_ref().map(|_| "…"))
            .finish()
    }
}
