//! The `dns` resolver: instances from A/AAAA records plus a configured port, or from SRV
//! records — as Kubernetes headless Services publish them (`echo.default.svc.cluster.local`,
//! `_http._tcp.echo.default.svc.cluster.local`).
//!
//! - **SRV**: only the lowest-priority group is used; each record's weight becomes the
//!   instance weight (all-zero weights mean equal shares) and its port the instance port. A
//!   target's addresses come from the answer's additional section when the server sent them
//!   there (CoreDNS does for headless Services); the other targets are looked up concurrently.
//! - **TTL**: the answer's lowest record TTL, clamped to `dns.min_ttl..=dns.max_ttl`, becomes the
//!   resolution's TTL, which the cache uses as the refresh delay.
//! - **NXDOMAIN / no records** is a definite answer: an empty resolution. A timeout or an
//!   unreachable name server is an error, so the cache keeps serving the last good table.
//!
//! One [`DnsClient`] (a hickory resolver with its own cache disabled: the waypost cache decides
//! when to ask again) is shared by every DNS resolver of the process.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::NetError;
use hickory_resolver::proto::rr::{Name, RData, Record, RecordType};
use hickory_resolver::TokioResolver;

use crate::config::{DnsConfig, DnsResolverConfig};
use crate::discover::{BoxFuture, DiscoverError, Instance, Resolution, Resolver};

/// The process-wide DNS client.
pub struct DnsClient {
    resolver: TokioResolver,
    min_ttl: Duration,
    max_ttl: Duration,
}

impl DnsClient {
    /// A client for `dns:`: the configured name servers, or the system's when none are given.
    pub fn from_config(cfg: &DnsConfig) -> Result<Arc<Self>, DiscoverError> {
        let mut builder = if cfg.nameservers.is_empty() {
            TokioResolver::builder_tokio().map_err(|e| {
                DiscoverError::Unavailable(format!("cannot read the system DNS configuration: {e}"))
            })?
        } else {
            let servers = cfg
                .nameservers
                .iter()
                .map(|addr| {
                    let mut udp = ConnectionConfig::udp();
                    udp.port = addr.0.port();
                    let mut tcp = ConnectionConfig::tcp();
                    tcp.port = addr.0.port();
                    NameServerConfig::new(addr.0.ip(), true, vec![udp, tcp])
                })
                .collect();
            let mut b = TokioResolver::builder_with_config(
                ResolverConfig::from_name_servers(servers),
                TokioRuntimeProvider::default(),
            );
            b.options_mut().use_hosts_file = ResolveHosts::Never;
            b
        };
        let opts = builder.options_mut();
        opts.timeout = cfg.timeout.0;
        // hickory counts retries after the first try; `dns.attempts` counts tries (≥ 1). Within
        // one try hickory also resends an unanswered UDP query (same ID) about every 333 ms.
        opts.attempts = cfg.attempts.saturating_sub(1);
        // Our cache owns freshness; a second cache underneath would only delay changes.
        opts.cache_size = 0;
        let resolver = builder
            .build()
            .map_err(|e| DiscoverError::Unavailable(format!("cannot build the DNS client: {e}")))?;
        Ok(Arc::new(Self {
            resolver,
            min_ttl: cfg.min_ttl.0,
            max_ttl: cfg.max_ttl.0,
        }))
    }

    fn clamp_ttl(&self, ttl: Option<u32>) -> Duration {
        clamp_ttl(ttl, self.min_ttl, self.max_ttl)
    }

    /// Addresses of `host` (A and AAAA) and their lowest TTL; `Ok(None)` when the name does not exist.
    async fn addresses(
        &self,
        host: &str,
    ) -> Result<Option<(Vec<IpAddr>, Option<u32>)>, DiscoverError> {
        match self.resolver.lookup_ip(fqdn(host).as_str()).await {
            Ok(lookup) => {
                let ttl = lookup.as_lookup().answers().iter().map(|r| r.ttl).min();
                Ok(Some((lookup.iter().collect(), ttl)))
            }
            Err(e) if e.is_no_records_found() => Ok(None),
            Err(e) => Err(unavailable(host, &e)),
        }
    }
}

/// The refresh delay for an answer whose lowest record TTL is `ttl` seconds (`None`: no
/// records, an empty answer), kept within `min..=max`.
fn clamp_ttl(ttl: Option<u32>, min: Duration, max: Duration) -> Duration {
    ttl.map_or(min, |t| Duration::from_secs(u64::from(t)))
        .clamp(min, max)
}

/// Addresses and their lowest TTL, per name.
type Addresses = HashMap<Name, (Vec<IpAddr>, Option<u32>)>;

/// The A/AAAA records of a response's additional section, per owner name (compared like DNS
/// names: case-insensitively).
fn glue(additionals: &[Record]) -> Addresses {
    let mut found = Addresses::new();
    for r in additionals {
        let ip = match &r.data {
            RData::A(a) => IpAddr::V4(a.0),
            RData::AAAA(aaaa) => IpAddr::V6(aaaa.0),
            _ => continue,
        };
        let (ips, ttl) = found.entry(r.name.clone()).or_default();
        if !ips.contains(&ip) {
            ips.push(ip);
        }
        *ttl = min_ttl(*ttl, Some(r.ttl));
    }
    found
}

/// The lower of two optional TTLs.
fn min_ttl(a: Option<u32>, b: Option<u32>) -> Option<u32> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// `name.` for a dotted name, so the system's search list (Kubernetes sets `ndots:5`) is not
/// tried first; a bare single label is left to the search list.
fn fqdn(name: &str) -> String {
    if name.contains('.') && !name.ends_with('.') {
        format!("{name}.")
    } else {
        name.to_string()
    }
}

fn unavailable(name: &str, e: &NetError) -> DiscoverError {
    DiscoverError::Unavailable(format!("DNS lookup of {name} failed: {e}"))
}

/// What a DNS resolver looks up.
#[derive(Debug, Clone)]
enum Query {
    /// A/AAAA of `name` (or of the service's own name), every address on `port`.
    Host {
        name: Option<String>,
        port: u16,
        weight: u32,
    },
    /// SRV records of `name`.
    Srv { name: String },
}

/// A resolver backed by DNS.
pub struct DnsResolver {
    client: Arc<DnsClient>,
    query: Query,
}

impl DnsResolver {
    /// Builds from `resolver: {dns: …}` (already validated: `srv`, or `port`).
    pub fn from_config(client: Arc<DnsClient>, cfg: &DnsResolverConfig) -> Self {
        let query = match (&cfg.srv, cfg.port) {
            (Some(srv), _) => Query::Srv { name: srv.clone() },
            (None, port) => Query::Host {
                name: cfg.name.clone(),
                port: port.unwrap_or(80),
                weight: cfg.weight,
            },
        };
        Self { client, query }
    }

    async fn resolve_host(
        &self,
        name: &str,
        port: u16,
        weight: u32,
    ) -> Result<Resolution, DiscoverError> {
        let Some((ips, ttl)) = self.client.addresses(name).await? else {
            return Ok(self.empty());
        };
        let mut res = Resolution::new(
            ips.into_iter()
                .map(|ip| Instance::new(SocketAddr::new(ip, port), weight))
                .collect(),
        );
        res.ttl = Some(self.client.clamp_ttl(ttl));
        Ok(res)
    }

    async fn resolve_srv(&self, name: &str) -> Result<Resolution, DiscoverError> {
        let lookup = match self
            .client
            .resolver
            .lookup(fqdn(name).as_str(), RecordType::SRV)
            .await
        {
            Ok(l) => l,
            Err(e) if e.is_no_records_found() => return Ok(self.empty()),
            Err(e) => return Err(unavailable(name, &e)),
        };
        let mut ttl = lookup.answers().iter().map(|r| r.ttl).min();
        let records: Vec<_> = lookup
            .answers()
            .iter()
            .filter_map(|r| match &r.data {
                RData::SRV(srv) => Some(srv.clone()),
                _ => None,
            })
            .collect();
        let Some(best) = records.iter().map(|s| s.priority).min() else {
            return Ok(self.empty());
        };
        let group: Vec<_> = records.into_iter().filter(|s| s.priority == best).collect();
        // Addresses the server already sent along; the other targets are looked up at once.
        let mut addresses = glue(lookup.additionals());
        let mut missing: Vec<&Name> = group
            .iter()
            .map(|s| &s.target)
            .filter(|t| !addresses.contains_key(*t))
            .collect();
        missing.sort();
        missing.dedup();
        let looked_up = join_all(
            missing
                .iter()
                .map(|name| async move { self.client.addresses(&name.to_utf8()).await }),
        )
        .await;
        for (name, found) in missing.into_iter().zip(looked_up) {
            // A target that no longer resolves is skipped, not fatal: the others still serve.
            if let Some(found) = found? {
                addresses.insert(name.clone(), found);
            }
        }
        // RFC 2782: all-zero weights mean "no preference"; give each an equal share.
        let all_zero = group.iter().all(|s| s.weight == 0);
        let mut instances = Vec::new();
        for srv in &group {
            let weight = if all_zero { 1 } else { u32::from(srv.weight) };
            if let Some((ips, t)) = addresses.get(&srv.target) {
                ttl = min_ttl(ttl, *t);
                instances.extend(
                    ips.iter()
                        .map(|ip| Instance::new(SocketAddr::new(*ip, srv.port), weight)),
                );
            }
        }
        let mut res = Resolution::new(instances);
        res.ttl = Some(self.client.clamp_ttl(ttl));
        Ok(res)
    }

    /// A definite "no instances" answer, asked again like an answer without records.
    fn empty(&self) -> Resolution {
        let mut res = Resolution::new(Vec::new());
        res.ttl = Some(self.client.clamp_ttl(None));
        res
    }
}

impl Resolver for DnsResolver {
    fn name(&self) -> &'static str {
        "dns"
    }

    fn target(&self, service: &str) -> String {
        match &self.query {
            Query::Host { name, .. } => name.clone().unwrap_or_else(|| service.to_string()),
            Query::Srv { name } => name.clone(),
        }
    }

    fn resolve<'a>(&'a self, target: &'a str) -> BoxFuture<'a, Result<Resolution, DiscoverError>> {
        Box::pin(async move {
            match &self.query {
                Query::Host { port, weight, .. } => self.resolve_host(target, *port, *weight).await,
                Query::Srv { .. } => self.resolve_srv(target).await,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_ttl_is_clamped_to_the_configured_bounds() {
        let (min, max) = (Duration::from_secs(1), Duration::from_secs(30));
        assert_eq!(clamp_ttl(Some(0), min, max), min);
        assert_eq!(clamp_ttl(Some(7), min, max), Duration::from_secs(7));
        assert_eq!(clamp_ttl(Some(86_400), min, max), max);
        assert_eq!(clamp_ttl(None, min, max), min);
    }

    #[test]
    fn glue_collects_addresses_per_target_case_insensitively() {
        use hickory_resolver::proto::rr::rdata::{A, AAAA, CNAME};
        let name = |n: &str| Name::from_ascii(n).unwrap();
        let additionals = [
            Record::from_rdata(name("a.echo.test."), 30, RData::A(A::new(127, 0, 0, 2))),
            Record::from_rdata(name("A.Echo.Test."), 10, RData::A(A::new(127, 0, 0, 3))),
            Record::from_rdata(
                name("a.echo.test."),
                20,
                RData::AAAA(AAAA(std::net::Ipv6Addr::LOCALHOST)),
            ),
            Record::from_rdata(name("a.echo.test."), 5, RData::A(A::new(127, 0, 0, 2))),
            Record::from_rdata(
                name("b.echo.test."),
                1,
                RData::CNAME(CNAME(name("a.echo.test."))),
            ),
        ];
        let glue = glue(&additionals);
        assert_eq!(glue.len(), 1, "{glue:?}");
        let (ips, ttl) = &glue[&name("a.echo.test.")];
        assert_eq!(
            ips,
            &[
                "127.0.0.2".parse::<IpAddr>().unwrap(),
                "127.0.0.3".parse().unwrap(),
                "::1".parse().unwrap()
            ]
        );
        assert_eq!(*ttl, Some(5));
        assert_eq!(min_ttl(Some(7), None), Some(7));
        assert_eq!(min_ttl(Some(7), Some(3)), Some(3));
        assert_eq!(min_ttl(None, None), None);
    }

    #[test]
    fn dotted_names_become_fully_qualified() {
        assert_eq!(
            fqdn("echo.default.svc.cluster.local"),
            "echo.default.svc.cluster.local."
        );
        assert_eq!(
            fqdn("echo.default.svc.cluster.local."),
            "echo.default.svc.cluster.local."
        );
        assert_eq!(fqdn("echo"), "echo");
    }
}
