//! The etcd backend's own families (`waypost_registry_etcd_*`): what the generic discovery and
//! registration metrics cannot see — values skipped because they do not parse, watches that had
//! to be re-established, and requests that failed over to another member. Labels are fixed
//! enums handed in as `&'static str` (layout, reason), never keys or addresses.

use prometheus::{IntCounter, IntCounterVec, Opts, Registry};

use super::register;

/// The etcd families.
#[derive(Clone)]
pub struct EtcdMetrics {
    /// `waypost_registry_etcd_invalid_values_total{layout}`: values skipped when reading, each
    /// counted once per key and revision.
    pub invalid_values: IntCounterVec,
    /// `waypost_registry_etcd_watch_restarts_total{reason}`: watches listed and opened again
    /// (`compacted`, `canceled`, `failed`, `closed`).
    pub watch_restarts: IntCounterVec,
    /// `waypost_registry_etcd_failovers_total`: requests moved on to another member because the
    /// one in use was unreachable or had no leader.
    pub failovers: IntCounter,
}

impl EtcdMetrics {
    /// Registers the families in `r`.
    pub(super) fn new(r: &Registry) -> Self {
        Self {
            invalid_values: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "waypost_registry_etcd_invalid_values_total",
                        "etcd values skipped because they do not parse, per layout (each key and revision once).",
                    ),
                    &["layout"],
                )
                .expect("valid"),
            ),
            watch_restarts: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "waypost_registry_etcd_watch_restarts_total",
                        "etcd watches listed and opened again, by reason (compacted, canceled, failed, closed).",
                    ),
                    &["reason"],
                )
                .expect("valid"),
            ),
            failovers: register(
                r,
                IntCounter::new(
                    "waypost_registry_etcd_failovers_total",
                    "etcd requests moved on to another member (unreachable, or without a leader).",
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
