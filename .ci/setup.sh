#!/usr/bin/env bash
# Set-up for a fresh machine, into the active venv (or $PYTHON):
#   0. a recent pip (.ci/versions.sh says why);
#   1. PyTorch, unless one is installed already (install the CUDA build first to keep it): the
#      CPU build from PyTorch's CPU index when that index answers, else `torch==2.13.0` from the
#      default index (on Linux x86_64 PyPI that is the CUDA build, ~3.7 GB with its nvidia-*
#      wheels);
#   2. the project, editable, with every extra and the test tools: pip install -e '.[test]';
#   3. the system packages the tests use (a Cyclone DDS 0.10.x C peer for the ROS interop test,
#      headless GL for MuJoCo rendering), with apt-get; --python-only skips them.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
. .ci/versions.sh
CPU_INDEX='https://download.pytorch.org/whl/cpu'
PIP=("$PYTHON" -m pip install -q --disable-pip-version-check)

reachable() {  # reachable URL: 0 if it answers within 10 s (a DNS failure answers at once)
  "$PYTHON" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=10)' \
    "$1" >/dev/null 2>&1
}

"${PIP[@]}" --upgrade "$PIP_REQ"
if "$PYTHON" -c 'import torch' >/dev/null 2>&1; then
  echo "setup: keeping the installed torch $("$PYTHON" -W ignore -c 'import torch; print(torch.__version__)')"
elif reachable "$CPU_INDEX/torch/"; then
  echo "setup: $TORCH_REQ, CPU build, from $CPU_INDEX"
  "${PIP[@]}" --index-url "$CPU_INDEX" "$TORCH_REQ"
else
  echo "setup: $CPU_INDEX does not answer: $TORCH_REQ from the default index (on Linux x86_64" \
    "PyPI that is the CUDA build, 3.9 GB installed)"
  "${PIP[@]}" "$TORCH_REQ"
fi
"$PYTHON" -W ignore -c 'import torch  # -W: no numpy yet
build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "CPU"
print(f"setup: torch {torch.__version__} ({build} build)")'
"${PIP[@]}" -e '.[test]'
if [[ "${1:-}" != --python-only ]]; then
  bash .ci/install_interop_peer.sh
  bash .ci/install_sim_deps.sh
fi
