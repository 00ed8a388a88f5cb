#!/usr/bin/env bash
# Benchmarks (docs/benchmarks.md): load+attach latency of each example program through
# the agent (in a worker process set up as bpfleet-agent is: kernel BTF hidden from aya),
# interleaved in one run with libbpf, the bpftool/tc command line and plain
# aya; then the agent's memory idle and with 100 programs. Prints markdown tables on
# stdout (progress on stderr). Root only; about 2-3 minutes.
#
#   scripts/bench.sh                      # what docs/benchmarks.md shows
#   scripts/bench.sh --iterations 50 --only xdp_counter,tc_counter --skip-rss
#   scripts/bench.sh --help               # every flag of bpfleet-bench
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "run as root: the bench loads eBPF programs into this kernel"; exit 1; }

bash scripts/install-deps.sh
echo "== building (release) and the example objects" >&2
# Two builds: the bench's test PKI must not reach the agent binary (feature unification).
cargo build --release -q -p node-agent
cargo build --release -q -p agent-bench
bash examples/build.sh >/dev/null
echo "== bpfleet-bench $*" >&2
exec target/release/bpfleet-bench \
    --examples examples/bpf/build --agent-bin target/release/bpfleet-agent "$@"
