//! Seeded choices for the crash trials ([`Rng`], shared with the e2e harness): the same
//! seed gives the same trials on every machine, so a printed seed replays a failure.

pub use agent::testing::rng::Rng;

/// The generator of trial `index` of a run: trials replay on their own (`--only-trial`)
/// without running the ones before. The formula is this harness's own: the seeds
/// docs/reliability.md records replay only with it.
pub fn for_trial(seed: u64, index: u64) -> Rng {
    Rng::warmed(seed ^ index.wrapping_mul(0xa076_1d64_78bd_642f))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trials_replay_as_before_and_differ() {
        // The values this formula gave before the generator moved to agent::testing.
        assert_eq!(for_trial(424_242, 17).next_u64(), 0xeb21_c9ce_bd13_260a);
        assert_eq!(for_trial(20_261_130, 0).next_u64(), 0x1b4e_00a1_57c4_312d);
        assert_ne!(for_trial(7, 0).next_u64(), for_trial(7, 1).next_u64());
    }
}
