//! Smooth weighted round robin, as nginx does it (`ngx_http_upstream_get_peer`): at each step
//! every instance's `current` grows by its weight, the largest `current` is picked (the first
//! on a tie) and loses the total weight. Weights 5:1:1 give `a a b a c a a`, never a burst.
//!
//! The sequence repeats after `total weight` steps, so it is computed once per table into a
//! cycle of instance indices and walked with one atomic cursor: a pick is a `fetch_add` and a
//! load, no lock. Computing the cycle costs `instances × total weight` steps; a table that
//! would cost more than [`MAX_WORK`] has its weights scaled down (proportions kept to within
//! rounding), and one where even that is too much (thousands of instances of uneven weight)
//! gets no cycle: the balancer then picks at random by weight.

/// The most `instances × total weight` steps spent building a cycle (~10 ms).
pub const MAX_WORK: u64 = 1 << 24;

/// The SWRR order of `weights` (instance indices, one cycle), or `None` when too costly.
pub fn cycle(weights: &[u64]) -> Option<Box<[u32]>> {
    let live: Vec<usize> = (0..weights.len()).filter(|&i| weights[i] > 0).collect();
    if live.is_empty() {
        return Some(Box::new([]));
    }
    let first = weights[live[0]];
    if live.iter().all(|&i| weights[i] == first) {
        // Equal weights: plain rotation, whatever the count.
        return Some(live.iter().map(|&i| i as u32).collect());
    }
    let n = live.len() as u64;
    let mut w: Vec<u64> = live.iter().map(|&i| weights[i]).collect();
    let g = w.iter().copied().fold(0, gcd);
    w.iter_mut().for_each(|x| *x /= g);
    let total: u64 = w.iter().sum();
    if n.saturating_mul(total) > MAX_WORK {
        let target = (MAX_WORK / n).max(1);
        w.iter_mut()
            .for_each(|x| *x = ((*x as u128 * target as u128) / total as u128).max(1) as u64);
        if n * w.iter().sum::<u64>() > MAX_WORK {
            return None;
        }
    }
    let total: i64 = w.iter().map(|&x| x as i64).sum();
    let mut current = vec![0i64; w.len()];
    let mut out = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for k in 0..w.len() {
            current[k] += w[k] as i64;
            if current[k] > current[best] {
                best = k;
            }
        }
        current[best] -= total;
        out.push(live[best] as u32);
    }
    Some(out.into_boxed_slice())
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn letters(weights: &[u64]) -> String {
        cycle(weights)
            .unwrap()
            .iter()
            .map(|&i| (b'a' + i as u8) as char)
            .collect()
    }

    #[test]
    fn nginx_sequences() {
        // Worked by hand with nginx's rule (ties to the first): for 3:1 the currents before
        // each pick are (3,1) a, (2,2) a, (1,3) b, (4,0) a, then (3,1) again.
        assert_eq!(letters(&[3, 1]), "aaba");
        assert_eq!(letters(&[5, 1, 1]), "aabacaa");
        assert_eq!(letters(&[1, 1, 1]), "abc");
        assert_eq!(letters(&[4, 2]), "aba", "scaled by the gcd");
        assert_eq!(letters(&[2, 0, 1]), "aca", "weight 0 is never in the cycle");
    }

    #[test]
    fn long_runs_keep_the_proportions_and_never_burst() {
        let c = cycle(&[7, 3, 1]).unwrap();
        let count = |k| c.iter().filter(|&&i| i == k).count();
        assert_eq!((count(0), count(1), count(2)), (7, 3, 1));
        // The heaviest never runs more than ceil(7/4) = 2 in a row.
        let longest = c.windows(3).filter(|w| w.iter().all(|&i| i == 0)).count();
        assert_eq!(longest, 0, "{c:?}");
    }

    #[test]
    fn costly_tables_are_scaled_or_refused() {
        let c = cycle(&[1_000_000_007, 1]).unwrap();
        assert!(c.len() as u64 <= MAX_WORK);
        assert!(c.contains(&1));
        let even = vec![5u64; 10_000];
        assert_eq!(cycle(&even).unwrap().len(), 10_000);
        let uneven: Vec<u64> = (0..10_000u64).map(|i| 1 + i % 7).collect();
        assert!(cycle(&uneven).is_none());
    }
}
