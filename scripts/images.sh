#!/usr/bin/env bash
# Build the two images the chart names, from docker/*.Dockerfile, pulling nothing:
# bpfleet-operator and bpfleet-agent are each one static binary (crt-static on the gnu
# target) FROM scratch, with the host's CA roots and a passwd naming uid 65532.
#
#   scripts/images.sh [--version V] [--repo PREFIX] [--load] [--push] [--out DIR]
#
#   --version V     image tag (default: the chart's appVersion)
#   --repo PREFIX   image names are PREFIX/bpfleet-operator and PREFIX/bpfleet-agent
#                   (default: ghcr.io/bpfleet, as the chart's values)
#   --load          import both into containerd's k8s.io namespace (`ctr images import`),
#                   for a cluster on this machine (imagePullPolicy Never or IfNotPresent)
#   --push          push both to PREFIX (log in first: `buildah login` / `docker login`);
#                   the release workflow does this, nobody else
#   --out DIR       where the docker-archive tarballs go (default: target/images)
#   --examples      also build PREFIX/bpfleet-example-ticker, the examples' workload
#                   (examples/apps/ticker.c and mapcat.c, static; docker/example-ticker.Dockerfile)
#
# Builds with buildah (Debian's `buildah`, vfs storage, no daemon) or with docker when a
# docker daemon answers. Prints each image's size.
set -euo pipefail
cd "$(dirname "$0")/.."

version=$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' charts/bpfleet/Chart.yaml)
repo=ghcr.io/bpfleet
load=0
push=0
examples=0
out=target/images
while [ $# -gt 0 ]; do
    case "$1" in
        --version) version=$2; shift 2 ;;
        --repo) repo=$2; shift 2 ;;
        --load) load=1; shift ;;
        --push) push=1; shift ;;
        --out) out=$2; shift 2 ;;
        --examples) examples=1; shift ;;
        *) echo "unknown argument $1 (see the header of $0)" >&2; exit 2 ;;
    esac
done
[ -n "$version" ] || { echo "no version: pass --version" >&2; exit 2; }

have() { command -v "$1" >/dev/null 2>&1; }
if have docker && docker info >/dev/null 2>&1; then
    tool=docker
else
    if ! have buildah; then
        echo "installing buildah"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq && apt-get install -y -qq --no-install-recommends buildah >/dev/null
    fi
    tool=buildah
fi

# Static binaries: crt-static applies to the target only with an explicit --target (build
# scripts and proc macros stay dynamic host programs).
host=$(rustc -vV | sed -n 's/^host: //p')
echo "== static release binaries ($host, crt-static)"
RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
    cargo build --release --locked --target "$host" \
    -p operator --bin bpfleet-operator -p node-agent --bin bpfleet-agent
# Where cargo put them: CARGO_TARGET_DIR when set (e.g. a shared build directory).
bin=${CARGO_TARGET_DIR:-target}/$host/release

mkdir -p "$out"
mb() { awk -v b="$(stat -c %s "$1")" 'BEGIN { printf "%.1f MB", b / 1000000 }'; }

# package NAME CONTEXT: build image $repo/bpfleet-NAME:$version from docker/NAME.Dockerfile
# in CONTEXT, save it as a docker-archive, push and load it as asked.
package() {
    local name=$1 ctx=$2
    local image=$repo/bpfleet-$name:$version
    local archive=$out/bpfleet-$name-$version.tar
    echo "== $image ($tool)"
    rm -f "$archive"
    if [ $tool = docker ]; then
        docker build -q -f docker/$name.Dockerfile -t "$image" "$ctx" >/dev/null
        docker save -o "$archive" "$image"
        [ $push = 1 ] && docker push "$image"
    else
        buildah --storage-driver vfs bud --quiet --layers=false -f docker/$name.Dockerfile -t "$image" "$ctx" >/dev/null
        buildah --storage-driver vfs push --quiet "$image" "docker-archive:$archive:$image"
        [ $push = 1 ] && buildah --storage-driver vfs push "$image" "docker://$image"
        buildah --storage-driver vfs rmi "$image" >/dev/null
    fi
    echo "   image $(mb "$archive") uncompressed: $archive"
    if [ $load = 1 ]; then
        ctr -n k8s.io images import "$archive" >/dev/null
        echo "   imported into containerd (k8s.io)"
    fi
}

for name in operator agent; do
    exe=$bin/bpfleet-$name
    if readelf -d "$exe" | grep -q NEEDED; then
        echo "$exe needs shared libraries; the image FROM scratch needs a static binary" >&2
        exit 1
    fi
    # Test hooks never ship: only bpfleet-agent-test reads these variables (agent::fault).
    if grep -aqE 'BPFLEET_(FAULT|PAUSE)' "$exe"; then
        echo "$exe contains the test fault hooks (BPFLEET_FAULT/BPFLEET_PAUSE); build it per package, without test-support" >&2
        exit 1
    fi
    ctx=$out/context-$name
    rm -rf "$ctx"
    mkdir -p "$ctx"
    strip -o "$ctx/bpfleet-$name" "$exe"
    cp /etc/ssl/certs/ca-certificates.crt "$ctx/"
    printf 'root:x:0:0:root:/:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/:/sbin/nologin\n' >"$ctx/passwd"
    printf 'root:x:0:\nnonroot:x:65532:\n' >"$ctx/group"
    echo "   binary $(mb "$ctx/bpfleet-$name")"
    package "$name" "$ctx"
done

# The examples' workload (examples/apps/ticker.c), static and with its symbols: the
# uprobe example probes handle_request inside its container.
if [ $examples = 1 ]; then
    ctx=$out/context-example-ticker
    rm -rf "$ctx"
    mkdir -p "$ctx"
    ${CC:-cc} -static -O0 -g -Wall -Werror -o "$ctx/ticker" examples/apps/ticker.c
    # mapcat reads a map a bpfleet map volume holds (docs/maps.md, "Into pods").
    ${CC:-cc} -static -O2 -Wall -Werror -o "$ctx/mapcat" examples/apps/mapcat.c
    printf 'nonroot:x:65532:65532:nonroot:/:/sbin/nologin\n' >"$ctx/passwd"
    package example-ticker "$ctx"
fi
