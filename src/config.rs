//! Stage 0 — configuration: the whole YAML schema as typed serde structs.
//!
//! A config file is read once ([`load`] / [`load_str`]): `${VAR}` references are expanded
//! (private module `env`), the text is parsed with `deny_unknown_fields` into the types below —
//! durations, addresses, weights and names are checked *while* parsing, so serde_yaml reports the
//! exact line and column — and then [`Config::validate`] checks the rules that span several keys,
//! locating the offending key in the text (private module `locate`). Runtime code receives only
//! these typed values and never parses a string again.

mod client;
mod consul;
mod discovery;
mod env;
mod etcd;
mod locate;
mod register;
mod resilience;
mod routes;
mod tls;
mod types;
mod validate;
mod zookeeper;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use client::{ClientConfig, Http2Config, Size, MAX_HEADERS_LIMIT};
pub use consul::{
    check_service_name, ConsulCheckKind, ConsulRegistryConfig, ConsulResolverConfig, ConsulScheme,
    ConsulTlsConfig,
};
pub use discovery::{BackoffConfig, DiscoveryConfig, DnsConfig, GuardConfig, OnDemandRule};
pub use etcd::{EtcdLayout, EtcdOptions, EtcdRegistryConfig, EtcdResolverConfig, EtcdTlsConfig};
pub use register::{
    default_register_weight, CheckConfig, HttpUrl, ProbeConfig, RegisterEntry, RegistryKind,
};
pub use resilience::{
    BalancerKind, BudgetConfig, LimitsConfig, OutlierConfig, RetryConfig, RetryOn, ServiceLimits,
};
pub use routes::RouteConfig;
pub use tls::{
    read_certificates, read_private_key, ListenerTlsConfig, Protocol, UpstreamTlsConfig,
};
pub use types::{Addr, Dur, ServiceName};
pub use zookeeper::{ZookeeperRegistryConfig, ZookeeperResolverConfig};

/// Where the outbound listener binds when the config does not say (linkerd's outbound port).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:4140";
/// Where the admin listener binds when the config does not say (linkerd's admin port).
const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:4191";

/// The whole configuration of one waypost process.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Outbound listener: apps address services by Host header or absolute-form URI here.
    pub listen: Addr,
    /// Path-prefix routes of the outbound listener, matched before the Host.
    pub routes: Vec<RouteConfig>,
    /// TLS on the outbound listener (plaintext when absent).
    pub listen_tls: Option<ListenerTlsConfig>,
    /// Admin listener (metrics, health, debug).
    pub admin: AdminConfig,
    /// Tokio runtime sizing.
    pub runtime: RuntimeConfig,
    /// Logging.
    pub log: LogConfig,
    /// App connections on the forwarding listeners: timeouts and head limits.
    pub client: ClientConfig,
    /// Defaults for talking to upstream instances; each service may override them.
    pub upstream: UpstreamConfig,
    /// Discovery cache defaults; each service may override the intervals.
    pub discovery: DiscoveryConfig,
    /// Registries waypost reads from (and, for the file registry, writes to).
    pub registry: RegistryConfig,
    /// The DNS client shared by every `dns` resolver.
    pub dns: DnsConfig,
    /// Shutdown behaviour.
    pub shutdown: ShutdownConfig,
    /// When failed requests are sent again (each service may replace it).
    pub retry: RetryConfig,
    /// Passive ejection of failing instances (each service may replace it).
    pub outlier: OutlierConfig,
    /// How instances are picked (each service may replace it).
    pub balancer: BalancerKind,
    /// How long an instance new to a table takes to reach its full weight (default: off).
    pub slow_start: Option<Dur>,
    /// Connection and concurrency limits.
    pub limits: LimitsConfig,
    /// Instances of the local app to announce in a registry, each behind a health gate.
    pub register: Vec<RegisterEntry>,
    /// Declared outbound services, by name. Names are matched case-insensitively against the
    /// Host header / absolute-form authority (without port).
    pub services: BTreeMap<ServiceName, ServiceConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: Addr::parse(DEFAULT_LISTEN).expect("constant address parses"),
            routes: Vec::new(),
            listen_tls: None,
            admin: AdminConfig::default(),
            runtime: RuntimeConfig::default(),
            log: LogConfig::default(),
            client: ClientConfig::default(),
            upstream: UpstreamConfig::default(),
            discovery: DiscoveryConfig::default(),
            registry: RegistryConfig::default(),
            dns: DnsConfig::default(),
            shutdown: ShutdownConfig::default(),
            retry: RetryConfig::default(),
            outlier: OutlierConfig::default(),
            balancer: BalancerKind::default(),
            slow_start: None,
            limits: LimitsConfig::default(),
            register: Vec::new(),
            services: BTreeMap::new(),
        }
    }
}

/// `admin:` — the admin listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Address of the admin listener.
    pub listen: Addr,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: Addr::parse(DEFAULT_ADMIN_LISTEN).expect("constant address parses"),
        }
    }
}

/// `runtime:` — how many worker threads the proxy uses.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuntimeConfig {
    /// Worker threads; 1 (the default) runs a single-threaded runtime, which is the cheapest
    /// per request for a sidecar; 0 means one per CPU.
    pub workers: usize,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self { workers: 1 }
    }
}

/// `log:` — logging.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// A `tracing` filter such as `info` or `waypost=debug`; `RUST_LOG` overrides it.
    pub level: String,
    /// `text` or `json`.
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: LogFormat::default(),
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// `upstream:` (global) and `services.<name>.upstream:` (override): how to talk to instances.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamOverrides {
    /// TCP connect timeout.
    pub connect_timeout: Option<Dur>,
    /// Time allowed from sending the request to receiving response headers.
    pub timeout: Option<Dur>,
    /// The total time a request may take, retries included.
    pub deadline: Option<Dur>,
}

/// Global upstream settings (also the defaults for every service).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UpstreamConfig {
    /// TCP connect timeout (default 1s).
    pub connect_timeout: Dur,
    /// Time from request sent to response headers received (default 15s), per attempt.
    pub timeout: Dur,
    /// The total time from a request's head to its response head, retries included (default:
    /// none; each attempt still has `timeout`).
    pub deadline: Option<Dur>,
    /// How long an idle pooled upstream connection is kept (default 90s).
    pub idle_timeout: Dur,
    /// Idle connections kept per instance (default 256).
    pub max_idle_per_instance: usize,
    /// Largest read buffer per HTTP/1 connection, downstream and upstream (default 32 KiB,
    /// at least 8 KiB). Bodies stream through in chunks of at most this size, so it bounds
    /// memory per connection; larger values save syscalls on large bodies.
    pub buffer_size: usize,
}

/// The smallest `upstream.buffer_size` hyper accepts.
const MIN_BUFFER_SIZE: usize = 8 * 1024;

impl Default for UpstreamConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Dur::from_secs(1),
            timeout: Dur::from_secs(15),
            deadline: None,
            idle_timeout: Dur::from_secs(90),
            max_idle_per_instance: 256,
            // 32 KiB: two such buffers per proxied exchange in flight keep 64 connections
            // streaming 64 KiB bodies within a few MiB (hyper's own default lets each grow to
            // ~400 KiB).
            buffer_size: 32 * 1024,
        }
    }
}

/// `registry:` — registries shared by resolvers and registrars.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    /// The embedded file registry.
    #[serde(default)]
    pub file: FileRegistryConfig,
    /// The etcd cluster, shared by etcd resolvers and registrars.
    #[serde(default)]
    pub etcd: EtcdRegistryConfig,
    /// The local Consul agent, shared by Consul resolvers and registrars.
    #[serde(default)]
    pub consul: ConsulRegistryConfig,
    /// The ZooKeeper ensemble, shared by ZooKeeper resolvers and registrars (one session).
    #[serde(default)]
    pub zookeeper: ZookeeperRegistryConfig,
}

/// `registry.file:` — the embedded, serverless registry on local disk.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FileRegistryConfig {
    /// Directory holding one sub-directory per service, one file per instance.
    pub dir: PathBuf,
    /// Time-to-live of the entries `register:` writes here (default 10s, renewed at a third of
    /// it): how long readers keep seeing an instance whose waypost died without deregistering.
    pub ttl: Dur,
}

impl Default for FileRegistryConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("/tmp/waypost/registry"),
            ttl: Dur::from_secs(10),
        }
    }
}

/// `shutdown:` — draining.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShutdownConfig {
    /// How long in-flight requests may take to finish after SIGTERM (default 10s).
    pub grace: Dur,
    /// After the registrations are removed, how long peers may keep routing here before the
    /// listeners stop (default 5s); cut short once waypost's own resolvers no longer see them.
    pub deregister_wait: Dur,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self {
            grace: Dur::from_secs(10),
            deregister_wait: Dur::from_secs(5),
        }
    }
}

/// `services.<name>:` — one outbound service.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// Where its instances come from.
    #[serde(with = "serde_yaml::with::singleton_map")]
    pub resolver: ResolverConfig,
    /// Optional dedicated local listener: every request arriving there goes to this service
    /// (or, under one of `routes`' prefixes, to that route's service).
    pub listen: Option<Addr>,
    /// Path-prefix routes of this service's own listener (needs `listen`).
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    /// TLS on this service's own listener (needs `listen`), e.g. an inbound listener peers
    /// reach.
    pub listen_tls: Option<ListenerTlsConfig>,
    /// Overrides of the global `upstream:` settings.
    #[serde(default)]
    pub upstream: UpstreamOverrides,
    /// Override of `discovery.refresh_interval`.
    pub refresh_interval: Option<Dur>,
    /// Replaces the global `retry:`.
    pub retry: Option<RetryConfig>,
    /// Replaces the global `outlier:`.
    pub outlier: Option<OutlierConfig>,
    /// Replaces the global `balancer:`.
    pub balancer: Option<BalancerKind>,
    /// Replaces the global `slow_start:`.
    pub slow_start: Option<Dur>,
    /// This service's limits.
    #[serde(default)]
    pub limits: ServiceLimits,
    /// TLS towards the instances (plaintext when absent).
    pub tls: Option<UpstreamTlsConfig>,
    /// What the instances speak: `http1`, `h2c` or `auto` (the default: ALPN over TLS,
    /// HTTP/1.1 over plaintext).
    #[serde(default)]
    pub protocol: Protocol,
}

/// `services.<name>.resolver:` — exactly one resolver, named by its key.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum ResolverConfig {
    /// Instances listed in the config.
    Static(StaticResolverConfig),
    /// Instances registered in the embedded file registry (`registry.file.dir`).
    File(FileResolverConfig),
    /// Instances from DNS: A/AAAA records plus a port, or SRV records.
    Dns(DnsResolverConfig),
    /// Instances registered in etcd (`registry.etcd`), in the Hertz, Kitex or gRPC layout.
    Etcd(EtcdResolverConfig),
    /// Instances in Consul's health endpoint, through the local agent (`registry.consul`).
    Consul(ConsulResolverConfig),
    /// Instances registered in ZooKeeper (`registry.zookeeper`), as Hertz and Kitex lay them out.
    Zookeeper(ZookeeperResolverConfig),
}

/// `resolver: {dns: …}` — either `port` (A/AAAA lookup of `name`) or `srv` (SRV lookup).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsResolverConfig {
    /// Host name for the A/AAAA lookup; defaults to the service's own name (or, in an
    /// on-demand rule, the requested host).
    pub name: Option<String>,
    /// Port of every instance found by the A/AAAA lookup.
    pub port: Option<u16>,
    /// SRV name (`_http._tcp.echo.default.svc.cluster.local`): instances, ports and weights
    /// come from the lowest-priority SRV records.
    pub srv: Option<String>,
    /// Weight given to each A/AAAA instance (default 1).
    #[serde(default = "default_weight")]
    pub weight: u32,
}

/// `resolver: {static: …}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticResolverConfig {
    /// The instances.
    pub instances: Vec<InstanceConfig>,
}

/// One statically configured instance.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceConfig {
    /// `IP:port`.
    pub address: Addr,
    /// Relative weight (default 1); 0 drains the instance.
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Free-form labels, shown on `/debug/services`.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
}

/// Weight of an instance that does not state one.
pub fn default_weight() -> u32 {
    1
}

/// `resolver: {file: …}`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileResolverConfig {
    /// Service name in the registry; defaults to the service's own name.
    pub name: Option<ServiceName>,
}

/// A configuration error: where it is and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file (or `<inline>` for text not read from disk).
    pub file: String,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// 1-based column, when known.
    pub column: Option<usize>,
    /// Dotted key path such as `services.echo.listen`, when known.
    pub key: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(col) = self.column {
                write!(f, ":{col}")?;
            }
        }
        write!(f, ": ")?;
        if let Some(key) = &self.key {
            write!(f, "{key}: ")?;
        }
        write!(f, "{}", self.message)
    }
}

impl std::error::Error for ConfigError {}

/// Reads, expands, parses and validates the config file at `path`.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: file.clone(),
        line: None,
        column: None,
        key: None,
        message: format!("cannot read: {e}"),
    })?;
    load_str(&file, &text, &|name| std::env::var(name).ok())
}

/// Expands, parses and validates config `text`; `file` names it in errors and `lookup` reads
/// environment variables (injectable for tests).
pub fn load_str(
    file: &str,
    text: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    let expanded = env::expand(text, lookup).map_err(|e| ConfigError {
        file: file.to_string(),
        line: Some(e.line),
        column: Some(e.column),
        key: None,
        message: e.message,
    })?;
    let config: Config = serde_yaml::from_str(&expanded).map_err(|e| yaml_error(file, &e))?;
    config.validate().map_err(|(key, message)| {
        let (line, column) =
            locate::locate(&expanded, &key).map_or((None, None), |(l, c)| (Some(l), Some(c)));
        ConfigError {
            file: file.to_string(),
            line,
            column,
            key: Some(key),
            message,
        }
    })?;
    Ok(config)
}

fn yaml_error(file: &str, e: &serde_yaml::Error) -> ConfigError {
    let location = e.location();
    let mut message = e.to_string();
    if let Some(loc) = &location {
        // serde_yaml appends the position we already print in front; drop the repeat.
        let suffix = format!(" at line {} column {}", loc.line(), loc.column());
        if let Some(stripped) = message.strip_suffix(&suffix) {
            message = stripped.to_string();
        }
    }
    ConfigError {
        file: file.to_string(),
        line: location.as_ref().map(|l| l.line()),
        column: location.as_ref().map(|l| l.column()),
        key: None,
        message,
    }
}

#[cfg(test)]
mod tests;
