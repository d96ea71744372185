#!/usr/bin/env bash
# Check our LeRobot export against LeRobot itself, in its own Python 3.12 venv.
#
#   bash scripts/check_lerobot.sh DATASET_DIR [--dump FRAMES.npz]   # an `export --to-lerobot`
#   bash scripts/check_lerobot.sh --build-only    # only build (or reuse) the venv
#
# lerobot needs Python >= 3.12 and torch < 2.12, so it cannot share the project's 3.11 env.
# The venv lives in a cache folder and is reused across runs:
#   ${VIT_LEROBOT_VENV:-${XDG_CACHE_HOME:-~/.cache}/vit_perception/lerobot-<version>-py312}
# It holds lerobot[dataset] plus PyPI's torch/torchvision for it (x86_64: CUDA builds that
# also run on the CPU, ~5 GB). The check (scripts/check_lerobot.py) loads the dataset with
# lerobot.datasets.LeRobotDataset (pyav video backend), compares its frames and features with
# what our export says it wrote, and runs one training step of a tiny ACT policy on it.
#
# Exit codes: 0 passed; 3 the venv cannot be built here (no python3.12, no network); anything
# else: the check failed.
#   PYTHON312  the 3.12 interpreter (default: python3.12 on PATH, else pyenv's 3.12)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LEROBOT_VERSION=0.6.1
TORCH='torch>=2.7,<2.12'  # lerobot 0.6.1: torch<2.12, torchvision<0.27
TORCHVISION='torchvision>=0.22,<0.27'
VENV="${VIT_LEROBOT_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/vit_perception/lerobot-$LEROBOT_VERSION-py312}"
CANNOT_BUILD=3

find_python312() {
  # The first candidate that really runs Python 3.12 (a pyenv shim may exist and fail).
  local candidates=("${PYTHON312:-}" python3.12)
  if command -v pyenv >/dev/null 2>&1; then
    local version
    for version in $(pyenv versions --bare 2>/dev/null | grep -E '^3\.12' || true); do
      candidates+=("$(pyenv root)/versions/$version/bin/python3.12")
    done
  fi
  local candidate
  for candidate in "${candidates[@]}"; do
    if [ -n "$candidate" ] && "$candidate" -c \
        'import sys; assert sys.version_info[:2] == (3, 12)' >/dev/null 2>&1; then
      command -v "$candidate"
      return
    fi
  done
}

build_venv() {
  if [ -f "$VENV/.complete" ]; then
    echo "check_lerobot: reusing $VENV"
    return
  fi
  local python
  python="$(find_python312)"
  if [ -z "$python" ]; then
    echo "check_lerobot: cannot build the venv: no python3.12 (set PYTHON312)" >&2
    exit $CANNOT_BUILD
  fi
  local started=$SECONDS
  rm -rf "$VENV"
  mkdir -p "$(dirname "$VENV")"
  if ! "$python" -m venv "$VENV"; then
    echo "check_lerobot: cannot build the venv: $python -m venv failed" >&2
    exit $CANNOT_BUILD
  fi
  if ! "$VENV/bin/python" -m pip install -q --disable-pip-version-check \
      "lerobot[dataset]==$LEROBOT_VERSION" "$TORCH" "$TORCHVISION"; then
    if ! "$VENV/bin/python" -m pip download -q --no-deps -d "$VENV/.probe" 'six==1.16.0' \
        >/dev/null 2>&1; then
      echo "check_lerobot: cannot build the venv: PyPI is not reachable" >&2
      rm -rf "$VENV"
      exit $CANNOT_BUILD
    fi
    echo "check_lerobot: pip install into $VENV failed (PyPI is reachable)" >&2
    exit 1
  fi
  touch "$VENV/.complete"
  echo "check_lerobot: built $VENV in $((SECONDS - started)) s ($(du -sh "$VENV" | cut -f1))"
}

case "${1:-}" in
  --build-only) build_venv; exit 0 ;;
  -h|--help|'') sed -n '2,/^set -euo/p' "$0" | sed 's/^# \{0,1\}//' | head -n -1; exit 0 ;;
esac
build_venv
# Offline and isolated: no hub access, no project PYTHONPATH, datasets' cache in a temp folder.
CACHE="$(mktemp -d)"
trap 'rm -rf "$CACHE"' EXIT
env -u PYTHONPATH HF_HUB_OFFLINE=1 HF_DATASETS_CACHE="$CACHE" HF_LEROBOT_HOME="$CACHE/lerobot" \
  PYTHONNOUSERSITE=1 "$VENV/bin/python" "$ROOT/scripts/check_lerobot.py" "$@"
