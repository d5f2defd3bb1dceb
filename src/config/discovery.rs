//! The discovery part of the schema: `discovery:` (cache policy, backoff, guard, on-demand
//! rules) and `dns:` (the shared DNS client).

use serde::Deserialize;

use super::{Addr, Dur, ResolverConfig, ServiceName};

/// `discovery:` — cache behaviour shared by every target.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DiscoveryConfig {
    /// How often each target is re-resolved (default 5s).
    pub refresh_interval: Dur,
    /// Random spread applied to every refresh delay, as a share of it (default 0.2 = ±20 %).
    pub jitter: f64,
    /// A target resolved on demand and unused for this long is dropped (default 60s).
    /// Declared services never expire.
    pub expire_interval: Dur,
    /// How long the last good table is served while refreshes fail (default: no limit —
    /// stale beats empty).
    pub max_stale: Option<Dur>,
    /// Time allowed for one resolve (default 5s).
    pub resolve_timeout: Dur,
    /// Retry delays after failed resolves.
    pub backoff: BackoffConfig,
    /// Protection against answers that empty a table or remove most of it.
    pub guard: GuardConfig,
    /// Rules for names that are not declared under `services:` but may be resolved on first
    /// use. Any other name is refused: waypost is never an open proxy.
    pub on_demand: Vec<OnDemandRule>,
}

/// `discovery.on_demand[]` — names ending in `suffix` are resolved on first use by `resolver`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OnDemandRule {
    /// A DNS suffix such as `.svc.cluster.local` (must start with a dot).
    pub suffix: String,
    /// The resolver for matching names: `dns` (the name is the requested host; `port` is
    /// required), `file` or `etcd` (the name is the registry service name).
    #[serde(with = "serde_yaml::with::singleton_map")]
    pub resolver: ResolverConfig,
    /// Refresh interval for targets created by this rule (default `discovery.refresh_interval`).
    pub refresh_interval: Option<Dur>,
}

impl OnDemandRule {
    /// Whether `name` (a lowercase host without port) falls under this rule: it ends with the
    /// suffix and is more than the suffix (`.svc.cluster.local` does not cover itself), and is
    /// a well-formed host name, so nothing odd ever reaches the registry.
    pub fn covers(&self, name: &str) -> bool {
        name.len() > self.suffix.len()
            && name.ends_with(self.suffix.as_str())
            && ServiceName::is_valid(name)
    }
}

/// `dns:` — the DNS client shared by every `dns` resolver.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DnsConfig {
    /// Name servers as `IP:port`; empty (the default) uses the system's `/etc/resolv.conf`.
    pub nameservers: Vec<Addr>,
    /// Time allowed for one query (default 2s).
    pub timeout: Dur,
    /// Queries tried per lookup before it fails (default 2).
    pub attempts: usize,
    /// Shortest refresh interval a record TTL may ask for (default 1s).
    pub min_ttl: Dur,
    /// Longest refresh interval a record TTL may ask for (default 30s).
    pub max_ttl: Dur,
}

impl Default for DnsConfig {
    fn default() -> Self {
        Self {
            nameservers: Vec::new(),
            timeout: Dur::from_secs(2),
            attempts: 2,
            min_ttl: Dur::from_secs(1),
            max_ttl: Dur::from_secs(30),
        }
    }
}

impl Default for DiscoveryConfig {
    fn default() -> Self {
        Self {
            refresh_interval: Dur::from_secs(5),
            jitter: 0.2,
            expire_interval: Dur::from_secs(60),
            max_stale: None,
            resolve_timeout: Dur::from_secs(5),
            backoff: BackoffConfig::default(),
            guard: GuardConfig::default(),
            on_demand: Vec::new(),
        }
    }
}

/// `discovery.backoff:` — jittered exponential backoff after failed resolves.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BackoffConfig {
    /// First retry delay (default 1s); doubles on each further failure.
    pub initial: Dur,
    /// Longest retry delay (default 30s).
    pub max: Dur,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        Self {
            initial: Dur::from_secs(1),
            max: Dur::from_secs(30),
        }
    }
}

/// `discovery.guard:` — an answer that empties a table, or removes more than `max_removal` of
/// its instances at once, is applied only after `confirm` consecutive answers agree.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GuardConfig {
    /// Consecutive confirming answers needed (default 3; 1 disables the guard).
    pub confirm: u32,
    /// Share of instances one answer may remove unconfirmed (default 0.5).
    pub max_removal: f64,
}

impl Default for GuardConfig {
    fn default() -> Self {
        Self {
            confirm: 3,
            max_removal: 0.5,
        }
    }
}
