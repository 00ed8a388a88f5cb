//! A seeded pseudo-random generator (SplitMix64) for trials that must replay: the same
//! seed and trial number give the same choices on any machine, whatever the versions
//! of our dependencies.

#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The generator of trial `trial` of a run seeded `seed`: independent of the trials
    /// before it, so one trial replays alone.
    pub fn for_trial(seed: u64, trial: u64) -> Self {
        let mut r = Self(seed ^ trial.wrapping_add(1).wrapping_mul(0xd134_2543_de82_ef95));
        r.next_u64();
        r
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n`; `n` must be positive.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    /// True `percent` times in a hundred.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    /// One of `items` (not empty).
    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_replays_and_trials_differ() {
        let run = |seed| (0..4).map(|_| Rng::new(seed).next_u64()).collect::<Vec<_>>();
        assert_eq!(run(5), run(5));
        let first = |t| Rng::for_trial(9, t).next_u64();
        assert_eq!(first(3), first(3));
        assert_ne!(first(0), first(1));
        let mut r = Rng::new(1);
        assert!((0..500).map(|_| r.range(2, 4)).all(|v| (2..=4).contains(&v)));
        assert!((0..500).map(|_| r.pick(&[7, 8])).all(|v| v == 7 || v == 8));
    }
}
