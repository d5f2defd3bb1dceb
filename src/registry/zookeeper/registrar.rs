//! The ZooKeeper registrar: one ephemeral node per registration, owned by the process's session.
//!
//! - `register`: create the persistent parents as needed (a parent a peer creates at the same
//!   time is fine), then the ephemeral node with the Go registries' data. A node already there
//!   (a waypost restarted within the session timeout finds its previous session's node, which
//!   Hertz fails on with NodeExists) is compared by its ephemeral owner: another session's node
//!   is deleted and created again under ours; our own session's is given our data.
//! - `renew`: the node must still be ours — the session that created it is the current one, and
//!   the node exists with that session as its owner (one `exists`) — or else it is
//!   [`RegisterError::Lost`], and the lifecycle creates it again at once: that is how a session
//!   expiry is survived. The registrar never re-creates a node on its own (Kitex's keepalive does,
//!   and re-created nodes users had withdrawn, kitex-contrib/codec-dubbo#86): after a
//!   deregistration, nothing brings the node back.
//! - `deregister`: delete the node if our session (current or recorded) owns it; another
//!   session's node (a new process at the same address) is left alone.
//!
//! With `registry.zookeeper.username`, nodes get the creator's ACL — all permissions for the
//! digest identity, none for anyone else — which is what the Go registries' `DigestACL(PermAll,
//! user, password)` gives; without it, anyone may do anything (`WorldACL(PermAll)`), as theirs.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use zookeeper_client::{Acls, CreateMode, Error as ZkCode};

use super::codec::Codec;
use super::session::{session_hex, Live, ZkError, ZookeeperSession};
use crate::register::{BoxFuture, RegisterError, Registrar, Registration};

/// Attempts at creating a node that keeps being there (someone else's, deleted, re-created).
const CREATE_ATTEMPTS: usize = 3;
/// Longest time between two checks that a node is still ours: Kitex compares session ids every
/// second; a node lost with its session is back within this of the new session.
const MAX_RENEW_INTERVAL: Duration = Duration::from_secs(1);

/// Registers instances as ephemeral nodes under one root.
pub struct ZookeeperRegistrar {
    session: Arc<ZookeeperSession>,
    codec: Codec,
    /// The session that created each registered node, by path. Written by `register` and
    /// `deregister`, read by `renew` and `describe`; never held across an await.
    owners: Mutex<HashMap<String, i64>>,
}

impl ZookeeperRegistrar {
    /// A registrar writing with `codec` through `session`.
    pub fn new(session: Arc<ZookeeperSession>, codec: Codec) -> Self {
        Self {
            session,
            codec,
            owners: Mutex::new(HashMap::new()),
        }
    }

    /// The node path of `reg`.
    pub fn path(&self, reg: &Registration) -> String {
        self.codec.node_path(&reg.service, reg.address)
    }

    /// The session that created `reg`'s node, if it is registered.
    pub fn owner(&self, reg: &Registration) -> Option<i64> {
        self.owners().get(&self.path(reg)).copied()
    }

    fn owners(&self) -> std::sync::MutexGuard<'_, HashMap<String, i64>> {
        self.owners.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn acls(&self) -> Acls<'static> {
        if self.session.authenticated() {
            Acls::creator_all()
        } else {
            Acls::anyone_all()
        }
    }

    async fn register_now(&self, reg: &Registration) -> Result<(), RegisterError> {
        let path = self.path(reg);
        let data = self.codec.encode(reg);
        let live = self.session.live().await?;
        let parent = self.codec.service_path(&reg.service);
        let persistent = CreateMode::Persistent.with_acls(self.acls());
        let s = &self.session;
        s.request("mkdir", &parent, live.client.mkdir(&parent, &persistent))
            .await?;
        let ephemeral = CreateMode::Ephemeral.with_acls(self.acls());
        for _ in 0..CREATE_ATTEMPTS {
            let created = s
                .request(
                    "create",
                    &path,
                    live.client.create(&path, &data, &ephemeral),
                )
                .await;
            match created {
                Ok(_) => {
                    self.created(path, &live);
                    return Ok(());
                }
                Err(e) if e.code() == Some(&ZkCode::NodeExists) => {}
                Err(e) => return Err(e.into()),
            }
            let Some(stat) = s
                .request("exists", &path, live.client.check_stat(&path))
                .await?
            else {
                continue; // gone meanwhile: create again
            };
            let version = Some(stat.version);
            let outcome = if stat.ephemeral_owner == live.id() {
                // Ours already: a create that timed out here and landed anyway.
                s.request("set", &path, live.client.set_data(&path, &data, version))
                    .await
                    .map(|_| true)
            } else {
                tracing::info!(%path, owner = %session_hex(stat.ephemeral_owner), session = %session_hex(live.id()), "replacing a node another session left");
                s.request("delete", &path, live.client.delete(&path, version))
                    .await
                    .map(|_| false)
            };
            match outcome {
                Ok(true) => {
                    self.created(path, &live);
                    return Ok(());
                }
                Ok(false) => {}
                Err(e) if matches!(e.code(), Some(ZkCode::NoNode | ZkCode::BadVersion)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Err(RegisterError::Unavailable(format!(
            "{path} kept being re-created by another session"
        )))
    }

    fn created(&self, path: String, live: &Live) {
        tracing::debug!(%path, session = %session_hex(live.id()), generation = live.generation, "ephemeral node created");
        self.owners().insert(path, live.id());
    }

    async fn renew_now(&self, reg: &Registration) -> Result<(), RegisterError> {
        let path = self.path(reg);
        let Some(owner) = self.owners().get(&path).copied() else {
            return Err(RegisterError::Lost(format!("{path} is not registered")));
        };
        let lost = |why: String| Err(RegisterError::Lost(format!("{path}: {why}")));
        let live = match self.session.current() {
            Some(live) if live.id() == owner => live,
            Some(live) => {
                return lost(format!(
                    "session {} ended; the current one is {}",
                    session_hex(owner),
                    session_hex(live.id())
                ))
            }
            None => return lost(format!("session {} ended", session_hex(owner))),
        };
        let stat = self
            .session
            .request("exists", &path, live.client.check_stat(&path))
            .await;
        match stat {
            Ok(Some(s)) if s.ephemeral_owner == owner => Ok(()),
            Ok(Some(s)) => lost(format!(
                "re-created by session {}",
                session_hex(s.ephemeral_owner)
            )),
            Ok(None) => lost("deleted".into()),
            Err(e) if e.code() == Some(&ZkCode::SessionExpired) => {
                lost(format!("session {} expired", session_hex(owner)))
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn deregister_now(&self, reg: &Registration) -> Result<(), RegisterError> {
        let path = self.path(reg);
        let recorded = self.owners().remove(&path);
        let result = self.delete_if_ours(&path, recorded).await;
        if let (Err(_), Some(owner)) = (&result, recorded) {
            // Kept so a retry (or describe) still knows it.
            self.owners().entry(path).or_insert(owner);
        }
        result.map_err(Into::into)
    }

    /// Deletes `path` if the current session or `recorded` owns it. No session: nothing of an
    /// ended session is left to delete, and the current one's nodes go when it closes.
    async fn delete_if_ours(&self, path: &str, recorded: Option<i64>) -> Result<(), ZkError> {
        let Some(live) = self.session.current() else {
            return Ok(());
        };
        let s = &self.session;
        for _ in 0..CREATE_ATTEMPTS {
            let Some(stat) = s
                .request("exists", path, live.client.check_stat(path))
                .await?
            else {
                return Ok(());
            };
            let owner = stat.ephemeral_owner;
            if owner != live.id() && Some(owner) != recorded {
                tracing::info!(%path, owner = %session_hex(owner), "node no longer ours at deregistration; left alone");
                return Ok(());
            }
            match s
                .request("delete", path, live.client.delete(path, Some(stat.version)))
                .await
            {
                Ok(()) => return Ok(()),
                Err(e) if e.code() == Some(&ZkCode::NoNode) => return Ok(()),
                Err(e) if e.code() == Some(&ZkCode::BadVersion) => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

impl Registrar for ZookeeperRegistrar {
    fn name(&self) -> &'static str {
        "zookeeper"
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

    /// A local session check and one `exists`: cheap enough to run every second at most, so a
    /// node lost with its session is back soon after the new session is.
    fn renew_interval(&self, _reg: &Registration) -> Duration {
        crate::register::renew_interval(self.session.session_timeout()).min(MAX_RENEW_INTERVAL)
    }

    fn describe(&self, reg: &Registration) -> serde_json::Value {
        serde_json::json!({
            "path": self.path(reg),
            "session": self.owner(reg).map(session_hex),
            "session_timeout_seconds": self.session.session_timeout().as_secs_f64(),
            "servers": self.session.servers(),
        })
    }
}
