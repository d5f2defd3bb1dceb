//! The Consul registrar: one `register:` entry as a service of the local agent, with the ID
//! and body a Hertz or Kitex server would send ([`super::codec::registration_body`]), and a
//! check that keeps Consul's view of its health honest.
//!
//! - **`ttl`** (default): a TTL check with an explicit `CheckID`, passed right after every
//!   registration and then on every renewal while waypost's health gate is green. A waypost that
//!   dies (SIGKILL, OOM) stops passing it: the instance turns critical within the TTL and leaves
//!   `?passing` answers, where the Go frameworks' TCP check would keep passing as long as the
//!   app's port answers.
//! - **`http`** / **`tcp`**: Consul runs waypost's own probe (its port, path, interval and
//!   timeout) against the registered IP. Renewals then only ask the agent whether it still knows
//!   the service.
//!
//! Either way an agent that restarted and forgot the service answers a renewal with 404, which
//! is [`RegisterError::Lost`]: the lifecycle registers it again at once.

use std::sync::Arc;
use std::time::Duration;

use super::client::ConsulClient;
use super::codec::{self, CheckSpec};
use super::error::ConsulError;
use crate::config::{ConsulCheckKind, ProbeConfig};
use crate::register::{BoxFuture, RegisterError, Registrar, Registration};

/// What Consul's `http`/`tcp` check probes, copied from waypost's own check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeCopy {
    /// The port waypost probes (the app's health port).
    pub port: u16,
    /// The path and query of an HTTP check.
    pub path: Option<String>,
    /// Time between checks.
    pub interval: Duration,
    /// Time one check may take.
    pub timeout: Duration,
}

impl ProbeCopy {
    /// The copy of `probe` (`None` when it names nothing to probe; validation refuses that).
    pub fn of(probe: &ProbeConfig) -> Option<Self> {
        let (port, path) = match (&probe.http, probe.tcp) {
            (Some(url), _) => (url.addr.port(), Some(url.path.clone())),
            (None, Some(addr)) => (addr.0.port(), None),
            (None, None) => return None,
        };
        Some(Self {
            port,
            path,
            interval: probe.interval.0,
            timeout: probe.timeout.0,
        })
    }
}

/// Registers entries with the local agent; one value per `register:` entry's check kind.
pub struct ConsulRegistrar {
    client: Arc<ConsulClient>,
    kind: ConsulCheckKind,
    probe: Option<ProbeCopy>,
    deregister_critical_after: Duration,
}

impl ConsulRegistrar {
    /// A registrar through `client` whose registrations carry a `kind` check: a TTL check
    /// (renewed every third of the registration's TTL), or Consul running `probe` (required for
    /// `http` and `tcp`; without it they fall back to `ttl`).
    pub fn new(
        client: Arc<ConsulClient>,
        kind: ConsulCheckKind,
        probe: Option<ProbeCopy>,
        deregister_critical_after: Duration,
    ) -> Self {
        let kind = match (kind, &probe) {
            (ConsulCheckKind::Http, Some(p)) if p.path.is_some() => kind,
            (ConsulCheckKind::Tcp, Some(_)) => kind,
            _ => ConsulCheckKind::Ttl,
        };
        Self {
            client,
            kind,
            probe,
            deregister_critical_after,
        }
    }

    /// The check `reg` is registered with.
    pub fn check(&self, reg: &Registration) -> CheckSpec {
        let ip = reg.address.ip();
        match (self.kind, &self.probe) {
            (ConsulCheckKind::Http, Some(p)) => CheckSpec::Http {
                url: format!(
                    "http://{}{}",
                    std::net::SocketAddr::new(ip, p.port),
                    p.path.as_deref().unwrap_or("/")
                ),
                interval: p.interval,
                timeout: p.timeout,
            },
            (ConsulCheckKind::Tcp, Some(p)) => CheckSpec::Tcp {
                addr: std::net::SocketAddr::new(ip, p.port).to_string(),
                interval: p.interval,
                timeout: p.timeout,
            },
            _ => CheckSpec::Ttl(reg.ttl),
        }
    }

    /// The body of `PUT /v1/agent/service/register` for `reg`.
    pub fn body(&self, reg: &Registration) -> Vec<u8> {
        let id = codec::service_id(reg);
        codec::registration_body(
            reg,
            &self.check(reg),
            &codec::check_id(&id),
            self.deregister_critical_after,
        )
    }

    async fn register_now(&self, reg: &Registration) -> Result<(), RegisterError> {
        self.client.register(self.body(reg)).await?;
        if self.kind == ConsulCheckKind::Ttl {
            // A check starts critical: pass it at once (as Kitex does), so the instance is in
            // `?passing` answers now rather than after the first renewal.
            self.client
                .pass(&codec::check_id(&codec::service_id(reg)))
                .await?;
        }
        Ok(())
    }

    async fn renew_now(&self, reg: &Registration) -> Result<(), RegisterError> {
        let id = codec::service_id(reg);
        if self.kind != ConsulCheckKind::Ttl {
            return Ok(self.client.service(&id).await?);
        }
        match self.client.pass(&codec::check_id(&id)).await {
            Ok(()) => Ok(()),
            // Agents before 1.11 answer an unknown check with 500 rather than 404: whether the
            // agent still knows the service tells a lost registration from a failing agent.
            Err(e @ ConsulError::Server { .. }) => match self.client.service(&id).await {
                Err(lost @ ConsulError::NotFound(_)) => Err(lost.into()),
                _ => Err(e.into()),
            },
            Err(e) => Err(e.into()),
        }
    }

    async fn deregister_now(&self, reg: &Registration) -> Result<(), RegisterError> {
        // An agent that does not know the service answers 404, which is `Lost`: the lifecycle
        // takes that as done.
        Ok(self.client.deregister(&codec::service_id(reg)).await?)
    }
}

impl Registrar for ConsulRegistrar {
    fn name(&self) -> &'static str {
        "consul"
    }

    fn register<'a>(&'a self, reg: &'a Registration) -> BoxFuture<'a, Result<(), RegisterError>> {
        Box::pin(self.register_now(reg))
    }

    fn renew<'a>(&'a self, reg: &'a Registration) -> BoxFuture<'a, Result<(), RegisterError>> {
        Box::pin(self.renew_now(reg))
    }

    fn deregister<'a>(&'a self, reg: &'a Registration) -> BoxFuture<'a, Result<(), RegisterError>> {
        Box::pin(self.deregister_now(reg))
    }

    fn describe(&self, reg: &Registration) -> serde_json::Value {
        let id = codec::service_id(reg);
        let check = match self.check(reg) {
            CheckSpec::Ttl(ttl) => serde_json::json!({"ttl_seconds": ttl.as_secs_f64()}),
            CheckSpec::Http {
                url,
                interval,
                timeout,
            } => {
                serde_json::json!({"http": url, "interval_seconds": interval.as_secs_f64(), "timeout_seconds": timeout.as_secs_f64()})
            }
            CheckSpec::Tcp {
                addr,
                interval,
                timeout,
            } => {
                serde_json::json!({"tcp": addr, "interval_seconds": interval.as_secs_f64(), "timeout_seconds": timeout.as_secs_f64()})
            }
        };
        serde_json::json!({
            "agent": self.client.address(),
            "service_id": id,
            "check_id": codec::check_id(&id),
            "check_kind": self.kind.as_str(),
            "check": check,
            "deregister_critical_after_seconds": self.deregister_critical_after.as_secs_f64(),
        })
    }
}
