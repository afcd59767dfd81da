#!/usr/bin/env bash
# Runs every test: the C++ GoogleTest suite (ctest) and the Python suites (pytest).
# Installs what is missing first (scripts/install.sh).
#
# The Python suites run as separate pytest processes, one per front end: TensorFlow and
# torchvision's triton cannot share one process (importing torchvision after TensorFlow
# crashes), and users never load both front ends' test models together anyway.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
build_dir=$(ls -d build/cp*/ | tail -n 1)
echo "==> ctest ($build_dir)"
ctest --test-dir "$build_dir" --output-on-failure -j2
export PREQUANT_CLI="${PREQUANT_CLI:-$(command -v prequant)}"
status=0
for suite in tests/test_*.py tests/onnx tests/torch tests/keras; do
  echo "==> pytest $suite"
  python3 -m pytest "$suite" -q -p no:cacheprovider "$@" || status=1
done
if [ "$status" = 0 ]; then echo "all test suites passed"; else echo "some test suites FAILED"; fi
exit "$status"
