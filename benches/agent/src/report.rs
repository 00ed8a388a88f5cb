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
        "Load + attach, milliseconds, p50 / p90 of {iterations} interleaved iterations. Ratios: agent p50 ÷ \
         baseline p50 (✓ when ≤ 1.5×), then in parentheses the median of the per-iteration ratios. \
         The agent runs in a worker process set up as bpfleet-agent is (kernel BTF parsed once, hidden from aya); \
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

pub fn rss_table(r: &RssReport) -> String {
    let mib = |k: u64| format!("{:.1} MiB", k as f64 / 1024.0);
    let mark = if r.idle_kib <= 20 * 1024 { "✓" } else { "✗" };
    format!(
        "| bpfleet-agent --standalone | VmRSS |\n|---|---|\n\
         | idle, empty manifest directory | {} {mark} (target ≤ 20 MiB) |\n\
         | {} tracepoint programs running | {} |\n\
         | peak over the run (VmHWM) | {} |\n\n\
         Loading the {} manifests took {:.2} s, from the first file written to the last program pinned.\n",
        mib(r.idle_kib),
        r.programs,
        mib(r.loaded_kib),
        mib(r.peak_kib),
        r.programs,
        r.load_all.as_secs_f64()
    )
}
