//! Micro benches of stage 4 (balancing): what one pick costs by instance count, what a table
//! rebuild costs, and the pick path as the forwarder runs it — the service's `Balancer::load` +
//! `pick` — on two threads sharing one published snapshot.
//!
//! Run with `cargo bench --bench balance`. The bar (issue 4): `pick()` ≤ 25 ns at 10,000
//! instances and flat in instance count; a 10,000-instance table built in ≤ 1 ms.
//! bench/load/run.py runs this and copies divan's medians into bench/RESULTS.md.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use divan::{black_box, Bencher};
use waypost::balance::{Balancer, Settings, Table};
use waypost::cache::state::TargetState;
use waypost::cache::Publish;
use waypost::config::BalancerKind;
use waypost::discover::{Instance, Resolution};

fn main() {
    divan::main();
}

/// `n` distinct instances with random weights in 1..=100, the same for every run (fixed seed) so
/// results stay comparable. The addresses are never contacted.
fn instances(n: usize) -> Vec<Instance> {
    let mut rng = fastrand::Rng::with_seed(0x5eed_0004);
    (0..n)
        .map(|i| {
            let ip = Ipv4Addr::from(0x0a00_0000 | i as u32); // 10.0.0.0/8, one address each
            Instance::new(SocketAddr::from((ip, 8080)), rng.u32(1..=100))
        })
        .collect()
}

/// One `pick()` (random number included) from a table of `n` instances.
#[divan::bench(args = [3, 100, 10_000])]
fn pick(bencher: Bencher, n: usize) {
    let table = Table::build(&instances(n));
    bencher.bench_local(|| black_box(&table).pick().map(|i| i.address));
}

/// `Table::build` of 10,000 instances (what a discovery change costs, off the hot path).
#[divan::bench(args = [10_000])]
fn build(bencher: Bencher, n: usize) {
    let list = instances(n);
    bencher.bench_local(|| Table::build(black_box(&list)));
}

/// The forwarder's pick path on 2 threads at once: load the service's published snapshot and
/// `Balancer::pick` from it (as `forward::Proxy::pick` does, the request's start time handed in).
#[divan::bench(args = [3, 10_000], threads = [2], sample_size = 10_000)]
fn pick_shared(bencher: Bencher, n: usize) {
    let balancer = Balancer::new();
    let resolution = Arc::new(Resolution::new(instances(n)));
    balancer.publish(&resolution, &TargetState::new("static", "echo").status);
    let now = tokio::time::Instant::now();
    bencher.bench(|| {
        let snapshot = balancer.load();
        let snap = snapshot.as_ref().as_ref().expect("published");
        black_box(balancer.pick(snap, now, None).map(|p| p.address))
    });
}

/// `Balancer::pick` by balancer kind, as a request makes it (the snapshot already loaded, the
/// request's start time handed in): `random` is the alias draw plus the ejection check, `p2c`
/// two draws and two scores, `round_robin` one atomic step of the SWRR cycle. The bar
/// (issue 13): p2c ≤ 40 ns at 10,000 instances.
#[divan::bench(args = [3, 100, 10_000], consts = [0, 1, 2])]
fn pick_kind<const KIND: u8>(bencher: Bencher, n: usize) {
    let kind = match KIND {
        0 => BalancerKind::Random,
        1 => BalancerKind::RoundRobin,
        _ => BalancerKind::P2c,
    };
    let balancer = Balancer::with_settings(Settings {
        kind,
        ..Settings::default()
    });
    let resolution = Arc::new(Resolution::new(instances(n)));
    balancer.publish(&resolution, &TargetState::new("static", "echo").status);
    let snapshot = balancer.snapshot();
    let snap = snapshot.as_ref().as_ref().expect("published");
    let now = tokio::time::Instant::now();
    bencher.bench_local(|| black_box(&balancer).pick(black_box(snap), now, None));
}

/// The bare table of a balancer's snapshot (as `pick_kind`'s, without the balancer around it):
/// tells the table's own memory from what the balancer adds.
#[divan::bench(args = [10_000])]
fn pick_snapshot_table(bencher: Bencher, n: usize) {
    let balancer = Balancer::new();
    let resolution = Arc::new(Resolution::new(instances(n)));
    balancer.publish(&resolution, &TargetState::new("static", "echo").status);
    let snapshot = balancer.snapshot();
    let table = &snapshot.as_ref().as_ref().expect("published").table;
    bencher.bench_local(|| black_box(table).pick().map(|i| i.address));
}
