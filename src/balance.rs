//! Stage 4 — balancing: per service, an immutable weighted table built off the hot path and
//! published whole, with the cache status it came from and each instance's live state, as one
//! [`Snapshot`] behind an [`ArcSwap`] ([`Balancer`]).
//!
//! Three ways to pick, chosen per service (`balancer:`):
//!
//! - `random` — weighted random through the alias table ([`alias`]): O(1), one random number;
//! - `round_robin` — nginx's smooth weighted round robin, a precomputed cycle walked by one
//!   atomic cursor ([`swrr`]);
//! - `p2c` — two draws by weight from the alias table, and the one with the lower score wins:
//!   (in-flight + 1) × latency estimate × a penalty for failures in a row ([`state`]), so
//!   weights are honoured and an instance failing fast does not attract traffic.
//!
//! Every pick skips ejected instances ([`outlier`]) and, for a retry, the instance just tried;
//! it takes no lock, allocates nothing and reads no clock (the request's start time is handed
//! in). Per-instance state is keyed by address and carried from table to table while the
//! address stays. Slow start scales a new instance's weight up over `slow_start`; while any
//! instance ramps, the table is rebuilt every twentieth of the window (at most every 100 ms)
//! by the first pick that finds it due — never per request.

pub mod alias;
pub mod outlier;
pub mod state;
pub mod swrr;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::time::Instant;

pub use alias::Table;
pub use outlier::{Change, Outcome, Outlier};
pub use state::{Clock, InstanceState};

use crate::cache::{Publish, Status};
use crate::config::{BalancerKind, OutlierConfig};
use crate::discover::{Instance, Resolution};
use crate::metrics::{ResilienceMetrics, ServiceResilience};

/// Effective weights are registry weights × this, so slow start can scale them finely.
pub const SCALE: u64 = 100;
/// Draws by weight before falling back to a scan for an instance that may be picked.
const DRAWS: usize = 4;

/// How a service picks, from its config.
pub struct Settings {
    /// `balancer:`.
    pub kind: BalancerKind,
    /// `outlier:`.
    pub outlier: Outlier,
    /// `slow_start:`.
    pub slow_start: Option<Duration>,
    /// The service's series, and the family for its instances' series (declared services
    /// only: `None` keeps instance labels off on-demand targets).
    pub metrics: Option<(String, ResilienceMetrics)>,
    /// The service's own handles (ejections).
    pub series: Option<ServiceResilience>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            kind: BalancerKind::Random,
            outlier: Outlier::from_config(&OutlierConfig::default()),
            slow_start: None,
            metrics: None,
            series: None,
        }
    }
}

/// What a service's forwarding reads: the table, the instances' state and the cache status,
/// swapped in together.
#[derive(Debug)]
pub struct Snapshot {
    /// The weighted table (effective weights: slow start applied).
    pub table: Arc<Table>,
    /// Each instance's state, in the table's order.
    pub states: Arc<[Arc<InstanceState>]>,
    /// The hot fields of every instance (p2c reads these, not `states`)…
    hot: state::Slab,
    /// …at these slots, in the table's order.
    slots: Arc<[u32]>,
    /// Each instance's effective weight × [`SCALE`], in the table's order.
    pub weights: Arc<[u64]>,
    /// The SWRR cycle (`round_robin` only; `None` also when too costly to build).
    cycle: Option<Arc<[u32]>>,
    /// When the table is next rebuilt for slow start (ms since the epoch); 0: never.
    rebuild_at: u64,
    /// The resolution the table was built from.
    pub resolution: Arc<Resolution>,
    /// The cache's view of the target when this snapshot was published.
    pub status: Status,
}

/// An instance picked for one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Picked {
    /// Its index in the snapshot.
    pub index: usize,
    /// Its address.
    pub address: SocketAddr,
}

/// A service's current [`Snapshot`], and how it picks.
pub struct Balancer {
    /// Written by the cache's refresher through [`Publish::publish`] (and by slow start's
    /// rebuilds); read by every request with one `load()`.
    current: ArcSwap<Option<Snapshot>>,
    settings: Settings,
    clock: Clock,
    /// The SWRR cursor.
    cursor: AtomicUsize,
    /// Elects the one pick that rebuilds a ramping table.
    rebuilding: AtomicU64,
    /// Instances ejected now: while 0 (nearly always), picks read no instance state to check
    /// for ejections (`random` and `round_robin` then cost what the bare table does).
    out: AtomicUsize,
    /// The slab of the instances' hot fields and its next free slot; taken by rebuilds only.
    slab: Mutex<(state::Slab, u32)>,
}

impl Default for Balancer {
    fn default() -> Self {
        Self::new()
    }
}

impl Balancer {
    /// A weighted random balancer with the default ejection policy and nothing published yet.
    pub fn new() -> Self {
        Self::with_settings(Settings::default())
    }

    /// A balancer picking as `settings` say.
    pub fn with_settings(settings: Settings) -> Self {
        Self {
            current: ArcSwap::from_pointee(None),
            settings,
            clock: Clock::new(),
            cursor: AtomicUsize::new(0),
            rebuilding: AtomicU64::new(0),
            out: AtomicUsize::new(0),
            slab: Mutex::new((state::slab(0), 0)),
        }
    }

    /// The current snapshot (`None` before the first resolve finished).
    #[inline]
    pub fn load(&self) -> arc_swap::Guard<Arc<Option<Snapshot>>> {
        self.current.load()
    }

    /// The current snapshot as an owned handle (for debug output).
    pub fn snapshot(&self) -> Arc<Option<Snapshot>> {
        self.current.load_full()
    }

    /// The balancer's clock (ms since its epoch), for the times in instance states.
    pub fn clock(&self) -> Clock {
        self.clock
    }

    /// The balancer kind.
    pub fn kind(&self) -> BalancerKind {
        self.settings.kind
    }

    /// Picks an instance of `snap` for a request that started at `now`, never `avoid` (the
    /// instance a retry comes from). `None` when nothing else can be picked.
    #[inline]
    pub fn pick(&self, snap: &Snapshot, now: Instant, avoid: Option<SocketAddr>) -> Option<Picked> {
        let ms = self.clock.ms(now);
        if snap.rebuild_at != 0 && ms >= snap.rebuild_at {
            self.ramp(snap, ms);
        }
        let index = match (self.settings.kind, &snap.cycle) {
            (BalancerKind::RoundRobin, Some(cycle)) => self.next_in_cycle(snap, cycle, ms, avoid),
            (BalancerKind::P2c, _) => {
                let a = self.draw(snap, ms, avoid)?;
                match self.draw(snap, ms, avoid) {
                    Some(b) if b != a => {
                        // Both addresses are read before the scores are compared: the two
                        // loads overlap with the scores' instead of following the comparison.
                        let instances = snap.table.instances();
                        let (ia, ib) = (instances[a].address, instances[b].address);
                        let index = self.better(snap, a, b);
                        let address = if index == a { ia } else { ib };
                        return Some(Picked { index, address });
                    }
                    _ => Some(a),
                }
            }
            _ => self.draw(snap, ms, avoid),
        }?;
        Some(Picked {
            index,
            address: snap.table.instances()[index].address,
        })
    }

    /// Of two p2c candidates, the one with the lower score — or one admitted for its trial
    /// (only an ejected instance can have been): its trial slot is taken, so it must go.
    #[inline]
    fn better(&self, snap: &Snapshot, a: usize, b: usize) -> usize {
        if self.out.load(Ordering::Relaxed) != 0 {
            if snap.states[b].ejected_until().is_some() {
                return b;
            }
            if snap.states[a].ejected_until().is_some() {
                return a;
            }
        }
        let hot = |i: usize| &snap.hot[snap.slots[i] as usize];
        if hot(b).score() < hot(a).score() {
            b
        } else {
            a
        }
    }

    /// An instance drawn by weight that may be picked: a few draws, then a scan.
    #[inline]
    fn draw(&self, snap: &Snapshot, now: u64, avoid: Option<SocketAddr>) -> Option<usize> {
        if avoid.is_none() && self.out.load(Ordering::Relaxed) == 0 {
            return snap.table.draw();
        }
        for _ in 0..DRAWS {
            let i = snap.table.draw()?;
            if allowed(snap, i, avoid) && self.admits(snap, i, now) {
                return Some(i);
            }
        }
        self.scan(snap, now, avoid, fastrand::usize(..snap.states.len()))
    }

    /// The next instance from `start` on that may be picked; if every one is ejected (only
    /// when `max_ejected_percent` is 100), any but `avoid`.
    #[cold]
    fn scan(
        &self,
        snap: &Snapshot,
        now: u64,
        avoid: Option<SocketAddr>,
        start: usize,
    ) -> Option<usize> {
        let n = snap.states.len();
        let candidates = || {
            (0..n)
                .map(move |k| (start + k) % n)
                .filter(|&i| snap.weights[i] > 0 && allowed(snap, i, avoid))
        };
        let found = candidates().find(|&i| self.admits(snap, i, now));
        found.or_else(|| candidates().next())
    }

    fn next_in_cycle(
        &self,
        snap: &Snapshot,
        cycle: &[u32],
        now: u64,
        avoid: Option<SocketAddr>,
    ) -> Option<usize> {
        let len = cycle.len();
        if len == 0 {
            return None;
        }
        let at = self.cursor.fetch_add(1, Ordering::Relaxed);
        let i = cycle[at % len] as usize;
        if allowed(snap, i, avoid) && self.admits(snap, i, now) {
            return Some(i);
        }
        // Skipped instances keep their turn in the cycle: the next one in order stands in.
        (1..len)
            .map(|k| cycle[(at + k) % len] as usize)
            .find(|&i| allowed(snap, i, avoid) && self.admits(snap, i, now))
            .or_else(|| self.scan(snap, now, avoid, i))
    }

    /// Whether instance `i` may be picked at `now` (see [`Outlier::admits`]).
    #[inline]
    fn admits(&self, snap: &Snapshot, i: usize, now: u64) -> bool {
        self.out.load(Ordering::Relaxed) == 0 || self.settings.outlier.admits(&snap.states[i], now)
    }

    /// Counts an attempt going to `picked` (in flight until [`Balancer::finish`]).
    #[inline]
    pub fn start(&self, snap: &Snapshot, picked: Picked) -> Arc<InstanceState> {
        let s = snap.states[picked.index].clone();
        state::enter(&s);
        s
    }

    /// The attempt on `state` ended without telling anything about the instance (the app's
    /// side broke off).
    pub fn abandon(&self, state: &InstanceState) {
        state::leave(state);
    }

    /// Records how the attempt on `state` ended at `now`, `took` after it started: feeds the
    /// latency estimate and the ejection rules.
    pub fn finish(&self, state: &InstanceState, outcome: Outcome, took: Duration, now: Instant) {
        state::leave(state);
        if outcome == Outcome::Success {
            state.observe(took);
        } else if let Some(s) = &state.series {
            s.errors.inc();
        }
        let (failures, errors) = state.consecutive();
        if outcome == Outcome::Success
            && failures == 0
            && errors == 0
            && state.ejected_until().is_none()
        {
            return; // nothing to reset: the common case stays cheap
        }
        let ms = self.clock.ms(now);
        let snap = self.current.load();
        let all = match &**snap {
            Some(s) => &s.states[..],
            None => &[],
        };
        let change = self.settings.outlier.record(state, outcome, ms, all);
        if matches!(change, Change::Ejected(_) | Change::Returned) {
            self.out.store(ejected(all) as usize, Ordering::Relaxed);
        }
        if let Some(series) = &self.settings.series {
            match change {
                Change::Ejected(_) => {
                    series.ejections.inc();
                    series.ejected.set(ejected(all));
                }
                Change::Returned => series.ejected.set(ejected(all)),
                Change::None | Change::Capped => {}
            }
        }
        match change {
            Change::Ejected(until) => {
                tracing::warn!(ejected_for = ?Duration::from_millis(until - ms), "instance ejected after failures in a row")
            }
            Change::Returned => tracing::info!("ejected instance passed its trial and is back"),
            Change::Capped => {
                tracing::debug!("instance not ejected: max_ejected_percent reached")
            }
            Change::None => {}
        }
    }

    /// Rebuilds a ramping table, once per step, by the pick that found it due.
    #[cold]
    fn ramp(&self, snap: &Snapshot, now: u64) {
        let due = snap.rebuild_at;
        if self.rebuilding.fetch_max(due, Ordering::Relaxed) >= due {
            return; // another pick rebuilds this step
        }
        let next = self.build(&snap.resolution, snap.status.clone(), now, Some(snap));
        self.current.store(Arc::new(Some(next)));
    }

    /// A snapshot of `resolution` at `now` (ms), carrying each staying instance's state over
    /// from `prev`.
    fn build(
        &self,
        resolution: &Arc<Resolution>,
        status: Status,
        now: u64,
        prev: Option<&Snapshot>,
    ) -> Snapshot {
        let instances = &resolution.instances;
        let old: HashMap<SocketAddr, &Arc<InstanceState>> = prev
            .map(|p| {
                p.table
                    .instances()
                    .iter()
                    .map(|i| i.address)
                    .zip(p.states.iter())
                    .collect()
            })
            .unwrap_or_default();
        // Instances of the first table start at full weight; later ones ramp.
        let first = prev.is_none_or(|p| p.table.instances().is_empty());
        let joined = if first || self.settings.slow_start.is_none() {
            0
        } else {
            now
        };
        let mut guard = self.slab.lock().unwrap_or_else(|p| p.into_inner());
        let (slab, next) = &mut *guard;
        // Slots are never reused (see `state::Slab`): when the newcomers do not fit, every
        // instance moves to a new slab twice the table's size.
        let fresh = instances
            .iter()
            .filter(|i| old.get(&i.address).and_then(|s| s.slot_in(slab)).is_none())
            .count();
        let compact = *next as usize + fresh > slab.len();
        if compact {
            *slab = state::slab((2 * instances.len()).max(16));
            *next = 0;
        }
        let mut take = || {
            let slot = *next;
            *next += 1;
            slot
        };
        let states: Arc<[Arc<InstanceState>]> = instances
            .iter()
            .map(|i| match old.get(&i.address) {
                Some(s) if s.slot_in(slab).is_some() => Arc::clone(s),
                Some(s) => Arc::new(s.moved(slab.clone(), take())),
                None => Arc::new(InstanceState::in_slab(
                    slab.clone(),
                    take(),
                    joined,
                    self.series(i),
                )),
            })
            .collect();
        let slots: Arc<[u32]> = states
            .iter()
            .map(|s| s.slot_in(slab).unwrap_or(0))
            .collect();
        let hot = slab.clone();
        drop(guard);
        // Series of instances that left (none on a slow-start rebuild of the same answer).
        let changed = prev.is_none_or(|p| !Arc::ptr_eq(&p.resolution, resolution));
        if let (Some((service, family)), true) = (&self.settings.metrics, changed) {
            let staying: HashSet<SocketAddr> = instances.iter().map(|i| i.address).collect();
            for addr in old.keys().filter(|a| !staying.contains(a)) {
                family.remove_instance(service, &addr.to_string());
            }
        }
        let window = self.settings.slow_start.map_or(0, |d| d.as_millis() as u64);
        let mut ramping = false;
        let weights: Arc<[u64]> = instances
            .iter()
            .zip(states.iter())
            .map(|(i, s)| {
                let full = u64::from(i.weight) * SCALE;
                match s.ramp(now, window) {
                    Some(f) if full > 0 => {
                        ramping = true;
                        ((full as f64 * f) as u64).max(1)
                    }
                    _ => full,
                }
            })
            .collect();
        let (table, cycle) = match prev {
            // Same instances, no ramp in progress: the same table.
            Some(p) if Arc::ptr_eq(&p.resolution, resolution) && p.weights == weights => {
                (p.table.clone(), p.cycle.clone())
            }
            _ => {
                let cycle = (self.settings.kind == BalancerKind::RoundRobin)
                    .then(|| swrr::cycle(&weights))
                    .flatten()
                    .map(Arc::from);
                (Arc::new(Table::build_weighted(instances, &weights)), cycle)
            }
        };
        self.out.store(ejected(&states) as usize, Ordering::Relaxed);
        if let Some(series) = &self.settings.series {
            series.ejected.set(ejected(&states));
        }
        let step = (window / 20).max(100);
        Snapshot {
            table,
            states,
            hot,
            slots,
            weights,
            cycle,
            rebuild_at: if ramping { now + step } else { 0 },
            resolution: resolution.clone(),
            status,
        }
    }

    fn series(&self, i: &Instance) -> Option<crate::metrics::InstanceSeries> {
        let (service, family) = self.settings.metrics.as_ref()?;
        Some(family.instance(service, &i.address.to_string()))
    }
}

/// Whether instance `i` is not the one to avoid.
#[inline]
fn allowed(snap: &Snapshot, i: usize, avoid: Option<SocketAddr>) -> bool {
    avoid.is_none_or(|a| snap.table.instances()[i].address != a)
}

/// Instances ejected now.
fn ejected(states: &[Arc<InstanceState>]) -> i64 {
    states
        .iter()
        .filter(|s| s.ejected_until().is_some())
        .count() as i64
}

impl Publish for Balancer {
    fn publish(&self, resolution: &Arc<Resolution>, status: &Status) {
        let old = self.current.load();
        let now = self.clock.ms(Instant::now());
        let next = self.build(resolution, status.clone(), now, old.as_ref().as_ref());
        self.current.store(Arc::new(Some(next)));
    }
}

#[cfg(test)]
mod tests;
