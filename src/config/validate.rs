//! The rules that span several keys, checked once after parsing. Each failure names the dotted
//! key path; [`super::load_str`] turns it into a line and column with [`super::locate`].

use super::{Config, DnsResolverConfig, Dur, ResolverConfig, ServiceName};

impl Config {
    /// Checks the rules that span several keys. On failure returns the dotted key path of the
    /// offending value and the reason.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let mut listeners: Vec<(String, std::net::SocketAddr)> = vec![
            ("listen".into(), self.listen.0),
            ("admin.listen".into(), self.admin.listen.0),
        ];
        if !(0.0..=0.9).contains(&self.discovery.jitter) {
            return Err((
                "discovery.jitter".into(),
                "must be between 0 and 0.9".into(),
            ));
        }
        self.client.validate()?;
        super::routes::validate(&self.routes, "routes", &self.services)?;
        if self.upstream.buffer_size < super::MIN_BUFFER_SIZE {
            return Err((
                "upstream.buffer_size".into(),
                format!("must be at least {}", super::MIN_BUFFER_SIZE),
            ));
        }
        positive("upstream.deadline", self.upstream.deadline)?;
        super::resilience::validate_retry(&self.retry, "retry")?;
        super::resilience::validate_outlier(&self.outlier, "outlier")?;
        positive("slow_start", self.slow_start)?;
        if self.limits.max_connections == 0 {
            return Err(("limits.max_connections".into(), "must be at least 1".into()));
        }
        super::resilience::validate_concurrent(
            self.limits.max_concurrent,
            "limits.max_concurrent",
        )?;
        let d = &self.discovery;
        for (key, value) in [
            ("discovery.refresh_interval", d.refresh_interval),
            ("discovery.expire_interval", d.expire_interval),
            ("discovery.resolve_timeout", d.resolve_timeout),
            ("discovery.backoff.initial", d.backoff.initial),
        ] {
            positive(key, Some(value))?;
        }
        if d.backoff.max < d.backoff.initial {
            return Err((
                "discovery.backoff.max".into(),
                "must be at least discovery.backoff.initial".into(),
            ));
        }
        if d.guard.confirm == 0 {
            return Err((
                "discovery.guard.confirm".into(),
                "must be at least 1".into(),
            ));
        }
        if !(0.0..=1.0).contains(&d.guard.max_removal) {
            return Err((
                "discovery.guard.max_removal".into(),
                "must be between 0 and 1".into(),
            ));
        }
        let dns = &self.dns;
        positive("dns.timeout", Some(dns.timeout))?;
        if dns.attempts == 0 {
            return Err(("dns.attempts".into(), "must be at least 1".into()));
        }
        // A TTL-0 answer would otherwise be re-asked at once, in a loop.
        positive("dns.min_ttl", Some(dns.min_ttl))?;
        if dns.max_ttl < dns.min_ttl {
            return Err(("dns.max_ttl".into(), "must be at least dns.min_ttl".into()));
        }
        self.registry.etcd.validate("registry.etcd")?;
        self.registry.consul.validate("registry.consul")?;
        self.registry.zookeeper.validate("registry.zookeeper")?;
        for (i, rule) in d.on_demand.iter().enumerate() {
            let base = format!("discovery.on_demand.{i}");
            let suffix_ok = rule.suffix.len() > 1
                && rule.suffix.starts_with('.')
                && ServiceName::is_valid(&rule.suffix[1..]);
            if !suffix_ok {
                return Err((format!("{base}.suffix"), format!("{:?} must be a DNS suffix starting with a dot, such as \".svc.cluster.local\"", rule.suffix)));
            }
            positive(&format!("{base}.refresh_interval"), rule.refresh_interval)?;
            match &rule.resolver {
                ResolverConfig::Static(_) => {
                    return Err((
                        format!("{base}.resolver"),
                        "static lists cannot resolve names on demand: use dns or file".into(),
                    ))
                }
                ResolverConfig::File(f) if f.name.is_some() => {
                    return Err((
                        format!("{base}.resolver.file.name"),
                        "an on-demand rule resolves the requested name; remove `name`".into(),
                    ))
                }
                ResolverConfig::Dns(cfg) => {
                    if cfg.name.is_some() || cfg.srv.is_some() {
                        return Err((format!("{base}.resolver.dns"), "an on-demand rule resolves the requested name: give only `port` (and `weight`)".into()));
                    }
                    validate_dns(cfg, &format!("{base}.resolver.dns"))?;
                }
                ResolverConfig::Etcd(e) if e.name.is_some() => {
                    return Err((
                        format!("{base}.resolver.etcd.name"),
                        "an on-demand rule resolves the requested name; remove `name`".into(),
                    ))
                }
                ResolverConfig::Etcd(e) => e.validate(&format!("{base}.resolver.etcd"))?,
                ResolverConfig::Consul(c) if c.service.is_some() => {
                    return Err((
                        format!("{base}.resolver.consul.service"),
                        "an on-demand rule resolves the requested name; remove `service`".into(),
                    ))
                }
                ResolverConfig::Consul(c) => c.validate(&format!("{base}.resolver.consul"))?,
                ResolverConfig::Zookeeper(z) if z.name.is_some() => {
                    return Err((
                        format!("{base}.resolver.zookeeper.name"),
                        "an on-demand rule resolves the requested name; remove `name`".into(),
                    ))
                }
                ResolverConfig::File(_) | ResolverConfig::Zookeeper(_) => {}
            }
        }
        for (name, svc) in &self.services {
            let base = format!("services.{name}");
            match &svc.resolver {
                ResolverConfig::Dns(cfg) => validate_dns(cfg, &format!("{base}.resolver.dns"))?,
                ResolverConfig::Etcd(cfg) => cfg.validate(&format!("{base}.resolver.etcd"))?,
                ResolverConfig::Consul(cfg) => cfg.validate(&format!("{base}.resolver.consul"))?,
                ResolverConfig::Zookeeper(cfg) => {
                    let key = format!("{base}.resolver.zookeeper");
                    cfg.validate(&key)?;
                    let name = cfg.name.as_deref().unwrap_or(name.as_str());
                    self.registry.zookeeper.check_service(name, &key)?;
                }
                ResolverConfig::Static(_) | ResolverConfig::File(_) => {}
            }
            if let Some(addr) = &svc.listen {
                listeners.push((format!("{base}.listen"), addr.0));
            }
            positive(&format!("{base}.refresh_interval"), svc.refresh_interval)?;
            positive(&format!("{base}.upstream.deadline"), svc.upstream.deadline)?;
            if let Some(r) = &svc.retry {
                super::resilience::validate_retry(r, &format!("{base}.retry"))?;
            }
            if let Some(o) = &svc.outlier {
                super::resilience::validate_outlier(o, &format!("{base}.outlier"))?;
            }
            positive(&format!("{base}.slow_start"), svc.slow_start)?;
            super::resilience::validate_concurrent(
                svc.limits.max_concurrent,
                &format!("{base}.limits.max_concurrent"),
            )?;
            if let Some(tls) = &svc.tls {
                tls.validate(&format!("{base}.tls"))?;
            }
            if svc.protocol == super::Protocol::H2c && svc.tls.is_some() {
                return Err((
                    format!("{base}.protocol"),
                    "h2c is HTTP/2 without TLS; with `tls`, use `auto` (HTTP/2 by ALPN)".into(),
                ));
            }
            if svc.listen_tls.is_some() && svc.listen.is_none() {
                return Err((
                    format!("{base}.listen_tls"),
                    "TLS belongs to a listener: give the service a `listen` address".into(),
                ));
            }
            if !svc.routes.is_empty() && svc.listen.is_none() {
                return Err((
                    format!("{base}.routes"),
                    "routes belong to a listener: give the service a `listen` address".into(),
                ));
            }
            super::routes::validate(&svc.routes, &format!("{base}.routes"), &self.services)?;
            if let ResolverConfig::Static(s) = &svc.resolver {
                if s.instances.is_empty() {
                    return Err((
                        format!("{base}.resolver.static.instances"),
                        "needs at least one instance".into(),
                    ));
                }
                for (i, inst) in s.instances.iter().enumerate() {
                    if inst.address.0.port() == 0 {
                        return Err((
                            format!("{base}.resolver.static.instances.{i}.address"),
                            "port 0 is not a valid upstream port".into(),
                        ));
                    }
                }
            }
        }
        super::register::validate(self)?;
        for (i, (key, addr)) in listeners.iter().enumerate() {
            if addr.port() == 0 {
                continue; // ephemeral: never conflicts
            }
            if let Some((other, _)) = listeners[..i].iter().find(|(_, a)| a == addr) {
                return Err((
                    key.clone(),
                    format!("address {addr} is already used by `{other}`"),
                ));
            }
        }
        Ok(())
    }
}

/// A client certificate and its key come together (`base` is the `tls` block's key path).
pub(super) fn cert_and_key(cert: bool, key: bool, base: &str) -> Result<(), (String, String)> {
    match (cert, key) {
        (true, false) => Err((format!("{base}.cert"), "needs `key` too".into())),
        (false, true) => Err((format!("{base}.key"), "needs `cert` too".into())),
        _ => Ok(()),
    }
}

/// A duration (when set) must be greater than 0: a zero interval or timeout would spin.
pub(super) fn positive(key: &str, value: Option<Dur>) -> Result<(), (String, String)> {
    match value {
        Some(v) if v.0.is_zero() => Err((key.into(), "must be greater than 0".into())),
        _ => Ok(()),
    }
}

fn validate_dns(cfg: &DnsResolverConfig, base: &str) -> Result<(), (String, String)> {
    match (&cfg.srv, cfg.port) {
        (Some(_), Some(_)) => Err((
            format!("{base}.port"),
            "SRV records carry their own ports: give `srv` or `port`, not both".into(),
        )),
        (Some(srv), None) => {
            if cfg.name.is_some() {
                return Err((
                    format!("{base}.name"),
                    "give `srv` or `name` + `port`, not both".into(),
                ));
            }
            if !srv.starts_with('_') || !ServiceName::is_valid(srv) {
                return Err((format!("{base}.srv"), format!("{srv:?} is not an SRV name such as \"_http._tcp.echo.default.svc.cluster.local\"")));
            }
            Ok(())
        }
        (None, Some(0)) => Err((format!("{base}.port"), "must be between 1 and 65535".into())),
        (None, Some(_)) => {
            if let Some(name) = &cfg.name {
                ServiceName::parse(name.trim_end_matches('.'))
                    .map_err(|e| (format!("{base}.name"), e))?;
            }
            Ok(())
        }
        (None, None) => Err((
            base.to_string(),
            "needs `port` (A/AAAA lookup) or `srv` (SRV lookup)".into(),
        )),
    }
}
