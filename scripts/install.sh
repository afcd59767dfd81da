#!/usr/bin/env bash
# Installs everything prequant needs on a fresh Debian machine (Python 3.11, root), then builds
# and installs prequant itself (C++ engine, `prequant` tool, Python extension, GoogleTest suite in
# build/). Safe to run again: installed pieces are skipped, pip reuses its cache and the build dir.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(libprotobuf-dev protobuf-compiler libgtest-dev nlohmann-json3-dev libcli11-dev libonnx-dev
              libcairo2-dev pkg-config)  # cairo: the weight report's PNGs
missing=()
for p in "${APT_PACKAGES[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if ((${#missing[@]})); then
  echo "==> apt-get install ${missing[*]}"
  if [ "$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi
  $SUDO apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi

echo "==> pip install (frameworks and test tools)"
python3 -m pip install -q --disable-pip-version-check -r requirements-dev.txt

# tf_keras (Keras 2, for the tf_keras tests): same minor version as TensorFlow, no dependencies
# (it names `tensorflow`, and tensorflow-cpu is that package under another name).
tf_minor=$(python3 -c "import importlib.metadata as m; print('.'.join(m.version('tensorflow-cpu').split('.')[:2]))")
python3 -m pip install -q --disable-pip-version-check --no-deps "tf-keras~=${tf_minor}.0"
# tensorflow-model-optimization (tfmot, for the tf_keras tests: quantize_model on prepared models),
# no dependencies for the same reason (it requires tf-keras, hence `tensorflow`), and it pins
# absl-py~=1.2, older than TensorFlow's; it runs with TensorFlow's. Its other dependencies
# (dm-tree, mock) are in requirements-dev.txt.
python3 -m pip install -q --disable-pip-version-check --no-deps "tensorflow-model-optimization>=0.8"

echo "==> pip install . (builds the engine, the tool and the extension)"
python3 -m pip install -q --disable-pip-version-check --no-build-isolation .
