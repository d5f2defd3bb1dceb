//! Stage 2 — discovery: the seam every service registry implements.
//!
//! In the spirit of CloudWeGo Hertz's `discovery.Resolver`: a [`Resolver`] has a [`name`]
//! (`"static"`, `"file"`, `"dns"` …), maps a service to its cache key ([`target`]) and
//! [`resolve`]s a target into a [`Resolution`] — the [`Instance`]s plus where they came from
//! (revision, TTL). Resolvers that can push changes also offer [`watch`]: a stream of whole
//! answers. Resolvers know nothing of caching, balancing or forwarding: the cache stage drives
//! them and hands results on.
//!
//! [`name`]: Resolver::name
//! [`target`]: Resolver::target
//! [`resolve`]: Resolver::resolve
//! [`watch`]: Resolver::watch

use std::net::SocketAddr;
use std::time::Duration;

use serde::Serialize;

pub use futures_util::stream::BoxStream;

pub use crate::{BoxFuture, Tags};

/// One reachable instance of a service.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Instance {
    /// Where to connect.
    pub address: SocketAddr,
    /// Relative weight; 0 drains the instance (kept in the table, never picked).
    pub weight: u32,
    /// Labels from the registry or config.
    pub tags: Tags,
}

impl Instance {
    /// An instance without tags (sharing one empty tag map: no allocation per instance).
    pub fn new(address: SocketAddr, weight: u32) -> Self {
        Self {
            address,
            weight,
            tags: no_tags(),
        }
    }
}

/// The shared empty tag map.
pub fn no_tags() -> Tags {
    static EMPTY: std::sync::OnceLock<Tags> = std::sync::OnceLock::new();
    EMPTY.get_or_init(Tags::default).clone()
}

/// The answer of one resolve: the instances and their provenance.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolution {
    /// The instances, sorted by address so equal sets compare equal.
    pub instances: Vec<Instance>,
    /// The registry's revision or index for this answer, when it has one (etcd revision, Consul
    /// index); lets the cache skip unchanged answers and watch from the right point.
    pub revision: Option<u64>,
    /// How long the answer may be trusted, when the registry says (DNS TTL); the cache clamps it.
    pub ttl: Option<Duration>,
}

impl Resolution {
    /// A resolution of `instances`, sorted into canonical order.
    pub fn new(mut instances: Vec<Instance>) -> Self {
        instances.sort_by(|a, b| a.address.cmp(&b.address).then(a.weight.cmp(&b.weight)));
        Self {
            instances,
            revision: None,
            ttl: None,
        }
    }

    /// Whether `other` carries the same instances (ignoring revision and TTL).
    pub fn same_instances(&self, other: &Resolution) -> bool {
        self.instances == other.instances
    }
}

/// Why a resolve failed. "No instances" is not an error: it is an empty [`Resolution`].
#[derive(Debug, thiserror::Error)]
pub enum DiscoverError {
    /// The registry could not be reached or did not answer in time.
    #[error("registry unavailable: {0}")]
    Unavailable(String),
    /// Local I/O failed (file registry).
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

/// A source of instances for services.
pub trait Resolver: Send + Sync + 'static {
    /// The resolver's kind, for logs, metrics and `/debug/services` (`"static"`, `"file"`…).
    fn name(&self) -> &'static str;

    /// The cache key for `service`: two services with the same target share one cache entry.
    fn target(&self, service: &str) -> String;

    /// Fetches the current instances of `target`.
    fn resolve<'a>(&'a self, target: &'a str) -> BoxFuture<'a, Result<Resolution, DiscoverError>>;

    /// Whether answers can change over time; `false` (static lists) lets the cache resolve once
    /// and never poll again.
    fn refreshes(&self) -> bool {
        true
    }

    /// For registries that push changes: a stream of complete answers for `target`, each one
    /// an answer the cache applies exactly as if [`resolve`](Resolver::resolve) had returned it
    /// (the same guard, the same metrics), without a second request per change. `since` is the
    /// revision of the answer the cache has; the stream need not repeat it. `None` when the
    /// resolver cannot watch.
    ///
    /// The stream copes with its registry's failures itself (re-listing, backing off) and is
    /// dropped to cancel it; if it ends, the cache resolves again and asks for a new one. Its
    /// answers are hints on top of polling, never a replacement: the cache keeps refreshing at
    /// its interval, and ignores a streamed answer older than one it already has.
    fn watch(&self, _target: &str, _since: Option<u64>) -> Option<BoxStream<'static, Resolution>> {
        None
    }
}
