#!/usr/bin/env bash
# System packages bpfleet's build, examples and kernel tests need (Debian/Ubuntu).
# Idempotent: installs only what is missing. Rust (cargo, rustfmt, clippy) is assumed.
set -euo pipefail

need=()
have() { command -v "$1" >/dev/null 2>&1; }
have clang || need+=(clang)
have llvm-strip || need+=(llvm)
[ -e /usr/include/bpf/bpf_helpers.h ] || need+=(libbpf-dev)
have bpftool || need+=(bpftool)
have ip || need+=(iproute2)
have tc || need+=(iproute2)
have ping || need+=(iputils-ping)
have gcc || need+=(gcc)
have openssl || need+=(openssl)
have lua5.4 || need+=(lua5.4)
# A strict OpenMetrics parser for the /metrics tests (node-agent/tests/metrics.rs).
[ -e /usr/lib/python3/dist-packages/prometheus_client/openmetrics/parser.py ] || need+=(python3-prometheus-client)
have npm || need+=(npm)
# OCI image tests (oci/tests/registry.rs): a real registry, a second image tool, htpasswd.
have docker-registry || need+=(docker-registry)
have skopeo || need+=(skopeo)
have htpasswd || need+=(apache2-utils)
# The images (scripts/images.sh): buildah builds them without a daemon.
have buildah || need+=(buildah)

if [ ${#need[@]} -gt 0 ]; then
    echo "installing: ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# Kernel filesystems the agent and its tests use.
mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf
mountpoint -q /sys/kernel/tracing || mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null || true
