#!/usr/bin/env bash
# Creates .venv-aimet (repo root, git-ignored) for the AIMET / onnx-optimizer comparisons in bench/.
#
#   bash bench/setup_aimet.sh            # idempotent: seconds when everything is already installed
#   PYTHON=python3.11 AIMET_VENV=/elsewhere bash bench/setup_aimet.sh   (bench scripts: --aimet-python)
#
# The venv uses --system-site-packages so AIMET runs on the main environment's torch, torchvision,
# onnx and onnxruntime (a torch from anywhere else would not match); a constraints file pins those
# to the installed versions so pip cannot replace them inside the venv. Each line of
# bench/requirements-aimet.txt is installed on its own; what installed and what failed (with the
# error) is written to .venv-aimet/setup-status.txt and printed. Exit status 0 if aimet-torch works.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${AIMET_VENV:-$ROOT/.venv-aimet}"
REQS="${AIMET_REQUIREMENTS:-$ROOT/bench/requirements-aimet.txt}"
PY="${PYTHON:-python3}"
STATUS="$VENV/setup-status.txt"

if [ ! -x "$VENV/bin/python" ]; then
    echo "creating $VENV (system site packages from $($PY -c 'import sys; print(sys.prefix)'))"
    "$PY" -m venv --system-site-packages "$VENV" || { echo "python -m venv failed" >&2; exit 1; }
fi
VPY="$VENV/bin/python"

# Pin the frameworks the venv borrows from the main environment.
CONSTRAINTS="$VENV/constraints.txt"
"$VPY" - > "$CONSTRAINTS" <<'PYEOF'
import importlib.metadata as md
for name in ("torch", "torchvision", "onnx", "onnxruntime", "numpy", "protobuf"):
    try:
        print(f"{name}=={md.version(name)}")
    except md.PackageNotFoundError:
        pass
PYEOF

: > "$STATUS.new"
while read -r req; do
    req="${req%%#*}"; req="$(echo "$req" | xargs)"
    [ -z "$req" ] && continue
    name="${req%%[=<>!]*}"; module="${name//-/_}"
    if "$VPY" - "$req" <<'PYEOF' 2>/dev/null
import importlib.metadata as md, sys
from packaging.requirements import Requirement
r = Requirement(sys.argv[1])
sys.exit(0 if r.specifier.contains(md.version(r.name), prereleases=True) else 1)
PYEOF
    then
        status="installed (already)"
    else
        echo "installing $req into $VENV ..."
        log="$VENV/pip-$name.log"
        if "$VPY" -m pip install --disable-pip-version-check -c "$CONSTRAINTS" "$req" > "$log" 2>&1; then
            status="installed"
        else
            status="FAILED: $(grep -E '^(ERROR|error):' "$log" | tail -2 | tr '\n' ' ')(log: $log)"
        fi
    fi
    echo "$name|$module|$req: $status" >> "$STATUS.new"
done < "$REQS"

# Installed is not enough: each must import next to the main environment's torch (one process).
(cd / && "$VPY" -W ignore - "$STATUS.new" <<'PYEOF') > "$STATUS.tmp" 2>/dev/null || cut -d"|" -f3- "$STATUS.new" > "$STATUS.tmp"
import importlib, sys
for line in open(sys.argv[1]).read().splitlines():
    name, module, text = line.split("|", 2)
    if text.endswith(("installed", "installed (already)")):
        try:
            importlib.import_module(module)
        except Exception as exc:  # noqa: BLE001 — reported, not raised
            text += f" but import fails: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    print(text)
import torch
print(f"python {sys.version.split()[0]}, torch {torch.__version__} from {torch.__file__}")
PYEOF
mv "$STATUS.tmp" "$STATUS"; rm -f "$STATUS.new"
echo "--- $STATUS"
cat "$STATUS"
grep -q "^aimet-torch[^:]*: installed$\|^aimet-torch[^:]*: installed (already)$" "$STATUS"
