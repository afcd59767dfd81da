#!/usr/bin/env bash
# Builds the C++ engine with AddressSanitizer + UndefinedBehaviorSanitizer (clang-14) in
# build-asan/, runs the GoogleTest suite under the sanitizers, then fuzzes the ONNX reader with
# libFuzzer from a seed corpus of real exports for a bounded time. Fails on any test failure or
# fuzzer finding (crash, sanitizer report, leak, timeout, out-of-memory, unexpected exception).
#
#   PREQUANT_FUZZ_SECONDS   fuzzing time (default 60; 0 runs the seed corpus once, no fuzzing)
#   PREQUANT_SANITIZE_JOBS  build parallelism (default 2)
#
# A finding is saved under build-asan/fuzz-artifacts/; reproduce it with
#   build-asan/cpp/fuzz_onnx_reader build-asan/fuzz-artifacts/crash-...
set -euo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS
fuzz_seconds="${PREQUANT_FUZZ_SECONDS:-60}"
jobs="${PREQUANT_SANITIZE_JOBS:-2}"

# clang-14 and its runtimes (ASan, UBSan, libFuzzer), plus what the engine builds against.
APT_PACKAGES=(clang-14 libclang-rt-14-dev libprotobuf-dev protobuf-compiler libgtest-dev
              nlohmann-json3-dev libonnx-dev libcairo2-dev pkg-config)
missing=()
for p in "${APT_PACKAGES[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if ((${#missing[@]})); then
  echo "==> apt-get install ${missing[*]}"
  if [ "$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi
  $SUDO apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi
# cmake >= 3.24 and ninja come from pip (as for `pip install .`); torch, torchvision and onnx
# write the seed corpus.
need_pip=()
command -v cmake >/dev/null 2>&1 || need_pip+=(cmake)
command -v ninja >/dev/null 2>&1 || need_pip+=(ninja)
if ((${#need_pip[@]})); then
  echo "==> pip install ${need_pip[*]}"
  python3 -m pip install -q --disable-pip-version-check "${need_pip[@]}"
fi
if ! python3 -c "import torch, torchvision, onnx" >/dev/null 2>&1; then
  echo "==> pip install -r requirements-dev.txt (torch, torchvision, onnx for the seed corpus)"
  python3 -m pip install -q --disable-pip-version-check -r requirements-dev.txt
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/prequant-fuzz.XXXXXX")
corpus_pid=
cleanup() {
  if [ -n "$corpus_pid" ]; then kill "$corpus_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

# The seed corpus is Python work on one core: write it while the build runs.
echo "==> seed corpus -> $work/seeds (in the background)"
python3 cpp/fuzz/make_seed_corpus.py "$work/seeds" >"$work/corpus.log" 2>&1 &
corpus_pid=$!

# -O1: sanitizer builds compile about twice as fast as at -O3 and still run fast; line tables
# give symbolized reports without full debug info. No NDEBUG, so asserts stay on.
echo "==> configure build-asan (clang++-14, ASan + UBSan, libFuzzer)"
generator=()
command -v ninja >/dev/null 2>&1 && generator=(-G Ninja)
if [ -f build-asan/CMakeCache.txt ] && ! grep -q '^CMAKE_GENERATOR:INTERNAL=Ninja$' build-asan/CMakeCache.txt &&
   ((${#generator[@]})); then
  rm -rf build-asan  # a build dir made with another generator cannot be reconfigured
fi
cmake -S . -B build-asan "${generator[@]}" -Wno-dev \
  -DCMAKE_CXX_COMPILER=clang++-14 \
  -DCMAKE_BUILD_TYPE=Release "-DCMAKE_CXX_FLAGS_RELEASE=-O1 -gline-tables-only" \
  -DPREQUANT_SANITIZE=ON -DPREQUANT_FUZZ=ON -DPREQUANT_BUILD_TESTS=ON \
  -DPREQUANT_BUILD_PYTHON=OFF -DPREQUANT_BUILD_TOOL=OFF >/dev/null

echo "==> build prequant_tests and fuzz_onnx_reader (-j$jobs)"
cmake --build build-asan -j"$jobs" --target prequant_tests fuzz_onnx_reader

# Every report is fatal and comes with a stack; leaks are findings too.
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:detect_stack_use_after_return=1:strict_string_checks=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
# Only third-party caches are suppressed (fontconfig's, see the file); prequant's own leaks count.
export LSAN_OPTIONS="${LSAN_OPTIONS:-suppressions=$PWD/scripts/lsan-suppressions.txt}"

echo "==> ctest under ASan + UBSan"
ctest --test-dir build-asan --output-on-failure --progress -j"$jobs"

echo "==> waiting for the seed corpus"
if ! wait "$corpus_pid"; then
  corpus_pid=
  cat "$work/corpus.log" >&2
  echo "writing the seed corpus failed" >&2
  exit 1
fi
corpus_pid=
tail -n 1 "$work/corpus.log"

# Large real exports (mobilenet_v2) run once as they are: mutating a 400 KB model is ~20x
# slower than the small seeds and finds nothing they do not.
fuzzer=build-asan/cpp/fuzz_onnx_reader
artifacts=build-asan/fuzz-artifacts
mkdir -p "$artifacts" "$work/small" "$work/large" "$work/found"
max_len=16384
for f in "$work"/seeds/*; do
  if [ "$(stat -c %s "$f")" -le "$max_len" ]; then cp "$f" "$work/small/"; else cp "$f" "$work/large/"; fi
done
fuzz_failed() {
  echo "FUZZER FINDING: see the report above; the input is in $artifacts/ (reproduce with" \
       "$fuzzer $artifacts/<file>)" >&2
  exit 1
}
echo "==> fuzz_onnx_reader: every seed once"
"$fuzzer" -runs=0 -timeout=10 -rss_limit_mb=4096 -artifact_prefix="$artifacts/" \
  "$work/large" "$work/small" 2>"$work/seeds.log" || { tail -n 60 "$work/seeds.log" >&2; fuzz_failed; }
grep -E "INITED|Done" "$work/seeds.log" | tail -n 2
if [ "$fuzz_seconds" -gt 0 ]; then
  echo "==> fuzz_onnx_reader for ${fuzz_seconds}s"
  "$fuzzer" -max_total_time="$fuzz_seconds" -timeout=10 -rss_limit_mb=4096 -max_len="$max_len" \
    -print_final_stats=1 -artifact_prefix="$artifacts/" "$work/found" "$work/small" \
    2>"$work/fuzz.log" || { tail -n 80 "$work/fuzz.log" >&2; fuzz_failed; }
  grep -E "^Done|stat::number_of_executed_units|stat::peak_rss_mb" "$work/fuzz.log" || true
  tail -n 3 "$work/fuzz.log" | grep -E "cov:" || true
fi
echo "sanitizers and fuzzer: no findings ($((SECONDS - start))s)"
