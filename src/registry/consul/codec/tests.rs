//! Golden bodies (what Go's `encoding/json` writes for the `AgentServiceRegistration` Hertz and
//! Kitex build, `REGISTRIES.md` §1.3), tags both ways, Go durations, and health entries.

use super::*;

fn reg(addr: &str, weight: u32, tags: &[(&str, &str)]) -> Registration {
    Registration {
        service: "echo".into(),
        address: addr.parse().unwrap(),
        weight,
        tags: Arc::new(
            tags.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        ),
        ttl: Duration::from_secs(10),
    }
}

fn tcp(addr: &str) -> CheckSpec {
    CheckSpec::Tcp {
        addr: addr.into(),
        interval: Duration::from_secs(5),
        timeout: Duration::from_secs(5),
    }
}

fn body(reg: &Registration, check: &CheckSpec) -> String {
    let id = check_id(&service_id(reg));
    String::from_utf8(registration_body(reg, check, &id, Duration::from_secs(60))).unwrap()
}

#[test]
fn the_hertz_and_kitex_default_body_byte_for_byte() {
    // hertz-contrib/registry consul: ID svc:host:port, tags k:v, Weights{w, w}, no Meta, and
    // defaultCheck() with TCP = host:port; Check has no omitempty, Checks is nil → null.
    assert_eq!(
        body(
            &reg("10.0.0.7:8888", 10, &[("k", "v")]),
            &tcp("10.0.0.7:8888")
        ),
        r#"{"ID":"echo:10.0.0.7:8888","Name":"echo","Tags":["k:v"],"Port":8888,"Address":"10.0.0.7","Weights":{"Passing":10,"Warning":10},"Check":{"Interval":"5s","Timeout":"5s","TCP":"10.0.0.7:8888","DeregisterCriticalServiceAfter":"1m"},"Checks":null}"#
    );
    // No tags: Kitex's empty slice is omitted (omitempty).
    assert_eq!(
        body(&reg("10.0.0.7:8888", 3, &[]), &tcp("10.0.0.7:8888")),
        r#"{"ID":"echo:10.0.0.7:8888","Name":"echo","Port":8888,"Address":"10.0.0.7","Weights":{"Passing":3,"Warning":3},"Check":{"Interval":"5s","Timeout":"5s","TCP":"10.0.0.7:8888","DeregisterCriticalServiceAfter":"1m"},"Checks":null}"#
    );
}

#[test]
fn the_kitex_ttl_body_carries_its_check_id() {
    // kitex-contrib/registry-consul with a TTL check: no TCP is added, the CheckID is explicit.
    assert_eq!(
        body(
            &reg("10.0.0.7:8888", 10, &[]),
            &CheckSpec::Ttl(Duration::from_secs(10))
        ),
        r#"{"ID":"echo:10.0.0.7:8888","Name":"echo","Port":8888,"Address":"10.0.0.7","Weights":{"Passing":10,"Warning":10},"Check":{"CheckID":"service:echo:10.0.0.7:8888","TTL":"10s","DeregisterCriticalServiceAfter":"1m"},"Checks":null}"#
    );
}

#[test]
fn http_checks_ipv6_bare_tags_and_go_escaping() {
    let r = reg("[fd00::7]:8080", 10, &[("flag", ""), ("zone", "a<b>&c")]);
    let check = CheckSpec::Http {
        url: "http://[fd00::7]:8081/healthz".into(),
        interval: Duration::from_millis(1500),
        timeout: Duration::from_secs(1),
    };
    // The ID and Address carry no brackets (fmt.Sprintf and the registered host); the HTTP URL
    // does. A tag without a value is the bare key, as Hertz writes it; <, > and & are escaped
    // as Go escapes them.
    assert_eq!(
        body(&r, &check),
        r#"{"ID":"echo:fd00::7:8080","Name":"echo","Tags":["flag","zone:a\u003cb\u003e\u0026c"],"Port":8080,"Address":"fd00::7","Weights":{"Passing":10,"Warning":10},"Check":{"Interval":"1500ms","Timeout":"1s","HTTP":"http://[fd00::7]:8081/healthz","DeregisterCriticalServiceAfter":"1m"},"Checks":null}"#
    );
    let parsed: serde_json::Value = serde_json::from_str(&body(&r, &check)).unwrap();
    assert_eq!(parsed["Tags"][1], "zone:a<b>&c", "still the same JSON");
}

#[test]
fn go_durations() {
    for (d, s) in [
        (Duration::from_secs(5), "5s"),
        (Duration::from_secs(60), "1m"),
        (Duration::from_secs(90), "1m30s"),
        (Duration::from_secs(7200), "2h"),
        (Duration::from_secs(3661), "1h1m1s"),
        (Duration::from_millis(1500), "1500ms"),
        (Duration::from_millis(250), "250ms"),
        (Duration::ZERO, "0s"),
    ] {
        assert_eq!(go_duration(d), s, "{d:?}");
    }
}

#[test]
fn tags_both_ways() {
    let map: BTreeMap<String, String> = [("k", "v"), ("flag", ""), ("url", "http://x:1")]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let written = tags(&map);
    assert_eq!(written, ["flag", "k:v", "url:http://x:1"]);
    assert_eq!(
        parse_tags(&written),
        map,
        "round trip, a value keeps its own ':'"
    );
    // Kitex writes an empty value as "k:"; a bare tag reads as a key with an empty value in
    // both styles; empty tags are skipped.
    let read = parse_tags(&[
        "flag:".into(),
        "bare".into(),
        "".into(),
        "k:1".into(),
        "k:2".into(),
    ]);
    assert_eq!(read.get("flag").map(String::as_str), Some(""));
    assert_eq!(read.get("bare").map(String::as_str), Some(""));
    assert_eq!(
        read.get("k").map(String::as_str),
        Some("2"),
        "the last value wins"
    );
    assert_eq!(read.len(), 3);
}

/// The health.mdx sample entry, as a Hertz or Kitex instance appears.
const SAMPLE: &str = r#"[{"Node":{"ID":"40e4a748","Node":"foobar","Address":"10.1.10.12","Datacenter":"dc1","TaggedAddresses":{"lan":"10.1.10.12"},"Meta":{},"CreateIndex":5,"ModifyIndex":5},
  "Service":{"ID":"echo:10.0.0.7:8888","Service":"echo","Tags":["k:v","flag"],"Meta":{},"Port":8888,"Address":"10.0.0.7",
             "Weights":{"Passing":10,"Warning":1},"EnableTagOverride":false,"CreateIndex":9,"ModifyIndex":9},
  "Checks":[{"Node":"foobar","CheckID":"serfHealth","Name":"Serf Health Status","Status":"passing","ServiceID":"","ServiceName":"","ServiceTags":[]},
            {"Node":"foobar","CheckID":"service:echo:10.0.0.7:8888","Name":"Service 'echo' check","Status":"passing","ServiceID":"echo:10.0.0.7:8888","ServiceName":"echo","ServiceTags":["k:v"],"Type":"tcp"}]}]"#;

#[test]
fn health_entries_become_instances() {
    let entries = decode_health(SAMPLE.as_bytes()).unwrap();
    let i = instance(&entries[0]).unwrap();
    assert_eq!(i.address.to_string(), "10.0.0.7:8888");
    assert_eq!(i.weight, 10);
    assert_eq!(i.tags.get("k").map(String::as_str), Some("v"));
    assert_eq!(i.tags.get("flag").map(String::as_str), Some(""));
    assert!(decode_health(b"[]").unwrap().is_empty());
    assert!(
        decode_health(b"null").unwrap().is_empty(),
        "old agents sent null"
    );
    assert!(decode_health(b"{").is_err());
}

fn entry(json: &str) -> HealthEntry {
    serde_json::from_str(json).unwrap()
}

#[test]
fn node_address_ipv6_warning_weights_and_skips() {
    // An empty Service.Address means the node's (go-kit's reading).
    let e = entry(
        r#"{"Node":{"Address":"10.1.10.12"},"Service":{"Address":"","Port":80,"Weights":{"Passing":5,"Warning":1}},"Checks":[]}"#,
    );
    assert_eq!(instance(&e).unwrap().address.to_string(), "10.1.10.12:80");
    // IPv6 with or without brackets; null tags and absent weights read as none and {1, 1}.
    for addr in ["fd00::7", "[fd00::7]"] {
        let e = entry(&format!(
            r#"{{"Service":{{"Address":"{addr}","Port":80,"Tags":null}},"Checks":null}}"#
        ));
        let i = instance(&e).unwrap();
        assert_eq!(
            (i.address.to_string(), i.weight),
            ("[fd00::7]:80".into(), 1)
        );
        assert!(i.tags.is_empty());
    }
    // A warning check weighs by Weights.Warning (0 drains it); a critical one is left out.
    let warn = entry(
        r#"{"Service":{"Address":"10.0.0.1","Port":80,"Weights":{"Passing":5,"Warning":0}},"Checks":[{"Status":"passing"},{"Status":"warning"}]}"#,
    );
    assert_eq!(instance(&warn).unwrap().weight, 0);
    let crit = entry(
        r#"{"Service":{"Address":"10.0.0.1","Port":80},"Checks":[{"Status":"warning"},{"Status":"critical"}]}"#,
    );
    assert_eq!(instance(&crit).unwrap_err(), Skip::Critical);
    // Names and impossible ports are skipped.
    let name = entry(r#"{"Service":{"Address":"db.local","Port":80}}"#);
    assert_eq!(
        instance(&name).unwrap_err(),
        Skip::Address("db.local".into())
    );
    let nowhere = entry(r#"{"Node":{"Address":""},"Service":{"Address":"","Port":80}}"#);
    assert!(matches!(instance(&nowhere), Err(Skip::Address(_))));
    for port in [0, -1, 70000] {
        let e = entry(&format!(
            r#"{{"Service":{{"Address":"10.0.0.1","Port":{port}}}}}"#
        ));
        assert_eq!(instance(&e).unwrap_err(), Skip::Port(port));
    }
}

#[test]
fn ids_and_encoding() {
    let r = reg("[fd00::7]:8080", 10, &[]);
    assert_eq!(service_id(&r), "echo:fd00::7:8080");
    assert_eq!(check_id("echo:fd00::7:8080"), "service:echo:fd00::7:8080");
    assert_eq!(encode("echo:10.0.0.7:80"), "echo:10.0.0.7:80");
    assert_eq!(encode("a b&c/d?e#f%"), "a%20b%26c%2Fd%3Fe%23f%25");
    assert_eq!(encode("Zone:é"), "Zone:%C3%A9");
}
