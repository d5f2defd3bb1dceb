//! The Consul part of the schema: `registry.consul:` (the local agent waypost talks to, and the
//! defaults of every Consul registration), `services.<name>.resolver.consul:`, and the Consul
//! side of a registration's health check (`register[].check.consul:`).
//!
//! waypost talks to the **local agent**, as Hertz, Kitex and go-kit do: registrations are agent
//! state (the agent runs their checks and syncs them to the catalog), and reads go through the
//! agent to the servers. The `check.consul` rules live here too, so `register.rs` only calls
//! [`validate_entry`].

use std::path::PathBuf;

use serde::Deserialize;

use super::{Dur, RegisterEntry};

/// Consul's own floor for `DeregisterCriticalServiceAfter`: shorter values are raised to it
/// (`website/content/docs/…/check.mdx`), so accepting them would only mislead.
pub const MIN_DEREGISTER_CRITICAL_AFTER: std::time::Duration = std::time::Duration::from_secs(60);
/// The longest blocking-query wait Consul honours; longer ones are cut to it (`blocking.mdx`).
pub const MAX_WAIT: std::time::Duration = std::time::Duration::from_secs(600);
/// The shortest blocking-query wait accepted: below it the watch is a poll at a high rate.
const MIN_WAIT: std::time::Duration = std::time::Duration::from_millis(100);
/// The shortest TTL: renewals run at a third of it and must fit one agent round trip.
const MIN_TTL: std::time::Duration = std::time::Duration::from_secs(1);

/// `registry.consul.scheme` — how to reach the agent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConsulScheme {
    /// Plain HTTP (the agent's default port 8500).
    #[default]
    Http,
    /// HTTPS (the agent's `ports.https`), verified against `registry.consul.tls.ca`.
    Https,
}

/// `registry.consul:` — the local agent and the defaults of every Consul registration.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConsulRegistryConfig {
    /// The agent as `host:port` (default `127.0.0.1:8500`; in Kubernetes usually
    /// `${HOST_IP}:8500`, the node's agent).
    pub address: String,
    /// `http` (default) or `https`.
    pub scheme: ConsulScheme,
    /// ACL token sent as `X-Consul-Token` (use `${VAR}`); empty means none (the agent's
    /// default token applies).
    pub token: Option<String>,
    /// Datacenter of every read (`?dc=`); default: the agent's own.
    pub datacenter: Option<String>,
    /// Time allowed for one request that does not block (default 5s).
    pub request_timeout: Dur,
    /// How long one blocking query may wait for a change (default 5m, Consul's default; at
    /// most 10m, Consul's cap).
    pub wait: Dur,
    /// TLS towards the agent (required by `scheme: https`).
    pub tls: Option<ConsulTlsConfig>,
    /// TTL of the TTL check waypost passes for each registration (default 10s); renewals — a
    /// pass, or for `http`/`tcp` checks a look-up of the service — run at a third of it.
    pub ttl: Dur,
    /// `DeregisterCriticalServiceAfter` of every registration's check (default 1m, Consul's
    /// minimum): a registration whose check stays critical this long is removed by the agent.
    pub deregister_critical_after: Dur,
}

impl Default for ConsulRegistryConfig {
    fn default() -> Self {
        Self {
            address: "127.0.0.1:8500".into(),
            scheme: ConsulScheme::Http,
            token: None,
            datacenter: None,
            request_timeout: Dur::from_secs(5),
            wait: Dur::from_secs(300),
            tls: None,
            ttl: Dur::from_secs(10),
            deregister_critical_after: Dur::from_secs(60),
        }
    }
}

/// `registry.consul.tls:` — PEM files for rustls.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsulTlsConfig {
    /// CA certificate(s) that sign the agent's certificate.
    pub ca: PathBuf,
    /// Client certificate chain, for agents with `verify_incoming` (with `key`).
    pub cert: Option<PathBuf>,
    /// Private key of `cert`.
    pub key: Option<PathBuf>,
    /// Name to verify in the agent's certificate (default: the host of `address`).
    pub server_name: Option<String>,
}

/// `services.<name>.resolver.consul:` — which entries of the health endpoint are the service.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsulResolverConfig {
    /// Service name in Consul (default: the service's own name). Names the Go frameworks
    /// register need not be host names (`Echo.Service`), hence this.
    pub service: Option<String>,
    /// Only instances carrying this tag (`?tag=`; a Hertz/Kitex tag is `key:value`).
    pub tag: Option<String>,
    /// Only instances whose every check passes (`?passing=1`, default). With `false`, instances
    /// with a warning check stay, weighted by `Weights.Warning`; critical ones are left out.
    #[serde(default = "yes")]
    pub passing_only: bool,
}

fn yes() -> bool {
    true
}

impl Default for ConsulResolverConfig {
    fn default() -> Self {
        Self {
            service: None,
            tag: None,
            passing_only: true,
        }
    }
}

/// `register[].check.consul` — who tells Consul that the instance is healthy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConsulCheckKind {
    /// A TTL check that waypost passes while its health gate is green (the default): a waypost
    /// that dies stops passing it, and the instance turns critical within the TTL.
    #[default]
    Ttl,
    /// An HTTP check Consul runs itself: waypost's check URL with the registered IP as its host.
    Http,
    /// A TCP check Consul runs itself: the port waypost's check probes, at the registered IP
    /// (Hertz's and Kitex's default check).
    Tcp,
}

impl ConsulCheckKind {
    /// The config spelling, also shown by `/debug/registrations`.
    pub fn as_str(self) -> &'static str {
        match self {
            ConsulCheckKind::Ttl => "ttl",
            ConsulCheckKind::Http => "http",
            ConsulCheckKind::Tcp => "tcp",
        }
    }
}

impl ConsulRegistryConfig {
    /// The token to send, if any (`${VAR:-}` expanding to nothing means none).
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref().filter(|t| !t.is_empty())
    }

    /// The host part of `address` (brackets removed from an IPv6 literal).
    pub fn host(&self) -> &str {
        let host = self
            .address
            .rsplit_once(':')
            .map_or(self.address.as_str(), |(h, _)| h);
        host.trim_start_matches('[').trim_end_matches(']')
    }

    /// Checks the block; `base` is its key path (`registry.consul`).
    pub fn validate(&self, base: &str) -> Result<(), (String, String)> {
        check_address(&self.address).map_err(|m| (format!("{base}.address"), m))?;
        match (self.scheme, &self.tls) {
            (ConsulScheme::Https, None) => {
                return Err((
                    format!("{base}.scheme"),
                    "https needs `registry.consul.tls` (at least `ca`)".into(),
                ))
            }
            (ConsulScheme::Http, Some(_)) => {
                return Err((format!("{base}.tls"), "TLS needs `scheme: https`".into()))
            }
            _ => {}
        }
        if let Some(tls) = &self.tls {
            let tls_base = format!("{base}.tls");
            super::validate::cert_and_key(tls.cert.is_some(), tls.key.is_some(), &tls_base)?;
        }
        if let Some(t) = self.token() {
            if !t.bytes().all(|b| b.is_ascii_graphic()) {
                return Err((
                    format!("{base}.token"),
                    "must be printable ASCII without spaces (it is sent as a header)".into(),
                ));
            }
        }
        if let Some(dc) = &self.datacenter {
            let ok = !dc.is_empty()
                && dc
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
            if !ok {
                return Err((
                    format!("{base}.datacenter"),
                    format!("{dc:?} is not a datacenter name (letters, digits, '-', '_', '.')"),
                ));
            }
        }
        if self.request_timeout.0.is_zero() {
            return Err((
                format!("{base}.request_timeout"),
                "must be greater than 0".into(),
            ));
        }
        if !(MIN_WAIT..=MAX_WAIT).contains(&self.wait.0) {
            return Err((
                format!("{base}.wait"),
                "must be between 100ms and 10m (Consul cuts longer waits to 10m)".into(),
            ));
        }
        if self.ttl.0 < MIN_TTL {
            return Err((
                format!("{base}.ttl"),
                "must be at least 1s (renewals run at a third of it)".into(),
            ));
        }
        if self.deregister_critical_after.0 < MIN_DEREGISTER_CRITICAL_AFTER {
            return Err((
                format!("{base}.deregister_critical_after"),
                "must be at least 1m (Consul raises shorter values to 1m)".into(),
            ));
        }
        Ok(())
    }
}

impl ConsulResolverConfig {
    /// Checks the block; `base` is its key path.
    pub fn validate(&self, base: &str) -> Result<(), (String, String)> {
        if let Some(name) = &self.service {
            check_service_name(name).map_err(|m| (format!("{base}.service"), m))?;
        }
        if let Some(tag) = &self.tag {
            if tag.is_empty() || tag.chars().any(char::is_control) {
                return Err((
                    format!("{base}.tag"),
                    "must be non-empty, without control characters".into(),
                ));
            }
        }
        Ok(())
    }
}

/// Checks the Consul side of register entry `i` (`base` = `register.<i>`): `check.consul`
/// applies to `registry: consul` only, and an `http` check needs an HTTP probe to copy.
pub(super) fn validate_entry(entry: &RegisterEntry, base: &str) -> Result<(), (String, String)> {
    use super::{CheckConfig, RegistryKind};
    let Some(CheckConfig::Probe(probe)) = &entry.check else {
        return Ok(());
    };
    match (probe.consul, entry.registry) {
        (None, _) => Ok(()),
        (Some(_), kind) if kind != RegistryKind::Consul => Err((
            format!("{base}.check.consul"),
            "applies only to `registry: consul`".into(),
        )),
        (Some(ConsulCheckKind::Http), _) if probe.http.is_none() => Err((
            format!("{base}.check.consul"),
            "an `http` Consul check runs waypost's `http:` check: give `http: <URL>`, or use `tcp`/`ttl`"
                .into(),
        )),
        _ => Ok(()),
    }
}

/// A Consul service name as waypost sends it: non-empty, without `/` (it is a path segment),
/// whitespace or control characters. Other characters are percent-encoded on the wire.
pub fn check_service_name(name: &str) -> Result<(), String> {
    if name.is_empty()
        || name.len() > 255
        || name.contains('/')
        || name.chars().any(|c| c.is_control() || c.is_whitespace())
    {
        return Err(format!(
            "invalid Consul service name {name:?}: must be 1 to 255 characters, without '/', spaces or control characters"
        ));
    }
    Ok(())
}

/// Checks `host:port` (an IPv6 host in brackets): an etcd endpoint without scheme or slash.
fn check_address(addr: &str) -> Result<(), String> {
    match super::etcd::check_endpoint(addr) {
        Ok(None) if !addr.ends_with('/') => Ok(()),
        _ => Err(format!("invalid agent address {addr:?}: expected host:port such as \"127.0.0.1:8500\" (the scheme is `scheme:`)")),
    }
}

#[cfg(test)]
mod tests;
