//! The double's HTTP layer: hyper's HTTP/1.1 server on a loopback port, routing the agent
//! endpoints waypost and the Go frameworks use to the state machine, with Consul's query
//! parsing (`index`, `wait` capped at 10 minutes plus up to wait/16 of jitter, `passing` as Go's
//! `ParseBool`, `tag`, `dc`), its ACL answers, its response headers, and the fault knobs.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::time::Instant;

use super::state::{parse_go_duration, Refusal, DATACENTER};
use super::{Logged, Rights, Shared};

/// Consul's default blocking wait and its cap (`blocking.mdx`).
const DEFAULT_WAIT: Duration = Duration::from_secs(300);
const MAX_WAIT: Duration = Duration::from_secs(600);
/// Largest request body the double reads.
const MAX_BODY: usize = 1024 * 1024;

/// Accepts connections on `listener` (over TLS when `tls` is set) until the task is aborted;
/// aborting it drops every open connection with it (they live in its `JoinSet`).
pub async fn serve(
    shared: Arc<Shared>,
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    let mut conns = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let shared = shared.clone();
                let tls = tls.clone();
                conns.spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let shared = shared.clone();
                        async move { Ok::<_, Infallible>(handle(shared, req).await) }
                    });
                    let http = hyper::server::conn::http1::Builder::new();
                    match tls {
                        None => {
                            let _ = http.serve_connection(TokioIo::new(stream), svc).await;
                        }
                        // A failed handshake (no client certificate, an unknown CA) drops the
                        // connection, as the agent's TLS listener does.
                        Some(acceptor) => {
                            if let Ok(stream) = acceptor.accept(stream).await {
                                let _ = http.serve_connection(TokioIo::new(stream), svc).await;
                            }
                        }
                    }
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

fn text(status: u16, body: impl Into<String>) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body.into())));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut()
        .insert("content-type", "text/plain; charset=utf-8".parse().unwrap());
    resp
}

fn refused((status, message): Refusal) -> Response<Full<Bytes>> {
    text(status, message)
}

/// The query parameters of `req`, decoded.
fn query(req: &Request<Incoming>) -> Vec<(String, String)> {
    req.uri()
        .query()
        .map(|q| {
            q.split('&')
                .filter(|p| !p.is_empty())
                .map(|p| {
                    let (k, v) = p.split_once('=').unwrap_or((p, ""));
                    (decode(k, true), decode(v, true))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Percent-decoding of a path segment, or of a query part when `query` (where `+` is a space,
/// as Go reads it).
fn decode(s: &str, query: bool) -> String {
    let bytes = s.as_bytes();
    let hex = |b: u8| char::from(b).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match (
            bytes[i],
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
            (b'+', _, _) if query => out.push(b' '),
            (b, _, _) => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn param<'a>(q: &'a [(String, String)], name: &str) -> Option<&'a str> {
    q.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// The request's token: `X-Consul-Token`, `Authorization: Bearer`, or `?token=`.
fn token(req: &Request<Incoming>, q: &[(String, String)]) -> Option<String> {
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
    header("x-consul-token")
        .map(str::to_string)
        .or_else(|| {
            header("authorization")
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(str::to_string)
        })
        .or_else(|| param(q, "token").map(str::to_string))
        .filter(|t| !t.is_empty())
}

/// The endpoint a path names (for the request log) and the part after its prefix.
fn route(path: &str) -> Option<(&'static str, &str)> {
    const ROUTES: [(&str, &str); 9] = [
        ("/v1/agent/service/register", "register"),
        ("/v1/agent/service/deregister/", "deregister"),
        ("/v1/agent/service/", "service"),
        ("/v1/agent/check/pass/", "pass"),
        ("/v1/agent/check/warn/", "warn"),
        ("/v1/agent/check/fail/", "fail"),
        ("/v1/agent/check/update/", "update"),
        ("/v1/health/service/", "health"),
        ("/v1/catalog/service/", "catalog"),
    ];
    ROUTES
        .iter()
        .find_map(|(prefix, name)| path.strip_prefix(prefix).map(|rest| (*name, rest)))
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    let q = query(&req);
    let token = token(&req, &q);
    let Some((endpoint, rest)) = route(&path) else {
        return text(404, "404 page not found\n");
    };
    let rest = decode(rest, false);
    shared.log(Logged {
        at: Instant::now(),
        endpoint,
        path_and_query: req
            .uri()
            .path_and_query()
            .map_or(String::new(), |p| p.to_string()),
        token: token.clone(),
    });
    let knobs = shared.knobs();
    if let Some(delay) = knobs.slow {
        tokio::time::sleep(delay).await;
    }
    if knobs.failing {
        return text(500, "rpc error making call: No cluster leader");
    }
    let method = req.method().clone();
    let want = match endpoint {
        "service" | "health" | "catalog" => Method::GET,
        _ => Method::PUT,
    };
    if method != want {
        return text(405, format!("method {method} not allowed"));
    }
    // An unknown token is refused before anything else (ResolveTokenAndDefaultMeta).
    let rights = match shared.rights(token.as_deref()) {
        Ok(r) => r,
        Err(refusal) => return refused(refusal),
    };
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return text(400, format!("Request decode failed: {e}")),
    };
    let now = Instant::now();
    let result = match endpoint {
        "register" => {
            lock_bodies(&shared).push(String::from_utf8_lossy(&body).into_owned());
            shared
                .register(&body, rights, token.is_some())
                .map(|()| None)
        }
        "deregister" => {
            let mut state = shared.state();
            let r = state
                .service_of(&rest)
                .map(|s| s.name.clone())
                .and_then(|name| Shared::allow(rights, Rights::Write, &name, token.is_some()))
                .and_then(|()| state.deregister(&rest));
            drop(state);
            r.map(|()| {
                shared.changed();
                None
            })
        }
        "service" => {
            let state = shared.state();
            state.agent_service(&rest).and_then(|v| {
                let name = v["Service"].as_str().unwrap_or_default().to_string();
                Shared::allow(rights, Rights::Read, &name, token.is_some()).map(|()| Some(v))
            })
        }
        "pass" | "warn" | "fail" | "update" => {
            let status = match endpoint {
                "pass" => Ok((
                    "passing".to_string(),
                    param(&q, "note").unwrap_or("").to_string(),
                )),
                "warn" => Ok((
                    "warning".to_string(),
                    param(&q, "note").unwrap_or("").to_string(),
                )),
                "fail" => Ok((
                    "critical".to_string(),
                    param(&q, "note").unwrap_or("").to_string(),
                )),
                _ => update_body(&body),
            };
            status.and_then(|(status, output)| {
                let mut state = shared.state();
                let name = state.check_service(&rest)?;
                Shared::allow(rights, Rights::Write, &name, token.is_some())?;
                let before = state.index;
                state.update_ttl(&rest, &status, &output, now)?;
                let moved = state.index != before;
                drop(state);
                if moved {
                    shared.changed();
                }
                Ok(None)
            })
        }
        _ => return read(&shared, endpoint, &rest, &q, rights, token.is_some()).await,
    };
    match result {
        Ok(None) => text(200, ""),
        Ok(Some(v)) => json(200, &v, None),
        Err(refusal) => refused(refusal),
    }
}

fn lock_bodies(shared: &Shared) -> std::sync::MutexGuard<'_, Vec<String>> {
    shared.bodies.lock().unwrap_or_else(|p| p.into_inner())
}

/// The body of `PUT /v1/agent/check/update/<id>`: `{"Status", "Output"}`.
fn update_body(body: &[u8]) -> Result<(String, String), Refusal> {
    let v: Value =
        serde_json::from_slice(body).map_err(|e| (400, format!("Request decode failed: {e}")))?;
    let status = v["Status"].as_str().unwrap_or_default().to_string();
    if !matches!(status.as_str(), "passing" | "warning" | "critical") {
        return Err((400, format!("Invalid check status: '{status}'")));
    }
    Ok((status, v["Output"].as_str().unwrap_or_default().to_string()))
}

/// `GET /v1/health/service/<name>` and `GET /v1/catalog/service/<name>`: blocking reads.
async fn read(
    shared: &Arc<Shared>,
    endpoint: &str,
    name: &str,
    q: &[(String, String)],
    rights: Option<Rights>,
    with_token: bool,
) -> Response<Full<Bytes>> {
    if param(q, "filter").is_some() {
        return text(400, "the Consul double does not implement ?filter");
    }
    if let Some(dc) = param(q, "dc") {
        if dc != DATACENTER {
            return text(500, "No path to datacenter");
        }
    }
    let passing = match param(q, "passing") {
        None => false,
        Some("") => true,
        Some(v) => match v {
            "1" | "t" | "T" | "TRUE" | "true" | "True" => true,
            "0" | "f" | "F" | "FALSE" | "false" | "False" => false,
            _ => return text(400, "Invalid value for ?passing"),
        },
    };
    let index = match param(q, "index").map(str::parse::<u64>) {
        None => 0,
        Some(Ok(i)) => i,
        Some(Err(_)) => return text(400, "Invalid index"),
    };
    let wait = match param(q, "wait").map(parse_go_duration) {
        None => DEFAULT_WAIT,
        Some(Ok(w)) => w.min(MAX_WAIT),
        Some(Err(_)) => return text(400, "Invalid wait time"),
    };
    if index > 0 {
        // Block until the index passes the one asked for, the state is abandoned (a restore),
        // or the wait (plus up to wait/16 of jitter) runs out.
        let deadline = Instant::now() + wait + wait.mul_f64(fastrand::f64() / 16.0);
        shared.wait_past(index, deadline).await;
        // The answer is made now: an agent that began failing during the wait fails it.
        if shared.knobs().failing {
            return text(500, "rpc error making call: No cluster leader");
        }
    }
    let tag = param(q, "tag");
    let state = shared.state();
    let readable = rights.is_some_and(|r| r >= Rights::Read);
    let mut body = match endpoint {
        "health" => state.health(name, tag, passing),
        _ => state.catalog(name, tag),
    };
    let filtered = !readable && body.as_array().is_some_and(|a| !a.is_empty());
    if !readable {
        // ACLs filter what a token may not read rather than refusing the read.
        body = Value::Array(Vec::new());
    }
    let reported = if shared.knobs().index_zero {
        0
    } else {
        state.index
    };
    drop(state);
    let mut resp = json(200, &body, Some(reported));
    if filtered && with_token {
        resp.headers_mut()
            .insert("x-consul-results-filtered-by-acls", "true".parse().unwrap());
    }
    resp
}

fn json(status: u16, v: &Value, index: Option<u64>) -> Response<Full<Bytes>> {
    let mut resp = text(status, serde_json::to_string(v).unwrap_or_default());
    let h = resp.headers_mut();
    h.insert("content-type", "application/json".parse().unwrap());
    if let Some(i) = index {
        h.insert("x-consul-index", i.to_string().parse().unwrap());
        h.insert("x-consul-knownleader", "true".parse().unwrap());
        h.insert("x-consul-lastcontact", "0".parse().unwrap());
    }
    resp
}
