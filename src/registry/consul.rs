//! Consul as registry and resolver, through the local agent's HTTP API, interoperating with the
//! Go frameworks that use it: Hertz (hertz-contrib/registry), Kitex (kitex-contrib/registry-consul)
//! and go-kit (`sd/consul`). `REGISTRIES.md` in the project notes has their exact bodies and
//! behaviour, and Consul's API rules, with sources.
//!
//! - [`client`] — the process's one agent client: HTTP/1.1 over hyper, optional TLS, the ACL
//!   token, a small keep-alive pool, bounded reads, errors by status code.
//! - [`error`] — [`ConsulError`]: agent answers sorted by status code.
//! - [`codec`] — the registration body Hertz and Kitex send, IDs, tags, health entries.
//! - [`registrar`] — [`ConsulRegistrar`]: an agent service with a TTL check waypost passes, or an
//!   HTTP/TCP check the agent runs; a forgotten service is registered again.
//! - [`resolver`] — [`ConsulResolver`]: the health endpoint, watched with blocking queries.

pub mod client;
pub mod codec;
pub mod error;
pub mod registrar;
pub mod resolver;
mod tls;

pub use client::ConsulClient;
pub use error::ConsulError;
pub use registrar::{ConsulRegistrar, ProbeCopy};
pub use resolver::ConsulResolver;
