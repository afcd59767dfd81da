#!/usr/bin/env bash
# Runs every test: the C++ GoogleTest suite (ctest) and the Python suite (pytest).
# Installs what is missing first (scripts/install.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
build_dir=$(python3 -c "import glob; print(sorted(glob.glob('build/cp*'))[-1])")
echo "==> ctest ($build_dir)"
ctest --test-dir "$build_dir" --output-on-failure -j2
echo "==> pytest"
python3 -m pytest tests -q -p no:cacheprovider "$@"
