#!/usr/bin/env bash
# bpfleet's main job on one machine: the agent in standalone mode runs the example
# BpfPrograms (XDP and TC packet counters, an openat tracepoint counter, a bash
# readline uprobe) and we watch their counters move. The packet counters sit on the
# host side of a veth pair whose peer lives in a private network namespace; everything
# is pinned in a private bpffs directory and removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "run as root (loading eBPF programs needs it)"; exit 1; }

bash scripts/install-deps.sh
bash examples/build.sh >/dev/null
cargo build --release -q -p node-agent
agent=$PWD/target/release/bpfleet-agent

ns=bpfleet-demo
root=/sys/fs/bpf/bpfleet-demo
work=$(mktemp -d)
manifests=$work/manifests
mkdir -p "$manifests"
cleanup() {
    rm -f "$manifests"/*.yaml
    sleep 2 # the agent notices and removes the programs
    [ -n "${pid:-}" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
    ip link del bfdemo0 2>/dev/null || true
    ip netns del "$ns" 2>/dev/null || true
    rm -rf "$root" "$work"
}
trap cleanup EXIT
ip link del bfdemo0 2>/dev/null || true
ip netns del "$ns" 2>/dev/null || true
ip netns add "$ns"
ip link add bfdemo0 type veth peer name bfdemo1 netns "$ns"
ip addr add 10.203.0.1/30 dev bfdemo0 && ip link set bfdemo0 up
ip -n "$ns" addr add 10.203.0.2/30 dev bfdemo1 && ip -n "$ns" link set bfdemo1 up

# The examples attach to lo; here they attach to the demo's own interface instead.
for f in examples/standalone/*.yaml; do
    sed -e "s#@BUILD_DIR@#$PWD/examples/bpf/build#g" -e 's/interfaces: \[lo\]/interfaces: [bfdemo0]/' \
        "$f" >"$manifests/$(basename "$f")"
done
echo "== manifests: $(ls "$manifests" | tr '\n' ' ')"

"$agent" --standalone "$manifests" --bpffs-root "$root" --state-dir "$work/state" \
    --metrics-listen 127.0.0.1:9464 2>"$work/agent.log" &
pid=$!

# Wait until every manifest is running (one owner directory each).
want=$(ls "$manifests" | wc -l)
for _ in $(seq 50); do
    [ "$(find "$root" -mindepth 1 -maxdepth 1 -type d 2>/dev/null | wc -l)" -ge "$want" ] && break
    sleep 0.2
done
echo "== the agent runs (pinned under $root):"
(cd "$root" && find . -path '*/progs/*' -o -path '*/maps/*' | sort | sed 's#^\./#   #')

counters() {
    for m in "$root"/*/maps/*; do
        owner=$(basename "$(dirname "$(dirname "$m")")")
        v=$(bpftool -j map lookup pinned "$m" key 0 0 0 0 2>/dev/null |
            python3 -c 'import json,sys; b=json.load(sys.stdin)["value"]; print(int.from_bytes(bytes(int(x,16) for x in b),"little"))' 2>/dev/null || echo "?")
        printf '   %-28s %-20s %s\n' "${owner#standalone-}" "$(basename "$m")" "$v"
    done
}
for round in 1 2 3; do
    ip netns exec "$ns" ping -c 5 -i 0.05 -q 10.203.0.1 >/dev/null
    for _ in $(seq 20); do cat /etc/hostname >/dev/null; done
    echo 'echo hello from bash' | bash -i >/dev/null 2>&1 || true
    echo "== counters, round $round (read from the kernel with bpftool):"
    counters
    sleep 1
done
echo "== kernel run statistics from the agent's /metrics:"
bash -c 'exec 3<>/dev/tcp/127.0.0.1/9464; printf "GET /metrics HTTP/1.0\r\n\r\n" >&3; cat <&3' |
    grep -E '^bpfleet_agent_(program_run_count_total|programs_managed|links_managed)' | sed 's/^/   /'
echo "== removing the manifests: the agent unloads everything"
