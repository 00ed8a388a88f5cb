#!/usr/bin/env bash
# The operator at fleet scale (docs/benchmarks.md, "The operator at fleet scale"): for each
# NODESxPROGRAMS point, a fresh `operator-bench scale` process (fake agents over mTLS in a
# child process on 127.1.x.y, mocked API server that feeds status back) prints one JSON
# line; they are collected in docs/scale.jsonl and plotted into docs/scale.png by
# scripts/plot-scale.py. No root needed. The 5000x1000 point alone takes ~25 minutes on
# 2 cores; the whole matrix ~40.
#
#   scripts/bench-scale.sh                                # the matrix docs/benchmarks.md shows
#   scripts/bench-scale.sh 500x100 5000x100               # some points only
#   OUT=/tmp/scale.jsonl scripts/bench-scale.sh 50x1000   # elsewhere
set -euo pipefail
cd "$(dirname "$0")/.."
points=("$@")
[ ${#points[@]} -gt 0 ] || points=(50x1000 500x100 500x1000 2000x100 2000x1000 5000x100 5000x1000)
out="${OUT:-docs/scale.jsonl}"

bash scripts/install-deps.sh >/dev/null
echo "== building (release) the bench and the example objects" >&2
bash examples/build.sh >/dev/null
cargo build --release -q -p operator --bench operator-bench
bench=$(cargo bench -p operator --bench operator-bench --no-run --message-format=json 2>/dev/null |
    sed -n 's/.*"executable":"\([^"]*operator_bench[^"]*\)".*/\1/p' | tail -1)
[ -x "$bench" ] || { echo "cannot find the operator-bench executable" >&2; exit 1; }

: > "$out"
for p in "${points[@]}"; do
    nodes=${p%x*}
    programs=${p#*x}
    echo "== $nodes nodes x $programs BpfPrograms" >&2
    RUST_LOG=operator=error "$bench" scale --nodes "$nodes" --programs "$programs" >> "$out"
done
echo "== $out" >&2
python3 - "$out" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
print("| nodes × programs | peak RSS | cold start → all Ready | one change, AllAtOnce | one change, Progressive | resync pass at rest | API requests/min at rest (writes) | agent bytes/node/pass at rest (full List) | connections open at rest |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
for r in rows:
    print(f"| {r['nodes']:,} × {r['programs']:,} | {r['peak_rss_kib']/1024:.1f} MiB | {r['cold_ready_s']:.1f} s "
          f"| {r['change_all_at_once_s']:.2f} s | {r['change_progressive_s']:.2f} s | {r['resync_pass_ms']:.0f} ms "
          f"| {r['api_requests_per_min_at_rest']:g} ({r['api_writes_per_min_at_rest']:g}) "
          f"| {r['agent_bytes_per_node_per_pass']:.0f} B ({r['agent_bytes_per_node_full_list']:,.0f} B) "
          f"| {r['connections_at_rest']} of {r['max_connections']} |")
PY
# The plot needs matplotlib (Debian: python3-matplotlib).
if ! /usr/bin/python3 -c 'import matplotlib' 2>/dev/null; then
    apt-get install -y -q python3-matplotlib >/dev/null 2>&1 || true
fi
/usr/bin/python3 scripts/plot-scale.py "$out" "${out%.jsonl}.png"
