//! Weighted round-robin egress source selection (spec §8.3).
//!
//! Each scheduled queue owns one [`WeightedRoundRobin`] (reset when the
//! queue is reaped) and asks it for a pool entry every time a message is
//! promoted. The algorithm is the classic LVS one: an index `i` and a
//! current weight `cw`, both starting at 0, stepped over the entries whose
//! weight is non-zero and which pass the caller's filter (not suspended).
//! If the caller then refuses the pick (ready queue full, selection-rate
//! throttle), that entry is dropped from the candidates and selection runs
//! again, so refused sources are skipped rather than waited for.

/// Persistent WRR state for one scheduled queue.
#[derive(Clone, Debug, Default)]
pub struct WeightedRoundRobin {
    index: usize,
    current_weight: i64,
    /// Reused buffer of candidate entry indices, to keep picks allocation-free.
    candidates: Vec<usize>,
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

impl WeightedRoundRobin {
    pub fn new() -> Self {
        Self::default()
    }

    /// Forget the rotation (as when the scheduled queue is reaped).
    pub fn reset(&mut self) {
        self.index = 0;
        self.current_weight = 0;
    }

    /// Pick an entry index.
    ///
    /// * `weights[k]` is the weight of entry `k`; weight 0 excludes it.
    /// * `eligible(k)` filters out entries before the rotation runs
    ///   (auto-suspended sources, administratively suspended ready queues).
    /// * `accept(k)` is asked about the chosen entry; returning `false`
    ///   (ready queue full, `source_selection_rate` refused) removes it from
    ///   this selection and the rotation continues with the rest.
    ///
    /// Returns `None` when no candidate is left.
    pub fn select(
        &mut self,
        weights: &[u32],
        mut eligible: impl FnMut(usize) -> bool,
        mut accept: impl FnMut(usize) -> bool,
    ) -> Option<usize> {
        self.candidates.clear();
        self.candidates.extend(
            weights
                .iter()
                .enumerate()
                .filter(|(k, w)| **w > 0 && eligible(*k))
                .map(|(k, _)| k),
        );
        while !self.candidates.is_empty() {
            let position = self.step(weights);
            let entry = self.candidates[position];
            if accept(entry) {
                return Some(entry);
            }
            self.candidates.remove(position);
        }
        None
    }

    /// One LVS step over the current candidates; returns a position in
    /// `self.candidates`.
    fn step(&mut self, weights: &[u32]) -> usize {
        let n = self.candidates.len();
        if n == 1 {
            return 0;
        }
        let weight_of = |pos: usize| i64::from(weights[self.candidates[pos]]);
        let (mut g, mut max) = (0u64, 0i64);
        for pos in 0..n {
            let w = weight_of(pos);
            g = gcd(g, w as u64);
            max = max.max(w);
        }
        let g = g as i64;
        loop {
            self.index = (self.index + 1) % n;
            if self.index == 0 {
                self.current_weight -= g;
                if self.current_weight <= 0 {
                    self.current_weight = max;
                }
            }
            if weight_of(self.index) >= self.current_weight {
                return self.index;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn always(_: usize) -> bool {
        true
    }

    #[test]
    fn first_pick_is_index_one_and_sequence_is_lvs() {
        let mut wrr = WeightedRoundRobin::new();
        let picks: Vec<usize> = (0..8)
            .map(|_| wrr.select(&[1, 3], always, always).unwrap())
            .collect();
        assert_eq!(picks, vec![1, 1, 1, 0, 1, 1, 1, 0]);
    }

    #[test]
    fn one_to_three_shares_within_five_percent() {
        let mut wrr = WeightedRoundRobin::new();
        let mut counts = [0usize; 2];
        for _ in 0..4000 {
            counts[wrr.select(&[1, 3], always, always).unwrap()] += 1;
        }
        let share = counts[1] as f64 / 4000.0;
        assert!((share - 0.75).abs() < 0.05, "{counts:?}");
        assert_eq!(counts, [1000, 3000]);
    }

    #[test]
    fn equal_weights_rotate() {
        let mut wrr = WeightedRoundRobin::new();
        let picks: Vec<usize> = (0..6)
            .map(|_| wrr.select(&[2, 2, 2], always, always).unwrap())
            .collect();
        assert_eq!(picks, vec![1, 2, 0, 1, 2, 0]);
    }

    #[test]
    fn zero_weight_and_ineligible_entries_are_never_picked() {
        let mut wrr = WeightedRoundRobin::new();
        for _ in 0..50 {
            let pick = wrr.select(&[0, 5, 5], |k| k != 2, always).unwrap();
            assert_eq!(pick, 1);
        }
        assert_eq!(wrr.select(&[0, 0], always, always), None);
        assert_eq!(wrr.select(&[], always, always), None);
        assert_eq!(wrr.select(&[1, 1], |_| false, always), None);
    }

    #[test]
    fn refused_pick_reselects_among_the_rest() {
        let mut wrr = WeightedRoundRobin::new();
        let mut asked = Vec::new();
        // Entry 1 has a full ready queue.
        let pick = wrr.select(&[1, 3, 1], always, |k| {
            asked.push(k);
            k != 1
        });
        assert_eq!(asked.first(), Some(&1));
        assert!(matches!(pick, Some(0) | Some(2)));
        // Everyone refuses: no source.
        assert_eq!(wrr.select(&[1, 3, 1], always, |_| false), None);
    }
}
