#!/usr/bin/env bash
# The main job on its embedded default: installs everything, then runs the demo.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
python3 -m prequant.demo "$@"
