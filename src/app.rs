//! Wiring only: builds every stage from a [`Config`], binds the listeners, spawns the tasks, and
//! shuts them down in order. Start-up failures carry context (`anyhow`); nothing here handles
//! a request.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::admin::Admin;
use crate::cache::{Cache, Declared, Lookup, Policy, Rule};
use crate::config::{
    CheckConfig, Config, EtcdLayout, ListenerTlsConfig, Protocol, RegisterEntry, RegistryKind,
    ResolverConfig,
};
use crate::discover::Resolver;
use crate::forward::{self, Listener, Pool, Proxy, ServiceHandle, ServicePolicy};
use crate::metrics::Metrics;
use crate::metrics::{ConsulMetrics, EtcdMetrics};
use crate::register::{Check, Entry, Registrar, Registration, Registrations};
use crate::registry::consul::{self, ConsulClient, ConsulRegistrar, ConsulResolver, ProbeCopy};
use crate::registry::dns::{DnsClient, DnsResolver};
use crate::registry::etcd::{Codec, EtcdClient, EtcdRegistrar, EtcdResolver};
use crate::registry::file::{FileRegistrar, FileResolver};
use crate::registry::static_::StaticResolver;
use crate::registry::zookeeper::{
    self as zk, ZookeeperRegistrar, ZookeeperResolver, ZookeeperSession,
};
use crate::shutdown;
use crate::tls::{Acceptor, Connector, Reloader};

/// How often TLS certificate, key and CA files are looked at for changes.
const TLS_RELOAD_INTERVAL: Duration = Duration::from_secs(2);

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
    listeners: Vec<(TcpListener, Listener, Option<Arc<Acceptor>>)>,
    admin_listener: TcpListener,
    addrs: Addrs,
    refresh_trigger: shutdown::Trigger,
    /// Every distinct upstream pool, each to be swept.
    pools: Vec<Pool>,
    /// Watches the TLS files of every connector and acceptor.
    reloader: Reloader,
    /// The `register:` entries, not running yet.
    registrations: Registrations,
    /// Where waypost sees its own registrations through its own resolvers (declared service,
    /// registered address); `None` when some entry cannot be seen, so shutdown waits the whole
    /// `shutdown.deregister_wait`.
    observed: Option<Vec<(String, SocketAddr)>>,
}

/// The registries' clients, each built on first use and then shared by every resolver and
/// registrar that talks to that registry: one DNS client, one etcd client (one connection per
/// member for the whole process), one ZooKeeper session, one Consul agent client. A new
/// registry's client belongs here too.
struct Clients<'a> {
    config: &'a Config,
    dns: Option<Arc<DnsClient>>,
    etcd: Option<Arc<EtcdClient>>,
    etcd_metrics: EtcdMetrics,
    /// The process's ZooKeeper session (it connects on first use).
    zookeeper: Arc<ZookeeperSession>,
    consul: Option<Arc<ConsulClient>>,
    consul_metrics: ConsulMetrics,
}

impl<'a> Clients<'a> {
    fn new(config: &'a Config, metrics: &Metrics, zookeeper: Arc<ZookeeperSession>) -> Self {
        Self {
            config,
            dns: None,
            etcd: None,
            etcd_metrics: metrics.etcd.clone(),
            zookeeper,
            consul: None,
            consul_metrics: metrics.consul.clone(),
        }
    }

    /// The DNS client (`dns`).
    fn dns(&mut self) -> anyhow::Result<Arc<DnsClient>> {
        if let Some(c) = &self.dns {
            return Ok(c.clone());
        }
        let client = DnsClient::from_config(&self.config.dns).context("cannot set up DNS")?;
        self.dns = Some(client.clone());
        Ok(client)
    }

    /// The etcd client (`registry.etcd`), connecting to nothing yet.
    fn etcd(&mut self) -> anyhow::Result<Arc<EtcdClient>> {
        if let Some(c) = &self.etcd {
            return Ok(c.clone());
        }
        let client = Arc::new(
            EtcdClient::from_config(&self.config.registry.etcd, self.etcd_metrics.clone())
                .map_err(anyhow::Error::msg)
                .context("cannot set up the etcd client")?,
        );
        self.etcd = Some(client.clone());
        Ok(client)
    }

    /// The Consul agent client (`registry.consul`), connecting to nothing yet.
    fn consul(&mut self) -> anyhow::Result<Arc<ConsulClient>> {
        if let Some(c) = &self.consul {
            return Ok(c.clone());
        }
        let client = Arc::new(
            ConsulClient::from_config(&self.config.registry.consul, self.consul_metrics.clone())
                .map_err(anyhow::Error::msg)
                .context("cannot set up the Consul agent client")?,
        );
        self.consul = Some(client.clone());
        Ok(client)
    }
}

/// Builds the registrars `register:` entries name, one per registry (and options), shared by
/// the entries that name the same one. Each backend has one arm in [`RegistrarFactory::build`].
struct RegistrarFactory<'a, 'c> {
    config: &'a Config,
    clients: &'c mut Clients<'a>,
    file: Option<Arc<FileRegistrar>>,
    /// One etcd registrar per layout and prefix, shared by the entries writing there.
    etcd: HashMap<(EtcdLayout, String), Arc<EtcdRegistrar>>,
    /// The registrar on the process's ZooKeeper session (built on first use).
    zookeeper: Option<Arc<ZookeeperRegistrar>>,
}

impl<'a, 'c> RegistrarFactory<'a, 'c> {
    fn new(config: &'a Config, clients: &'c mut Clients<'a>) -> Self {
        Self {
            config,
            clients,
            file: None,
            etcd: HashMap::new(),
            zookeeper: None,
        }
    }

    /// The registrar for `entry`, and the time-to-live of its registrations.
    fn build(&mut self, entry: &RegisterEntry) -> anyhow::Result<(Arc<dyn Registrar>, Duration)> {
        let registry = &self.config.registry;
        match entry.registry {
            RegistryKind::File => {
                let file = self
                    .file
                    .get_or_insert_with(|| Arc::new(FileRegistrar::new(&registry.file.dir)));
                Ok((file.clone(), registry.file.ttl.0))
            }
            RegistryKind::Etcd => {
                let ttl = registry.etcd.lease_ttl.0;
                let place = registry.etcd.entry_layout_and_prefix(entry.etcd.as_ref());
                if let Some(etcd) = self.etcd.get(&place) {
                    return Ok((etcd.clone(), ttl));
                }
                let codec = Codec::new(place.0, place.1.clone());
                let etcd = Arc::new(EtcdRegistrar::new(self.clients.etcd()?, codec, ttl));
                self.etcd.insert(place, etcd.clone());
                Ok((etcd, ttl))
            }
            // One registrar on the process's session; its nodes live as long as the session.
            RegistryKind::Zookeeper => {
                let session = self.clients.zookeeper.clone();
                let registrar = self.zookeeper.get_or_insert_with(|| {
                    let codec = zk::Codec::new(&registry.zookeeper.root);
                    Arc::new(ZookeeperRegistrar::new(session, codec))
                });
                Ok((registrar.clone(), registry.zookeeper.session_timeout.0))
            }
            // One registrar per entry (its check kind and probe are the entry's), all on the
            // process's agent client.
            RegistryKind::Consul => {
                let cfg = &registry.consul;
                let probe = match &entry.check {
                    Some(CheckConfig::Probe(p)) => Some(p),
                    Some(CheckConfig::None) | None => None,
                };
                let registrar = ConsulRegistrar::new(
                    self.clients.consul()?,
                    probe.and_then(|p| p.consul).unwrap_or_default(),
                    probe.and_then(ProbeCopy::of),
                    cfg.deregister_critical_after.0,
                );
                Ok((Arc::new(registrar), cfg.ttl.0))
            }
        }
    }

    /// The running form of every `register:` entry.
    fn entries(&mut self, metrics: &Metrics) -> anyhow::Result<Vec<Entry>> {
        let config = self.config;
        let mut entries = Vec::new();
        for (i, e) in config.register.iter().enumerate() {
            let (registrar, ttl) = self.build(e).with_context(|| format!("register.{i}"))?;
            let reg = Registration {
                service: e.service.to_string(),
                address: e.address.0,
                weight: e.weight,
                tags: Arc::new(e.tags.clone()),
                ttl,
            };
            let check = match &e.check {
                Some(CheckConfig::Probe(p)) => Some(
                    Check::from_config(p)
                        .with_context(|| format!("register.{i}.check names no probe"))?,
                ),
                Some(CheckConfig::None) | None => None,
            };
            entries.push(Entry::new(reg, registrar, check, &metrics.register));
        }
        Ok(entries)
    }

    /// For each entry, the declared service whose resolver reads that entry back from the same
    /// registry, with the entry's address; `None` when some entry has no such service.
    fn observed(&self) -> Option<Vec<(String, SocketAddr)>> {
        let config = self.config;
        config
            .register
            .iter()
            .map(|e| {
                let (name, _) = config.services.iter().find(|(name, svc)| {
                    match (&svc.resolver, e.registry) {
                        (ResolverConfig::File(f), RegistryKind::File) => {
                            f.name.as_ref().unwrap_or(name) == &e.service
                        }
                        (ResolverConfig::Etcd(r), RegistryKind::Etcd) => {
                            // It reads the key the entry writes, in a layout that decodes
                            // its value (Hertz and Kitex values are the same).
                            let etcd = &config.registry.etcd;
                            let (layout, prefix) =
                                etcd.layout_and_prefix(r.layout, r.prefix.as_deref());
                            let (written, at) = etcd.entry_layout_and_prefix(e.etcd.as_ref());
                            let read = r.name.as_deref().unwrap_or(name.as_str());
                            layout.service_prefix(&prefix, read)
                                == written.service_prefix(&at, e.service.as_str())
                                && (layout == EtcdLayout::Grpc) == (written == EtcdLayout::Grpc)
                        }
                        (ResolverConfig::Zookeeper(z), RegistryKind::Zookeeper) => {
                            z.name.as_deref().unwrap_or(name.as_str()) == e.service.as_str()
                        }
                        (ResolverConfig::Consul(c), RegistryKind::Consul) => {
                            c.service.as_deref().unwrap_or(name.as_str()) == e.service.as_str()
                                && c.tag
                                    .as_ref()
                                    .is_none_or(|t| consul::codec::tags(&e.tags).contains(t))
                        }
                        _ => false,
                    }
                })?;
                Some((name.to_string(), e.address.0))
            })
            .collect()
    }
}

/// Builds resolvers from config, on the shared [`Clients`].
struct ResolverFactory<'a, 'c> {
    config: &'a Config,
    clients: &'c mut Clients<'a>,
}

impl<'a, 'c> ResolverFactory<'a, 'c> {
    /// A factory for `config`.
    fn new(config: &'a Config, clients: &'c mut Clients<'a>) -> Self {
        Self { config, clients }
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
            ResolverConfig::Dns(d) => Arc::new(DnsResolver::from_config(self.clients.dns()?, d)),
            ResolverConfig::Etcd(e) => {
                let cfg = &self.config.registry.etcd;
                let (layout, prefix) = cfg.layout_and_prefix(e.layout, e.prefix.as_deref());
                Arc::new(EtcdResolver::new(
                    self.clients.etcd()?,
                    Codec::new(layout, prefix),
                    e.name.clone(),
                    self.clients.etcd_metrics.clone(),
                ))
            }
            ResolverConfig::Zookeeper(z) => Arc::new(ZookeeperResolver::new(
                self.clients.zookeeper.clone(),
                zk::Codec::new(&self.config.registry.zookeeper.root),
                z.name.clone(),
            )),
            ResolverConfig::Consul(c) => Arc::new(ConsulResolver::new(
                self.clients.consul()?,
                c.service.clone(),
                c.tag.clone(),
                c.passing_only,
                self.clients.consul_metrics.clone(),
            )),
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
        let mut reloader = Reloader::new(TLS_RELOAD_INTERVAL, metrics.tls.clone());
        let mut declared = Vec::new();
        let mut per_service = BTreeMap::new();
        let (refresh_trigger, refresh_stop) = shutdown::channel();
        // One ZooKeeper session for resolvers and registrars, supervised until the refreshers
        // stop (after deregistration); it connects on first use.
        let zookeeper = ZookeeperSession::new(
            &config.registry.zookeeper,
            metrics.zookeeper.clone(),
            refresh_stop.clone(),
        );
        let mut clients = Clients::new(&config, &metrics, zookeeper);
        let mut factory = ResolverFactory::new(&config, &mut clients);
        let rules = factory.rules()?;
        for (name, svc) in &config.services {
            declared.push(Declared {
                name: name.to_string(),
                resolver: factory.build(&svc.resolver)?,
                refresh_interval: svc.refresh_interval.map(|d| d.0),
            });
            let connect_timeout = svc.upstream.connect_timeout;
            let pool = match (&svc.tls, connect_timeout) {
                (None, None) if svc.protocol == Protocol::Auto => default_pool.clone(),
                (tls, t) => {
                    let tls = match tls {
                        Some(cfg) => {
                            let key = format!("services.{name}.tls");
                            let c = Connector::from_config(
                                cfg,
                                name.as_str(),
                                &key,
                                metrics.tls.clone(),
                            )?;
                            let c = Arc::new(c);
                            reloader.watch(c.clone());
                            Some(c)
                        }
                        None => None,
                    };
                    let t = t.unwrap_or(config.upstream.connect_timeout).0;
                    let streams = metrics
                        .forward
                        .h2_streams
                        .with_label_values(&[name.as_str()]);
                    let c =
                        Pool::for_service(&config.upstream, t, tls, svc.protocol, Some(streams));
                    pools.push(c.clone());
                    c
                }
            };
            let policy = ServicePolicy::from_config(&config, Some(svc), pool);
            per_service.insert(name.to_string(), policy);
        }
        let family = metrics.forward.clone();
        let on_demand = ServicePolicy::from_config(&config, None, default_pool.clone());
        let make = Box::new(move |name: &str| {
            let policy = per_service.get(name).unwrap_or(&on_demand).clone();
            ServiceHandle::new(name, &family, policy)
        });
        let (cache, declared) = Cache::new(
            policy,
            declared,
            rules,
            make,
            metrics.discovery.clone(),
            refresh_stop,
        );

        let mut acceptor = |cfg: &Option<ListenerTlsConfig>, key: &str| match cfg {
            Some(c) => {
                let a = Arc::new(Acceptor::from_config(c, key, metrics.tls.clone())?);
                reloader.watch(a.clone());
                anyhow::Ok(Some(a))
            }
            None => Ok(None),
        };
        let outbound = Listener::Outbound(forward::route::routes(&config.routes));
        let tls = acceptor(&config.listen_tls, "listen_tls")?;
        let mut listeners = vec![(bind(config.listen.0, "listen").await?, outbound, tls)];
        let mut services = BTreeMap::new();
        for (name, svc) in &config.services {
            if let Some(addr) = svc.listen {
                let l = bind(addr.0, &format!("services.{name}.listen")).await?;
                services.insert(name.to_string(), l.local_addr()?);
                let routes = forward::route::routes(&svc.routes);
                let tls = acceptor(&svc.listen_tls, &format!("services.{name}.listen_tls"))?;
                listeners.push((l, Listener::Service(name.as_str().into(), routes), tls));
            }
        }
        let admin_listener = bind(config.admin.listen.0, "admin.listen").await?;
        let mut registrars = RegistrarFactory::new(&config, &mut clients);
        let registrations = Registrations::new(registrars.entries(&metrics)?);
        let observed = registrars.observed();
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
            reloader,
            registrations,
            observed,
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
            reloader,
            mut registrations,
            observed,
        } = self;
        cache.start(declared);
        for pool in pools {
            tokio::spawn(pool.run_sweeper(refresh_trigger.subscribe()));
        }
        if !reloader.is_empty() {
            reloader.record_expiry();
            tokio::spawn(reloader.run(refresh_trigger.subscribe()));
        }
        let accepting = Arc::new(AtomicBool::new(true));
        let (admin_trigger, admin_stop) = shutdown::channel();
        let admin = Arc::new(Admin::new(
            cache.clone(),
            metrics.clone(),
            accepting.clone(),
            registrations.view(),
        ));
        let client = config.client.clone();
        let admin_task =
            tokio::spawn(async move { admin.serve(admin_listener, admin_stop, &client).await });

        if let Some(fds) = forward::limits::raise_fd_limit() {
            // Each forwarded connection may hold an upstream one too.
            if (config.limits.max_connections as u64).saturating_mul(2) > fds {
                tracing::warn!(
                    max_connections = config.limits.max_connections,
                    open_file_limit = fds,
                    "limits.max_connections may run into the open-file limit"
                );
            }
        }
        let mut settings = forward::Settings::from_config(&config.client, &config.upstream);
        settings.tunnels = forward::Tunnels {
            open: metrics.forward.upgrades_open.clone(),
            total: metrics.forward.upgrades_total.clone(),
        };
        let proxy = Arc::new(
            Proxy::new(cache.clone(), metrics.forward.clone(), settings)
                .limit_connections(config.limits.max_connections),
        );
        let (accept_trigger, accept_stop) = shutdown::channel();
        let (drain_trigger, drain) = shutdown::channel();
        let (drained_tx, mut drained_rx) = mpsc::channel::<()>(1);
        let mut accept_tasks = Vec::new();
        for (listener, kind, tls) in listeners {
            accept_tasks.push(tokio::spawn(forward::serve(
                listener,
                kind,
                tls,
                proxy.clone(),
                accept_stop.clone(),
                drain.clone(),
                drained_tx.clone(),
            )));
        }
        drop(drained_tx);
        registrations.start();
        tracing::info!(outbound = %addrs.outbound, admin = %addrs.admin, services = config.services.len(), registrations = config.register.len(), "waypost started");

        signal.await;
        tracing::info!("shutting down");
        let (started, took) = (
            tokio::time::Instant::now(),
            &metrics.register.shutdown_duration,
        );
        let step = || took.set(started.elapsed().as_secs_f64());
        // 1. Fail /ready first, so nothing new is routed to this pod.
        accepting.store(false, Ordering::Release);
        // 2. Remove every registration, all at once, each bounded: peers stop picking this instance.
        let removed = registrations.deregister_all().await;
        metrics
            .register
            .deregister_duration
            .set(started.elapsed().as_secs_f64());
        step();
        // 3. Let peers notice, within shutdown.deregister_wait: until our own resolvers no longer see the entries, or the whole wait.
        if removed > 0 {
            await_withdrawal(
                &cache,
                observed.as_deref(),
                config.shutdown.deregister_wait.0,
            )
            .await;
        }
        step();
        // 4. Stop accepting: new connections are refused from here on.
        accept_trigger.fire();
        for t in accept_tasks {
            let _ = t.await; // the task only ends by returning; a panic was already logged
        }
        // 5. Drain: in-flight requests finish, idle keep-alive connections close, within the grace period.
        drain_trigger.fire();
        let grace = config.shutdown.grace.0;
        if tokio::time::timeout(grace, drained_rx.recv())
            .await
            .is_err()
        {
            tracing::warn!(grace = ?grace, "grace period over; closing connections that are still busy");
        }
        step();
        // 6. Stop refreshing (and sweeping upstream pools), then the admin listener.
        refresh_trigger.fire();
        admin_trigger.fire();
        let _ = admin_task.await;
        step();
        tracing::info!(since_deregistration = ?started.elapsed(), "stopped");
        Ok(())
    }
}

/// Step 3 of shutdown: waits until none of `observed` (declared service, registered address)
/// is in its service's table any more — waypost's own resolvers, reading the registry as peers
/// do, no longer see the entries — or for the whole `bound` when some entry cannot be observed
/// (`None`). Never longer than `bound`.
async fn await_withdrawal(
    cache: &Cache<ServiceHandle>,
    observed: Option<&[(String, SocketAddr)]>,
    bound: Duration,
) {
    /// How often the tables are looked at; a table swap is one pointer load away.
    const POLL: Duration = Duration::from_millis(20);
    let Some(observed) = observed else {
        tracing::info!(wait = ?bound, "waiting for peers to notice the deregistration");
        return tokio::time::sleep(bound).await;
    };
    let seen = |(service, addr): &(String, SocketAddr)| match cache.get(service) {
        Lookup::Found(t) => t
            .publisher()
            .balancer
            .load()
            .as_ref()
            .as_ref()
            .is_some_and(|s| s.table.instances().iter().any(|i| i.address == *addr)),
        Lookup::OnDemand | Lookup::Unknown => false,
    };
    let gone = async {
        while observed.iter().any(seen) {
            tokio::time::sleep(POLL).await;
        }
    };
    match tokio::time::timeout(bound, gone).await {
        Ok(()) => tracing::info!("own resolvers no longer see the registrations"),
        Err(_) => tracing::warn!(wait = ?bound, "own resolvers still see a registration; going on"),
    }
}
