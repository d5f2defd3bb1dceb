//! Config parsing and validation: every rule has a rejection test with inline YAML, and every
//! error names the line, column and key.

use super::*;

pub(super) fn parse(text: &str) -> Result<Config, ConfigError> {
    load_str("test.yaml", text, &|name| {
        (name == "POD_IP").then(|| "10.0.0.7".to_string())
    })
}

pub(super) fn rejects(text: &str, line: usize, needle: &str) {
    let e = parse(text).expect_err("must be rejected");
    let shown = e.to_string();
    assert_eq!(e.line, Some(line), "wrong line in: {shown}");
    assert!(e.column.is_some(), "no column in: {shown}");
    assert!(shown.starts_with("test.yaml:"), "{shown}");
    assert!(
        shown.contains(needle),
        "{shown:?} should mention {needle:?}"
    );
}

const GOOD: &str = "
listen: ${POD_IP:-127.0.0.1}:18080
admin:
  listen: 127.0.0.1:18090
discovery:
  refresh_interval: 2s
services:
  echo:
    listen: 127.0.0.1:18081
    resolver:
      static:
        instances:
          - address: 127.0.0.1:19001
            weight: 3
            tags: {zone: a}
          - address: 127.0.0.1:19002
  users:
    refresh_interval: 250ms
    upstream: {timeout: 2s}
    resolver:
      file: {name: users-v2}
";

#[test]
fn parses_a_full_config_with_defaults() {
    let c = parse(GOOD).unwrap();
    assert_eq!(c.listen.to_string(), "10.0.0.7:18080");
    assert_eq!(c.services.len(), 2);
    let echo = &c.services[&ServiceName::parse("echo").unwrap()];
    let ResolverConfig::Static(s) = &echo.resolver else {
        panic!("static")
    };
    assert_eq!(s.instances[1].weight, 1, "default weight");
    assert_eq!(
        echo.refresh_interval, None,
        "falls back to the global interval"
    );
    assert_eq!(c.discovery.refresh_interval, Dur::from_secs(2));
    let users = &c.services[&ServiceName::parse("users").unwrap()];
    assert_eq!(users.refresh_interval, Some(Dur::parse("250ms").unwrap()));
    assert_eq!(c.upstream.connect_timeout, Dur::from_secs(1));
    assert_eq!(c.shutdown.grace, Dur::from_secs(10));
}

#[test]
fn empty_file_is_all_defaults() {
    for text in [
        "",
        "\n  \n",
        "# nothing here\n# yet\n",
        "---\n",
        "---\n# only a comment\n",
    ] {
        let c = parse(text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
        assert_eq!(c.listen.to_string(), DEFAULT_LISTEN, "{text:?}");
        assert_eq!(c.admin.listen.to_string(), DEFAULT_ADMIN_LISTEN, "{text:?}");
        assert!(c.services.is_empty(), "{text:?}");
        assert_eq!(
            c.runtime.workers, 1,
            "a sidecar runs single-threaded unless told otherwise"
        );
    }
}

#[test]
fn omitted_keys_take_their_defaults() {
    // Keys left out of a section that is present get the same values as a missing section.
    let c = parse("upstream:\n  timeout: 3s\ndiscovery:\n  guard:\n    confirm: 2\ndns:\n  attempts: 4\nlog:\n  format: json\n").unwrap();
    assert_eq!(c.upstream.timeout, Dur::from_secs(3));
    assert_eq!(c.upstream.connect_timeout, Dur::from_secs(1));
    assert_eq!(c.upstream.buffer_size, 32 * 1024);
    assert_eq!(c.discovery.guard.confirm, 2);
    assert_eq!(c.discovery.guard.max_removal, 0.5);
    assert_eq!(c.discovery.refresh_interval, Dur::from_secs(5));
    assert_eq!(c.discovery.backoff.max, Dur::from_secs(30));
    assert_eq!(c.dns.attempts, 4);
    assert_eq!(c.dns.timeout, Dur::from_secs(2));
    assert_eq!(c.log.format, LogFormat::Json);
    assert_eq!(c.log.level, "info");
}

#[test]
fn rejects_unknown_keys() {
    rejects(
        "listen: 127.0.0.1:1\nlisten_x: 1\n",
        2,
        "unknown field `listen_x`",
    );
    rejects(
        "services:\n  echo:\n    resolver: {static: {instances: []}}\n    wieght: 3\n",
        4,
        "wieght",
    );
    // Sections whose keys all have defaults still refuse unknown keys, at the key's position.
    rejects(
        "discovery:\n  guard:\n    confirm: 2\n    max_remove: 0.3\n",
        4,
        "discovery.guard: unknown field `max_remove`",
    );
    rejects(
        "upstream:\n  timeout: 2s\n  bufer_size: 9000\n",
        3,
        "upstream: unknown field `bufer_size`",
    );
    rejects("dns:\n  attempt: 3\n", 2, "dns: unknown field `attempt`");
}

#[test]
fn rejects_wrong_types() {
    rejects("runtime:\n  workers: many\n", 2, "runtime.workers");
    rejects(
        "services:\n  echo:\n    resolver:\n      static:\n        instances:\n          - address: 127.0.0.1:1\n            weight: heavy\n",
        7,
        "weight",
    );
}

#[test]
fn rejects_bad_durations() {
    rejects("discovery:\n  refresh_interval: 5\n", 2, "has no unit");
    rejects(
        "discovery:\n  refresh_interval: 5 minutes\n",
        2,
        "invalid duration",
    );
    rejects(
        "discovery:\n  refresh_interval: 0s\n",
        2,
        "discovery.refresh_interval",
    );
}

#[test]
fn rejects_bad_addresses() {
    rejects("admin:\n  listen: localhost:80\n", 2, "invalid address");
    rejects(
        "services:\n  echo:\n    resolver:\n      static:\n        instances:\n          - address: 127.0.0.1\n",
        6,
        "invalid address",
    );
    rejects(
        "services:\n  echo:\n    resolver:\n      static:\n        instances:\n          - address: 127.0.0.1:0\n",
        6,
        "port 0",
    );
}

#[test]
fn rejects_yaml_syntax_errors() {
    rejects(
        "listen: 127.0.0.1:1\nservices:\n  echo: {resolver: {file: {}}\nadmin: {}\n",
        4,
        "did not find expected",
    );
    rejects(
        "listen: 127.0.0.1:1\nadmin:\n\tlisten: 127.0.0.1:2\n",
        3,
        "cannot start any token",
    );
}

#[test]
fn rejects_cross_key_conflicts() {
    rejects(
        "listen: 127.0.0.1:5000\nadmin:\n  listen: 127.0.0.1:5000\n",
        3,
        "admin.listen",
    );
    rejects(
        "listen: 127.0.0.1:5000\nservices:\n  echo:\n    listen: 127.0.0.1:5000\n    resolver: {file: {}}\n",
        4,
        "already used by `listen`",
    );
    rejects(
        "services:\n  echo:\n    resolver:\n      static:\n        instances: []\n",
        5,
        "at least one instance",
    );
    rejects("discovery:\n  jitter: 1.5\n", 2, "discovery.jitter");
    rejects(
        "discovery:\n  guard:\n    confirm: 0\n",
        3,
        "discovery.guard.confirm",
    );
    rejects(
        "discovery:\n  backoff:\n    initial: 10s\n    max: 1s\n",
        4,
        "discovery.backoff.max",
    );
}

#[test]
fn rejects_out_of_range_values() {
    rejects(
        "upstream:\n  buffer_size: 4096\n",
        2,
        "upstream.buffer_size: must be at least 8192",
    );
    rejects(
        "discovery:\n  guard:\n    max_removal: 1.5\n",
        3,
        "discovery.guard.max_removal: must be between 0 and 1",
    );
    rejects(
        "dns:\n  timeout: 0s\n",
        2,
        "dns.timeout: must be greater than 0",
    );
    rejects(
        "dns:\n  attempts: 0\n",
        2,
        "dns.attempts: must be at least 1",
    );
    rejects(
        "services:\n  echo:\n    refresh_interval: 0s\n    resolver: {file: {}}\n",
        3,
        "services.echo.refresh_interval: must be greater than 0",
    );
    rejects(
        "dns:\n  min_ttl: 0s\n",
        2,
        "dns.min_ttl: must be greater than 0",
    );
    rejects(
        "discovery:\n  on_demand:\n    - suffix: .svc\n      refresh_interval: 0s\n      resolver: {file: {}}\n",
        4,
        "discovery.on_demand.0.refresh_interval: must be greater than 0",
    );
}

#[test]
fn rejects_bad_names_and_resolvers() {
    rejects(
        "services:\n  Echo:\n    resolver: {file: {}}\n",
        2,
        "invalid service name",
    );
    rejects(
        "services:\n  echo:\n    resolver:\n      nacos: {}\n",
        4,
        "unknown variant `nacos`",
    );
    rejects(
        "services:\n  echo:\n    listen: 127.0.0.1:1\n",
        3,
        "services.echo: missing field `resolver`",
    );
}

#[test]
fn rejects_unset_variables() {
    rejects(
        "listen: 127.0.0.1:1\nadmin:\n  listen: ${NOT_SET}:80\n",
        3,
        "NOT_SET",
    );
}

#[test]
fn every_shipped_config_is_valid() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            let text = std::fs::read_to_string(&path).unwrap();
            // The pod's IP is the one variable a shipped config may require: it is what
            // `register:` announces, and no default would be right.
            let pod_ip = |name: &str| (name == "POD_IP").then(|| "10.0.0.7".to_string());
            load_str(&path.display().to_string(), &text, &pod_ip).unwrap_or_else(|e| panic!("{e}"));
            seen += 1;
        }
    }
    assert!(seen >= 2, "configs/ must hold the example configs");
}

#[test]
fn dns_and_on_demand_rules() {
    let ok = "dns:\n  nameservers: [127.0.0.1:5353]\ndiscovery:\n  on_demand:\n    - suffix: .svc.cluster.local\n      resolver: {dns: {port: 8080}}\nservices:\n  users:\n    resolver:\n      dns: {srv: _http._tcp.users.default.svc.cluster.local}\n  orders:\n    resolver:\n      dns: {name: orders.default.svc.cluster.local, port: 80}\n";
    let c = parse(ok).unwrap();
    let rule = &c.discovery.on_demand[0];
    assert!(rule.covers("echo.default.svc.cluster.local"));
    assert!(!rule.covers("example.com"));
    assert!(
        !rule.covers(".svc.cluster.local"),
        "a suffix does not cover itself"
    );
    assert!(
        !rule.covers("a b.svc.cluster.local"),
        "only well-formed host names"
    );
    rejects(
        "services:\n  a:\n    resolver:\n      dns: {}\n",
        4,
        "needs `port`",
    );
    rejects(
        "services:\n  a:\n    resolver:\n      dns:\n        srv: _x._tcp.a\n        port: 80\n",
        6,
        "not both",
    );
    rejects(
        "services:\n  a:\n    resolver:\n      dns:\n        srv: a.b\n",
        5,
        "not an SRV name",
    );
    rejects(
        "services:\n  a:\n    resolver:\n      dns:\n        port: 0\n",
        5,
        "between 1 and 65535",
    );
    rejects(
        "discovery:\n  on_demand:\n    - suffix: svc.local\n      resolver: {dns: {port: 80}}\n",
        3,
        "starting with a dot",
    );
    rejects(
        "discovery:\n  on_demand:\n    - suffix: .local\n      resolver:\n        static: {instances: [{address: 127.0.0.1:1}]}\n",
        4,
        "static lists cannot resolve names on demand",
    );
    rejects("discovery:\n  on_demand:\n    - suffix: .local\n      resolver:\n        dns: {name: x.local, port: 80}\n", 5, "only `port`");
    rejects(
        "discovery:\n  on_demand:\n    - suffix: .local\n      resolver:\n        file:\n          name: users\n",
        6,
        "discovery.on_demand.0.resolver.file.name: an on-demand rule resolves the requested name",
    );
    rejects(
        "services:\n  a:\n    resolver:\n      dns:\n        srv: _http._tcp.a.local\n        name: a.local\n",
        6,
        "services.a.resolver.dns.name: give `srv` or `name` + `port`, not both",
    );
    rejects(
        "services:\n  a:\n    resolver:\n      dns:\n        name: a/b.local\n        port: 80\n",
        5,
        "services.a.resolver.dns.name: invalid service name",
    );
    rejects("dns:\n  min_ttl: 10s\n  max_ttl: 1s\n", 3, "dns.max_ttl");
    rejects("dns:\n  nameservers: [8.8.8.8]\n", 2, "invalid address");
}

#[test]
fn etcd_registry_and_resolvers() {
    let c = parse(
        "registry:\n  etcd:\n    endpoints: [10.0.0.1:2379, \"http://etcd-1:2379\"]\n    username: waypost\n    password: ${POD_IP}\n    lease_ttl: 15s\n    layout: kitex\n    prefix: shop\nservices:\n  echo:\n    resolver: {etcd: {}}\n  users:\n    resolver:\n      etcd: {layout: grpc, prefix: foo/bar, name: Users.Service}\n",
    )
    .unwrap();
    let e = &c.registry.etcd;
    assert_eq!(e.endpoints.len(), 2);
    assert_eq!(
        e.password.as_deref(),
        Some("10.0.0.7"),
        "variables expand in secrets"
    );
    assert_eq!(e.lease_ttl, Dur::from_secs(15));
    assert_eq!(e.request_timeout, Dur::from_secs(3), "default");
    let ResolverConfig::Etcd(users) = &c.services[&ServiceName::parse("users").unwrap()].resolver
    else {
        panic!("etcd resolver")
    };
    assert_eq!(users.layout, Some(EtcdLayout::Grpc));
    assert_eq!(users.name.as_deref(), Some("Users.Service"));
    assert_eq!(
        e.layout_and_prefix(None, None),
        (EtcdLayout::Kitex, "shop".to_string())
    );
    // Defaults: one local member, Hertz, 10s leases.
    let d = parse("").unwrap().registry.etcd;
    assert_eq!(d.endpoints, ["127.0.0.1:2379"]);
    assert_eq!(
        (d.layout, d.lease_ttl),
        (EtcdLayout::Hertz, Dur::from_secs(10))
    );
    // On demand: the requested name is the etcd service name.
    parse(
        "discovery:\n  on_demand:\n    - suffix: .etcd\n      resolver: {etcd: {layout: kitex}}\n",
    )
    .unwrap();
}

#[test]
fn rejects_bad_etcd_settings() {
    let r = |body: &str| format!("registry:\n  etcd:\n{body}");
    rejects(
        &r("    endpoints: []\n"),
        3,
        "registry.etcd.endpoints: needs at least one",
    );
    rejects(
        &r("    endpoints: [\"127.0.0.1\"]\n"),
        3,
        "registry.etcd.endpoints.0: invalid endpoint",
    );
    rejects(
        &r("    endpoints: [\"https://etcd:2379\"]\n"),
        3,
        "needs `registry.etcd.tls`",
    );
    rejects(
        &r("    endpoints:\n      - \"http://etcd:2379\"\n    tls: {ca: /ca.pem}\n"),
        4,
        "cannot use TLS",
    );
    rejects(
        &r("    dial_timeout: 0s\n"),
        3,
        "registry.etcd.dial_timeout",
    );
    rejects(
        &r("    request_timeout: 0s\n"),
        3,
        "registry.etcd.request_timeout",
    );
    rejects(
        &r("    username: u\n"),
        3,
        "registry.etcd.username: needs `password`",
    );
    rejects(
        &r("    password: p\n"),
        3,
        "registry.etcd.password: needs `username`",
    );
    rejects(
        &r("    username: \"\"\n    password: p\n"),
        3,
        "must not be empty",
    );
    rejects(
        &r("    tls:\n      ca: /ca.pem\n      cert: /c.pem\n"),
        5,
        "registry.etcd.tls.cert: needs `key`",
    );
    rejects(
        &r("    tls:\n      ca: /ca.pem\n      key: /k.pem\n"),
        5,
        "registry.etcd.tls.key: needs `cert`",
    );
    rejects(&r("    tls: {cert: /c.pem}\n"), 3, "missing field `ca`");
    rejects(&r("    lease_ttl: 1s\n"), 3, "at least 2s");
    rejects(&r("    lease_ttl: 2500ms\n"), 3, "whole seconds");
    rejects(&r("    layout: nacos\n"), 3, "unknown variant `nacos`");
    rejects(&r("    prefix: kitex/\n"), 3, "must not end with '/'");
    rejects(&r("    lease: 10s\n"), 3, "unknown field `lease`");
    rejects(
        "services:\n  echo:\n    resolver:\n      etcd: {prefix: a/}\n",
        4,
        "services.echo.resolver.etcd.prefix",
    );
    rejects(
        "services:\n  echo:\n    resolver:\n      etcd:\n        name: a/b\n",
        5,
        "services.echo.resolver.etcd.name: invalid etcd service name",
    );
    rejects(
        "services:\n  echo:\n    resolver:\n      etcd: {layout: zk}\n",
        4,
        "unknown variant `zk`",
    );
    rejects(
        "discovery:\n  on_demand:\n    - suffix: .etcd\n      resolver:\n        etcd:\n          name: x\n",
        6,
        "remove `name`",
    );
}

#[test]
fn client_section_defaults_and_values() {
    let c = parse("").unwrap();
    assert_eq!(c.client.header_timeout, Dur::from_secs(10));
    assert_eq!(c.client.idle_timeout, Dur::from_secs(60));
    assert_eq!(c.client.body_timeout, Dur::from_secs(30));
    assert_eq!(c.client.max_head_size, Size(64 * 1024));
    assert_eq!(c.client.max_headers, 100);
    assert_eq!(c.client.http2.max_concurrent_streams, 256);
    assert_eq!(c.client.http2_max_header_list_size(), 64 * 1024);
    assert_eq!(c.client.http2.max_pending_accept_reset_streams, 20);
    assert_eq!(c.client.http2.max_local_error_reset_streams, 1024);
    assert_eq!(c.client.http2.keep_alive_interval, None);
    let c = parse(
        "client:\n  header_timeout: 2s\n  max_head_size: 16KiB\n  max_headers: 50\n  http2:\n    keep_alive_interval: 30s\n    max_header_list_size: 32768\n",
    )
    .unwrap();
    assert_eq!(c.client.header_timeout, Dur::from_secs(2));
    assert_eq!(c.client.max_head_size, Size(16 * 1024));
    assert_eq!(c.client.max_headers, 50);
    assert_eq!(c.client.http2.keep_alive_interval, Some(Dur::from_secs(30)));
    assert_eq!(c.client.http2_max_header_list_size(), 32768);
    // Unset, the HTTP/2 header list limit follows the HTTP/1 head limit.
    let c = parse("client:\n  max_head_size: 8KiB\n").unwrap();
    assert_eq!(c.client.http2_max_header_list_size(), 8 * 1024);
}

#[test]
fn rejects_bad_client_values() {
    for key in ["header_timeout", "idle_timeout", "body_timeout"] {
        rejects(
            &format!("client:\n  {key}: 0s\n"),
            2,
            &format!("client.{key}: must be greater than 0"),
        );
    }
    rejects(
        "client:\n  http2:\n    keep_alive_timeout: 0s\n",
        3,
        "client.http2.keep_alive_timeout: must be greater than 0",
    );
    rejects(
        "client:\n  http2:\n    keep_alive_interval: 0s\n",
        3,
        "client.http2.keep_alive_interval: must be greater than 0",
    );
    rejects(
        "client:\n  max_head_size: 512\n",
        2,
        "client.max_head_size: must be between 1024",
    );
    rejects(
        "client:\n  max_head_size: 2MiB\n",
        2,
        "client.max_head_size: must be between 1024",
    );
    rejects("client:\n  max_head_size: 64kb\n", 2, "invalid size");
    rejects(
        "client:\n  http2:\n    max_header_list_size: 100\n",
        3,
        "client.http2.max_header_list_size: must be between 1024",
    );
    rejects(
        "client:\n  max_headers: 0\n",
        2,
        "client.max_headers: must be between 1 and 1024",
    );
    rejects(
        "client:\n  max_headers: 1025\n",
        2,
        "client.max_headers: must be between 1 and 1024",
    );
    for key in [
        "max_concurrent_streams",
        "max_pending_accept_reset_streams",
        "max_local_error_reset_streams",
    ] {
        rejects(
            &format!("client:\n  http2:\n    {key}: 0\n"),
            3,
            &format!("client.http2.{key}: must be at least 1"),
        );
    }
    rejects(
        "client:\n  header_timout: 1s\n",
        2,
        "client: unknown field `header_timout`",
    );
}
