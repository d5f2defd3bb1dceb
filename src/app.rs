//! Wiring only: builds every stage from a [`Config`], binds the listeners, spawns the tasks, and
//! shuts them down in order. Start-up failures carry context (`anyhow`); nothing here handles
//! a request.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::admin::Admin;
use crate::cache::{Cache, Declared, Policy, Rule};
use crate::config::{Config, ResolverConfig};
use crate::discover::Resolver;
use crate::forward::{self, Listener, Pool, Proxy, ServiceHandle};
use crate::metrics::Metrics;
use crate::registry::dns::{DnsClient, DnsResolver};
use crate::registry::file::FileResolver;
use crate::registry::static_::StaticResolver;
use crate::shutdown;

/// The addresses the app actually bound (ports resolved when the config says `:0`).
#[derive(Debug, Clone)]
pub struct Addrs {
    /// The outbound listener.
    pub outbound: SocketAddr,
    /// The admin listener.
    pub admin: SocketAddr,
    /// Per-service listeners, by service name.
    pub services: BTreeMap<String, SocketAddr>,
}

/// A built, bound, not yet running waypost.
pub struct App {
    config: Config,
    metrics: Metrics,
    cache: Cache<ServiceHandle>,
    declared: crate::cache::Unstarted<ServiceHandle>,
    listeners: Vec<(TcpListener, Listener)>,
    admin_listener: TcpListener,
    addrs: Addrs,
    refresh_trigger: shutdown::Trigger,
    /// Every distinct upstream pool, each to be swept.
    pools: Vec<Pool>,
}

/// Builds resolvers from config, sharing one DNS client (created on first use) between them.
struct ResolverFactory<'a> {
    config: &'a Config,
    dns: Option<Arc<DnsClient>>,
}

impl<'a> ResolverFactory<'a> {
    /// A factory for `config`.
    fn new(config: &'a Config) -> Self {
        Self { config, dns: None }
    }

    /// The resolver `resolver` describes. A file resolver without `name` reads the registry
    /// entries of whatever service (or on-demand host) it resolves.
    fn build(&mut self, resolver: &ResolverConfig) -> anyhow::Result<Arc<dyn Resolver>> {
        Ok(match resolver {
            ResolverConfig::Static(s) => Arc::new(StaticResolver::from_config(s)),
            ResolverConfig::File(f) => Arc::new(
                FileResolver::new(&self.config.registry.file.dir)
                    .named(f.name.as_ref().map(|n| n.as_str())),
            ),
            ResolverConfig::Dns(d) => {
                let client = match &self.dns {
                    Some(c) => c.clone(),
                    None => {
                        let c = DnsClient::from_config(&self.config.dns)
                            .context("cannot set up DNS")?;
                        self.dns = Some(c.clone());
                        c
                    }
                };
                Arc::new(DnsResolver::from_config(client, d))
            }
        })
    }

    /// The cache rules for `discovery.on_demand`.
    fn rules(&mut self) -> anyhow::Result<Vec<Rule>> {
        let config = self.config;
        config
            .discovery
            .on_demand
            .iter()
            .map(|r| {
                let resolver = self.build(&r.resolver)?;
                let rule = r.clone();
                Ok(Rule {
                    description: format!("suffix {} via {}", r.suffix, resolver.name()),
                    matches: Box::new(move |name: &str| rule.covers(name)),
                    resolver,
                    refresh_interval: r.refresh_interval.map(|d| d.0),
                })
            })
            .collect()
    }
}

async fn bind(addr: SocketAddr, key: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} (`{key}`)"))
}

impl App {
    /// Builds every stage and binds every listener (so a port conflict fails here, at start-up).
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let metrics = Metrics::new();
        let policy = Policy::from_config(&config.discovery);
        let default_pool = Pool::from_config(&config.upstream, config.upstream.connect_timeout.0);
        let mut pools = vec![default_pool.clone()];
        let mut declared = Vec::new();
        let mut per_service = BTreeMap::new();
        let mut factory = ResolverFactory::new(&config);
        let rules = factory.rules()?;
        for (name, svc) in &config.services {
            declared.push(Declared {
                name: name.to_string(),
                resolver: factory.build(&svc.resolver)?,
                refresh_interval: svc.refresh_interval.map(|d| d.0),
            });
            let pool = match svc.upstream.connect_timeout {
                Some(t) => {
                    let c = Pool::from_config(&config.upstream, t.0);
                    pools.push(c.clone());
                    c
                }
                None => default_pool.clone(),
            };
            let timeout = svc.upstream.timeout.unwrap_or(config.upstream.timeout).0;
            per_service.insert(name.to_string(), (timeout, pool));
        }
        let (refresh_trigger, refresh_stop) = shutdown::channel();
        let family = metrics.forward.clone();
        let default_timeout = config.upstream.timeout.0;
        let make = Box::new(move |name: &str| {
            let (timeout, pool) = per_service
                .get(name)
                .cloned()
                .unwrap_or_else(|| (default_timeout, default_pool.clone()));
            ServiceHandle::new(name, &family, timeout, pool)
        });
        let (cache, declared) = Cache::new(
            policy,
            declared,
            rules,
            make,
            metrics.discovery.clone(),
            refresh_stop,
        );

        let mut listeners = vec![(bind(config.listen.0, "listen").await?, Listener::Outbound)];
        let mut services = BTreeMap::new();
        for (name, svc) in &config.services {
            if let Some(addr) = svc.listen {
                let l = bind(addr.0, &format!("services.{name}.listen")).await?;
                services.insert(name.to_string(), l.local_addr()?);
                listeners.push((l, Listener::Service(name.as_str().into())));
            }
        }
        let admin_listener = bind(config.admin.listen.0, "admin.listen").await?;
        let addrs = Addrs {
            outbound: listeners[0].0.local_addr()?,
            admin: admin_listener.local_addr()?,
            services,
        };
        Ok(Self {
            config,
            metrics,
            cache,
            declared,
            listeners,
            admin_listener,
            addrs,
            refresh_trigger,
            pools,
        })
    }

    /// The bound addresses.
    pub fn addrs(&self) -> &Addrs {
        &self.addrs
    }

    /// Runs until `signal` completes, then shuts down in order.
    pub async fn run(self, signal: impl Future<Output = ()>) -> anyhow::Result<()> {
        let App {
            config,
            metrics,
            cache,
            declared,
            listeners,
            admin_listener,
            addrs,
            refresh_trigger,
            pools,
        } = self;
        cache.start(declared);
        for pool in pools {
            tokio::spawn(pool.run_sweeper(refresh_trigger.subscribe()));
        }
        let accepting = Arc::new(AtomicBool::new(true));
        let (admin_trigger, admin_stop) = shutdown::channel();
        let admin = Arc::new(Admin::new(
            cache.clone(),
            metrics.clone(),
            accepting.clone(),
        ));
        let client = config.client.clone();
        let admin_task =
            tokio::spawn(async move { admin.serve(admin_listener, admin_stop, &client).await });

        let proxy = Arc::new(Proxy::new(
            cache.clone(),
            metrics.forward.clone(),
            forward::Settings::from_config(&config.client, &config.upstream),
        ));
        let (accept_trigger, accept_stop) = shutdown::channel();
        let (drain_trigger, drain) = shutdown::channel();
        let (drained_tx, mut drained_rx) = mpsc::channel::<()>(1);
        let mut accept_tasks = Vec::new();
        for (listener, kind) in listeners {
            accept_tasks.push(tokio::spawn(forward::serve(
                listener,
                kind,
                proxy.clone(),
                accept_stop.clone(),
                drain.clone(),
                drained_tx.clone(),
            )));
        }
        drop(drained_tx);
        tracing::info!(outbound = %addrs.outbound, admin = %addrs.admin, services = config.services.len(), "waypost started");

        signal.await;
        tracing::info!("shutting down");
        // 1. Fail /ready first, so nothing new is routed to this pod.
        accepting.store(false, Ordering::Release);
        // 2. Stop accepting: new connections are refused from here on.
        accept_trigger.fire();
        for t in accept_tasks {
            let _ = t.await; // the task only ends by returning; a panic was already logged
        }
        // 3. Drain: in-flight requests finish, idle keep-alive connections close, within the grace period.
        drain_trigger.fire();
        let grace = config.shutdown.grace.0;
        if tokio::time::timeout(grace, drained_rx.recv())
            .await
            .is_err()
        {
            tracing::warn!(grace = ?grace, "grace period over; closing connections that are still busy");
        }
        // 4. Stop refreshing (and sweeping upstream pools), then the admin listener.
        refresh_trigger.fire();
        admin_trigger.fire();
        let _ = admin_task.await;
        tracing::info!("stopped");
        Ok(())
    }
}
