//! Typed config scalars that check themselves while being parsed, so a bad value is reported by
//! serde_yaml with its exact line and column: humane durations, `IP:port` addresses and service
//! names.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

/// A duration written the humane way: `250ms`, `5s`, `1m30s`, `2h`, `1.5s`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Dur(pub Duration);

impl Dur {
    /// Whole seconds.
    pub const fn from_secs(s: u64) -> Self {
        Self(Duration::from_secs(s))
    }

    /// Parses `text`; the error says what was expected.
    pub fn parse(text: &str) -> Result<Self, String> {
        let t = text.trim();
        if t.is_empty() {
            return Err("empty duration: expected e.g. \"250ms\", \"5s\", \"1m30s\"".into());
        }
        let mut total = Duration::ZERO;
        let mut rest = t;
        while !rest.is_empty() {
            let num_end = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .unwrap_or(rest.len());
            let (num, tail) = rest.split_at(num_end);
            let unit_end = tail
                .find(|c: char| c.is_ascii_digit() || c == '.')
                .unwrap_or(tail.len());
            let (unit, tail) = tail.split_at(unit_end);
            let value: f64 = num.parse().map_err(|_| bad_duration(text))?;
            let scale = match unit {
                "ns" => 1e-9,
                "us" | "µs" => 1e-6,
                "ms" => 1e-3,
                "s" => 1.0,
                "m" => 60.0,
                "h" => 3600.0,
                _ => return Err(bad_duration(text)),
            };
            let secs = value * scale;
            if !secs.is_finite() || secs > 1e9 {
                return Err(format!("duration {text:?} is too large"));
            }
            total += Duration::from_secs_f64(secs);
            rest = tail;
        }
        Ok(Self(total))
    }
}

fn bad_duration(text: &str) -> String {
    format!("invalid duration {text:?}: expected a number and a unit (ms, s, m, h), e.g. \"250ms\", \"5s\", \"1m30s\"")
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Dur;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration string such as \"250ms\" or \"5s\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Dur, E> {
                Dur::parse(v).map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Dur, E> {
                Err(E::custom(format!(
                    "duration {v} has no unit: write \"{v}s\" or \"{v}ms\""
                )))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Dur, E> {
                Err(E::custom(format!(
                    "duration {v} has no unit: write \"{v}s\" or \"{v}ms\""
                )))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Dur, E> {
                Err(E::custom(format!(
                    "duration {v} has no unit: write \"{v}s\""
                )))
            }
        }
        d.deserialize_any(V)
    }
}

/// A socket address written as `IP:port` (`127.0.0.1:8080`, `[::1]:8080`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Addr(pub SocketAddr);

impl Addr {
    /// Parses `IP:port`.
    pub fn parse(text: &str) -> Result<Self, String> {
        SocketAddr::from_str(text.trim()).map(Addr).map_err(|_| {
            format!("invalid address {text:?}: expected IP:port such as \"127.0.0.1:8080\" or \"[::1]:8080\"")
        })
    }
}

impl fmt::Display for Addr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl<'de> Deserialize<'de> for Addr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ParseVisitor {
            parse: Addr::parse,
            expecting: "an address such as \"127.0.0.1:8080\"",
        })
    }
}

/// A service name: 1 to 253 characters from lowercase letters, digits, `-`, `_` and `.`,
/// starting with a letter, digit or `_` — what a Host header can carry.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceName(String);

impl ServiceName {
    /// Whether `name` is a well-formed service name (see [`ServiceName`]); allocates nothing.
    pub fn is_valid(name: &str) -> bool {
        let ok_chars = name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.')
        });
        let first_ok = name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_');
        name.len() <= 253 && ok_chars && first_ok
    }

    /// Checks and wraps `name`.
    pub fn parse(name: &str) -> Result<Self, String> {
        if !Self::is_valid(name) {
            return Err(format!(
                "invalid service name {name:?}: use lowercase letters, digits, '-', '_' and '.' (as in a host name)"
            ));
        }
        Ok(Self(name.to_string()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for ServiceName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ParseVisitor {
            parse: ServiceName::parse,
            expecting: "a service name",
        })
    }
}

/// Parses a YAML string (or bare number, as text) with `parse` *inside* the visitor, so an
/// error carries the scalar's own key path and position rather than its parent's.
pub(super) struct ParseVisitor<T> {
    /// Turns the text into the value, or says what was expected.
    pub parse: fn(&str) -> Result<T, String>,
    /// What serde reports was expected.
    pub expecting: &'static str,
}

impl<T> Visitor<'_> for ParseVisitor<T> {
    type Value = T;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.expecting)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        (self.parse)(v).map_err(E::custom)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
        (self.parse)(&v.to_string()).map_err(E::custom)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
        (self.parse)(&v.to_string()).map_err(E::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(Dur::parse("250ms").unwrap().0, Duration::from_millis(250));
        assert_eq!(Dur::parse("5s").unwrap().0, Duration::from_secs(5));
        assert_eq!(Dur::parse("1m30s").unwrap().0, Duration::from_secs(90));
        assert_eq!(Dur::parse("1.5s").unwrap().0, Duration::from_millis(1500));
        assert_eq!(Dur::parse("2h").unwrap().0, Duration::from_secs(7200));
        for bad in ["", "5", "5 s", "s", "5x", "1..2s", "-1s"] {
            assert!(Dur::parse(bad).is_err(), "{bad:?} must be rejected");
        }
    }

    #[test]
    fn addresses_and_names() {
        assert!(Addr::parse("127.0.0.1:80").is_ok());
        assert!(Addr::parse("[::1]:80").is_ok());
        assert!(Addr::parse("localhost:80").is_err());
        assert!(Addr::parse("127.0.0.1").is_err());
        assert!(ServiceName::parse("echo").is_ok());
        assert!(ServiceName::parse("users.default.svc.cluster.local").is_ok());
        assert!(ServiceName::parse("Echo").is_err());
        assert!(ServiceName::parse("a b").is_err());
        assert!(ServiceName::parse("").is_err());
        assert!(ServiceName::parse("-x").is_err());
        assert!(ServiceName::parse(&"a".repeat(254)).is_err());
        for name in ["echo", "_http._tcp.a", "a-b.c", "9a"] {
            assert!(ServiceName::is_valid(name), "{name:?}");
        }
        for name in ["Echo", "a b", "", "-x", ".x", "a/b"] {
            assert!(!ServiceName::is_valid(name), "{name:?}");
        }
    }
}
