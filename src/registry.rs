//! Stage 2 — the registry backends, one module each, as hertz-contrib/registry has one folder per
//! registry. A backend holds its client and its wire format (keys, file layout, JSON values) and
//! implements the write seam ([`Registrar`](crate::register::Registrar)), the read seam
//! ([`Resolver`](crate::discover::Resolver)), or both:
//!
//! - [`static_`] — instances listed in the config (resolver only).
//! - [`dns`] — A/AAAA and SRV records (resolver only).
//! - [`file`] — the embedded file registry of one host (both).
//! - [`etcd`] — etcd, in the Hertz, Kitex and grpc-go layouts (both).
//! - [`zookeeper`] — ZooKeeper, as Hertz and Kitex lay it out (both).
//! - [`consul`] — the local Consul agent, as Hertz, Kitex and go-kit use it (both).

mod common;
pub mod consul;
pub mod dns;
pub mod etcd;
pub mod file;
#[path = "registry/static.rs"]
pub mod static_;
pub mod zookeeper;
