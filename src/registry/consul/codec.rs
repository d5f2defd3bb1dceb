//! The Consul wire format: the registration body a Hertz or Kitex server sends
//! (`api.AgentServiceRegistration` as Go's `encoding/json` writes it), service and check IDs,
//! tags in their `key:value` form, Go duration strings, and the entries of
//! `/v1/health/service/<name>` turned into [`Instance`]s. Pure functions, tested against golden
//! bytes and the Go frameworks' rules (`REGISTRIES.md` §1.3 and §3).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::discover::Instance;
use crate::register::Registration;

/// The service ID Hertz and Kitex register: `<service>:<host>:<port>`, the host without IPv6
/// brackets (`fmt.Sprintf("%s:%s:%d", …)`), so both frameworks and waypost name one instance
/// alike.
pub fn service_id(reg: &Registration) -> String {
    format!(
        "{}:{}:{}",
        reg.service,
        reg.address.ip(),
        reg.address.port()
    )
}

/// The ID of a service's check: Consul's own default for a service's only check
/// (`service:<service ID>`), given explicitly so a TTL pass can name it.
pub fn check_id(service_id: &str) -> String {
    format!("service:{service_id}")
}

/// Tags as Hertz writes them: `key:value`, a tag whose value is empty as the bare `key`
/// (Kitex writes `key:`; both read back the same through [`parse_tags`]). In key order.
pub fn tags(tags: &BTreeMap<String, String>) -> Vec<String> {
    tags.iter()
        .map(|(k, v)| {
            if v.is_empty() {
                k.clone()
            } else {
                format!("{k}:{v}")
            }
        })
        .collect()
}

/// Tags read back: `key:value` splits at the first `:`, a bare `key` (Hertz) or `key:` (Kitex)
/// is the key with an empty value. Empty tags are skipped; a repeated key keeps its last value.
pub fn parse_tags(tags: &[String]) -> BTreeMap<String, String> {
    tags.iter()
        .filter(|t| !t.is_empty())
        .map(|t| match t.split_once(':') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (t.clone(), String::new()),
        })
        .collect()
}

/// A duration as Consul parses it (Go's `time.ParseDuration`), written as short as Hertz and
/// Kitex write theirs: `5s`, `1m`, `1m30s`, `2h`, `1500ms`.
pub fn go_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "0s".into();
    }
    if ms % 1000 != 0 {
        return format!("{ms}ms");
    }
    let secs = d.as_secs();
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if s > 0 {
        out.push_str(&format!("{s}s"));
    }
    out
}

/// The health check a registration carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckSpec {
    /// A TTL check with this TTL, passed by waypost.
    Ttl(Duration),
    /// An HTTP check Consul runs against `url`.
    Http {
        /// The URL Consul GETs.
        url: String,
        /// Time between checks.
        interval: Duration,
        /// Time one check may take.
        timeout: Duration,
    },
    /// A TCP check Consul runs against `addr` (`host:port`, IPv6 in brackets).
    Tcp {
        /// Where Consul connects.
        addr: String,
        /// Time between checks.
        interval: Duration,
        /// Time one check may take.
        timeout: Duration,
    },
}

/// `api.AgentWeights`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Weights {
    /// Weight while every check passes.
    pub passing: i64,
    /// Weight while a check warns.
    #[serde(default)]
    pub warning: i64,
}

/// `api.AgentServiceRegistration`, in Go's field order, with its `omitempty` rules (`Check` and
/// `Checks` have none: `Checks` is sent as `null`).
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Body<'a> {
    #[serde(rename = "ID")]
    id: &'a str,
    name: &'a str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tags: Vec<String>,
    port: u16,
    address: String,
    weights: Weights,
    check: CheckBody<'a>,
    checks: Option<[(); 0]>,
}

/// `api.AgentServiceCheck`, in Go's field order, every field `omitempty`.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct CheckBody<'a> {
    #[serde(rename = "CheckID", skip_serializing_if = "Option::is_none")]
    check_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    interval: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    timeout: Option<String>,
    #[serde(rename = "TTL", skip_serializing_if = "Option::is_none")]
    ttl: Option<String>,
    #[serde(rename = "HTTP", skip_serializing_if = "Option::is_none")]
    http: Option<&'a str>,
    #[serde(rename = "TCP", skip_serializing_if = "Option::is_none")]
    tcp: Option<&'a str>,
    deregister_critical_service_after: String,
}

/// The body of `PUT /v1/agent/service/register` for `reg`, byte for byte as Go's
/// `encoding/json` writes the `AgentServiceRegistration` a Hertz or Kitex server builds: ID
/// `<service>:<host>:<port>`, the weight as both `Passing` and `Warning`, tags as `key:value`,
/// no `Meta`, and `check` (with the TTL check's explicit `CheckID` = `check_id`).
pub fn registration_body(
    reg: &Registration,
    check: &CheckSpec,
    check_id: &str,
    deregister_critical_after: Duration,
) -> Vec<u8> {
    let id = service_id(reg);
    let weight = i64::from(reg.weight);
    let mut c = CheckBody {
        check_id: None,
        interval: None,
        timeout: None,
        ttl: None,
        http: None,
        tcp: None,
        deregister_critical_service_after: go_duration(deregister_critical_after),
    };
    match check {
        CheckSpec::Ttl(ttl) => {
            c.check_id = Some(check_id);
            c.ttl = Some(go_duration(*ttl));
        }
        CheckSpec::Http {
            url,
            interval,
            timeout,
        } => {
            c.http = Some(url);
            c.interval = Some(go_duration(*interval));
            c.timeout = Some(go_duration(*timeout));
        }
        CheckSpec::Tcp {
            addr,
            interval,
            timeout,
        } => {
            c.tcp = Some(addr);
            c.interval = Some(go_duration(*interval));
            c.timeout = Some(go_duration(*timeout));
        }
    }
    let body = Body {
        id: &id,
        name: &reg.service,
        tags: tags(&reg.tags),
        port: reg.address.port(),
        address: reg.address.ip().to_string(),
        weights: Weights {
            passing: weight,
            warning: weight,
        },
        check: c,
        checks: None,
    };
    // Serialising these plain structs cannot fail.
    let json = serde_json::to_string(&body).unwrap_or_default();
    go_escape(&json).into_bytes()
}

/// Escapes what Go's `encoding/json` escapes and serde_json does not (`<`, `>`, `&`, U+2028,
/// U+2029). They can only occur inside JSON strings, so a plain replacement is exact.
fn go_escape(json: &str) -> String {
    if !json.contains(['<', '>', '&', '\u{2028}', '\u{2029}']) {
        return json.to_string();
    }
    json.replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026")
        .replace('\u{2028}', "\\u2028")
        .replace('\u{2029}', "\\u2029")
}

/// One entry of `/v1/health/service/<name>` (`api.ServiceEntry`): only what waypost reads, every
/// field tolerant of absence and `null`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct HealthEntry {
    /// The node the instance runs on.
    #[serde(default)]
    pub node: Option<Node>,
    /// The instance.
    pub service: Service,
    /// Its checks and its node's (`serfHealth`).
    #[serde(default)]
    pub checks: Option<Vec<HealthCheck>>,
}

/// `api.Node`, the part waypost reads.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Node {
    /// The node's address: the instance's when its own is empty.
    #[serde(default)]
    pub address: String,
}

/// `api.AgentService`, the part waypost reads.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Service {
    /// The instance's ID.
    #[serde(rename = "ID", default)]
    pub id: String,
    /// The instance's address; empty means the node's.
    #[serde(default)]
    pub address: String,
    /// Its port.
    #[serde(default)]
    pub port: i64,
    /// Its tags.
    #[serde(default)]
    pub tags: Option<Vec<String>>,
    /// Its weights; Consul's default is `{1, 1}`.
    #[serde(default)]
    pub weights: Option<Weights>,
}

/// `api.HealthCheck`, the part waypost reads.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct HealthCheck {
    /// `passing`, `warning` or `critical` (anything else counts as critical).
    #[serde(default)]
    pub status: String,
}

/// Decodes a health answer (a JSON array; `null` reads as empty, as old agents sent it).
pub fn decode_health(body: &[u8]) -> Result<Vec<HealthEntry>, serde_json::Error> {
    Ok(serde_json::from_slice::<Option<Vec<HealthEntry>>>(body)?.unwrap_or_default())
}

/// Why an entry yields no instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Skip {
    /// A check is critical (only when reading without `?passing`).
    Critical,
    /// Its address (its own, or its node's) is not an IP address: waypost connects to IPs only.
    Address(String),
    /// Its port is not 1..=65535.
    Port(i64),
}

/// The instance `entry` stands for: at `Service.Address`, or at the node's address when that
/// is empty (go-kit's choice; Hertz and Kitex skip such entries, though Consul's own docs say the
/// node's address applies); weighted by `Weights.Passing`, or by `Weights.Warning` while one of
/// its checks warns (Consul's DNS does the same); tags from their `key:value` form. An entry with
/// a critical check is skipped (it can only appear when reading without `?passing`).
pub fn instance(entry: &HealthEntry) -> Result<Instance, Skip> {
    let checks = entry.checks.as_deref().unwrap_or_default();
    let worst = checks
        .iter()
        .map(|c| match c.status.as_str() {
            "passing" => 0,
            "warning" => 1,
            _ => 2,
        })
        .max()
        .unwrap_or(0);
    if worst == 2 {
        return Err(Skip::Critical);
    }
    let svc = &entry.service;
    let host = if svc.address.is_empty() {
        entry.node.as_ref().map_or("", |n| n.address.as_str())
    } else {
        svc.address.as_str()
    };
    let ip: IpAddr = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .map_err(|_| Skip::Address(host.to_string()))?;
    let port = u16::try_from(svc.port)
        .ok()
        .filter(|p| *p > 0)
        .ok_or(Skip::Port(svc.port))?;
    let weights = svc.weights.unwrap_or(Weights {
        passing: 1,
        warning: 1,
    });
    let weight = if worst == 1 {
        weights.warning
    } else {
        // Consul refuses a passing weight below 1; read anything odd as its default.
        weights.passing.max(1)
    };
    let tags = parse_tags(svc.tags.as_deref().unwrap_or_default());
    Ok(Instance {
        address: SocketAddr::new(ip, port),
        weight: u32::try_from(weight.clamp(0, 65_535)).unwrap_or(0),
        tags: if tags.is_empty() {
            crate::discover::no_tags()
        } else {
            Arc::new(tags)
        },
    })
}

/// Percent-encodes `s` for a URL path segment or query value: everything but RFC 3986's
/// unreserved characters and `:` (which Consul's IDs and tags are full of, and which is legal
/// in both places).
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b':') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests;
