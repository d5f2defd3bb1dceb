//! # waypost — a small, fast sidecar discovery proxy
//!
//! waypost runs beside an application, resolves the services it calls through cached
//! resolvers, picks a weighted instance per request and forwards HTTP to it.
//!
//! # Layout
//!
//! The modules follow the data flow; each uses only the ones above it:
//!
//! 1. [`config`] — the YAML schema, parsed and validated once.
//! 2. [`register`] / [`discover`] — the registry seams: write side (`Registrar`) and read side
//!    (`Resolver`); [`registry`] holds one module per backend (static, dns, the embedded file
//!    registry, etcd, ZooKeeper, Consul), each implementing one seam or both.
//! 3. [`cache`] — per-target resolution cache: refresh with jitter, watches, backoff,
//!    stale-on-error, guarded shrinking, idle expiry.
//! 4. [`balance`] — immutable weighted tables published through `ArcSwap`; lock-free picks.
//! 5. [`forward`] — the HTTP proxy: route, pick, send, and errors mapped in one place.
//! 6. [`metrics`] / [`admin`] — Prometheus families and the admin endpoints.
//!
//! [`tls`] holds what TLS needs at either end (rustls with ring): the upstream connector and
//! the names of handshake failures.
//!
//! [`app`] wires them together and owns the shutdown order; [`shutdown`] is the one
//! fan-out primitive every background loop listens to.

#![warn(missing_docs)]

pub mod admin;
pub mod app;
pub mod balance;
pub mod cache;
pub mod config;
pub mod discover;
pub mod forward;
pub mod metrics;
pub mod register;
pub mod registry;
pub mod shutdown;
pub mod tls;

pub use app::App;
pub use config::Config;

/// A boxed future, as the registry seams return (`register::Registrar`, `discover::Resolver`):
/// object-safe without a macro crate.
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// Free-form labels of an instance (zone, version…), shared between registrations and snapshots.
pub type Tags = std::sync::Arc<std::collections::BTreeMap<String, String>>;
