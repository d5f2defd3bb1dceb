//! ZooKeeper as registry and resolver, interoperating with the Go frameworks that use it: Hertz
//! (hertz-contrib/registry's `zookeeper`) and Kitex (kitex-contrib/registry-zookeeper).
//! `REGISTRIES.md` in the project notes has their exact layout and behaviour, with sources.
//!
//! - [`session`] — the process's one ZooKeeper session, replaced by a supervisor when it ends
//!   (expired, authentication failed), and the bound on every request.
//! - [`codec`] — node paths and node data, byte-compatible with the Go writers.
//! - [`registrar`] — [`ZookeeperRegistrar`]: an ephemeral node per registration; a node lost
//!   with its session is reported lost, and the lifecycle creates it again.
//! - [`resolver`] — [`ZookeeperResolver`]: pipelined reads of a service's children, kept current
//!   by a persistent recursive watch that delivers whole answers.

pub mod codec;
pub mod registrar;
pub mod resolver;
pub mod session;

pub use codec::Codec;
pub use registrar::ZookeeperRegistrar;
pub use resolver::ZookeeperResolver;
pub use session::{ZkError, ZookeeperSession};
