//! Stage 3 — the per-target cache: keeps every target's instances fresh and never lets it go dark.
//!
//! Each target (a service and the resolver that answers for it) has one refresher task
//! ([`refresh`]) that resolves it, decides what to accept ([`state`]), and hands the result to a
//! [`Publish`]er — the balancing stage, which builds the table. The cache owns the name → target
//! maps the forwarding path looks up without a lock:
//!
//! - **Declared** services are created at start-up and resolved at once; they never expire.
//! - **On-demand** targets are created by the first request whose name matches a [`Rule`]; the
//!   concurrent first requests share that one resolution (singleflight). A name that matches no
//!   rule is refused, so waypost never becomes an open proxy. An on-demand target that no request
//!   uses for `expire_interval` is dropped with its table and metrics; a refresh never counts as use.
//!
//! What Hertz's cache lacks and this one does: jittered refreshes, failures cached with
//! exponential backoff, stale tables kept on error, answers that empty a table held for
//! confirmation, and idle expiry that refreshes cannot defeat.

pub mod policy;
mod refresh;
pub mod state;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::watch;
use tokio::time::Instant;

pub use policy::Policy;
pub use state::{State, Status};

use crate::discover::{Resolution, Resolver};
use crate::metrics::DiscoveryMetrics;
use crate::shutdown::Shutdown;

/// The downstream side of the cache: receives every state a target goes through.
pub trait Publish: Send + Sync + 'static {
    /// Called by the target's refresher after every resolve. The instances changed exactly when
    /// `resolution` is a different `Arc` from the previous call's: the refresher replaces it only
    /// then, so a publisher rebuilds its table on pointer inequality alone.
    fn publish(&self, resolution: &Arc<Resolution>, status: &Status);

    /// Called once when an on-demand target expires and is dropped.
    fn retire(&self) {}
}

/// An on-demand rule: names it matches are resolved on first use by its resolver.
pub struct Rule {
    /// Human-readable description for logs and `/debug` (`suffix .svc.cluster.local`).
    pub description: String,
    /// Whether `name` (lowercase host, no port) falls under this rule.
    pub matches: Box<dyn Fn(&str) -> bool + Send + Sync>,
    /// The resolver for matching names.
    pub resolver: Arc<dyn Resolver>,
    /// Refresh interval for its targets (`None`: the policy's).
    pub refresh_interval: Option<Duration>,
}

/// One cached target: a service name, its publisher and its bookkeeping.
pub struct Target<P> {
    name: Box<str>,
    declared: bool,
    publisher: P,
    /// Milliseconds since the cache's epoch at the last request; written by the forwarding
    /// path ([`Target::touch`]), read by the refresher to decide expiry.
    last_used_ms: AtomicU64,
    /// Becomes true after the first resolve attempt (success or failure); the refresher writes
    /// it, first requests wait on it. Closed when the refresher ends.
    resolved: watch::Sender<bool>,
    epoch: Instant,
}

impl<P> Target<P> {
    /// The service name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the service was declared in the config (declared targets never expire).
    pub fn is_declared(&self) -> bool {
        self.declared
    }

    /// The publisher (the balancing stage's per-service object).
    pub fn publisher(&self) -> &P {
        &self.publisher
    }

    /// Marks the target as used now. Only use resets the idle clock, never a refresh.
    pub fn touch(&self) {
        if !self.declared {
            self.last_used_ms
                .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
        }
    }

    /// How long since the last use.
    pub fn idle(&self) -> Duration {
        let used = Duration::from_millis(self.last_used_ms.load(Ordering::Relaxed));
        self.epoch.elapsed().saturating_sub(used)
    }

    /// Waits until the first resolve attempt has finished (at once if it has).
    pub async fn first_resolve(&self) {
        let mut rx = self.resolved.subscribe();
        let _ = rx.wait_for(|done| *done).await;
    }
}

type Map<P> = HashMap<Box<str>, Arc<Target<P>>>;

/// Builds the per-service publisher for a new target.
pub type MakePublisher<P> = Box<dyn Fn(&str) -> P + Send + Sync>;

/// Declared targets built by [`Cache::new`], waiting for [`Cache::start`] to spawn their
/// refreshers: each with its resolver and refresh-interval override.
pub type Unstarted<P> = Vec<(Arc<Target<P>>, Arc<dyn Resolver>, Option<Duration>)>;

struct Inner<P> {
    declared: Map<P>,
    /// Published whole on every insert or removal; read lock-free by [`Cache::get`].
    on_demand: ArcSwap<Map<P>>,
    /// Serialises inserts and removals of on-demand targets (copy-on-write of the map).
    write: Mutex<()>,
    rules: Vec<Rule>,
    make: MakePublisher<P>,
    policy: Policy,
    metrics: DiscoveryMetrics,
    shutdown: Shutdown,
    epoch: Instant,
}

/// The per-target cache. Cheap to clone.
pub struct Cache<P> {
    inner: Arc<Inner<P>>,
}

impl<P> Clone for Cache<P> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

/// A declared service handed to [`Cache::new`].
pub struct Declared {
    /// Service name.
    pub name: String,
    /// Its resolver.
    pub resolver: Arc<dyn Resolver>,
    /// Its refresh interval, when it overrides the policy's.
    pub refresh_interval: Option<Duration>,
}

/// What a lookup found.
pub enum Lookup<P> {
    /// A cached target.
    Found(Arc<Target<P>>),
    /// Not cached, but an on-demand rule covers it: call [`Cache::resolve_on_demand`].
    OnDemand,
    /// No declared service and no rule: refuse.
    Unknown,
}

impl<P: Publish> Cache<P> {
    /// A cache of `declared` services and on-demand `rules`; `make` builds each target's
    /// publisher. Nothing runs until [`Cache::start`].
    pub fn new(
        policy: Policy,
        declared: Vec<Declared>,
        rules: Vec<Rule>,
        make: MakePublisher<P>,
        metrics: DiscoveryMetrics,
        shutdown: Shutdown,
    ) -> (Self, Unstarted<P>) {
        let epoch = Instant::now();
        let mut map = Map::new();
        let mut pending = Vec::new();
        for d in declared {
            let target = Arc::new(new_target(&d.name, true, make(&d.name), epoch));
            map.insert(d.name.clone().into_boxed_str(), target.clone());
            pending.push((target, d.resolver, d.refresh_interval));
        }
        let inner = Inner {
            declared: map,
            on_demand: ArcSwap::from_pointee(Map::new()),
            write: Mutex::new(()),
            rules,
            make,
            policy,
            metrics,
            shutdown,
            epoch,
        };
        (
            Self {
                inner: Arc::new(inner),
            },
            pending,
        )
    }

    /// Spawns the refreshers of the declared services returned by [`Cache::new`].
    pub fn start(&self, declared: Unstarted<P>) {
        self.inner
            .metrics
            .targets
            .with_label_values(&["declared"])
            .set(declared.len() as i64);
        for (target, resolver, interval) in declared {
            self.spawn_refresher(target, resolver, interval);
        }
    }

    fn spawn_refresher(
        &self,
        target: Arc<Target<P>>,
        resolver: Arc<dyn Resolver>,
        interval: Option<Duration>,
    ) {
        let mut policy = self.inner.policy.clone();
        if let Some(i) = interval {
            policy.refresh_interval = i;
        }
        let refresher = refresh::Refresher {
            cache: Arc::downgrade(&self.inner) as std::sync::Weak<dyn refresh::Owner<P>>,
            target,
            resolver,
            policy,
            metrics: self.inner.metrics.clone(),
            shutdown: self.inner.shutdown.clone(),
        };
        tokio::spawn(refresher.run());
    }

    /// Finds `name` (lowercase host without port). Lock-free and allocation-free.
    pub fn get(&self, name: &str) -> Lookup<P> {
        if let Some(t) = self.inner.declared.get(name) {
            return Lookup::Found(t.clone());
        }
        if let Some(t) = self.inner.on_demand.load().get(name) {
            return Lookup::Found(t.clone());
        }
        if self.inner.rules.iter().any(|r| (r.matches)(name)) {
            Lookup::OnDemand
        } else {
            Lookup::Unknown
        }
    }

    /// Creates the on-demand target for `name` if a rule covers it (or returns the one a
    /// concurrent request just created) and starts its refresher. `None` when no rule matches.
    /// Callers then wait for [`Target::first_resolve`]: all of them share that one resolution.
    pub fn resolve_on_demand(&self, name: &str) -> Option<Arc<Target<P>>> {
        let rule = self.inner.rules.iter().find(|r| (r.matches)(name))?;
        let guard = self.inner.write.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(t) = self.inner.on_demand.load().get(name) {
            return Some(t.clone());
        }
        let target = Arc::new(new_target(
            name,
            false,
            (self.inner.make)(name),
            self.inner.epoch,
        ));
        target.touch();
        let mut map = Map::clone(&self.inner.on_demand.load());
        map.insert(name.into(), target.clone());
        self.inner.store_on_demand(map);
        drop(guard);
        tracing::info!(service = name, rule = %rule.description, "resolving on demand");
        self.spawn_refresher(target.clone(), rule.resolver.clone(), rule.refresh_interval);
        Some(target)
    }

    /// Every cached target, declared first, each group in name order.
    pub fn targets(&self) -> Vec<Arc<Target<P>>> {
        let mut declared: Vec<_> = self.inner.declared.values().cloned().collect();
        declared.sort_by(|a, b| a.name.cmp(&b.name));
        let mut dynamic: Vec<_> = self.inner.on_demand.load().values().cloned().collect();
        dynamic.sort_by(|a, b| a.name.cmp(&b.name));
        declared.extend(dynamic);
        declared
    }

    /// Descriptions of the on-demand rules.
    pub fn rules(&self) -> Vec<String> {
        self.inner
            .rules
            .iter()
            .map(|r| r.description.clone())
            .collect()
    }

    /// The policy in force.
    pub fn policy(&self) -> &Policy {
        &self.inner.policy
    }
}

impl<P: Publish> refresh::Owner<P> for Inner<P> {
    fn remove(&self, target: &Arc<Target<P>>) {
        let _guard = self.write.lock().unwrap_or_else(|p| p.into_inner());
        let mut map = Map::clone(&self.on_demand.load());
        if map
            .get(target.name())
            .is_some_and(|t| Arc::ptr_eq(t, target))
        {
            map.remove(target.name());
            self.store_on_demand(map);
        }
    }
}

impl<P> Inner<P> {
    /// Publishes `map` as the on-demand map and its size as the `on_demand` targets gauge.
    /// The caller holds `write`.
    fn store_on_demand(&self, map: Map<P>) {
        self.metrics
            .targets
            .with_label_values(&["on_demand"])
            .set(map.len() as i64);
        self.on_demand.store(Arc::new(map));
    }
}

fn new_target<P>(name: &str, declared: bool, publisher: P, epoch: Instant) -> Target<P> {
    Target {
        name: name.into(),
        declared,
        publisher,
        last_used_ms: AtomicU64::new(0),
        resolved: watch::Sender::new(false),
        epoch,
    }
}

#[cfg(test)]
mod tests;
