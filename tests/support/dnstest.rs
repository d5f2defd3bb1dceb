//! Shared pieces of the DNS test files (`tests/dns.rs`, `tests/dns_failures.rs`): the per-test
//! deadline, the config they build, the services they declare, and readers of
//! `/debug/services`.
//!
//! A change to the records settles within [`super::SETTLE`]: a refresh is due every ~1 s (the
//! records' TTL of 1 s, clamped to `dns.min_ttl`).

use std::net::SocketAddr;
use std::time::Duration;

use super::{debug_service, metric, metrics, TestProxy};

/// Every test finishes within this (run it under [`super::within`]), or fails.
pub const TEST_DEADLINE: Duration = Duration::from_secs(20);

/// A config: `dns:` pointing at `nameserver` (plus `dns_extra` keys; TTL bounds 1s..30s unless
/// given), `discovery:` with a refresh interval of an hour plus `discovery` keys, and
/// `services` (entries as [`a_service`] and [`srv_service`] write them; none when empty).
///
/// The hour-long `refresh_interval` is deliberate: DNS answers carry a TTL, which replaces the
/// refresh interval, so a test that sees records changed at run time picked up within seconds
/// proves the TTL scheduled the refresh.
pub fn config(nameserver: &str, dns_extra: &str, discovery: &str, services: &str) -> String {
    let ttl = if dns_extra.contains("min_ttl") {
        ""
    } else {
        ", min_ttl: 1s, max_ttl: 30s"
    };
    let services = if services.is_empty() {
        String::new()
    } else {
        format!("services:\n{services}")
    };
    format!(
        "dns: {{nameservers: [\"{nameserver}\"]{ttl}{dns_extra}}}\n\
         discovery: {{refresh_interval: 1h{discovery}}}\n{services}"
    )
}

/// YAML for a service `name` resolved from the A/AAAA records of `dns_name`, on `port`.
pub fn a_service(name: &str, dns_name: &str, port: u16) -> String {
    format!("  {name}:\n    resolver: {{dns: {{name: {dns_name}, port: {port}}}}}\n")
}

/// YAML for a service `name` resolved from the SRV records of `srv`.
pub fn srv_service(name: &str, srv: &str) -> String {
    format!("  {name}:\n    resolver: {{dns: {{srv: {srv}}}}}\n")
}

/// The instance addresses `/debug/services` shows for `name`, sorted (none when not cached).
pub async fn instance_addrs(proxy: &TestProxy, name: &str) -> Vec<String> {
    let Some(svc) = debug_service(proxy, name).await else {
        return Vec::new();
    };
    let mut addrs: Vec<String> = svc["instances"]
        .as_array()
        .unwrap_or_else(|| panic!("{name}: no `instances` array: {svc}"))
        .iter()
        .map(|i| {
            i["address"]
                .as_str()
                .unwrap_or_else(|| panic!("{name}: instance without an address: {svc}"))
                .to_string()
        })
        .collect();
    addrs.sort();
    addrs
}

/// The `(address, weight)` of each instance `/debug/services` shows for `name`, sorted (none
/// when not cached).
pub async fn instance_weights(proxy: &TestProxy, name: &str) -> Vec<(String, u64)> {
    let Some(svc) = debug_service(proxy, name).await else {
        return Vec::new();
    };
    let mut weights: Vec<(String, u64)> = svc["instances"]
        .as_array()
        .unwrap_or_else(|| panic!("{name}: no `instances` array: {svc}"))
        .iter()
        .map(|i| {
            let address = i["address"]
                .as_str()
                .unwrap_or_else(|| panic!("{name}: instance without an address: {svc}"));
            let weight = i["weight"]
                .as_u64()
                .unwrap_or_else(|| panic!("{name}: instance without a weight: {svc}"));
            (address.to_string(), weight)
        })
        .collect();
    weights.sort();
    weights
}

/// `waypost_discovery_refresh_total` of `service` with `result` (`changed`, `unchanged`,
/// `held`, `error`); 0 before the first such refresh.
pub async fn refreshes(proxy: &TestProxy, service: &str, result: &str) -> f64 {
    let text = metrics(proxy).await;
    metric(
        &text,
        "waypost_discovery_refresh_total",
        &[("service", service), ("result", result)],
    )
    .unwrap_or(0.0)
}

/// `ip:port` as `/debug/services` writes instance addresses.
pub fn addr(ip: &str, port: u16) -> String {
    SocketAddr::new(ip.parse().unwrap(), port).to_string()
}
