//! etcd as registry and resolver, interoperating with the Go frameworks that use it: Hertz
//! (hertz-contrib/registry), Kitex (kitex-contrib/registry-etcd) and grpc-go
//! (`go.etcd.io/etcd/client/v3/naming`). `REGISTRIES.md` in the project notes has their exact
//! formats and behaviour, with sources.
//!
//! - [`client`] — the process's one etcd client: the few operations used, request timeouts,
//!   failover between members.
//! - [`codec`] — keys and JSON values per layout, byte-compatible with the Go writers.
//! - [`registrar`] — [`EtcdRegistrar`]: a lease per registration, renewed by the lifecycle.
//! - [`resolver`] — [`EtcdResolver`]: prefix reads and watches that deliver whole answers.

pub mod client;
pub mod codec;
pub mod registrar;
pub mod resolver;

pub use client::{EtcdClient, EtcdError};
pub use codec::Codec;
pub use registrar::EtcdRegistrar;
pub use resolver::EtcdResolver;
