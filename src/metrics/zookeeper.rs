//! The ZooKeeper backend's own families (`waypost_registry_zookeeper_*`): what the generic
//! discovery and registration metrics cannot see — the session (connected or not, established,
//! lost and why), children skipped because they do not parse, and watches added again after a
//! reconnection or a new session. Labels are fixed enums handed in as `&'static str`, never
//! paths or addresses.

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};

use super::register;

/// The ZooKeeper families.
#[derive(Clone)]
pub struct ZookeeperMetrics {
    /// `waypost_registry_zookeeper_connected`: 1 while the session is connected to a server.
    pub connected: IntGauge,
    /// `waypost_registry_zookeeper_sessions_total`: sessions established (the first, and each
    /// one that replaced a lost session).
    pub sessions: IntCounter,
    /// `waypost_registry_zookeeper_session_losses_total{reason}`: sessions that ended for good
    /// (`expired`, `auth_failed`, `closed`).
    pub session_losses: IntCounterVec,
    /// `waypost_registry_zookeeper_connect_failures_total`: attempts to establish a session that
    /// reached no server.
    pub connect_failures: IntCounter,
    /// `waypost_registry_zookeeper_invalid_children_total`: children skipped because their
    /// name or data does not parse, each path and version once.
    pub invalid_children: IntCounter,
    /// `waypost_registry_zookeeper_watch_restarts_total{reason}`: watches added again and their
    /// services read in full (`reconnected`, `new_session`, `failed`).
    pub watch_restarts: IntCounterVec,
}

impl ZookeeperMetrics {
    /// Registers the families in `r`.
    pub(super) fn new(r: &Registry) -> Self {
        Self {
            connected: register(
                r,
                IntGauge::new(
                    "waypost_registry_zookeeper_connected",
                    "1 while the ZooKeeper session is connected to a server.",
                )
                .expect("valid"),
            ),
            sessions: register(
                r,
                IntCounter::new(
                    "waypost_registry_zookeeper_sessions_total",
                    "ZooKeeper sessions established (the first, and each one replacing a lost session).",
                )
                .expect("valid"),
            ),
            session_losses: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "waypost_registry_zookeeper_session_losses_total",
                        "ZooKeeper sessions that ended for good, by reason (expired, auth_failed, closed).",
                    ),
                    &["reason"],
                )
                .expect("valid"),
            ),
            connect_failures: register(
                r,
                IntCounter::new(
                    "waypost_registry_zookeeper_connect_failures_total",
                    "Attempts to establish a ZooKeeper session that reached no server.",
                )
                .expect("valid"),
            ),
            invalid_children: register(
                r,
                IntCounter::new(
                    "waypost_registry_zookeeper_invalid_children_total",
                    "ZooKeeper children skipped because their name or data does not parse (each path and version once).",
                )
                .expect("valid"),
            ),
            watch_restarts: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "waypost_registry_zookeeper_watch_restarts_total",
                        "ZooKeeper watches added again and their services read in full, by reason (reconnected, new_session, failed).",
                    ),
                    &["reason"],
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
