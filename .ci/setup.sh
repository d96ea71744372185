#!/usr/bin/env bash
# Fresh-machine set-up: PyTorch (CPU build pinned first: an unpinned torch pulls GBs of CUDA
# wheels), the project with every extra, and the system packages the tests use (a Cyclone DDS
# 0.10.x C peer for the ROS interop test, headless GL for MuJoCo rendering).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
"$PYTHON" -m pip install -q --disable-pip-version-check 'torch==2.13.0'
"$PYTHON" -m pip install -q --disable-pip-version-check -e '.[test]'
for script in .ci/install_interop_peer.sh .ci/install_sim_deps.sh; do
  if [ -f "$script" ]; then bash "$script"; fi
done
