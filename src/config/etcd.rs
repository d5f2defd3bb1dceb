//! The etcd part of the schema: `registry.etcd:` (the one etcd client of the process and the
//! defaults of every etcd registrar and resolver), `services.<name>.resolver.etcd:` and the
//! per-entry options a registration passes through (`register[].etcd:`).
//!
//! Layout and prefix resolve in one place ([`EtcdRegistryConfig::layout_and_prefix`]): an entry's
//! own `prefix` wins; otherwise `registry.etcd.prefix` applies when the entry uses the registry's
//! layout; otherwise the layout's own default prefix (Hertz `hertz/registry-etcd`, Kitex
//! `kitex/registry-etcd`, gRPC none).

use std::path::PathBuf;

use serde::Deserialize;

use super::Dur;

/// How keys and values are laid out in etcd: whose Go registry waypost interoperates with.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EtcdLayout {
    /// hertz-contrib/registry's etcd registry: `<prefix>/<svc>/<addr>` →
    /// `{"network","address","weight","tags"}`.
    #[default]
    Hertz,
    /// kitex-contrib/registry-etcd: the same key and value as Hertz, with its own prefix.
    Kitex,
    /// grpc-go's etcd naming (`go.etcd.io/etcd/client/v3/naming`): `<target>/<addr>` →
    /// `{"Op","Addr","Metadata"}`.
    Grpc,
}

impl EtcdLayout {
    /// Every layout, for tests and docs.
    pub const ALL: [EtcdLayout; 3] = [EtcdLayout::Hertz, EtcdLayout::Kitex, EtcdLayout::Grpc];

    /// The prefix the Go registry writes under when not told otherwise. gRPC has none: its
    /// target is whatever the application names (`etcd:///foo/bar` → `foo/bar`).
    pub fn default_prefix(self) -> &'static str {
        match self {
            EtcdLayout::Hertz => "hertz/registry-etcd",
            EtcdLayout::Kitex => "kitex/registry-etcd",
            EtcdLayout::Grpc => "",
        }
    }

    /// The key prefix holding every instance of `service` under `prefix`, with its trailing `/`
    /// (so `echo` never reads `echo2`, kitex-contrib/registry-etcd#12). Hertz and Kitex join
    /// `prefix`, `/` and the service whatever the prefix (empty: `/<svc>/`, as Kitex's
    /// deprecated constructors write); a gRPC target with no prefix is the service name itself.
    /// Here, beside the config, so that validation can tell two registrations that would write
    /// the same key, with the same rule the codec writes by.
    pub fn service_prefix(self, prefix: &str, service: &str) -> String {
        if self == EtcdLayout::Grpc && prefix.is_empty() {
            format!("{service}/")
        } else {
            format!("{prefix}/{service}/")
        }
    }

    /// The config spelling (`hertz`, `kitex`, `grpc`), also a bounded metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            EtcdLayout::Hertz => "hertz",
            EtcdLayout::Kitex => "kitex",
            EtcdLayout::Grpc => "grpc",
        }
    }
}

/// `registry.etcd:` — the etcd cluster, how to reach it, and the defaults of its users.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EtcdRegistryConfig {
    /// Members to talk to, as `host:port`, `http://host:port` or `https://host:port`. Requests go
    /// to one member at a time and fail over to the next when it is unreachable.
    pub endpoints: Vec<String>,
    /// Time allowed to open a connection to one member (default 3s).
    pub dial_timeout: Dur,
    /// Time allowed for one request to one member (default 3s, as Hertz and Kitex use).
    pub request_timeout: Dur,
    /// User for etcd's authentication (with `password`).
    pub username: Option<String>,
    /// Password of `username`; use `${VAR}` to keep it out of the file.
    pub password: Option<String>,
    /// TLS towards the members (required by `https://` endpoints).
    pub tls: Option<EtcdTlsConfig>,
    /// Time-to-live of the lease behind each registration (default 10s, whole seconds, at
    /// least 2s: etcd raises shorter TTLs to its minimum anyway).
    pub lease_ttl: Dur,
    /// Default key layout of registrations and resolvers (default `hertz`).
    pub layout: EtcdLayout,
    /// Default key prefix for `layout` (default: the layout's own).
    pub prefix: Option<String>,
}

impl Default for EtcdRegistryConfig {
    fn default() -> Self {
        Self {
            endpoints: vec!["127.0.0.1:2379".into()],
            dial_timeout: Dur::from_secs(3),
            request_timeout: Dur::from_secs(3),
            username: None,
            password: None,
            tls: None,
            lease_ttl: Dur::from_secs(10),
            layout: EtcdLayout::default(),
            prefix: None,
        }
    }
}

/// `registry.etcd.tls:` — PEM files for rustls.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdTlsConfig {
    /// CA certificate(s) that sign the members' certificates.
    pub ca: PathBuf,
    /// Client certificate chain, for members that require client certificates (with `key`).
    pub cert: Option<PathBuf>,
    /// Private key of `cert`.
    pub key: Option<PathBuf>,
    /// Name to verify in the members' certificates (default: the endpoint's host).
    pub server_name: Option<String>,
}

/// `services.<name>.resolver.etcd:` — which keys hold the service's instances.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdResolverConfig {
    /// Service name in etcd (default: the service's own name). Kitex and gRPC names need not be
    /// host names (`Echo`, `foo.bar/svc` are not), hence this.
    pub name: Option<String>,
    /// Key layout (default `registry.etcd.layout`).
    pub layout: Option<EtcdLayout>,
    /// Key prefix (see the module docs for the default).
    pub prefix: Option<String>,
}

/// `register[].etcd:` — where one registration goes in etcd.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdOptions {
    /// Key layout (default `registry.etcd.layout`).
    pub layout: Option<EtcdLayout>,
    /// Key prefix (see the module docs for the default).
    pub prefix: Option<String>,
}

impl EtcdRegistryConfig {
    /// The layout and prefix for a user that asks for `layout` and `prefix` (either may be
    /// absent): see the module docs.
    pub fn layout_and_prefix(
        &self,
        layout: Option<EtcdLayout>,
        prefix: Option<&str>,
    ) -> (EtcdLayout, String) {
        let layout = layout.unwrap_or(self.layout);
        let prefix = match (prefix, &self.prefix) {
            (Some(p), _) => p,
            (None, Some(p)) if layout == self.layout => p,
            _ => layout.default_prefix(),
        };
        (layout, prefix.to_string())
    }

    /// The layout and prefix of a registration with the per-entry `options` (`register[].etcd`).
    pub fn entry_layout_and_prefix(&self, options: Option<&EtcdOptions>) -> (EtcdLayout, String) {
        self.layout_and_prefix(
            options.and_then(|o| o.layout),
            options.and_then(|o| o.prefix.as_deref()),
        )
    }

    /// Checks the block; `base` is its key path (`registry.etcd`).
    pub fn validate(&self, base: &str) -> Result<(), (String, String)> {
        if self.endpoints.is_empty() {
            return Err((
                format!("{base}.endpoints"),
                "needs at least one endpoint".into(),
            ));
        }
        for (i, ep) in self.endpoints.iter().enumerate() {
            let key = format!("{base}.endpoints.{i}");
            let secure = check_endpoint(ep).map_err(|m| (key.clone(), m))?;
            match (secure, &self.tls) {
                (Some(true), None) => {
                    return Err((
                        key,
                        "an https:// endpoint needs `registry.etcd.tls` (at least `ca`)".into(),
                    ))
                }
                (Some(false), Some(_)) => {
                    return Err((
                        key,
                        "an http:// endpoint cannot use TLS: write https:// or host:port".into(),
                    ))
                }
                _ => {}
            }
        }
        for (key, value) in [
            ("dial_timeout", self.dial_timeout),
            ("request_timeout", self.request_timeout),
        ] {
            if value.0.is_zero() {
                return Err((format!("{base}.{key}"), "must be greater than 0".into()));
            }
        }
        match (&self.username, &self.password) {
            (Some(u), Some(_)) if u.is_empty() => {
                return Err((format!("{base}.username"), "must not be empty".into()))
            }
            (Some(_), None) => {
                return Err((format!("{base}.username"), "needs `password` too".into()))
            }
            (None, Some(_)) => {
                return Err((format!("{base}.password"), "needs `username` too".into()))
            }
            _ => {}
        }
        if let Some(tls) = &self.tls {
            let tls_base = format!("{base}.tls");
            super::validate::cert_and_key(tls.cert.is_some(), tls.key.is_some(), &tls_base)?;
        }
        let ttl = self.lease_ttl.0;
        if ttl.subsec_nanos() != 0 || ttl.as_secs() < 2 {
            return Err((
                format!("{base}.lease_ttl"),
                "must be whole seconds and at least 2s (etcd leases count in seconds)".into(),
            ));
        }
        if let Some(p) = &self.prefix {
            check_prefix(p).map_err(|m| (format!("{base}.prefix"), m))?;
        }
        Ok(())
    }
}

impl EtcdResolverConfig {
    /// Checks the block; `base` is its key path.
    pub fn validate(&self, base: &str) -> Result<(), (String, String)> {
        if let Some(name) = &self.name {
            check_name(name).map_err(|m| (format!("{base}.name"), m))?;
        }
        if let Some(p) = &self.prefix {
            check_prefix(p).map_err(|m| (format!("{base}.prefix"), m))?;
        }
        Ok(())
    }
}

impl EtcdOptions {
    /// Checks the block; `base` is its key path (`register.0.etcd`).
    pub fn validate(&self, base: &str) -> Result<(), (String, String)> {
        if let Some(p) = &self.prefix {
            check_prefix(p).map_err(|m| (format!("{base}.prefix"), m))?;
        }
        Ok(())
    }
}

/// A service name as the Go registries accept it: not empty, no `/` (Kitex refuses it: it would
/// change the key's depth), no control characters.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.contains('/') || name.chars().any(char::is_control) {
        return Err(format!(
            "invalid etcd service name {name:?}: must be non-empty, without '/' or control characters"
        ));
    }
    Ok(())
}

/// A key prefix: may be empty (the deprecated Kitex constructors write `/<svc>/<addr>`), must
/// not end with `/` (the separator is added: a trailing one would double it).
fn check_prefix(prefix: &str) -> Result<(), String> {
    if prefix.ends_with('/') {
        return Err(format!(
            "{prefix:?} must not end with '/': waypost adds the separator"
        ));
    }
    if prefix.chars().any(char::is_control) {
        return Err(format!("{prefix:?} must not contain control characters"));
    }
    Ok(())
}

/// Checks `host:port` with an optional `http://` or `https://`; returns whether the scheme asks
/// for TLS (`None`: no scheme, TLS when `registry.etcd.tls` is set). Consul's agent address
/// uses it too.
pub(super) fn check_endpoint(ep: &str) -> Result<Option<bool>, String> {
    let (secure, rest) = if let Some(r) = ep.strip_prefix("https://") {
        (Some(true), r)
    } else if let Some(r) = ep.strip_prefix("http://") {
        (Some(false), r)
    } else {
        (None, ep)
    };
    let bad = || {
        format!(
            "invalid endpoint {ep:?}: expected host:port, http://host:port or https://host:port"
        )
    };
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.is_empty() || authority.contains(['/', '?', '#', '@', ' ']) {
        return Err(bad());
    }
    let (host, port) = authority.rsplit_once(':').ok_or_else(bad)?;
    let host_ok = if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        v6.parse::<std::net::Ipv6Addr>().is_ok()
    } else {
        !host.is_empty() && !host.contains([':', '[', ']'])
    };
    match port.parse::<u16>() {
        Ok(p) if p > 0 && host_ok => Ok(secure),
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        for ok in [
            "127.0.0.1:2379",
            "etcd-0.etcd:2379",
            "http://10.0.0.1:2379",
            "https://[::1]:2379",
            "http://etcd:2379/",
        ] {
            assert!(check_endpoint(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "127.0.0.1",
            "127.0.0.1:0",
            "etcd:port",
            "::1:2379",
            "http://etcd:2379/v3",
            "unix:///run/etcd.sock",
            "https://",
        ] {
            assert!(check_endpoint(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn layout_and_prefix_defaults() {
        let cfg = EtcdRegistryConfig::default();
        assert_eq!(
            cfg.layout_and_prefix(None, None),
            (EtcdLayout::Hertz, "hertz/registry-etcd".into())
        );
        assert_eq!(
            cfg.layout_and_prefix(Some(EtcdLayout::Kitex), None),
            (EtcdLayout::Kitex, "kitex/registry-etcd".into())
        );
        assert_eq!(
            cfg.layout_and_prefix(Some(EtcdLayout::Grpc), Some("svc")),
            (EtcdLayout::Grpc, "svc".into())
        );
        let custom = EtcdRegistryConfig {
            layout: EtcdLayout::Kitex,
            prefix: Some("shop".into()),
            ..EtcdRegistryConfig::default()
        };
        assert_eq!(custom.layout_and_prefix(None, None).1, "shop");
        assert_eq!(
            custom.layout_and_prefix(Some(EtcdLayout::Kitex), None).1,
            "shop",
            "same layout: the registry's prefix"
        );
        assert_eq!(
            custom.layout_and_prefix(Some(EtcdLayout::Hertz), None).1,
            "hertz/registry-etcd",
            "another layout: its own default"
        );
        assert_eq!(custom.layout_and_prefix(None, Some("")).1, "");
    }
}
