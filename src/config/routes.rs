//! Path-prefix routes of a listener: `routes:` (the outbound listener) and
//! `services.<name>.routes:` (that service's own listener) — the fourth way to name a service,
//! matched before the `Host` (or the listener's own service).

use std::collections::BTreeMap;

use serde::Deserialize;

use super::{ServiceConfig, ServiceName};

/// One `routes:` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// The path prefix, starting with `/`; matched byte for byte against the request path (end
    /// it with `/` to match whole segments). The longest matching prefix of a listener wins.
    pub prefix: String,
    /// The declared service requests under the prefix go to.
    pub service: ServiceName,
    /// Remove the prefix from the path sent upstream (keeping a leading `/`).
    #[serde(default)]
    pub strip: bool,
}

/// Checks the routes at `base` (`routes`, `services.<name>.routes`).
pub(super) fn validate(
    routes: &[RouteConfig],
    base: &str,
    services: &BTreeMap<ServiceName, ServiceConfig>,
) -> Result<(), (String, String)> {
    for (i, r) in routes.iter().enumerate() {
        let key = format!("{base}.{i}");
        if !r.prefix.starts_with('/') {
            return Err((format!("{key}.prefix"), "must start with `/`".into()));
        }
        if let Some(c) = r.prefix.bytes().find(|&b| !is_path_byte(b)) {
            return Err((
                format!("{key}.prefix"),
                format!("{:?} cannot appear in a path prefix", c as char),
            ));
        }
        if routes[..i].iter().any(|o| o.prefix == r.prefix) {
            return Err((
                format!("{key}.prefix"),
                format!("{:?} is routed twice on this listener", r.prefix),
            ));
        }
        if !services.contains_key(&r.service) {
            return Err((
                format!("{key}.service"),
                format!("{:?} is not a declared service", r.service.as_str()),
            ));
        }
    }
    Ok(())
}

/// A byte allowed in a path (RFC 3986 `pchar` and `/`, with percent-encoding as is).
fn is_path_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"/-._~!$&'()*+,;=:@%".contains(&b)
}

#[cfg(test)]
mod tests;
