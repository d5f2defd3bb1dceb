//! The wire format: node paths and node data exactly as Hertz (hertz-contrib/registry's
//! `zookeeper`) and Kitex (kitex-contrib/registry-zookeeper) write them, and the tolerant
//! reading of whatever they — or people with `zkCli.sh` — put there.
//!
//! | node | type | data |
//! |---|---|---|
//! | `<root>/<svc>` | persistent, created as needed | empty |
//! | `<root>/<svc>/<ip:port>` | ephemeral, one per instance | `{"Weight":<w>,"Tags":{…}\|null}` |
//!
//! The instance's address is the child's **name**; the data carries only weight and tags (Go's
//! `RegistryEntity{Weight int; Tags map[string]string}`, no JSON tags, so capitalised keys).
//! Writing matches `encoding/json` (Kitex) byte for byte: `"Tags":null` for no tags (a Go nil
//! map), tag keys sorted, `<`, `>`, `&`, U+2028 and U+2029 escaped — which Hertz's sonic reads
//! alike. Two choices of our own, as for etcd: a weight below 1 is written as 1 (Kitex's
//! balancer drops weight-0 instances), and an IPv6 address always carries brackets (Kitex writes
//! `::1:80`).
//!
//! Reading follows Go's `encoding/json`: keys match case-insensitively (`weight` fills
//! `Weight`), `null` data or fields are zero values, a weight ≤ 0 or missing reads as
//! [`DEFAULT_WEIGHT`], anything else (no data, not an object, a fractional weight, a tag that is
//! not a string) does not parse and the child is skipped — where Hertz and Kitex fail the whole
//! resolve. Child names must be a routable `IP:port` (Kitex's bracket-less IPv6 included).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;

use serde_json::Value;

use crate::discover::{Instance, Tags};
use crate::register::Registration;
use crate::registry::etcd::codec::{parse_address, read_weight, tags_json};

pub use crate::registry::etcd::codec::DEFAULT_WEIGHT;

/// Why a child was skipped.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The child's name is not a routable `IP:port`.
    #[error("child name {0:?} is not a routable IP:port")]
    Name(String),
    /// The child's data is not the JSON the Go registries write.
    #[error("data is not {{\"Weight\":…,\"Tags\":…}}: {0}")]
    Data(String),
}

/// Paths and data under one root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Codec {
    /// The root without its trailing `/`: empty for ZooKeeper's root.
    root: String,
}

impl Codec {
    /// A codec for services under `root` (`/` or `/a/b`, validated by the config).
    pub fn new(root: &str) -> Self {
        Self {
            root: root.trim_end_matches('/').to_string(),
        }
    }

    /// The node holding every instance of `service`: `<root>/<service>`.
    pub fn service_path(&self, service: &str) -> String {
        format!("{}/{service}", self.root)
    }

    /// The node of `address` of `service`: `<root>/<service>/<ip:port>` (`[v6]:port`, as Go's
    /// `net.JoinHostPort` and Rust's `SocketAddr` print it).
    pub fn node_path(&self, service: &str, address: SocketAddr) -> String {
        format!("{}/{service}/{address}", self.root)
    }

    /// The data registering `reg`, byte for byte what Kitex's `encoding/json` writes.
    pub fn encode(&self, reg: &Registration) -> Vec<u8> {
        let mut out = String::with_capacity(32);
        let _ = write!(out, r#"{{"Weight":{},"Tags":"#, reg.weight.max(1));
        tags_json(&mut out, &reg.tags, true);
        out.push('}');
        out.into_bytes()
    }

    /// Reads the child named `name` with `data` into an instance.
    pub fn decode(&self, name: &str, data: &[u8]) -> Result<Instance, DecodeError> {
        let address = parse_address(name).map_err(|_| DecodeError::Name(name.to_string()))?;
        let bad = |why: String| DecodeError::Data(why);
        let value: Value = serde_json::from_slice(data).map_err(|e| bad(e.to_string()))?;
        let fields = match value {
            Value::Object(map) => map,
            // Go unmarshals `null` into a struct as a no-op: zero values.
            Value::Null => Default::default(),
            other => return Err(bad(format!("expected an object, found {other}"))),
        };
        let weight = match field(&fields, "Weight") {
            None | Some(Value::Null) => None,
            Some(w) => Some(
                w.as_i64()
                    .ok_or_else(|| bad(format!("Weight {w} is not an integer")))?,
            ),
        };
        let tags = match field(&fields, "Tags") {
            None | Some(Value::Null) => crate::discover::no_tags(),
            Some(Value::Object(map)) => {
                let mut tags = BTreeMap::new();
                for (k, v) in map {
                    let v = match v {
                        Value::String(s) => s.clone(),
                        // Go leaves a string at "" for `null`.
                        Value::Null => String::new(),
                        other => return Err(bad(format!("tag {k:?} is {other}, not a string"))),
                    };
                    tags.insert(k.clone(), v);
                }
                if tags.is_empty() {
                    crate::discover::no_tags()
                } else {
                    Tags::new(tags)
                }
            }
            Some(other) => return Err(bad(format!("Tags {other} is not an object"))),
        };
        Ok(Instance {
            address,
            weight: read_weight(weight),
            tags,
        })
    }
}

/// The value of struct field `name` as Go's `encoding/json` finds it: the exact key, or else
/// the first key equal to it ignoring ASCII case.
fn field<'a>(fields: &'a serde_json::Map<String, Value>, name: &str) -> Option<&'a Value> {
    fields.get(name).or_else(|| {
        fields
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    /// `echo` at `addr` (the TTL plays no part in the data).
    fn reg(addr: &str, weight: u32, tags: &[(&str, &str)]) -> Registration {
        let tags = tags.iter().map(|&(k, v)| (k.into(), v.into())).collect();
        let (service, address) = ("echo".into(), addr.parse().unwrap());
        let ttl = Duration::ZERO;
        Registration {
            service,
            address,
            weight,
            tags: Arc::new(tags),
            ttl,
        }
    }

    #[test]
    fn paths_under_the_root_or_a_custom_one() {
        let top = Codec::new("/");
        let addr = "10.0.0.7:8888".parse().unwrap();
        assert_eq!(top.service_path("echo"), "/echo");
        assert_eq!(top.node_path("echo", addr), "/echo/10.0.0.7:8888");
        let v6 = "[fd00::7]:80".parse().unwrap();
        assert_eq!(top.node_path("echo", v6), "/echo/[fd00::7]:80");
        let custom = Codec::new("/shop/services");
        assert_eq!(custom.service_path("echo"), "/shop/services/echo");
        assert_eq!(
            custom.node_path("echo", addr),
            "/shop/services/echo/10.0.0.7:8888"
        );
    }

    /// What `json.Marshal(entity.RegistryEntity{...})` prints, for the same values.
    #[test]
    fn writes_what_encoding_json_writes() {
        let c = Codec::new("/");
        let cases: [(Registration, &str); 4] = [
            (reg("10.0.0.7:80", 10, &[]), r#"{"Weight":10,"Tags":null}"#),
            (
                reg("10.0.0.7:80", 3, &[("zone", "a"), ("env", "prod")]),
                r#"{"Weight":3,"Tags":{"env":"prod","zone":"a"}}"#,
            ),
            (
                reg("10.0.0.7:80", 1, &[("q", "a<b>&\"c\"\n\u{2028}")]),
                r#"{"Weight":1,"Tags":{"q":"a\u003cb\u003e\u0026\"c\"\n\u2028"}}"#,
            ),
            // Never weight 0: Kitex drops such instances.
            (reg("10.0.0.7:80", 0, &[]), r#"{"Weight":1,"Tags":null}"#),
        ];
        for (r, want) in cases {
            assert_eq!(String::from_utf8(c.encode(&r)).unwrap(), want);
        }
    }

    #[test]
    fn reads_what_the_go_registries_and_people_write() {
        let c = Codec::new("/");
        let ok = |name: &str, data: &str| c.decode(name, data.as_bytes()).unwrap();
        let i = ok("10.0.0.7:80", r#"{"Weight":3,"Tags":{"zone":"a"}}"#);
        assert_eq!(
            (i.address.to_string().as_str(), i.weight),
            ("10.0.0.7:80", 3)
        );
        assert_eq!(i.tags["zone"], "a");
        assert_eq!(ok("10.0.0.7:80", r#"{"Weight":0,"Tags":null}"#).weight, 10);
        assert_eq!(ok("10.0.0.7:80", r#"{"Weight":-5}"#).weight, 10);
        assert_eq!(ok("10.0.0.7:80", r#"{}"#).weight, 10);
        assert_eq!(ok("10.0.0.7:80", "null").weight, 10);
        assert_eq!(
            ok("10.0.0.7:80", r#"{"weight":7,"tags":{"a":"b"}}"#).weight,
            7
        );
        assert_eq!(
            ok("10.0.0.7:80", r#"{"Weight":7,"Tags":{"a":null}}"#).tags["a"],
            ""
        );
        assert_eq!(
            ok("10.0.0.7:80", r#"{"Weight":99999999999}"#).weight,
            u32::MAX
        );
        // Kitex's bracket-less IPv6 and the bracketed form.
        assert_eq!(ok("::1:80", "{}").address.to_string(), "[::1]:80");
        assert_eq!(ok("[::1]:80", "{}").address.to_string(), "[::1]:80");
        // Tags are a fresh map per value (hertz-contrib/registry#27).
        let a = ok("10.0.0.1:80", r#"{"Tags":{"x":"1"}}"#);
        let b = ok("10.0.0.2:80", r#"{"Tags":{"y":"2"}}"#);
        assert!(!a.tags.contains_key("y") && !b.tags.contains_key("x"));
        assert!(ok("10.0.0.3:80", r#"{"Tags":{}}"#).tags.is_empty());

        for (name, data) in [
            ("10.0.0.7:80", ""),
            ("10.0.0.7:80", "{not json"),
            ("10.0.0.7:80", "[]"),
            ("10.0.0.7:80", r#"{"Weight":"10"}"#),
            ("10.0.0.7:80", r#"{"Weight":1.5}"#),
            ("10.0.0.7:80", r#"{"Tags":["a"]}"#),
            ("10.0.0.7:80", r#"{"Tags":{"a":1}}"#),
        ] {
            assert!(
                matches!(c.decode(name, data.as_bytes()), Err(DecodeError::Data(_))),
                "{data:?}"
            );
        }
        for name in [
            "echo",
            "10.0.0.7",
            "0.0.0.0:80",
            "10.0.0.7:0",
            "host.local:80",
        ] {
            assert!(
                matches!(c.decode(name, b"{}"), Err(DecodeError::Name(_))),
                "{name:?}"
            );
        }
    }

    #[test]
    fn written_data_reads_back() {
        let c = Codec::new("/");
        let r = reg("[fd00::7]:8888", 4, &[("zone", "a<1>")]);
        let i = c.decode("[fd00::7]:8888", &c.encode(&r)).unwrap();
        assert_eq!((i.address, i.weight, &*i.tags), (r.address, 4, &*r.tags));
    }
}
