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

use super::{Addr, Config, Dur, ServiceName};

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
    /// Per-entry options of the etcd registrar (layout, prefix). Placeholder: the etcd backend
    /// replaces this untyped mapping with its typed block from `config/etcd.rs`.
    pub etcd: Option<serde_yaml::Mapping>,
    /// The health gate: required, `none` to waive it. (`Option` so that a missing key gets the
    /// explanatory error of [`validate`] rather than serde's bare "missing field".)
    pub check: Option<CheckConfig>,
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
    /// etcd (`registry.etcd`). Parsed already; [`validate`] refuses it until the backend lands.
    Etcd,
    /// ZooKeeper (`registry.zookeeper`): an ephemeral node per entry, as Hertz and Kitex write.
    Zookeeper,
}

impl RegistryKind {
    /// The name used in config, logs and metrics (the registrar's `name()`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::File => "file",
            Self::Etcd => "etcd",
            Self::Zookeeper => "zookeeper",
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
        // The etcd backend replaces these two rules when it lands (its registrar and block).
        if entry.registry == RegistryKind::Etcd {
            return Err((
                format!("{base}.registry"),
                "the etcd registry is not available in this build yet: use `file`".into(),
            ));
        }
        if entry.etcd.is_some() {
            return Err((
                format!("{base}.etcd"),
                "etcd options apply only to `registry: etcd`".into(),
            ));
        }
        if entry.registry == RegistryKind::Zookeeper {
            config
                .registry
                .zookeeper
                .check_service(entry.service.as_str(), &format!("{base}.service"))?;
        }
        validate_check(entry.check.as_ref(), &base)?;
        let same = config.register[..i].iter().position(|e| {
            e.registry == entry.registry && e.service == entry.service && e.address == entry.address
        });
        if let Some(j) = same {
            return Err((
                format!("{base}.address"),
                format!(
                    "{} is already registered as {} in the {} registry by register.{j}",
                    addr,
                    entry.service,
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
mod tests {
    use super::super::tests::{parse, rejects};
    use super::*;

    const ENTRY: &str =
        "register:\n  - service: shop\n    address: ${POD_IP}:8080\n    registry: file\n";

    #[test]
    fn parses_entries_with_defaults() {
        let c = parse(&format!(
            "{ENTRY}    tags: {{zone: a}}\n    check:\n      http: http://127.0.0.1:8080/healthz?full=1\n  - service: shop-grpc\n    address: 10.0.0.7:9090\n    weight: 3\n    registry: file\n    check: none\n  - service: shop-tcp\n    address: \"[fd00::7]:9091\"\n    registry: file\n    check: {{tcp: 127.0.0.1:9091, interval: 500ms, timeout: 100ms, rise: 1, fall: 1}}\n"
        ))
        .unwrap();
        assert_eq!(c.register.len(), 3);
        let shop = &c.register[0];
        assert_eq!(shop.address.to_string(), "10.0.0.7:8080");
        assert_eq!(shop.weight, 10, "the CloudWeGo default weight");
        assert_eq!(shop.tags["zone"], "a");
        let Some(CheckConfig::Probe(p)) = &shop.check else {
            panic!("a probe: {:?}", shop.check)
        };
        let url = p.http.as_ref().unwrap();
        assert_eq!(url.addr.to_string(), "127.0.0.1:8080");
        assert_eq!(
            (url.host.as_str(), url.path.as_str()),
            ("127.0.0.1:8080", "/healthz?full=1")
        );
        assert_eq!(
            (p.interval, p.timeout, p.rise, p.fall),
            (Dur::from_secs(2), Dur::from_secs(1), 2, 3)
        );
        assert_eq!(c.register[1].check, Some(CheckConfig::None));
        assert_eq!(c.register[1].weight, 3);
        let Some(CheckConfig::Probe(t)) = &c.register[2].check else {
            panic!("tcp")
        };
        assert_eq!(t.tcp.unwrap().to_string(), "127.0.0.1:9091");
        assert_eq!((t.rise, t.fall), (1, 1));
        assert_eq!(c.shutdown.deregister_wait, Dur::from_secs(5));
        assert_eq!(c.registry.file.ttl, Dur::from_secs(10));
    }

    #[test]
    fn health_check_urls() {
        let u = HttpUrl::parse("http://[::1]/").unwrap();
        assert_eq!(
            (u.addr.to_string(), u.host.as_str()),
            ("[::1]:80".into(), "[::1]")
        );
        assert_eq!(HttpUrl::parse("http://127.0.0.1:81").unwrap().path, "/");
        for bad in [
            "https://127.0.0.1/",
            "http://localhost:8080/",
            "127.0.0.1:8080",
            "http://127.0.0.1:0/",
            "http://u:p@127.0.0.1/",
            "",
        ] {
            assert!(HttpUrl::parse(bad).is_err(), "{bad:?} must be rejected");
        }
    }

    #[test]
    fn rejects_addresses_peers_cannot_reach() {
        let entry = |addr: &str| {
            format!("register:\n  - service: shop\n    address: {addr}\n    registry: file\n    check: none\n")
        };
        rejects(
            &entry("0.0.0.0:8080"),
            3,
            "register.0.address: 0.0.0.0 is not an address peers can connect to",
        );
        rejects(
            &entry("\"[::]:8080\""),
            3,
            "register.0.address: :: is not an address",
        );
        rejects(&entry("10.0.0.7:0"), 3, "register.0.address: port 0");
        rejects(&entry("shop.local:80"), 3, "invalid address");
    }

    #[test]
    fn rejects_bad_entries() {
        rejects(
            &format!("{ENTRY}    check: none\n    weight: 0\n"),
            6,
            "register.0.weight: must be at least 1",
        );
        rejects(
            &format!("{ENTRY}    check: none\n    tags: {{\"\": x}}\n"),
            6,
            "register.0.tags: tag names must not be empty",
        );
        rejects("register:\n  - service: Shop\n    address: 10.0.0.7:1\n    registry: file\n    check: none\n", 2, "invalid service name");
        rejects(
            &format!("{ENTRY}    check: none\n    port: 1\n"),
            6,
            "unknown field `port`",
        );
        rejects("register:\n  - service: shop\n    address: 10.0.0.7:1\n    registry: consul\n    check: none\n", 4, "unknown variant `consul`");
        rejects(
            "register:\n  - service: shop\n    address: 10.0.0.7:1\n    check: none\n",
            2,
            "missing field `registry`",
        );
        rejects("register:\n  - service: shop\n    address: 10.0.0.7:1\n    registry: etcd\n    check: none\n", 4, "register.0.registry: the etcd registry is not available");
        rejects(
            &format!("{ENTRY}    check: none\n    etcd: {{layout: kitex}}\n"),
            6,
            "register.0.etcd: etcd options apply only to `registry: etcd`",
        );
        rejects(&format!("{ENTRY}    check: none\n  - service: shop\n    address: 10.0.0.7:8080\n    registry: file\n    check: none\n"), 7, "register.1.address: 10.0.0.7:8080 is already registered as shop in the file registry by register.0");
        rejects(
            "registry:\n  file:\n    ttl: 500ms\n",
            3,
            "registry.file.ttl: must be at least 1s",
        );
    }

    #[test]
    fn rejects_missing_or_bad_checks() {
        rejects(ENTRY, 2, "register.0: `check` is required");
        rejects(
            &format!("{ENTRY}    check: nope\n"),
            5,
            "\"nope\" is not a check",
        );
        rejects(
            &format!("{ENTRY}    check: {{}}\n"),
            5,
            "register.0.check: needs `http: <URL>` or `tcp: <IP:port>`",
        );
        rejects(
            &format!("{ENTRY}    check:\n      interval: 1s\n"),
            5,
            "needs `http: <URL>`",
        );
        rejects(
            &format!("{ENTRY}    check:\n      http: http://127.0.0.1/\n      tcp: 127.0.0.1:1\n"),
            7,
            "register.0.check.tcp: give `http` or `tcp`, not both",
        );
        rejects(
            &format!("{ENTRY}    check:\n      http: http://db.local/\n"),
            6,
            "the host must be an IP address",
        );
        rejects(
            &format!("{ENTRY}    check:\n      tcp: 127.0.0.1:0\n"),
            6,
            "register.0.check.tcp: port 0",
        );
        rejects(
            &format!("{ENTRY}    check:\n      tcp: 127.0.0.1:1\n      intervall: 1s\n"),
            7,
            "unknown field `intervall`",
        );
        rejects(
            &format!("{ENTRY}    check:\n      tcp: 127.0.0.1:1\n      interval: 0s\n"),
            7,
            "register.0.check.interval: must be greater than 0",
        );
        rejects(&format!("{ENTRY}    check:\n      tcp: 127.0.0.1:1\n      timeout: 0s\n      interval: 1s\n"), 7, "register.0.check.timeout: must be greater than 0");
        rejects(&format!("{ENTRY}    check:\n      tcp: 127.0.0.1:1\n      interval: 1s\n      timeout: 1s\n"), 8, "register.0.check.timeout: must be less than the interval");
        rejects(
            &format!("{ENTRY}    check:\n      tcp: 127.0.0.1:1\n      rise: 0\n"),
            7,
            "register.0.check.rise: must be at least 1",
        );
        rejects(
            &format!("{ENTRY}    check:\n      tcp: 127.0.0.1:1\n      fall: 0\n"),
            7,
            "register.0.check.fall: must be at least 1",
        );
    }
}
