//! The double's agent and catalog as one state machine, every rule with an explicit `now` so
//! tests can drive its clock: registration with Consul's validation and messages, checks that
//! start critical, TTL checks and their clock, the `DeregisterCriticalServiceAfter` reaper, the
//! health and catalog answers, and a raft-like index that every visible change moves. The HTTP
//! layer (`server.rs`) and the check runner (`probe.rs`) only call into this.
//!
//! Sources: `hashicorp/consul` `agent/agent_endpoint.go` (AgentRegisterService, the check
//! update and deregister handlers), `agent/acl.go` (vetServiceUpdate/vetCheckUpdate: 404 on an
//! unknown ID), `agent/structs/check_type.go` (Validate), `agent/structs/structs.go`
//! (ValidateWeights), `agent/agent.go` (default check IDs and names, initial `critical`, the
//! 1-minute floor and 30-second reaper), `health.mdx`, `blocking.mdx` — as `REGISTRIES.md` §3.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::time::Instant;

use super::decode::{decode, validate_check};
pub use super::decode::{parse_go_duration, Prepared};

/// Consul's floor on `DeregisterCriticalServiceAfter` (`CheckDeregisterIntervalMin`).
pub const DEREGISTER_MIN: Duration = Duration::from_secs(60);
/// How often Consul's reaper looks for services to remove (`CheckReapInterval`).
pub const REAP_INTERVAL: Duration = Duration::from_secs(30);
/// The node every service of the double runs on.
pub const NODE: &str = "node-1";
/// The node's address (what an entry with an empty `Address` falls back to).
pub const NODE_ADDRESS: &str = "127.0.0.1";
/// The double's datacenter.
pub const DATACENTER: &str = "dc1";

/// An HTTP error as the agent answers it: status and plain-text body.
pub type Refusal = (u16, String);

/// How a check decides its status.
#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    /// Passed, warned or failed from outside; critical once `ttl` passes without an update.
    Ttl(Duration),
    /// The double GETs the URL every interval.
    Http {
        url: String,
        interval: Duration,
        timeout: Duration,
    },
    /// The double connects every interval.
    Tcp {
        addr: String,
        interval: Duration,
        timeout: Duration,
    },
}

/// One check of a service.
#[derive(Debug, Clone)]
pub struct Check {
    pub id: String,
    pub name: String,
    pub service_id: String,
    pub kind: Kind,
    pub status: String,
    pub output: String,
    /// When it last turned critical (registration counts), for the reaper.
    pub critical_since: Option<Instant>,
    /// Its `DeregisterCriticalServiceAfter`, raised to the floor.
    pub reap_after: Option<Duration>,
    /// When a TTL check turns critical unless updated first.
    pub ttl_deadline: Option<Instant>,
    pub create_index: u64,
    pub modify_index: u64,
}

/// One registered service instance.
#[derive(Debug, Clone)]
pub struct Service {
    pub id: String,
    pub name: String,
    pub tags: Vec<String>,
    pub address: String,
    pub port: i64,
    pub meta: BTreeMap<String, String>,
    pub weights: (i64, i64),
    pub create_index: u64,
    pub modify_index: u64,
}

/// The agent's (and the catalog's) state.
#[derive(Debug)]
pub struct State {
    /// The raft-like index: moves on every change a reader can see.
    pub index: u64,
    pub services: BTreeMap<String, Service>,
    pub checks: BTreeMap<String, Check>,
    /// The reaper's next round.
    next_reap: Instant,
}

impl State {
    /// A fresh agent at `index`.
    pub fn new(index: u64, now: Instant) -> Self {
        Self {
            index,
            services: BTreeMap::new(),
            checks: BTreeMap::new(),
            next_reap: now + REAP_INTERVAL,
        }
    }

    /// `PUT /v1/agent/service/register`, first half: decodes and validates `body` as Consul
    /// does, in Consul's order, with Consul's messages.
    pub fn prepare(&self, body: &[u8]) -> Result<Prepared, Refusal> {
        let (reg, raw_checks) =
            decode(body).map_err(|e| (400, format!("Request decode failed: {e}")))?;
        if reg.name.is_empty() {
            return Err((400, "Missing service name".into()));
        }
        if matches!(reg.address.as_str(), "0.0.0.0" | "::" | "[::]") {
            return Err((400, "Invalid service address".into()));
        }
        if let Some((passing, warning)) = reg.weights {
            let why = if passing < 1 {
                Some("Passing must be greater than 0")
            } else if warning < 0 {
                Some("Warning must be greater or equal than 0")
            } else if passing > 65535 || warning > 65535 {
                Some("DNS Weight must be between 0 and 65535")
            } else {
                None
            };
            if let Some(why) = why {
                return Err((400, format!("Invalid Weights: {why}")));
            }
        }
        let mut reg = reg;
        for raw in raw_checks {
            let def = validate_check(raw).map_err(|why| (400, format!("Invalid check: {why}")))?;
            reg.checks.push(def);
        }
        for c in &reg.checks {
            if let Some(s) = &c.status {
                if !matches!(s.as_str(), "passing" | "warning" | "critical") {
                    return Err((
                        400,
                        "Status for checks must 'passing', 'warning', 'critical'".into(),
                    ));
                }
            }
        }
        Ok(reg)
    }

    /// `PUT /v1/agent/service/register`, second half: adds or replaces the service and its
    /// checks. A check starts `critical` unless its definition says otherwise.
    pub fn register(&mut self, reg: Prepared, now: Instant) {
        self.index += 1;
        let index = self.index;
        let create_index = self.services.get(&reg.id).map_or(index, |s| s.create_index);
        let several = reg.checks.len() > 1;
        for (i, def) in reg.checks.iter().enumerate() {
            let id = def.id.clone().unwrap_or_else(|| {
                let base = format!("service:{}", reg.id);
                if several {
                    format!("{base}:{}", i + 1)
                } else {
                    base
                }
            });
            let previous = self.checks.get(&id);
            // A check registered again keeps its status (agent.go restores it from the snapshot).
            let status = previous
                .map(|p| p.status.clone())
                .or_else(|| def.status.clone())
                .unwrap_or_else(|| "critical".into());
            let check = Check {
                name: def
                    .name
                    .clone()
                    .unwrap_or_else(|| format!("Service '{}' check", reg.name)),
                service_id: reg.id.clone(),
                kind: def.kind.clone(),
                critical_since: match previous {
                    Some(p) if p.status == "critical" => p.critical_since,
                    _ => (status == "critical").then_some(now),
                },
                output: previous.map(|p| p.output.clone()).unwrap_or_default(),
                status,
                reap_after: def.reap_after.map(|d| d.max(DEREGISTER_MIN)),
                ttl_deadline: match def.kind {
                    Kind::Ttl(ttl) => Some(now + ttl),
                    _ => None,
                },
                create_index: previous.map_or(index, |p| p.create_index),
                modify_index: index,
                id: id.clone(),
            };
            self.checks.insert(id, check);
        }
        self.services.insert(
            reg.id.clone(),
            Service {
                id: reg.id,
                name: reg.name,
                tags: reg.tags,
                address: reg.address,
                port: reg.port,
                meta: reg.meta,
                weights: reg.weights.unwrap_or((1, 1)),
                create_index,
                modify_index: index,
            },
        );
    }

    /// The service `id` belongs to, or Consul's 404 for an unknown service ID.
    pub fn service_of(&self, id: &str) -> Result<&Service, Refusal> {
        self.services.get(id).ok_or_else(|| {
            (404, format!("Unknown service ID \"{id}\". Ensure that the service ID is passed, not the service name."))
        })
    }

    /// `PUT /v1/agent/service/deregister/<id>`: the service and its checks go.
    pub fn deregister(&mut self, id: &str) -> Result<(), Refusal> {
        self.service_of(id)?;
        self.remove(id);
        Ok(())
    }

    fn remove(&mut self, id: &str) {
        self.services.remove(id);
        self.checks.retain(|_, c| c.service_id != id);
        self.index += 1;
    }

    /// The name of the service whose check `id` is, or Consul's 404 for an unknown check ID.
    pub fn check_service(&self, id: &str) -> Result<String, Refusal> {
        let check = self.checks.get(id).ok_or_else(|| {
            (404, format!("Unknown check ID \"{id}\". Ensure that the check ID is passed, not the check name."))
        })?;
        Ok(self
            .services
            .get(&check.service_id)
            .map_or_else(String::new, |s| s.name.clone()))
    }

    /// `PUT /v1/agent/check/{pass,warn,fail,update}/<id>`: sets a TTL check's status and starts
    /// its clock again. Only a status change moves the index (the agent syncs only those).
    pub fn update_ttl(
        &mut self,
        id: &str,
        status: &str,
        output: &str,
        now: Instant,
    ) -> Result<(), Refusal> {
        self.check_service(id)?;
        let check = self.checks.get_mut(id).expect("checked above");
        let Kind::Ttl(ttl) = check.kind else {
            return Err((
                500,
                format!("CheckID \"{id}\" does not have associated TTL"),
            ));
        };
        check.ttl_deadline = Some(now + ttl);
        check.output = output.to_string();
        self.set_status(id, status, now);
        Ok(())
    }

    /// Sets check `id`'s status (the check runner's results land here); true when it changed.
    pub fn set_status(&mut self, id: &str, status: &str, now: Instant) -> bool {
        let Some(check) = self.checks.get_mut(id) else {
            return false;
        };
        if check.status == status {
            return false;
        }
        check.status = status.to_string();
        check.critical_since = (status == "critical").then_some(now);
        self.index += 1;
        check.modify_index = self.index;
        true
    }

    /// The clock: TTL checks past their deadline turn critical; every [`REAP_INTERVAL`] the
    /// reaper removes services whose check has been critical longer than its reap-after.
    /// True when something a reader can see changed.
    pub fn tick(&mut self, now: Instant) -> bool {
        let expired: Vec<String> = self
            .checks
            .values()
            .filter(|c| c.status != "critical" && c.ttl_deadline.is_some_and(|d| now >= d))
            .map(|c| c.id.clone())
            .collect();
        let mut changed = false;
        for id in expired {
            if let Some(c) = self.checks.get_mut(&id) {
                c.output = format!(
                    "TTL expired (last output before timeout follows): {}",
                    c.output
                );
            }
            changed |= self.set_status(&id, "critical", now);
        }
        if now >= self.next_reap {
            self.next_reap = now + REAP_INTERVAL;
            let reap: Vec<String> = self
                .checks
                .values()
                .filter(|c| match (c.critical_since, c.reap_after) {
                    (Some(since), Some(after)) => now.saturating_duration_since(since) > after,
                    _ => false,
                })
                .map(|c| c.service_id.clone())
                .collect();
            for id in reap {
                if self.services.contains_key(&id) {
                    self.remove(&id);
                    changed = true;
                }
            }
        }
        changed
    }

    /// Every service's checks, in ID order: built once per answer, as a look-up per service
    /// would make an answer quadratic in the number of instances.
    fn checks_by_service(&self) -> HashMap<&str, Vec<&Check>> {
        let mut by: HashMap<&str, Vec<&Check>> = HashMap::new();
        for c in self.checks.values() {
            by.entry(c.service_id.as_str()).or_default().push(c);
        }
        by
    }

    /// The instances of `name` carrying `tag` (case-insensitive, as Consul filters), in ID
    /// order; with `passing`, only those whose every check (in `checks`) passes.
    fn matching<'a>(
        &'a self,
        checks: &'a HashMap<&'a str, Vec<&'a Check>>,
        name: &'a str,
        tag: Option<&'a str>,
        passing: bool,
    ) -> impl Iterator<Item = &'a Service> + 'a {
        self.services.values().filter(move |s| {
            s.name == name
                && tag.is_none_or(|t| s.tags.iter().any(|x| x.eq_ignore_ascii_case(t)))
                && (!passing
                    || checks
                        .get(s.id.as_str())
                        .is_none_or(|cs| cs.iter().all(|c| c.status == "passing")))
        })
    }

    /// `/v1/health/service/<name>`'s entries: `{Node, Service, Checks}`, the node's `serfHealth`
    /// among the checks; `[]` when there are none.
    pub fn health(&self, name: &str, tag: Option<&str>, passing: bool) -> Value {
        let by_service = self.checks_by_service();
        let entries: Vec<Value> = self
            .matching(&by_service, name, tag, passing)
            .map(|s| {
                let mut checks = vec![json!({
                    "Node": NODE, "CheckID": "serfHealth", "Name": "Serf Health Status",
                    "Status": "passing", "Notes": "", "Output": "Agent alive and reachable",
                    "ServiceID": "", "ServiceName": "", "ServiceTags": [], "Type": "",
                    "CreateIndex": 1, "ModifyIndex": 1,
                })];
                let own = by_service.get(s.id.as_str()).map_or(&[][..], Vec::as_slice);
                checks.extend(own.iter().map(|c| {
                    json!({
                        "Node": NODE, "CheckID": c.id, "Name": c.name, "Status": c.status,
                        "Notes": "", "Output": c.output, "ServiceID": s.id, "ServiceName": s.name,
                        "ServiceTags": s.tags, "Type": kind_name(&c.kind),
                        "CreateIndex": c.create_index, "ModifyIndex": c.modify_index,
                    })
                }));
                json!({"Node": node(), "Service": agent_service(s), "Checks": checks})
            })
            .collect();
        Value::Array(entries)
    }

    /// `/v1/catalog/service/<name>`'s flat entries, with no health filtering.
    pub fn catalog(&self, name: &str, tag: Option<&str>) -> Value {
        let by_service = HashMap::new();
        Value::Array(
            self.matching(&by_service, name, tag, false)
                .map(|s| {
                    json!({
                        "ID": "", "Node": NODE, "Address": NODE_ADDRESS, "Datacenter": DATACENTER,
                        "TaggedAddresses": {"lan": NODE_ADDRESS}, "NodeMeta": {},
                        "ServiceID": s.id, "ServiceName": s.name, "ServiceAddress": s.address,
                        "ServiceTaggedAddresses": {}, "ServiceTags": s.tags, "ServiceMeta": s.meta,
                        "ServicePort": s.port,
                        "ServiceWeights": {"Passing": s.weights.0, "Warning": s.weights.1},
                        "ServiceEnableTagOverride": false, "ServiceProxy": {},
                        "CreateIndex": s.create_index, "Checks": null, "ModifyIndex": s.modify_index,
                    })
                })
                .collect(),
        )
    }

    /// `GET /v1/agent/service/<id>`'s answer, or Consul's 404 for it.
    pub fn agent_service(&self, id: &str) -> Result<Value, Refusal> {
        let s = self
            .services
            .get(id)
            .ok_or_else(|| (404, format!("unknown service ID: {id}")))?;
        let mut v = agent_service(s);
        v["Datacenter"] = json!(DATACENTER);
        Ok(v)
    }
}

fn node() -> Value {
    json!({
        "ID": "40e4a748-2192-161a-0510-9bf59fe950b5", "Node": NODE, "Address": NODE_ADDRESS,
        "Datacenter": DATACENTER, "TaggedAddresses": {"lan": NODE_ADDRESS}, "Meta": {},
        "CreateIndex": 1, "ModifyIndex": 1,
    })
}

/// `api.AgentService`: `Tags` and `Meta` never `null`.
fn agent_service(s: &Service) -> Value {
    json!({
        "ID": s.id, "Service": s.name, "Tags": s.tags, "Meta": s.meta, "Port": s.port,
        "Address": s.address, "Weights": {"Passing": s.weights.0, "Warning": s.weights.1},
        "EnableTagOverride": false, "CreateIndex": s.create_index, "ModifyIndex": s.modify_index,
    })
}

fn kind_name(kind: &Kind) -> &'static str {
    match kind {
        Kind::Ttl(_) => "ttl",
        Kind::Http { .. } => "http",
        Kind::Tcp { .. } => "tcp",
    }
}
