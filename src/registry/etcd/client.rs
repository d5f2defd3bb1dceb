//! The etcd client of the process, shared by every etcd resolver and registrar: the few
//! operations they need, each bounded by `request_timeout`, with failover between members.
//!
//! One `etcd_client::Client` per member, not one balanced channel over all of them: tonic's
//! balancer keeps a dead member in its set (its lazy connections report "ready" and fail each
//! request), so a third of the requests would fail while one member of three is down. Here
//! requests stick to one member — like clientv3's pinned endpoint — and move on to the next
//! when it is unreachable, times out or has no leader (every request asks for one, so a member
//! cut off from the others never answers with stale data); the member that answered is used
//! first from then on. A member's client connects on first use; with a password that means
//! authenticating, so a member that is down at start-up is simply tried again later.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, GetOptions, Identity, KeyValue,
    PutOptions, TlsOptions, Txn, TxnOp, WatchOptions, WatchStream,
};
use tokio::sync::OnceCell;

use crate::config::EtcdRegistryConfig;
use crate::discover::DiscoverError;
use crate::metrics::EtcdMetrics;
use crate::register::RegisterError;

/// How often an idle HTTP/2 connection to a member is pinged: a member that vanished without
/// closing the connection (a pause, a partition) breaks its watches within this plus
/// `request_timeout`, instead of never.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);

/// Why an etcd request failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EtcdError {
    /// No member answered in time (unreachable, timed out, without a leader).
    #[error("etcd unavailable: {0}")]
    Unavailable(String),
    /// A member refused the request (authentication, permissions, an invalid request).
    #[error("etcd refused the request: {0}")]
    Rejected(String),
    /// The lease or key the request is about does not exist.
    #[error("etcd: {0}")]
    NotFound(String),
}

impl From<EtcdError> for RegisterError {
    fn from(e: EtcdError) -> Self {
        match e {
            EtcdError::Unavailable(m) => RegisterError::Unavailable(m),
            EtcdError::Rejected(m) => RegisterError::Rejected(m),
            EtcdError::NotFound(m) => RegisterError::Lost(m),
        }
    }
}

impl From<EtcdError> for DiscoverError {
    fn from(e: EtcdError) -> Self {
        DiscoverError::Unavailable(e.to_string())
    }
}

/// Sorts an `etcd_client` error into what the caller can do about it.
fn classify(e: etcd_client::Error) -> EtcdError {
    use etcd_client::Error as E;
    use tonic::Code;
    match e {
        E::GRpcStatus(s) => {
            let msg = format!("{}: {}", s.code(), s.message());
            match s.code() {
                Code::NotFound => EtcdError::NotFound(msg),
                Code::Unauthenticated
                | Code::PermissionDenied
                | Code::InvalidArgument
                | Code::FailedPrecondition
                | Code::OutOfRange
                | Code::Unimplemented
                | Code::AlreadyExists => EtcdError::Rejected(msg),
                // Unavailable (no leader, leader changed, request timed out), DeadlineExceeded,
                // Cancelled, Unknown (tonic's transport failures), Internal, Aborted…
                _ => EtcdError::Unavailable(msg),
            }
        }
        E::InvalidArgs(_)
        | E::InvalidUri(_)
        | E::InvalidMetadataValue(_)
        | E::EndpointError(_)
        | E::EndpointsNotManaged
        | E::Utf8Error(_) => EtcdError::Rejected(e.to_string()),
        _ => EtcdError::Unavailable(e.to_string()),
    }
}

/// One member: its endpoint and a client connected on first use.
struct Member {
    endpoint: String,
    client: OnceCell<Client>,
}

/// The shared etcd client. Cheap to share behind an `Arc`; every method is `&self`.
pub struct EtcdClient {
    members: Vec<Member>,
    /// Index of the member that answered last; requests start there.
    current: AtomicUsize,
    options: ConnectOptions,
    request_timeout: Duration,
    metrics: EtcdMetrics,
}

impl EtcdClient {
    /// A client for `registry.etcd`. Reads the TLS files (so a missing or malformed one fails at
    /// start-up, naming the file) but connects to nothing yet.
    pub fn from_config(cfg: &EtcdRegistryConfig, metrics: EtcdMetrics) -> Result<Self, String> {
        let mut options = ConnectOptions::new()
            .with_connect_timeout(cfg.dial_timeout.0)
            .with_keep_alive(KEEPALIVE_INTERVAL, cfg.request_timeout.0)
            .with_keep_alive_while_idle(true)
            .with_require_leader(true);
        if let (Some(user), Some(password)) = (&cfg.username, &cfg.password) {
            options = options
                .with_user(user.clone(), password.clone())
                .with_auto_token_refresh(true);
        }
        let mut endpoints = cfg.endpoints.clone();
        if let Some(tls) = &cfg.tls {
            let mut t = TlsOptions::new().ca_certificate(Certificate::from_pem(pem_file(
                &tls.ca,
                "registry.etcd.tls.ca",
                Pem::Certificates,
            )?));
            if let (Some(cert), Some(key)) = (&tls.cert, &tls.key) {
                t = t.identity(Identity::from_pem(
                    pem_file(cert, "registry.etcd.tls.cert", Pem::Certificates)?,
                    pem_file(key, "registry.etcd.tls.key", Pem::PrivateKey)?,
                ));
            }
            if let Some(name) = &tls.server_name {
                t = t.domain_name(name.clone());
            }
            options = options.with_tls(t);
            // etcd-client takes a bare host:port as plain HTTP unless TLS is set, and refuses
            // TLS on http:// (the config rejects that); say https:// explicitly.
            for ep in &mut endpoints {
                if !ep.starts_with("https://") {
                    *ep = format!("https://{ep}");
                }
            }
        }
        Ok(Self {
            members: endpoints
                .into_iter()
                .map(|endpoint| Member {
                    endpoint,
                    client: OnceCell::new(),
                })
                .collect(),
            current: AtomicUsize::new(0),
            options,
            request_timeout: cfg.request_timeout.0,
            metrics,
        })
    }

    /// The members' endpoints, as configured.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.endpoint.clone()).collect()
    }

    /// Runs `op` against one member after the other, starting with the one that answered last,
    /// until one answers; an answer that is an error other than "unavailable" is final.
    async fn call<T, F, Fut>(&self, what: &str, op: F) -> Result<T, EtcdError>
    where
        F: Fn(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let start = self.current.load(Ordering::Relaxed);
        let n = self.members.len();
        let mut last = EtcdError::Unavailable("no endpoints".into());
        for i in 0..n {
            let idx = (start + i) % n;
            let member = &self.members[idx];
            let attempt = async {
                let client = member
                    .client
                    .get_or_try_init(|| {
                        Client::connect([&member.endpoint], Some(self.options.clone()))
                    })
                    .await
                    .map_err(classify)?;
                op(client.clone()).await.map_err(classify)
            };
            let result = match tokio::time::timeout(self.request_timeout, attempt).await {
                Ok(r) => r,
                Err(_) => Err(EtcdError::Unavailable(format!(
                    "no answer within {:?}",
                    self.request_timeout
                ))),
            };
            match result {
                Err(EtcdError::Unavailable(m)) => {
                    tracing::debug!(endpoint = %member.endpoint, error = %m, what, "etcd member unavailable; trying the next");
                    last = EtcdError::Unavailable(format!("{}: {m}", member.endpoint));
                }
                other => {
                    if i > 0 {
                        self.metrics.failovers.inc();
                        self.current.store(idx, Ordering::Relaxed);
                        tracing::info!(endpoint = %member.endpoint, what, "etcd requests now go to this member");
                    }
                    return other;
                }
            }
        }
        Err(last)
    }

    /// Every key under `prefix` with its value, and the store's revision of that answer.
    pub async fn get_prefix(&self, prefix: &str) -> Result<(Vec<KeyValue>, i64), EtcdError> {
        self.call("get", |mut c| async move {
            let mut resp = c.get(prefix, Some(GetOptions::new().with_prefix())).await?;
            let revision = resp.header().map_or(0, |h| h.revision());
            Ok((resp.take_kvs(), revision))
        })
        .await
    }

    /// The key `key`, if it exists.
    pub async fn get(&self, key: &str) -> Result<Option<KeyValue>, EtcdError> {
        self.call("get", |mut c| async move {
            let mut resp = c.get(key, None).await?;
            Ok(resp.take_kvs().into_iter().next())
        })
        .await
    }

    /// Grants a lease of `ttl` seconds; its id.
    pub async fn grant(&self, ttl: i64) -> Result<i64, EtcdError> {
        self.call("lease grant", |mut c| async move {
            Ok(c.lease_grant(ttl, None).await?.id())
        })
        .await
    }

    /// Puts `key` = `value`, attached to `lease`.
    pub async fn put(&self, key: &str, value: &[u8], lease: i64) -> Result<(), EtcdError> {
        self.call("put", |mut c| async move {
            c.put(key, value, Some(PutOptions::new().with_lease(lease)))
                .await?;
            Ok(())
        })
        .await
    }

    /// One keepalive round trip for `lease`: `Ok(true)` while it lives, `Ok(false)` once it is
    /// gone (revoked, or expired while nobody renewed it).
    pub async fn keep_alive(&self, lease: i64) -> Result<bool, EtcdError> {
        let renewed = self
            .call("lease keepalive", |mut c| async move {
                match c.lease_keep_alive(lease).await {
                    // The first reply was read: the lease is alive. Dropping the keeper and its
                    // stream closes this keepalive stream.
                    Ok(_) => Ok(true),
                    // A reply with TTL 0 ("lease not found") and a stream that broke look the
                    // same here; the lease's time-to-live tells them apart below.
                    Err(etcd_client::Error::LeaseKeepAliveError(_)) => Ok(false),
                    Err(e) => Err(e),
                }
            })
            .await?;
        if renewed {
            return Ok(true);
        }
        Ok(self.time_to_live(lease).await?.is_some())
    }

    /// The remaining TTL of `lease` in seconds, `None` when it does not exist.
    pub async fn time_to_live(&self, lease: i64) -> Result<Option<i64>, EtcdError> {
        let ttl = self
            .call("lease ttl", |mut c| async move {
                Ok(c.lease_time_to_live(lease, None).await?.ttl())
            })
            .await;
        match ttl {
            // etcd answers TTL -1 for a lease it does not know.
            Ok(t) if t > 0 => Ok(Some(t)),
            Ok(_) | Err(EtcdError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Revokes `lease` (which deletes every key attached to it). A lease already gone is fine.
    pub async fn revoke(&self, lease: i64) -> Result<(), EtcdError> {
        match self
            .call("lease revoke", |mut c| async move {
                c.lease_revoke(lease).await.map(|_| ())
            })
            .await
        {
            Err(EtcdError::NotFound(_)) => Ok(()),
            other => other,
        }
    }

    /// Deletes `key` if it is still attached to `lease` (so a key another process re-wrote with
    /// its own lease is left alone); whether it was deleted.
    pub async fn delete_if_lease(&self, key: &str, lease: i64) -> Result<bool, EtcdError> {
        self.call("delete", |mut c| async move {
            let txn = Txn::new()
                .when([Compare::lease(key, CompareOp::Equal, lease)])
                .and_then([TxnOp::delete(key, None)]);
            Ok(c.txn(txn).await?.succeeded())
        })
        .await
    }

    /// Opens a watch of every key under `prefix`, from `revision` on.
    pub async fn watch_prefix(
        &self,
        prefix: &str,
        revision: i64,
    ) -> Result<WatchStream, EtcdError> {
        self.call("watch", |mut c| async move {
            c.watch(
                prefix,
                Some(
                    WatchOptions::new()
                        .with_prefix()
                        .with_start_revision(revision),
                ),
            )
            .await
        })
        .await
    }
}

/// What a PEM file must hold.
#[derive(Clone, Copy)]
enum Pem {
    Certificates,
    PrivateKey,
}

/// Reads the PEM file at `path` (the value of config key `key`) and checks that it holds what
/// rustls will need, so a wrong file fails at start-up rather than at the first handshake.
fn pem_file(path: &std::path::Path, key: &str, want: Pem) -> Result<Vec<u8>, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let bytes =
        std::fs::read(path).map_err(|e| format!("{key}: cannot read {}: {e}", path.display()))?;
    let ok = match want {
        Pem::Certificates => CertificateDer::pem_slice_iter(&bytes)
            .collect::<Result<Vec<_>, _>>()
            .is_ok_and(|certs| !certs.is_empty()),
        Pem::PrivateKey => PrivateKeyDer::from_pem_slice(&bytes).is_ok(),
    };
    if !ok {
        let what = match want {
            Pem::Certificates => "PEM certificates",
            Pem::PrivateKey => "a PEM private key",
        };
        return Err(format!("{key}: {} does not hold {what}", path.display()));
    }
    Ok(bytes)
}
