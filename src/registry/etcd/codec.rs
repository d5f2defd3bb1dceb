//! The wire format: etcd keys and JSON values exactly as the Go registries write them, and the
//! tolerant reading of whatever they (or people with `etcdctl`) put there.
//!
//! | layout | key | value |
//! |---|---|---|
//! | `hertz`, `kitex` | `<prefix>/<svc>/<addr>` | `{"network":"tcp","address":"<addr>","weight":<w>,"tags":{…}\|null}` |
//! | `grpc` | `<target>/<addr>`, target = `<prefix>/<svc>` or `<svc>` | `{"Op":0,"Addr":"<addr>","Metadata":…}` |
//!
//! Writing matches the Go encoders byte for byte: field order, `"tags":null` for no tags (a Go
//! nil map), keys sorted as `encoding/json` sorts them, and Go's string escaping — Kitex and
//! grpc-go use `encoding/json`, which also escapes `<`, `>`, `&`, U+2028 and U+2029; Hertz uses
//! sonic's default configuration, which does not. Two choices of our own, both safer for the
//! readers: a weight below 1 is written as 1 (Kitex's balancer drops weight-0 instances), and an
//! IPv6 address always carries brackets (Kitex writes `::1:80`, which Go's own dialer rejects).
//! The gRPC value has no weight or tags; waypost writes them into `Metadata`
//! (`{"weight":w,"tags":{…}}`), which grpc-go's resolver ignores, and writes `null` there when
//! there is nothing to say (no tags, the default weight), exactly as a Go server does.
//!
//! Reading follows the Go resolvers: a value that does not parse is skipped (the caller counts
//! it), a weight ≤ 0 or missing reads as [`DEFAULT_WEIGHT`], every gRPC PUT is an instance
//! whatever its `Op` (as grpc-go's resolver treats it), tags are read into a fresh map per value
//! (hertz-contrib/registry#27 merged tags across instances), and Kitex's bracket-less IPv6 is
//! accepted. Addresses must be IP and port: a host name, port 0 or an unspecified IP (Hertz
//! writes `0.0.0.0` unchanged) is skipped, since routing there would reach this very host.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use serde::Deserialize;

use crate::config::EtcdLayout;
use crate::discover::{Instance, Tags};
use crate::register::Registration;

/// The weight the CloudWeGo registries give an instance that has none (or ≤ 0): Hertz's
/// `registry.DefaultWeight`, Kitex's `defaultWeight`.
pub const DEFAULT_WEIGHT: u32 = 10;

/// Why a value was skipped.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Not the JSON the layout expects.
    #[error("not a {layout} value: {source}")]
    Json {
        /// The layout expected.
        layout: &'static str,
        /// What serde_json said.
        #[source]
        source: serde_json::Error,
    },
    /// The address is not a routable `IP:port`.
    #[error("address {0:?} is not a routable IP:port")]
    Address(String),
    /// A network waypost cannot forward over (`unix`…).
    #[error("network {0:?} is not TCP")]
    Network(String),
}

/// Keys and values of one layout under one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Codec {
    layout: EtcdLayout,
    prefix: String,
}

impl Codec {
    /// A codec for `layout` under `prefix` (validated by the config: no trailing `/`).
    pub fn new(layout: EtcdLayout, prefix: impl Into<String>) -> Self {
        Self {
            layout,
            prefix: prefix.into(),
        }
    }

    /// The layout.
    pub fn layout(&self) -> EtcdLayout {
        self.layout
    }

    /// The prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The key prefix holding every instance of `service`, with its trailing `/`
    /// ([`EtcdLayout::service_prefix`]: `echo` never reads `echo2`).
    pub fn service_prefix(&self, service: &str) -> String {
        self.layout.service_prefix(&self.prefix, service)
    }

    /// The key of `address` of `service`.
    pub fn key(&self, service: &str, address: SocketAddr) -> String {
        // SocketAddr's Display brackets IPv6 (`[::1]:80`), as Go's net.JoinHostPort does.
        format!("{}{address}", self.service_prefix(service))
    }

    /// The value registering `reg`, byte for byte what the layout's Go writer produces.
    pub fn encode(&self, reg: &Registration) -> Vec<u8> {
        let weight = reg.weight.max(1);
        let addr = reg.address.to_string();
        let mut out = String::with_capacity(96);
        match self.layout {
            EtcdLayout::Hertz | EtcdLayout::Kitex => {
                let go_std = self.layout == EtcdLayout::Kitex;
                out.push_str(r#"{"network":"tcp","address":"#);
                json_string(&mut out, &addr, go_std);
                let _ = write!(out, r#","weight":{weight},"tags":"#);
                tags_json(&mut out, &reg.tags, go_std);
                out.push('}');
            }
            EtcdLayout::Grpc => {
                out.push_str(r#"{"Op":0,"Addr":"#);
                json_string(&mut out, &addr, true);
                out.push_str(r#","Metadata":"#);
                if reg.tags.is_empty() && weight == DEFAULT_WEIGHT {
                    out.push_str("null");
                } else {
                    // Keys in encoding/json's order for a map: sorted.
                    out.push('{');
                    if !reg.tags.is_empty() {
                        out.push_str(r#""tags":"#);
                        tags_json(&mut out, &reg.tags, true);
                        out.push(',');
                    }
                    let _ = write!(out, r#""weight":{weight}}}"#);
                }
                out.push('}');
            }
        }
        out.into_bytes()
    }

    /// Reads one value of this layout into an instance.
    pub fn decode(&self, value: &[u8]) -> Result<Instance, DecodeError> {
        let json = |source| DecodeError::Json {
            layout: self.layout.as_str(),
            source,
        };
        match self.layout {
            EtcdLayout::Hertz | EtcdLayout::Kitex => {
                let v: CloudwegoValue = serde_json::from_slice(value).map_err(json)?;
                if let Some(net) = v.network.filter(|n| !n.is_empty()) {
                    if !matches!(net.as_str(), "tcp" | "tcp4" | "tcp6") {
                        return Err(DecodeError::Network(net));
                    }
                }
                Ok(Instance {
                    address: parse_address(&v.address)?,
                    weight: read_weight(v.weight),
                    tags: v
                        .tags
                        .filter(|t| !t.is_empty())
                        .map_or_else(crate::discover::no_tags, Tags::new),
                })
            }
            EtcdLayout::Grpc => {
                let v: GrpcValue = serde_json::from_slice(value).map_err(json)?;
                let meta = v.metadata.unwrap_or_default();
                Ok(Instance {
                    address: parse_address(&v.addr)?,
                    weight: read_weight(meta.weight),
                    tags: meta
                        .tags
                        .filter(|t| !t.is_empty())
                        .map_or_else(crate::discover::no_tags, Tags::new),
                })
            }
        }
    }
}

/// The value Hertz and Kitex write (`instanceInfo`). Fields the Go struct would leave at their
/// zero value may be missing.
#[derive(Deserialize)]
struct CloudwegoValue {
    #[serde(default)]
    network: Option<String>,
    address: String,
    #[serde(default)]
    weight: Option<i64>,
    #[serde(default)]
    tags: Option<BTreeMap<String, String>>,
}

/// grpc-go's `internal.Update`. `Op` is read (so a malformed one fails as in Go) but not used.
#[derive(Deserialize)]
struct GrpcValue {
    #[serde(rename = "Op", default)]
    _op: u8,
    #[serde(rename = "Addr")]
    addr: String,
    #[serde(rename = "Metadata", default)]
    metadata: Option<GrpcMetadata>,
}

/// What waypost puts in `Metadata`; anything else there (it is free-form) reads as no weight and
/// no tags.
#[derive(Default)]
struct GrpcMetadata {
    weight: Option<i64>,
    tags: Option<BTreeMap<String, String>>,
}

impl<'de> Deserialize<'de> for GrpcMetadata {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = serde_json::Value::deserialize(d)?;
        let weight = v.get("weight").and_then(serde_json::Value::as_i64);
        let tags = v
            .get("tags")
            .and_then(|t| serde_json::from_value::<BTreeMap<String, String>>(t.clone()).ok());
        Ok(Self { weight, tags })
    }
}

/// A weight as the CloudWeGo resolvers read it: ≤ 0 or missing is the default; above u32 is
/// capped.
pub(crate) fn read_weight(w: Option<i64>) -> u32 {
    match w {
        Some(w) if w > 0 => u32::try_from(w).unwrap_or(u32::MAX),
        _ => DEFAULT_WEIGHT,
    }
}

/// `IP:port`, `[v6]:port`, or Kitex's bracket-less `v6:port`; a routable IP and a port above 0.
pub fn parse_address(text: &str) -> Result<SocketAddr, DecodeError> {
    let bad = || DecodeError::Address(text.to_string());
    let addr = match text.parse::<SocketAddr>() {
        Ok(a) => a,
        Err(_) => {
            let (host, port) = text.rsplit_once(':').ok_or_else(bad)?;
            let ip: Ipv6Addr = host.parse().map_err(|_| bad())?;
            SocketAddr::new(IpAddr::V6(ip), port.parse().map_err(|_| bad())?)
        }
    };
    if addr.port() == 0 || addr.ip().is_unspecified() {
        return Err(bad());
    }
    Ok(addr)
}

/// Writes `tags` as a JSON object with sorted keys, or `null` when empty (a Go nil map).
pub(crate) fn tags_json(out: &mut String, tags: &Tags, go_std: bool) {
    if tags.is_empty() {
        out.push_str("null");
        return;
    }
    out.push('{');
    for (i, (k, v)) in tags.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        json_string(out, k, go_std);
        out.push(':');
        json_string(out, v, go_std);
    }
    out.push('}');
}

/// Writes `s` as a JSON string the way Go does. Every encoder escapes `"`, `\` and control
/// characters (`\n`, `\r`, `\t`, `\b`, `\f` short, as Go ≥ 1.22 does; the rest as `\u00XX`);
/// `go_std` (encoding/json) also escapes `<`, `>`, `&`, U+2028 and U+2029.
fn json_string(out: &mut String, s: &str, go_std: bool) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' if go_std => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests;
