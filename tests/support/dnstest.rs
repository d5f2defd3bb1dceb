//! Shared pieces of the DNS test files (`tests/dns.rs`, `tests/dns_failures.rs`): the per-test
//! deadline, the config they build, and readers of `/debug/services` and `/metrics`.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;

use super::{get, TestProxy};

/// Every test finishes within this, or fails.
pub const TEST_DEADLINE: Duration = Duration::from_secs(20);
/// Deadline for one asynchronous change to settle (a refresh is due every ~1 s: the records'
/// TTL of 1 s, clamped to `dns.min_ttl`).
pub const SETTLE: Duration = Duration::from_secs(10);

pub async fn within<F: Future>(test: F) -> F::Output {
    tokio::time::timeout(TEST_DEADLINE, test)
        .await
        .expect("test did not finish within its deadline")
}

/// A config: `dns:` pointing at `nameserver` (plus `dns_extra` keys; TTL bounds 1s..30s unless
/// given), `discovery:` with a 1 s refresh interval plus `discovery` keys, and `rest` (services)
/// appended as is.
pub fn config(nameserver: &str, dns_extra: &str, discovery: &str, rest: &str) -> String {
    let ttl = if dns_extra.contains("min_ttl") {
        ""
    } else {
        ", min_ttl: 1s, max_ttl: 30s"
    };
    format!(
        "dns: {{nameservers: [\"{nameserver}\"]{ttl}{dns_extra}}}\n\
         discovery: {{refresh_interval: 1s{discovery}}}\n{rest}"
    )
}

/// The `/debug/services` entry of `name`, if cached.
pub async fn debug_service(proxy: &TestProxy, name: &str) -> Option<Value> {
    let got = get(&format!("{}/debug/services", proxy.admin()), &[])
        .await
        .ok()?;
    let json: Value = serde_json::from_slice(&got.body).ok()?;
    json["services"]
        .as_array()?
        .iter()
        .find(|s| s["name"] == name)
        .cloned()
}

/// The instance addresses `/debug/services` shows for `name`, sorted.
pub async fn instance_addrs(proxy: &TestProxy, name: &str) -> Vec<String> {
    let Some(svc) = debug_service(proxy, name).await else {
        return Vec::new();
    };
    let mut addrs: Vec<String> = svc["instances"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i["address"].as_str().map(String::from))
        .collect();
    addrs.sort();
    addrs
}

pub async fn metrics(proxy: &TestProxy) -> String {
    get(&format!("{}/metrics", proxy.admin()), &[])
        .await
        .unwrap()
        .text()
}

pub fn addr(ip: &str, port: u16) -> String {
    SocketAddr::new(ip.parse().unwrap(), port).to_string()
}

/// Waits (up to [`SETTLE`]) until `/debug/services` shows `status.<field> == value` for `name`.
pub async fn await_status(proxy: &TestProxy, name: &str, field: &str, value: Value) {
    super::eventually(SETTLE, || async {
        debug_service(proxy, name)
            .await
            .is_some_and(|s| s["status"][field] == value)
    })
    .await;
}
