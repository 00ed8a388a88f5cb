#!/usr/bin/env bash
# Operator benchmarks (docs/benchmarks.md, section "Operator"), both against a mocked API
# server (there is none on the bench machine):
#   1. Create→Ready latency of one BpfProgram with 1, 10 and 50 real bpfleet-agent processes
#      (one network namespace each, mTLS), split into the agents' own apply time and the rest;
#   2. the operator's memory with 1,000 BpfPrograms over 50 nodes (fake agents, no kernel work);
#   3. a progressive rollout of a new revision over 50 real agents, step by step.
# Prints markdown on stdout (progress on stderr). Root only for parts 1 and 3 (XDP programs, network
# namespaces, a tmpfs); about one minute once built. Leaves no agent, pin, namespace or mount.
#
#   scripts/bench-operator.sh                         # what docs/benchmarks.md shows
#   scripts/bench-operator.sh --iterations 30 --agents 1,10
#   scripts/bench-operator.sh --skip-latency --skip-rollout   # memory only (no root needed)
#   scripts/bench-operator.sh --skip-latency --skip-rss       # the rollout only
#   scripts/bench-operator.sh --memory 0:fan-out,4:streaming
#   scripts/bench-operator.sh --help                  # every flag of operator-bench
set -euo pipefail
cd "$(dirname "$0")/.."
root="$(pwd)"

skip_latency=0
skip_rollout=0
for a in "$@"; do
    [ "$a" = --skip-latency ] && skip_latency=1
    [ "$a" = --skip-rollout ] && skip_rollout=1
done
if [ "$(id -u)" != 0 ] && { [ "$skip_latency" = 0 ] || [ "$skip_rollout" = 0 ]; }; then
    echo "run as root (the latency and rollout parts load XDP programs and create network namespaces), or pass --skip-latency --skip-rollout" >&2
    exit 1
fi

# What an interrupted run (kill -9) may leave: pins of a bench process that is gone and
# namespaces without processes. The bench removes its own on exit and on Ctrl-C.
leftovers() {
    [ "$(id -u)" = 0 ] || return 0
    for d in /sys/fs/bpf/bpfleet-opbench-*; do
        [ -d "$d" ] || continue
        kill -0 "${d##*-}" 2>/dev/null || rm -rf "$d"
    done
    for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep -E '^bpfob[0-9]+$' || true); do
        [ -n "$(ip netns pids "$ns")" ] || ip netns del "$ns"
    done
}
trap leftovers EXIT
leftovers

[ "$(id -u)" = 0 ] && bash scripts/install-deps.sh
echo "== building (release): bpfleet-agent, operator-bench, the example objects" >&2
cargo build --release -q -p node-agent --bin bpfleet-agent
cargo bench -q -p operator --bench operator-bench --no-run
bash examples/build.sh >/dev/null
echo "== operator-bench $*" >&2
# cargo runs benches from the package directory: paths are absolute.
cargo bench -q -p operator --bench operator-bench -- \
    --agent-bin "$root/target/release/bpfleet-agent" \
    --object "$root/examples/bpf/build/xdp_counter.o" "$@"
