//! TLS for tests: a certificate authority made on the spot with rcgen ([`Ca`]), the PEM files
//! waypost's config names ([`Pem`]), and an HTTPS upstream on 127.0.0.1 ([`TlsUpstream`]) that
//! answers like [`super::Upstream`] (`x-instance`, body echoed) and says whether the client
//! showed a certificate (`x-client-cert: yes|no`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{combinators::BoxBody, BodyExt};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_rustls::TlsAcceptor;

/// A test certificate authority.
pub struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate and its key, as PEM text.
#[derive(Clone)]
pub struct Leaf {
    pub cert: String,
    pub key: String,
}

impl Ca {
    /// A new self-signed CA called `name`.
    pub fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Ca { issuer }
    }

    /// The CA certificate, PEM.
    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A server and client certificate for `names`, valid from yesterday for a year.
    pub fn issue(&self, names: &[&str]) -> Leaf {
        let now = time::OffsetDateTime::now_utc();
        self.issue_valid(
            names,
            now - time::Duration::days(1),
            now + time::Duration::days(365),
        )
    }

    /// A certificate for `names` that expired yesterday.
    pub fn issue_expired(&self, names: &[&str]) -> Leaf {
        let now = time::OffsetDateTime::now_utc();
        self.issue_valid(
            names,
            now - time::Duration::days(30),
            now - time::Duration::days(1),
        )
    }

    fn issue_valid(
        &self,
        names: &[&str],
        from: time::OffsetDateTime,
        until: time::OffsetDateTime,
    ) -> Leaf {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        params.not_before = from;
        params.not_after = until;
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }
}

/// A temporary directory of PEM files.
pub struct Pem {
    pub dir: tempfile::TempDir,
}

impl Pem {
    /// An empty directory.
    pub fn new() -> Pem {
        Pem {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// Writes `text` to `name` in the directory; its path.
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    /// The path of `name` in the directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

impl Default for Pem {
    fn default() -> Self {
        Self::new()
    }
}

/// Certificates in PEM `text`.
pub fn certs(text: &str) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(text.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap()
}

/// The private key in PEM `text`.
pub fn key(text: &str) -> PrivateKeyDer<'static> {
    PrivateKeyDer::from_pem_slice(text.as_bytes()).unwrap()
}

/// A rustls server configuration presenting `leaf`, requiring a client certificate signed by
/// `client_ca` when given, offering `alpn`.
pub fn server_config(leaf: &Leaf, client_ca: Option<&Ca>, alpn: &[&[u8]]) -> Arc<ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = match client_ca {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            roots.add_parsable_certificates(certs(&ca.pem()));
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .unwrap();
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(certs(&leaf.cert), key(&leaf.key))
        .unwrap();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// A running HTTPS upstream; stops when dropped.
pub struct TlsUpstream {
    pub addr: SocketAddr,
    /// TCP connections accepted.
    pub conns: Arc<AtomicUsize>,
    /// Handshakes that failed.
    pub failed: Arc<AtomicUsize>,
    /// Connections it closed (with close_notify) after their idle time, in the idle-closing
    /// mode.
    pub closed: Arc<AtomicUsize>,
    _stop: oneshot::Sender<()>,
}

impl TlsUpstream {
    /// Serves HTTP/1.1 and HTTP/2 (by ALPN) over TLS with `config` on a free loopback port,
    /// answering as `name`. `idle_close`: instead, answer one bodiless request per connection
    /// (`200`, `ok`, kept alive) and close the connection with a TLS close_notify after it has
    /// been idle that long, as upstreams with short keep-alive timeouts do.
    pub async fn start(
        name: &str,
        config: Arc<ServerConfig>,
        idle_close: Option<Duration>,
    ) -> TlsUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let conns = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(AtomicUsize::new(0));
        let (tx, mut rx) = oneshot::channel();
        let closed = Arc::new(AtomicUsize::new(0));
        let (c, f, cl) = (conns.clone(), failed.clone(), closed.clone());
        let name = Arc::<str>::from(name);
        let acceptor = TlsAcceptor::from(config);
        tokio::spawn(async move {
            loop {
                let tcp = tokio::select! {
                    _ = &mut rx => break,
                    r = listener.accept() => match r { Ok((s, _)) => s, Err(_) => continue },
                };
                c.fetch_add(1, Ordering::Relaxed);
                let (acceptor, name, f) = (acceptor.clone(), name.clone(), f.clone());
                let cl = cl.clone();
                tokio::spawn(async move {
                    let mut tls = match acceptor.accept(tcp).await {
                        Ok(s) => s,
                        Err(_) => {
                            f.fetch_add(1, Ordering::Relaxed);
                            return;
                        }
                    };
                    if let Some(idle) = idle_close {
                        answer_once_then_close(&mut tls, idle).await;
                        cl.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                    let client_cert = tls.get_ref().1.peer_certificates().is_some();
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let name = name.clone();
                        async move {
                            let body: BoxBody<Bytes, hyper::Error> = req.into_body().boxed();
                            let mut resp = Response::new(body);
                            resp.headers_mut()
                                .insert("x-instance", name.parse().unwrap());
                            let cert = if client_cert { "yes" } else { "no" };
                            resp.headers_mut()
                                .insert("x-client-cert", cert.parse().unwrap());
                            Ok::<_, std::convert::Infallible>(resp)
                        }
                    });
                    let builder =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    let _ = builder.serve_connection(TokioIo::new(tls), svc).await;
                });
            }
        });
        TlsUpstream {
            addr,
            conns,
            failed,
            closed,
            _stop: tx,
        }
    }
}

/// Reads one bodiless request head, answers `200 ok` (keep-alive), waits `idle` and closes
/// with a close_notify.
async fn answer_once_then_close<S: AsyncRead + AsyncWrite + Unpin>(io: &mut S, idle: Duration) {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match tokio::time::timeout(Duration::from_secs(5), io.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => head.extend_from_slice(&buf[..n]),
            _ => return,
        }
    }
    let _ = io
        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-instance: once\r\n\r\nok")
        .await;
    let _ = io.flush().await;
    tokio::time::sleep(idle).await;
    let _ = io.shutdown().await;
}

/// YAML for a static service `name` with one instance at `addr` (tagged `tags`, inline YAML
/// map entries) and the `tls:` block `tls` (inline YAML).
pub fn tls_service(name: &str, addr: SocketAddr, tags: &str, tls: &str) -> String {
    format!(
        "  {name}:\n    resolver:\n      static:\n        instances:\n          - {{address: \"{addr}\", tags: {{{tags}}}}}\n    tls: {tls}\n"
    )
}

/// A path as YAML text.
pub fn yaml_path(p: &Path) -> String {
    format!("{:?}", p.display().to_string())
}

/// A rustls client trusting `ca`, showing `identity` when given, offering `alpn`.
pub fn client_config(
    ca: &Ca,
    identity: Option<&Leaf>,
    alpn: &[&[u8]],
) -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    roots.add_parsable_certificates(certs(&ca.pem()));
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match identity {
        Some(leaf) => builder
            .with_client_auth_cert(certs(&leaf.cert), key(&leaf.key))
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// A TLS connection to `addr` verified as `name`.
pub async fn connect_tls(
    addr: SocketAddr,
    name: &str,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::try_from(name.to_string()).unwrap();
    tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
}
