//! Walker/Vose's alias method: one random 64-bit number chooses a slot (high half) and decides
//! between the slot's primary instance and its alias (low half) — O(1) whatever the instance
//! count, no lock, no allocation. Instances with weight 0 stay in the table (they are shown on
//! `/debug/services`) but own no slot, so they are never picked: that is how an instance is
//! drained.

use crate::discover::Instance;

/// One slot of the alias table: 16 bytes, so four share a cache line.
#[derive(Debug, Clone, Copy)]
struct Slot {
    /// Pick `primary` when the low 32 random bits are below this (out of 2^32); 2^32 = always.
    threshold: u64,
    primary: u32,
    alias: u32,
}

/// An immutable weighted table of instances.
#[derive(Debug, Clone, Default)]
pub struct Table {
    instances: Box<[Instance]>,
    slots: Box<[Slot]>,
}

impl Table {
    /// Builds the alias table for `instances` (any order; weight 0 = never picked). O(n).
    pub fn build(instances: &[Instance]) -> Self {
        let weights: Vec<u64> = instances.iter().map(|i| u64::from(i.weight)).collect();
        Self::build_weighted(instances, &weights)
    }

    /// Builds the alias table for `instances` with the effective `weights` (one per instance:
    /// registry weights scaled by slow start, say). O(n).
    pub fn build_weighted(instances: &[Instance], weights: &[u64]) -> Self {
        let weight = |i: u32| u128::from(weights.get(i as usize).copied().unwrap_or(0));
        let live: Vec<u32> = (0..instances.len() as u32)
            .filter(|&i| weight(i) > 0)
            .collect();
        let n = live.len() as u128;
        if n == 0 {
            return Self {
                instances: instances.into(),
                slots: Box::new([]),
            };
        }
        let total: u128 = live.iter().map(|&i| weight(i)).sum();
        // Each slot holds `total` units of mass; instance i brings weight·n units.
        let mut mass: Vec<u128> = live.iter().map(|&i| weight(i) * n).collect();
        let mut slots: Vec<Slot> = live
            .iter()
            .map(|&i| Slot {
                threshold: 1 << 32,
                primary: i,
                alias: i,
            })
            .collect();
        let (mut small, mut large): (Vec<usize>, Vec<usize>) =
            (0..live.len()).partition(|&s| mass[s] < total);
        while let (Some(s), Some(&l)) = (small.pop(), large.last()) {
            slots[s].threshold = ((mass[s] << 32) / total) as u64;
            slots[s].alias = live[l];
            mass[l] -= total - mass[s];
            if mass[l] < total {
                large.pop();
                small.push(l);
            }
        }
        // Whatever is left is full (up to rounding): always its primary.
        Self {
            instances: instances.into(),
            slots: slots.into_boxed_slice(),
        }
    }

    /// Picks an instance at random, in proportion to weight. `None` when no instance has a
    /// weight above 0.
    #[inline]
    pub fn pick(&self) -> Option<&Instance> {
        self.pick_with(fastrand::u64(..))
    }

    /// Picks with the given random number (for tests).
    #[inline]
    fn pick_with(&self, random: u64) -> Option<&Instance> {
        self.draw_with(random).map(|i| &self.instances[i])
    }

    /// The index of an instance drawn at random in proportion to weight.
    #[inline]
    pub fn draw(&self) -> Option<usize> {
        self.draw_with(fastrand::u64(..))
    }

    /// The index drawn with the given random number.
    #[inline]
    pub(crate) fn draw_with(&self, random: u64) -> Option<usize> {
        let n = self.slots.len() as u64;
        if n == 0 {
            return None;
        }
        // Multiply-shift maps the high 32 bits onto [0, n) without a division.
        let slot = &self.slots[(((random >> 32) * n) >> 32) as usize];
        let chosen = if (random & 0xffff_ffff) < slot.threshold {
            slot.primary
        } else {
            slot.alias
        };
        Some(chosen as usize)
    }

    /// Every instance, drained ones included.
    pub fn instances(&self) -> &[Instance] {
        &self.instances
    }

    /// How many instances can be picked (weight above 0).
    pub fn pickable(&self) -> usize {
        self.slots.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::tests::instances;

    /// Exact distribution: sweep the random space evenly and count.
    fn shares(t: &Table, samples: u64) -> Vec<f64> {
        let mut counts = vec![0u64; t.instances().len()];
        let step = u64::MAX / samples;
        for k in 0..samples {
            let r = (k * step).rotate_left(32) ^ k.wrapping_mul(0x9E37_79B9_7F4A_7C15);
            let inst = t.pick_with(r).unwrap();
            counts[inst.address.port() as usize - 1000] += 1;
        }
        counts.iter().map(|&c| c as f64 / samples as f64).collect()
    }

    #[test]
    fn picks_in_proportion_to_weight() {
        let t = Table::build(&instances(&[3, 2, 1]));
        let s = shares(&t, 600_000);
        for (got, want) in s.iter().zip([0.5, 1.0 / 3.0, 1.0 / 6.0]) {
            assert!((got - want).abs() < 0.01, "share {got} vs {want}");
        }
    }

    #[test]
    fn weight_zero_is_never_picked() {
        let t = Table::build(&instances(&[1, 0, 5]));
        assert_eq!(t.pickable(), 2);
        assert_eq!(shares(&t, 100_000)[1], 0.0);
        assert!(Table::build(&instances(&[0, 0])).pick().is_none());
        assert!(Table::build(&[]).pick().is_none());
    }

    #[test]
    fn extreme_weights_keep_exact_mass() {
        let t = Table::build(&instances(&[1_000_000, 1, 1, 1]));
        let s = shares(&t, 1_000_000);
        assert!(s[0] > 0.999, "{s:?}");
        let big = Table::build(&instances(&vec![7; 10_000]));
        assert_eq!(big.pickable(), 10_000);
        for r in [0, u64::MAX, 1 << 63, 12345] {
            assert!(big.pick_with(r).is_some());
        }
    }
}
