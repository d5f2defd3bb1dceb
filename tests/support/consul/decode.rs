//! Registration bodies as the agent decodes them: PascalCase or snake_case keys, durations as Go
//! strings or nanoseconds (one that does not parse fails the decode, as Go's `UnmarshalJSON`
//! does), and the check definition rules of `structs.CheckType.Validate`, with their messages.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;

use super::state::Kind;

/// A registration decoded and validated, not applied yet: the ACL check (which Consul runs
/// after validation) needs its name first.
pub struct Prepared {
    pub id: String,
    pub name: String,
    pub tags: Vec<String>,
    pub address: String,
    pub port: i64,
    pub meta: BTreeMap<String, String>,
    pub weights: Option<(i64, i64)>,
    pub checks: Vec<CheckDef>,
}

/// One check definition as decoded: what `structs.CheckType` holds before `Validate`.
pub struct RawCheck {
    id: Option<String>,
    name: Option<String>,
    interval: Option<Duration>,
    timeout: Option<Duration>,
    ttl: Option<Duration>,
    http: String,
    tcp: String,
    status: Option<String>,
    reap_after: Option<Duration>,
}

/// One valid check definition.
pub struct CheckDef {
    pub id: Option<String>,
    pub name: Option<String>,
    pub kind: Kind,
    pub status: Option<String>,
    pub reap_after: Option<Duration>,
}

/// A field of `obj` by its PascalCase or snake_case name (the agent accepts both).
fn field<'a>(obj: &'a Value, pascal: &str, snake: &str) -> Option<&'a Value> {
    obj.get(pascal)
        .or_else(|| obj.get(snake))
        .filter(|v| !v.is_null())
}

fn string(obj: &Value, pascal: &str, snake: &str) -> Result<String, String> {
    match field(obj, pascal, snake) {
        None => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(v) => Err(format!(
            "cannot decode {pascal}: expected a string, got {v}"
        )),
    }
}

fn int(obj: &Value, pascal: &str, snake: &str) -> Result<i64, String> {
    match field(obj, pascal, snake) {
        None => Ok(0),
        Some(v) => v
            .as_i64()
            .ok_or_else(|| format!("cannot decode {pascal}: expected an integer, got {v}")),
    }
}

/// A duration field: a Go duration string, or a number of nanoseconds.
fn duration(obj: &Value, pascal: &str, snake: &str) -> Result<Option<Duration>, String> {
    match field(obj, pascal, snake) {
        None => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => parse_go_duration(s).map(Some),
        Some(Value::Number(n)) => Ok(Some(Duration::from_nanos(n.as_u64().unwrap_or(0)))),
        Some(v) => Err(format!("cannot decode {pascal}: {v}")),
    }
}

/// Go's `time.ParseDuration`: `300ms`, `1.5h`, `2h45m`; a negative one reads as zero (Consul
/// then finds it not > 0).
pub fn parse_go_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("time: invalid duration \"{s}\"");
    let (negative, mut rest) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    if rest.is_empty() {
        return Err(bad());
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let n = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let value: f64 = rest[..n].parse().map_err(|_| bad())?;
        rest = &rest[n..];
        let u = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..u] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        total += value * scale;
        rest = &rest[u..];
    }
    Ok(if negative {
        Duration::ZERO
    } else {
        Duration::from_secs_f64(total)
    })
}

/// Decodes one check definition (a duration that does not parse fails the decode, as Go's
/// `UnmarshalJSON` of `CheckType` does).
fn raw_check(v: &Value) -> Result<RawCheck, String> {
    Ok(RawCheck {
        id: Some(string(v, "CheckID", "check_id")?).filter(|s| !s.is_empty()),
        name: Some(string(v, "Name", "name")?).filter(|s| !s.is_empty()),
        interval: duration(v, "Interval", "interval")?,
        timeout: duration(v, "Timeout", "timeout")?,
        ttl: duration(v, "TTL", "ttl")?,
        http: string(v, "HTTP", "http")?,
        tcp: string(v, "TCP", "tcp")?,
        status: Some(string(v, "Status", "status")?).filter(|s| !s.is_empty()),
        reap_after: duration(
            v,
            "DeregisterCriticalServiceAfter",
            "deregister_critical_service_after",
        )?,
    })
}

/// `structs.CheckType.Validate`, for the kinds the double runs.
pub fn validate_check(c: RawCheck) -> Result<CheckDef, String> {
    let positive = |d: Option<Duration>| d.filter(|d| !d.is_zero());
    let interval_check = !c.http.is_empty() || !c.tcp.is_empty();
    if positive(c.interval).is_some() && positive(c.ttl).is_some() {
        return Err("Interval and TTL cannot both be specified".into());
    }
    let kind = if interval_check {
        let interval = positive(c.interval)
            .ok_or("Interval must be > 0 for Script, HTTP, H2PING, TCP, UDP or OSService checks")?;
        // Consul's default timeout for HTTP and TCP checks.
        let timeout = positive(c.timeout).unwrap_or(Duration::from_secs(10));
        if c.http.is_empty() {
            Kind::Tcp {
                addr: c.tcp,
                interval,
                timeout,
            }
        } else {
            Kind::Http {
                url: c.http,
                interval,
                timeout,
            }
        }
    } else {
        Kind::Ttl(positive(c.ttl).ok_or("TTL must be > 0 for TTL checks")?)
    };
    Ok(CheckDef {
        id: c.id,
        name: c.name,
        kind,
        status: c.status,
        reap_after: positive(c.reap_after),
    })
}

/// Decodes a registration body (PascalCase or snake_case keys; `ID` defaults to `Name`).
pub fn decode(body: &[u8]) -> Result<(Prepared, Vec<RawCheck>), String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    if !v.is_object() {
        return Err("expected a JSON object".into());
    }
    let name = string(&v, "Name", "name")?;
    let id = Some(string(&v, "ID", "id")?)
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| name.clone());
    let tags = match field(&v, "Tags", "tags") {
        None => Vec::new(),
        Some(t) => {
            serde_json::from_value(t.clone()).map_err(|e| format!("cannot decode Tags: {e}"))?
        }
    };
    let meta = match field(&v, "Meta", "meta") {
        None => BTreeMap::new(),
        Some(m) => {
            serde_json::from_value(m.clone()).map_err(|e| format!("cannot decode Meta: {e}"))?
        }
    };
    let weights = match field(&v, "Weights", "weights") {
        None => None,
        Some(w) => Some((int(w, "Passing", "passing")?, int(w, "Warning", "warning")?)),
    };
    let mut raw = Vec::new();
    if let Some(c) = field(&v, "Check", "check") {
        raw.push(raw_check(c)?);
    }
    if let Some(Value::Array(cs)) = field(&v, "Checks", "checks") {
        for c in cs.iter().filter(|c| !c.is_null()) {
            raw.push(raw_check(c)?);
        }
    }
    let reg = Prepared {
        id,
        name,
        tags,
        address: string(&v, "Address", "address")?,
        port: int(&v, "Port", "port")?,
        meta,
        weights,
        checks: Vec::new(),
    };
    Ok((reg, raw))
}
