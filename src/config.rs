//! Stage 0 — configuration: the whole YAML schema as typed serde structs.
//!
//! A config file is read once ([`load`] / [`load_str`]): `${VAR}` references are expanded
//! ([`env`]), the text is parsed with `deny_unknown_fields` into the types below — durations,
//! addresses, weights and names are checked *while* parsing, so serde_yaml reports the exact line
//! and column — and then [`Config::validate`] checks the rules that span several keys, locating the
//! offending key in the text ([`locate`]). Runtime code receives only these typed values and
//! never parses a string again.

pub mod env;
pub mod locate;
mod types;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use types::{Addr, Dur, ServiceName};

/// Where the outbound listener binds when the config does not say (linkerd's outbound port).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:4140";
/// Where the admin listener binds when the config does not say (linkerd's admin port).
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:4191";

/// The whole configuration of one waypost process.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Outbound listener: apps address services by Host header or absolute-form URI here.
    #[serde(default = "default_listen")]
    pub listen: Addr,
    /// Admin listener (metrics, health, debug).
    #[serde(default)]
    pub admin: AdminConfig,
    /// Tokio runtime sizing.
    #[serde(default)]
    pub runtime: RuntimeConfig,
    /// Logging.
    #[serde(default)]
    pub log: LogConfig,
    /// Defaults for talking to upstream instances; each service may override them.
    #[serde(default)]
    pub upstream: UpstreamConfig,
    /// Discovery cache defaults; each service may override the intervals.
    #[serde(default)]
    pub discovery: DiscoveryConfig,
    /// Registries waypost reads from (and, for the file registry, writes to).
    #[serde(default)]
    pub registry: RegistryConfig,
    /// The DNS client shared by every `dns` resolver.
    #[serde(default)]
    pub dns: DnsConfig,
    /// Shutdown behaviour.
    #[serde(default)]
    pub shutdown: ShutdownConfig,
    /// Declared outbound services, by name. Names are matched case-insensitively against the
    /// Host header / absolute-form authority (without port).
    #[serde(default)]
    pub services: BTreeMap<ServiceName, ServiceConfig>,
}

fn default_listen() -> Addr {
    Addr::parse(DEFAULT_LISTEN).expect("constant address parses")
}

/// `admin:` — the admin listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Address of the admin listener.
    #[serde(default = "default_admin_listen")]
    pub listen: Addr,
}

fn default_admin_listen() -> Addr {
    Addr::parse(DEFAULT_ADMIN_LISTEN).expect("constant address parses")
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: default_admin_listen(),
        }
    }
}

/// `runtime:` — how many worker threads the proxy uses.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeConfig {
    /// Worker threads; 1 (the default) runs a single-threaded runtime, which is the cheapest
    /// per request for a sidecar; 0 means one per CPU.
    #[serde(default = "one")]
    pub workers: usize,
}

fn one() -> usize {
    1
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self { workers: one() }
    }
}

/// `log:` — logging.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// A `tracing` filter such as `info` or `waypost=debug`; `RUST_LOG` overrides it.
    #[serde(default = "default_log_level")]
    pub level: String,
    /// `text` or `json`.
    #[serde(default)]
    pub format: LogFormat,
}

fn default_log_level() -> String {
    "info".into()
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: default_log_level(),
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
}

/// Global upstream settings (also the defaults for every service).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// TCP connect timeout (default 1s).
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: Dur,
    /// Time from request sent to response headers received (default 15s).
    #[serde(default = "default_timeout")]
    pub timeout: Dur,
    /// How long an idle pooled upstream connection is kept (default 90s).
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: Dur,
    /// Idle connections kept per instance (default 256).
    #[serde(default = "default_max_idle")]
    pub max_idle_per_instance: usize,
}

fn default_connect_timeout() -> Dur {
    Dur::from_secs(1)
}
fn default_timeout() -> Dur {
    Dur::from_secs(15)
}
fn default_idle_timeout() -> Dur {
    Dur::from_secs(90)
}
fn default_max_idle() -> usize {
    256
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        Self {
            connect_timeout: default_connect_timeout(),
            timeout: default_timeout(),
            idle_timeout: default_idle_timeout(),
            max_idle_per_instance: default_max_idle(),
        }
    }
}

/// `discovery:` — cache behaviour shared by every target.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiscoveryConfig {
    /// How often each target is re-resolved (default 5s).
    #[serde(default = "default_refresh")]
    pub refresh_interval: Dur,
    /// Random spread applied to every refresh delay, as a share of it (default 0.2 = ±20 %).
    #[serde(default = "default_jitter")]
    pub jitter: f64,
    /// A target resolved on demand and unused for this long is dropped (default 60s).
    /// Declared services never expire.
    #[serde(default = "default_expire")]
    pub expire_interval: Dur,
    /// How long the last good table is served while refreshes fail (default: no limit —
    /// stale beats empty).
    #[serde(default)]
    pub max_stale: Option<Dur>,
    /// Time allowed for one resolve (default 5s).
    #[serde(default = "default_resolve_timeout")]
    pub resolve_timeout: Dur,
    /// Retry delays after failed resolves.
    #[serde(default)]
    pub backoff: BackoffConfig,
    /// Protection against answers that empty a table or remove most of it.
    #[serde(default)]
    pub guard: GuardConfig,
    /// Rules for names that are not declared under `services:` but may be resolved on first
    /// use. Any other name is refused: waypost is never an open proxy.
    #[serde(default)]
    pub on_demand: Vec<OnDemandRule>,
}

/// `discovery.on_demand[]` — names ending in `suffix` are resolved on first use by `resolver`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OnDemandRule {
    /// A DNS suffix such as `.svc.cluster.local` (must start with a dot).
    pub suffix: String,
    /// The resolver for matching names: `dns` (the name is the requested host; `port` is
    /// required) or `file` (the name is the registry service name).
    #[serde(with = "serde_yaml::with::singleton_map")]
    pub resolver: ResolverConfig,
    /// Refresh interval for targets created by this rule (default `discovery.refresh_interval`).
    pub refresh_interval: Option<Dur>,
}

/// `dns:` — the DNS client shared by every `dns` resolver.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsConfig {
    /// Name servers as `IP:port`; empty (the default) uses the system's `/etc/resolv.conf`.
    #[serde(default)]
    pub nameservers: Vec<Addr>,
    /// Time allowed for one query (default 2s).
    #[serde(default = "default_dns_timeout")]
    pub timeout: Dur,
    /// Queries tried per lookup before it fails (default 2).
    #[serde(default = "default_dns_attempts")]
    pub attempts: usize,
    /// Shortest refresh interval a record TTL may ask for (default 1s).
    #[serde(default = "default_min_ttl")]
    pub min_ttl: Dur,
    /// Longest refresh interval a record TTL may ask for (default 30s).
    #[serde(default = "default_max_ttl")]
    pub max_ttl: Dur,
}

fn default_dns_timeout() -> Dur {
    Dur::from_secs(2)
}
fn default_dns_attempts() -> usize {
    2
}
fn default_min_ttl() -> Dur {
    Dur::from_secs(1)
}
fn default_max_ttl() -> Dur {
    Dur::from_secs(30)
}

impl Default for DnsConfig {
    fn default() -> Self {
        Self {
            nameservers: Vec::new(),
            timeout: default_dns_timeout(),
            attempts: default_dns_attempts(),
            min_ttl: default_min_ttl(),
            max_ttl: default_max_ttl(),
        }
    }
}

fn default_refresh() -> Dur {
    Dur::from_secs(5)
}
fn default_jitter() -> f64 {
    0.2
}
fn default_expire() -> Dur {
    Dur::from_secs(60)
}
fn default_resolve_timeout() -> Dur {
    Dur::from_secs(5)
}

impl Default for DiscoveryConfig {
    fn default() -> Self {
        Self {
            refresh_interval: default_refresh(),
            jitter: default_jitter(),
            expire_interval: default_expire(),
            max_stale: None,
            resolve_timeout: default_resolve_timeout(),
            backoff: BackoffConfig::default(),
            guard: GuardConfig::default(),
            on_demand: Vec::new(),
        }
    }
}

/// `discovery.backoff:` — jittered exponential backoff after failed resolves.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackoffConfig {
    /// First retry delay (default 1s); doubles on each further failure.
    #[serde(default = "default_backoff_initial")]
    pub initial: Dur,
    /// Longest retry delay (default 30s).
    #[serde(default = "default_backoff_max")]
    pub max: Dur,
}

fn default_backoff_initial() -> Dur {
    Dur::from_secs(1)
}
fn default_backoff_max() -> Dur {
    Dur::from_secs(30)
}

impl Default for BackoffConfig {
    fn default() -> Self {
        Self {
            initial: default_backoff_initial(),
            max: default_backoff_max(),
        }
    }
}

/// `discovery.guard:` — an answer that empties a table, or removes more than `max_removal` of
/// its instances at once, is applied only after `confirm` consecutive answers agree.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuardConfig {
    /// Consecutive confirming answers needed (default 3; 1 disables the guard).
    #[serde(default = "default_confirm")]
    pub confirm: u32,
    /// Share of instances one answer may remove unconfirmed (default 0.5).
    #[serde(default = "default_max_removal")]
    pub max_removal: f64,
}

fn default_confirm() -> u32 {
    3
}
fn default_max_removal() -> f64 {
    0.5
}

impl Default for GuardConfig {
    fn default() -> Self {
        Self {
            confirm: default_confirm(),
            max_removal: default_max_removal(),
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
}

/// `registry.file:` — the embedded, serverless registry on local disk.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRegistryConfig {
    /// Directory holding one sub-directory per service, one file per instance.
    #[serde(default = "default_registry_dir")]
    pub dir: PathBuf,
}

fn default_registry_dir() -> PathBuf {
    PathBuf::from("/tmp/waypost/registry")
}

impl Default for FileRegistryConfig {
    fn default() -> Self {
        Self {
            dir: default_registry_dir(),
        }
    }
}

/// `shutdown:` — draining.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShutdownConfig {
    /// How long in-flight requests may take to finish after SIGTERM (default 10s).
    #[serde(default = "default_grace")]
    pub grace: Dur,
}

fn default_grace() -> Dur {
    Dur::from_secs(10)
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self {
            grace: default_grace(),
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
    /// Optional dedicated local listener: every request arriving there goes to this service.
    pub listen: Option<Addr>,
    /// Overrides of the global `upstream:` settings.
    #[serde(default)]
    pub upstream: UpstreamOverrides,
    /// Override of `discovery.refresh_interval`.
    pub refresh_interval: Option<Dur>,
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

/// The largest weight accepted; keeps the table's integer arithmetic far from overflow.
pub const MAX_WEIGHT: u32 = 1_000_000;

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
    let config: Config = if expanded.trim().is_empty() {
        // An empty file is an empty mapping: every default applies.
        serde_yaml::from_str("{}")
    } else {
        serde_yaml::from_str(&expanded)
    }
    .map_err(|e| yaml_error(file, &e))?;
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

impl Config {
    /// Checks the rules that span several keys. On failure returns the dotted key path of the
    /// offending value and the reason.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let mut listeners: Vec<(String, std::net::SocketAddr)> = vec![
            ("listen".into(), self.listen.0),
            ("admin.listen".into(), self.admin.listen.0),
        ];
        if !(0.0..=0.9).contains(&self.discovery.jitter) {
            return Err((
                "discovery.jitter".into(),
                "must be between 0 and 0.9".into(),
            ));
        }
        let d = &self.discovery;
        for (key, value) in [
            ("discovery.refresh_interval", d.refresh_interval),
            ("discovery.expire_interval", d.expire_interval),
            ("discovery.resolve_timeout", d.resolve_timeout),
            ("discovery.backoff.initial", d.backoff.initial),
        ] {
            if value.0.is_zero() {
                return Err((key.into(), "must be greater than 0".into()));
            }
        }
        if d.backoff.max < d.backoff.initial {
            return Err((
                "discovery.backoff.max".into(),
                "must be at least discovery.backoff.initial".into(),
            ));
        }
        if d.guard.confirm == 0 {
            return Err((
                "discovery.guard.confirm".into(),
                "must be at least 1".into(),
            ));
        }
        if !(0.0..=1.0).contains(&d.guard.max_removal) {
            return Err((
                "discovery.guard.max_removal".into(),
                "must be between 0 and 1".into(),
            ));
        }
        let dns = &self.dns;
        if dns.timeout.0.is_zero() {
            return Err(("dns.timeout".into(), "must be greater than 0".into()));
        }
        if dns.attempts == 0 {
            return Err(("dns.attempts".into(), "must be at least 1".into()));
        }
        if dns.max_ttl < dns.min_ttl {
            return Err(("dns.max_ttl".into(), "must be at least dns.min_ttl".into()));
        }
        for (i, rule) in d.on_demand.iter().enumerate() {
            let base = format!("discovery.on_demand.{i}");
            let suffix_ok = rule.suffix.len() > 1
                && rule.suffix.starts_with('.')
                && ServiceName::parse(&rule.suffix[1..]).is_ok();
            if !suffix_ok {
                return Err((format!("{base}.suffix"), format!("{:?} must be a DNS suffix starting with a dot, such as \".svc.cluster.local\"", rule.suffix)));
            }
            match &rule.resolver {
                ResolverConfig::Static(_) => {
                    return Err((
                        format!("{base}.resolver"),
                        "static lists cannot resolve names on demand: use dns or file".into(),
                    ))
                }
                ResolverConfig::File(f) if f.name.is_some() => {
                    return Err((
                        format!("{base}.resolver.file.name"),
                        "an on-demand rule resolves the requested name; remove `name`".into(),
                    ))
                }
                ResolverConfig::Dns(cfg) => {
                    if cfg.name.is_some() || cfg.srv.is_some() {
                        return Err((format!("{base}.resolver.dns"), "an on-demand rule resolves the requested name: give only `port` (and `weight`)".into()));
                    }
                    validate_dns(cfg, &format!("{base}.resolver.dns"))?;
                }
                ResolverConfig::File(_) => {}
            }
        }
        for (name, svc) in &self.services {
            let base = format!("services.{name}");
            if let ResolverConfig::Dns(cfg) = &svc.resolver {
                validate_dns(cfg, &format!("{base}.resolver.dns"))?;
            }
            if let Some(addr) = &svc.listen {
                listeners.push((format!("{base}.listen"), addr.0));
            }
            if let Some(r) = svc.refresh_interval {
                if r.0.is_zero() {
                    return Err((
                        format!("{base}.refresh_interval"),
                        "must be greater than 0".into(),
                    ));
                }
            }
            if let ResolverConfig::Static(s) = &svc.resolver {
                if s.instances.is_empty() {
                    return Err((
                        format!("{base}.resolver.static.instances"),
                        "needs at least one instance".into(),
                    ));
                }
                for (i, inst) in s.instances.iter().enumerate() {
                    if inst.weight > MAX_WEIGHT {
                        return Err((
                            format!("{base}.resolver.static.instances.{i}.weight"),
                            format!("must be at most {MAX_WEIGHT}"),
                        ));
                    }
                    if inst.address.0.port() == 0 {
                        return Err((
                            format!("{base}.resolver.static.instances.{i}.address"),
                            "port 0 is not a valid upstream port".into(),
                        ));
                    }
                }
            }
        }
        for (i, (key, addr)) in listeners.iter().enumerate() {
            if addr.port() == 0 {
                continue; // ephemeral: never conflicts
            }
            if let Some((other, _)) = listeners[..i].iter().find(|(_, a)| a == addr) {
                return Err((
                    key.clone(),
                    format!("address {addr} is already used by `{other}`"),
                ));
            }
        }
        Ok(())
    }

    /// The on-demand rule covering `name`, if any (the first that matches).
    pub fn on_demand_rule(&self, name: &str) -> Option<&OnDemandRule> {
        self.discovery
            .on_demand
            .iter()
            .find(|r| name.ends_with(&r.suffix))
    }

    /// The refresh interval for `svc`: its own, else the global one.
    pub fn refresh_interval(&self, svc: &ServiceConfig) -> std::time::Duration {
        svc.refresh_interval
            .unwrap_or(self.discovery.refresh_interval)
            .0
    }
}

fn validate_dns(cfg: &DnsResolverConfig, base: &str) -> Result<(), (String, String)> {
    match (&cfg.srv, cfg.port) {
        (Some(_), Some(_)) => Err((
            format!("{base}.port"),
            "SRV records carry their own ports: give `srv` or `port`, not both".into(),
        )),
        (Some(srv), None) => {
            if cfg.name.is_some() {
                return Err((
                    format!("{base}.name"),
                    "give `srv` or `name` + `port`, not both".into(),
                ));
            }
            if !srv.starts_with('_') || ServiceName::parse(&srv.replace('_', "x")).is_err() {
                return Err((format!("{base}.srv"), format!("{srv:?} is not an SRV name such as \"_http._tcp.echo.default.svc.cluster.local\"")));
            }
            Ok(())
        }
        (None, Some(0)) => Err((format!("{base}.port"), "must be between 1 and 65535".into())),
        (None, Some(_)) => {
            if let Some(name) = &cfg.name {
                ServiceName::parse(name.trim_end_matches('.'))
                    .map_err(|e| (format!("{base}.name"), e))?;
            }
            if cfg.weight > MAX_WEIGHT {
                return Err((
                    format!("{base}.weight"),
                    format!("must be at most {MAX_WEIGHT}"),
                ));
            }
            Ok(())
        }
        (None, None) => Err((
            base.to_string(),
            "needs `port` (A/AAAA lookup) or `srv` (SRV lookup)".into(),
        )),
    }
}

#[cfg(test)]
mod tests;
