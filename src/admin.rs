//! Stage 6 — the admin listener, on its own port:
//!
//! | path                   | answers |
//! |------------------------|---------|
//! | `/metrics`             | Prometheus text exposition of every family |
//! | `/live`                | 200 while the process runs |
//! | `/ready`               | 200 once every declared service resolved successfully once and every `register:` entry was registered once, until shutdown begins; 503 with the reason otherwise |
//! | `/ready/outbound`      | the same without the registrations: waypost can forward (the native sidecar's startup probe, which must not wait for an app that starts only after it) |
//! | `/debug/services`      | JSON: every cached service, its instances and weights, resolver and full cache status |
//! | `/debug/registrations` | JSON: every `register:` entry, its state, health checks, last registry error and the registrar's view of it |
//!
//! Anything else is 404; methods other than GET/HEAD are 405.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use serde::Serialize;
use tokio::net::TcpListener;

use crate::cache::Cache;
use crate::config::ClientConfig;
use crate::forward::ServiceHandle;
use crate::metrics::Metrics;
use crate::register::RegistrationsView;
use crate::shutdown::Shutdown;

/// What the admin endpoints read.
pub struct Admin {
    cache: Cache<ServiceHandle>,
    metrics: Metrics,
    /// Cleared by `app.rs` when shutdown begins, so `/ready` fails before anything stops.
    accepting: Arc<AtomicBool>,
    registrations: RegistrationsView,
}

#[derive(Serialize)]
struct ServiceView<'a> {
    name: &'a str,
    declared: bool,
    resolver: &'static str,
    idle_seconds: Option<f64>,
    pickable: usize,
    /// `random`, `round_robin` or `p2c`.
    balancer: crate::config::BalancerKind,
    /// Requests in flight to the service.
    in_flight: u32,
    instances: Vec<InstanceView<'a>>,
    status: Option<&'a crate::cache::Status>,
}

#[derive(Serialize)]
struct InstanceView<'a> {
    address: String,
    weight: u32,
    /// The weight picks use now: lower while slow start ramps the instance up.
    effective_weight: f64,
    /// Its share of picks by effective weight (before ejections and P2C's scores).
    share: f64,
    in_flight: u32,
    /// The latency estimate P2C scores with (milliseconds).
    latency_ms: f64,
    consecutive_failures: u32,
    consecutive_5xx: u32,
    /// Seconds left of its ejection (0 when over and waiting for its trial); absent when in.
    ejected_for_seconds: Option<f64>,
    tags: &'a std::collections::BTreeMap<String, String>,
}

impl Admin {
    /// The admin endpoints over `cache`, `metrics` and `registrations`; `accepting` is the
    /// readiness switch.
    pub fn new(
        cache: Cache<ServiceHandle>,
        metrics: Metrics,
        accepting: Arc<AtomicBool>,
        registrations: RegistrationsView,
    ) -> Self {
        Self {
            cache,
            metrics,
            accepting,
            registrations,
        }
    }

    /// Why the process is not ready, or `None` when it is: [`Admin::not_ready_outbound`], and
    /// every `register:` entry registered at least once.
    pub fn not_ready(&self) -> Option<String> {
        self.not_ready_outbound()
            .or_else(|| self.registrations.not_ready())
    }

    /// Why the process cannot forward yet, or `None` when it can: shutdown has not begun and
    /// every declared service resolved once.
    pub fn not_ready_outbound(&self) -> Option<String> {
        if !self.accepting.load(Ordering::Acquire) {
            return Some("shutting down".into());
        }
        let waiting: Vec<String> = self
            .cache
            .targets()
            .iter()
            .filter(|t| t.is_declared())
            .filter(|t| {
                let snap = t.publisher().balancer.snapshot();
                !matches!(&*snap, Some(s) if s.status.last_success.is_some())
            })
            .map(|t| t.name().to_string())
            .collect();
        (!waiting.is_empty()).then(|| {
            format!(
                "waiting for the first resolution of: {}",
                waiting.join(", ")
            )
        })
    }

    fn metrics_text(&self) -> Vec<u8> {
        let now = SystemTime::now();
        for t in self.cache.targets() {
            // Counted by the requests themselves; the gauge is set when scraped.
            self.metrics
                .forward
                .resilience
                .in_flight
                .with_label_values(&[t.name()])
                .set(i64::from(t.publisher().in_flight()));
            if let Some(snap) = &*t.publisher().balancer.snapshot() {
                if let Some(ok) = snap.status.last_success {
                    let age = now
                        .duration_since(ok)
                        .unwrap_or(Duration::ZERO)
                        .as_secs_f64();
                    self.metrics
                        .discovery
                        .table_age
                        .with_label_values(&[t.name()])
                        .set(age);
                }
            }
        }
        self.metrics.encode()
    }

    fn services_json(&self) -> Vec<u8> {
        let targets = self.cache.targets();
        let snaps: Vec<_> = targets
            .iter()
            .map(|t| t.publisher().balancer.snapshot())
            .collect();
        let views: Vec<ServiceView<'_>> = targets
            .iter()
            .zip(&snaps)
            .map(|(t, snap)| {
                let svc = t.publisher();
                let snap = snap.as_ref().as_ref();
                let total: u64 = snap.map_or(0, |s| s.weights.iter().sum());
                let now = svc.balancer.clock().ms(tokio::time::Instant::now());
                ServiceView {
                    name: t.name(),
                    declared: t.is_declared(),
                    resolver: snap.map_or("", |s| s.status.resolver),
                    idle_seconds: (!t.is_declared()).then(|| t.idle().as_secs_f64()),
                    pickable: snap.map_or(0, |s| s.table.pickable()),
                    balancer: svc.balancer.kind(),
                    in_flight: svc.in_flight(),
                    instances: snap.map_or_else(Vec::new, |s| {
                        s.table
                            .instances()
                            .iter()
                            .zip(s.states.iter().zip(s.weights.iter()))
                            .map(|(i, (st, &w))| {
                                let (failures, errors) = st.consecutive();
                                InstanceView {
                                    address: i.address.to_string(),
                                    weight: i.weight,
                                    effective_weight: w as f64 / crate::balance::SCALE as f64,
                                    share: if total == 0 {
                                        0.0
                                    } else {
                                        w as f64 / total as f64
                                    },
                                    in_flight: st.in_flight(),
                                    latency_ms: st.latency_us() / 1000.0,
                                    consecutive_failures: failures,
                                    consecutive_5xx: errors,
                                    ejected_for_seconds: st
                                        .ejected_until()
                                        .map(|u| u.saturating_sub(now) as f64 / 1000.0),
                                    tags: &i.tags,
                                }
                            })
                            .collect()
                    }),
                    status: snap.map(|s| &s.status),
                }
            })
            .collect();
        let doc = serde_json::json!({ "services": views, "on_demand_rules": self.cache.rules() });
        serde_json::to_vec_pretty(&doc).unwrap_or_default()
    }

    /// Answers one admin request.
    pub fn handle(&self, req: &Request<Incoming>) -> Response<Full<Bytes>> {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n".into());
        }
        match req.uri().path() {
            "/metrics" => {
                let mut r = Response::new(Full::new(Bytes::from(self.metrics_text())));
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                r
            }
            "/live" => text(StatusCode::OK, "live\n".into()),
            "/ready" => readiness(self.not_ready()),
            "/ready/outbound" => readiness(self.not_ready_outbound()),
            "/debug/services" => json(self.services_json()),
            "/debug/registrations" => {
                json(serde_json::to_vec_pretty(&self.registrations.to_json()).unwrap_or_default())
            }
            _ => text(
                StatusCode::NOT_FOUND,
                "not found: try /metrics, /live, /ready, /debug/services, /debug/registrations\n"
                    .into(),
            ),
        }
    }

    /// Serves the admin endpoints on `listener` until `stop` fires.
    ///
    /// The admin listener is often reachable from the whole cluster (probes and scrapes use the
    /// pod's IP), so it has the forwarding listeners' protections: a connection that sends
    /// nothing, or no complete head, within `client.header_timeout` is closed (also between
    /// keep-alive requests), and HTTP/2 has the `client.http2` limits. HTTP/1 and h2c are told
    /// apart by the first bytes, under that same timeout (hyper-util's automatic detection waits
    /// for them without one).
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        mut stop: Shutdown,
        client: &ClientConfig,
    ) {
        let mut h1 = hyper::server::conn::http1::Builder::new();
        h1.timer(TokioTimer::new())
            .header_read_timeout(client.header_timeout.0);
        let mut h2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        let limits = &client.http2;
        h2.timer(TokioTimer::new())
            .max_concurrent_streams(limits.max_concurrent_streams)
            .max_header_list_size(client.http2_max_header_list_size() as u32)
            .max_pending_accept_reset_streams(limits.max_pending_accept_reset_streams)
            .max_local_error_reset_streams(limits.max_local_error_reset_streams);
        let (h1, h2) = (Arc::new(h1), Arc::new(h2));
        let header_timeout = client.header_timeout.0;
        loop {
            let stream = tokio::select! {
                biased;
                _ = stop.recv() => break,
                accepted = listener.accept() => match accepted {
                    Ok((s, _)) => s,
                    Err(e) => {
                        tracing::warn!(error = %e, "admin accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let (admin, h1, h2) = (self.clone(), h1.clone(), h2.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let resp = admin.handle(&req);
                    async move { Ok::<_, std::convert::Infallible>(resp) }
                });
                let until = tokio::time::Instant::now() + header_timeout;
                let _ = match crate::forward::sniff_h2c(&stream, until).await {
                    None => return,
                    Some(true) => h2.serve_connection(TokioIo::new(stream), svc).await,
                    Some(false) => h1.serve_connection(TokioIo::new(stream), svc).await,
                };
            });
        }
    }
}

fn readiness(not_ready: Option<String>) -> Response<Full<Bytes>> {
    match not_ready {
        None => text(StatusCode::OK, "ready\n".into()),
        Some(why) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        ),
    }
}

fn json(body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    r
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}
