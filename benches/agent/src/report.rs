//! The markdown bpfleet-bench prints: percentiles, ratios against the 1.5× target, and
//! the memory readings.

use std::time::Duration;

use crate::rss::RssReport;

/// One program's timings, per method (empty: the method did not run).
pub struct Row<'a> {
    pub program: &'a str,
    pub agent: &'a [Duration],
    pub agent_remove: &'a [Duration],
    pub libbpf: &'a [Duration],
    pub cli: &'a [Duration],
    /// Whether the command line could attach (bpftool 7.1: XDP and, with tc, TC).
    pub cli_attaches: bool,
    pub aya: &'a [Duration],
}

/// Nearest-rank percentile of sorted samples.
pub fn pct(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

pub fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1e3)
}

fn sorted(v: &[Duration]) -> Vec<Duration> {
    let mut s = v.to_vec();
    s.sort();
    s
}

/// "p50 / p90" in ms.
fn p50_p90(v: &[Duration]) -> String {
    if v.is_empty() {
        return "—".into();
    }
    let s = sorted(v);
    format!("{} / {}", ms(pct(&s, 50.0)), ms(pct(&s, 90.0)))
}

/// Ratio of p50s, then the median of the per-iteration ratios (runs i of both methods
/// are neighbours in time, so this one cancels most of the machine's drift).
fn ratio(agent: &[Duration], base: &[Duration]) -> String {
    if agent.is_empty() || base.is_empty() {
        return "—".into();
    }
    let r = pct(&sorted(agent), 50.0).as_secs_f64() / pct(&sorted(base), 50.0).as_secs_f64();
    let mut paired: Vec<f64> = agent.iter().zip(base).map(|(a, b)| a.as_secs_f64() / b.as_secs_f64()).collect();
    paired.sort_by(f64::total_cmp);
    let mark = if r <= 1.5 { "✓" } else { "✗" };
    format!("**{r:.2}×** {mark} ({:.2}×)", paired[paired.len() / 2])
}

pub fn latency_table(iterations: usize, rows: &[Row<'_>]) -> String {
    let mut out = format!(
        "Load + attach, milliseconds, p50 / p90 of {iterations} interleaved iterations (their starts \
         spread over the scheduler tick). Ratios: agent p50 ÷ \
         baseline p50 (✓ when ≤ 1.5×), then in parentheses the median of the per-iteration ratios. \
         The agent runs in a worker process set up as bpfleet-agent is (kernel BTF hidden from aya, parsed only when a load needs it); \
         the baselines run in the bench process, which still sees it.\n\n\
         | Program | agent | libbpf (in-process) | agent ÷ libbpf | bpftool + tc CLI | agent ÷ CLI | \
         aya 0.14 as is | agent Remove |\n|---|---|---|---|---|---|---|---|\n"
    );
    for r in rows {
        let (cli, cli_ratio) = if r.cli_attaches {
            (p50_p90(r.cli), ratio(r.agent, r.cli))
        } else {
            (format!("{} (load only)", p50_p90(r.cli)), "n/a".into())
        };
        out.push_str(&format!(
            "| {} | {} | {} | {} | {cli} | {cli_ratio} | {} | {} |\n",
            r.program,
            p50_p90(r.agent),
            p50_p90(r.libbpf),
            ratio(r.agent, r.libbpf),
            p50_p90(r.aya),
            p50_p90(r.agent_remove),
        ));
    }
    out
}

/// How far above a program's usual fastest attach (any method) a sample must be to count as
/// having waited for one more RCU grace period. An XDP attach waits for a grace period inside
/// the kernel (`synchronize_rcu` in `bpf_dispatcher_change_prog`), which ends on a 4 ms tick
/// (HZ=250); TC and uprobe attaches show the same two modes. The slow ones take one or two
/// ticks more, so half a tick separates the modes (docs/benchmarks.md, "Where in the tick an
/// attach starts").
pub const GRACE_PERIOD_SPLIT: Duration = Duration::from_millis(2);

/// Where the fast mode starts: the 10th percentile of every method's samples together, so
/// that one lucky outlier does not narrow the window.
pub fn fast_floor(all: &[Duration]) -> Option<Duration> {
    (!all.is_empty()).then(|| pct(&sorted(all), 10.0))
}

/// The fast mode of `samples` (those within `split` of `fastest`): its p50, and the share
/// of samples above it.
pub fn fast_mode(samples: &[Duration], fastest: Duration, split: Duration) -> Option<(Duration, f64)> {
    let fast: Vec<Duration> = sorted(samples).into_iter().filter(|d| *d <= fastest + split).collect();
    if fast.is_empty() {
        return None;
    }
    let slow_share = 1.0 - fast.len() as f64 / samples.len() as f64;
    Some((pct(&fast, 50.0), slow_share))
}

/// The latency table split by grace-period mode: agent and libbpf p50 in the fast mode,
/// their ratio, and how often each paid one more grace period.
pub fn mode_table(rows: &[Row<'_>]) -> String {
    let mut out = format!(
        "Split by mode: p50 of the attaches within {} ms of the usual fastest (10th percentile of both \
         methods together), and the share that waited for one more RCU grace period.\n\n\
         | Program | agent, fast mode | libbpf, fast mode | agent ÷ libbpf | agent slower by a grace period | \
         libbpf slower by a grace period |\n|---|---:|---:|---:|---:|---:|\n",
        GRACE_PERIOD_SPLIT.as_millis()
    );
    for r in rows.iter().filter(|r| !r.agent.is_empty() && !r.libbpf.is_empty()) {
        let all: Vec<Duration> = r.agent.iter().chain(r.libbpf).copied().collect();
        let Some(fastest) = fast_floor(&all) else { continue };
        let (Some((a, a_slow)), Some((l, l_slow))) =
            (fast_mode(r.agent, fastest, GRACE_PERIOD_SPLIT), fast_mode(r.libbpf, fastest, GRACE_PERIOD_SPLIT))
        else {
            continue;
        };
        out.push_str(&format!(
            "| {} | {} | {} | {:.2}× | {:.0} % | {:.0} % |\n",
            r.program,
            ms(a),
            ms(l),
            a.as_secs_f64() / l.as_secs_f64(),
            a_slow * 100.0,
            l_slow * 100.0
        ));
    }
    out
}

pub fn rss_table(r: &RssReport) -> String {
    let mib = |k: u64| format!("{:.1} MiB", k as f64 / 1024.0);
    let mark = |kib: u64| if kib <= 12 * 1024 { "✓" } else { "✗" };
    format!(
        "| bpfleet-agent --standalone | VmRSS |\n|---|---|\n\
         | idle, empty manifest directory | {} {} (target ≤ 12 MiB) |\n\
         | idle, the {} standalone examples running | {} {} (target ≤ 12 MiB) |\n\
         | {} tracepoint programs running | {} |\n\
         | peak over the run (VmHWM) | {} |\n\n\
         Loading the {} manifests took {:.2} s, from the first file written to the last program pinned.\n",
        mib(r.idle_kib),
        mark(r.idle_kib),
        r.examples,
        mib(r.examples_kib),
        mark(r.examples_kib),
        r.programs,
        mib(r.loaded_kib),
        mib(r.peak_kib),
        r.programs,
        r.load_all.as_secs_f64()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn fast_mode_keeps_samples_within_the_split_of_the_fastest() {
        // Two modes 4 ms apart, as an XDP attach shows them.
        let samples = [8 * MS, 12 * MS, 7 * MS, 12 * MS, 8 * MS, 7 * MS];
        let (p50, slow) = fast_mode(&samples, 7 * MS, GRACE_PERIOD_SPLIT).unwrap();
        assert_eq!(p50, 7 * MS, "p50 of 7, 7, 8, 8");
        assert!((slow - 2.0 / 6.0).abs() < 1e-9);
        // The fastest of another method can leave none of these in the fast mode.
        assert_eq!(fast_mode(&[12 * MS], 7 * MS, GRACE_PERIOD_SPLIT), None);
        // One mode only: nothing is slow.
        assert_eq!(fast_mode(&[MS, MS], MS, GRACE_PERIOD_SPLIT), Some((MS, 0.0)));
        // An outlier far below the rest does not become the floor.
        let mut all = vec![8 * MS; 19];
        all.push(MS);
        assert_eq!(fast_floor(&all), Some(8 * MS));
        assert_eq!(fast_floor(&[]), None);
    }
}
