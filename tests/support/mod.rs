//! Test support: upstreams on `127.0.0.1:0`, waypost built from inline YAML (in-process, or the
//! real binary as a child process), a small HTTP client, and `eventually` for settling.
#![allow(dead_code)]

pub mod binary;
pub mod consul;
pub mod dnsmasq;
pub mod dnstest;
pub mod etcd;
pub mod external;
pub mod haproxy;
pub mod health;
pub mod raw;
pub mod recorder;
pub mod tls;
pub mod zookeeper;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{combinators::BoxBody, BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// A body usable for requests in tests.
pub type TestBody = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// The app's HTTP/1.1 client, as [`client`] builds it.
pub type AppClient = Client<hyper_util::client::legacy::connect::HttpConnector, TestBody>;

/// Deadline for one asynchronous change to settle: a refresh, a registry watch, a resolver
/// giving up.
pub const SETTLE: Duration = Duration::from_secs(10);

/// Runs `test`, failing it if it takes longer than `limit` — so a proxy (or a test) waiting for
/// something that never comes fails instead of hanging.
pub async fn within<F: Future>(limit: Duration, test: F) -> F::Output {
    tokio::time::timeout(limit, test)
        .await
        .unwrap_or_else(|_| panic!("test did not finish within {limit:?}: something never came"))
}

/// A running test upstream: answers `x-instance: <name>`; `/slow?ms=N` sleeps first; any other
/// path echoes the request body. Stops when dropped.
pub struct Upstream {
    pub addr: SocketAddr,
    pub name: String,
    pub hits: Arc<AtomicUsize>,
    /// Connections accepted so far.
    pub conns: Arc<AtomicUsize>,
    _stop: oneshot::Sender<()>,
}

impl Upstream {
    /// Starts an upstream named `name` on a free loopback port.
    pub async fn start(name: &str) -> Upstream {
        Self::start_on("127.0.0.1:0".parse().unwrap(), name).await
    }

    /// Starts an upstream named `name` on `addr` — any 127.0.0.x, since Linux routes all of
    /// 127.0.0.0/8 to loopback (DNS tests point records at 127.0.0.2, 127.0.0.3…). Port 0
    /// picks a free one.
    pub async fn start_on(addr: SocketAddr, name: &str) -> Upstream {
        Self::try_start_on(addr, name)
            .await
            .unwrap_or_else(|e| panic!("cannot bind upstream {name} on {addr}: {e}"))
    }

    /// [`Upstream::start_on`], returning the bind error (the port may be taken).
    pub async fn try_start_on(addr: SocketAddr, name: &str) -> std::io::Result<Upstream> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let hits = Arc::new(AtomicUsize::new(0));
        let conns = Arc::new(AtomicUsize::new(0));
        let (tx, mut rx) = oneshot::channel();
        let (n, h, c) = (Arc::<str>::from(name), hits.clone(), conns.clone());
        tokio::spawn(async move {
            let builder = Arc::new(hyper_util::server::conn::auto::Builder::new(
                TokioExecutor::new(),
            ));
            loop {
                let stream = tokio::select! {
                    _ = &mut rx => break,
                    r = listener.accept() => match r { Ok((s, _)) => s, Err(_) => continue },
                };
                c.fetch_add(1, Ordering::Relaxed);
                let (n, h, b) = (n.clone(), h.clone(), builder.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let (n, h) = (n.clone(), h.clone());
                        async move {
                            h.fetch_add(1, Ordering::Relaxed);
                            let body: BoxBody<Bytes, hyper::Error> = if req.uri().path() == "/slow"
                            {
                                let ms = req
                                    .uri()
                                    .query()
                                    .and_then(|q| q.strip_prefix("ms="))
                                    .and_then(|v| v.parse().ok())
                                    .unwrap_or(1000);
                                tokio::time::sleep(Duration::from_millis(ms)).await;
                                Full::new(Bytes::from_static(b"slow\n"))
                                    .map_err(|n| match n {})
                                    .boxed()
                            } else if req.uri().path() == "/bytes" {
                                let n: usize = req
                                    .uri()
                                    .query()
                                    .and_then(|q| q.strip_prefix("n="))
                                    .and_then(|v| v.parse().ok())
                                    .unwrap_or(0);
                                streamed_body(n)
                                    .map_err(|_| -> hyper::Error {
                                        unreachable!("in-memory chunks never fail")
                                    })
                                    .boxed()
                            } else if req.uri().path() == "/headers" {
                                let mut text = String::new();
                                for (k, v) in req.headers() {
                                    text.push_str(&format!("{k}: {}\n", v.to_str().unwrap_or("?")));
                                }
                                Full::new(Bytes::from(text)).map_err(|n| match n {}).boxed()
                            } else {
                                req.into_body().boxed()
                            };
                            let mut resp = Response::new(body);
                            resp.headers_mut().insert("x-instance", n.parse().unwrap());
                            Ok::<_, std::convert::Infallible>(resp)
                        }
                    });
                    let _ = b.serve_connection(TokioIo::new(stream), svc).await;
                });
            }
        });
        Ok(Upstream {
            addr,
            name: name.to_string(),
            hits,
            conns,
            _stop: tx,
        })
    }

    /// One upstream per `(ip, name)`, all on the same port (DNS A records carry no port, so a
    /// service resolved by name uses one port for every address). Retries with another port if
    /// one of the addresses has it taken.
    pub async fn start_on_shared_port(instances: &[(&str, &str)]) -> (u16, Vec<Upstream>) {
        for _ in 0..20 {
            let (ip, name) = instances[0];
            let first = Upstream::start_on(SocketAddr::new(ip.parse().unwrap(), 0), name).await;
            let port = first.addr.port();
            let mut ups = vec![first];
            for (ip, name) in &instances[1..] {
                match Upstream::try_start_on(SocketAddr::new(ip.parse().unwrap(), port), name).await
                {
                    Ok(u) => ups.push(u),
                    Err(_) => break,
                }
            }
            if ups.len() == instances.len() {
                return (port, ups);
            }
        }
        panic!("no port free on every one of {instances:?}");
    }

    /// Requests this upstream has answered.
    pub fn hit_count(&self) -> usize {
        self.hits.load(Ordering::Relaxed)
    }
}

/// A loopback address nothing listens on (bound, then released).
pub async fn dead_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

/// waypost running in-process, built from YAML. Stops (with its shutdown sequence) when dropped.
pub struct TestProxy {
    pub addrs: waypost::app::Addrs,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl TestProxy {
    /// Builds waypost from `yaml` (listen and admin default to `127.0.0.1:0`), runs it and
    /// waits until `/ready`.
    pub async fn start(yaml: &str) -> TestProxy {
        let proxy = Self::start_unready(yaml).await;
        proxy.wait_ready().await;
        proxy
    }

    /// [`TestProxy::start`] without waiting for `/ready` — for configs whose services cannot
    /// resolve (a dead registry), where readiness is never reached.
    pub async fn start_unready(yaml: &str) -> TestProxy {
        let mut text = String::new();
        if !yaml.lines().any(|l| l.starts_with("listen:")) {
            text.push_str("listen: 127.0.0.1:0\n");
        }
        if !yaml.lines().any(|l| l.starts_with("admin:")) {
            text.push_str("admin: {listen: 127.0.0.1:0}\n");
        }
        text.push_str(yaml);
        let config = waypost::config::load_str("test.yaml", &text, &|_| None)
            .unwrap_or_else(|e| panic!("{e}"));
        let app = waypost::App::build(config).await.unwrap();
        let addrs = app.addrs().clone();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(app.run(async move {
            let _ = rx.await;
        }));
        TestProxy {
            addrs,
            stop: Some(tx),
            task: Some(task),
        }
    }

    /// waypost with one static service `echo` whose single instance is `up`.
    pub async fn in_front_of(up: &Upstream) -> TestProxy {
        TestProxy::in_front_of_with(up.addr, "").await
    }

    /// waypost with one static service `echo` whose single instance is `addr`, and the
    /// top-level keys `extra_yaml` (whole lines, e.g. `"upstream: {timeout: 3s}\n"`).
    pub async fn in_front_of_with(addr: SocketAddr, extra_yaml: &str) -> TestProxy {
        TestProxy::start(&format!(
            "{extra_yaml}services:\n{}",
            static_service("echo", &[(addr, 1)])
        ))
        .await
    }

    /// Waits until `/ready` answers 200.
    pub async fn wait_ready(&self) {
        wait_ready_at(self.addrs.admin).await;
    }

    /// `http://<outbound listener>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addrs.outbound)
    }

    /// `http://<admin listener>`.
    pub fn admin(&self) -> String {
        format!("http://{}", self.addrs.admin)
    }

    /// Runs the shutdown sequence and waits for it.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
    }
}

impl Drop for TestProxy {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// A response read whole.
#[derive(Debug)]
pub struct Got {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
    /// Trailer fields after a chunked body, if any came.
    pub trailers: Option<http::HeaderMap>,
}

impl Got {
    /// A header as text ("" when absent).
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A pooled HTTP/1.1 client (keep-alive), shared by a test.
pub fn client() -> AppClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// An empty request body.
pub fn empty() -> TestBody {
    Empty::new().map_err(|n| match n {}).boxed()
}

/// Sends `req` with `client` and reads the whole response.
pub async fn send(client: &AppClient, req: Request<TestBody>) -> anyhow::Result<Got> {
    let resp = client.request(req).await?;
    let (head, body) = resp.into_parts();
    let collected = body.collect().await?;
    let trailers = collected.trailers().cloned();
    Ok(Got {
        status: head.status.as_u16(),
        headers: head.headers,
        body: collected.to_bytes(),
        trailers,
    })
}

/// GET `url` with extra `headers` on a fresh client.
pub async fn get(url: &str, headers: &[(&str, &str)]) -> anyhow::Result<Got> {
    let mut b = Request::get(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    send(&client(), b.body(empty())?).await
}

/// Polls `check` until it returns true, failing the test after `deadline`.
pub async fn eventually<F, Fut>(deadline: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = tokio::time::Instant::now();
    loop {
        if check().await {
            return;
        }
        assert!(
            start.elapsed() < deadline,
            "condition not met within {deadline:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Waits (up to 10 s) until the admin listener at `admin` answers `/ready` with 200.
pub async fn wait_ready_at(admin: SocketAddr) {
    eventually(Duration::from_secs(10), || async move {
        get(&format!("http://{admin}/ready"), &[])
            .await
            .is_ok_and(|r| r.status == 200)
    })
    .await;
}

/// Waits (up to 10 s) until the waypost child `proc`, whose admin listener is `admin`, answers
/// `/ready` with 200; if it exits first, fails with its log (`<dir>/<name>.log`, as
/// [`external::spawn_waypost`] writes it) instead of timing out.
pub async fn wait_child_ready(proc: &mut external::Proc, admin: SocketAddr, dir: &std::path::Path) {
    let ready = format!("http://{admin}/ready");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = proc.child.try_wait().unwrap() {
            let log = dir.join(format!("{}.log", proc.name));
            let log = std::fs::read_to_string(log).unwrap_or_default();
            panic!("{} exited ({status}) instead of serving:\n{log}", proc.name);
        }
        if get(&ready, &[]).await.is_ok_and(|r| r.status == 200) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} not ready within 10 s",
            proc.name
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The `/debug/services` entry of `name`; `None` only when the document lists no such service.
/// A failed request, a non-200 answer or a document that is not the expected JSON panics, so a
/// broken endpoint cannot pass for "not cached".
pub async fn debug_service(proxy: &TestProxy, name: &str) -> Option<Value> {
    let url = format!("{}/debug/services", proxy.admin());
    let got = get(&url, &[])
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e:#}"));
    assert_eq!(got.status, 200, "GET {url}: {}", got.text());
    let json: Value = serde_json::from_slice(&got.body)
        .unwrap_or_else(|e| panic!("GET {url}: not JSON ({e}): {}", got.text()));
    json["services"]
        .as_array()
        .unwrap_or_else(|| panic!("GET {url}: no `services` array: {json}"))
        .iter()
        .find(|s| s["name"] == name)
        .cloned()
}

/// Waits (up to [`SETTLE`]) until `/debug/services` shows `status.<field> == value` for `name`.
pub async fn await_status(proxy: &TestProxy, name: &str, field: &str, value: Value) {
    eventually(SETTLE, || async {
        debug_service(proxy, name)
            .await
            .is_some_and(|s| s["status"][field] == value)
    })
    .await;
}

/// The Prometheus text of `/metrics`.
pub async fn metrics(proxy: &TestProxy) -> String {
    let got = get(&format!("{}/metrics", proxy.admin()), &[])
        .await
        .unwrap();
    assert_eq!(got.status, 200, "/metrics: {}", got.text());
    got.text()
}

/// The value of the sample of metric `name` whose labels include every `labels` pair, in the
/// Prometheus text exposition `text`; `None` when there is no such sample.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, rest) = series.split_once('{').unwrap_or((series, ""));
            if metric != name {
                return None;
            }
            let has_all = labels.iter().all(|(k, v)| {
                rest.split(',')
                    .any(|p| p.trim_end_matches('}') == format!("{k}=\"{v}\""))
            });
            has_all.then(|| value.parse().ok()).flatten()
        })
}

/// YAML for a static service `name` over `(addr, weight)` pairs.
pub fn static_service(name: &str, instances: &[(SocketAddr, u32)]) -> String {
    let mut s = format!("  {name}:\n    resolver:\n      static:\n        instances:\n");
    for (addr, w) in instances {
        s.push_str(&format!(
            "          - {{address: \"{addr}\", weight: {w}}}\n"
        ));
    }
    s
}

/// A body of `len` bytes streamed in 64 KiB chunks, never held whole in memory.
pub fn streamed_body(len: usize) -> TestBody {
    const CHUNK: usize = 64 * 1024;
    let chunk = Bytes::from(vec![b'z'; CHUNK]);
    let chunks = len.div_ceil(CHUNK);
    let stream = futures_util::stream::iter((0..chunks).map(move |i| {
        let n = if i + 1 == chunks {
            len - i * CHUNK
        } else {
            CHUNK
        };
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(http_body::Frame::data(chunk.slice(..n)))
    }));
    http_body_util::StreamBody::new(stream).boxed()
}

/// Sends `body` as a POST, counting response bytes without keeping them.
pub async fn post_count(url: &str, host: &str, body: TestBody) -> anyhow::Result<(u16, usize)> {
    let req = Request::post(url).header("host", host).body(body)?;
    let resp = client().request(req).await?;
    let status = resp.status().as_u16();
    let mut body = resp.into_body();
    let mut total = 0;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            total += data.len();
        }
    }
    Ok((status, total))
}

/// Full-body helper for small requests.
pub fn full(b: impl Into<Bytes>) -> TestBody {
    Full::new(b.into()).map_err(|n| match n {}).boxed()
}

/// Sends `n` GETs for `host` through `proxy` on one keep-alive client and counts the answers
/// by `x-instance`; every one must be a 200.
pub async fn spread(
    proxy: &TestProxy,
    host: &str,
    n: usize,
) -> std::collections::HashMap<String, usize> {
    let client = client();
    let mut counts = std::collections::HashMap::new();
    for _ in 0..n {
        let req = Request::get(format!("{}/", proxy.url()))
            .header("host", host)
            .body(empty())
            .unwrap();
        let got = send(&client, req).await.unwrap();
        *counts.entry(instance(&got, host)).or_default() += 1;
    }
    counts
}

/// The name of the instance that answered `got` (a request for `host`); any answer but a 200
/// fails the test with waypost's error marker and the body.
fn instance(got: &Got, host: &str) -> String {
    assert_eq!(
        got.status,
        200,
        "{host}: {} {}",
        got.header("x-waypost-error"),
        got.text()
    );
    got.header("x-instance").to_string()
}

/// Asserts each instance's share of `counts` is within ±`tolerance` (relative) of the wanted one.
pub fn assert_shares(
    counts: &std::collections::HashMap<String, usize>,
    wanted: &[(&str, f64)],
    tolerance: f64,
) {
    let total: usize = counts.values().sum();
    for (name, want) in wanted {
        let share = counts.get(*name).copied().unwrap_or(0) as f64 / total as f64;
        assert!(
            (share - want).abs() <= want * tolerance,
            "{name}: share {share:.3}, expected {want:.3} ±{:.0} %: {counts:?}",
            tolerance * 100.0
        );
    }
}

/// GETs `/` for `host` through `proxy` and asserts waypost answered it with `status` and the
/// `x-waypost-error` marker `kind`; returns the response.
pub async fn expect_error(proxy: &TestProxy, host: &str, status: u16, kind: &str) -> Got {
    let got = get(&format!("{}/", proxy.url()), &[("host", host)])
        .await
        .unwrap();
    assert_eq!(
        (got.status, got.header("x-waypost-error")),
        (status, kind),
        "{host}: {}",
        got.text()
    );
    got
}

/// GETs `/` for `host` through the outbound listener `url`; the answering instance's name. Any
/// answer but a 200 fails the test.
pub async fn routed_to(url: &str, host: &str) -> String {
    let got = get(&format!("{url}/"), &[("host", host)]).await.unwrap();
    instance(&got, host)
}

/// The names of the instances answering `host` over `n` requests, sorted; a request waypost
/// answers itself (no instance yet, say) shows as its `x-waypost-error` marker.
pub async fn answering(proxy: &TestProxy, host: &str, n: usize) -> Vec<String> {
    let mut names = std::collections::BTreeSet::new();
    for _ in 0..n {
        let got = get(&format!("{}/", proxy.url()), &[("host", host)])
            .await
            .unwrap();
        names.insert(match got.status {
            200 => got.header("x-instance").to_string(),
            _ => format!("error: {}", got.header("x-waypost-error")),
        });
    }
    names.into_iter().collect()
}

/// A registration of `service` at `addr` with `weight` and `tags` (TTL 10 s).
pub fn registration(
    service: &str,
    addr: &str,
    weight: u32,
    tags: &[(&str, &str)],
) -> waypost::register::Registration {
    waypost::register::Registration {
        service: service.into(),
        address: addr.parse().unwrap(),
        weight,
        tags: Arc::new(
            tags.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        ),
        ttl: Duration::from_secs(10),
    }
}
