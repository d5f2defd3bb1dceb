//! The ZooKeeper resolver: the children of `<root>/<service>` and their data, read in one round
//! trip (the reads are pipelined), and kept current by a persistent recursive watch that turns
//! each batch of node events into a complete answer.
//!
//! The watch ([`Resolver::watch`]) is added **before** the first full read, so no change falls
//! between the two. Then each batch of events (whatever has arrived when the stream is polled)
//! is applied to the map of children: a created or changed child is read again, a deleted one
//! removed, an event on the service node itself (created, deleted) reads everything again. The
//! watch is a hint that can miss events (ZOOKEEPER-4698: none are delivered for what changed
//! while the connection was lost), and the server drops it with the connection, which
//! `zookeeper-client` 0.11 does not restore for persistent watches; so after a reconnection, a
//! new session or a failed request the watch is added again and the whole service read again,
//! and the cache keeps polling at its refresh interval anyway.
//!
//! An answer's revision is the zxid of the last change it reflects — the larger of the service
//! node's `pzxid` (last child created or deleted) and its children's `mzxid` — the same whether
//! it came from a full read or from events, so the cache can order polls and pushes. A missing
//! service node is an empty answer without a revision (the cache's guard decides what to do).
//!
//! A child whose name is not `IP:port`, whose data does not parse, or that waypost may not read
//! is skipped, logged and counted once per path and version; the others are served.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;

use futures_util::stream::BoxStream;
use futures_util::FutureExt as _;
use tokio::sync::watch;
use zookeeper_client::{AddWatchMode, Error as ZkCode, EventType, PersistentWatcher, SessionState};

use super::codec::Codec;
use super::session::{Live, ZkError, ZookeeperSession};
use crate::discover::{BoxFuture, DiscoverError, Instance, Resolution, Resolver};
use crate::registry::common::{Reported, WATCH_BACKOFF};

/// Resolves services from the children of `<root>/<service>`.
pub struct ZookeeperResolver {
    inner: Arc<Inner>,
}

/// What the resolver and its watch streams share.
struct Inner {
    session: Arc<ZookeeperSession>,
    codec: Codec,
    /// Service name in ZooKeeper instead of the service's own name.
    name: Option<String>,
    /// Children whose invalid name or data was already reported, with the version reported.
    reported: Reported<String, i64>,
}

/// The children of one service node, read.
struct Listing {
    /// Each readable, valid child's instance, by child name.
    map: BTreeMap<String, Instance>,
    /// See the module docs; `None` when the service node does not exist.
    revision: Option<i64>,
}

impl ZookeeperResolver {
    /// A resolver reading `codec`'s paths through `session`; `name` replaces the service's own
    /// name in the path.
    pub fn new(session: Arc<ZookeeperSession>, codec: Codec, name: Option<String>) -> Self {
        Self {
            inner: Arc::new(Inner {
                session,
                codec,
                name,
                reported: Reported::new(),
            }),
        }
    }
}

impl Inner {
    /// Reports `child` of `path` as skipped (once per version `version`).
    fn skip(&self, path: &str, child: &str, version: i64, why: &dyn std::fmt::Display) {
        let full = format!("{path}/{child}");
        if !self.reported.first(full.as_str(), version) {
            return;
        }
        self.session.metrics().invalid_children.inc();
        tracing::warn!(path = %full, error = %why, "skipping a ZooKeeper child");
    }

    /// Reads the data of `children` of `path` (pipelined: one round trip), folding each into
    /// `map` (a child gone meanwhile is removed); the largest `mzxid` read.
    async fn read(
        &self,
        live: &Live,
        path: &str,
        children: impl IntoIterator<Item = String>,
        map: &mut BTreeMap<String, Instance>,
    ) -> Result<i64, ZkError> {
        let children: Vec<String> = children.into_iter().collect();
        // Every request is sent when its future is made, so they travel together.
        let reads: Vec<_> = children
            .iter()
            .map(|c| live.client.get_data(&format!("{path}/{c}")))
            .collect();
        let all = async { Ok(futures_util::future::join_all(reads).await) };
        let answers = self.session.request("get", path, all).await?;
        let mut revision = 0;
        for (child, answer) in children.into_iter().zip(answers) {
            match answer {
                Ok((data, stat)) => {
                    revision = revision.max(stat.mzxid);
                    match self.codec.decode(&child, &data) {
                        Ok(instance) => {
                            map.insert(child, instance);
                        }
                        Err(e) => {
                            self.skip(path, &child, stat.mzxid, &e);
                            map.remove(&child);
                        }
                    }
                }
                Err(ZkCode::NoNode) => {
                    map.remove(&child);
                }
                Err(ZkCode::NoAuth) => {
                    self.skip(path, &child, 0, &"not readable with waypost's credentials");
                    map.remove(&child);
                }
                Err(source) => {
                    return Err(ZkError::Op {
                        what: "get",
                        path: format!("{path}/{child}"),
                        source,
                    })
                }
            }
        }
        Ok(revision)
    }

    /// Reads every child of `path`.
    async fn list(&self, live: &Live, path: &str) -> Result<Listing, ZkError> {
        let listed = self
            .session
            .request("children", path, live.client.get_children(path))
            .await;
        let (children, stat) = match listed {
            Ok(found) => found,
            Err(e) if e.code() == Some(&ZkCode::NoNode) => {
                return Ok(Listing {
                    map: BTreeMap::new(),
                    revision: None,
                })
            }
            Err(e) => return Err(e),
        };
        let mut map = BTreeMap::new();
        let read = self.read(live, path, children, &mut map).await?;
        Ok(Listing {
            map,
            revision: Some(stat.pzxid.max(read)),
        })
    }
}

/// The answer made of `map`'s instances. Two children naming one address (`[::1]:80` and
/// Kitex's `::1:80`) make one instance: the first child's.
fn resolution(map: &BTreeMap<String, Instance>, revision: Option<i64>) -> Resolution {
    let mut seen = HashSet::with_capacity(map.len());
    let mut res = Resolution::new(
        map.values()
            .filter(|i| seen.insert(i.address))
            .cloned()
            .collect(),
    );
    res.revision = revision.map(|r| r.max(0) as u64);
    res
}

impl Resolver for ZookeeperResolver {
    fn name(&self) -> &'static str {
        "zookeeper"
    }

    /// The service node's path.
    fn target(&self, service: &str) -> String {
        let name = self.inner.name.as_deref().unwrap_or(service);
        self.inner.codec.service_path(name)
    }

    fn resolve<'a>(&'a self, target: &'a str) -> BoxFuture<'a, Result<Resolution, DiscoverError>> {
        Box::pin(async move {
            let live = self.inner.session.live().await?;
            let listing = self.inner.list(&live, target).await?;
            Ok(resolution(&listing.map, listing.revision))
        })
    }

    fn watch(&self, target: &str, since: Option<u64>) -> Option<BoxStream<'static, Resolution>> {
        let watch = Watch {
            sessions: self.inner.session.subscribe(),
            inner: self.inner.clone(),
            path: target.to_string(),
            since,
            active: None,
            map: BTreeMap::new(),
            revision: None,
            failures: 0,
            disconnected: false,
        };
        Some(Box::pin(futures_util::stream::unfold(
            watch,
            |mut w| async move {
                let next = w.next().await;
                Some((next, w))
            },
        )))
    }
}

/// Where an event's node sits relative to the watched service node.
enum Place<'a> {
    /// The service node itself.
    Service,
    /// A direct child (an instance), by name.
    Child(&'a str),
    /// Deeper down: not an instance.
    Deeper,
}

fn place<'a>(service: &str, path: &'a str) -> Place<'a> {
    match path.strip_prefix(service) {
        Some("") => Place::Service,
        Some(rest) => match rest.strip_prefix('/') {
            Some(child) if !child.is_empty() && !child.contains('/') => Place::Child(child),
            _ => Place::Deeper,
        },
        None => Place::Deeper,
    }
}

/// One watch of one service node: the state behind the stream [`ZookeeperResolver::watch`]
/// returns. Dropping it (the stream) removes the watch.
struct Watch {
    inner: Arc<Inner>,
    /// The service node.
    path: String,
    /// The revision of the last answer the cache has (given, or yielded since).
    since: Option<u64>,
    /// The session supervisor's announcements.
    sessions: watch::Receiver<Option<Live>>,
    /// The session the watch was added with, and the watch; `None` until established, and after
    /// the session ended or a request failed. Never polled again after a terminal event (the
    /// client panics on that).
    active: Option<(Live, PersistentWatcher)>,
    /// Every readable, valid child's instance, as of `revision`.
    map: BTreeMap<String, Instance>,
    revision: Option<i64>,
    /// Failed attempts in a row, for the backoff.
    failures: u32,
    /// The connection was lost since the watch was added: add it again once it is back.
    disconnected: bool,
}

impl Watch {
    /// The next complete answer that differs in revision from what the cache has. Never gives
    /// up: failures are logged, counted and retried with backoff.
    async fn next(&mut self) -> Resolution {
        loop {
            let Some((live, watcher)) = self.active.as_mut() else {
                if self.failures > 0 {
                    tokio::time::sleep(WATCH_BACKOFF.delay(self.failures, fastrand::f64())).await;
                }
                match self.establish().await {
                    Ok(Some(res)) => return res,
                    Ok(None) => continue,
                    Err(e) => {
                        self.failed(&e);
                        continue;
                    }
                }
            };
            let generation = live.generation;
            let first = tokio::select! {
                event = watcher.changed() => event,
                // The watch's own session events are what count; this catches a session replaced
                // behind it. (The sender lives in the session this stream holds: never closed.)
                Ok(()) = self.sessions.changed() => {
                    let current = self.sessions.borrow_and_update().as_ref().map(|l| l.generation);
                    if current.is_some_and(|g| g != generation) {
                        self.restart("new_session");
                    }
                    continue;
                }
            };
            // Whatever else has arrived joins this batch, so a burst makes one answer.
            let mut events = vec![first];
            while !events
                .last()
                .is_some_and(|e| e.session_state.is_terminated())
            {
                match watcher.changed().now_or_never() {
                    Some(event) => events.push(event),
                    None => break,
                }
            }
            match self.apply(events).await {
                Ok(Some(res)) => return res,
                Ok(None) => {}
                Err(e) => self.failed(&e),
            }
        }
    }

    /// Adds the watch and reads the service in full with the current session; the answer when
    /// the cache does not have its revision yet.
    async fn establish(&mut self) -> Result<Option<Resolution>, ZkError> {
        let usable = |c: &Option<Live>| c.as_ref().is_some_and(|l| !l.ended());
        let live = match self.sessions.wait_for(usable).await {
            Ok(current) => current.clone(),
            Err(_) => None,
        }
        .ok_or_else(|| ZkError::NoSession("the session supervisor stopped".into()))?;
        let session = &self.inner.session;
        let watcher = session
            .request(
                "watch",
                &self.path,
                live.client
                    .watch(&self.path, AddWatchMode::PersistentRecursive),
            )
            .await?;
        let listing = self.inner.list(&live, &self.path).await?;
        self.active = Some((live, watcher));
        self.map = listing.map;
        self.revision = listing.revision;
        self.failures = 0;
        self.disconnected = false;
        Ok(self.answer())
    }

    /// Applies a batch of events; the answer if it changed the revision.
    async fn apply(
        &mut self,
        events: Vec<zookeeper_client::WatchedEvent>,
    ) -> Result<Option<Resolution>, ZkError> {
        let mut full = false;
        let mut reread = BTreeSet::new();
        let mut deleted = false;
        for event in &events {
            if event.event_type == EventType::Session {
                match event.session_state {
                    SessionState::Disconnected => self.disconnected = true,
                    SessionState::SyncConnected | SessionState::ConnectedReadOnly => {
                        if std::mem::take(&mut self.disconnected) {
                            // Back within the session, but the server lost the watch with the
                            // connection, and zookeeper-client 0.11 does not restore persistent
                            // watches (`resend_watches` only sends the first three kinds): add it
                            // again, and read what it missed meanwhile (ZOOKEEPER-4698).
                            self.restart("reconnected");
                            return Ok(None);
                        }
                    }
                    _ => {
                        // Ended for good: the next session brings a new watch and a full read.
                        self.restart("new_session");
                        return Ok(None);
                    }
                }
                continue;
            }
            match place(&self.path, &event.path) {
                Place::Service => full = true,
                Place::Child(child) if event.event_type == EventType::NodeDeleted => {
                    reread.remove(child);
                    self.map.remove(child);
                    deleted = true;
                }
                Place::Child(child) => {
                    reread.insert(child.to_string());
                }
                Place::Deeper => {}
            }
        }
        let Some(live) = self.active.as_ref().map(|(l, _)| l.clone()) else {
            return Ok(None);
        };
        if full {
            let listing = self.inner.list(&live, &self.path).await?;
            self.map = listing.map;
            self.revision = listing.revision;
            return Ok(self.answer());
        }
        let mut revision = self.revision.unwrap_or(0);
        if !reread.is_empty() {
            let read = self.inner.read(&live, &self.path, reread, &mut self.map);
            revision = revision.max(read.await?);
        }
        if deleted {
            // The service node's pzxid is the zxid of the last deletion (or creation) under it.
            let session = &self.inner.session;
            match session
                .request("exists", &self.path, live.client.check_stat(&self.path))
                .await?
            {
                Some(stat) => revision = revision.max(stat.pzxid),
                None => {
                    self.map.clear();
                    self.revision = None;
                    return Ok(self.answer());
                }
            }
        }
        self.revision = Some(revision);
        Ok(self.answer())
    }

    /// Drops the watch (and the session it came with) so that the next call establishes both
    /// again; counted with `reason`.
    fn restart(&mut self, reason: &'static str) {
        self.active = None;
        self.inner
            .session
            .metrics()
            .watch_restarts
            .with_label_values(&[reason])
            .inc();
    }

    fn failed(&mut self, e: &ZkError) {
        self.failures = self.failures.saturating_add(1);
        tracing::warn!(path = %self.path, error = %e, failures = self.failures, "ZooKeeper watch interrupted; reading again");
        if self.active.is_some() {
            self.restart("failed");
        }
    }

    /// The current map as an answer, unless the cache has its revision already; remembered as
    /// the cache's.
    fn answer(&mut self) -> Option<Resolution> {
        let res = resolution(&self.map, self.revision);
        if res.revision.is_some() && res.revision == self.since {
            return None;
        }
        self.since = res.revision;
        Some(res)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_of_events() {
        assert!(matches!(place("/echo", "/echo"), Place::Service));
        assert!(matches!(
            place("/echo", "/echo/10.0.0.1:80"),
            Place::Child("10.0.0.1:80")
        ));
        assert!(matches!(place("/echo", "/echo/a/b"), Place::Deeper));
        assert!(matches!(place("/echo", "/echo2/a"), Place::Deeper));
        assert!(matches!(place("/echo", "/echo/"), Place::Deeper));
    }

    #[test]
    fn one_instance_per_address() {
        let a = Instance::new("[::1]:80".parse().unwrap(), 3);
        let map = BTreeMap::from([
            ("::1:80".to_string(), a.clone()),
            (
                "[::1]:80".to_string(),
                Instance::new("[::1]:80".parse().unwrap(), 5),
            ),
            (
                "10.0.0.2:80".to_string(),
                Instance::new("10.0.0.2:80".parse().unwrap(), 1),
            ),
        ]);
        let res = resolution(&map, Some(7));
        assert_eq!(res.instances.len(), 2);
        assert!(res.instances.contains(&a), "the first child's");
        assert_eq!(res.revision, Some(7));
        assert_eq!(resolution(&BTreeMap::new(), None).revision, None);
    }
}
