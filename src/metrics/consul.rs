//! The Consul backend's own families (`waypost_registry_consul_*`): what the generic discovery
//! and registration metrics cannot see — which agent requests fail and why (a token the agent
//! refuses shows here as `denied`), blocking queries whose index had to be reset, and health
//! entries skipped because they name no usable address. Labels are fixed enums handed in as
//! `&'static str` (operation, kind, reason), never service names or addresses.

use prometheus::{IntCounter, IntCounterVec, Opts, Registry};

use super::register;

/// The Consul families.
#[derive(Clone)]
pub struct ConsulMetrics {
    /// `waypost_registry_consul_request_errors_total{op,kind}`: failed agent requests, by
    /// operation (`register`, `deregister`, `check_pass`, `service`, `health`) and kind
    /// (`denied`, `not_found`, `rejected`, `server`, `unavailable`).
    pub request_errors: IntCounterVec,
    /// `waypost_registry_consul_index_resets_total{reason}`: blocking queries whose next index
    /// was reset, because the index went `backwards` or came back `zero`.
    pub index_resets: IntCounterVec,
    /// `waypost_registry_consul_skipped_entries_total`: health entries left out because their
    /// address is not an IP or their port is 0.
    pub skipped_entries: IntCounter,
}

impl ConsulMetrics {
    /// Registers the families in `r`.
    pub(super) fn new(r: &Registry) -> Self {
        Self {
            request_errors: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "waypost_registry_consul_request_errors_total",
                        "Failed Consul agent requests, by operation and kind (denied, not_found, rejected, server, unavailable).",
                    ),
                    &["op", "kind"],
                )
                .expect("valid"),
            ),
            index_resets: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "waypost_registry_consul_index_resets_total",
                        "Consul blocking queries whose index was reset, by reason (backwards, zero).",
                    ),
                    &["reason"],
                )
                .expect("valid"),
            ),
            skipped_entries: register(
                r,
                IntCounter::new(
                    "waypost_registry_consul_skipped_entries_total",
                    "Consul health entries left out because their address is not an IP or their port is 0.",
                )
                .expect("valid"),
            ),
        }
    }

    /// Handles on a registry nobody exports (library users and tests that do not need them).
    pub fn detached() -> Self {
        Self::new(&Registry::new())
    }
}
