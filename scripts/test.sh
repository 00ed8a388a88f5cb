#!/usr/bin/env bash
# The whole test suite: formatting, lints, the examples, and every test (unit, schema,
# gRPC + mTLS, and the agent's kernel tests, which need root), and the Helm chart
# (linted and rendered; helm comes from the npm registry), and the two images. Tests that need a
# Kubernetes API server (e2e/) skip with one line unless KUBECONFIG is set.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "run as root: the agent's tests load eBPF programs into this kernel"; exit 1; }

bash scripts/install-deps.sh
# A one-shot build gains nothing from incremental state (GBs on disk).
if [ "${CI:-}" = true ]; then export CARGO_INCREMENTAL=0; fi
HELM=$(bash scripts/install-helm.sh)
export HELM
echo "== cargo fmt --check"
cargo fmt --all --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== helm lint"
"$HELM" lint --strict charts/bpfleet --set tls.helm.renderOffline=true
echo "== examples"
bash examples/build.sh
echo "== cargo test"
cargo test --workspace --locked
# The images the chart names: static binaries FROM scratch, built with buildah, nothing
# pulled (the cluster e2e also loads and runs them; here they are built and checked).
echo "== images"
# Checked without the release profile's whole-program optimization (Cargo.toml: fat LTO,
# one codegen unit), which doubles a fresh release build on two cores and changes what
# the images hold in size only.
CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 \
    bash scripts/images.sh --version ci --repo bpfleet.local --out target/images-ci
