//! Where in the scheduler tick each timed run starts.
//!
//! An XDP, TC or uprobe attach waits for an RCU grace period, and grace periods end on
//! scheduler ticks (every 4 ms at HZ=250). How long an attach takes therefore depends on
//! how far into a tick it starts. Every run starts a fixed pause after the previous one
//! settled, and that settling is itself tick-aligned, so without help each method lands
//! at its own, nearly constant, phase: in one traced run libbpf's attaches all started
//! 0.5–1.5 ms into a tick and the agent's 1.7–3.9 ms in, and the timings compared those
//! phases rather than the methods (docs/benchmarks.md, "Where in the tick an attach
//! starts").
//!
//! The bench adds [`offset`] to every pause. Over `n` iterations the offsets are `n`
//! evenly spaced points of `span`, visited in a scattered order; every method gets the
//! same offset in the same iteration, so each samples the whole tick the same way.

use std::time::Duration;

/// Offset of timed iteration `i` of `n` (0 past `n`).
/// `span` should be a whole number of ticks for every common HZ: 20 ms is 2 ticks at
/// HZ=100, 5 at 250, 6 at 300 and 20 at 1000.
pub fn offset(i: usize, n: usize, span: Duration) -> Duration {
    if n == 0 || i >= n {
        return Duration::ZERO;
    }
    // A stride coprime with n visits every point once; near n × 0.618 it scatters them,
    // so that drift over the run does not line up with the phase.
    let stride = (n * 618 / 1000..).find(|s| *s > 0 && gcd(*s, n) == 1).unwrap_or(1);
    span * ((i * stride) % n) as u32 / n as u32
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 { a } else { gcd(b, a % b) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_cover_the_span_evenly_once_each() {
        let span = Duration::from_millis(20);
        for n in [1, 2, 5, 20, 30, 64] {
            let mut got: Vec<Duration> = (0..n).map(|i| offset(i, n, span)).collect();
            got.sort();
            let want: Vec<Duration> = (0..n).map(|k| span * k as u32 / n as u32).collect();
            assert_eq!(got, want, "n = {n}");
        }
        // Modulo a 4 ms tick, 20 points of 20 ms give each of 0, 1, 2, 3 ms five times.
        let mut phases = [0; 4];
        for i in 0..20 {
            phases[(offset(i, 20, span).as_millis() % 4) as usize] += 1;
        }
        assert_eq!(phases, [5; 4]);
        // Scattered: neighbours in time are not neighbours in the tick.
        assert!(offset(1, 30, span).abs_diff(offset(0, 30, span)) > Duration::from_millis(5));
        assert_eq!(offset(30, 30, span), Duration::ZERO, "warm-ups past n");
        assert_eq!(offset(0, 0, span), Duration::ZERO);
    }
}
