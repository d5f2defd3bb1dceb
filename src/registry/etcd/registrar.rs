//! The etcd registrar: one lease per registration, kept alive by the lifecycle's renewals.
//!
//! - `register`: grant a lease of `lease_ttl`, put the key with it (a leftover key from an
//!   earlier run is simply overwritten), then revoke the lease this registration held before,
//!   if any — the key has moved to the new one, so the old one holds nothing of ours.
//! - `renew`: one keepalive round trip (a lease that is gone → [`RegisterError::Lost`]), then a
//!   read of the key: deleted behind our back, or re-written by someone else → `Lost` too, and
//!   the lifecycle registers again at once. Hertz and Kitex notice a deleted key only every 30 s
//!   and give up after five failed attempts; here nothing gives up.
//! - `deregister`: delete the key (only while it still carries our lease: a new process at the
//!   same address may have re-registered it) and revoke the lease, which Hertz and Kitex do not.
//!
//! The lease TTL is this registrar's (`registry.etcd.lease_ttl`), not the registration's: the
//! lifecycle renews at a third of it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::client::EtcdClient;
use super::codec::Codec;
use crate::register::{renew_interval, BoxFuture, RegisterError, Registrar, Registration};

/// Registers instances in etcd in one layout under one prefix.
pub struct EtcdRegistrar {
    client: Arc<EtcdClient>,
    codec: Codec,
    lease_ttl: Duration,
    /// The lease each registered key holds, by key. Written by `register` and `deregister`,
    /// read by `renew` and `describe`; never held across an await.
    leases: Mutex<HashMap<String, i64>>,
}

impl EtcdRegistrar {
    /// A registrar writing with `codec` through `client`, with leases of `lease_ttl` (whole
    /// seconds, at least 1; the config checks that).
    pub fn new(client: Arc<EtcdClient>, codec: Codec, lease_ttl: Duration) -> Self {
        Self {
            client,
            codec,
            lease_ttl,
            leases: Mutex::new(HashMap::new()),
        }
    }

    /// The etcd key of `reg`.
    pub fn key(&self, reg: &Registration) -> String {
        self.codec.key(&reg.service, reg.address)
    }

    /// The lease `reg` holds now, if it is registered.
    pub fn lease(&self, reg: &Registration) -> Option<i64> {
        self.leases().get(&self.key(reg)).copied()
    }

    fn leases(&self) -> std::sync::MutexGuard<'_, HashMap<String, i64>> {
        self.leases.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn register_now(&self, reg: &Registration) -> Result<(), RegisterError> {
        let key = self.key(reg);
        let value = self.codec.encode(reg);
        let ttl = self.lease_ttl.as_secs().max(1) as i64;
        let lease = self.client.grant(ttl).await?;
        if let Err(e) = self.client.put(&key, &value, lease).await {
            // Best effort: an orphan lease expires by itself within its TTL anyway.
            if let Err(r) = self.client.revoke(lease).await {
                tracing::debug!(lease = %lease_hex(lease), error = %r, "could not revoke an unused lease");
            }
            return Err(e.into());
        }
        let previous = self.leases().insert(key.clone(), lease);
        if let Some(old) = previous.filter(|&old| old != lease) {
            if let Err(e) = self.client.revoke(old).await {
                tracing::debug!(%key, lease = %lease_hex(old), error = %e, "could not revoke the previous lease; it expires by itself");
            }
        }
        tracing::debug!(%key, lease = %lease_hex(lease), "put in etcd");
        Ok(())
    }

    async fn renew_now(&self, reg: &Registration) -> Result<(), RegisterError> {
        let key = self.key(reg);
        let Some(lease) = self.leases().get(&key).copied() else {
            return Err(RegisterError::Lost(format!("{key} is not registered")));
        };
        if !self.client.keep_alive(lease).await? {
            return Err(RegisterError::Lost(format!(
                "lease {} of {key} expired or was revoked",
                lease_hex(lease)
            )));
        }
        match self.client.get(&key).await? {
            None => Err(RegisterError::Lost(format!("{key} was deleted"))),
            Some(kv) if kv.lease() != lease => Err(RegisterError::Lost(format!(
                "{key} was re-written with lease {}",
                lease_hex(kv.lease())
            ))),
            Some(kv) if kv.value() != self.codec.encode(reg).as_slice() => Err(
                RegisterError::Lost(format!("{key} was re-written with another value")),
            ),
            Some(_) => Ok(()),
        }
    }

    async fn deregister_now(&self, reg: &Registration) -> Result<(), RegisterError> {
        let key = self.key(reg);
        let Some(lease) = self.leases().remove(&key) else {
            return Ok(());
        };
        let result = async {
            if !self.client.delete_if_lease(&key, lease).await? {
                tracing::info!(%key, "key no longer ours at deregistration; left alone");
            }
            self.client.revoke(lease).await
        }
        .await;
        if let Err(e) = result {
            // Keep the lease so a retry deletes and revokes it.
            self.leases().entry(key).or_insert(lease);
            return Err(e.into());
        }
        Ok(())
    }
}

/// A lease id as etcdctl prints it (hex).
pub fn lease_hex(lease: i64) -> String {
    format!("{:x}", lease as u64)
}

impl Registrar for EtcdRegistrar {
    fn name(&self) -> &'static str {
        "etcd"
    }

    fn register<'a>(&'a self, reg: &'a Registration) -> BoxFuture<'a, Result<(), RegisterError>> {
        Box::pin(self.register_now(reg))
    }

    fn renew<'a>(&'a self, reg: &'a Registration) -> BoxFuture<'a, Result<(), RegisterError>> {
        Box::pin(self.renew_now(reg))
    }

    fn deregister<'a>(&'a self, reg: &'a Registration) -> BoxFuture<'a, Result<(), RegisterError>> {
        Box::pin(self.deregister_now(reg))
    }

    fn renew_interval(&self, _reg: &Registration) -> Duration {
        renew_interval(self.lease_ttl)
    }

    fn describe(&self, reg: &Registration) -> serde_json::Value {
        serde_json::json!({
            "key": self.key(reg),
            "lease": self.lease(reg).map(lease_hex),
            "lease_ttl_seconds": self.lease_ttl.as_secs(),
            "layout": self.codec.layout().as_str(),
            "endpoints": self.client.endpoints(),
        })
    }
}
