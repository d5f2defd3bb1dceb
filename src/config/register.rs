//! The registration part of the schema: `register:` — the instances of the local app that
//! waypost announces in a registry, each behind a health gate (`check:`) — and its rules.
//!
//! Everything a peer will connect to is checked here, once: a registered address is a concrete
//! IP and port (Hertz registered `:0` and `0.0.0.0` as they were, cloudwego/hertz#1062), a
//! weight is at least 1 (Kitex's balancer drops weight 0), and a health check is either given
//! or explicitly waived with `check: none`.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;

use super::{Addr, Config, Dur, EtcdOptions, ServiceName};

/// `register[]` — one instance of the local app to announce.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterEntry {
    /// The service name in the registry.
    pub service: ServiceName,
    /// What peers connect to: a concrete IP and port (`${POD_IP}:8080`).
    pub address: Addr,
    /// Relative weight peers give this instance (default 10, the CloudWeGo default); at least 1.
    #[serde(default = "default_register_weight")]
    pub weight: u32,
    /// Labels written with the entry.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// The registry to write to.
    pub registry: RegistryKind,
    /// Where a `registry: etcd` entry goes in etcd (layout, prefix); defaults from
    /// `registry.etcd`. Only for etcd entries.
    pub etcd: Option<EtcdOptions>,
    /// The health gate: required, `none` to waive it. (`Option` so that a missing key gets the
    /// explanatory error of [`validate`] rather than serde's bare "missing field".)
    pub check: Option<CheckConfig>,
}

impl RegisterEntry {
    /// Where the entry lives in its registry: the file registry's `<service>/<address>`, the
    /// etcd key (its layout and prefix defaulted from `registry.etcd`), or the ZooKeeper node.
    fn place(&self, config: &Config) -> String {
        match self.registry {
            RegistryKind::File => format!("{}/{}", self.service, self.address),
            RegistryKind::Etcd => {
                let (layout, prefix) = config
                    .registry
                    .etcd
                    .entry_layout_and_prefix(self.etcd.as_ref());
                format!(
                    "{}{}",
                    layout.service_prefix(&prefix, self.service.as_str()),
                    self.address
                )
            }
            RegistryKind::Zookeeper => format!(
                "{}/{}/{}",
                config.registry.zookeeper.root.trim_end_matches('/'),
                self.service,
                self.address
            ),
            // The agent keys services by ID, `<service>:<host>:<port>` (no IPv6 brackets) as
            // Hertz and Kitex form it.
            RegistryKind::Consul => format!(
                "{}:{}:{}",
                self.service,
                self.address.0.ip(),
                self.address.0.port()
            ),
        }
    }
}

/// Weight of a registration that does not state one: 10, what Hertz and Kitex default to, so
/// waypost-registered instances weigh the same as their peers registered by the Go frameworks.
pub fn default_register_weight() -> u32 {
    10
}

/// `register[].registry` — which registry an entry is written to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RegistryKind {
    /// The embedded file registry (`registry.file`).
    File,
    /// etcd (`registry.etcd`), in the entry's layout under its prefix (`register[].etcd`).
    Etcd,
    /// ZooKeeper (`registry.zookeeper`): an ephemeral node per entry, as Hertz and Kitex write.
    Zookeeper,
    /// The local Consul agent (`registry.consul`).
    Consul,
}

impl RegistryKind {
    /// The name used in config, logs and metrics (the registrar's `name()`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::File => "file",
            Self::Etcd => "etcd",
            Self::Zookeeper => "zookeeper",
            Self::Consul => "consul",
        }
    }
}

/// `register[].check` — `none`, or a probe with its schedule and thresholds.
#[derive(Debug, Clone, PartialEq)]
pub enum CheckConfig {
    /// `check: none`: registered at once, never withdrawn for health.
    None,
    /// A probe of the app.
    Probe(ProbeConfig),
}

/// `register[].check: {http | tcp, interval, timeout, rise, fall}`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeConfig {
    /// GET this URL; a 2xx or 3xx answer is good.
    pub http: Option<HttpUrl>,
    /// Connect to this address; an accepted connection is good.
    pub tcp: Option<Addr>,
    /// Time between checks (default 2s).
    #[serde(default = "default_interval")]
    pub interval: Dur,
    /// Time one check may take (default 1s); less than `interval`.
    #[serde(default = "default_timeout")]
    pub timeout: Dur,
    /// Consecutive good checks before the entry is (re-)registered (default 2).
    #[serde(default = "default_rise")]
    pub rise: u32,
    /// Consecutive bad checks before the entry is withdrawn (default 3).
    #[serde(default = "default_fall")]
    pub fall: u32,
    /// With `registry: consul`: who tells Consul the instance is healthy (default `ttl`).
    #[serde(default)]
    pub consul: Option<super::ConsulCheckKind>,
}

fn default_interval() -> Dur {
    Dur::from_secs(2)
}
fn default_timeout() -> Dur {
    Dur::from_secs(1)
}
fn default_rise() -> u32 {
    2
}
fn default_fall() -> u32 {
    3
}

impl<'de> Deserialize<'de> for CheckConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = CheckConfig;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("`none` or a mapping with `http:` or `tcp:`")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<CheckConfig, E> {
                match v {
                    "none" => Ok(CheckConfig::None),
                    _ => Err(E::custom(format!(
                        "{v:?} is not a check: write `none`, or a mapping with `http:` or `tcp:`"
                    ))),
                }
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<CheckConfig, A::Error> {
                ProbeConfig::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(CheckConfig::Probe)
            }
        }
        d.deserialize_any(V)
    }
}

/// A health-check URL: `http://IP[:port][/path]`. An IP, not a name: the check must not depend
/// on DNS, and it probes the local app (usually `127.0.0.1`) or the pod's own IP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUrl {
    /// Where to connect.
    pub addr: SocketAddr,
    /// The `Host` header: the URL's authority as written.
    pub host: String,
    /// Path and query sent in the request line (`/` when the URL has none).
    pub path: String,
    /// The URL as written, for logs and `/debug/registrations`.
    pub text: String,
}

impl HttpUrl {
    /// Parses `http://IP[:port][/path]`; the error says what was expected.
    pub fn parse(text: &str) -> Result<Self, String> {
        let bad = |why: &str| format!("invalid health check URL {text:?}: {why}");
        let uri: http::Uri = text
            .trim()
            .parse()
            .map_err(|_| bad("expected e.g. \"http://127.0.0.1:8080/healthz\""))?;
        if uri.scheme_str() != Some("http") {
            return Err(bad("only http:// is supported"));
        }
        let authority = uri.authority().ok_or_else(|| bad("no host"))?;
        let host = authority.host();
        let ip: IpAddr = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
            .map_err(|_| bad("the host must be an IP address such as 127.0.0.1 (no DNS)"))?;
        if authority.as_str().contains('@') {
            return Err(bad("user information is not supported"));
        }
        let port = authority.port_u16().unwrap_or(80);
        if port == 0 {
            return Err(bad("port 0"));
        }
        let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
        Ok(Self {
            addr: SocketAddr::new(ip, port),
            host: authority.as_str().to_string(),
            path: if path.is_empty() { "/".into() } else { path },
            text: text.trim().to_string(),
        })
    }
}

impl fmt::Display for HttpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for HttpUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(super::types::ParseVisitor {
            parse: HttpUrl::parse,
            expecting: "a URL such as \"http://127.0.0.1:8080/healthz\"",
        })
    }
}

/// The smallest `registry.file.ttl`: renewals run at a third of it and must fit a slow disk.
const MIN_FILE_TTL: std::time::Duration = std::time::Duration::from_secs(1);

/// Checks `register:` (and the keys only registration uses: `registry.file.ttl`). On failure
/// returns the dotted key path of the offending value and the reason.
pub(super) fn validate(config: &Config) -> Result<(), (String, String)> {
    if config.registry.file.ttl.0 < MIN_FILE_TTL {
        return Err((
            "registry.file.ttl".into(),
            "must be at least 1s (entries are renewed at a third of it)".into(),
        ));
    }
    for (i, entry) in config.register.iter().enumerate() {
        let base = format!("register.{i}");
        let addr = entry.address.0;
        if addr.ip().is_unspecified() {
            return Err((format!("{base}.address"), format!("{} is not an address peers can connect to: register a concrete IP, such as ${{POD_IP}}:{}", addr.ip(), addr.port())));
        }
        if addr.port() == 0 {
            return Err((
                format!("{base}.address"),
                "port 0 is not a port peers can connect to: register the port the app listens on"
                    .into(),
            ));
        }
        if entry.weight == 0 {
            return Err((
                format!("{base}.weight"),
                "must be at least 1 (Kitex's balancer drops instances of weight 0)".into(),
            ));
        }
        if entry.tags.keys().any(|k| k.is_empty()) {
            return Err((format!("{base}.tags"), "tag names must not be empty".into()));
        }
        match (&entry.etcd, entry.registry) {
            (Some(options), RegistryKind::Etcd) => options.validate(&format!("{base}.etcd"))?,
            (Some(_), _) => {
                return Err((
                    format!("{base}.etcd"),
                    "etcd options apply only to `registry: etcd`".into(),
                ))
            }
            (None, _) => {}
        }
        if entry.registry == RegistryKind::Zookeeper {
            config
                .registry
                .zookeeper
                .check_service(entry.service.as_str(), &format!("{base}.service"))?;
        }
        validate_check(entry.check.as_ref(), &base)?;
        super::consul::validate_entry(entry, &base)?;
        // Two entries in one place of one registry would overwrite each other's entry and take
        // it for lost at every renewal.
        let place = entry.place(config);
        let same = config.register[..i]
            .iter()
            .position(|e| e.registry == entry.registry && e.place(config) == place);
        if let Some(j) = same {
            let what = match entry.registry {
                RegistryKind::Etcd => format!("the etcd key {place}"),
                RegistryKind::File => format!("{addr} as {}", entry.service),
                RegistryKind::Zookeeper => format!("the ZooKeeper node {place}"),
                RegistryKind::Consul => format!("the Consul service ID {place}"),
            };
            return Err((
                format!("{base}.address"),
                format!(
                    "{what} is already registered in the {} registry by register.{j}",
                    entry.registry.as_str()
                ),
            ));
        }
    }
    Ok(())
}

fn validate_check(check: Option<&CheckConfig>, base: &str) -> Result<(), (String, String)> {
    let probe = match check {
        None => {
            return Err((
                base.to_string(),
                "`check` is required: a health check (`http:` or `tcp:`), or `check: none` to register without one".into(),
            ))
        }
        Some(CheckConfig::None) => return Ok(()),
        Some(CheckConfig::Probe(p)) => p,
    };
    let key = |k: &str| format!("{base}.check.{k}");
    match (&probe.http, &probe.tcp) {
        (Some(_), Some(_)) => {
            return Err((key("tcp"), "give `http` or `tcp`, not both".into()));
        }
        (None, None) => {
            return Err((
                format!("{base}.check"),
                "needs `http: <URL>` or `tcp: <IP:port>` (or write `check: none`)".into(),
            ));
        }
        (None, Some(tcp)) if tcp.0.port() == 0 => {
            return Err((key("tcp"), "port 0 cannot be connected to".into()));
        }
        _ => {}
    }
    super::validate::positive(&key("interval"), Some(probe.interval))?;
    super::validate::positive(&key("timeout"), Some(probe.timeout))?;
    if probe.timeout >= probe.interval {
        return Err((
            key("timeout"),
            format!(
                "must be less than the interval ({}), so checks never overlap",
                probe.interval
            ),
        ));
    }
    for (k, v) in [("rise", probe.rise), ("fall", probe.fall)] {
        if v == 0 {
            return Err((key(k), "must be at least 1".into()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
