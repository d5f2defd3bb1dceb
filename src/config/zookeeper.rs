//! The ZooKeeper part of the schema: `registry.zookeeper:` (the one ZooKeeper session of the
//! process, shared by every ZooKeeper registrar and resolver) and
//! `services.<name>.resolver.zookeeper:`.
//!
//! Nodes sit where Hertz and Kitex put them: `<root>/<service>/<host:port>`, with `root` `/` by
//! default (services directly under ZooKeeper's root).

use serde::Deserialize;

use super::Dur;

/// `registry.zookeeper:` — the ensemble, the session waypost keeps with it, and where services
/// sit in its tree.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ZookeeperRegistryConfig {
    /// Servers of the ensemble as `host:port` (`[v6]:port`); the session moves to the next one
    /// when the one in use is lost.
    pub servers: Vec<String>,
    /// Session timeout asked of the servers (default 10s; they clamp it to their own bounds,
    /// 4s–40s with ZooKeeper's defaults): how long the ephemeral nodes of a waypost that died
    /// stay visible to its peers.
    pub session_timeout: Dur,
    /// Time to connect to one server, and the silence after which a connection is given up and
    /// the next server tried (default: 2/5 of `session_timeout`, at most 3/5 of it).
    pub connect_timeout: Option<Dur>,
    /// Time allowed for one request, waiting for a session included (default 3s).
    pub request_timeout: Dur,
    /// The node under which services sit (default `/`, as Hertz and Kitex use).
    pub root: String,
    /// User of ZooKeeper's `digest` authentication (with `password`): the session authenticates
    /// as `username:password`, and what waypost creates is readable and writable by that
    /// identity only, as the Go registries' `DigestACL(PermAll, user, password)` makes it.
    pub username: Option<String>,
    /// Password of `username`; use `${VAR}` to keep it out of the file.
    pub password: Option<String>,
}

impl Default for ZookeeperRegistryConfig {
    fn default() -> Self {
        Self {
            servers: vec!["127.0.0.1:2181".into()],
            session_timeout: Dur::from_secs(10),
            connect_timeout: None,
            request_timeout: Dur::from_secs(3),
            root: "/".into(),
            username: None,
            password: None,
        }
    }
}

/// `services.<name>.resolver.zookeeper:` — which node holds the service's instances.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZookeeperResolverConfig {
    /// Service name in ZooKeeper (default: the service's own name): Kitex names such as
    /// `Echo.Service` are no host names.
    pub name: Option<String>,
}

/// Shortest session timeout accepted: ZooKeeper's own floor is two server ticks.
const MIN_SESSION: std::time::Duration = std::time::Duration::from_secs(1);
/// Longest session timeout accepted: a dead waypost's nodes stay visible for this long.
const MAX_SESSION: std::time::Duration = std::time::Duration::from_secs(600);

impl ZookeeperRegistryConfig {
    /// Checks the block; `base` is its key path (`registry.zookeeper`).
    pub fn validate(&self, base: &str) -> Result<(), (String, String)> {
        let key = |k: &str| format!("{base}.{k}");
        if self.servers.is_empty() {
            return Err((key("servers"), "needs at least one server".into()));
        }
        for (i, server) in self.servers.iter().enumerate() {
            check_server(server).map_err(|m| (format!("{base}.servers.{i}"), m))?;
        }
        let session = self.session_timeout.0;
        if !(MIN_SESSION..=MAX_SESSION).contains(&session) {
            return Err((key("session_timeout"), "must be between 1s and 10m".into()));
        }
        if let Some(connect) = self.connect_timeout {
            if connect.0.is_zero() || connect.0 > session * 3 / 5 {
                return Err((
                    key("connect_timeout"),
                    format!(
                        "must be greater than 0 and at most 3/5 of session_timeout ({:?}), so a lost connection is noticed with time left to reach another server",
                        session * 3 / 5
                    ),
                ));
            }
        }
        super::validate::positive(&key("request_timeout"), Some(self.request_timeout))?;
        check_root(&self.root).map_err(|m| (key("root"), m))?;
        match (&self.username, &self.password) {
            (Some(u), Some(_)) if u.is_empty() || u.contains(':') => Err((
                key("username"),
                "must be non-empty and without ':' (digest authentication sends user:password)"
                    .into(),
            )),
            (Some(_), None) => Err((key("username"), "needs `password` too".into())),
            (None, Some(_)) => Err((key("password"), "needs `username` too".into())),
            _ => Ok(()),
        }
    }

    /// Checks that service `name` (at config key `key`) does not land in ZooKeeper's own
    /// `/zookeeper` subtree, which a root of `/` and a service named `zookeeper` would.
    pub fn check_service(&self, name: &str, key: &str) -> Result<(), (String, String)> {
        if self.root == "/" && name == "zookeeper" {
            return Err((
                key.to_string(),
                "/zookeeper is ZooKeeper's own subtree: set registry.zookeeper.root, or name the service otherwise".into(),
            ));
        }
        Ok(())
    }
}

impl ZookeeperResolverConfig {
    /// Checks the block; `base` is its key path.
    pub fn validate(&self, base: &str) -> Result<(), (String, String)> {
        match &self.name {
            Some(name) => check_name(name).map_err(|m| (format!("{base}.name"), m)),
            None => Ok(()),
        }
    }
}

/// A service name usable as one ZooKeeper path element: not empty, no `/`, not `.` or `..`
/// (ZooKeeper refuses them), no control characters.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty()
        || name.contains('/')
        || name == "."
        || name == ".."
        || name.chars().any(char::is_control)
    {
        return Err(format!(
            "invalid ZooKeeper service name {name:?}: must be one path element (non-empty, no '/', not '.' or '..', no control characters)"
        ));
    }
    Ok(())
}

/// The root: `/`, or an absolute path of valid elements without a trailing `/`, outside
/// ZooKeeper's own `/zookeeper` subtree.
fn check_root(root: &str) -> Result<(), String> {
    if root == "/" {
        return Ok(());
    }
    let Some(rest) = root.strip_prefix('/') else {
        return Err(format!("{root:?} must start with '/'"));
    };
    if root.ends_with('/') {
        return Err(format!(
            "{root:?} must not end with '/': waypost adds the separator"
        ));
    }
    for element in rest.split('/') {
        check_name(element).map_err(|_| format!("{root:?} has an invalid element {element:?}"))?;
    }
    if rest == "zookeeper" || rest.starts_with("zookeeper/") {
        return Err(format!("{root:?} is ZooKeeper's own subtree"));
    }
    Ok(())
}

/// `host:port` or `[v6]:port`, with a port above 0.
fn check_server(server: &str) -> Result<(), String> {
    let bad = || format!("invalid server {server:?}: expected host:port or [IPv6]:port");
    let (host, port) = server.rsplit_once(':').ok_or_else(bad)?;
    let host_ok = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => v6.parse::<std::net::Ipv6Addr>().is_ok(),
        None => {
            !host.is_empty()
                && !host.contains([':', '[', ']', '/', ',', '@', ' '])
                && !host.chars().any(char::is_control)
        }
    };
    match port.parse::<u16>() {
        Ok(p) if p > 0 && host_ok => Ok(()),
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{parse, rejects};
    use super::super::{RegistryKind, ResolverConfig, ServiceName};
    use super::*;

    #[test]
    fn parses_the_block_and_resolvers_with_defaults() {
        let c = parse(
            "registry:\n  zookeeper:\n    servers: [zk-0.zk:2181, \"[::1]:2182\"]\n    session_timeout: 30s\n    connect_timeout: 5s\n    request_timeout: 2s\n    root: /shop\n    username: waypost\n    password: ${POD_IP}\nregister:\n  - service: echo\n    address: 10.0.0.7:8080\n    registry: zookeeper\n    check: none\nservices:\n  echo:\n    resolver: {zookeeper: {}}\n  users:\n    resolver:\n      zookeeper: {name: Users.Service}\n",
        )
        .unwrap();
        let z = &c.registry.zookeeper;
        assert_eq!(z.servers, ["zk-0.zk:2181", "[::1]:2182"]);
        assert_eq!(
            (z.session_timeout, z.connect_timeout, z.request_timeout),
            (
                Dur::from_secs(30),
                Some(Dur::from_secs(5)),
                Dur::from_secs(2)
            )
        );
        assert_eq!(z.root, "/shop");
        assert_eq!(
            (z.username.as_deref(), z.password.as_deref()),
            (Some("waypost"), Some("10.0.0.7"))
        );
        assert_eq!(c.register[0].registry, RegistryKind::Zookeeper);
        assert_eq!(c.register[0].registry.as_str(), "zookeeper");
        let users = &c.services[&ServiceName::parse("users").unwrap()].resolver;
        let ResolverConfig::Zookeeper(users) = users else {
            panic!("a zookeeper resolver: {users:?}")
        };
        assert_eq!(users.name.as_deref(), Some("Users.Service"));

        let d = parse("").unwrap().registry.zookeeper;
        assert_eq!(d.servers, ["127.0.0.1:2181"]);
        assert_eq!(
            (d.session_timeout, d.connect_timeout, d.request_timeout),
            (Dur::from_secs(10), None, Dur::from_secs(3))
        );
        assert_eq!((d.root.as_str(), d.username, d.password), ("/", None, None));
        // On demand, the requested name is the ZooKeeper service name.
        parse("discovery:\n  on_demand:\n    - suffix: .zk\n      resolver: {zookeeper: {}}\n")
            .unwrap();
    }

    #[test]
    fn rejects_bad_zookeeper_settings() {
        let r = |body: &str| format!("registry:\n  zookeeper:\n{body}");
        rejects(
            &r("    servers: []\n"),
            3,
            "registry.zookeeper.servers: needs at least one",
        );
        rejects(
            &r("    servers:\n      - zk:2181\n      - zk\n"),
            5,
            "registry.zookeeper.servers.1: invalid server \"zk\"",
        );
        rejects(
            &r("    session_timeout: 500ms\n"),
            3,
            "registry.zookeeper.session_timeout: must be between 1s and 10m",
        );
        rejects(&r("    session_timeout: 11m\n"), 3, "between 1s and 10m");
        rejects(
            &r("    session_timeout: 10s\n    connect_timeout: 7s\n"),
            4,
            "registry.zookeeper.connect_timeout: must be greater than 0 and at most 3/5 of session_timeout (6s)",
        );
        rejects(
            &r("    connect_timeout: 0s\n"),
            3,
            "registry.zookeeper.connect_timeout",
        );
        rejects(
            &r("    request_timeout: 0s\n"),
            3,
            "registry.zookeeper.request_timeout: must be greater than 0",
        );
        rejects(
            &r("    root: shop\n"),
            3,
            "registry.zookeeper.root: \"shop\" must start with '/'",
        );
        rejects(&r("    root: /shop/\n"), 3, "must not end with '/'");
        rejects(&r("    root: /zookeeper/x\n"), 3, "ZooKeeper's own subtree");
        rejects(
            &r("    username: a:b\n    password: x\n"),
            3,
            "registry.zookeeper.username: must be non-empty and without ':'",
        );
        rejects(
            &r("    username: a\n"),
            3,
            "registry.zookeeper.username: needs `password`",
        );
        rejects(
            &r("    password: x\n"),
            3,
            "registry.zookeeper.password: needs `username`",
        );
        rejects(&r("    session: 1s\n"), 3, "unknown field `session`");
        rejects(
            "services:\n  echo:\n    resolver:\n      zookeeper:\n        name: a/b\n",
            5,
            "services.echo.resolver.zookeeper.name: invalid ZooKeeper service name",
        );
        rejects(
            "services:\n  echo:\n    resolver:\n      zookeeper: {name: ..}\n",
            4,
            "services.echo.resolver.zookeeper.name",
        );
        rejects(
            "services:\n  zookeeper:\n    resolver:\n      zookeeper: {}\n",
            4,
            "services.zookeeper.resolver.zookeeper: /zookeeper is ZooKeeper's own subtree",
        );
        rejects(
            "register:\n  - service: zookeeper\n    address: 10.0.0.7:1\n    registry: zookeeper\n    check: none\n",
            2,
            "register.0.service: /zookeeper is ZooKeeper's own subtree",
        );
        rejects(
            "discovery:\n  on_demand:\n    - suffix: .zk\n      resolver:\n        zookeeper:\n          name: x\n",
            6,
            "discovery.on_demand.0.resolver.zookeeper.name: an on-demand rule resolves the requested name",
        );
        // Elsewhere under a root of its own, `zookeeper` is a service like any other.
        parse("registry:\n  zookeeper: {root: /services}\nservices:\n  zookeeper:\n    resolver: {zookeeper: {}}\n")
            .unwrap();
    }

    #[test]
    fn servers() {
        for ok in ["127.0.0.1:2181", "zk-0.zk:2181", "[::1]:2181"] {
            assert!(check_server(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "zk",
            "zk:0",
            "zk:port",
            "::1:2181",
            "tcp://zk:2181",
            "zk:2181/chroot",
            "a,b:2181",
        ] {
            assert!(check_server(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn roots() {
        for ok in ["/", "/services", "/a/b.c"] {
            assert!(check_root(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "services",
            "/services/",
            "//a",
            "/a/./b",
            "/a/..",
            "/zookeeper",
            "/zookeeper/quota",
        ] {
            assert!(check_root(bad).is_err(), "{bad}");
        }
        assert!(check_root("/zookeepers").is_ok());
    }
}
