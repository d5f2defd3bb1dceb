//! Cost of the cache's refresh cycle (issue: discovery that stays fresh): 1,000 cached targets ×
//! 50 instances, each refreshed once — answer built, accepted by the target's state, published
//! to its balancer. Two cases: every answer changed (the table is rebuilt) and every answer
//! unchanged (compared, status republished, table kept). Allocations are counted by divan's
//! `AllocProfiler`.
//!
//! Run: `cargo bench --bench refresh`.

use std::net::SocketAddr;
use std::time::SystemTime;

use divan::{AllocProfiler, Bencher};
use waypost::balance::Balancer;
use waypost::cache::state::TargetState;
use waypost::cache::{Policy, Publish};
use waypost::discover::{Instance, Resolution};

#[global_allocator]
static ALLOC: AllocProfiler = AllocProfiler::system();

const TARGETS: usize = 1_000;
const INSTANCES: usize = 50;

fn main() {
    divan::main();
}

/// What a resolver hands back: a fresh answer of `INSTANCES` instances for target `t`;
/// `generation` changes the weights (not the addresses: replacing every instance at once would
/// be held by the guard, not applied) so consecutive answers differ.
fn answer(t: usize, generation: u32) -> Resolution {
    Resolution::new(
        (0..INSTANCES)
            .map(|i| {
                let addr = SocketAddr::from(([10, (t >> 8) as u8, t as u8, i as u8], 8080));
                Instance::new(addr, 1 + ((i as u32 + generation) % 7))
            })
            .collect(),
    )
}

struct Fleet {
    states: Vec<TargetState>,
    balancers: Vec<Balancer>,
    policy: Policy,
}

fn fleet() -> Fleet {
    let policy = Policy::default();
    let mut states: Vec<TargetState> = (0..TARGETS)
        .map(|_| TargetState::new("bench", "t"))
        .collect();
    let balancers: Vec<Balancer> = (0..TARGETS).map(|_| Balancer::new()).collect();
    for (t, (st, b)) in states.iter_mut().zip(&balancers).enumerate() {
        st.on_success(answer(t, 0), SystemTime::now(), &policy);
        b.publish(&st.current, &st.status);
    }
    Fleet {
        states,
        balancers,
        policy,
    }
}

/// One refresh of every target; answers come pre-built (as the resolver would hand them over).
fn cycle(f: &mut Fleet, answers: Vec<Resolution>) {
    let now = SystemTime::now();
    for ((st, b), res) in f.states.iter_mut().zip(&f.balancers).zip(answers) {
        let outcome = st.on_success(res, now, &f.policy);
        assert_ne!(
            outcome,
            waypost::cache::state::Outcome::Held,
            "the bench must not trip the guard"
        );
        b.publish(&st.current, &st.status);
    }
}

/// Every target's answer changed: 1,000 tables of 50 instances rebuilt and swapped in.
#[divan::bench(sample_count = 30)]
fn changed_cycle(bencher: Bencher) {
    let mut f = fleet();
    let mut generation = 1u32;
    bencher
        .with_inputs(|| {
            generation = generation.wrapping_add(1);
            (0..TARGETS)
                .map(|t| answer(t, generation))
                .collect::<Vec<_>>()
        })
        .bench_local_values(|answers| cycle(&mut f, answers));
}

/// Every answer equals the current one: compare, republish status, keep the table.
#[divan::bench(sample_count = 30)]
fn unchanged_cycle(bencher: Bencher) {
    let mut f = fleet();
    bencher
        .with_inputs(|| (0..TARGETS).map(|t| answer(t, 0)).collect::<Vec<_>>())
        .bench_local_values(|answers| cycle(&mut f, answers));
}

/// Building the answers themselves (what a resolver costs us before the cache sees them).
#[divan::bench(sample_count = 30)]
fn build_answers() -> Vec<Resolution> {
    (0..TARGETS).map(|t| answer(t, 1)).collect()
}
