//! A small example upstream for `make run` and the benchmarks.
//!
//! `upstream --listen 127.0.0.1:19001 --name echo-1 [--registry-dir DIR --service echo --weight 3]`
//!
//! - `GET /` answers `Hello world!\n` (13 bytes), `GET /64k` 64 KiB, `GET /whoami` the instance
//!   name; every response carries `x-instance: <name>`.
//! - `GET /slow?ms=N` waits N ms first; `POST /sink` reads the whole body and answers
//!   `Hello world!\n` (the benchmarks' 4 KiB POST); any other request echoes its body back,
//!   streamed.
//! - `GET /healthz` answers 200 `ok`, or 503 `failing` after `POST /healthz/fail` (until
//!   `POST /healthz/ok`): a health endpoint to point waypost's `register[].check` at.
//! - `POST` with `content-type: application/grpc*` (any path) reads the request and answers one
//!   empty gRPC message with `grpc-status: 0` in the trailers: a unary gRPC server for h2load.
//! - `--tls-cert FILE --tls-key FILE` serves HTTPS (rustls with ring, HTTP/1.1 and h2 by ALPN)
//!   instead of plaintext (h1 or h2c by prior knowledge); the benchmarks write the files.
//! - `--close` answers every request with `connection: close`, so each request through a proxy
//!   costs it a new upstream connection (and with TLS, a handshake: resumed when the client
//!   offers a session, unless `--no-resume` makes every one a full handshake).
//! - With `--registry-dir`, the instance registers itself in the embedded file registry through
//!   waypost's registration lifecycle (no health check; renewed every TTL/3, registered again if
//!   the entry vanishes, retried while the directory is unusable) and deregisters on
//!   SIGINT/SIGTERM.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use http::{Request, Response};
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use waypost::register::{Registrar, Registration};
use waypost::registry::file::FileRegistrar;

#[derive(Parser)]
#[command(
    about = "Example upstream for waypost: answers /, /64k, /whoami, /slow, POST /sink; echoes anything else."
)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:19001")]
    listen: SocketAddr,
    /// Instance name, returned in `x-instance` and by /whoami.
    #[arg(long, default_value = "upstream")]
    name: String,
    /// Register in the file registry under this directory.
    #[arg(long)]
    registry_dir: Option<std::path::PathBuf>,
    /// Service to register as.
    #[arg(long, default_value = "echo")]
    service: String,
    /// Weight to register with.
    #[arg(long, default_value_t = 1)]
    weight: u32,
    /// Registration time-to-live, in milliseconds.
    #[arg(long, default_value_t = 6000)]
    ttl_ms: u64,
    /// Serve TLS with this certificate chain (PEM); needs --tls-key.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<std::path::PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<std::path::PathBuf>,
    /// Close every connection after its first answer.
    #[arg(long)]
    close: bool,
    /// With TLS: no session resumption (no tickets, no session cache), so every handshake is a
    /// full one with certificate verification on the client.
    #[arg(long)]
    no_resume: bool,
}

static HELLO: &[u8] = b"Hello world!\n";
static BIG: [u8; 65536] = [b'x'; 65536];

type Body = BoxBody<Bytes, hyper::Error>;

fn full(b: Bytes) -> Body {
    Full::new(b).map_err(|never| match never {}).boxed()
}

/// The body of a unary gRPC answer: one empty message, then `grpc-status: 0` trailers.
struct GrpcReply {
    data: Option<Bytes>,
    trailers: Option<http::HeaderMap>,
}

impl GrpcReply {
    fn ok() -> Self {
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
        // Compressed flag 0, length 0: an empty protobuf message.
        GrpcReply {
            data: Some(Bytes::from_static(&[0, 0, 0, 0, 0])),
            trailers: Some(trailers),
        }
    }
}

impl http_body::Body for GrpcReply {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, hyper::Error>>> {
        let frame = match self.data.take() {
            Some(d) => Some(http_body::Frame::data(d)),
            None => self.trailers.take().map(http_body::Frame::trailers),
        };
        std::task::Poll::Ready(frame.map(Ok))
    }
}

/// Cleared by `POST /healthz/fail`, set again by `POST /healthz/ok`.
static HEALTHY: AtomicBool = AtomicBool::new(true);

async fn handle(
    req: Request<Incoming>,
    name: Arc<str>,
    close: bool,
) -> Result<Response<Body>, Infallible> {
    let mut status = http::StatusCode::OK;
    let grpc = req.method() == http::Method::POST
        && req
            .headers()
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    if grpc {
        let _ = req.into_body().collect().await;
        let mut resp = Response::new(GrpcReply::ok().boxed());
        resp.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/grpc"),
        );
        return Ok(resp);
    }
    let body = match (req.method(), req.uri().path()) {
        (&http::Method::GET, "/healthz") => {
            if HEALTHY.load(Ordering::Relaxed) {
                full(Bytes::from_static(b"ok\n"))
            } else {
                status = http::StatusCode::SERVICE_UNAVAILABLE;
                full(Bytes::from_static(b"failing\n"))
            }
        }
        (&http::Method::POST, "/healthz/fail") | (&http::Method::POST, "/healthz/ok") => {
            let ok = req.uri().path().ends_with("/ok");
            HEALTHY.store(ok, Ordering::Relaxed);
            full(Bytes::from_static(if ok { b"ok\n" } else { b"failing\n" }))
        }
        (&http::Method::GET, "/") => full(Bytes::from_static(HELLO)),
        (&http::Method::GET, "/64k") => full(Bytes::from_static(&BIG)),
        (&http::Method::GET, "/whoami") => full(Bytes::from(format!("{name}\n"))),
        (&http::Method::POST, "/sink") => {
            // Read to the end (an error is the client's: answer anyway), then the short answer.
            let _ = req.into_body().collect().await;
            full(Bytes::from_static(HELLO))
        }
        (&http::Method::GET, "/slow") => {
            let ms = req
                .uri()
                .query()
                .and_then(|q| q.strip_prefix("ms="))
                .and_then(|v| v.parse().ok())
                .unwrap_or(1000u64);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            full(Bytes::from_static(b"slow\n"))
        }
        _ => req.into_body().boxed(),
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    if let Ok(v) = http::HeaderValue::from_str(&name) {
        resp.headers_mut().insert("x-instance", v);
    }
    if close {
        resp.headers_mut().insert(
            http::header::CONNECTION,
            http::HeaderValue::from_static("close"),
        );
    }
    Ok(resp)
}

/// A rustls acceptor (ring) for the PEM certificate chain and key, offering h2 and http/1.1;
/// `no_resume` turns session resumption off.
fn tls_acceptor(
    cert: &std::path::Path,
    key: &std::path::Path,
    no_resume: bool,
) -> Result<tokio_rustls::TlsAcceptor, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| e.to_string())?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    if no_resume {
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
    }
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args = Args::parse();
    let listener = match TcpListener::bind(args.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!(
                "upstream {}: cannot listen on {}: {e}",
                args.name, args.listen
            );
            std::process::exit(1);
        }
    };
    let (trigger, stop) = waypost::shutdown::channel();
    let registration = args.registry_dir.as_ref().map(|dir| {
        let reg = Registration {
            service: args.service.clone(),
            address: args.listen,
            weight: args.weight,
            tags: Arc::new(
                [("instance".to_string(), args.name.clone())]
                    .into_iter()
                    .collect(),
            ),
            ttl: Duration::from_millis(args.ttl_ms),
        };
        let registrar: Arc<dyn Registrar> = Arc::new(FileRegistrar::new(dir));
        tokio::spawn(reg.run(registrar, stop.clone()))
    });
    eprintln!(
        "upstream {} listening on {} (weight {})",
        args.name, args.listen, args.weight
    );
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => match tls_acceptor(cert, key, args.no_resume) {
            Ok(a) => Some(a),
            Err(e) => {
                eprintln!("upstream {}: TLS: {e}", args.name);
                std::process::exit(1);
            }
        },
        _ => None,
    };
    let close = args.close;
    let name: Arc<str> = args.name.into();
    let builder = Arc::new(hyper_util::server::conn::auto::Builder::new(
        TokioExecutor::new(),
    ));
    let signal = waypost::shutdown::signal();
    tokio::pin!(signal);
    loop {
        let stream = tokio::select! {
            _ = &mut signal => break,
            accepted = listener.accept() => match accepted {
                Ok((s, _)) => s,
                Err(_) => continue,
            },
        };
        let _ = stream.set_nodelay(true);
        let (name, builder, tls) = (name.clone(), builder.clone(), tls.clone());
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| handle(req, name.clone(), close));
            match tls {
                None => {
                    let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
                }
                Some(acceptor) => {
                    // A failed handshake is the client's problem; this connection just ends.
                    if let Ok(tls) = acceptor.accept(stream).await {
                        let _ = builder.serve_connection(TokioIo::new(tls), svc).await;
                    }
                }
            }
        });
    }
    trigger.fire();
    if let Some(task) = registration {
        let _ = task.await; // deregisters before we exit
    }
}
