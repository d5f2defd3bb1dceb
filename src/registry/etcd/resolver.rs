//! The etcd resolver: a prefix read of `<prefix>/<service>/` (with the trailing slash), and a
//! watch from the next revision that delivers each change as a complete answer.
//!
//! The watch ([`Resolver::watch`]) lists once, opens a watch from the list's revision + 1 and
//! keeps every key's decoded instance in a map; each batch of events updates the map and yields
//! the whole set, which the cache applies directly — no second read per change. Watches are
//! hints, never trusted to be complete (etcd 3.4 has known watch bugs, REGISTRIES.md §5.3): on a
//! compaction cancel, a cancel for any other reason, a stream error or a stream that ends, the
//! watch lists again and watches again (grpc-go's resolver silently stops there), backing off with
//! jitter while etcd is unreachable; and the cache keeps polling at its refresh interval anyway.
//!
//! A value that does not parse is skipped, logged and counted once per key and revision.

use std::collections::BTreeMap;
use std::sync::Arc;

use etcd_client::{KeyValue, WatchStream};
use futures_util::stream::BoxStream;

use super::client::EtcdClient;
use super::codec::Codec;
use crate::discover::{BoxFuture, DiscoverError, Instance, Resolution, Resolver};
use crate::metrics::EtcdMetrics;
use crate::registry::common::{Reported, WATCH_BACKOFF};

/// Resolves services from etcd keys of one layout under one prefix.
pub struct EtcdResolver {
    inner: Arc<Inner>,
}

/// What the resolver and its watch streams share.
struct Inner {
    client: Arc<EtcdClient>,
    codec: Codec,
    /// Service name in etcd instead of the service's own name.
    name: Option<String>,
    metrics: EtcdMetrics,
    /// Keys whose invalid value was already reported, with the value's revision.
    reported: Reported<Vec<u8>, i64>,
}

impl EtcdResolver {
    /// A resolver reading `codec`'s keys through `client`; `name` replaces the service's own
    /// name in the keys.
    pub fn new(
        client: Arc<EtcdClient>,
        codec: Codec,
        name: Option<String>,
        metrics: EtcdMetrics,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                client,
                codec,
                name,
                metrics,
                reported: Reported::new(),
            }),
        }
    }
}

impl Inner {
    /// The instance in `kv`, or `None` (reported once) when its value does not parse.
    fn decode(&self, kv: &KeyValue) -> Option<Instance> {
        match self.codec.decode(kv.value()) {
            Ok(i) => Some(i),
            Err(e) => {
                if self.reported.first(kv.key(), kv.mod_revision()) {
                    self.metrics
                        .invalid_values
                        .with_label_values(&[self.codec.layout().as_str()])
                        .inc();
                    tracing::warn!(key = %String::from_utf8_lossy(kv.key()), error = %e, "skipping an etcd value that does not parse");
                }
                None
            }
        }
    }

    /// Lists `prefix`: every key's instance (invalid values left out) and the revision.
    async fn list(
        &self,
        prefix: &str,
    ) -> Result<(BTreeMap<Vec<u8>, Instance>, i64), DiscoverError> {
        let (kvs, revision) = self.client.get_prefix(prefix).await?;
        let map = kvs
            .iter()
            .filter_map(|kv| Some((kv.key().to_vec(), self.decode(kv)?)))
            .collect();
        Ok((map, revision))
    }
}

/// The answer made of `map`'s instances at `revision`. Two keys naming one address (gRPC keys
/// are free-form) make one instance: the first key's.
fn resolution(map: &BTreeMap<Vec<u8>, Instance>, revision: i64) -> Resolution {
    let mut seen = std::collections::HashSet::with_capacity(map.len());
    let unique = map
        .values()
        .filter(|i| seen.insert(i.address))
        .cloned()
        .collect();
    let mut res = Resolution::new(unique);
    res.revision = Some(revision.max(0) as u64);
    res
}

impl Resolver for EtcdResolver {
    fn name(&self) -> &'static str {
        "etcd"
    }

    /// The key prefix, with its trailing `/`.
    fn target(&self, service: &str) -> String {
        let name = self.inner.name.as_deref().unwrap_or(service);
        self.inner.codec.service_prefix(name)
    }

    fn resolve<'a>(&'a self, target: &'a str) -> BoxFuture<'a, Result<Resolution, DiscoverError>> {
        Box::pin(async move {
            let (map, revision) = self.inner.list(target).await?;
            Ok(resolution(&map, revision))
        })
    }

    fn watch(&self, target: &str, since: Option<u64>) -> Option<BoxStream<'static, Resolution>> {
        let watch = Watch {
            inner: self.inner.clone(),
            prefix: target.to_string(),
            since,
            map: BTreeMap::new(),
            revision: 0,
            stream: None,
            failures: 0,
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

/// Why a watch is listed and opened again (the `reason` label).
#[derive(Debug, Clone, Copy)]
enum Restart {
    /// Its start revision was compacted away.
    Compacted,
    /// etcd canceled it for another reason.
    Canceled,
    /// The stream failed (member gone, connection broken).
    Failed,
    /// The stream ended.
    Closed,
}

impl Restart {
    fn as_str(self) -> &'static str {
        match self {
            Restart::Compacted => "compacted",
            Restart::Canceled => "canceled",
            Restart::Failed => "failed",
            Restart::Closed => "closed",
        }
    }
}

/// One watch of one prefix: the state behind the stream [`EtcdResolver::watch`] returns.
/// Dropping it (the stream) cancels everything.
struct Watch {
    inner: Arc<Inner>,
    prefix: String,
    /// The revision of the last answer the cache has (given, or yielded since).
    since: Option<u64>,
    /// Every key's instance as of `revision`.
    map: BTreeMap<Vec<u8>, Instance>,
    revision: i64,
    /// The open etcd watch; `None` until listed, and after it broke.
    stream: Option<WatchStream>,
    /// Failed attempts in a row, for the backoff.
    failures: u32,
}

impl Watch {
    /// The next complete answer that differs in revision from what the cache has. Never gives
    /// up: failures are logged, counted and retried with backoff.
    async fn next(&mut self) -> Resolution {
        loop {
            let Some(stream) = self.stream.as_mut() else {
                if self.failures > 0 {
                    tokio::time::sleep(WATCH_BACKOFF.delay(self.failures, fastrand::f64())).await;
                }
                match self.relist().await {
                    Ok(Some(res)) => return res,
                    Ok(None) => continue,
                    Err(e) => {
                        self.failures = self.failures.saturating_add(1);
                        tracing::warn!(prefix = %self.prefix, error = %e, failures = self.failures, "etcd watch cannot be restored yet; retrying");
                        continue;
                    }
                }
            };
            let restart = match stream.message().await {
                Ok(Some(resp)) if resp.canceled() => {
                    if resp.compact_revision() > 0 {
                        tracing::info!(prefix = %self.prefix, compacted = resp.compact_revision(), "etcd watch compacted; listing again");
                        Restart::Compacted
                    } else {
                        tracing::warn!(prefix = %self.prefix, reason = resp.cancel_reason(), "etcd watch canceled; listing again");
                        Restart::Canceled
                    }
                }
                Ok(Some(resp)) => {
                    // The creation notice and progress notifications carry no events.
                    if resp.events().is_empty() {
                        continue;
                    }
                    for event in resp.events() {
                        let Some(kv) = event.kv() else { continue };
                        // A deleted key's version is 0 (a live key's is ≥ 1): read from the
                        // data rather than through `event_type()`, which panics on a type it
                        // does not know.
                        let instance = (kv.version() > 0).then(|| self.inner.decode(kv)).flatten();
                        match instance {
                            Some(i) => self.map.insert(kv.key().to_vec(), i),
                            None => self.map.remove(kv.key()),
                        };
                        self.revision = self.revision.max(kv.mod_revision());
                    }
                    if let Some(h) = resp.header() {
                        self.revision = self.revision.max(h.revision());
                    }
                    self.failures = 0;
                    return self.answer();
                }
                Ok(None) => {
                    tracing::warn!(prefix = %self.prefix, "etcd watch ended; listing again");
                    Restart::Closed
                }
                Err(e) => {
                    tracing::warn!(prefix = %self.prefix, error = %e, "etcd watch failed; listing again");
                    Restart::Failed
                }
            };
            self.stream = None;
            self.inner
                .metrics
                .watch_restarts
                .with_label_values(&[restart.as_str()])
                .inc();
            // A compaction is answered at once (listing is the cure); the rest back off.
            if !matches!(restart, Restart::Compacted) {
                self.failures = self.failures.saturating_add(1);
            }
        }
    }

    /// Lists the prefix and opens a watch from the next revision; the listed answer when the
    /// cache does not have its revision yet.
    async fn relist(&mut self) -> Result<Option<Resolution>, DiscoverError> {
        let (map, revision) = self.inner.list(&self.prefix).await?;
        self.stream = Some(
            self.inner
                .client
                .watch_prefix(&self.prefix, revision + 1)
                .await?,
        );
        self.map = map;
        self.revision = revision;
        self.failures = 0;
        if self.since == Some(revision.max(0) as u64) {
            return Ok(None);
        }
        Ok(Some(self.answer()))
    }

    /// The current map as an answer, remembered as the cache's.
    fn answer(&mut self) -> Resolution {
        let res = resolution(&self.map, self.revision);
        self.since = res.revision;
        res
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn backoff_doubles_caps_and_spreads() {
        let backoff = |failures, unit| WATCH_BACKOFF.delay(failures, unit);
        assert_eq!(backoff(1, 0.5), Duration::from_millis(100));
        assert_eq!(backoff(2, 0.5), Duration::from_millis(200));
        assert_eq!(backoff(8, 0.5), Duration::from_secs(10));
        assert_eq!(backoff(u32::MAX, 0.5), Duration::from_secs(10));
        assert_eq!(backoff(1, 0.0), Duration::from_millis(80));
        assert!(backoff(1, 0.999) <= Duration::from_millis(120));
    }

    #[test]
    fn one_instance_per_address() {
        let a = Instance::new("10.0.0.1:80".parse().unwrap(), 3);
        let map = BTreeMap::from([
            (b"svc/a".to_vec(), a.clone()),
            (
                b"svc/b".to_vec(),
                Instance::new("10.0.0.1:80".parse().unwrap(), 5),
            ),
            (
                b"svc/c".to_vec(),
                Instance::new("10.0.0.2:80".parse().unwrap(), 1),
            ),
        ]);
        let res = resolution(&map, 7);
        assert_eq!(res.instances.len(), 2);
        assert_eq!(res.instances[0], a, "the first key's");
        assert_eq!(res.revision, Some(7));
    }
}
