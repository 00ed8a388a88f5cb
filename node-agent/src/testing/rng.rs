//! A small seeded generator (SplitMix64) for trials that must replay: the same seed gives
//! the same choices on every machine and every version of our dependencies, so a printed
//! seed replays a failure.
//!
//! How a run's seed and a trial's number make that trial's generator is each harness's own
//! (`e2e::rng::for_trial`, `reliability::rng::for_trial`): the seeds their documents print
//! replay only with their own formula.

#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// A generator seeded with `state` that has already made one draw: the start of a
    /// trial's generator, independent of the trials before it.
    pub fn warmed(state: u64) -> Self {
        let mut r = Self(state);
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
    fn a_seed_replays_and_draws_stay_in_range() {
        let run = |seed| (0..4).map(|_| Rng::new(seed).next_u64()).collect::<Vec<_>>();
        assert_eq!(run(5), run(5));
        assert_ne!(Rng::warmed(0).next_u64(), Rng::warmed(1).next_u64());
        let mut r = Rng::new(1);
        assert!((0..1000).map(|_| r.range(3, 5)).all(|v| (3..=5).contains(&v)));
        assert!((0..500).map(|_| r.pick(&[7, 8])).all(|v| v == 7 || v == 8));
    }
}
