//! Parsing and rejection tests of the Consul keys, each rule with inline YAML.

use super::super::tests::{parse, rejects};
use super::super::{CheckConfig, ResolverConfig};
use super::*;

#[test]
fn parses_the_registry_resolvers_and_checks() {
    let c = parse(
        "registry:\n  consul:\n    address: \"[::1]:8501\"\n    scheme: https\n    token: ${POD_IP}\n    datacenter: dc-2\n    wait: 30s\n    ttl: 6s\n    deregister_critical_after: 2m\n    tls: {ca: /ca.pem, cert: /c.pem, key: /k.pem, server_name: consul.local}\nservices:\n  echo:\n    resolver: {consul: {}}\n  users:\n    resolver:\n      consul: {service: Users.Service, tag: \"zone:a\", passing_only: false}\nregister:\n  - service: shop\n    address: 10.0.0.7:8080\n    registry: consul\n    check: {http: http://127.0.0.1:8080/healthz, consul: http}\n  - service: shop\n    address: 10.0.0.7:8081\n    registry: consul\n    check: none\n",
    )
    .unwrap();
    let r = &c.registry.consul;
    assert_eq!(r.host(), "::1");
    assert_eq!(r.scheme, ConsulScheme::Https);
    assert_eq!(r.token(), Some("10.0.0.7"));
    assert_eq!(r.datacenter.as_deref(), Some("dc-2"));
    assert_eq!((r.wait, r.ttl), (Dur::from_secs(30), Dur::from_secs(6)));
    assert_eq!(r.deregister_critical_after, Dur::from_secs(120));
    assert_eq!(
        r.tls.as_ref().unwrap().server_name.as_deref(),
        Some("consul.local")
    );
    let ResolverConfig::Consul(echo) = &c.services.values().next().unwrap().resolver else {
        panic!("consul resolver")
    };
    assert!(echo.passing_only, "passing only by default");
    assert_eq!((echo.service.as_deref(), echo.tag.as_deref()), (None, None));
    let ResolverConfig::Consul(users) = &c.services.values().nth(1).unwrap().resolver else {
        panic!("consul resolver")
    };
    assert_eq!(users.service.as_deref(), Some("Users.Service"));
    assert_eq!(users.tag.as_deref(), Some("zone:a"));
    assert!(!users.passing_only);
    let Some(CheckConfig::Probe(p)) = &c.register[0].check else {
        panic!("probe")
    };
    assert_eq!(p.consul, Some(ConsulCheckKind::Http));
}

#[test]
fn defaults() {
    let r = parse("").unwrap().registry.consul;
    assert_eq!(r.address, "127.0.0.1:8500");
    assert_eq!((r.scheme, r.token()), (ConsulScheme::Http, None));
    assert_eq!(r.request_timeout, Dur::from_secs(5));
    assert_eq!(r.wait, Dur::from_secs(300));
    assert_eq!(r.ttl, Dur::from_secs(10));
    assert_eq!(r.deregister_critical_after, Dur::from_secs(60));
    // `${VAR:-}` that expands to nothing is no token at all.
    let empty = parse("registry:\n  consul:\n    token: \"\"\n").unwrap();
    assert_eq!(empty.registry.consul.token(), None);
}

#[test]
fn rejects_bad_registry_settings() {
    let r = |body: &str| format!("registry:\n  consul:\n{body}");
    rejects(
        &r("    address: consul\n"),
        3,
        "registry.consul.address: invalid agent address",
    );
    rejects(
        &r("    address: \"http://consul:8500\"\n"),
        3,
        "registry.consul.address: invalid agent address",
    );
    rejects(
        &r("    address: \"::1:8500\"\n"),
        3,
        "invalid agent address",
    );
    rejects(&r("    address: consul:0\n"), 3, "invalid agent address");
    rejects(
        &r("    address: consul:8500/\n"),
        3,
        "invalid agent address",
    );
    rejects(
        &r("    scheme: https\n"),
        3,
        "registry.consul.scheme: https needs",
    );
    rejects(&r("    scheme: ftp\n"), 3, "unknown variant `ftp`");
    rejects(
        &r("    tls: {ca: /ca.pem}\n"),
        3,
        "registry.consul.tls: TLS needs `scheme: https`",
    );
    rejects(
        &r("    scheme: https\n    tls: {ca: /ca.pem, cert: /c.pem}\n"),
        4,
        "registry.consul.tls.cert: needs `key`",
    );
    rejects(
        &r("    scheme: https\n    tls: {ca: /ca.pem, key: /k.pem}\n"),
        4,
        "registry.consul.tls.key: needs `cert`",
    );
    rejects(&r("    tls: {cert: /c.pem}\n"), 3, "missing field `ca`");
    rejects(
        &r("    token: \"a b\"\n"),
        3,
        "registry.consul.token: must be printable",
    );
    rejects(
        &r("    datacenter: \"dc 1\"\n"),
        3,
        "registry.consul.datacenter",
    );
    rejects(
        &r("    request_timeout: 0s\n"),
        3,
        "registry.consul.request_timeout",
    );
    rejects(
        &r("    wait: 50ms\n"),
        3,
        "registry.consul.wait: must be between",
    );
    rejects(
        &r("    wait: 11m\n"),
        3,
        "registry.consul.wait: must be between",
    );
    rejects(
        &r("    ttl: 900ms\n"),
        3,
        "registry.consul.ttl: must be at least 1s",
    );
    rejects(
        &r("    deregister_critical_after: 30s\n"),
        3,
        "registry.consul.deregister_critical_after: must be at least 1m",
    );
    rejects(&r("    adress: consul:8500\n"), 3, "unknown field `adress`");
}

#[test]
fn rejects_bad_resolvers() {
    let svc = |body: &str| format!("services:\n  echo:\n    resolver:\n      consul: {body}\n");
    rejects(
        &svc("{service: shop/users}"),
        4,
        "services.echo.resolver.consul.service: invalid Consul service name",
    );
    rejects(&svc("{service: \"\"}"), 4, "invalid Consul service name");
    rejects(
        &svc("{tag: \"\"}"),
        4,
        "services.echo.resolver.consul.tag: must be non-empty",
    );
    rejects(&svc("{passing: true}"), 4, "unknown field `passing`");
    rejects(
        "discovery:\n  on_demand:\n    - suffix: .consul\n      resolver: {consul: {service: x}}\n",
        4,
        "discovery.on_demand.0.resolver.consul.service: an on-demand rule resolves the requested name",
    );
    rejects(
        "discovery:\n  on_demand:\n    - suffix: .consul\n      resolver: {consul: {tag: \"\"}}\n",
        4,
        "discovery.on_demand.0.resolver.consul.tag",
    );
}

#[test]
fn rejects_consul_checks_where_they_cannot_apply() {
    let entry = |registry: &str, check: &str| {
        format!("register:\n  - service: shop\n    address: 10.0.0.7:8080\n    registry: {registry}\n    check: {check}\n")
    };
    rejects(
        &entry("file", "{tcp: 127.0.0.1:8080, consul: tcp}"),
        5,
        "register.0.check.consul: applies only to `registry: consul`",
    );
    rejects(
        &entry("consul", "{tcp: 127.0.0.1:8080, consul: http}"),
        5,
        "register.0.check.consul: an `http` Consul check runs waypost's `http:` check",
    );
    rejects(
        &entry("consul", "{tcp: 127.0.0.1:8080, consul: grpc}"),
        5,
        "unknown variant `grpc`",
    );
    // Every kind is fine where it applies.
    for check in [
        "{tcp: 127.0.0.1:8080, consul: tcp}",
        "{http: http://127.0.0.1:8080/h, consul: tcp}",
        "{http: http://127.0.0.1:8080/h, consul: http}",
        "{tcp: 127.0.0.1:8080, consul: ttl}",
        "{tcp: 127.0.0.1:8080}",
        "none",
    ] {
        parse(&entry("consul", check)).unwrap_or_else(|e| panic!("{check}: {e}"));
    }
}
