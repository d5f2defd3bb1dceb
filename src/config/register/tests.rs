//! `register:` parsing and validation: defaults, health check URLs, and a rejection test with
//! inline YAML for every rule, file and etcd entries alike.

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
    rejects("register:\n  - service: shop\n    address: 10.0.0.7:1\n    registry: nacos\n    check: none\n", 4, "unknown variant `nacos`");
    rejects(
        "register:\n  - service: shop\n    address: 10.0.0.7:1\n    check: none\n",
        2,
        "missing field `registry`",
    );
    rejects(
        &format!("{ENTRY}    check: none\n    etcd: {{layout: kitex}}\n"),
        6,
        "register.0.etcd: etcd options apply only to `registry: etcd`",
    );
    rejects(&format!("{ENTRY}    check: none\n  - service: shop\n    address: 10.0.0.7:8080\n    registry: file\n    check: none\n"), 7, "register.1.address: 10.0.0.7:8080 as shop is already registered in the file registry by register.0");
    rejects(
        "registry:\n  file:\n    ttl: 500ms\n",
        3,
        "registry.file.ttl: must be at least 1s",
    );
}

/// An etcd entry: `shop` at 10.0.0.7:8080, no check, then `extra` lines of its own.
fn etcd_entry(extra: &str) -> String {
    format!("register:\n  - service: shop\n    address: 10.0.0.7:8080\n    registry: etcd\n    check: none\n{extra}")
}

#[test]
fn etcd_entries_take_their_layout_and_prefix_from_registry_etcd_by_default() {
    let c = parse(&format!(
        "registry:\n  etcd: {{layout: kitex, lease_ttl: 4s}}\n{}",
        etcd_entry("  - service: shop\n    address: 10.0.0.7:8080\n    registry: etcd\n    etcd: {layout: hertz}\n    check: none\n  - service: shop\n    address: 10.0.0.7:8080\n    registry: etcd\n    etcd: {layout: grpc, prefix: \"\"}\n    check: none\n")
    ))
    .unwrap();
    let etcd = &c.registry.etcd;
    let places: Vec<_> = c
        .register
        .iter()
        .map(|e| {
            assert_eq!(e.registry, RegistryKind::Etcd);
            let (layout, prefix) = etcd.entry_layout_and_prefix(e.etcd.as_ref());
            format!("{}{}", layout.service_prefix(&prefix, "shop"), e.address)
        })
        .collect();
    // One instance in three layouts: Kitex, Hertz and grpc-go clients all find it.
    assert_eq!(
        places,
        [
            "kitex/registry-etcd/shop/10.0.0.7:8080",
            "hertz/registry-etcd/shop/10.0.0.7:8080",
            "shop/10.0.0.7:8080"
        ]
    );
}

#[test]
fn rejects_bad_etcd_entries() {
    rejects(
        &etcd_entry("    etcd: {prefix: shop/}\n"),
        6,
        "register.0.etcd.prefix: \"shop/\" must not end with '/'",
    );
    rejects(
        &etcd_entry("    etcd: {layout: nacos}\n"),
        6,
        "unknown variant `nacos`",
    );
    rejects(
        &etcd_entry("    etcd: {lease_ttl: 5s}\n"),
        6,
        "unknown field `lease_ttl`",
    );
    // The same key twice, spelt differently (the default prefix, then the same one given).
    rejects(
        &etcd_entry("  - service: shop\n    address: 10.0.0.7:8080\n    registry: etcd\n    etcd: {layout: hertz, prefix: hertz/registry-etcd}\n    check: none\n"),
        7,
        "register.1.address: the etcd key hertz/registry-etcd/shop/10.0.0.7:8080 is already registered in the etcd registry by register.0",
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
    rejects(
        &format!(
            "{ENTRY}    check:\n      tcp: 127.0.0.1:1\n      timeout: 0s\n      interval: 1s\n"
        ),
        7,
        "register.0.check.timeout: must be greater than 0",
    );
    rejects(
        &format!(
            "{ENTRY}    check:\n      tcp: 127.0.0.1:1\n      interval: 1s\n      timeout: 1s\n"
        ),
        8,
        "register.0.check.timeout: must be less than the interval",
    );
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

#[test]
fn rejects_one_instance_registered_twice_in_any_registry() {
    for (registry, what) in [
        ("file", "10.0.0.7:8080 as shop"),
        ("zookeeper", "the ZooKeeper node /shop/10.0.0.7:8080"),
        ("consul", "the Consul service ID shop:10.0.0.7:8080"),
    ] {
        let entry =
            format!("  - service: shop\n    address: 10.0.0.7:8080\n    registry: {registry}\n    check: none\n");
        rejects(
            &format!("register:\n{entry}{entry}"),
            7,
            &format!(
                "register.1.address: {what} is already registered in the {registry} registry by register.0"
            ),
        );
    }
}
