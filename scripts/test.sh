#!/usr/bin/env bash
# Runs every test: the C++ GoogleTest suite (ctest), the Python suites (pytest), and the C++
# suite again under AddressSanitizer + UndefinedBehaviorSanitizer with a short libFuzzer session
# on the ONNX reader (scripts/sanitize.sh; PREQUANT_SKIP_SANITIZE=1 skips it locally).
# Installs what is missing first (scripts/install.sh).
#
# The Python suites run as separate pytest processes, one per front end: TensorFlow and
# torchvision's triton cannot share one process (importing torchvision after TensorFlow
# crashes), and users never load both front ends' test models together anyway.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
build_dir=$(ls -d build/cp*/ | tail -n 1)
export PREQUANT_CLI="${PREQUANT_CLI:-$(command -v prequant)}"

passed=0
failed=0
run_suite() {  # run_suite NAME COMMAND...: runs one suite, counts it, never stops the others
  echo "==> $1"
  shift
  if "$@"; then passed=$((passed + 1)); else failed=$((failed + 1)); echo "FAILED: $*"; fi
}
run_suite "ctest ($build_dir)" ctest --test-dir "$build_dir" --output-on-failure -j2
for suite in tests/test_*.py tests/onnx tests/torch tests/keras; do
  run_suite "pytest $suite" python3 -m pytest "$suite" -q -p no:cacheprovider "$@"
done
if [ "${PREQUANT_SKIP_SANITIZE:-0}" != 1 ]; then
  run_suite "sanitizers + fuzzing (scripts/sanitize.sh)" bash scripts/sanitize.sh
fi
echo "suites: $passed passed, $failed failed"
[ "$failed" = 0 ]
