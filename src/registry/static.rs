//! The `static` resolver: instances listed in the config. Its answer never changes, so the cache
//! resolves it once and never has to rebuild the table.

use crate::config::StaticResolverConfig;
use crate::discover::{BoxFuture, DiscoverError, Instance, Resolution, Resolver, Tags};

/// Resolves to a fixed list of instances.
#[derive(Debug, Clone)]
pub struct StaticResolver {
    instances: Vec<Instance>,
}

impl StaticResolver {
    /// A resolver that always answers `instances`.
    pub fn new(instances: Vec<Instance>) -> Self {
        Self { instances }
    }

    /// Builds from `resolver: {static: …}`.
    pub fn from_config(cfg: &StaticResolverConfig) -> Self {
        Self::new(
            cfg.instances
                .iter()
                .map(|i| Instance {
                    address: i.address.0,
                    weight: i.weight,
                    tags: Tags::new(i.tags.clone()),
                })
                .collect(),
        )
    }
}

impl Resolver for StaticResolver {
    fn name(&self) -> &'static str {
        "static"
    }

    fn target(&self, service: &str) -> String {
        format!("static:{service}")
    }

    fn refreshes(&self) -> bool {
        false
    }

    fn resolve<'a>(&'a self, _target: &'a str) -> BoxFuture<'a, Result<Resolution, DiscoverError>> {
        let res = Resolution::new(self.instances.clone());
        Box::pin(async move { Ok(res) })
    }
}
